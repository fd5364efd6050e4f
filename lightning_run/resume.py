"""What ``--ckpt_path`` means for the ``lightning`` command: reading a checkpoint's metadata with errors that name
the file, finding ``last``, comparing a checkpoint's run with the config that resumes it, and the run
directory a config will write to (see ``lightning_run.cli.ProjectCLI`` for the rules)."""

from __future__ import annotations

import importlib
import json
import os
import pickle
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from lightning_run.errors import ConfigError

# Lightning's own --ckpt_path aliases, resolved by the Trainer ("last" is resolved here, see find_last).
LIGHTNING_ALIASES = ("best", "hpc", "registry")
LAST = "last"
INTERRUPTED_NAME = "interrupted.ckpt"
# The checkpoint keys this project adds (lightning_run.callbacks): the resolved config and the run directory.
RUN_CONFIG_KEY = "run_config"
RUN_DIR_KEY = "run_dir"
# Model/data options that may differ between a checkpoint's run and the config resuming it: they change
# neither the weights' shapes nor the numbers a step computes, nor which data the run sees.
SAFE_MODEL_OPTIONS = frozenset({"compile", "write_outputs"})
SAFE_DATA_OPTIONS = frozenset({
    "num_workers", "pin_memory", "persistent_workers", "prefetch_factor", "data_dir", "train_dir", "val_dir",
    "download", "cache_dir", "max_cache_size", "storage_options", "verify", "verbose", "on_bad_image",
})
_META_KEYS = ("hyper_parameters", RUN_CONFIG_KEY, RUN_DIR_KEY, "wandb_run_id", "global_step", "epoch", "interrupted")
_meta_cache: dict[tuple[str, float, int], dict[str, Any]] = {}


def is_local_path(ckpt_path: Any) -> bool:
    return bool(ckpt_path) and "://" not in str(ckpt_path) and str(ckpt_path) not in (LAST, *LIGHTNING_ALIASES)


def _load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) checkpoint


def read_meta(path: str | Path) -> dict[str, Any] | None:
    """The small entries of checkpoint ``path`` (hyper-parameters, run config, run id, step); ``None`` when it
    holds pickled objects a weights-only load refuses (Lightning then loads it, and reports any problem).

    A missing, truncated or foreign file raises ``ConfigError`` naming it.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--ckpt_path {path}: no such file",
                          hint="give the path of a .ckpt file (`--ckpt_path last` resumes the newest run of this "
                               "experiment); without --ckpt_path a new run starts")
    if path.is_dir():
        raise ConfigError(f"--ckpt_path {path} is a folder, not a checkpoint file",
                          hint=f"name a file in it, e.g. {path / 'last.ckpt'}")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime, stat.st_size)
    if key in _meta_cache:
        return _meta_cache[key]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checkpoint = _load(path)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            return None
        raise _unreadable(path, err) from err
    except PermissionError as err:
        raise ConfigError(f"checkpoint {path} cannot be read: permission denied",
                          hint="check the file's permissions") from err
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as err:
        raise _unreadable(path, err) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{path} is not a Lightning checkpoint (it holds a {type(checkpoint).__name__}"
                          f"{' without a state_dict' if isinstance(checkpoint, dict) else ''})",
                          hint="give a .ckpt file written by a Lightning run (its checkpoints/ folder)")
    meta = {k: checkpoint[k] for k in _META_KEYS if k in checkpoint}
    del checkpoint
    _meta_cache[key] = meta
    return meta


def _unreadable(path: Path, err: BaseException) -> ConfigError:
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    detail = detail.split(". ")[0].rstrip(".")  # torch adds paragraphs of advice
    size = path.stat().st_size
    return ConfigError(
        f"checkpoint {path} cannot be read: it is truncated or not a checkpoint ({size} bytes; torch.load: {detail})",
        hint="pick another checkpoint (e.g. an earlier one in the same folder) or copy this one again; this "
             "project never leaves a half-written checkpoint, so a cut file comes from a copy or a download")


# --- `--ckpt_path last` -----------------------------------------------------------------------------------
def _logger_configs(trainer: dict) -> list[dict]:
    loggers = trainer.get("logger")
    if isinstance(loggers, dict):
        return [loggers]
    if isinstance(loggers, list):
        return [logger for logger in loggers if isinstance(logger, dict)]
    return []


def _short(class_path: Any) -> str:
    return str(class_path or "").rsplit(".", 1)[-1]


def _root(trainer: dict) -> Path:
    return Path(trainer.get("default_root_dir") or os.getcwd())


def experiment_dirs(trainer: dict) -> list[Path]:
    """The folders the runs of this config go to: ``<save_dir>/<name>`` of the first logger (one subfolder per
    run), else ``default_root_dir`` (the run itself); plus the explicit ``dirpath`` of ModelCheckpoint callbacks."""
    dirs: list[Path] = []
    loggers = _logger_configs(trainer)
    if loggers:
        first = loggers[0]
        init = first.get("init_args") or {}
        kind = _short(first.get("class_path"))
        if kind == "WandbLogger":
            save_dir = init.get("save_dir") or init.get("dir")
            dirs.append(Path(save_dir or _root(trainer), init.get("project") or os.environ.get("WANDB_PROJECT")
                             or "lightning_logs"))
        elif init.get("save_dir") is not None:
            name = init.get("name", "lightning_logs")
            dirs.append(Path(init["save_dir"], name or ""))
    if not dirs and trainer.get("logger") in (None, False):
        dirs.append(_root(trainer))
    if not dirs:  # logger: true (Lightning's default TensorBoard/CSV logger) or an unknown logger
        dirs.append(_root(trainer) / "lightning_logs")
    dirs += checkpoint_dirpaths(trainer)
    return dirs


def checkpoint_dirpaths(trainer: dict) -> list[Path]:
    callbacks = trainer.get("callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    return [Path(cb["init_args"]["dirpath"]) for cb in callbacks
            if isinstance(cb, dict) and _short(cb.get("class_path")) == "ModelCheckpoint"
            and (cb.get("init_args") or {}).get("dirpath")]


def _is_resume_file(path: Path) -> bool:
    name = path.name
    return name in ("last.ckpt", INTERRUPTED_NAME) or (name.startswith("last-v") and name.endswith(".ckpt"))


def find_last(trainer: dict) -> tuple[Path, list[Path]]:
    """The newest (by mtime) ``last.ckpt`` / ``interrupted.ckpt`` of this experiment's runs, and where it looked.

    Raises ``ConfigError`` naming the folders when there is none.
    """
    dirs = experiment_dirs(trainer)
    found: list[Path] = []
    for directory in dirs:
        for pattern in ("*.ckpt", "checkpoints/*.ckpt", "*/checkpoints/*.ckpt"):
            found += [p for p in directory.glob(pattern) if p.is_file() and _is_resume_file(p)]
    if not found:
        looked = ", ".join(str(d) for d in dirs)
        raise ConfigError(
            f"--ckpt_path last: no last.ckpt or interrupted.ckpt of this experiment under {looked}",
            hint="start without --ckpt_path for a new run, or give the checkpoint of the run to resume "
                 "(--ckpt_path <run directory>/checkpoints/last.ckpt); `last` looks where this config's logger "
                 "(save_dir/name) or trainer.default_root_dir puts runs")
    return max(set(found), key=lambda p: p.stat().st_mtime), dirs


# --- a checkpoint's run versus the config resuming it -----------------------------------------------------
def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return class_path


def same_class(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a == b or _import(a) is _import(b)


def saved_config(meta: dict) -> dict[str, Any]:
    """The checkpoint's run as ``{"model": {class_path, init_args}, "data": ..., "seed_everything": ...}`` (the
    entries it knows): the run config this project stores, else the model's hyper-parameters."""
    run_config = meta.get(RUN_CONFIG_KEY)
    if isinstance(run_config, dict) and run_config.get("model"):
        return {k: run_config[k] for k in ("model", "data", "seed_everything") if k in run_config}
    hparams = dict(meta.get("hyper_parameters") or {})
    if not hparams:
        return {}
    class_path = hparams.pop("_class_path", None)
    hparams = {k: v for k, v in hparams.items() if not k.startswith("_")}
    return {"model": {"class_path": class_path, "init_args": hparams}}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of nested dicts keyed by dotted paths; a sub-object's ``class_path`` is a leaf of its own."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _equal(a: Any, b: Any, key: str = "") -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if key.endswith("class_path") and isinstance(a, str) and isinstance(b, str):
        return same_class(a, b)  # "pkg.Class" and "pkg.module.Class" are one class
    return a == b


def fmt(value: Any) -> str:
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)


def differences(current: dict, saved: dict, section: str, safe: Iterable[str]) -> list[tuple[str, Any, Any]]:
    """``(option, value here, value in the checkpoint)`` for each option of ``section`` ("model"/"data") set in
    both and different, except ``safe`` ones (first-level names). Options only one side knows (added or
    removed since) are not compared; within a sub-object whose class changed only the class_path is listed."""
    here, there = current.get(section) or {}, saved.get(section) or {}
    if not isinstance(here, dict) or not isinstance(there, dict):
        return []
    here_args, there_args = _flatten(here.get("init_args") or {}), _flatten(there.get("init_args") or {})
    changed_classes = [k[: -len("class_path")] for k in here_args
                       if k.endswith("class_path") and k in there_args and not _equal(here_args[k], there_args[k], k)]
    out = []
    for key, value in here_args.items():
        if key not in there_args or key.split(".", 1)[0] in safe or _equal(value, there_args[key], key):
            continue
        if any(key.startswith(prefix) and not key.endswith("class_path") for prefix in changed_classes):
            continue
        out.append((f"--{section}.init_args.{key}", value, there_args[key]))
    return out


def conflicts(current: dict, saved: dict) -> list[tuple[str, Any, Any]]:
    """All model/data/seed options of ``current`` that differ from the checkpoint's run ``saved``."""
    out = differences(current, saved, "model", SAFE_MODEL_OPTIONS)
    out += differences(current, saved, "data", SAFE_DATA_OPTIONS)
    if "seed_everything" in saved and not _equal(current.get("seed_everything"), saved["seed_everything"]):
        out.append(("--seed_everything", current.get("seed_everything"), saved["seed_everything"]))
    return out


# --- run directories ------------------------------------------------------------------------------------
def reused_run_dir(trainer: Any, ckpt_path: Any, meta: dict | None) -> ConfigError | None:
    """The error for a ``fit`` that would write into a run directory holding another run, else ``None``.

    Looks only at loggers whose directory is known without starting them (W&B with an id, CSV/TensorBoard,
    none); call it after the Trainer is built and before ``fit``. A run resuming a checkpoint of that
    directory's run is fine (``resumes``).
    """
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    from lightning_run.rundir import run_dir

    logger = trainer.logger
    if getattr(trainer, "fast_dev_run", False):
        return None
    if isinstance(logger, WandbLogger):
        if not logger.version:
            return None  # a new W&B run gets a new id
        option = "--trainer.logger.init_args.id"
    elif isinstance(logger, (CSVLogger, TensorBoardLogger)):
        option = "--trainer.logger.init_args.version"
    elif logger is None:
        option = "--trainer.default_root_dir"
    else:
        return None  # another logger: RunConfigSaver checks at setup
    directory = run_dir(trainer)
    found = previous_run(directory)
    if not found or resumes(directory, ckpt_path, meta, logger.version if isinstance(logger, WandbLogger) else None):
        return None
    return reused_dir_error(directory, found, option)


def previous_run(directory: Path) -> list[str]:
    """What in ``directory`` belongs to an earlier run: its config.yaml and checkpoints (empty: nothing)."""
    if not directory.is_dir():
        return []
    found = ["config.yaml"] if (directory / "config.yaml").is_file() else []
    checkpoints = list((directory / "checkpoints").glob("*.ckpt"))
    if checkpoints:
        found.append(f"{len(checkpoints)} checkpoint{'s' if len(checkpoints) > 1 else ''} in checkpoints/")
    return found


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
        return True
    except ValueError:
        return False


def resumes(directory: Path, ckpt_path: Any, meta: dict | None, run_id: Any = None) -> bool:
    """Whether ``ckpt_path`` is a checkpoint of the run in ``directory``: it lies inside it, records it as its run
    directory, or carries its W&B run id."""
    if not is_local_path(ckpt_path):
        return False
    ckpt = Path(str(ckpt_path))
    if _inside(ckpt, directory):
        return True
    meta = meta or {}
    recorded = meta.get(RUN_DIR_KEY)
    if recorded and Path(recorded).resolve() == directory.resolve():
        return True
    return bool(run_id) and meta.get("wandb_run_id") == run_id


def reused_dir_error(directory: Path, found: list[str], option: str) -> ConfigError:
    what = {"--trainer.default_root_dir": "drop --trainer.logger false / give a new --trainer.default_root_dir"}.get(
        option, f"drop {option} (a new run gets a new id) or give a new one")
    return ConfigError(
        f"run directory {directory} already holds a run ({', '.join(found)}): this run would overwrite its config "
        f"and mix its checkpoints with that run's. Nothing was written",
        hint=f"to continue that run, resume it: --ckpt_path {directory / 'checkpoints' / 'last.ckpt'} (or "
             f"--ckpt_path last); to start a new run, {what}")
