"""ImageNet as litdata shards: a conversion command that packs an ImageFolder tree into optimized chunks
of the original JPEG bytes, and a DataModule that streams them from a local folder or an object store.

    python -m datamodules.pretraining.streaming convert data/imagenet/train data/imagenet-shards/train
    python -m datamodules.pretraining.streaming convert data/imagenet/val data/imagenet-shards/val

Each shard item is ``{"image": JPEG bytes, "label": class index, "name": "<class>/<file>"}``; the class
names (``label`` indexes them) are written beside the shards in ``classes.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import litdata
import torch
from PIL import Image
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

from datamodules.images import BadImageError, load_image
from datamodules.pretraining.imagenet import ImageNet

JPEG_MAGIC = b"\xff\xd8\xff"
REENCODE_QUALITY = 95  # non-JPEG sources (PNG, BMP, ...) are stored as JPEG at this quality, once
CLASSES_FILE = "classes.json"


# ---------------------------------------------------------------------------------------- conversion
@dataclass(frozen=True)
class ConversionReport:
    """What ``convert_image_folder`` wrote."""

    out_dir: Path
    num_samples: int
    classes: list[str]
    num_chunks: int
    reencoded: list[str]  # names (``<class>/<file>``) of the sources stored re-encoded (not decodable JPEG)


def list_image_folder(src: str | Path) -> tuple[list[str], list[tuple[str, int]]]:
    """The classes and ``(path, label)`` samples of an ImageFolder tree, exactly as torchvision's
    ``ImageFolder`` lists them (classes sorted by folder name, files sorted, image extensions only)."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist (expected {src}/<class>/<image>)")
    try:
        classes, class_to_idx = find_classes(src)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"source folder {src} has no class folders (expected {src}/<class>/<image>)") from err
    try:
        samples = make_dataset(src, class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as err:  # a class folder without any image file
        raise FileNotFoundError(f"source folder {src}: {err}") from err
    return classes, samples


def _decodes(data: bytes) -> bool:
    """Whether torchvision's JPEG decoder, the one training uses, accepts ``data``."""
    try:
        decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        return False
    return True


def jpeg_bytes(path: str | Path, verify: bool = True) -> tuple[bytes, str | None]:
    """The file's bytes if it holds JPEG data (that decodes, checked when ``verify``), else the image
    re-encoded as JPEG, with the source format (``None`` when stored as it is). A file that neither
    torchvision nor Pillow can decode raises ``BadImageError`` naming it."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise BadImageError(f"cannot read image {path}: {err}") from err
    # By content, not extension: a few ImageNet ".JPEG" files hold PNG or CMYK data.
    if data.startswith(JPEG_MAGIC) and (not verify or _decodes(data)):
        return data, None
    image = load_image(path)  # fully decoded RGB; raises BadImageError naming the file
    with Image.open(path) as probe:
        source_format = probe.format or "unknown"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=REENCODE_QUALITY)
    return buffer.getvalue(), source_format


class _ShardItem:
    """``(path, label, name)`` -> shard item; runs in litdata's worker processes.

    A bad file is not raised here: litdata leaves a worker process behind when ``fn`` raises. It is
    recorded in ``log_dir`` instead (one JSON line per event, one file per process), skipped, and
    reported by ``convert_image_folder`` once all files have been seen.
    """

    def __init__(self, verify: bool, log_dir: str) -> None:
        self.verify, self.log_dir = verify, log_dir

    def _log(self, kind: str, name: str, detail: str) -> None:
        with open(os.path.join(self.log_dir, f"{os.getpid()}.jsonl"), "a") as log:
            log.write(json.dumps([kind, name, detail]) + "\n")

    def __call__(self, sample: tuple[str, int, str]) -> dict[str, Any] | None:
        path, label, name = sample
        try:
            data, source_format = jpeg_bytes(path, self.verify)
        except BadImageError as err:
            self._log("unreadable", name, str(err))
            return None  # litdata writes nothing for a None item
        if source_format is not None:
            self._log("reencoded", name, source_format)
        return {"image": data, "label": label, "name": name}


def _shard_files(out: Path) -> list[Path]:
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.name == "index.json" or p.suffix == ".bin")


def convert_image_folder(
    src: str | Path,
    out: str | Path,
    seed: int = 0,
    chunk_bytes: str = "256MB",
    num_workers: int | None = None,
    overwrite: bool = False,
    verify: bool = True,
    verbose: bool = True,
) -> ConversionReport:
    """Pack the ImageFolder tree ``src`` into litdata shards in the local folder ``out``.

    The samples are shuffled with ``seed`` first, so every shard mixes classes (litdata shuffles the
    shard order and the items within a shard, not across shards). JPEG files are stored byte for byte;
    other formats are re-encoded to JPEG once (listed in the report). ``verify`` decodes every JPEG
    once with the training decoder, so that a corrupt file is found now, not mid-training (a JPEG only
    Pillow decodes is re-encoded too). Unreadable files are all listed in one ``BadImageError`` and no
    shards are left behind. Upload ``out`` to a bucket to stream from there.
    """
    src, out = Path(src), Path(out)
    if "://" in str(out):
        raise ValueError(f"out must be a local folder, got {out}: convert locally, then upload the folder")
    classes, samples = list_image_folder(src)
    existing = _shard_files(out)
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds shards ({existing[0].name}, ...): pass --overwrite to replace them")
    for path in existing:
        path.unlink()
    out.mkdir(parents=True, exist_ok=True)

    inputs = [(str(path), label, Path(path).relative_to(src).as_posix()) for path, label in samples]
    random.Random(seed).shuffle(inputs)
    with tempfile.TemporaryDirectory() as log_dir:
        litdata.optimize(
            fn=_ShardItem(verify, log_dir), inputs=inputs, output_dir=str(out), chunk_bytes=chunk_bytes,
            num_workers=num_workers or os.cpu_count() or 1,
            reorder_files=False, keep_data_ordered=True,  # keep the seeded order (no size-sorting)
            start_method=multiprocessing.get_start_method(),  # else litdata forces "spawn" process-wide
            verbose=verbose,
        )
        events = [json.loads(line) for log in sorted(Path(log_dir).iterdir()) for line in log.read_text().splitlines()]
    unreadable = sorted(detail for kind, _, detail in events if kind == "unreadable")
    if unreadable:
        for path in _shard_files(out):
            path.unlink()
        raise BadImageError(f"{len(unreadable)} unreadable image(s) in {src}, no shards written:\n  "
                            + "\n  ".join(unreadable))

    chunks = json.loads((out / "index.json").read_text())["chunks"]
    num_samples = sum(chunk["chunk_size"] for chunk in chunks)
    if num_samples != len(inputs):
        raise RuntimeError(f"{out}: litdata wrote {num_samples} items for {len(inputs)} source images")
    (out / CLASSES_FILE).write_text(json.dumps(classes, indent=1) + "\n")
    reencoded = sorted(name for kind, name, _ in events if kind == "reencoded")
    return ConversionReport(out, num_samples, classes, len(chunks), reencoded)


# ---------------------------------------------------------------------------------------- streaming
class DecodeJPEG:
    """Shard item -> ``(image, label)``: the JPEG bytes decoded to an RGB uint8 tensor, then ``transform``."""

    def __init__(self, transform: v2.Transform) -> None:
        self.transform = transform

    def __call__(self, item: dict[str, Any]) -> tuple[Tensor, int]:
        data = torch.frombuffer(bytearray(item["image"]), dtype=torch.uint8)  # litdata hands a read-only view
        try:
            image = decode_jpeg(data, mode=ImageReadMode.RGB)
        except RuntimeError as err:
            raise BadImageError(f"cannot decode shard item {item['name']}: {err}") from err
        return self.transform(image), item["label"]


class ResumableStreamingDataLoader(litdata.StreamingDataLoader):
    """``StreamingDataLoader`` on which every ``iter()`` is one epoch, the first after ``load_state_dict``
    being the rest of the loaded one.

    litdata leaves resume mode only when the resumed epoch's iterator is exhausted. Lightning stops after
    ``len(loader)`` batches without exhausting it, so with the plain loader the epoch after a resumed one
    starts from the checkpoint's position again (and, its count having reached the epoch's end, yields
    nothing; litdata 0.2.76, cf. Lightning-AI/litData#770).
    """

    _continue_loaded_epoch = False

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        super().load_state_dict(obj)
        self._continue_loaded_epoch = self.restore  # False when the state is at an epoch's end

    def __iter__(self) -> Any:
        if not self._continue_loaded_epoch:
            self.restore = False  # a previous iterator consumed the resumed epoch: start the next one
        self._continue_loaded_epoch = False
        return super().__iter__()


def _is_url(path: str) -> bool:
    return "://" in path


class StreamingImageNet(pl.LightningDataModule):
    """ImageNet streamed from litdata shards (``python -m datamodules.pretraining.streaming convert``), with the MAE
    transforms of ``datamodules.pretraining.imagenet.ImageNet``; a drop-in replacement for it in a config.

    The shards are read from a local folder or an object store (``s3://``, ``gs://``, ...; credentials
    from the usual environment, e.g. ``AWS_*``, or ``storage_options``); remote chunks are downloaded
    ahead of the reader into ``cache_dir`` and evicted beyond ``max_cache_size``.

    DDP: each rank is assigned whole batches' worth of items (split again among its loader workers);
    the dataset is built in ``setup``, after the process group exists, so it knows its rank. With
    ``drop_last`` (litdata forces it under DDP unless it is set ``False``) every rank gets the same
    number of full batches and distinct samples; the at most ``world_size * batch_size - 1`` samples
    left over are dropped for that epoch, and they change with the epoch's shuffle. ``drop_last=False``
    gives the remainder to the last rank, which then runs more steps than the others: do not use it
    with DDP. Validation uses litdata's default: everything on one process, the tail dropped under DDP.

    Resume: ``StreamingDataLoader`` has ``state_dict``/``load_state_dict``, so Lightning stores its
    position in the checkpoint (``loops.fit_loop.state_dict.combined_loader``) and a run resumed with
    ``ckpt_path`` continues the interrupted epoch with its remaining samples in the same order, then
    goes on with the next epochs' shuffles. Lightning's one-batch prefetch does not apply here: the
    loader has a length, so Lightning fetches each batch when it trains on it, and the saved count is
    the count trained on. The rank-0 state is restored on every rank, which is right because the ranks
    advance in lockstep (equal batch counts). Resume with the same shards, ``seed``, ``shuffle`` and
    ``drop_last`` (litdata refuses others); then the sample order continues exactly. With another number
    of processes, workers or batch size litdata re-splits the rest of the epoch ("elastic" resume: each
    remaining sample once, in another order). The random crops after a resume are new draws.

    Args:
        train_dir: shards of the training split: a local folder or a URL such as
            ``s3://bucket/imagenet/train``.
        val_dir: shards of the validation split (optional for pretraining).
        cache_dir: local folder for chunks downloaded from a URL (litdata's default when ``None``).
        max_cache_size: cache budget, e.g. ``"200GB"`` (litdata's default when ``None``: 75% of free disk).
        storage_options: passed to litdata's object-store client (for S3: boto3 client arguments such
            as ``endpoint_url``).
        batch_size: per-device batch size.
        num_workers: DataLoader worker processes per device.
        img_size: training crop / evaluation centre-crop side.
        crop_scale: ``RandomResizedCrop`` scale range.
        eval_crop_ratio: evaluation resizes the short side to ``img_size / eval_crop_ratio`` first.
        shuffle: shuffle the training shards and the items within each shard, anew every epoch.
        seed: seed of that shuffle (the order of epoch ``e`` is a function of ``seed`` and ``e``).
        drop_last: training: drop the samples that do not fill a batch on every rank (see above).
    """

    def __init__(
        self,
        train_dir: str = "data/imagenet-shards/train",
        val_dir: str | None = None,
        cache_dir: str | None = None,
        max_cache_size: str | None = None,
        storage_options: dict[str, Any] | None = None,
        batch_size: int = 64,
        num_workers: int = 10,
        img_size: int = 224,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        eval_crop_ratio: float = 0.875,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # The transforms are ImageNet's (one definition); building it validates crop_scale too.
        reference = ImageNet(img_size=img_size, crop_scale=crop_scale, eval_crop_ratio=eval_crop_ratio)
        self.train_transform, self.eval_transform = reference.train_transform(), reference.eval_transform()
        self.train_dir, self.val_dir, self.cache_dir = train_dir, val_dir, cache_dir
        self.max_cache_size, self.storage_options = max_cache_size, storage_options
        self.batch_size, self.num_workers = batch_size, num_workers
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.train_set: litdata.StreamingDataset | None = None
        self.val_set: litdata.StreamingDataset | None = None

    def _dataset(self, shards: str, transform: v2.Transform, shuffle: bool, drop_last: bool | None
                 ) -> litdata.StreamingDataset:
        if not _is_url(shards) and not (Path(shards) / "index.json").is_file():
            raise FileNotFoundError(f"no litdata shards at {shards} (no index.json there); write them with "
                                    f"`python -m datamodules.pretraining.streaming convert SRC_IMAGEFOLDER {shards}`")
        return litdata.StreamingDataset(
            shards, cache_dir=self.cache_dir, max_cache_size=self.max_cache_size,
            storage_options=self.storage_options, shuffle=shuffle, drop_last=drop_last, seed=self.seed,
            # A chunk is local (cached or mmapped) before it is read, so a full in-chunk permutation
            # costs nothing; litdata's default shuffles within blocks of 256 neighbouring items.
            item_shuffle_window="full", transform=DecodeJPEG(transform),
        )

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.train_set = self._dataset(self.train_dir, self.train_transform, self.shuffle, self.drop_last)
        if self.val_dir is not None:
            self.val_set = self._dataset(self.val_dir, self.eval_transform, shuffle=False, drop_last=None)
        elif stage in ("validate", "test"):
            raise ValueError(f"StreamingImageNet: stage {stage!r} needs val_dir")

    def _loader(self, dataset: litdata.StreamingDataset | None) -> ResumableStreamingDataLoader | list:
        if dataset is None:
            return []  # pretraining without a validation split
        # No persistent workers: each worker holds its own copy of the dataset's epoch and position,
        # which litdata sets when the iterator (and so the workers) is created.
        return ResumableStreamingDataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                                            pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> ResumableStreamingDataLoader:
        if self.train_set is None:
            raise RuntimeError("StreamingImageNet.setup('fit') has not been called")
        loader = self._loader(self.train_set)
        if len(loader) == 0:
            total = sum(end - start for start, end in getattr(self.train_set, "region_of_interest", None) or [])
            world = self.train_set.distributed_env.world_size
            raise ValueError(
                f"the training shards at {self.train_dir} hold {total} samples, too few for one batch of "
                f"batch_size={self.batch_size} on each of {world} process(es): training would run 0 steps; "
                "lower batch_size"
            )
        return loader

    def val_dataloader(self) -> ResumableStreamingDataLoader | list:
        return self._loader(self.val_set)

    def test_dataloader(self) -> ResumableStreamingDataLoader | list:
        return self._loader(self.val_set)


# ---------------------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m datamodules.pretraining.streaming",
                                     description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="ImageFolder tree -> litdata shards of the JPEG bytes")
    convert.add_argument("src", help="ImageFolder root: SRC/<class>/<image>")
    convert.add_argument("out", help="local output folder (upload it to a bucket afterwards to stream from there)")
    convert.add_argument("--seed", type=int, default=0, help="seed of the shuffle applied before sharding")
    convert.add_argument("--chunk-bytes", default="256MB", help="shard size, e.g. 64MB, 256MB")
    convert.add_argument("--num-workers", type=int, default=None, help="processes (default: all CPUs)")
    convert.add_argument("--overwrite", action="store_true", help="replace the shards already in OUT")
    convert.add_argument("--no-verify", dest="verify", action="store_false",
                         help="do not decode each JPEG once to check it (faster; corrupt files then fail in training)")
    args = parser.parse_args(argv)
    try:
        report = convert_image_folder(args.src, args.out, seed=args.seed, chunk_bytes=args.chunk_bytes,
                                      num_workers=args.num_workers, overwrite=args.overwrite, verify=args.verify)
    except (OSError, ValueError) as err:  # bad input (missing folder, existing shards, bad image): no traceback
        raise SystemExit(f"error: {err}") from err
    print(f"{report.out_dir}: {report.num_samples} images of {len(report.classes)} classes in "
          f"{report.num_chunks} chunks; class names in {report.out_dir / CLASSES_FILE}")
    if report.reencoded:
        shown = ", ".join(report.reencoded[:10]) + (", ..." if len(report.reencoded) > 10 else "")
        print(f"re-encoded {len(report.reencoded)} file(s) to JPEG (quality {REENCODE_QUALITY}; not JPEG data, or "
              f"JPEG that torchvision cannot decode): {shown}")


if __name__ == "__main__":
    main()
