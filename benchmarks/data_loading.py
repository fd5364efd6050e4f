"""Data-pipeline speed against the training step: which one bounds an MAE pretraining run.

Real JPEGs (the Kodak PNGs of ``--images``, or ``skimage.data`` images, re-encoded at ImageNet's typical size, short
side 375, quality 90) go through the ``ImageNet`` DataModule's own dataset and training transform
(decode, RandomResizedCrop 224 bicubic, flip, normalise). Reported: images/s of one worker (the
dataset read in this process with one torch thread, as a DataLoader worker runs), of the real train
DataLoader with each ``--workers`` count, and of our ViT-B/16 training step on this machine; then how
many workers a GPU needs at ``--gpu-tflops`` (images/s = TFLOP/s / the step's measured FLOPs per image).

    python -m benchmarks.data_loading [--images data/kodak] [--workers 1 2] [--precision bf16]

``--images`` defaults to ``skimage.data``'s sample photographs (shipped inside scikit-image); ``make data-inr``
downloads the 24 Kodak images into data/kodak for ``--images data/kodak``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datamodules.images import IMAGE_SUFFIXES
from datamodules.pretraining.imagenet import ImageNet


def source_images(folder: str | None) -> Iterator[tuple[str, Image.Image]]:
    """The images of ``folder``, or ``skimage.data``'s colour photographs when no folder is given."""
    if folder:
        paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise FileNotFoundError(f"--images {folder}: no image files there ({', '.join(IMAGE_SUFFIXES)})")
        for path in paths:
            with Image.open(path) as img:
                yield path.stem, img.convert("RGB")
        return
    from skimage import data  # ships its sample images inside the wheel: no download

    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry"):
        yield name, Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB")


def write_jpegs(folder: str | None, root: Path, short_side: int = 375, quality: int = 90) -> list[Path]:
    """Re-encode the source images as ``root/train/images/<name>.JPEG`` (an ImageFolder with one class)."""
    out = root / "train" / "images"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, img in source_images(folder):
        if short_side:
            scale = short_side / min(img.size)
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
        path = out / f"{name}.JPEG"
        img.save(path, quality=quality)
        paths.append(path)
    return paths


def dataset_images_per_s(dataset: torch.utils.data.Dataset, seconds: float) -> float:
    """Samples/s of ``dataset[i]`` read in this process with one torch thread (one DataLoader worker)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset[0]  # warm-up
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            dataset[count % len(dataset)]
            count += 1
        return count / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def loader_images_per_s(loader: torch.utils.data.DataLoader, seconds: float) -> float:
    """Images/s coming out of a DataLoader (after its first batch: workers started), cycling epochs."""
    count, start = 0, None
    while start is None or time.perf_counter() - start < seconds:
        if len(loader) == 0:
            raise ValueError("the DataLoader yields no batch (fewer images than one batch, with drop_last)")
        for imgs, _ in loader:
            if start is None:
                start = time.perf_counter()  # the first batch pays the workers' start
                continue
            count += imgs.shape[0]
            if time.perf_counter() - start >= seconds:
                break
    return count / (time.perf_counter() - start)


def workers_needed(images_per_s: float, per_worker: float) -> int:
    """DataLoader workers that keep up with a consumer of ``images_per_s`` (at least one)."""
    return max(1, math.ceil(images_per_s / per_worker))


def training_step(precision: str, steps: int) -> tuple[float, float]:
    """Our ViT-B/16 MAE training step on this CPU: (images/s, GFLOP per image of forward + backward)."""
    from benchmarks.mae_speed import BATCH, MODELS, our_step  # the trainer side, only for this comparison

    step = our_step(MODELS["vit_b16"][0](), BATCH, torch.device("cpu"), precision)
    gflop_per_image = step.flops() / BATCH / 1e9
    step()  # warm-up: optimizer state
    seconds = statistics.median(sum(step()) for _ in range(steps))
    return BATCH / seconds, gflop_per_image


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="",
                        help="folder of source images, e.g. data/kodak after `make data-inr` "
                             "(default '': skimage.data's sample photographs)")
    parser.add_argument("--short-side", type=int, default=375, help="resize before JPEG encoding (0: keep)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per pipeline figure")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="DataLoader worker counts to time")
    parser.add_argument("--batch-size", type=int, default=16, help="loader batch (at most the image count)")
    parser.add_argument("--precision", default="bf16", choices=["32", "bf16"], help="of the training step")
    parser.add_argument("--steps", type=int, default=4, help="timed training steps (0: skip the step)")
    parser.add_argument("--gpu-tflops", type=float, default=400.0,
                        help="achieved TFLOP/s of the GPU to size workers for (400: an H100 at ~40 %% of "
                             "its 989 dense bf16 TFLOP/s)")
    parser.add_argument("--out", default="runs/bench/data_pipeline.json")
    args = parser.parse_args(argv)
    images = None
    if args.images:
        from datamodules.signals.base import resolve_path  # data/kodak, or samples/kodak (bundled)

        try:
            images = str(resolve_path(args.images, "--images"))
        except FileNotFoundError as err:
            print(f"{err} Using skimage.data's sample photographs.")
        if images is not None and not Path(images).is_dir():
            print(f"--images {args.images}: not a folder; using skimage.data's sample photographs")
            images = None

    step = training_step(args.precision, args.steps) if args.steps else None  # before any worker exists
    with tempfile.TemporaryDirectory() as tmp:
        jpegs = write_jpegs(images, Path(tmp), args.short_side)
        sizes = [Image.open(p).size for p in jpegs]
        data = ImageNet(data_dir=tmp, batch_size=min(args.batch_size, len(jpegs)), num_workers=0)
        data.setup("fit")
        result: dict = {
            "images": len(jpegs), "source": images or "skimage.data",
            "mean_size": [round(statistics.mean(s[i] for s in sizes)) for i in (0, 1)],
            "mean_jpeg_kib": statistics.mean(p.stat().st_size for p in jpegs) / 1024,
            "per_worker_images_per_s": dataset_images_per_s(data.train_set, args.seconds),
            "loader_images_per_s": {},
        }
        for workers in args.workers:
            data.num_workers = workers
            loader = data.train_dataloader()
            result["loader_images_per_s"][workers] = loader_images_per_s(loader, args.seconds)
            del loader
            gc.collect()  # the loader and its iterator hold each other: collecting them stops the workers

    per_worker = result["per_worker_images_per_s"]
    w, h = result["mean_size"]
    lines = [f"Data pipeline: {len(jpegs)} JPEGs ({result['source']}, mean {w}x{h}, "
             f"{result['mean_jpeg_kib']:.0f} KiB), decode + ImageNet train transform", "",
             "| what | images/s |", "|---|---|",
             f"| decode + augment, one worker (in process, 1 thread) | {per_worker:.1f} |"]
    lines += [f"| train DataLoader, {k} worker(s), batch {data.batch_size} | {v:.1f} |"
              for k, v in result["loader_images_per_s"].items()]
    if step is not None:
        step_ips, gflop = step
        gpu_ips = args.gpu_tflops * 1e3 / gflop
        result.update(step_images_per_s=step_ips, step_precision=args.precision, gflop_per_image=gflop,
                      gpu_tflops=args.gpu_tflops, gpu_images_per_s=gpu_ips,
                      gpu_workers_needed=workers_needed(gpu_ips, per_worker),
                      cpu_workers_needed=workers_needed(step_ips, per_worker))
        bound = "the training step" if step_ips < per_worker else "the data pipeline"
        lines += [f"| MAE ViT-B/16 training step here ({args.precision}, batch 8, "
                  f"{torch.get_num_threads()} threads) | {step_ips:.2f} |", "",
                  f"On this machine {bound} bounds the run: one worker decodes {per_worker / step_ips:.0f}x "
                  f"what the step consumes ({result['cpu_workers_needed']} worker keeps up).",
                  f"A GPU at {args.gpu_tflops:.0f} TFLOP/s runs the step ({gflop:.1f} GFLOP/image) at "
                  f"~{gpu_ips:.0f} images/s and needs ~{result['gpu_workers_needed']} workers of this "
                  f"speed (CPU cores) to keep up."]
    print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written: {out}")
    return result


if __name__ == "__main__":
    main()
