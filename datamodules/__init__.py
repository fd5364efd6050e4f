"""LightningDataModules of the project (select one in a config by ``class_path``)."""

from datamodules.fashion_mnist import FashionMNIST
from datamodules.imagenet import ImageNet

__all__ = ["FashionMNIST", "ImageNet"]
from datamodules.audio_signal import AudioSignal  # noqa: F401
from datamodules.image_signal import ImageSignal  # noqa: F401
from datamodules.sdf_samples import SDFSamples  # noqa: F401
