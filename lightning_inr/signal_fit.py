"""``SignalFit``: the LightningModule that fits one signal (image, audio, SDF) with any INR.

It only orchestrates: the network (any :class:`~lightning_inr.field.CoordinateNetwork`:
:class:`NeuralExperts` or :class:`INR`), the task (loss, metrics, outputs) and the stages (data) are
plain objects given as typed arguments, so ``lightning fit --print_config`` shows every knob.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_inr.artifacts import log_files_to_wandb
from lightning_inr.field import CoordinateNetwork, check_network
from lightning_inr.label_maps import LabelMapKind, make_label_map
from lightning_inr.losses import manager_pretraining_loss
from lightning_inr.stages import (
    Stage,
    default_stages,
    reset_optimizer_state,
    set_trainable,
    stage_index,
    trainable_parameters,
    validate_stages,
)
from lightning_inr.tasks import Task
from lightning_run import compile_once, run_dir

log = logging.getLogger(__name__)

AUTO_COMPILE_MIN_STEPS = 1000
"""``compile="auto"`` compiles fits of at least this many steps (``trainer.max_steps``)."""


class SignalFit(pl.LightningModule):
    """Fit a signal with an INR, stage by stage.

    Args:
        network: the coordinate network (``lightning_inr.NeuralExperts`` or ``lightning_inr.INR``): any
            ``nn.Module`` satisfying :class:`~lightning_inr.field.CoordinateNetwork` (else a ``TypeError``
            naming what it lacks). Without a manager, no stage may pretrain one.
        task: ``lightning_inr.ImageTask`` / ``AudioTask`` / ``SDFTask``.
        stages: the training stages (default: manager pretraining 10 %, all 80 %, experts 100 %).
        lr, betas: Adam (official: 1e-5 images/audio, 3e-5 SDF; betas 0.9, 0.999).
        lr_gamma: ExponentialLR factor applied every step (official 0.9999).
        label_map: what the manager is pretrained to reproduce: ``random|grid|kmeans|none``
            (``none`` skips the manager stages).
        kmeans_coord_weight: weight of the coordinates in k-means features (0 = values only).
        label_seed: seed of the random label map.
        pretrain_label_smoothing, pretrain_uniform_weight, pretrain_weight: the manager loss
            (``weight``·(CE with smoothing + ``uniform_weight``·BCE towards 1/K); official 1000, 0.01, 0.1).
        manager_checkpoint: file of a pretrained manager. If it exists, it is loaded (the network's
            ``manager_modules()``: for Neural Experts the manager, manager encoder and expert encoder)
            and the manager stages are skipped; if not, the manager stages run and their result is
            saved there for later runs.
        write_outputs: write the reconstruction and expert map at the end of fit.
        compile: ``torch.compile`` the network's forward (in place: state-dict keys unchanged). ``"auto"``
            (default): for fits of at least ``AUTO_COMPILE_MIN_STEPS`` steps (the configs' 30k), where its
            one-off cost (7-11 s on CPU) is repaid many times (1.15x SIREN, 1.21x Neural Experts K = 4 per
            step on CPU, ``make bench-inr-compile``); eager for short and ``fast_dev_run`` fits. ``true`` /
            ``false`` force it. A forward the compiler cannot build runs eager with one warning
            (``lightning_run.compile_once``); a loss through the network's gradient (SIREN's SDF loss) keeps
            it eager. The first steps, and each stage switch (trainable set changes), pay a compilation.
    """

    def __init__(
        self,
        network: CoordinateNetwork,
        task: Task,
        stages: list[Stage] | None = None,
        lr: float = 1e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        lr_gamma: float = 0.9999,
        label_map: LabelMapKind = "random",
        kmeans_coord_weight: float = 0.0,
        label_seed: int = 0,
        pretrain_label_smoothing: float = 0.01,
        pretrain_uniform_weight: float = 0.1,
        pretrain_weight: float = 1000.0,
        manager_checkpoint: str | None = None,
        write_outputs: bool = True,
        compile: bool | Literal["auto"] = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(compile, bool) and compile != "auto":
            raise ValueError(f"compile must be true, false or 'auto', got {compile!r}")
        self.save_hyperparameters(ignore=["network", "task"])
        self.network = check_network(network, "SignalFit.network")
        self.task = task
        stages = list(stages) if stages is not None else default_stages()
        validate_stages(stages)
        has_manager = bool(network.manager_modules())
        if not has_manager and any(s.objective == "manager" for s in stages):
            raise ValueError(
                "stages: a 'manager' objective needs a network with a manager (NeuralExperts); "
                f"{type(network).__name__} has none"
            )
        for s in stages:
            if not trainable_parameters(network, s.train):
                raise ValueError(f"stage {s.name!r}: train={s.train!r} trains no parameter of {type(network).__name__}")
        self.stages = stages
        self._has_manager = has_manager
        self.lr, self.betas, self.lr_gamma = lr, tuple(betas), lr_gamma
        self.label_map_kind = label_map
        self.manager_checkpoint = Path(manager_checkpoint) if manager_checkpoint else None
        self._active: int | None = None
        self._labels: torch.Tensor | None = None
        self._pt_coords: torch.Tensor | None = None
        self._skip_manager = label_map == "none" or not has_manager

    # ------------------------------------------------------------------ stages

    @property
    def effective_stages(self) -> list[Stage]:
        """The stages that run: manager stages dropped when skipped (their steps go to the next)."""
        if self._skip_manager:
            kept = [s for s in self.stages if s.objective != "manager"]
            if not kept:
                raise ValueError("stages: only manager stages are left once pretraining is skipped")
            return kept
        return self.stages

    @property
    def current_stage(self) -> Stage:
        return self.effective_stages[self._active if self._active is not None else 0]

    def _enter_stage(self, index: int) -> None:
        stages = self.effective_stages
        leaving = stages[self._active] if self._active is not None else None
        if leaving is not None and leaving.objective == "manager" and stages[index].objective != "manager":
            self._save_pretrained_manager()
        self._active = index
        stage = stages[index]
        set_trainable(self.network, stage.train)
        # Reset only at a switch: at the first step (fresh or resumed) the state is empty or restored.
        if leaving is not None and self._trainer is not None:
            for opt in self.trainer.optimizers:
                reset_optimizer_state(opt)
        log.info("stage %r from step %d (train=%s)", stage.name, self.global_step, stage.train)

    # ------------------------------------------------------------------ pretrained manager

    def _save_pretrained_manager(self) -> None:
        path = self.manager_checkpoint
        # Saved only once a manager stage has run to its end; never from a debug run.
        if path is None or path.exists() or self.global_rank != 0 or self.trainer.fast_dev_run:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {name: module.state_dict() for name, module in self.network.manager_modules().items()}
        state["meta"] = {"label_map": self.label_map_kind, "n_experts": self.network.n_experts}
        torch.save(state, path)
        log.info("saved the pretrained manager to %s", path)

    def _load_pretrained_manager(self) -> None:
        path = self.manager_checkpoint
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # corrupt or foreign file
            raise ValueError(f"manager_checkpoint {path}: cannot be read as a pretrained manager ({err})") from err
        modules = self.network.manager_modules()
        missing = [name for name in modules if name not in state]
        if missing:
            raise ValueError(f"manager_checkpoint {path}: not a pretrained manager (missing {missing})")
        meta = state.get("meta", {})
        if meta.get("label_map") not in (None, self.label_map_kind):
            raise ValueError(
                f"manager_checkpoint {path}: pretrained on label_map={meta['label_map']!r}, "
                f"this run asks for {self.label_map_kind!r}"
            )
        for name, module in modules.items():
            try:
                module.load_state_dict(state[name])
            except RuntimeError as err:
                raise ValueError(f"manager_checkpoint {path}: does not fit this network's {name}: {err}") from err
        log.info("loaded the pretrained manager from %s", path)

    # ------------------------------------------------------------------ Lightning hooks

    def configure_model(self) -> None:
        compile_ = self.wants_compile()
        if compile_ and self.task.double_backward:
            if not getattr(self, "_compile_skip_said", False):
                rank_zero_info(f"compile: off for {type(self.task).__name__}'s loss, which differentiates the "
                               "network's gradient (a double backward torch.compile does not support)")
                self._compile_skip_said = True
            compile_ = False
        compile_once(self, self.network, compile_)

    def wants_compile(self) -> bool:
        """The ``compile`` option resolved for this fit (``"auto"``: long, non-debug fits)."""
        choice = self.hparams.get("compile", False)
        if choice != "auto":
            return bool(choice)
        trainer = self._trainer
        if trainer is None or trainer.fast_dev_run:
            return False
        return trainer.max_steps >= AUTO_COMPILE_MIN_STEPS

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.lr, betas=self.betas)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=self.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        if self._has_manager and self.manager_checkpoint is not None and self.manager_checkpoint.exists():
            self._load_pretrained_manager()
            self._skip_manager = True
        if not self._skip_manager and any(s.objective == "manager" for s in self.stages):
            data = self.trainer.datamodule
            coords = data.pretraining_coords()
            values = data.pretraining_values() if self.label_map_kind == "kmeans" else None
            labels = make_label_map(
                self.label_map_kind, coords, self.network.n_experts, values,
                self.hparams.kmeans_coord_weight, self.hparams.label_seed,
            )
            self._pt_coords, self._labels = coords.to(self.device), labels.to(self.device)
        self._active = None

    def _total_steps(self) -> int:
        total = self.trainer.max_steps
        if total is None or total < 0:
            total = int(self.trainer.estimated_stepping_batches)
        return max(1, int(total))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        index = stage_index(self.effective_stages, self.global_step, self._total_steps())
        if index != self._active:
            self._enter_stage(index)
        stage = self.current_stage
        if stage.objective == "manager":
            logits = self.network.manager_logits(self._pt_coords)
            seg = manager_pretraining_loss(
                logits, self._labels, self.hparams.pretrain_label_smoothing, self.hparams.pretrain_uniform_weight
            )
            loss = self.hparams.pretrain_weight * seg
            accuracy = (logits.argmax(-1) == self._labels).float().mean()
            logs = {"label_accuracy": float(accuracy)}
        else:
            loss, logs = self.task.training_loss(self.network, batch)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/stage", float(self._active))
        for key, value in logs.items():
            self.log(f"train/{key}", value)
        return loss

    def on_train_end(self) -> None:
        # A run made only of manager pretraining (e.g. `make kodak` pretraining once) saves at its end.
        if self._active is not None and self.current_stage.objective == "manager":
            if self.global_step >= self._total_steps():
                self._save_pretrained_manager()

    def validation_step(self, batch, batch_idx: int) -> None:
        results = self.task.evaluate(self.network, self.trainer.datamodule)
        for key, value in results.items():
            self.log(f"val/{key}", value, batch_size=1)

    def on_fit_end(self) -> None:
        if not self.hparams.write_outputs or self.global_rank != 0:
            return

        directory = run_dir(self.trainer)
        directory.mkdir(parents=True, exist_ok=True)
        self.network.eval()
        results = self.task.evaluate(self.network, self.trainer.datamodule, final=True)
        results["parameters"] = sum(p.numel() for p in self.network.parameters())
        results["steps"] = self.global_step
        (directory / "metrics.json").write_text(json.dumps(results, indent=2))
        files = self.task.write_outputs(self.network, self.trainer.datamodule, directory)
        for lg in self.trainer.loggers:
            lg.log_metrics({f"final/{k}": v for k, v in results.items()}, step=self.global_step)
        log_files_to_wandb(self.trainer, files)
