"""DataLoader defaults shared by the image DataModules."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, shuffle: bool, drop_last: bool) -> DataLoader:
    # Workers stay alive across epochs (no re-fork per epoch); pinned memory only helps a GPU copy.
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=num_workers,
        persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available(),
    )
