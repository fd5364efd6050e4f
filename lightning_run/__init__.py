"""The run layer both methods stand on: the ``lightning`` command (its resume rules and error reports), run
directories, the resolved-config saver, run summary and Ctrl-C checkpoint, seeding, the non-finite-loss guard and
atomic checkpoint writing. It imports neither method; they register themselves through entry points (see
``lightning_run.cli``)."""

from lightning_run.callbacks import InterruptCheckpoint, RunConfigSaver, RunSummary
from lightning_run.checkpoint_io import AtomicCheckpointIO, atomic_torch_save
from lightning_run.errors import ConfigError
from lightning_run.guards import NonFiniteLossError, NonFiniteLossGuard
from lightning_run.rundir import run_dir
from lightning_run.seeding import run_seed
from lightning_run.training import compile_once, effective_batch_size

__all__ = [
    "AtomicCheckpointIO", "ConfigError", "InterruptCheckpoint", "NonFiniteLossError", "NonFiniteLossGuard",
    "RunConfigSaver", "RunSummary", "atomic_torch_save", "compile_once", "effective_batch_size", "run_dir", "run_seed",
]
