"""Checkpoint writing that never leaves a half-written file.

Lightning's own writer stages the file in the system temp directory and moves it; when that directory is
on another filesystem (``/tmp`` on a local disk, checkpoints on a network share) the move is a copy into
the target path, and a crash during the copy leaves a truncated checkpoint where the previous good one was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in ``path``'s directory, fsync, then rename it over ``path``.

    A reader sees the old file or the new one, never a partial one, even after a crash (``os.replace``
    is atomic within a filesystem). An error while writing removes the temporary file; a killed process
    leaves it behind as ``.<name>.<random>.tmp``. A full disk raises ``OSError(ENOSPC)`` naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        # os.open with 0o666 applies the umask, as a plain open() of the target would.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        disk_full = _disk_full_error(err, path)
        if disk_full is not None:
            raise disk_full from err
        raise
    # Make the rename itself durable; some filesystems cannot fsync a directory, and lose nothing by it.
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# What torch.save's zip writer raises when a write comes short (the disk filled up mid-file).
_TORCH_WRITE_FAILURES = ("unexpected pos", "file write failed", "PytorchStreamWriter failed writing")


def _disk_full_error(err: BaseException, path: Path) -> OSError | None:
    """An ``OSError(ENOSPC)`` naming ``path`` for a write that failed for lack of space, else ``None``.

    ``torch.save`` reports a short write as ``RuntimeError: [enforce fail at inline_container.cc:...] .
    unexpected pos ...``, without the cause or the file; a short write of a regular file means the disk (or
    the quota) is full.
    """
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        detail = ""
    elif isinstance(err, RuntimeError) and any(s in str(err) for s in _TORCH_WRITE_FAILURES):
        detail = f" (torch.save: {str(err).strip().splitlines()[0]})"
    else:
        return None
    code = err.errno if isinstance(err, OSError) and err.errno else errno.ENOSPC
    return OSError(code, f"No space left on device: checkpoint {path} could not be written{detail}; "
                         f"the previous file at that path is untouched")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves go through ``atomic_torch_save``; remote URLs (object stores,
    whose uploads are atomic) keep Lightning's path. Enable with ``Trainer(plugins=[AtomicCheckpointIO()])``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        fs, local_path = url_to_fs(str(path))
        if storage_options is not None or not isinstance(fs, LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, local_path)
