"""Fit a list of Kodak images with several methods and write a PSNR/SSIM table like the paper's.

    make data-inr   # the 24 Kodak images into data/kodak (once)
    python -m benchmarks.kodak_table --folder data/kodak --steps 30000 --out runs/kodak

``--folder samples/kodak`` is the one Kodak image bundled in the package (kodim19), for a quick try.

Every (image, method) is one ``lightning fit`` of ``experiments/inr_image*.yaml`` in a subprocess,
with a CSV logger under ``<out>/<method>/<image>``. Neural Experts first pretrains its manager once
(``--pretrain-steps``, random label map, image-independent) and every image reuses it, as the
official code does. The table (``<out>/table.md``) is rewritten after every run, so a partial
sweep still leaves a table. PSNR is on [0, 1] (the official code's PSNR on [−1, 1] data reads
6.02 dB lower, see metrics.official_psnr).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

METHOD_CONFIGS = {
    "neural_experts": "experiments/inr_image.yaml",
    "siren": "experiments/inr_image_siren.yaml",
    "siren_wider": "experiments/inr_image_siren_wider.yaml",
    "naive_moe": "experiments/inr_image_naive_moe.yaml",
    "finer": "experiments/inr_image_finer.yaml",
    "softplus": "experiments/inr_image_softplus.yaml",
    "softplus_ff": "experiments/inr_image_softplus_ff.yaml",
}


def _cli() -> list[str]:
    return [sys.executable, "-m", "lightning_run.cli"]  # the `lightning` command of this interpreter


def _common(args: argparse.Namespace, image: str, root: Path, steps: int) -> list[str]:
    out = [
        f"--data.init_args.path={args.folder}",
        f"--data.init_args.image={image}",
        f"--trainer.max_steps={steps}",
        f"--data.init_args.steps_per_epoch={args.val_every}",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={root}",
        "--trainer.logger.name=",
        "--trainer.logger.version=run",
    ]
    if args.size:
        out.append(f"--data.init_args.size={args.size}")
    return out


def pretrain_manager(args: argparse.Namespace, image: str) -> Path:
    """Pretrain the Neural Experts manager once (image-independent with a random label map)."""
    ckpt = Path(args.out) / "pretrained_manager.pt"
    if ckpt.exists():
        return ckpt
    root = Path(args.out) / "neural_experts" / "_manager_pretraining"
    cmd = _cli() + ["fit", "--config", METHOD_CONFIGS["neural_experts"]]
    cmd += _common(args, image, root, args.pretrain_steps)
    cmd += [
        "--model.init_args.stages=[{name: manager_pretraining, until: 1.0, train: all, objective: manager}]",
        f"--model.init_args.manager_checkpoint={ckpt}",
        "--model.init_args.write_outputs=false",
    ]
    subprocess.run(cmd, check=True)
    if not ckpt.exists():
        raise RuntimeError(f"manager pretraining did not write {ckpt}")
    return ckpt


def fit(args: argparse.Namespace, method: str, image: str, manager: Path | None) -> dict:
    root = Path(args.out) / method / Path(image).stem
    cmd = _cli() + ["fit", "--config", METHOD_CONFIGS[method]] + _common(args, image, root, args.steps)
    if manager is not None:
        cmd.append(f"--model.init_args.manager_checkpoint={manager}")
    subprocess.run(cmd, check=True)
    return json.loads((root / "run" / "metrics.json").read_text())


def write_table(results: dict, methods: list[str], path: Path) -> str:
    """Markdown table: one row per image, PSNR / SSIM per method, and the mean."""
    images = sorted({img for m in results.values() for img in m})
    head = "| image | " + " | ".join(f"{m} PSNR | {m} SSIM" for m in methods) + " |"
    sep = "|---" * (1 + 2 * len(methods)) + "|"
    rows = [head, sep]

    def cell(m: str, img: str, key: str) -> str:
        r = results.get(m, {}).get(img)
        return f"{r[key]:.2f}" if key == "psnr" and r else (f"{r[key]:.4f}" if r else "–")

    for img in images:
        cells = " | ".join(f"{cell(m, img, 'psnr')} | {cell(m, img, 'ssim')}" for m in methods)
        rows.append(f"| {img} | {cells} |")
    means = []
    for m in methods:
        rs = list(results.get(m, {}).values())
        if rs:
            means.append(f"{sum(r['psnr'] for r in rs) / len(rs):.2f} | {sum(r['ssim'] for r in rs) / len(rs):.4f}")
        else:
            means.append("– | –")
    rows.append("| **mean** | " + " | ".join(means) + " |")
    text = "\n".join(rows) + "\n"
    path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default="data/kodak",
                        help="folder of Kodak images (`make data-inr` fills data/kodak; samples/kodak: the bundled "
                             "kodim19)")
    parser.add_argument("--images", nargs="*", default=None,
                        help="file names in the folder (default: every PNG the folder holds)")
    parser.add_argument("--methods", nargs="*", default=list(METHOD_CONFIGS), choices=list(METHOD_CONFIGS))
    parser.add_argument("--steps", type=int, default=30000, help="training steps per fit")
    parser.add_argument("--pretrain-steps", type=int, default=3000, help="manager pretraining steps (once)")
    parser.add_argument("--val-every", type=int, default=1000, help="validate every this many steps")
    parser.add_argument("--size", type=int, default=None, help="resize to size×size after the crop (default 128)")
    parser.add_argument("--out", default="runs/kodak", help="output folder")
    args = parser.parse_args(argv)

    from datamodules.signals.base import resolve_path

    try:
        folder = resolve_path(args.folder, "--folder")
    except FileNotFoundError as err:
        parser.error(str(err))
    if not folder.is_dir():
        parser.error(f"--folder {args.folder} ({folder}) is not a folder")
    images = args.images or sorted(p.name for p in folder.glob("*.png"))
    if not images:
        parser.error(f"--folder {args.folder} ({folder}) holds no PNG images; `make data-inr` downloads Kodak there")
    missing = [name for name in images if not (folder / name).is_file()]
    if missing:
        parser.error(f"--images {' '.join(missing)}: not in {folder} (it holds "
                     f"{', '.join(sorted(p.name for p in folder.glob('*.png'))) or 'no PNG'}); `make data-inr` "
                     f"downloads all 24 into data/kodak")
    os.environ.setdefault("WANDB_MODE", "offline")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results: dict = json.loads(results_path.read_text()) if results_path.exists() else {}
    manager = pretrain_manager(args, images[0]) if "neural_experts" in args.methods else None
    for image in images:
        for method in args.methods:
            if image in results.get(method, {}):
                continue  # resume a sweep
            pretrained = manager if method == "neural_experts" else None
            results.setdefault(method, {})[image] = fit(args, method, image, pretrained)
            results_path.write_text(json.dumps(results, indent=2))
            print(write_table(results, args.methods, out / "table.md"), flush=True)


if __name__ == "__main__":
    main()
