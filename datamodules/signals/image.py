"""An image as a signal to fit: any image file, a file of a folder (Kodak), or an ``skimage.data`` name."""

from __future__ import annotations

import numpy as np
import torch

from datamodules.images import HIGH_DEPTH_MODES, IMAGE_SUFFIXES, grey_levels
from datamodules.signals.base import FULL_SETS, SignalDataModule, resolve_path


def pixel_grid(height: int, width: int) -> torch.Tensor:
    """(H·W, 2) coordinates in [−1, 1], row-major, (row, column) order as in the official code."""
    rows = torch.linspace(-1, 1, height) if height > 1 else torch.zeros(1)
    cols = torch.linspace(-1, 1, width) if width > 1 else torch.zeros(1)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)


def _some(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names) - shown} more)" if len(names) > shown else "")


def load_image(path: str, image: str | int | None = None):
    """A PIL image from a file, from ``image`` (name or index) inside a folder, or from ``skimage.data``.

    ``path`` is resolved by ``resolve_path``: ``samples/kodak`` is the Kodak image bundled in the package.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        p = resolve_path(path)
    except FileNotFoundError as err:
        import skimage.data

        loader = getattr(skimage.data, str(path), None)
        if loader is None or not callable(loader) or str(path).startswith("_"):
            raise FileNotFoundError(f"{err} (nor is it an skimage.data image name)") from None
        return Image.fromarray(np.asarray(loader()))
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"image folder {p} holds no image files ({sorted(IMAGE_SUFFIXES)})")
        names = [f.name for f in files]
        if image is None:
            p = files[0]
        elif str(image).isdigit():
            if int(image) >= len(files):
                raise FileNotFoundError(
                    f"image {str(image)!r}: folder {p} holds {len(files)} images, so the index must be 0 to "
                    f"{len(files) - 1} ({_some(names)}); pass an index in that range or a file name"
                )
            p = files[int(image)]
        else:
            p = p / str(image)
            if not p.is_file():
                raise FileNotFoundError(
                    f"image {str(image)!r} not found in path {path!r} (folder {p.parent}, which holds "
                    f"{len(files)} images: {_some(names, 10)}); pass one of those names or an index; {FULL_SETS}"
                )
    try:
        img = Image.open(p)
        img.load()
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"image file {p} cannot be read as an image: {err}") from err
    return img


class ImageSignal(SignalDataModule):
    """An RGB or grey image; pixels in [−1, 1] on a [−1, 1]² grid (paper recipe: Lanczos ×4, centre crop).

    Pixels: 8-bit images give ``v / 255``. 16-bit greyscale images (Pillow mode ``I;16``) keep their full
    precision: ``v / 65535``, resized and cropped as float. Pillow decodes 16-bit colour PNGs to 8-bit
    RGB (the high byte), so those have 8-bit precision. Alpha is dropped (the colours as
    stored, not composited); palette images give their palette colours.

    Args:
        path: an image file, a folder of images, ``samples/kodak`` (the Kodak image bundled in the package)
            or an ``skimage.data`` name (e.g. ``astronaut``).
        image: with a folder, the file name (``kodim19.png``) or index in sorted order; default the first.
            An index past the end, or a missing name, raises naming how many images the folder holds and some.
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
        image: str | int | None = None,
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
        if img.mode in HIGH_DEPTH_MODES:  # 16-bit grey: float levels in [0, 1], resized at full precision
            source = f"{self.path}" + (f" (image {self.image_name})" if self.image_name is not None else "")
            img = Image.fromarray(grey_levels(img, source).astype(np.float32))
        else:  # 8 bits (16-bit colour PNGs too: Pillow decodes them to 8-bit RGB); alpha dropped
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
        if img.mode == "F":
            array = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)[..., None]  # Lanczos overshoots
            if not self.grayscale:
                array = np.repeat(array, 3, axis=-1)  # as convert("RGB") does for an 8-bit grey image
        else:
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
