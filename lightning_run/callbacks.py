"""Callbacks every experiment uses: the resolved-config saver, the end-of-run summary and the checkpoint
written on Ctrl-C."""

from __future__ import annotations

import shlex
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from lightning_run.errors import ConfigError
from lightning_run.resume import (
    INTERRUPTED_NAME,
    RUN_CONFIG_KEY,
    RUN_DIR_KEY,
    is_local_path,
    previous_run,
    read_meta,
    resumes,
    reused_dir_error,
)
from lightning_run.rundir import run_dir


class RunConfigSaver(SaveConfigCallback):
    """Writes the resolved config to ``run_dir/config.yaml`` and sends it to W&B as the run config.

    Checkpoints also record the W&B run id, the run directory and the resolved config, so ``fit --ckpt_path``
    resumes logging into the same run and can tell which options the checkpoint's run was trained with (see
    ``lightning_run.cli.ProjectCLI``).

    A run directory that already holds another run (its config.yaml or checkpoints) is never written into by
    ``fit``: unless this run resumes a checkpoint of that run, setup stops with a ``ConfigError`` before
    anything is written. A resumed run keeps the earlier config as ``config.<n>.yaml`` when its own differs;
    ``validate``/``test``/``predict`` write ``config.<stage>.yaml`` next to a training run's config.
    """

    created_dir: Path | None = None  # the run directory, when this run created it (lightning_run.cli cleans up)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.already_saved:
            problem = self._reuse_problem(trainer, stage) if trainer.is_global_zero else None
            problem = trainer.strategy.broadcast(problem)  # every process stops, none waits for the others
            if problem is not None:
                raise ConfigError(*problem)
        super().setup(trainer, pl_module, stage)

    def _reuse_problem(self, trainer: pl.Trainer, stage: str) -> tuple[str, str | None] | None:
        directory = run_dir(trainer)
        found = previous_run(directory)
        if stage != "fit" or not found:
            return None
        ckpt_path = self.config.get("ckpt_path")
        meta = read_meta(ckpt_path) if is_local_path(ckpt_path) and Path(str(ckpt_path)).is_file() else None
        run_id = trainer.logger.version if isinstance(trainer.logger, WandbLogger) else None
        if resumes(directory, ckpt_path, meta, run_id):
            return None
        option = ("--trainer.logger.init_args.id" if isinstance(trainer.logger, WandbLogger)
                  else "--trainer.logger.init_args.version" if trainer.loggers else "--trainer.default_root_dir")
        err = reused_dir_error(directory, found, option)
        return str(err), err.hint

    def run_config(self) -> dict[str, Any]:
        """The resolved config as plain data (what config.yaml holds)."""
        if not hasattr(self, "_run_config"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._run_config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        return self._run_config

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                checkpoint["wandb_run_id"] = logger.version
        checkpoint[RUN_CONFIG_KEY] = self.run_config()
        checkpoint[RUN_DIR_KEY] = str(run_dir(trainer).resolve())

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Called on global rank 0 only (SaveConfigCallback.setup checks it).
        directory = run_dir(trainer)
        self.created_dir = None if directory.exists() else directory
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.config_filename
        previous = path.read_text() if path.is_file() else None
        if previous is not None and stage != "fit":
            path = directory / f"{path.stem}.{stage}{path.suffix}"  # next to the training run's config
            previous = None
        self.parser.save(self.config, path, skip_unset=False, overwrite=True, multifile=False)
        if previous is not None and path.read_text() != previous:  # a resumed run with other trainer options
            n = 1
            while (kept := directory / f"{path.stem}.{n}{path.suffix}").exists():
                n += 1
            kept.write_text(previous)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(self.config.as_dict(), allow_val_change=True)
                logger.experiment.save(str(path), base_path=str(directory), policy="now")


class RunSummary(pl.Callback):
    """At the end of ``fit``, prints where the run's files are and its final metrics."""

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        lines = [f"Run directory: {run_dir(trainer)}"]
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and Path(getattr(ckpt, "last_model_path", "") or "/nonexistent").is_file():
            lines.append(f"Last checkpoint: {ckpt.last_model_path}")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                where = Path(run.dir).parent
                offline = getattr(run.settings, "mode", "") == "offline" or getattr(run, "offline", False)
                lines.append(f"W&B run: {where}" + (f" (offline: upload with `wandb sync {where}`)" if offline else ""))
            elif isinstance(logger, CSVLogger):
                lines.append(f"Metrics CSV: {Path(logger.log_dir, 'metrics.csv')}")
            elif isinstance(logger, TensorBoardLogger):
                lines.append(f"TensorBoard: tensorboard --logdir {logger.log_dir}")
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if v.numel() == 1 and not k.endswith(("_step", "_epoch"))}
        if metrics:
            lines.append("Final metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
        rank_zero_info("\n".join(lines))


class InterruptCheckpoint(pl.Callback):
    """Ctrl-C during ``fit`` saves a checkpoint to resume from: ``interrupted.ckpt`` beside the run's checkpoints
    (the ModelCheckpoint's folder, by default ``<run_dir>/checkpoints``), marked ``checkpoint["interrupted"]``.
    ``--ckpt_path last`` picks it when it is the newest.

    In a single process the first Ctrl-C lets the current step finish and saves at its end: the checkpoint is
    then exactly what a periodic one of that step would be, and the resumed run continues with the next batch.
    A second Ctrl-C (or any ``KeyboardInterrupt`` that reaches Lightning, e.g. under DDP where each process
    gets the signal) stops at once; the checkpoint then holds the weights of the last completed optimizer step
    (``global_step``) and Lightning repeats the interrupted batch on resume. The ``lightning`` command adds
    this callback to every run (``lightning_run.cli``); no config needs to name it.

    Args:
        graceful: finish the current step on the first Ctrl-C (single process only).
    """

    def __init__(self, graceful: bool = True) -> None:
        self.graceful = graceful
        self.command: list[str] | None = None  # the command line, to print the resume command
        self.saved_path: Path | None = None
        self._requested = False
        self._saving = False
        self._previous_handler: Any = None

    # --- the first Ctrl-C: finish the step ------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._requested = False
        if (self.graceful and trainer.world_size == 1 and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._requested:  # the second Ctrl-C: stop now
            self._restore_handler()
            raise KeyboardInterrupt
        self._requested = True
        print("\nCtrl-C: finishing the current step, then saving a checkpoint to resume from "
              "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def _restore_handler(self) -> None:
        if self._previous_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_handler)
        self._previous_handler = None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._requested:
            raise KeyboardInterrupt  # Lightning's interrupt path: on_exception saves, the run stops

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._requested and not trainer.sanity_checking:
            raise KeyboardInterrupt

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handler()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_handler()

    # --- saving -----------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self._saving:
            checkpoint["interrupted"] = True

    def path(self, trainer: pl.Trainer) -> Path:
        dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
        return Path(dirpath) / INTERRUPTED_NAME if dirpath else run_dir(trainer) / "checkpoints" / INTERRUPTED_NAME

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handler()
        if not isinstance(exception, KeyboardInterrupt) or trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        if trainer.global_step == 0:
            rank_zero_info("Interrupted before the first optimizer step: no checkpoint to resume from.")
            return
        path = self.path(trainer)
        self._saving = True
        try:
            if trainer.world_size == 1:
                trainer.save_checkpoint(path)
            elif trainer.is_global_zero and type(trainer.strategy).__name__ in ("DDPStrategy",):
                # no barrier: the other processes are stopping too
                checkpoint = trainer._checkpoint_connector.dump_checkpoint()
                trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, path)
            elif trainer.is_global_zero:
                rank_zero_warn(f"Interrupted: no {INTERRUPTED_NAME} under {type(trainer.strategy).__name__}; "
                               "resume from the last periodic checkpoint.")
                return
            else:
                return
        except Exception as err:  # the interrupt, not this, is what the user should see
            rank_zero_warn(f"Interrupted, but could not save {path}: {err}")
            return
        finally:
            self._saving = False
        self.saved_path = path
        rank_zero_info(f"Interrupted at step {trainer.global_step} (epoch {trainer.current_epoch}): saved {path}\n"
                       f"Resume with: {self.resume_command(path)}")

    def resume_command(self, path: Path) -> str:
        if not self.command:
            return f"the same command with --ckpt_path {path} (or --ckpt_path last)"
        args, skip = [], False
        for arg in self.command:
            if skip:
                skip = False
                continue
            if arg == "--ckpt_path":
                skip = True
                continue
            if not arg.startswith("--ckpt_path="):
                args.append(arg)
        return shlex.join(["lightning", *args, "--ckpt_path", str(path)])
