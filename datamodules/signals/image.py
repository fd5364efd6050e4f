"""An image as a signal to fit: any image file, a file of a folder (Kodak), or an ``skimage.data`` name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from datamodules.signals.base import SignalDataModule

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def pixel_grid(height: int, width: int) -> torch.Tensor:
    """(H·W, 2) coordinates in [−1, 1], row-major, (row, column) order as in the official code."""
    rows = torch.linspace(-1, 1, height) if height > 1 else torch.zeros(1)
    cols = torch.linspace(-1, 1, width) if width > 1 else torch.zeros(1)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)


def load_image(path: str, image: str | None = None):
    """A PIL image from a file, from ``image`` (name or index) inside a folder, or from ``skimage.data``."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"image folder {p} holds no image files ({sorted(IMAGE_SUFFIXES)})")
        if image is None:
            p = files[0]
        elif image.isdigit():
            p = files[int(image)]
        else:
            p = p / image
            if not p.is_file():
                raise FileNotFoundError(f"image {image!r} not found in {path}")
    elif not p.exists():
        import skimage.data

        loader = getattr(skimage.data, path, None)
        if loader is None or not callable(loader):
            raise FileNotFoundError(f"image {path!r}: no such file, folder or skimage.data image")
        return Image.fromarray(np.asarray(loader()))
    try:
        img = Image.open(p)
        img.load()
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"image file {p} cannot be read as an image: {err}") from err
    return img


class ImageSignal(SignalDataModule):
    """An RGB or grey image; pixels in [−1, 1] on a [−1, 1]² grid (paper recipe: Lanczos ×4, centre crop).

    Args:
        path: an image file, a folder of images, or an ``skimage.data`` name (e.g. ``astronaut``).
        image: with a folder, the file name (``kodim19.png``) or index in sorted order; default the first.
        downsample: integer Lanczos downsampling factor (4 in the paper: Kodak 768×512 → 192×128).
        center_crop: crop the centre square (the paper's 128×128 Kodak images).
        size: resize (Lanczos) to ``size``×``size`` after cropping; ``None`` = keep.
        grayscale: convert to one channel.
        steps_per_epoch: training steps per epoch (each step is the whole image).
    """

    in_dim = 2

    def __init__(
        self,
        path: str,
        image: str | None = None,
        downsample: int = 4,
        center_crop: bool = True,
        size: int | None = None,
        grayscale: bool = False,
        steps_per_epoch: int = 100,
    ) -> None:
        super().__init__(steps_per_epoch)
        if downsample < 1:
            raise ValueError(f"downsample must be >= 1, got {downsample}")
        self.path, self.image_name, self.downsample = path, image, downsample
        self.center_crop, self.size, self.grayscale = center_crop, size, grayscale
        self._load()

    def _load(self) -> None:
        from PIL import Image

        img = load_image(self.path, self.image_name)
        img = img.convert("L" if self.grayscale else "RGB")
        if self.downsample > 1:
            w, h = img.size
            img = img.resize((w // self.downsample, h // self.downsample), resample=Image.LANCZOS)
        if self.center_crop and img.size[0] != img.size[1]:
            w, h = img.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            img = img.crop((left, top, left + s, top + s))
        if self.size is not None:
            img = img.resize((self.size, self.size), resample=Image.LANCZOS)
        array = np.asarray(img, dtype=np.float32) / 255.0
        if array.ndim == 2:
            array = array[..., None]
        self.image = torch.from_numpy(array) * 2 - 1  # (H, W, C) in [−1, 1]
        h, w, c = self.image.shape
        self.out_dim = c
        self.coords = pixel_grid(h, w)
        self.values = self.image.reshape(-1, c)

    def train_batch(self) -> dict:
        return {"coords": self.coords, "values": self.values}

    def pretraining_coords(self) -> torch.Tensor:
        return self.coords

    def pretraining_values(self) -> torch.Tensor:
        return (self.values + 1) / 2  # colour in [0, 1] for k-means
