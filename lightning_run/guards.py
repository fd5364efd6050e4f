"""``NonFiniteLossGuard``: a callback that checks the loss (and gradients) of every optimizer step before
the step is applied, and stops the run naming the step, the epoch and the value."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.optim import Optimizer


class NonFiniteLossError(RuntimeError):
    """Raised by ``NonFiniteLossGuard``."""


class NonFiniteLossGuard(pl.Callback):
    """Stops training at the first non-finite loss or gradient, before the optimizer step applies it.

    The check runs after backward and before the optimizer step, so the weights in memory, and the last
    checkpoint (written after the previous step), are still those of the last good step; the raised
    ``NonFiniteLossError`` ends the run before any other checkpoint is written. The flags are summed over
    all processes, so every rank stops at the same step (a rank stopping alone would leave the others
    waiting in their next collective). Costs one host sync and, under DDP, one all-reduce of two numbers
    per optimizer step.

    Args:
        check_gradients: also stop on non-finite gradients when the loss is finite (e.g. a sqrt or a norm
            at zero in backward). Not checked under fp16 loss scaling, where inf gradients are expected
            now and then and the scaler skips those steps itself.
    """

    def __init__(self, check_gradients: bool = True) -> None:
        self.check_gradients = check_gradients
        self._losses: list[Tensor] = []  # the losses of the micro-batches of the coming optimizer step

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        self._losses.append(loss.detach().float())

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
                                 ) -> None:
        losses, self._losses = self._losses, []
        device = trainer.strategy.root_device
        losses_t = torch.stack(losses) if losses else torch.zeros(0, device=device)
        # [processes with a non-finite loss, processes with a non-finite gradient], without a host sync
        flags = torch.stack([~losses_t.isfinite().all(), ~self._gradients_finite(trainer, optimizer, device)])
        bad_loss, bad_grad = trainer.strategy.reduce(flags.float(), reduce_op="sum").tolist()
        if bad_loss == bad_grad == 0:
            return
        values = ", ".join(f"{v:.6g}" for v in losses_t.tolist()) or "none"
        where = f"global step {trainer.global_step} (epoch {trainer.current_epoch})"
        if bad_loss and trainer.world_size > 1:
            what = (f"non-finite loss at {where} on {bad_loss:.0f} of {trainer.world_size} processes "
                    f"(this process: loss = {values})")
        elif bad_loss:
            what = f"non-finite loss at {where}: loss = {values}"
        else:
            names = [n for n, p in pl_module.named_parameters() if p.grad is not None and not p.grad.isfinite().all()]
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            what = f"non-finite gradient at {where} in {shown or 'a parameter of another process'} (loss = {values})"
        last = [cb.last_model_path for cb in trainer.checkpoint_callbacks if getattr(cb, "last_model_path", "")]
        kept = f"; the last checkpoint, {last[0]}, is untouched" if last else ""
        raise NonFiniteLossError(
            f"{what}. Stopped before the optimizer step: the weights are those after step {trainer.global_step}"
            f"{kept}. {'Resume from it' if kept else 'Run again'} with clipped gradients (--trainer.gradient_clip_val) "
            "or bf16-mixed instead of 16-mixed (trainer options may change on resume), or start a new run with a "
            "lower learning rate."
        )

    def _gradients_finite(self, trainer: pl.Trainer, optimizer: Optimizer, device: torch.device) -> Tensor:
        if not self.check_gradients or getattr(trainer.precision_plugin, "scaler", None) is not None:
            return torch.tensor(True, device=device)
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return torch.tensor(True, device=device)
        return torch.stack([g.isfinite().all() for g in grads]).all().to(device)
