"""The project's ``lightning`` command: a LightningCLI over every model and DataModule of the project.

``lightning`` 2.x installs no ``lightning`` executable; ``pyproject.toml`` maps that name to ``main``.
Models and data are chosen by ``class_path`` (subclass mode), so any LightningModule / DataModule can be
named in a config. This layer knows no method: the packages to register (so ``--model.help`` lists them
and configs may use short class names) are the ``lightning_run.packages`` entry points of the installed
distributions (``pyproject.toml``), which a user's package can join too.

Failures are reported by ``lightning_run.errors.report``: a mistake in the input (an option, a file, a
checkpoint) is one ``error:`` line and a ``hint:`` line, exit code 2; a bug keeps its traceback, exit code 1.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import sys
import warnings
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_run.callbacks import InterruptCheckpoint, RunConfigSaver
from lightning_run.configs import expand_config_args
from lightning_run.errors import (
    DEBUG_ENV,
    WHERE_ATTR,
    ConfigError,
    debug_requested,
    mark_started,
    one_line,
    raising_class,
    report,
    unwrap_instantiation_error,
)
from lightning_run.resume import (
    LAST,
    SAFE_MODEL_OPTIONS,
    checkpoint_dirpaths,
    conflicts,
    differences,
    find_last,
    fmt,
    is_local_path,
    read_meta,
    resumes,
    reused_run_dir,
    same_class,
    saved_config,
)

PLUGIN_GROUP = "lightning_run.packages"


class ProjectCLI(LightningCLI):
    """LightningCLI with the project's rules for resuming, run directories and errors.

    **Resuming** (``fit --ckpt_path X``) continues the checkpoint's run:

    - ``X`` must exist and be readable before anything is instantiated (no logger, no W&B run, no run
      directory is created for a missing or truncated file); ``--ckpt_path last`` is the newest ``last.ckpt``
      / ``interrupted.ckpt`` of this experiment (under the first logger's ``save_dir/name``, else
      ``trainer.default_root_dir``, and ModelCheckpoint ``dirpath``\\ s), across its run directories.
    - The checkpoint's model must be of the config's model class ("checkpoint X holds a lightning_inr.SignalFit,
      the config builds lightning_mae.MAEPretraining" otherwise).
    - Every model and data option and the seed must equal the checkpoint's run (the run config stored in
      checkpoints by ``RunConfigSaver``; for older checkpoints the model's hyper-parameters). An option that
      differs, given in a config file or on the command line, is an error naming it with both values: drop it
      to resume, or start a new run (a fine-tuning config loads weights with its own option). Options that
      only say how to run may change: every ``trainer`` option (max_epochs/max_steps, limits, logger,
      callbacks, devices, precision, gradient clipping), the model's ``compile``/``write_outputs``, and the
      data's workers, caching, download and folder locations (``resume.SAFE_DATA_OPTIONS``).
    - Unlike plain LightningCLI, the checkpoint's hyper-parameters are not laid over the config (that
      silently dropped command-line overrides): after the check above the config already equals them.
    - Logging continues in the checkpoint's W&B run (its id is stored in the checkpoint).

    ``validate``/``test``/``predict`` with a checkpoint check the model class and model options only.

    **Run directories.** ``fit`` never writes into a directory that holds another run's config.yaml or
    checkpoints (a logger ``id``/``version`` given again, ``logger: false`` with the same
    ``default_root_dir``, a ModelCheckpoint ``dirpath`` in use): unless the checkpoint resumed is that run's,
    it stops before writing anything, naming the directory. A run that fails before its first step leaves
    nothing behind: the run directory it created (holding only its config.yaml) and its offline W&B run are
    removed.

    **Ctrl-C** during fit saves ``interrupted.ckpt`` (``lightning_run.callbacks.InterruptCheckpoint``).
    """

    def __init__(self, *args: Any, command: list[str] | None = None, **kwargs: Any) -> None:
        self.command = command
        self.ckpt_meta: dict | None = None
        self._fresh_dirs: list[Path] = []
        self._links: dict[Path, str] = {}
        super().__init__(*args, **kwargs)

    # --- the config as plain data ---------------------------------------------------------------------------
    def _config_dict(self) -> dict[str, Any]:
        """The subcommand's resolved config as plain data (what config.yaml will hold)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dump = yaml.safe_load(self.parser.dump(self.config, skip_none=False, skip_link_targets=False))
        subcommand = self.config.get("subcommand")
        return dump[subcommand] if subcommand else dump

    # --- --ckpt_path ----------------------------------------------------------------------------------------
    def _parse_ckpt_path(self) -> None:
        """Resolve ``last``, read the checkpoint (errors name the file) and check it against the config.

        Replaces LightningCLI's, which re-parses the checkpoint's hyper-parameters over the config.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:
            return
        if str(ckpt_path) == LAST:
            path, dirs = find_last(self._config_dict().get("trainer") or {})
            rank_zero_info(f"--ckpt_path last: resuming {path} (the newest last/interrupted checkpoint under "
                           f"{', '.join(str(d) for d in dirs)})")
            config.ckpt_path = ckpt_path = str(path)
        if not is_local_path(ckpt_path):
            return  # Lightning's aliases ("best", "hpc", "registry") and remote URLs
        self.ckpt_meta = meta = read_meta(ckpt_path)
        if meta is None:
            rank_zero_warn(f"{ckpt_path}: cannot read its hyper-parameters without unpickling objects; "
                           "resuming without checking the config against it")
            return
        current, saved = self._config_dict(), saved_config(meta)
        self._check_model_class(ckpt_path, meta, current, saved)
        found = (conflicts(current, saved) if subcommand == "fit"
                 else differences(current, saved, "model", SAFE_MODEL_OPTIONS))
        if found:
            listed = "; ".join(f"{option} is {fmt(here)} here but {fmt(there)} in the checkpoint"
                               for option, here, there in found)
            config_yaml = self._checkpoint_config_file(ckpt_path, meta)
            raise ConfigError(
                f"--ckpt_path {ckpt_path} continues a run trained with other options: {listed}",
                hint="to resume that run, drop the override"
                     + ("s" if len(found) > 1 else "")
                     + " (or set the value back to the checkpoint's"
                     + (f"; its config is {config_yaml}" if config_yaml else "")
                     + "); to train with the new value, start a new run without --ckpt_path (to start from its "
                       "weights, use a config that loads a checkpoint, like the fine-tuning configs' "
                       "--model.init_args.checkpoint)")

    @staticmethod
    def _checkpoint_config_file(ckpt_path: str, meta: dict) -> Path | None:
        candidates = [Path(meta["run_dir"]) / "config.yaml"] if meta.get("run_dir") else []
        candidates.append(Path(ckpt_path).resolve().parent.parent / "config.yaml")
        return next((c for c in candidates if c.is_file()), None)

    def _check_model_class(self, ckpt_path: str, meta: dict, current: dict, saved: dict) -> None:
        saved_class = (saved.get("model") or {}).get("class_path")
        config_class = (current.get("model") or {}).get("class_path")
        if saved_class and config_class and not same_class(saved_class, config_class):
            config_yaml = self._checkpoint_config_file(ckpt_path, meta)
            raise ConfigError(
                f"checkpoint {ckpt_path} holds a {saved_class}, the config builds {config_class}",
                hint=f"give a checkpoint of a {config_class} run, or run this checkpoint with a "
                     f"{saved_class} config" + (f" (the one it was trained with: {config_yaml})" if config_yaml
                                                 else ""))

    # --- before anything is instantiated --------------------------------------------------------------------
    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        ckpt_path = config.get("ckpt_path") if config is not None else None
        meta = self.ckpt_meta or {}
        run_id = meta.get("wandb_run_id")
        loggers = config.trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if run_id and _is_wandb(logger) and not logger.init_args.get("id"):
                logger.init_args.id = run_id  # WandbLogger resumes with resume="allow"
        trainer = self._config_dict().get("trainer") or {}
        if self.subcommand == "fit":
            self._refuse_reused_checkpoint_dirs(trainer, ckpt_path, meta)
        fresh: set[Path] = set()
        for directory in _directories_a_run_creates(trainer):
            while not directory.exists() and directory != directory.parent:  # and its missing parents
                fresh.add(directory)
                directory = directory.parent
        self._fresh_dirs = sorted(fresh)
        # W&B points wandb/latest-run, debug.log, ... at the newest run: restored if this one is discarded
        self._links = {link: os.readlink(link) for d in _directories_a_run_creates(trainer) if d.name == "wandb"
                       and d.is_dir() for link in d.iterdir() if link.is_symlink()}

    def _refuse_reused_checkpoint_dirs(self, trainer: dict, ckpt_path: Any, meta: dict) -> None:
        for dirpath in checkpoint_dirpaths(trainer):
            existing = sorted(dirpath.glob("*.ckpt")) if dirpath.is_dir() else []
            if existing and not resumes(dirpath, ckpt_path, meta):
                raise ConfigError(
                    f"checkpoint folder {dirpath} (a ModelCheckpoint dirpath) already holds {len(existing)} "
                    f"checkpoint(s) of another run: this run would mix its checkpoints with them. Nothing was "
                    f"written",
                    hint=f"to continue that run, resume it: --ckpt_path {dirpath / 'last.ckpt'}; to start a new "
                         "run, give the ModelCheckpoint another dirpath (or none: the run directory)")

    # --- instantiation: the error of the class that refused its arguments ------------------------------------
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:
            original = unwrap_instantiation_error(err)
            if original is err:
                raise
            where = self._where(original)
            if where:
                try:
                    setattr(original, WHERE_ATTR, where)
                except AttributeError:  # pragma: no cover
                    pass
            raise original from None

    def _where(self, err: BaseException) -> str | None:
        """``--<option>`` (or ``<class_path> (--<key>)``) of the class that raised ``err`` in its ``__init__``."""
        cls = raising_class(err)
        if cls is None:
            return None
        try:
            config = self._config_dict()
        except Exception:
            return None
        places = [(path, value) for path, value in _class_configs(config) if same_class(value["class_path"],
                                                                                        f"{cls.__module__}.{cls.__qualname__}")]
        if len(places) != 1:
            return None
        path, value = places[0]
        leaves = _leaf_options(value.get("init_args") or {})
        for token in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", str(err)):
            if token in leaves and leaves[token] is not None:
                return f"--{path}.init_args.{leaves[token]}"
        return f"{value['class_path']} (--{path})"

    def after_instantiate_classes(self) -> None:
        if self.subcommand == "fit":  # the Trainer and its loggers exist, nothing is written yet
            config = self.config[self.subcommand]
            problem = reused_run_dir(self.trainer, config.get("ckpt_path"), self.ckpt_meta)
            if problem is not None:
                raise problem
        for callback in self.trainer.callbacks:
            if isinstance(callback, InterruptCheckpoint):
                callback.command = self.command

    # --- running: clean up after a run that failed before its first step ---------------------------------------
    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException as err:
            started = any(getattr(cb, "started", False) for cb in self.trainer.callbacks
                          if isinstance(cb, _FirstBatch))
            if started:
                mark_started(err)
            try:
                self._clean_up_failed_run(started)
            except Exception as cleanup_error:  # never hide the failure itself
                rank_zero_warn(f"could not clean up after the failed run: {cleanup_error}")
            raise

    def _clean_up_failed_run(self, started: bool) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        if not started:
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger) and logger._experiment is not None:
                    _discard_wandb_run(logger._experiment)
        saver = next((cb for cb in trainer.callbacks if isinstance(cb, RunConfigSaver)), None)
        if saver is not None and saver.created_dir is not None and _holds_only_configs(saver.created_dir):
            shutil.rmtree(saver.created_dir, ignore_errors=True)
        for link, target in self._links.items():
            if not os.path.lexists(link) and (link.parent / target).exists():
                link.symlink_to(target)
        for directory in sorted(self._fresh_dirs, key=lambda d: len(d.parts), reverse=True):
            if directory.is_dir() and not any(p.is_file() or p.is_symlink() for p in directory.rglob("*")):
                shutil.rmtree(directory, ignore_errors=True)


class _FirstBatch(pl.Callback):
    """Records that a step began: an error after that is a failure of the run, not of its input."""

    started = False

    def _start(self, *args: Any, **kwargs: Any) -> None:
        self.started = True

    on_train_batch_start = on_validation_batch_start = on_test_batch_start = on_predict_batch_start = _start


class ProjectParser(LightningArgumentParser):
    """LightningArgumentParser whose parse errors are one line naming the option, not the usage text and
    jsonargparse's nested "Does not validate against any of the Union subtypes" report (``--debug`` or
    ``LIGHTNING_DEBUG=1`` shows those)."""

    def error(self, message: str, ex: Exception | None = None) -> Any:
        if self.exit_on_error and not debug_requested():
            try:
                from jsonargparse._common import debug_mode_active
                debug = debug_mode_active()
            except ImportError:  # pragma: no cover
                debug = False
            if not debug:
                sys.stderr.write(f"error: {condense_parser_message(message)}\n"
                                 "hint: `lightning fit --help` lists the options; `--print_config` shows the "
                                 "resolved config (--debug shows the parser's full report)\n")
                self.exit(2)
        return super().error(message, ex)


_SKIP = re.compile(r"^(- )?(Does not validate against any of the Union subtypes|Subtypes:|Errors:|Given value"
                   r"( type)?:|Expected a <class 'NoneType'>)")
_KEY = re.compile(r'^(- )?Parser key "([^"]+)":\s*(.*)$')
_CLASS = re.compile(r"^(- )?Problem with given class_path '([^']+)':\s*(.*)$")
_NOT_ACCEPTED = re.compile(r"^(- )?Option '([^']+)' is not accepted$")


def condense_parser_message(message: str) -> str:
    """jsonargparse's nested error report as ``--<option>: <problem>`` lines joined by ``; ``."""
    stack: list[tuple[int, str]] = []  # (indent, key part)
    classes: list[tuple[int, str]] = []
    leaves: list[str] = []
    for raw in message.splitlines():
        if not raw.strip():
            continue
        indent = len(raw) - len(raw.lstrip())
        line = raw.strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        while classes and classes[-1][0] >= indent:
            classes.pop()
        if _SKIP.match(line):
            continue
        if m := _KEY.match(line):
            stack.append((indent, m.group(2)))
            if not m.group(3):
                continue
            line = m.group(3)
        elif m := _CLASS.match(line):
            stack.append((indent, "init_args"))
            classes.append((indent, m.group(2)))
            if not m.group(3):
                continue
            line = m.group(3)
        key = ".".join(part for _, part in stack)
        of_class = f" of {classes[-1][1]}" if classes else ""
        if m := _NOT_ACCEPTED.match(line):
            leaves.append(f"--{key + '.' if key else ''}{m.group(2)} is not an option{of_class}")
        else:
            line = re.sub(r"^- ", "", line)
            leaves.append(f"--{key}: {line}" if key else line)
    return "; ".join(dict.fromkeys(leaves)) if leaves else one_line(message)


def _class_configs(value: Any, path: str = "") -> list[tuple[str, dict]]:
    out = []
    if isinstance(value, dict):
        if isinstance(value.get("class_path"), str) and path:
            out.append((path, value))
        for key, item in value.items():
            out += _class_configs(item, f"{path}.{key}" if path else str(key))
    return out


def _leaf_options(init_args: dict) -> dict[str, str | None]:
    """Option name -> its dotted path under ``init_args`` (``None`` when two nested options share the name)."""
    paths: dict[str, set[str]] = {}

    def walk(value: dict, prefix: str) -> None:
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            paths.setdefault(str(key), set()).add(path)
            if isinstance(item, dict):
                walk(item, path)

    walk(init_args, "")
    return {name: next(iter(found)) if len(found) == 1 else None for name, found in paths.items()}


def _directories_a_run_creates(trainer: dict) -> list[Path]:
    """Folders a run may create before it writes a file: removed again when empty after a failed run."""
    root = trainer.get("default_root_dir")
    dirs = [Path(root)] if root else []
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if not isinstance(logger, dict):
            continue
        init = logger.get("init_args") or {}
        save_dir = init.get("save_dir") or init.get("dir")
        if save_dir:
            dirs += [Path(save_dir), Path(save_dir) / "wandb"]
            name = init.get("project") or init.get("name")
            if name:
                dirs.append(Path(save_dir) / name)
    return [d.resolve() for d in dirs]


def _holds_only_configs(directory: Path) -> bool:
    files = [p for p in directory.rglob("*") if p.is_file() or p.is_symlink()]
    return all(re.fullmatch(r"config(\.[\w-]+)?\.yaml", p.name) and p.parent == directory for p in files)


def _discard_wandb_run(run: Any) -> None:
    """Finish a W&B run that never reached a step; delete its local folder when it is offline."""
    try:
        folder = Path(run.dir).parent
        offline = getattr(run.settings, "mode", "") in ("offline", "dryrun") or bool(getattr(run, "offline", False))
    except Exception:
        return  # not a wandb Run (a rank's dummy experiment)
    run.finish(exit_code=1)
    if not offline or not folder.is_dir():
        return
    shutil.rmtree(folder, ignore_errors=True)
    for link in folder.parent.iterdir():  # latest-run, debug.log, ...: links into the removed folder
        if link.is_symlink() and not link.exists():
            link.unlink(missing_ok=True)


def _is_wandb(logger: Any) -> bool:
    class_path = getattr(logger, "class_path", None) if logger is not None else None
    return isinstance(class_path, str) and class_path.rsplit(".", 1)[-1] == "WandbLogger"


def import_plugins() -> list[str]:
    """Import the packages registered under the ``lightning_run.packages`` entry point group."""
    names = []
    for ep in entry_points(group=PLUGIN_GROUP):
        importlib.import_module(ep.value)
        names.append(ep.value)
    return names


def cli(args: list[str] | None = None) -> LightningCLI:
    """Run the project's LightningCLI (``fit``/``validate``/``test``/``predict``) and return it.

    Errors propagate as exceptions (``main`` turns them into messages and exit codes).
    """
    os.environ.setdefault("WANDB_SILENT", "true")
    import_plugins()
    command = list(sys.argv[1:] if args is None else args)
    expanded = expand_config_args(command)
    with warnings.catch_warnings():
        # cli() passes the command line as `args`; Lightning warns whenever sys.argv holds arguments too.
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
        return ProjectCLI(
            pl.LightningModule,
            pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunConfigSaver,
            save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
            parser_class=ProjectParser,
            auto_configure_optimizers=False,  # every module owns its optimizer as typed arguments
            seed_everything_default=0,  # two runs of one config are comparable unless told otherwise
            # Checkpoints are written next to their target, fsynced, then renamed: never half-written. Ctrl-C
            # saves a checkpoint to resume from. (Callbacks given here are added to every run's own.)
            trainer_defaults={"plugins": [{"class_path": "lightning_run.checkpoint_io.AtomicCheckpointIO"}],
                              "callbacks": [InterruptCheckpoint(), _FirstBatch()]},
            args=expanded,
            command=command,
        )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lightning`` console script: runs ``cli`` and returns the exit code (0 on success,
    2 for a mistake in the input, 1 for a failed run; see ``lightning_run.errors``). ``--debug`` (anywhere on
    the command line) or ``LIGHTNING_DEBUG=1`` prints the traceback of every failure."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(args)
    previous = os.environ.get(DEBUG_ENV)
    if "--debug" in args:
        args = [a for a in args if a != "--debug"]
        os.environ[DEBUG_ENV] = "1"  # for the parser's errors (and DDP processes started from here)
    try:
        cli(args)
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        sys.stderr.write(f"{exit_.code}\n")
        return 1
    except BaseException as err:  # noqa: BLE001 - every failure is reported, a bug with its traceback
        return report(err, debug)
    finally:
        if previous is None:
            os.environ.pop(DEBUG_ENV, None)
        else:
            os.environ[DEBUG_ENV] = previous
    return 0


__all__ = ["ConfigError", "ProjectCLI", "cli", "condense_parser_message", "import_plugins", "main"]

if __name__ == "__main__":
    sys.exit(main())
