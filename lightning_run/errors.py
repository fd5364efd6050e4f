"""How the ``lightning`` command reports a failure: one readable line for a mistake in the user's input,
the full traceback for a bug.

The rule (``report``):

- **User errors** (exit code 2): a ``ConfigError`` at any time; a ``ValueError``, ``OSError`` (missing,
  unreadable or bad file), YAML error or Lightning ``MisconfigurationException`` raised *before the first
  step ran* (while reading the config, instantiating the model/data/trainer, or at setup). They print
  ``error: <message>`` and ``hint: <what to do>`` on stderr and no traceback.
- **Environment failures** (exit code 1, no traceback): a full disk (``ENOSPC``/``EDQUOT``) and a
  ``NonFiniteLossError``, at any time; their message names the path or the step.
- **Everything else** (exit code 1): the traceback, as Python prints it. The same exception types raised
  once steps run (a ``ValueError`` in ``training_step``) are bugs until shown otherwise.

``--debug`` on the command line or ``LIGHTNING_DEBUG=1`` prints the traceback for every failure.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import yaml

DEBUG_ENV = "LIGHTNING_DEBUG"
# Set on an exception raised once the first batch started (see lightning_run.cli.ProjectCLI).
STARTED_ATTR = "_lightning_run_after_first_step"
WHERE_ATTR = "_lightning_run_where"  # "--model.init_args.masking (lightning_mae.SelfGuidedMasking)"
DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class ConfigError(ValueError):
    """A mistake in what the user asked for (an option, a file, a checkpoint), with a hint on what to do.

    ``lightning`` prints it as ``error: <message>`` / ``hint: <hint>`` and exits with code 2.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def debug_requested(args: list[str] | None = None) -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no") or (
        args is not None and "--debug" in args)


def mark_started(err: BaseException) -> None:
    """Record on ``err`` that it was raised after the first step began (it is then not a user error)."""
    try:
        setattr(err, STARTED_ATTR, True)
    except AttributeError:  # pragma: no cover - exceptions with __slots__
        pass


def _raised_in_jsonargparse(err: BaseException) -> bool:
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{os.sep}jsonargparse{os.sep}" in tb.tb_frame.f_code.co_filename


def unwrap_instantiation_error(err: BaseException) -> BaseException:
    """The exception a class's ``__init__`` raised, out of jsonargparse's "Does not validate against any of
    the Union subtypes ..." wrappers (which chain it as ``__cause__``)."""
    seen = set()
    while err.__cause__ is not None and _raised_in_jsonargparse(err) and id(err) not in seen:
        seen.add(id(err))
        err = err.__cause__
    return err


def raising_class(err: BaseException) -> type | None:
    """The class whose ``__init__`` is the innermost one on ``err``'s traceback (who rejected its arguments)."""
    found = None
    tb = err.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "__init__" and "self" in frame.f_locals:
            found = type(frame.f_locals["self"])
        tb = tb.tb_next
    return found


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).strip().splitlines() if line.strip())


def _is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in DISK_FULL


def _is_user_error(err: BaseException) -> bool:
    if isinstance(err, ConfigError):
        return True
    try:
        from lightning.fabric.utilities.exceptions import MisconfigurationException
    except ImportError:  # pragma: no cover
        MisconfigurationException = ()  # type: ignore[assignment]  # noqa: N806
    return isinstance(err, (ValueError, OSError, yaml.YAMLError, MisconfigurationException))


def _message(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:  # "[Errno 2] No such file or directory: 'x'" without "[Errno 2]"
        text = err.strerror + (f": {err.filename}" if err.filename else "")
    else:
        text = str(err) or type(err).__name__
    where = getattr(err, WHERE_ATTR, None)
    return one_line(f"{where}: {text}" if where else text)


def _hint(err: BaseException) -> str:
    if isinstance(err, ConfigError) and err.hint:
        return err.hint
    if _is_disk_full(err):
        return ("free space on that disk, or write the run elsewhere (--trainer.default_root_dir and the logger's "
                "save_dir); the previous checkpoint is untouched, resume from it with --ckpt_path")
    if isinstance(err, (FileNotFoundError, NotADirectoryError)):
        return f"check the path (relative paths start from the working directory, {Path.cwd()})"
    if isinstance(err, PermissionError):
        return "check the permissions of that file or folder"
    if isinstance(err, OSError):
        return "replace or remove that file (or check the disk it is on)"
    if "YAML" in str(err) or isinstance(err, yaml.YAMLError):
        return "fix the YAML syntax at the place shown"
    if type(err).__name__ == "MisconfigurationException":
        return "fix the trainer option named above (`lightning fit --help` lists them)"
    return ("change that option in the config or on the command line (`--print_config` shows every option's "
            "value)")


def report(err: BaseException, debug: bool = False, stream: Any = None) -> int:
    """Print ``err`` as the ``lightning`` command does and return the exit code (see the module docstring)."""
    stream = stream if stream is not None else sys.stderr
    if isinstance(err, KeyboardInterrupt):
        if debug:
            traceback.print_exception(err, file=stream)
        stream.write("interrupted\n")
        return 130
    started = getattr(err, STARTED_ATTR, False)
    from lightning_run.guards import NonFiniteLossError

    if _is_disk_full(err) or isinstance(err, NonFiniteLossError):
        code = 1
    elif _is_user_error(err) and (isinstance(err, ConfigError) or not started):
        code = 2
    else:
        traceback.print_exception(err, file=stream)
        return 1
    if debug:
        traceback.print_exception(err, file=stream)
    hint = _hint(err)
    if not debug and not isinstance(err, ConfigError):
        hint += "; --debug shows the traceback"
    stream.write(f"error: {_message(err)}\nhint: {hint}\n")
    stream.flush()
    return code
