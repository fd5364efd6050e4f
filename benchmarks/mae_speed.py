"""``make bench``: training-step speed, measured in one process.

Default mode, what self-guided masking costs: for ViT-B/16 at 224 (batch 8) and the demo model
(Fashion-MNIST, batch 256), the time of a full training step (masks + forward + backward + AdamW) with
random masks vs informed masks (ncut and pca, default mid layer), steps interleaved so machine noise
hits every variant alike; the partition's cost per image; peak memory. Twice: the bare MAE step, and the
step as the shipped configs train it, with the online linear probe on the unmasked image
(``probe_features: full``), whose no-grad pass the informed masks then share.

``--reference``: our MAE step against facebookresearch/mae's ``models_mae.py`` (a copy outside this
project, its folder holding ``util/pos_embed.py``) at the same config (ViT-B/16, decoder 512x8,
norm_pix_loss, mask 0.75, batch 8, 224, AdamW lr 1.5e-4 betas 0.9/0.95 wd 0.05 without decay on
biases and norms): ms/step by phase, images/s, achieved TFLOP/s against the measured matmul peak, and
the speed-up as the median of paired rounds (the two models alternate, first one then the other).
``--profile`` adds the top operators of each model (torch.profiler).

``--compile``: eager vs ``torch.compile`` (what ``MAEPretraining(compile=True)`` does) per model.
Timings are ratios within this run, not absolute claims.

    python -m benchmarks.mae_speed [--steps 6] [--models vit_b16 demo] [--precision 32 bf16]
    python -m benchmarks.mae_speed --reference /tmp/mae_ref/models_mae.py --precision 32 bf16 --steps 10
    python -m benchmarks.mae_speed --compile --models demo vit_b16 --precision bf16
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode

from lightning_mae.mae import MaskedAutoencoderViT, mae_vit
from lightning_mae.masking import SelfGuidedMasking, ncut_bipartition, pca_bipartition, random_ids_shuffle
from lightning_mae.optim import param_groups_weight_decay
from lightning_mae.pretrain import adamw, masks_and_encoder_output
from lightning_mae.probe import LinearProbe

MODELS: dict[str, tuple[Callable[[], MaskedAutoencoderViT], int]] = {
    "vit_b16": (lambda: mae_vit("base", img_size=224), 8),
    "demo": (lambda: MaskedAutoencoderViT(img_size=28, patch_size=4, in_chans=1, embed_dim=128, depth=6,
                                          num_heads=4, decoder_embed_dim=64, decoder_depth=2,
                                          decoder_num_heads=4), 256),
}
VARIANTS = {"random": None, "informed_ncut": "ncut", "informed_pca": "pca"}
# The step as the shipped configs train it: plus the online probe on the unmasked image
# (probe_features: full), whose no-grad pass the informed masks share (masks_and_encoder_output).
PROBE_VARIANTS = {"random+probe": None, "informed_ncut+probe": "ncut"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """What Lightning's ``bf16-mixed`` does around a training step; nothing for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def bench_model(name: str, steps: int, device: torch.device, precision: str) -> dict:
    build, batch = MODELS[name]
    torch.manual_seed(0)
    model = build().to(device)
    imgs = torch.randn(batch, model.in_chans, model.img_size, model.img_size, device=device)
    optimizer = adamw(param_groups_weight_decay(model, 0.05, model.no_weight_decay()), 1e-4, (0.9, 0.95))
    variants = {**VARIANTS, **PROBE_VARIANTS}
    maskings = {v: SelfGuidedMasking(start_epoch=None if p is None else 0, partition=p or "ncut")
                for v, p in variants.items()}
    probe = LinearProbe(model.cls_token.shape[-1], 10).to(device)
    probe_optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-3)
    labels = torch.arange(batch, device=device) % 10

    def step(variant: str, masking: SelfGuidedMasking) -> None:
        with autocast(device, precision):
            if variant in PROBE_VARIANTS:
                ids, encoded = masks_and_encoder_output(masking, model, imgs, epoch=0, max_epochs=1)
            else:
                ids, encoded = masking(imgs, model, epoch=0, max_epochs=1), None
            loss = model(imgs, ids, masking.len_keep(model.num_patches)).loss
            if encoded is not None:
                loss = loss + nn.functional.cross_entropy(probe(encoded[:, 0]), labels)
        optimizer.zero_grad(set_to_none=True)
        probe_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        probe_optimizer.step()

    times: dict[str, list[float]] = {v: [] for v in variants}
    peaks: dict[str, float] = {}
    for rep in range(steps + 1):  # the first round warms up and is dropped
        for variant, masking in maskings.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            dt = _timed(lambda v=variant, m=masking: step(v, m), device)
            if rep > 0:
                times[variant].append(dt)
            if device.type == "cuda":
                peaks[variant] = torch.cuda.max_memory_allocated(device) / 2**20
    step_ms = {v: 1000 * statistics.median(t) for v, t in times.items()}

    layer = maskings["informed_ncut"].layer(model.depth)
    with autocast(device, precision):
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
        "ratio_vs_random": {v: step_ms[v] / step_ms["random"] for v in VARIANTS}
        | {v: step_ms[v] / step_ms["random+probe"] for v in PROBE_VARIANTS},
        "feature_pass_ms": feature_ms,
        "partition_us_per_image": partition_us,
    }
    if device.type == "cuda":
        result["peak_mem_mib"] = peaks
    else:
        result["process_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def report(results: list[dict]) -> str:
    lines = ["| model | precision | batch | N | layer | random ms | ncut ms (x) | pca ms (x) | "
             "random+probe ms | ncut+probe ms (x) | features ms | ncut us/img | pca us/img | peak MiB |",
             "|" + "---|" * 14]
    for r in results:
        s, x, p = r["step_ms"], r["ratio_vs_random"], r["partition_us_per_image"]
        peak = r.get("peak_mem_mib", {}).get("informed_ncut") or r.get("process_peak_rss_mib")
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['batch']} | {r['num_patches']} | "
            f"{r['source_layer']}/{r['depth']} | {s['random']:.0f} | "
            f"{s['informed_ncut']:.0f} ({x['informed_ncut']:.2f}x) | "
            f"{s['informed_pca']:.0f} ({x['informed_pca']:.2f}x) | {s['random+probe']:.0f} | "
            f"{s['informed_ncut+probe']:.0f} ({x['informed_ncut+probe']:.2f}x) | {r['feature_pass_ms']:.0f} | "
            f"{p['ncut']:.0f} | {p['pca']:.0f} | {peak:.0f} |"
        )
    return "\n".join(lines)


# --- ours vs facebookresearch/mae -----------------------------------------------------------------
MASK_RATIO, BATCH, LR, BETAS, WEIGHT_DECAY = 0.75, 8, 1.5e-4, (0.9, 0.95), 0.05


def load_reference(path: str | Path) -> ModuleType:
    """Import facebookresearch/mae's ``models_mae.py`` from ``path`` (with its ``util/`` beside it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--reference {path}: no such file (a copy of facebookresearch/mae's models_mae.py)")
    spec = importlib.util.spec_from_file_location("models_mae_reference", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # its own `from util.pos_embed import ...`
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise RuntimeError(f"--reference {path}: cannot import it: {err!r}") from err
    finally:
        sys.path.remove(str(path.parent))
    if not hasattr(module, "mae_vit_base_patch16"):
        raise ValueError(f"--reference {path}: no mae_vit_base_patch16 in it (facebookresearch/mae's models_mae.py?)")
    return module


class TrainStep:
    """A full training step of one model (forward with masking, backward, optimizer step, zero_grad)
    on a fixed batch; each call returns the seconds of its three phases."""

    def __init__(self, name: str, model: nn.Module, loss: Callable[[Tensor], Tensor],
                 optimizer: torch.optim.Optimizer, imgs: Tensor, precision: str) -> None:
        self.name, self.model, self.loss, self.optimizer = name, model, loss, optimizer
        self.imgs, self.precision = imgs, precision

    def forward(self) -> Tensor:
        with autocast(self.imgs.device, self.precision):
            return self.loss(self.imgs)

    def __call__(self) -> tuple[float, float, float]:
        device = self.imgs.device
        t0 = time.perf_counter()
        with record_function("forward"):
            loss = self.forward()
            _sync(device)
        t1 = time.perf_counter()
        with record_function("backward"):
            loss.backward()
            _sync(device)
        t2 = time.perf_counter()
        with record_function("optimizer"):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            _sync(device)
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    def flops(self) -> int:
        """Floating-point operations of forward + backward (matrix products, attention, convolution)."""
        with FlopCounterMode(display=False) as counter:
            self.forward().backward()
        self.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops()


def our_step(model: MaskedAutoencoderViT, batch: int, device: torch.device, precision: str,
             name: str = "ours") -> TrainStep:
    """Our MAE step as ``MAEPretraining`` runs it (random masks, its AdamW)."""
    model = model.to(device)
    len_keep = int(model.num_patches * (1 - MASK_RATIO))

    def loss(imgs: Tensor) -> Tensor:
        ids_shuffle = random_ids_shuffle(imgs.shape[0], model.num_patches, imgs.device)
        return model(imgs, ids_shuffle, len_keep).loss

    groups = param_groups_weight_decay(model, WEIGHT_DECAY, model.no_weight_decay())
    imgs = torch.randn(batch, model.in_chans, model.img_size, model.img_size, device=device)
    return TrainStep(name, model, loss, adamw(groups, LR, BETAS), imgs, precision)


def reference_step(reference: ModuleType, device: torch.device, precision: str, batch: int = BATCH) -> TrainStep:
    """The reference step as its ``main_pretrain.py`` runs it: plain ``torch.optim.AdamW`` over the
    no-decay groups of biases and norms."""
    model = reference.mae_vit_base_patch16(norm_pix_loss=True).to(device)
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, WEIGHT_DECAY), lr=LR, betas=BETAS)
    imgs = torch.randn(batch, 3, 224, 224, device=device)
    return TrainStep("reference", model, lambda x: model(x, mask_ratio=MASK_RATIO)[0], optimizer, imgs, precision)


def matmul_tflops(device: torch.device, precision: str, repeats: int = 10) -> float:
    """Achieved TFLOP/s of one decoder-MLP matrix product ([1576, 512] x [512, 2048]) in this precision."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    x = torch.randn(1576, 512, device=device, dtype=dtype)
    w = torch.randn(2048, 512, device=device, dtype=dtype)
    nn.functional.linear(x, w)
    seconds = statistics.median(_timed(lambda: nn.functional.linear(x, w), device) for _ in range(repeats))
    return 2 * x.shape[0] * x.shape[1] * w.shape[0] / seconds / 1e12


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def bench_reference(reference: ModuleType, steps: int, device: torch.device, precision: str,
                    warmup: int = 2, profile_steps: int = 0) -> dict:
    """Ours and the reference, stepping in alternation (first one, then the other) after ``warmup`` rounds."""
    torch.manual_seed(0)
    runners = [reference_step(reference, device, precision), our_step(MODELS["vit_b16"][0](), BATCH, device, precision)]
    flops = {r.name: r.flops() for r in runners}
    times: dict[str, list[tuple[float, float, float]]] = {r.name: [] for r in runners}
    for rnd in range(warmup + steps):
        for runner in runners if rnd % 2 else runners[::-1]:
            phases = runner()
            if rnd >= warmup:
                times[runner.name].append(phases)
    peak = matmul_tflops(device, precision)
    result: dict = {"precision": precision, "device": str(device), "batch": BATCH, "steps": steps,
                    "threads": torch.get_num_threads(), "matmul_peak_tflops": peak, "models": {}}
    for name, rows in times.items():
        total = [sum(row) for row in rows]
        q1, median, q3 = _quartiles(total)
        result["models"][name] = {
            "step_ms": 1000 * median, "step_ms_iqr": (1000 * q1, 1000 * q3),
            "phase_ms": {phase: 1000 * statistics.median(row[i] for row in rows)
                         for i, phase in enumerate(("forward", "backward", "optimizer"))},
            "images_per_s": BATCH / median, "gflop_per_step": flops[name] / 1e9,
            "tflops": flops[name] / median / 1e12,
        }
    speedups = [sum(r) / sum(o) for r, o in zip(times["reference"], times["ours"])]
    q1, median, q3 = _quartiles(speedups)
    result["speedup"], result["speedup_iqr"] = median, (q1, q3)
    if profile_steps:
        result["profile"] = {r.name: profile_ops(r, profile_steps) for r in runners}
    return result


def profile_ops(runner: TrainStep, steps: int, rows: int = 12) -> str:
    """torch.profiler table of the ``rows`` operators with the most self time over ``steps`` steps,
    plus the forward / backward / optimizer phases."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            runner()
    events = prof.key_averages()
    phases = [e for e in events if e.key in ("forward", "backward", "optimizer")]
    ops = sorted((e for e in events if e.key.startswith("aten::")), key=lambda e: e.self_cpu_time_total,
                 reverse=True)
    total = sum(e.self_cpu_time_total for e in events if e.key.startswith("aten::")) or 1
    lines = [f"{runner.name} ({runner.precision}), {steps} profiled step(s), ms per step:"]
    lines += [f"  phase {e.key:<44s} {e.cpu_time_total / 1e3 / steps:9.1f}" for e in phases]
    lines += [f"  {e.key:<50s} {e.self_cpu_time_total / 1e3 / steps:9.1f}  {100 * e.self_cpu_time_total / total:5.1f} %"
              f"  x{e.count // steps}" for e in ops[:rows]]
    return "\n".join(lines)


def report_reference(results: list[dict]) -> str:
    lines = ["| precision | model | ms/step [IQR] | forward | backward | optimizer | images/s | GFLOP/step | "
             "TFLOP/s (% of matmul peak) | speed-up vs reference [IQR] |", "|" + "---|" * 10]
    for r in results:
        for name, m in r["models"].items():
            ph, (lo, hi) = m["phase_ms"], m["step_ms_iqr"]
            speed = (f"**{r['speedup']:.2f}x** [{r['speedup_iqr'][0]:.2f}-{r['speedup_iqr'][1]:.2f}]"
                     if name == "ours" else "1")
            share = 100 * m["tflops"] / r["matmul_peak_tflops"]
            lines.append(
                f"| {r['precision']} | {name} | {m['step_ms']:.0f} [{lo:.0f}-{hi:.0f}] | {ph['forward']:.0f} | "
                f"{ph['backward']:.0f} | {ph['optimizer']:.0f} | {m['images_per_s']:.2f} | "
                f"{m['gflop_per_step']:.0f} | {m['tflops']:.3f} ({share:.0f} %) | {speed} |"
            )
    peaks = ", ".join(f"{r['precision']} {r['matmul_peak_tflops']:.3f}" for r in results)
    lines.append(f"\nmatmul peak (TFLOP/s, [1576,512]x[512,2048] in this run): {peaks}")
    return "\n".join(lines)


def bench_compile(name: str, steps: int, device: torch.device, precision: str) -> dict:
    """Eager vs ``torch.compile``d (``MAEPretraining(compile=True)``) steps of one model, alternating;
    the compiled model's first step, less an eager one, is the compilation time."""
    build, batch = MODELS[name]
    torch.manual_seed(0)
    eager = our_step(build(), batch, device, precision, "eager")
    compiled = our_step(build(), batch, device, precision, "compiled")
    compiled.model.load_state_dict(eager.model.state_dict())
    compiled.model.compile()
    first = {r.name: sum(r()) for r in (eager, compiled)}
    eager()  # both have now run two steps
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for rnd in range(steps):
        for runner in (eager, compiled) if rnd % 2 else (compiled, eager):
            times[runner.name].append(sum(runner()))
    ratios = [e / c for e, c in zip(times["eager"], times["compiled"])]
    q1, median, q3 = _quartiles(ratios)
    return {"model": name, "batch": batch, "precision": precision, "device": str(device), "steps": steps,
            "eager_ms": 1000 * statistics.median(times["eager"]),
            "compiled_ms": 1000 * statistics.median(times["compiled"]),
            "compile_s": first["compiled"] - first["eager"], "speedup": median, "speedup_iqr": (q1, q3)}


def report_compile(results: list[dict]) -> str:
    lines = ["| model | batch | precision | eager ms/step | compiled ms/step | speed-up [IQR] | compile time |",
             "|" + "---|" * 7]
    for r in results:
        lines.append(f"| {r['model']} | {r['batch']} | {r['precision']} | {r['eager_ms']:.0f} | "
                     f"{r['compiled_ms']:.0f} | **{r['speedup']:.2f}x** [{r['speedup_iqr'][0]:.2f}-"
                     f"{r['speedup_iqr'][1]:.2f}] | {r['compile_s']:.0f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant (after warm-up)")
    parser.add_argument("--precision", nargs="+", choices=["32", "bf16"], default=["32"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (1 is steadier on a busy machine)")
    parser.add_argument("--reference", default=None,
                        help="facebookresearch/mae's models_mae.py: time our step against it instead")
    parser.add_argument("--compile", action="store_true",
                        help="time eager vs torch.compile'd steps of --models instead")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="with --reference: also profile this many steps of each model")
    parser.add_argument("--out", default=None,
                        help="JSON results (default runs/bench/mae_masking.json or mae_vs_reference.json)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    device = torch.device(args.device)
    if args.reference:
        reference = load_reference(args.reference)
        results = []
        for precision in args.precision:
            results.append(bench_reference(reference, args.steps, device, precision, profile_steps=args.profile))
            print(f"{precision}: speed-up {results[-1]['speedup']:.2f}x", flush=True)
        print(f"MAE ViT-B/16 pretraining step, ours vs {args.reference} ({device}, torch threads "
              f"{torch.get_num_threads()}, batch {BATCH}, {args.steps} paired rounds after warm-up)")
        print(report_reference(results))
        for r in results:
            for text in r.get("profile", {}).values():
                print(text)
        default_out = "runs/bench/mae_vs_reference.json"
    elif args.compile:
        results = [bench_compile(m, args.steps, device, p) for p in args.precision for m in args.models]
        print(f"torch.compile speed-up ({device}, torch threads {torch.get_num_threads()}, "
              f"{args.steps} paired rounds after the compiling step)")
        print(report_compile(results))
        default_out = "runs/bench/mae_compile.json"
    else:
        results = [bench_model(m, args.steps, device, p) for p in args.precision for m in args.models]
        print(f"Self-guided masking cost ({device}, torch threads {torch.get_num_threads()}, "
              f"precision {' '.join(args.precision)})")
        print(report(results))
        print("peak MiB: CUDA peak allocated for the informed-ncut step, or the process's peak RSS on CPU")
        default_out = "runs/bench/mae_masking.json"
    out = Path(args.out or default_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written: {out}")
    return results


if __name__ == "__main__":
    main()
