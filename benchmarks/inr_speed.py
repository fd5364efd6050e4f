"""Speed and memory of Neural Experts on CPU/GPU: iteration time vs K, sparse vs dense rendering.

    python -m benchmarks.inr_speed --size 128 --experts 2 4 8 16 --render-size 512 --render-experts 8
    python -m benchmarks.inr_speed --compile 4 --size 128 --steps 10   # eager vs torch.compile only

Timings are ratios measured in one process (noisy on a shared machine: read the ratios, not the
seconds). Training memory is measured exactly as the bytes autograd keeps for the backward pass
(saved activations) plus parameters, gradients and Adam state.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial

import torch

from lightning_inr.baselines import INR
from lightning_inr.experts import NeuralExperts
from lightning_inr.inference import render
from lightning_inr.losses import q_weighted_mse


def grid(size: int) -> torch.Tensor:
    lin = torch.linspace(-1, 1, size)
    return torch.stack(torch.meshgrid(lin, lin, indexing="ij"), -1).reshape(-1, 2)


def make_step(network: torch.nn.Module, coords: torch.Tensor):
    """A closure running one full-batch training step (forward, backward, Adam)."""
    target = torch.rand(coords.shape[0], network.out_dim) * 2 - 1
    opt = torch.optim.Adam(network.parameters(), lr=1e-5)

    def step() -> torch.Tensor:
        out = network(coords)
        loss = 1000 * q_weighted_mse(out.expert_preds, target, out.q)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step, target


def training_memory_mib(network: torch.nn.Module, coords: torch.Tensor, target: torch.Tensor) -> float:
    """Bytes autograd saves for backward + parameters, gradients and Adam's two moments, in MiB."""
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = network(coords)
        q_weighted_mse(out.expert_preds, target, out.q)
    params = sum(p.numel() * p.element_size() for p in network.parameters())
    return (sum(saved.values()) + 4 * params) / 2**20


def render_speedup(k: int, size: int, repeats: int, chunk: int) -> dict[str, float]:
    torch.manual_seed(0)
    network = NeuralExperts(n_experts=k).eval()
    coords = grid(size)
    timings = {}
    for name, sparse in (("dense", False), ("sparse", True)):
        render(network, coords[:chunk], chunk, sparse)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            out = render(network, coords, chunk, sparse)
        timings[name] = (time.perf_counter() - start) / repeats
        timings[f"{name}_pred"] = out.pred
    same = torch.allclose(timings.pop("dense_pred"), timings.pop("sparse_pred"), rtol=1e-5, atol=1e-6)
    return {"dense_s": timings["dense"], "sparse_s": timings["sparse"],
            "speedup": timings["dense"] / timings["sparse"], "outputs_match": bool(same)}


def compile_speedup(build, coords: torch.Tensor, steps: int) -> dict[str, float]:
    """Eager vs ``torch.compile``d training steps (what ``SignalFit(compile=True)`` does) of two
    copies of one network, alternating; the compiled copy's first step, less an eager one, is the
    compilation time."""
    torch.manual_seed(0)
    eager_net, compiled_net = build(), build()
    compiled_net.load_state_dict(eager_net.state_dict())
    compiled_net.compile()
    eager, _ = make_step(eager_net, coords)
    compiled, _ = make_step(compiled_net, coords)
    first = {}
    for name, step in (("eager", eager), ("compiled", compiled)):
        start = time.perf_counter()
        step()
        first[name] = time.perf_counter() - start
    eager()
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for rnd in range(steps):
        for name, step in (("eager", eager), ("compiled", compiled))[:: 1 if rnd % 2 else -1]:
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    ratios = sorted(e / c for e, c in zip(times["eager"], times["compiled"]))
    return {"eager_s": statistics.median(times["eager"]), "compiled_s": statistics.median(times["compiled"]),
            "speedup": statistics.median(ratios), "speedup_min": ratios[0], "speedup_max": ratios[-1],
            "compile_s": max(0.0, first["compiled"] - first["eager"])}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="training image side (full batch)")
    parser.add_argument("--experts", type=int, nargs="*", default=[2, 4, 8, 16])
    parser.add_argument("--steps", type=int, default=5, help="timed rounds (one training step per model each)")
    parser.add_argument("--render-size", type=int, default=512)
    parser.add_argument("--render-experts", type=int, default=8)
    parser.add_argument("--render-repeats", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=65536)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--compile", type=int, nargs="*", default=None, metavar="K",
                        help="only time eager vs torch.compile'd steps: SIREN and Neural Experts with these K")
    args = parser.parse_args(argv)
    if args.compile is not None:
        coords = grid(args.size)
        builds = {"siren": INR, **{f"neural_experts_k{k}": partial(NeuralExperts, n_experts=k) for k in args.compile}}
        results = {"points": coords.shape[0], "compile": {}}
        for name, build in builds.items():
            r = results["compile"][name] = compile_speedup(build, coords, args.steps)
            print(f"{name:22s} eager {r['eager_s']:.3f} s/step  compiled {r['compiled_s']:.3f} s/step  "
                  f"speed-up {r['speedup']:.2f}x [{r['speedup_min']:.2f}-{r['speedup_max']:.2f}]  "
                  f"compile {r['compile_s']:.0f} s", flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=2)
        return results

    coords = grid(args.size)
    torch.manual_seed(0)
    results: dict = {"points": coords.shape[0], "train": {}}
    models = {"siren": INR(), "siren_wider": INR(width=512)}
    models.update({f"neural_experts_k{k}": NeuralExperts(n_experts=k) for k in args.experts})
    steps = {name: make_step(net, coords) for name, net in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for step, _ in steps.values():
        step()  # warm-up (allocations, Adam state)
    # Round-robin: every model steps once per round, so a burst of load from other processes
    # hits all of them alike; the median over rounds is reported.
    for _ in range(args.steps):
        for name, (step, _) in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    for name, network in models.items():
        cost = {
            "seconds_per_step": statistics.median(times[name]),
            "memory_mib": training_memory_mib(network, coords, steps[name][1]),
            "parameters": sum(p.numel() for p in network.parameters()),
        }
        results["train"][name] = cost
        print(f"{name:22s} {cost['parameters']:>9,d} params  {cost['seconds_per_step']:.3f} s/step  "
              f"{cost['memory_mib']:.0f} MiB", flush=True)
    base = results["train"]["siren"]["seconds_per_step"]
    for cost in results["train"].values():
        cost["time_vs_siren"] = cost["seconds_per_step"] / base
    results["render"] = render_speedup(args.render_experts, args.render_size, args.render_repeats, args.chunk)
    r = results["render"]
    print(f"render {args.render_size}² K={args.render_experts}: dense {r['dense_s']:.2f} s, "
          f"sparse {r['sparse_s']:.2f} s, "
          f"speed-up {r['speedup']:.2f}×, outputs match: {r['outputs_match']}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
