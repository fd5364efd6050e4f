"""Callbacks every experiment uses: the resolved-config saver and the end-of-run summary."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from lightning_run.rundir import run_dir


class RunConfigSaver(SaveConfigCallback):
    """Writes the resolved config to ``run_dir/config.yaml`` and sends it to W&B as the run config.

    Checkpoints also record the W&B run id, so ``fit --ckpt_path`` resumes logging into the same run
    (see ``lightning_run.cli.ProjectCLI``).
    """

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                checkpoint["wandb_run_id"] = logger.version

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Called on global rank 0 only (SaveConfigCallback.setup checks it).
        directory = run_dir(trainer)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.config_filename
        self.parser.save(self.config, path, skip_unset=False, overwrite=True, multifile=False)
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
