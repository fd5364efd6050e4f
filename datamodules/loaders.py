"""DataLoaders of the image DataModules, with exact mid-epoch resume.

A training loader is a torchdata ``StatefulDataLoader`` over a ``SeededSampler``: the sample order is a
function of (seed, epoch, rank) and every sample carries its own augmentation seed, so the batches
are the same whatever the number of workers, and a run resumed from a mid-epoch checkpoint (Lightning
saves and restores the loader's ``state_dict``) sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_run.seeding import run_seed


class SeededSampler(DistributedSampler):
    """``DistributedSampler`` that yields ``(index, sample_seed)`` pairs, and resumes mid-epoch.

    Being a ``DistributedSampler``, Lightning keeps it under DDP (no re-wrapping) and calls
    ``set_epoch``; outside DDP it is a single-replica sampler. The sample seeds are drawn with the
    permutation, so a sample's augmentation depends on (seed, epoch, position), not on which worker
    loads it or when. Its ``state_dict`` (epoch, samples yielded) is what ``StatefulDataLoader``
    saves: on resume the epoch is restored before Lightning creates the iterator, which it does
    before calling ``set_epoch``.
    """

    def __init__(self, dataset: Dataset, shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        initialized = dist.is_available() and dist.is_initialized()
        super().__init__(
            dataset, num_replicas=dist.get_world_size() if initialized else 1,
            rank=dist.get_rank() if initialized else 0, shuffle=shuffle, seed=seed, drop_last=drop_last,
        )
        self.yielded, self._resume_at = 0, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self._resume_at = state["epoch"], state["yielded"]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        n = len(self.dataset)  # type: ignore[arg-type]
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        seeds = torch.randint(0, 2**62, (n,), generator=gen)
        if self.drop_last:
            order = order[: self.total_size]
        else:  # pad by repeating the start, as DistributedSampler does, so every rank has equal batches
            order = torch.cat([order, order.repeat(self.total_size // n + 1)])[: self.total_size]
        mine = order[self.rank : self.total_size : self.num_replicas]
        start, self._resume_at = self._resume_at, 0
        self.yielded = start
        for self.yielded, item in enumerate(zip(mine.tolist()[start:], seeds[mine].tolist()[start:]), start + 1):
            yield item


class SeededDataset(Dataset):
    """Reads ``dataset[index]`` with torch's and Python's RNGs seeded by the sample's own seed."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        state = random.getstate()
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG streams untouched
            torch.manual_seed(seed)
            random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(state)


def check_train_subset(train_subset: int | None, batch_size: int) -> None:
    """A ``train_subset`` of fewer images than one batch trains 0 steps (the loaders drop the last partial batch)."""
    if train_subset is not None and train_subset < batch_size:
        raise ValueError(
            f"train_subset={train_subset} is smaller than batch_size={batch_size}: the training loader drops "
            f"the incomplete last batch, so training would run 0 steps; set train_subset >= {batch_size} "
            "or lower batch_size"
        )


def make_loader(
    dataset: Dataset, batch_size: int, num_workers: int, shuffle: bool, drop_last: bool, seed: int | None = None,
) -> DataLoader:
    """A training loader (``shuffle=True``: seeded, resumable) or an evaluation loader (in order).

    Workers stay alive across epochs (no re-fork per epoch); pinned memory only helps a GPU copy.
    A ``batch_size`` below 1, or a training loader that would yield no batch (``drop_last`` with fewer
    samples per process than ``batch_size``), raises a ``ValueError`` naming both numbers.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    common = dict(
        batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
        persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available(),
    )
    if not shuffle:
        return DataLoader(dataset, shuffle=False, **common)
    sampler = SeededSampler(dataset, shuffle=True, seed=run_seed() if seed is None else seed, drop_last=drop_last)
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("the training set is empty (0 samples): training would run 0 steps; check the data "
                         "options (data_dir, train_subset)")
    if drop_last and len(sampler) < batch_size:
        per_process = f" ({len(sampler)} per process over {sampler.num_replicas})" if sampler.num_replicas > 1 else ""
        raise ValueError(
            f"the training set has {n} samples{per_process}, fewer than batch_size={batch_size}: the loader drops "
            "the incomplete last batch, so training would run 0 steps; lower batch_size or use more data"
        )
    return StatefulDataLoader(SeededDataset(dataset), sampler=sampler, **common)
