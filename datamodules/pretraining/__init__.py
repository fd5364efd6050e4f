"""Unlabelled images for MAE pretraining: Fashion-MNIST (the CPU demo), ImageNet folders, litdata shards."""

from datamodules.pretraining.fashion_mnist import FashionMNIST
from datamodules.pretraining.imagenet import ImageNet
from datamodules.pretraining.streaming import StreamingImageNet

__all__ = ["FashionMNIST", "ImageNet", "StreamingImageNet"]
