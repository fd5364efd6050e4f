"""The run layer both methods stand on: the ``lightning`` command, run directories, the resolved-config
saver and run summary, seeding, the non-finite-loss guard and atomic checkpoint writing. It imports neither
method; they register themselves through entry points (see ``lightning_run.cli``)."""

from lightning_run.callbacks import RunConfigSaver, RunSummary
from lightning_run.checkpoint_io import AtomicCheckpointIO, atomic_torch_save
from lightning_run.guards import NonFiniteLossError, NonFiniteLossGuard
from lightning_run.rundir import run_dir
from lightning_run.seeding import run_seed
from lightning_run.training import compile_once, effective_batch_size

__all__ = [
    "AtomicCheckpointIO", "NonFiniteLossError", "NonFiniteLossGuard", "RunConfigSaver", "RunSummary",
    "atomic_torch_save", "compile_once", "effective_batch_size", "run_dir", "run_seed",
]
