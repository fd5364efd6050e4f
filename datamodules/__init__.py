"""LightningDataModules of the project (select one in a config by ``class_path``)."""

from datamodules.ade20k import ADE20K
from datamodules.audio_signal import AudioSignal
from datamodules.cifar import CIFAR
from datamodules.coco import COCODetection
from datamodules.cub import CUB200
from datamodules.fashion_mnist import FashionMNIST
from datamodules.fmnist_classification import FashionMNISTClassification
from datamodules.image_signal import ImageSignal
from datamodules.imagefolder import ImageFolderClassification
from datamodules.imagenet import ImageNet
from datamodules.inat import INat2019
from datamodules.sdf_samples import SDFSamples

__all__ = [
    "ADE20K", "CIFAR", "CUB200", "AudioSignal", "COCODetection", "FashionMNIST", "FashionMNISTClassification",
    "INat2019", "ImageFolderClassification", "ImageNet", "ImageSignal", "SDFSamples",
]
