"""A sound as a signal to fit: any file soundfile reads, mixed to mono, normalised to max |x| = 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from datamodules.signals.base import SignalDataModule


class AudioSignal(SignalDataModule):
    """A waveform on time coordinates ``linspace(−time_range, time_range, N)`` (official: ±100).

    Args:
        path: an audio file (WAV, FLAC, OGG, ... anything ``soundfile`` reads).
        time_range: half-width of the time coordinates.
        max_samples: keep only the first samples (quick experiments); ``None`` = all.
        steps_per_epoch: training steps per epoch (each step is the whole clip).
    """

    in_dim = 1
    out_dim = 1

    def __init__(
        self, path: str, time_range: float = 100.0, max_samples: int | None = None, steps_per_epoch: int = 100
    ) -> None:
        super().__init__(steps_per_epoch)
        import soundfile

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"audio file {path} not found")
        try:
            data, rate = soundfile.read(str(p), dtype="float32", always_2d=True)
        except Exception as err:  # soundfile raises its own LibsndfileError / RuntimeError
            raise ValueError(f"audio file {path} cannot be read by soundfile: {err}") from err
        mono = data.mean(axis=1)  # stereo → mono
        if max_samples is not None:
            mono = mono[:max_samples]
        peak = float(np.abs(mono).max()) if mono.size else 0.0
        if peak == 0.0:
            raise ValueError(f"audio file {path} is empty or silent: nothing to fit")
        self.path, self.rate, self.scale = path, int(rate), peak
        self.signal = torch.from_numpy(mono / peak).float().unsqueeze(-1)  # (N, 1)
        self.coords = torch.linspace(-time_range, time_range, len(mono)).unsqueeze(-1)

    def train_batch(self) -> dict:
        return {"coords": self.coords, "values": self.signal}

    def pretraining_coords(self) -> torch.Tensor:
        return self.coords

    def pretraining_values(self) -> torch.Tensor:
        return self.signal
