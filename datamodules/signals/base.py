"""Common plumbing of the single-signal DataModules (image, audio, SDF) of ``lightning_inr``.

Under DDP each rank trains on every ``world_size``-th point of the batch, so the processes together
see the whole signal once per step (the effective batch does not grow with the number of GPUs) and
DDP's gradient average equals the one-process full-batch gradient.

One signal is fitted with the whole signal as every batch (the official full-batch recipe), so an
"epoch" is just ``steps_per_epoch`` steps; validation is one evaluation of the whole signal.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

SAMPLES = Path(__file__).resolve().parent / "samples"
"""One sample of each signal shipped inside the package (``samples/README.md``: sources, licences)."""

FULL_SETS = "`make data-inr` (python -m datamodules.signals.download --out data) downloads the full sets into data/"


def resolve_path(value: str | Path, option: str = "path") -> Path:
    """The file or folder named by the option ``option`` = ``value``.

    ``value`` as given (relative to the working directory) when it exists; otherwise a relative
    ``samples/...`` names the samples bundled in the package (``datamodules/signals/samples/...``,
    found next to this file, so installed copies find them too). A missing path raises a
    ``FileNotFoundError`` that names the value and every place looked.
    """
    path = Path(value).expanduser()
    if path.exists():
        return path
    looked = [str(path) if path.is_absolute() else f"{Path.cwd() / path} (from the working directory)"]
    if not path.is_absolute() and path.parts and path.parts[0] == "samples":
        bundled = SAMPLES.joinpath(*path.parts[1:])
        if bundled.exists():
            return bundled
        looked.append(f"{bundled} (the samples bundled in the package)")
    places = " nor at ".join(looked)
    raise FileNotFoundError(
        f"{option} {str(value)!r}: not found at {places}. Bundled samples: samples/kodak (kodim19.png), "
        f"samples/audio/gt_bach.wav, samples/meshes/bunny.off; {FULL_SETS}."
    )


class _Repeat(Dataset):
    """``length`` items, each made by ``make()`` (the same full batch, or a fresh sample)."""

    def __init__(self, make: Callable[[], dict], length: int) -> None:
        self.make, self.length = make, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.make()


def shard(batch: dict, rank: int, world_size: int) -> dict:
    """Every ``world_size``-th point (dim 0) of each tensor of ``batch``, starting at ``rank``."""
    if world_size == 1:
        return batch
    return {k: v[rank::world_size] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class SignalDataModule(pl.LightningDataModule):
    """Base: subclasses load their signal in ``setup`` and implement ``train_batch``."""

    in_dim: int
    out_dim: int

    def __init__(self, steps_per_epoch: int = 100) -> None:
        super().__init__()
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.steps_per_epoch = steps_per_epoch

    def train_batch(self) -> dict:
        raise NotImplementedError

    def pretraining_coords(self) -> torch.Tensor:
        """Points on which the manager learns its label map."""
        raise NotImplementedError

    def pretraining_values(self) -> torch.Tensor | None:
        """Signal values at those points (for a k-means label map); ``None`` if not meaningful."""
        return None

    def train_dataloader(self) -> DataLoader:
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)

        def make() -> dict:
            return shard(self.train_batch(), rank, world)

        # batch_size=None: items are already whole batches; no worker processes for one tensor.
        # ``world`` x the steps: Lightning's DistributedSampler hands each rank ``steps_per_epoch`` items.
        return DataLoader(_Repeat(make, self.steps_per_epoch * world), batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        # The task evaluates the whole signal itself; the loader only triggers one validation step.
        return DataLoader(_Repeat(lambda: {"index": torch.zeros(1)}, 1), batch_size=None, num_workers=0)
