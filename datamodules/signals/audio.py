"""A sound as a signal to fit: any file soundfile reads, mixed to mono (or one channel), normalised to max |x| = 1."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from datamodules.signals.base import SignalDataModule, resolve_path

CANCEL_RATIO = 0.1
"""A mono mix with less than this share of the mean channel energy warns (the channels cancel)."""


class AudioSignal(SignalDataModule):
    """A waveform on time coordinates ``linspace(−time_range, time_range, N)`` (official: ±100).

    Args:
        path: an audio file (WAV, FLAC, OGG, ... anything ``soundfile`` reads); ``samples/audio/gt_bach.wav``
            is the clip bundled in the package.
        time_range: half-width of the time coordinates.
        max_samples: keep only the first samples (quick experiments); ``None`` = all.
        steps_per_epoch: training steps per epoch (each step is the whole clip).
        channel: ``None``: the mean of the channels (mono files as they are); an int: that channel only
            (0-based). A mix that keeps under 10 % of the mean channel energy (e.g. right = −left) warns.
    """

    in_dim = 1
    out_dim = 1

    def __init__(
        self, path: str, time_range: float = 100.0, max_samples: int | None = None, steps_per_epoch: int = 100,
        channel: int | None = None,
    ) -> None:
        super().__init__(steps_per_epoch)
        import soundfile

        p = resolve_path(path)
        if not p.is_file():
            raise FileNotFoundError(f"path {path!r}: {p} is not an audio file")
        try:
            data, rate = soundfile.read(str(p), dtype="float32", always_2d=True)
        except Exception as err:  # soundfile raises its own LibsndfileError / RuntimeError
            raise ValueError(f"audio file {path} cannot be read by soundfile: {err}") from err
        channels = data.shape[1]
        if channel is not None and not 0 <= channel < channels:
            raise ValueError(f"channel={channel} but audio file {path} has {channels} channel(s): pass 0 to "
                             f"{channels - 1}, or channel=None to mix them")
        if max_samples is not None:
            data = data[:max_samples]
        mono = data.mean(axis=1) if channel is None else data[:, channel]  # stereo → mono
        if channel is None and channels > 1 and mono.size:
            mix_energy = float(np.mean(mono.astype(np.float64) ** 2))
            channel_energy = float(np.mean(data.astype(np.float64) ** 2))
            if 0 < mix_energy < CANCEL_RATIO * channel_energy:  # an exact 0 is the silent error below
                warnings.warn(
                    f"audio file {path}: its {channels} channels cancel when mixed to mono (the mix keeps "
                    f"{mix_energy / channel_energy:.1%} of the mean channel energy), so the fitted signal "
                    f"would be mostly rounding noise; pick one channel with channel=0 (--data.init_args.channel 0)",
                    stacklevel=2,
                )
        peak = float(np.abs(mono).max()) if mono.size else 0.0
        if peak == 0.0:
            cancel = (f" (the mean of its {channels} channels is; pick one with channel=0)"
                      if channel is None and channels > 1 and np.abs(data).max(initial=0.0) > 0 else "")
            raise ValueError(f"audio file {path} is empty or silent{cancel}: nothing to fit")
        self.path, self.rate, self.scale = path, int(rate), peak
        self.signal = torch.from_numpy(mono / peak).float().unsqueeze(-1)  # (N, 1)
        self.coords = torch.linspace(-time_range, time_range, len(mono)).unsqueeze(-1)

    def train_batch(self) -> dict:
        return {"coords": self.coords, "values": self.signal}

    def pretraining_coords(self) -> torch.Tensor:
        return self.coords

    def pretraining_values(self) -> torch.Tensor:
        return self.signal
