"""Downstream evaluation of a pretrained MAE encoder: linear probe, fine-tune, COCO instance segmentation
and ADE20K semantic segmentation, and the runner behind ``make downstream``
(``python -m lightning_mae.downstream``)."""

from lightning_mae.downstream.detection import InstanceSegmentation
from lightning_mae.downstream.encoder import ViTEncoder
from lightning_mae.downstream.finetune import FineTuning
from lightning_mae.downstream.linear_probe import LinearProbing
from lightning_mae.downstream.segmentation import SemanticSegmentation

__all__ = ["FineTuning", "InstanceSegmentation", "LinearProbing", "SemanticSegmentation", "ViTEncoder"]
