"""Labelled image classification data for the linear probe and fine-tuning (``base`` holds the shared recipe)."""

from datamodules.classification.cifar import CIFAR
from datamodules.classification.cub import CUB200
from datamodules.classification.digits import DigitsClassification
from datamodules.classification.fashion_mnist import FashionMNISTClassification
from datamodules.classification.image_folder import ImageFolderClassification
from datamodules.classification.inat import INat2019

__all__ = ["CIFAR", "CUB200", "DigitsClassification", "FashionMNISTClassification", "INat2019",
           "ImageFolderClassification"]
