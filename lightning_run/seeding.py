"""The run's seed, as every process of the run sees it."""

from __future__ import annotations

import os


def run_seed() -> int:
    """The run's seed: what ``seed_everything`` set (LightningCLI's ``seed_everything``), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))
