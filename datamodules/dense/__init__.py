"""Dense-prediction data: COCO instance segmentation and ADE20K semantic segmentation."""

from datamodules.dense.ade20k import ADE20K
from datamodules.dense.coco import COCODetection

__all__ = ["ADE20K", "COCODetection"]
