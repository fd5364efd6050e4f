"""LightningDataModules of the project, grouped by who uses them (select one in a config by ``class_path``):

- ``pretraining``: unlabelled images for MAE pretraining (Fashion-MNIST, ImageNet folders, litdata shards);
- ``classification``: labelled images for the linear probe and fine-tuning (CIFAR, CUB, iNat, ImageFolder,
  Fashion-MNIST, scikit-learn's 8x8 digits);
- ``dense``: COCO instance segmentation and ADE20K semantic segmentation;
- ``signals``: one signal for an implicit neural representation (image, audio clip, SDF samples of a mesh),
  with a few bundled samples.

``images`` (decoding image files) and ``loaders`` (seeded, resumable DataLoaders) serve all of them.
"""

from datamodules.classification import (
    CIFAR,
    CUB200,
    DigitsClassification,
    FashionMNISTClassification,
    ImageFolderClassification,
    INat2019,
)
from datamodules.dense import ADE20K, COCODetection
from datamodules.pretraining import FashionMNIST, ImageNet, StreamingImageNet
from datamodules.signals import AudioSignal, ImageSignal, SDFSamples

__all__ = [
    "ADE20K", "CIFAR", "CUB200", "AudioSignal", "COCODetection", "DigitsClassification", "FashionMNIST",
    "FashionMNISTClassification", "INat2019", "ImageFolderClassification", "ImageNet", "ImageSignal", "SDFSamples",
    "StreamingImageNet",
]
