"""Neural Experts (mixture-of-experts INR) and INR baselines as Lightning experiments."""

from lightning_inr.activations import Finer, Sine
from lightning_inr.baselines import INR
from lightning_inr.encodings import CoordinateEncoder, FourierFeatures
from lightning_inr.experts import NeuralExperts
from lightning_inr.field import CoordinateNetwork, FieldOutput
from lightning_inr.inference import render, sparse_forward
from lightning_inr.mlp import MLP
from lightning_inr.signal_fit import SignalFit
from lightning_inr.stages import Stage
from lightning_inr.tasks import AudioTask, ImageTask, SDFTask, Task

__all__ = [
    "INR", "MLP", "AudioTask", "CoordinateEncoder", "CoordinateNetwork", "FieldOutput", "Finer", "FourierFeatures",
    "ImageTask", "NeuralExperts", "SDFTask", "SignalFit", "Sine", "Stage", "Task", "render", "sparse_forward",
]
