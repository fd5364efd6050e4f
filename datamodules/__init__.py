"""LightningDataModules of the project (select one in a config by ``class_path``)."""

from datamodules.audio_signal import AudioSignal
from datamodules.fashion_mnist import FashionMNIST
from datamodules.image_signal import ImageSignal
from datamodules.imagenet import ImageNet
from datamodules.sdf_samples import SDFSamples

__all__ = ["AudioSignal", "FashionMNIST", "ImageNet", "ImageSignal", "SDFSamples"]
