"""``python -m lightning_mae.analysis.figures``: the paper's analysis figures for one or more pretraining checkpoints.

Give the checkpoints of one run (any order; they are sorted by epoch) and an output folder::

    python -m lightning_mae.analysis.figures runs/.../checkpoints/*.ckpt --out runs/analysis --images fashion-mnist

Every checkpoint is measured on the same images with the same fixed random masks
(``analysis.model_report``); the last checkpoint (highest epoch) is the reference of the KL curves and
the model of the per-image figures. Writes into ``--out``:

- ``metrics.csv``: one row per checkpoint, every scalar of ``model_report`` plus ``kl_last/enc<i>``;
- ``fig2_relations.png``: similarity matrix, similarity to the mean patch, cls attention (Fig. 2);
- ``fig3_clustering.png``: bi-partition gap on cosine and on attention edges, and per-layer KL to the last
  checkpoint vs epoch (Fig. 3, V);
- ``fig4_exploitation.png``: decoder exploitation rates per layer vs epoch (Fig. 4); per token by default
  (equal under uniform attention), ``--exploitation raw`` for the attention shares;
- ``fig5_informed_masks.png``: input | random mask | informed mask | reconstruction | partition (Fig. 5);
- ``fig6_attention.png``: mean attention distance and NMI per layer (Fig. 6);
- ``fig7_properties.png``: high-frequency amplitude per layer and mask-token variance (Fig. 7b, 7c);
- ``figIII_clusters.png``: Normalized-Cut patch clusters over the images (Fig. III).
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from datamodules.images import IMAGE_SUFFIXES
from datamodules.pretraining.fashion_mnist import DEBIAN_DIR, find_idx, read_idx
from datamodules.pretraining.fashion_mnist import MEAN as FMNIST_MEAN
from datamodules.pretraining.fashion_mnist import STD as FMNIST_STD
from lightning_mae.analysis.metrics import (
    ExploitationNorm,
    Report,
    model_report,
    relation_kl_per_layer,
    similarity_matrix,
)
from lightning_mae.downstream.checkpoints import backbone_state, load_checkpoint_file
from lightning_mae.mae import MaskedAutoencoderViT
from lightning_mae.masking import SelfGuidedMasking, ncut_bipartition, random_ids_shuffle
from lightning_mae.panels import mask_panel

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# --- checkpoints ----------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    path: Path
    epoch: int
    config: dict[str, Any]  # MaskedAutoencoderViT's constructor arguments
    masking: dict[str, Any]  # SelfGuidedMasking's arguments from the run's hyperparameters ({} if unknown)


def read_pretraining_checkpoint(path: str | Path) -> tuple[Checkpoint, dict[str, Tensor]]:
    """The metadata and the backbone weights of one ``MAEPretraining`` checkpoint (memory-mapped)."""
    path = Path(path)
    ckpt = load_checkpoint_file(path, mmap=True)
    if not isinstance(ckpt, dict) or "mae_config" not in ckpt:
        raise ValueError(f"checkpoint {path} has no 'mae_config': not an MAEPretraining checkpoint of this project")
    state = backbone_state(ckpt.get("state_dict", {}))
    if not state:
        raise ValueError(f"checkpoint {path} has no 'backbone.*' weights in its state_dict")
    hparams = ckpt.get("hyper_parameters") or {}
    masking = hparams.get("masking") if isinstance(hparams, dict) else None
    masking = masking.get("init_args", {}) if isinstance(masking, dict) else {}
    meta = Checkpoint(path, int(ckpt.get("epoch", 0)), dict(ckpt["mae_config"]), dict(masking))
    return meta, state


def check_same_architecture(checkpoints: list[Checkpoint]) -> None:
    """All checkpoints must share one architecture (the curves compare layer by layer)."""
    first = checkpoints[0]
    for other in checkpoints[1:]:
        diff = sorted(k for k in first.config.keys() | other.config.keys()
                      if first.config.get(k) != other.config.get(k))
        if diff:
            detail = ", ".join(f"{k}: {first.config.get(k)} vs {other.config.get(k)}" for k in diff)
            raise ValueError(f"checkpoints {first.path} and {other.path} have different architectures ({detail})")


def build_model(meta: Checkpoint, state: dict[str, Tensor]) -> MaskedAutoencoderViT:
    model = MaskedAutoencoderViT(**meta.config)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {meta.path}: weights do not fit its mae_config: {err}") from err
    return model.eval()


# --- images ---------------------------------------------------------------------------------------
def _fit(imgs: Tensor, img_size: int, in_chans: int) -> Tensor:
    """``[B, C, H, W]`` floats in [0, 1] -> ``[B, in_chans, img_size, img_size]`` (resize short side, centre crop)."""
    if imgs.shape[1] != in_chans:  # grey <-> colour
        imgs = imgs.mean(1, keepdim=True).expand(-1, in_chans, -1, -1)
    h, w = imgs.shape[-2:]
    if (h, w) != (img_size, img_size):
        scale = img_size / min(h, w)
        size = (max(img_size, round(h * scale)), max(img_size, round(w * scale)))
        imgs = F.interpolate(imgs, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        top, left = (size[0] - img_size) // 2, (size[1] - img_size) // 2
        imgs = imgs[..., top:top + img_size, left:left + img_size]
    return imgs.contiguous()


def load_images(source: str, num_images: int, img_size: int, in_chans: int, norm: str = "auto") -> Tensor:
    """``num_images`` normalised images ``[B, in_chans, img_size, img_size]`` from ``source``.

    ``source`` is ``fashion-mnist`` (the first test images, from Debian's idx files) or a folder of image
    files (searched recursively, sorted by path). ``norm``: ``fashion-mnist`` or ``imagenet`` mean/std,
    ``none``, or ``auto`` = Fashion-MNIST's for that source and for 1-channel models, ImageNet's otherwise.
    """
    if source == "fashion-mnist":
        path = find_idx("t10k-images-idx3-ubyte", [DEBIAN_DIR, Path("data/FashionMNIST/raw")])
        if path is None:
            raise FileNotFoundError(
                f"--images fashion-mnist: t10k-images-idx3-ubyte[.gz] not found in {DEBIAN_DIR} or "
                "data/FashionMNIST/raw (`sudo apt-get install dataset-fashion-mnist`), or pass a folder of images"
            )
        imgs = torch.from_numpy(read_idx(path)[:num_images].copy())[:, None].float() / 255
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(f"--images {source}: no such folder (or use 'fashion-mnist')")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:num_images]
        if not files:
            raise FileNotFoundError(f"--images {source}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
        mode = "L" if in_chans == 1 else "RGB"
        imgs = [_fit(_read_image(f, mode), img_size, in_chans) for f in files]
        imgs = torch.cat(imgs)
    imgs = _fit(imgs, img_size, in_chans)
    if norm == "auto":
        norm = "fashion-mnist" if source == "fashion-mnist" or in_chans == 1 else "imagenet"
    if norm != "none":
        mean, std = {"fashion-mnist": (FMNIST_MEAN, FMNIST_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}[norm]
        if len(mean) != in_chans:  # one grey statistic for every channel, or the grey average of RGB ones
            mean, std = (np.mean(mean),) * in_chans, (np.mean(std),) * in_chans
        imgs = (imgs - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return imgs.float()


def _read_image(path: Path, mode: str) -> Tensor:
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert(mode), dtype=np.float32) / 255
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    return torch.from_numpy(array.reshape(*array.shape[:2], -1)).permute(2, 0, 1)[None]


# --- figures --------------------------------------------------------------------------------------
def _display(imgs: Tensor) -> np.ndarray:
    """Min-max scaled ``[B, H, W, C]`` (C = 1 squeezed) for ``imshow``."""
    lo = imgs.amin(dim=(1, 2, 3), keepdim=True)
    x = ((imgs - lo) / (imgs.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(1e-6)).permute(0, 2, 3, 1)
    return x.squeeze(-1).cpu().numpy() if x.shape[-1] == 1 else x.cpu().numpy()


def _grid(values: Tensor) -> np.ndarray:
    g = int(values.shape[-1] ** 0.5)
    return values.reshape(*values.shape[:-1], g, g).cpu().numpy()


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def fig_relations(imgs: Tensor, report: Report, layer: int, path: Path) -> Path:
    """Fig. 2: per image, the similarity matrix, the similarity to the mean patch and the cls attention."""
    z = F.normalize(report.encoder.hidden[layer][:, 1:].float(), dim=-1)
    sim = similarity_matrix(z)
    to_mean = torch.einsum("bnd,bd->bn", z, F.normalize(z.mean(1), dim=-1))
    cls_attn = report.encoder.attn[layer - 1][:, :, 0, 1:].mean(1)
    shown = _display(imgs)
    fig = Figure(figsize=(10, 2.5 * len(imgs)))
    axes = fig.subplots(len(imgs), 4, squeeze=False)
    titles = ("input", f"similarity matrix (enc{layer})", "similarity to mean patch", "cls attention")
    for b, row in enumerate(axes):
        row[0].imshow(shown[b], cmap="gray")
        for ax, panel in zip(row[1:], (sim[b].cpu().numpy(), _grid(to_mean[b]), _grid(cls_attn[b]))):
            fig.colorbar(ax.imshow(panel, cmap="viridis"), ax=ax, fraction=0.046)
        for ax, title in zip(row, titles):
            ax.set_title(title, fontsize=9)
            ax.set_xticks([]), ax.set_yticks([])
    return _save(fig, path)


def _series(rows: list[dict[str, float]], family: str) -> dict[str, list[float]]:
    """``{layer: [value per checkpoint]}`` for the keys ``family/<layer>``, in layer order."""
    layers = [k.split("/", 1)[1] for k in rows[0] if k.startswith(family + "/")]
    return {layer: [r.get(f"{family}/{layer}", float("nan")) for r in rows] for layer in layers}


def _layer_colors(n: int) -> list:
    return [colormaps["viridis"](i / max(n - 1, 1)) for i in range(n)]


def fig_clustering(epochs: list[int], rows: list[dict[str, float]], path: Path) -> Path:
    """Fig. 3 (and V): (a) µintra − µinter per encoder layer vs epoch on cosine edges and on attention edges
    (if measured), (b) KL to the last checkpoint per layer."""
    panels = [("gap", "(a) bi-partition gap µintra − µinter, cosine edges")]
    if any(k.startswith("gap_attn/") for k in rows[0]):
        panels.append(("gap_attn", "(a) bi-partition gap µintra − µinter, attention edges"))
    panels.append(("kl_last", "(b) KL(token relations of last ‖ epoch)"))
    fig = Figure(figsize=(5.5 * len(panels), 4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (family, title) in zip(axes, panels):
        series = _series(rows, family)
        for (layer, values), color in zip(series.items(), _layer_colors(len(series))):
            ax.plot(epochs, values, marker="o", color=color, label=layer)
        ax.set_xlabel("epoch"), ax.set_title(title, fontsize=10), ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def fig_exploitation(epochs: list[int], rows: list[dict[str, float]], path: Path,
                     normalization: ExploitationNorm = "per_token") -> Path:
    """Fig. 4: attention of masked queries on visible tokens (solid) and mask tokens (dashed), per token of
    each kind (``"per_token"``) or as the share of each kind (``"raw"``)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    visible, mask = _series(rows, "exploit_visible"), _series(rows, "exploit_mask")
    for (layer, values), color in zip(visible.items(), _layer_colors(len(visible))):
        ax.plot(epochs, values, marker="o", color=color, label=f"visible → masked, {layer}")
        ax.plot(epochs, mask[layer], marker="s", linestyle="--", color=color, label=f"mask → masked, {layer}")
    ylabel = "attention per token (uniform: all equal)" if normalization == "per_token" else "attention share"
    ax.set_xlabel("epoch"), ax.set_ylabel(ylabel), ax.set_title("decoder exploitation rate", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def fig_per_layer(epochs: list[int], rows: list[dict[str, float]], panels: list[tuple[str, str]], path: Path) -> Path:
    """One panel per ``(family, y label)``: the value per layer, one line per checkpoint."""
    fig = Figure(figsize=(5.5 * len(panels), 4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colors = _layer_colors(len(rows))
    for ax, (family, label) in zip(axes, panels):
        layers = [k.split("/", 1)[1] for k in rows[0] if k.startswith(family + "/")]
        for row, epoch, color in zip(rows, epochs, colors):
            ax.plot(range(len(layers)), [row[f"{family}/{layer}"] for layer in layers], marker="o", color=color,
                    label=f"epoch {epoch}")
        ax.set_xticks(range(len(layers)), layers, rotation=45, fontsize=7)
        ax.set_ylabel(label), ax.legend(fontsize=7)
    return _save(fig, path)


def fig_clusters(imgs: Tensor, report: Report, layer: int, tau: float | str, eps: float, path: Path) -> Path:
    """Fig. III: each image with its Normalized-Cut object side (red) and the rest (blue) overlaid."""
    z = F.normalize(report.encoder.hidden[layer][:, 1:].float(), dim=-1)
    clusters = _grid(ncut_bipartition(z, tau, eps).float())
    shown = _display(imgs)
    fig = Figure(figsize=(2.2 * len(imgs), 2.6))
    axes = fig.subplots(1, len(imgs), squeeze=False)[0]
    overlay = colormaps["coolwarm"]
    for ax, img, cl in zip(axes, shown, clusters):
        h, w = img.shape[:2]
        ax.imshow(img, cmap="gray", extent=(0, w, h, 0))
        ax.imshow(overlay(cl), alpha=0.45, extent=(0, w, h, 0), interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"Normalized-Cut patch clusters (enc{layer}; red: object side)", fontsize=10)
    return _save(fig, path)


def fig_masks(model: MaskedAutoencoderViT, masking: SelfGuidedMasking, imgs: Tensor, epoch: int, path: Path) -> Path:
    """Fig. 5: ``panels.mask_panel`` of the last checkpoint (titled columns), at its own pixel size."""
    panel = mask_panel(model, masking, imgs, epoch).permute(1, 2, 0).numpy()
    dpi = 100
    fig = Figure(figsize=(panel.shape[1] / dpi, panel.shape[0] / dpi), dpi=dpi)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(panel, interpolation="nearest")
    ax.set_axis_off()
    fig.savefig(path, dpi=dpi)
    return path


# --- the command ----------------------------------------------------------------------------------
def write_csv(path: Path, checkpoints: list[Checkpoint], rows: list[dict[str, float]]) -> Path:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["checkpoint", "epoch", *keys])
        for meta, row in zip(checkpoints, rows):
            writer.writerow([str(meta.path), meta.epoch, *(f"{row.get(k, float('nan')):.6g}" for k in keys)])
    return path


def analyze(
    ckpts: list[str], out: str | Path, images: str = "fashion-mnist", num_images: int = 8, norm: str = "auto",
    temperature: float = 0.1, mask_ratio: float | None = None, layer: int | None = None, seed: int = 0,
    device: str = "cpu", tau: float | str | None = "mean", exploitation: ExploitationNorm = "per_token",
) -> list[Path]:
    """Measure every checkpoint and write ``metrics.csv`` and the figures into ``out``; returns the files.

    ``tau``: NCut threshold of the gap and cluster figures (``"mean"``: per image); ``None`` = the run's.
    ``exploitation``: ``"per_token"`` or ``"raw"`` exploitation rates (``analysis.exploitation_rates``).
    """
    metas = [read_pretraining_checkpoint(c)[0] for c in ckpts]  # memory-mapped: cheap, fails early
    check_same_architecture(metas)
    order = sorted(range(len(metas)), key=lambda i: metas[i].epoch)  # stable: ties keep the given order
    metas = [metas[i] for i in order]
    config, masking_args = metas[-1].config, metas[-1].masking
    overrides = {k: v for k, v in (("mask_ratio", mask_ratio), ("tau", tau)) if v is not None}
    masking = SelfGuidedMasking(**{**masking_args, **overrides})
    depth = config["depth"]
    layer = depth if layer is None else layer
    if not 1 <= layer <= depth:
        raise ValueError(f"--layer {layer} is outside the encoder's blocks 1..{depth}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    imgs = load_images(images, num_images, config["img_size"], config["in_chans"], norm).to(device)
    num_patches = (config["img_size"] // config["patch_size"]) ** 2
    ids_shuffle = random_ids_shuffle(len(imgs), num_patches, generator=torch.Generator().manual_seed(seed)).to(device)
    len_keep = masking.len_keep(num_patches)

    rows: list[dict[str, float]] = []
    relations: list[list[Tensor]] = []
    for meta in metas:  # one model in memory at a time
        model = build_model(meta, read_pretraining_checkpoint(meta.path)[1]).to(device)
        report = model_report(model, imgs, ids_shuffle, len_keep, temperature, masking.tau, masking.eps,
                              exploitation=exploitation)
        rows.append(dict(report.scalars))
        relations.append(report.relations)
    for row, rel in zip(rows, relations):
        for i, kl in enumerate(relation_kl_per_layer(relations[-1], rel), 1):
            row[f"kl_last/enc{i}"] = float(kl)

    epochs = [m.epoch for m in metas]
    files = [write_csv(out / "metrics.csv", metas, rows)]
    files.append(fig_relations(imgs, report, layer, out / "fig2_relations.png"))
    files.append(fig_clustering(epochs, rows, out / "fig3_clustering.png"))
    files.append(fig_exploitation(epochs, rows, out / "fig4_exploitation.png", exploitation))
    files.append(fig_masks(model, masking, imgs, metas[-1].epoch, out / "fig5_informed_masks.png"))
    files.append(fig_per_layer(epochs, rows, [("attn_dist", "mean attention distance (pixels)"),
                                               ("attn_nmi", "attention NMI")], out / "fig6_attention.png"))
    files.append(fig_per_layer(epochs, rows, [("fourier_high", "Δ log amplitude at the highest frequency"),
                                               ("mask_var", "mask-token variance")], out / "fig7_properties.png"))
    files.append(fig_clusters(imgs, report, layer, masking.tau, masking.eps, out / "figIII_clusters.png"))
    return files


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m lightning_mae.analysis.figures", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpts", nargs="+", metavar="CKPT",
                        help="MAEPretraining checkpoints (.ckpt) of one architecture")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--images", default="fashion-mnist", help="'fashion-mnist' or a folder of image files")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--norm", choices=["auto", "fashion-mnist", "imagenet", "none"], default="auto",
                        help="input normalisation (auto: Fashion-MNIST's for it and 1-channel models, else ImageNet's)")
    parser.add_argument("--temperature", type=float, default=0.1, help="softmax temperature of the token relations")
    parser.add_argument("--mask-ratio", type=float, default=None, help="default: the run's masking.mask_ratio")
    parser.add_argument("--layer", type=int, default=None,
                        help="encoder block of Fig. 2 and Fig. III (default: the last)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fixed random masks")
    parser.add_argument("--tau", type=lambda v: v if v in ("mean", "run") else float(v), default="mean",
                        help="NCut threshold of the gap and cluster figures: a cosine, 'mean' (per image) or "
                             "'run' (the run's masking.tau)")
    parser.add_argument("--exploitation", choices=["per_token", "raw"], default="per_token",
                        help="decoder exploitation rates: attention per visible/mask/cls token (equal under "
                             "uniform attention; default) or the raw attention share of each kind")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.num_images < 1:
        parser.error("--num-images must be >= 1")
    files = analyze(args.ckpts, args.out, args.images, args.num_images, args.norm, args.temperature,
                    args.mask_ratio, args.layer, args.seed, args.device, None if args.tau == "run" else args.tau,
                    args.exploitation)
    print("\n".join(["Wrote:", *(f"  {f}" for f in files)]))
    return files


if __name__ == "__main__":
    main()
