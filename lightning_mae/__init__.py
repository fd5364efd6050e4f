"""Self-Guided MAE: masked-autoencoder pretraining whose masks come from the model's own patch clustering."""

from lightning_mae.analysis_monitor import AnalysisMonitor
from lightning_mae.cli import RunConfigSaver, RunSummary, run_dir
from lightning_mae.detection import InstanceSegmentation
from lightning_mae.encoder import ViTEncoder
from lightning_mae.finetune import FineTuning
from lightning_mae.guards import AtomicCheckpointIO, NonFiniteLossGuard
from lightning_mae.linear_probe import LinearProbing
from lightning_mae.mae import PRESETS, MaskedAutoencoderViT, mae_vit
from lightning_mae.masking import (
    SelfGuidedMasking,
    informed_ids_shuffle,
    ncut_bipartition,
    pca_bipartition,
    random_ids_shuffle,
)
from lightning_mae.panels import MaskPanels, mask_panel
from lightning_mae.pretrain import MAEPretraining
from lightning_mae.probe import LinearProbe
from lightning_mae.segmentation import SemanticSegmentation

__all__ = [
    "PRESETS", "AnalysisMonitor", "AtomicCheckpointIO", "NonFiniteLossGuard",
    "FineTuning", "InstanceSegmentation", "LinearProbe", "LinearProbing", "MAEPretraining", "MaskPanels",
    "MaskedAutoencoderViT", "RunConfigSaver", "RunSummary", "SelfGuidedMasking", "SemanticSegmentation", "ViTEncoder",
    "informed_ids_shuffle", "mae_vit", "mask_panel", "ncut_bipartition", "pca_bipartition", "random_ids_shuffle",
    "run_dir",
]
