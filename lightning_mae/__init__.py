"""Self-Guided MAE: masked-autoencoder pretraining whose masks come from the model's own patch clustering.

The core (model, masking, token relations, pretraining module, online probe head, mask panels, optimizer
pieces) lives here; the paper's analysis in ``lightning_mae.analysis`` and the downstream evaluations
(linear probe, fine-tune, detection, segmentation) in ``lightning_mae.downstream``.
"""

from lightning_mae.analysis import AnalysisMonitor
from lightning_mae.downstream import FineTuning, InstanceSegmentation, LinearProbing, SemanticSegmentation, ViTEncoder
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

__all__ = [
    "PRESETS", "AnalysisMonitor", "FineTuning", "InstanceSegmentation", "LinearProbe", "LinearProbing",
    "MAEPretraining", "MaskPanels", "MaskedAutoencoderViT", "SelfGuidedMasking", "SemanticSegmentation",
    "ViTEncoder", "informed_ids_shuffle", "mae_vit", "mask_panel", "ncut_bipartition", "pca_bipartition",
    "random_ids_shuffle",
]
