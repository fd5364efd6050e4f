"""Image files on disk as a Dataset: one loader that names the file it cannot decode, an option to skip
such files, and the ImageFolder layout (``<root>/<class>/<image>``) with clear errors for an empty tree."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset, Subset
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

OnBadImage = Literal["raise", "skip"]

# Endings (lower case) of the image files that the folder readers take: an INR's image, an analysis's or a
# benchmark's images. (ImageFolder layouts keep torchvision's ``IMG_EXTENSIONS``.)
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


class BadImageError(OSError):
    """An image file that cannot be opened or decoded."""


@contextmanager
def _strict_truncation() -> Iterator[None]:
    # With this Pillow global set (some libraries set it on import) a truncated file decodes silently,
    # its missing rows grey. DataLoader workers are processes, so flipping it here races with nothing.
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


# Pillow's one-channel modes deeper than 8 bits: 16-bit greyscale PNG/TIFF ("I;16*"), 32-bit integer ("I"),
# float ("F"). ``convert("L"/"RGB")`` clips them at 255 instead of scaling them: a 16-bit image comes out white.
HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def grey_levels(img: Image.Image, source: str | Path) -> np.ndarray:
    """A high-bit-depth greyscale image (mode in ``HIGH_DEPTH_MODES``) as float64 levels in [0, 1], full precision.

    Integer modes are 16-bit data: ``v / 65535`` (mode ``"I"`` too, as Pillow opened 16-bit PNGs before
    version 10; values outside [0, 65535] raise). Float images (``"F"``) must already lie in [0, 1].
    ``source`` names the file in the ``ValueError``.
    """
    levels = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        low, high, scale = 0.0, 1.0, 1.0
    else:
        low, high, scale = 0.0, 65535.0, 65535.0
    if levels.size and not (np.isfinite(levels).all() and low <= levels.min() and levels.max() <= high):
        raise ValueError(
            f"image {source} (Pillow mode {img.mode}) has values in [{levels.min():g}, {levels.max():g}], outside "
            f"the [{low:g}, {high:g}] this loader reads for that mode; save it as an 8- or 16-bit PNG"
        )
    return levels / scale


def to_8bit(img: Image.Image, source: str | Path) -> Image.Image:
    """``img`` itself, or for a high-bit-depth greyscale image its mode-``"L"`` version, ``round(v / 257)``."""
    if img.mode not in HIGH_DEPTH_MODES:
        return img
    return Image.fromarray(np.rint(grey_levels(img, source) * 255).astype(np.uint8))


def load_image(path: str | Path, mode: str = "RGB") -> Image.Image:
    """Open and fully decode an image (Pillow decodes lazily) in 8-bit ``mode``; a bad file raises
    ``BadImageError`` naming it.

    Bit depth: 8-bit images are passed on as Pillow decodes them. 16-bit greyscale images are scaled to
    8 bits (``round(v / 257)``, see ``to_8bit``). 16-bit colour PNGs reach Pillow as 8-bit RGB(A) (it keeps
    the high byte), so they come out in range too. Alpha is dropped: an RGBA/LA/PA image gives its
    colours as stored, not composited on any background (torchvision's ImageFolder loader does the same);
    palette (``"P"``) images give their palette colours.
    """
    try:
        with _strict_truncation(), Image.open(path) as img:
            img.load()
            return to_8bit(img, path).convert(mode)
    except Exception as err:  # whatever a decoder raises on this one file makes the file unusable
        raise BadImageError(f"cannot read image {path}: {err}") from err


class ImageFiles(Dataset):
    """Images on disk with integer labels, decoded by ``load_image``.

    Args:
        paths: the image files.
        labels: one integer label per file.
        transform: applied to the decoded PIL image.
        mode: PIL mode the images are converted to.
        on_bad_image: ``"raise"``: an unreadable file stops the run, naming it. ``"skip"``: the sample is
            replaced by the next readable file (index + 1, + 2, ..., so the same files always stand in),
            and each bad file is warned about once and never decoded again.
        classes: the class names, if the labels index a list of names.

    The bad files are flagged in a shared-memory tensor, so the flags set by DataLoader worker processes
    are seen by the main process (``bad_files``) and by the other workers.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: Sequence[int],
        transform: Callable,
        mode: str = "RGB",
        on_bad_image: OnBadImage = "raise",
        classes: list[str] | None = None,
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} images but {len(labels)} labels")
        if on_bad_image not in ("raise", "skip"):
            raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {on_bad_image!r}")
        # str, not Path: a million Path objects take about twice the memory (ImageNet, in every worker)
        self.paths, self.labels, self.transform, self.mode = [str(p) for p in paths], list(labels), transform, mode
        self.on_bad_image, self.classes = on_bad_image, classes
        self._bad = torch.zeros(len(self.paths), dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def bad_files(self) -> list[Path]:
        """The files skipped so far (by any process of this dataset)."""
        return [Path(self.paths[i]) for i in self._bad.nonzero().flatten().tolist()]

    def __getitem__(self, index: int) -> tuple:
        n = len(self.paths)
        index = range(n)[index]  # IndexError past the end (ends iteration over the dataset)
        for offset in range(n):
            i = (index + offset) % n
            if self._bad[i]:
                continue
            try:
                img = load_image(self.paths[i], self.mode)
            except BadImageError as err:
                if self.on_bad_image == "raise":
                    raise
                self._bad[i] = True
                warnings.warn(f"skipping unreadable image ({int(self._bad.sum())} skipped so far): {err}",
                              stacklevel=2)
                continue
            return self.transform(img), self.labels[i]
        raise BadImageError(f"none of the {n} images (e.g. {self.paths[0]}) can be read")


def image_files_of(dataset: Dataset) -> ImageFiles | None:
    """The ``ImageFiles`` under a dataset (itself, or inside ``Subset`` wrappers), else ``None``."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset if isinstance(dataset, ImageFiles) else None


def skipped_images_summary(datasets: Sequence[Dataset | None], shown: int = 5) -> str | None:
    """A one-paragraph account of the files skipped by these datasets, or ``None`` when there are none."""
    bad = [p for d in datasets if d is not None and (files := image_files_of(d)) is not None for p in files.bad_files]
    if not bad:
        return None
    more = f" (and {len(bad) - shown} more)" if len(bad) > shown else ""
    return f"{len(bad)} unreadable image file(s) were skipped: {', '.join(map(str, bad[:shown]))}{more}"


def image_folder(
    root: str | Path, transform: Callable, on_bad_image: OnBadImage = "raise", mode: str = "RGB"
) -> ImageFiles:
    """``root/<class>/**/<image>`` as ``ImageFiles`` (classes sorted by name, as torchvision's ImageFolder).

    Raises ``FileNotFoundError`` naming ``root`` when it is missing, has no class folders, or when a class
    folder holds no image (e.g. an archive that was not fully extracted).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"image folder {root} has no class folders (expected {root}/<class>/<image>)")
    samples = make_dataset(str(root), {c: i for i, c in enumerate(classes)}, IMG_EXTENSIONS, allow_empty=True)
    empty = sorted(set(classes) - {classes[label] for _, label in samples})
    if empty:
        names = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        raise FileNotFoundError(
            f"{len(empty)} of the {len(classes)} class folders of {root} hold no images ({names}; "
            f"image extensions: {' '.join(IMG_EXTENSIONS)})"
        )
    return ImageFiles([p for p, _ in samples], [label for _, label in samples], transform, mode, on_bad_image, classes)
