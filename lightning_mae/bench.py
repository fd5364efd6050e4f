"""``make bench``: what self-guided masking costs, measured in one process.

For ViT-B/16 at 224 (batch 8) and the demo model (Fashion-MNIST, batch 256): the time of a full
training step (masks + forward + backward + AdamW) with random masks vs informed masks (ncut and pca,
default mid layer), steps interleaved so machine noise hits every variant alike; the partition's cost
per image; peak memory. Timings are ratios within this run, not absolute claims.

    python -m lightning_mae.bench [--steps 6] [--models vit_b16 demo] [--precision bf16]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from lightning_mae.mae import MaskedAutoencoderViT, mae_vit
from lightning_mae.masking import SelfGuidedMasking, ncut_bipartition, pca_bipartition

MODELS: dict[str, tuple[Callable[[], MaskedAutoencoderViT], int]] = {
    "vit_b16": (lambda: mae_vit("base", img_size=224), 8),
    "demo": (lambda: MaskedAutoencoderViT(img_size=28, patch_size=4, in_chans=1, embed_dim=128, depth=6,
                                          num_heads=4, decoder_embed_dim=64, decoder_depth=2,
                                          decoder_num_heads=4), 256),
}
VARIANTS = {"random": None, "informed_ncut": "ncut", "informed_pca": "pca"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def bench_model(name: str, steps: int, device: torch.device, precision: str) -> dict:
    build, batch = MODELS[name]
    torch.manual_seed(0)
    model = build().to(device)
    imgs = torch.randn(batch, model.in_chans, model.img_size, model.img_size, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext())
    maskings = {v: SelfGuidedMasking(start_epoch=None if p is None else 0, partition=p or "ncut")
                for v, p in VARIANTS.items()}

    def step(masking: SelfGuidedMasking) -> None:
        with autocast:
            ids = masking(imgs, model, epoch=0, max_epochs=1)
            loss = model(imgs, ids, masking.len_keep(model.num_patches)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    peaks: dict[str, float] = {}
    for rep in range(steps + 1):  # the first round warms up and is dropped
        for variant, masking in maskings.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            dt = _timed(lambda m=masking: step(m), device)
            if rep > 0:
                times[variant].append(dt)
            if device.type == "cuda":
                peaks[variant] = torch.cuda.max_memory_allocated(device) / 2**20
    step_ms = {v: 1000 * statistics.median(t) for v, t in times.items()}

    layer = maskings["informed_ncut"].layer(model.depth)
    with autocast:
        z = model.patch_features(imgs, layer)
    feature_ms = 1000 * statistics.median(
        _timed(lambda: model.patch_features(imgs, layer), device) for _ in range(steps))
    partition_us = {
        p: 1e6 * statistics.median(_timed(lambda f=f: f(z), device) for _ in range(steps)) / batch
        for p, f in (("ncut", ncut_bipartition), ("pca", pca_bipartition))
    }
    result = {
        "model": name, "batch": batch, "num_patches": model.num_patches, "source_layer": layer,
        "depth": model.depth, "precision": precision, "device": str(device), "steps": steps,
        "step_ms": step_ms,
        "ratio_vs_random": {v: step_ms[v] / step_ms["random"] for v in VARIANTS},
        "feature_pass_ms": feature_ms,
        "partition_us_per_image": partition_us,
    }
    if device.type == "cuda":
        result["peak_mem_mib"] = peaks
    else:
        result["process_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def report(results: list[dict]) -> str:
    lines = ["| model | batch | N | layer | random ms | ncut ms (x) | pca ms (x) | features ms | "
             "ncut us/img | pca us/img | peak MiB |", "|" + "---|" * 11]
    for r in results:
        s, x, p = r["step_ms"], r["ratio_vs_random"], r["partition_us_per_image"]
        peak = r.get("peak_mem_mib", {}).get("informed_ncut") or r.get("process_peak_rss_mib")
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['num_patches']} | {r['source_layer']}/{r['depth']} | "
            f"{s['random']:.0f} | {s['informed_ncut']:.0f} ({x['informed_ncut']:.2f}x) | "
            f"{s['informed_pca']:.0f} ({x['informed_pca']:.2f}x) | {r['feature_pass_ms']:.0f} | "
            f"{p['ncut']:.0f} | {p['pca']:.0f} | {peak:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (1 is steadier on a busy machine)")
    parser.add_argument("--out", default="runs/bench/mae_masking.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    device = torch.device(args.device)
    results = [bench_model(m, args.steps, device, args.precision) for m in args.models]
    table = report(results)
    print(f"Self-guided masking cost ({device}, torch threads {torch.get_num_threads()}, precision {args.precision})")
    print(table)
    print("peak MiB: CUDA peak allocated for the informed-ncut step, or the process's peak RSS on CPU")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written: {out}")
    return results


if __name__ == "__main__":
    main()
