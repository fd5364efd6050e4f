"""``SignalFit``: the LightningModule that fits one signal (image, audio, SDF) with any INR.

It only orchestrates: the network (any :class:`~lightning_inr.field.CoordinateNetwork`:
:class:`NeuralExperts` or :class:`INR`), the task (loss, metrics, outputs) and the stages (data) are
plain objects given as typed arguments, so ``lightning fit --print_config`` shows every knob.

A fit of a network with a manager has two phases: the manager phase (load ``manager_checkpoint``, or
pretrain the manager with :func:`~lightning_inr.manager_pretraining.pretrain_manager`, its own optimizer
and steps, and save it there), then the Trainer's steps, which are all reconstruction steps: the lr
schedule and the stages start with them.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_inr.artifacts import log_files_to_wandb
from lightning_inr.field import CoordinateNetwork, check_network
from lightning_inr.label_maps import LabelMapKind, make_label_map
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


def _manager_pretraining():
    """:mod:`lightning_inr.manager_pretraining`, imported when first needed: the package does not import it,
    so that ``python -m lightning_inr.manager_pretraining`` runs it once (no runpy double-import warning)."""
    from lightning_inr import manager_pretraining

    return manager_pretraining

AUTO_COMPILE_MIN_STEPS = 1000
"""``compile="auto"`` compiles fits of at least this many steps (``trainer.max_steps``)."""


class SignalFit(pl.LightningModule):
    """Fit a signal with an INR: the manager phase, then the reconstruction stages.

    Args:
        network: the coordinate network (``lightning_inr.NeuralExperts`` or ``lightning_inr.INR``): any
            ``nn.Module`` satisfying :class:`~lightning_inr.field.CoordinateNetwork` (else a ``TypeError``
            naming what it lacks). Without a manager there is no manager phase.
        task: ``lightning_inr.ImageTask`` / ``AudioTask`` / ``SDFTask``.
        stages: the reconstruction stages, over the Trainer's steps (default: all parameters until 0.8,
            experts only until 1.0). A stage with ``objective: manager`` (the in-schedule pretraining of
            earlier versions) raises an error pointing to ``manager_steps``.
        lr, betas: Adam (official: 1e-5 images/audio, 3e-5 SDF; betas 0.9, 0.999).
        lr_gamma: ExponentialLR factor applied every step (official 0.9999), from the first reconstruction step.
        label_map: what the manager is pretrained to reproduce: ``random|grid|kmeans|none``
            (``none``: no manager phase).
        kmeans_coord_weight: weight of the coordinates in k-means features (0 = values only).
        label_seed: seed of the random label map.
        manager_steps: steps of the manager phase (official 3,000; 0 = no pretraining), not counted in the
            Trainer's steps; its own Adam (``betas``) and ExponentialLR (``lr_gamma``). One step under
            ``fast_dev_run``. Logged as ``manager/loss``, ``manager/accuracy``, ``manager/lr`` (step = phase step).
        manager_lr: its learning rate (``None`` = ``lr``, as the official code).
        pretrain_label_smoothing, pretrain_uniform_weight, pretrain_weight: the manager loss
            (``weight``·(CE with smoothing + ``uniform_weight``·BCE towards 1/K); official 1000, 0.01, 0.1).
        manager_checkpoint: file of a pretrained manager (``managers/<file>``: one shipped in the package,
            see :func:`~lightning_inr.manager_pretraining.resolve_manager_checkpoint`). If it exists it is
            loaded (the network's ``manager_modules()``: for Neural Experts the manager, manager encoder and
            expert encoder) and the manager phase is skipped; if not, the phase runs and its result is saved
            there for later runs (not from a ``fast_dev_run``). ``None``: the phase runs at every fit.
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
        manager_steps: int = 3000,
        manager_lr: float | None = None,
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
        if manager_steps < 0:
            raise ValueError(f"manager_steps must be >= 0, got {manager_steps}")
        for s in stages:
            if not trainable_parameters(network, s.train):
                raise ValueError(f"stage {s.name!r}: train={s.train!r} trains no parameter of {type(network).__name__}")
        self.stages = stages
        self.lr, self.betas, self.lr_gamma = lr, tuple(betas), lr_gamma
        self.label_map_kind = label_map
        self.manager_checkpoint = _manager_pretraining().resolve_manager_checkpoint(manager_checkpoint)
        self._active: int | None = None
        self.manager_phase: dict | None = None  # what the manager phase did (loaded / pretrained), for logs
        self._has_manager_phase = has_manager and label_map != "none"
        # time in this process's training steps (no validation, no manager phase), for metrics.json
        self._train_seconds, self._timed_steps, self._step_started = 0.0, 0, 0.0

    # ------------------------------------------------------------------ stages

    @property
    def current_stage(self) -> Stage:
        return self.stages[self._active if self._active is not None else 0]

    def _enter_stage(self, index: int) -> None:
        stages = self.stages
        leaving = stages[self._active] if self._active is not None else None
        self._active = index
        stage = stages[index]
        set_trainable(self.network, stage.train)
        # Reset only at a switch: at the first step (fresh or resumed) the state is empty or restored.
        if leaving is not None and self._trainer is not None:
            for opt in self.trainer.optimizers:
                reset_optimizer_state(opt)
        log.info("stage %r from step %d (train=%s)", stage.name, self.global_step, stage.train)

    # ------------------------------------------------------------------ the manager phase

    def _run_manager_phase(self) -> None:
        """Load the manager from ``manager_checkpoint``, or pretrain it (and save it there)."""
        mp = _manager_pretraining()
        hp, trainer, path = self.hparams, self.trainer, self.manager_checkpoint
        data = trainer.datamodule
        coords = data.pretraining_coords()
        if path is not None and path.exists():
            meta = mp.load_manager(self.network, path, self.label_map_kind, coords.shape[0])
            self.manager_phase = {"source": str(path), "accuracy": meta.get("accuracy")}
            log.info("loaded the pretrained manager from %s", path)
            return
        if hp.manager_steps == 0:
            return
        values = data.pretraining_values() if self.label_map_kind == "kmeans" else None
        labels = make_label_map(self.label_map_kind, coords, self.network.n_experts, values,
                                hp.kmeans_coord_weight, hp.label_seed)
        steps = min(1, hp.manager_steps) if trainer.fast_dev_run else hp.manager_steps
        log.info("manager pretraining: %d steps on %d points (label map %s)", steps, coords.shape[0],
                 self.label_map_kind)

        def to_loggers(step: int, metrics: dict[str, float]) -> None:
            for logger in trainer.loggers:  # the loggers write from rank 0 only
                logger.log_metrics({f"manager/{k}": v for k, v in metrics.items()}, step=step)

        result = mp.pretrain_manager(
            self.network, coords, labels, steps, hp.manager_lr if hp.manager_lr is not None else self.lr,
            self.betas, self.lr_gamma, hp.pretrain_weight, hp.pretrain_label_smoothing, hp.pretrain_uniform_weight,
            log_every=max(1, trainer.log_every_n_steps), on_log=to_loggers,
        )
        if trainer.world_size > 1:  # every rank pretrained the same way; make them equal to the last bit
            params = mp.manager_parameters(self.network)
            state = trainer.strategy.broadcast([p.detach().cpu() for p in params], src=0)
            with torch.no_grad():
                for p, value in zip(params, state):
                    p.copy_(value)
        self.manager_phase = {"source": "pretrained", "steps": steps, "accuracy": result["accuracy"],
                              "seconds": result["seconds"]}
        log.info("manager pretraining: label accuracy %.4f, loss %.4f after %d steps (%.0f s)",
                 result["accuracy"], result["loss"], steps, result["seconds"])
        if path is not None and not trainer.fast_dev_run and trainer.is_global_zero:
            meta = {"label_map": self.label_map_kind, "n_points": coords.shape[0], "steps": steps,
                    "lr": hp.manager_lr if hp.manager_lr is not None else self.lr, "lr_gamma": self.lr_gamma,
                    "label_seed": hp.label_seed, "loss": result["loss"], "accuracy": result["accuracy"]}
            mp.save_manager(self.network, path, meta)
            log.info("saved the pretrained manager to %s", path)

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
        # Before the first step, outside the Trainer's steps and lr schedule. A resumed fit restored the
        # trained manager from its checkpoint already: loading or pretraining again would undo that.
        if self._has_manager_phase and self.trainer.ckpt_path is None:
            self._run_manager_phase()
        self._active = None

    def _total_steps(self) -> int:
        total = self.trainer.max_steps
        if total is None or total < 0:
            total = int(self.trainer.estimated_stepping_batches)
        return max(1, int(total))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        index = stage_index(self.stages, self.global_step, self._total_steps())
        if index != self._active:
            self._enter_stage(index)
        loss, logs = self.task.training_loss(self.network, batch)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/stage", float(self._active))
        for key, value in logs.items():
            self.log(f"train/{key}", value)
        return loss

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # after the optimizer step: forward, backward and update (what a table's "time per step" means)
        self._train_seconds += time.perf_counter() - self._step_started
        self._timed_steps += 1

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
        if self._timed_steps:
            results["seconds_per_step"] = self._train_seconds / self._timed_steps
        if self.manager_phase is not None and self.manager_phase.get("accuracy") is not None:
            results["manager_accuracy"] = float(self.manager_phase["accuracy"])  # on its label map
            if "seconds" in self.manager_phase:
                results["manager_seconds"] = self.manager_phase["seconds"]
        (directory / "metrics.json").write_text(json.dumps(results, indent=2))
        files = self.task.write_outputs(self.network, self.trainer.datamodule, directory)
        for lg in self.trainer.loggers:
            lg.log_metrics({f"final/{k}": v for k, v in results.items()}, step=self.global_step)
        log_files_to_wandb(self.trainer, files)
