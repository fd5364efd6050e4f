"""Is the informed mask's Normalized Cut well posed? The NCut graph's edge density for a fixed ``tau`` vs ``tau: mean``.

Informed masking builds, per image, a graph on the patches of ``SelfGuidedMasking``'s source layer with an edge
wherever the cosine similarity exceeds ``tau``. When (nearly) every pair exceeds it, the graph is complete, its
Fiedler vector degenerate and the cut arbitrary; ``mask/edge_density`` reports this during training. This script
measures it offline, on real photographs, for each ``--tau`` (default ``0.2``, sgmae.yaml's old value, and
``mean``, each image's mean similarity):

- without ``--ckpt``: the ViT-B/16 MAE of ``experiments/sgmae.yaml`` (seed 0, MAE initialisation) on
  ``skimage.data``'s sample photographs (shipped inside scikit-image; or ``--images FOLDER``) resized to 224,
  ImageNet-normalised, at initialisation and after each of ``--steps`` AdamW steps of MAE training on them
  (random masks, random resized crops and flips, ``--lr``);
- with ``--ckpt``: MAEPretraining checkpoints (e.g. the Fashion-MNIST demo's), on ``--images`` (default
  ``fashion-mnist``), at the run's own source layer.

    python -m benchmarks.ncut_graph --steps 0 10 30            # ViT-B/16 on skimage photographs, CPU: minutes
    python -m benchmarks.ncut_graph --ckpt runs/sgmae_fmnist/sgmae-fmnist/<run>/checkpoints/last.ckpt

Prints one row per (model, step, layer, tau): the edge density (share of off-diagonal pairs above the threshold,
mean over images, and its range over images), the similarity quantiles, the share of patches on the object side
of the cut, the number of distinct cuts among the images (a complete graph is the same graph for every image,
hence gives every image the same cut), and whether ``masking.degenerate_graph`` flags the batch (as training's
warning does) and how many images on their own; ``--json`` writes the rows too.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lightning_mae.analysis.figures import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_model,
    load_images,
    read_pretraining_checkpoint,
)
from lightning_mae.mae import MaskedAutoencoderViT
from lightning_mae.masking import (
    SelfGuidedMasking,
    cosine_affinity,
    degenerate_graph,
    graph_stats,
    ncut_split,
    ncut_threshold,
    random_ids_shuffle,
)

# skimage.data's photographs of objects and scenes (colour and grey; textures and synthetic images left out)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "horse", "clock",
          "immunohistochemistry", "hubble_deep_field", "retina")


def photographs(folder: str | None, size: int) -> torch.Tensor:
    """``[B, 3, size, size]`` in [0, 1]: resize the short side to ``size``, centre crop."""
    if folder:
        return load_images(folder, 10_000, size, 3, norm="none")
    from skimage import data  # sample images ship inside the wheel: no download

    out = []
    for name in PHOTOS:
        img = Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB")
        scale = size / min(img.size)
        img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))),
                         Image.Resampling.BICUBIC)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        out.append(torch.from_numpy(np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32)))
    return torch.stack(out).permute(0, 3, 1, 2) / 255


def normalise(imgs: torch.Tensor) -> torch.Tensor:
    return (imgs - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def augment(imgs: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """MAE's training crop, per image: random resized crop (scale 0.2-1, aspect 3/4-4/3) and flip."""
    out = []
    for img in imgs:
        h, w = img.shape[-2:]
        area = h * w * (0.2 + 0.8 * torch.rand((), generator=gen).item())
        ratio = float(np.exp(np.log(3 / 4) + (np.log(4 / 3) - np.log(3 / 4)) * torch.rand((), generator=gen).item()))
        ch, cw = min(h, round((area / ratio) ** 0.5)), min(w, round((area * ratio) ** 0.5))
        top = int(torch.randint(0, h - ch + 1, (), generator=gen))
        left = int(torch.randint(0, w - cw + 1, (), generator=gen))
        crop = F.interpolate(img[None, :, top:top + ch, left:left + cw], size=(size, size), mode="bicubic",
                             align_corners=False).clamp(0, 1)[0]
        out.append(crop.flip(-1) if torch.rand((), generator=gen).item() < 0.5 else crop)
    return torch.stack(out)


def measure(model: MaskedAutoencoderViT, masking: SelfGuidedMasking, imgs: torch.Tensor, taus: list) -> list[dict]:
    """One row per tau: the NCut graph of ``masking``'s features of ``imgs`` (``masking.graph_stats``)."""
    model.eval()
    affinity = cosine_affinity(masking.features(imgs, model))
    rows = []
    for tau in taus:
        stats = {k: float(v) for k, v in graph_stats(affinity, tau).items()}
        per_image = (affinity > ncut_threshold(affinity, tau)).float()
        n = affinity.shape[-1]
        density = (per_image.sum((1, 2)) - per_image.diagonal(dim1=1, dim2=2).sum(-1)) / (n * (n - 1))
        cuts = ncut_split(affinity, tau, masking.eps)
        # a complete graph is the same graph for every image, hence the same cut: count the distinct ones
        distinct = len({tuple(c.tolist()) for c in cuts})
        rows.append({"layer": f"{masking.source}{masking.check(model)}", "tau": tau, **stats,
                     "density_min": float(density.min()), "density_max": float(density.max()),
                     "object_share": float(cuts.float().mean()), "distinct_cuts": distinct, "images": len(cuts),
                     "degenerate_images": sum(degenerate_graph(float(d)) for d in density),
                     "degenerate": degenerate_graph(stats["edge_density"])})
    return rows


def print_rows(rows: list[dict], header: bool = True) -> None:
    if header:
        print(f"{'model':<28} {'step':>5} {'layer':>9} {'tau':>5} {'density':>8} {'(min-max)':>13} {'q10':>6} "
              f"{'q50':>6} {'q90':>6} {'object':>6} {'cuts':>7} {'degenerate (images)':>20}")
    for r in rows:
        print(f"{r['model']:<28} {r['step']:>5} {r['layer']:>9} {str(r['tau']):>5} {r['edge_density']:>8.3f} "
              f"{r['density_min']:>6.3f}-{r['density_max']:<6.3f} {r['sim_q10']:>6.3f} {r['sim_q50']:>6.3f} "
              f"{r['sim_q90']:>6.3f} {r['object_share']:>6.2f} {r['distinct_cuts']:>3}/{r['images']:<3} "
              f"{str(r['degenerate']):>8} ({r['degenerate_images']}/{r['images']})")


def vit_b16_rows(args: argparse.Namespace, taus: list) -> list[dict]:
    torch.manual_seed(args.seed)
    model = MaskedAutoencoderViT()  # sgmae.yaml's ViT-B/16, norm_pix_loss
    masking = SelfGuidedMasking(source_layer=args.layer, source=args.source)
    raw = photographs(args.images, model.img_size)
    fixed = normalise(raw)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    gen = torch.Generator().manual_seed(args.seed)
    rows, step, start = [], 0, time.perf_counter()
    for target in sorted(set(args.steps)):
        model.train()
        while step < target:
            batch = normalise(augment(raw, model.img_size, gen))
            ids = random_ids_shuffle(len(batch), model.num_patches, generator=gen)
            optimizer.zero_grad()
            loss = model(batch, ids, masking.len_keep(model.num_patches)).loss
            loss.backward()
            optimizer.step()
            step += 1
        new = [{"model": f"ViT-B/16 MAE, {len(fixed)} photos", "step": step, **row}
               for row in measure(model, masking, fixed, taus)]
        print_rows(new, header=not rows)
        print(f"  ({time.perf_counter() - start:.0f}s)", flush=True)
        rows += new
    return rows


def checkpoint_rows(args: argparse.Namespace, taus: list) -> list[dict]:
    rows = []
    for path in args.ckpt:
        meta, state = read_pretraining_checkpoint(path)
        model = build_model(meta, state)
        overrides = {k: v for k, v in (("source_layer", args.layer), ("source", args.source)) if v is not None}
        masking = SelfGuidedMasking(**{**meta.masking, **overrides})
        cfg = meta.config
        imgs = load_images(args.images or "fashion-mnist", args.num_images, cfg["img_size"], cfg["in_chans"])
        for row in measure(model, masking, imgs, taus):
            rows.append({"model": f"{Path(path).parent.parent.name} epoch {meta.epoch}", "step": "-", **row})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ncut_graph", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", nargs="*", default=[], help="MAEPretraining checkpoints (default: ViT-B/16)")
    parser.add_argument("--images", default=None,
                        help="folder of images (default: skimage.data photographs; with --ckpt: fashion-mnist)")
    parser.add_argument("--num-images", type=int, default=64, help="with --ckpt: images measured")
    parser.add_argument("--tau", nargs="+", default=["0.2", "mean"], help="thresholds: cosines or 'mean'")
    parser.add_argument("--layer", type=int, default=None, help="source_layer (default: the model's / the run's)")
    parser.add_argument("--source", choices=["encoder", "decoder"], default=None)
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 10], help="ViT-B/16: measure after these steps")
    parser.add_argument("--lr", type=float, default=1.5e-4, help="ViT-B/16 training: AdamW lr (constant)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.source is None and not args.ckpt:
        args.source = "encoder"
    taus = [t if t == "mean" else float(t) for t in args.tau]
    if args.ckpt:
        rows = checkpoint_rows(args, taus)
        print_rows(rows)
    else:
        rows = vit_b16_rows(args, taus)  # printed as they come
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
