"""One signal to fit with an implicit neural representation: an image, an audio clip, or SDF samples of a mesh."""

from datamodules.signals.audio import AudioSignal
from datamodules.signals.image import ImageSignal
from datamodules.signals.sdf import SDFSamples

__all__ = ["AudioSignal", "ImageSignal", "SDFSamples"]
