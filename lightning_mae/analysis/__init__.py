"""The Self-Guided MAE paper's analysis: metrics on tensors (``metrics``), the training-time monitor
(``monitor``), the figures of a run's checkpoints (``figures``: ``python -m lightning_mae.analysis.figures``)
and the overlay of several runs (``compare``: ``python -m lightning_mae.analysis.compare``)."""

from lightning_mae.analysis.monitor import AnalysisMonitor

__all__ = ["AnalysisMonitor"]
