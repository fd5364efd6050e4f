"""The project's ``lightning`` command: a LightningCLI over every model and DataModule of the project.

``lightning`` 2.x installs no ``lightning`` executable; ``pyproject.toml`` maps that name to ``main``.
Models and data are chosen by ``class_path`` (subclass mode), so any LightningModule / DataModule can be
named in a config. This layer knows no method: the packages to register (so ``--model.help`` lists them
and configs may use short class names) are the ``lightning_run.packages`` entry points of the installed
distributions (``pyproject.toml``), which a user's package can join too.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from lightning_run.callbacks import RunConfigSaver
from lightning_run.configs import expand_config_args

PLUGIN_GROUP = "lightning_run.packages"


class ProjectCLI(LightningCLI):
    """LightningCLI that resumes the W&B run of the checkpoint it resumes from."""

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        ckpt_path = config.get("ckpt_path") if config is not None else None
        if not ckpt_path or not Path(str(ckpt_path)).is_file():
            return  # no checkpoint, or one of Lightning's aliases ("last", "best", ...)
        try:
            run_id = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get("wandb_run_id")
        except Exception as err:  # Lightning reports unreadable checkpoints itself, with more context
            rank_zero_info(f"could not read the W&B run id from {ckpt_path}: {err}")
            return
        loggers = config.trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if run_id and _is_wandb(logger) and not logger.init_args.get("id"):
                logger.init_args.id = run_id  # WandbLogger resumes with resume="allow"


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
    """Run the project's LightningCLI (``fit``/``validate``/``test``/``predict``) and return it."""
    os.environ.setdefault("WANDB_SILENT", "true")
    import_plugins()
    args = expand_config_args(sys.argv[1:] if args is None else list(args))
    return ProjectCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=RunConfigSaver,
        save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
        auto_configure_optimizers=False,  # every module owns its optimizer as typed arguments
        seed_everything_default=0,  # two runs of one config are comparable unless told otherwise
        # Checkpoints are written next to their target, fsynced, then renamed: never half-written.
        trainer_defaults={"plugins": [{"class_path": "lightning_run.checkpoint_io.AtomicCheckpointIO"}]},
        args=args,
    )


def main() -> None:
    """Entry point of the ``lightning`` console script."""
    cli()


if __name__ == "__main__":
    main()
