"""Speed and memory of Neural Experts on CPU/GPU, measured in one process (``make bench-inr``).

Parts (``--parts``, all by default):

* ``step``: the Neural Experts training step (K = ``--step-experts``, ``--size``² points, full batch,
  forward + q-weighted loss + backward + Adam) of today's implementation against the one before the
  speed work (:func:`legacy_forward`, a faithful copy of it kept here as the baseline), two copies of
  one network stepping in alternation; the old/new ratio is the median over rounds. Also the achieved
  GFLOP/s (matrix-product FLOPs of forward + backward, counted analytically and checked with
  ``FlopCounterMode``) against the fp32 matmul peak measured in the same process.
* ``train``: iteration time and training memory of SIREN, SIREN wider and Neural Experts vs K.
* ``render``: sparse (selected expert only) vs dense (all experts) rendering, K = ``--render-experts``
  on ``--render-size``², interleaved; the selections must be identical.

``--compile K ...``: eager vs ``torch.compile`` steps only (graph breaks from ``torch._dynamo.explain``).

    python -m benchmarks.inr_speed --parts step --steps 7               # old vs new step, GFLOP/s
    python -m benchmarks.inr_speed --parts render --render-repeats 3    # sparse vs dense rendering
    python -m benchmarks.inr_speed --size 128 --experts 2 4 8 16 --render-size 512 --render-experts 8
    python -m benchmarks.inr_speed --compile 4 --size 128 --steps 10    # eager vs torch.compile only

Timings are ratios measured in one process (noisy on a shared machine: read the ratios, not the
seconds). Training memory is measured exactly as the bytes autograd keeps for the backward pass
(saved activations) plus parameters, gradients and Adam state.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_inr.baselines import INR
from lightning_inr.experts import NeuralExperts, condition  # unchanged by the speed work
from lightning_inr.field import FieldOutput
from lightning_inr.inference import render
from lightning_inr.losses import q_weighted_mse
from lightning_inr.mlp import MLP


def grid(size: int) -> torch.Tensor:
    lin = torch.linspace(-1, 1, size)
    return torch.stack(torch.meshgrid(lin, lin, indexing="ij"), -1).reshape(-1, 2)


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def load() -> str:
    """The machine's load averages (1, 5, 15 min) and CPU count, for the record."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f} {five:.1f} {fifteen:.1f} on {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"


# --------------------------------------------------------------------------- the baseline: the forward
# pass as it was before the speed work (einsum for the experts' first layer, bias added after the
# product, ω₀·z and sin as separate temporaries). Same parameters, same module tree.


def legacy_mlp(mlp: MLP, x: torch.Tensor) -> torch.Tensor:
    for i, (w, b) in enumerate(zip(mlp.weights, mlp.biases)):
        if mlp.n_copies is None:
            z = x @ w + b
        elif x.dim() == 2:  # the same input for every copy
            z = torch.einsum("nd,kdh->knh", x, w) + b.unsqueeze(1)
        else:
            z = torch.baddbmm(b.unsqueeze(1), x, w)
        if i < mlp.n_activated:
            z = mlp.first_act(z) if i == 0 else mlp.act(z)  # the activation modules' forward (unchanged)
        x = z
    return x


def legacy_forward_copy(mlp: MLP, x: torch.Tensor, k: int) -> torch.Tensor:
    for i, (w, b) in enumerate(zip(mlp.weights, mlp.biases)):
        z = torch.addmm(b[k], x, w[k])
        x = z if i >= mlp.n_activated else (mlp.first_act(z) if i == 0 else mlp.act(z))
    return x


def legacy_encoder(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if encoder.fourier is not None:
        x = encoder.fourier(x)
    return legacy_mlp(encoder.mlp, x)


def legacy_route(net: NeuralExperts, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    expert_feats = legacy_encoder(net.expert_encoder, coords)
    manager_in = condition(legacy_encoder(net.manager_encoder, coords), expert_feats, net.conditioning)
    return expert_feats, legacy_mlp(net.manager, manager_in)


def legacy_forward(net: NeuralExperts, coords: torch.Tensor) -> FieldOutput:
    """``NeuralExperts.forward`` before the speed work."""
    expert_feats, logits = legacy_route(net, coords)
    expert_preds = legacy_mlp(net.experts, expert_feats)
    selected = logits.argmax(dim=-1)
    index = selected.view(1, -1, 1).expand(1, -1, expert_preds.shape[-1])
    pred = expert_preds.gather(0, index).squeeze(0)
    return FieldOutput(pred, expert_preds, logits, logits.softmax(dim=-1), selected)


@torch.no_grad()
def legacy_sparse_render(net: NeuralExperts, coords: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Sparse rendering before the speed work (per chunk: route, sort by expert, gather, scatter; cat)."""
    parts = []
    for chunk in coords.split(chunk_size):
        expert_feats, logits = legacy_route(net, chunk)
        selected = logits.argmax(dim=-1)
        pred = expert_feats.new_empty(chunk.shape[0], net.out_dim)
        order = torch.argsort(selected)
        start = 0
        for k, count in enumerate(torch.bincount(selected, minlength=net.n_experts).tolist()):
            if count:
                idx = order[start : start + count]
                pred[idx] = legacy_forward_copy(net.experts, expert_feats[idx], k)
                start += count
        logits.softmax(dim=-1)
        parts.append(pred)
    return torch.cat(parts)


# --------------------------------------------------------------------------- FLOPs and the matmul peak


def _mlp_layers(mlp: MLP) -> list[tuple[int, int, int]]:
    """``(copies, in, out)`` of every layer."""
    return [(mlp.n_copies or 1, w.shape[-2], w.shape[-1]) for w in mlp.weights]


def step_matmul_flops(net: nn.Module, n_points: int) -> int:
    """Matrix-product FLOPs of one training step (forward + backward) on ``n_points``, counted analytically:
    a layer costs 2·N·in·out forward, as much again for its weight gradient, and as much again for its
    input gradient unless that input needs none (the encoders' first layers read the coordinates)."""
    if isinstance(net, NeuralExperts):
        parts = [(net.expert_encoder.mlp, False), (net.manager_encoder.mlp, False), (net.manager, True),
                 (net.experts, True)]
    else:
        parts = [(net.encoder.mlp, False), (net.head, True)]
    total = 0
    for mlp, input_needs_grad in parts:
        for i, (copies, fan_in, fan_out) in enumerate(_mlp_layers(mlp)):
            passes = 2 if i == 0 and not input_needs_grad else 3
            total += passes * 2 * n_points * copies * fan_in * fan_out
    return total


def counted_flops(forward: Callable[[], FieldOutput], target: torch.Tensor) -> int:
    """The same, counted by ``FlopCounterMode`` on one forward + backward (a check of the formula)."""
    with FlopCounterMode(display=False) as counter:
        out = forward()
        q_weighted_mse(out.expert_preds, target, out.q).backward()
    return counter.get_total_flops()


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Achieved GFLOP/s of a large fp32 matrix product (``size``³), median of ``repeats``, in this process."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


# --------------------------------------------------------------------------- training steps


def make_step(network: torch.nn.Module, coords: torch.Tensor, forward: Callable | None = None,
              target: torch.Tensor | None = None):
    """A closure running one full-batch training step (forward, q-weighted loss, backward, Adam);
    ``forward(network, coords)`` replaces ``network(coords)`` when given."""
    if target is None:
        target = torch.rand(coords.shape[0], network.out_dim) * 2 - 1
    opt = torch.optim.Adam(network.parameters(), lr=1e-5)

    def step() -> torch.Tensor:
        out = network(coords) if forward is None else forward(network, coords)
        loss = 1000 * q_weighted_mse(out.expert_preds, target, out.q)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step, target


def step_speedup(k: int, size: int, steps: int, warmup: int = 1) -> dict:
    """Old (:func:`legacy_forward`) vs new training step of two identical Neural Experts, alternating
    which goes first each round; ratios per round (old / new), medians reported."""
    torch.manual_seed(0)
    coords = grid(size)
    old_net = NeuralExperts(n_experts=k)
    new_net = NeuralExperts(n_experts=k)
    new_net.load_state_dict(old_net.state_dict())
    old, target = make_step(old_net, coords, legacy_forward)
    new, _ = make_step(new_net, coords, None, target)
    flops = step_matmul_flops(new_net, coords.shape[0])
    counted = {"old": counted_flops(lambda: legacy_forward(old_net, coords), target),
               "new": counted_flops(lambda: new_net(coords), target)}
    old_net.zero_grad(set_to_none=True)
    new_net.zero_grad(set_to_none=True)
    losses = {"old": [], "new": []}
    wall: dict[str, list[float]] = {"old": [], "new": []}
    cpu: dict[str, list[float]] = {"old": [], "new": []}
    faults: dict[str, list[int]] = {"old": [], "new": []}
    for rnd in range(warmup + steps):
        for name, step in (("old", old), ("new", new))[:: 1 if rnd % 2 else -1]:
            flt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0, c0 = time.perf_counter(), time.process_time()
            losses[name].append(step())
            t1, c1 = time.perf_counter(), time.process_time()
            if rnd >= warmup:
                wall[name].append(t1 - t0)
                cpu[name].append(c1 - c0)
                faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - flt)
    ratios = [o / n for o, n in zip(wall["old"], wall["new"])]
    cpu_ratios = [o / n for o, n in zip(cpu["old"], cpu["new"])]
    q1, med, q3 = _quartiles(ratios)
    c1, cmed, c3 = _quartiles(cpu_ratios)
    same = [bool(torch.equal(a, b)) for a, b in zip(losses["old"], losses["new"])]
    result = {
        "experts": k, "points": coords.shape[0], "steps": steps,
        "old_s": statistics.median(wall["old"]), "new_s": statistics.median(wall["new"]),
        "speedup": med, "speedup_iqr": (q1, q3), "speedup_min_max": (min(ratios), max(ratios)),
        "cpu_speedup": cmed, "cpu_speedup_iqr": (c1, c3),
        "minor_faults_per_step": {n: statistics.median(v) for n, v in faults.items()},
        "gflop_per_step": flops / 1e9, "gflop_counted": {n: c / 1e9 for n, c in counted.items()},
        "gflops": {n: flops / statistics.median(wall[n]) / 1e9 for n in wall},
        "first_loss_bit_equal": same[0], "losses_bit_equal": same,
        "max_loss_rel_diff": max(abs(a - b).item() / abs(a).item() for a, b in zip(losses["old"], losses["new"])),
    }
    return result


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


def train_table(size: int, experts: list[int], steps: int) -> dict:
    coords = grid(size)
    torch.manual_seed(0)
    results: dict = {}
    models = {"siren": INR(), "siren_wider": INR(width=512)}
    models.update({f"neural_experts_k{k}": NeuralExperts(n_experts=k) for k in experts})
    runners = {name: make_step(net, coords) for name, net in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for step, _ in runners.values():
        step()  # warm-up (allocations, Adam state)
    # Round-robin: every model steps once per round, so a burst of load from other processes
    # hits all of them alike; the median over rounds is reported.
    for _ in range(steps):
        for name, (step, _) in runners.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    for name, network in models.items():
        cost = {
            "seconds_per_step": statistics.median(times[name]),
            "memory_mib": training_memory_mib(network, coords, runners[name][1]),
            "parameters": sum(p.numel() for p in network.parameters()),
        }
        cost["gflops"] = step_matmul_flops(network, coords.shape[0]) / cost["seconds_per_step"] / 1e9
        results[name] = cost
        print(f"{name:22s} {cost['parameters']:>9,d} params  {cost['seconds_per_step']:.3f} s/step  "
              f"{cost['gflops']:5.1f} GFLOP/s  {cost['memory_mib']:.0f} MiB", flush=True)
    base = results["siren"]["seconds_per_step"]
    for cost in results.values():
        cost["time_vs_siren"] = cost["seconds_per_step"] / base
    return results


# --------------------------------------------------------------------------- rendering


def render_speedup(k: int, size: int, repeats: int, chunk: int, legacy: bool = True) -> dict:
    """Dense (every expert) vs sparse (the selected expert only) rendering of one network, interleaved
    (``repeats`` rounds, alternating the order); the old sparse path once per round when ``legacy``."""
    torch.manual_seed(0)
    network = NeuralExperts(n_experts=k).eval()
    coords = grid(size)
    variants: dict[str, Callable[[], torch.Tensor]] = {
        "dense": lambda: render(network, coords, chunk, sparse=False),
        "sparse": lambda: render(network, coords, chunk, sparse=True),
    }
    if legacy:
        variants["legacy_sparse"] = lambda: legacy_sparse_render(network, coords, chunk)
    render(network, coords[:chunk], chunk, True)  # warm-up
    render(network, coords[:chunk], chunk, False)
    times: dict[str, list[float]] = {name: [] for name in variants}
    faults: dict[str, list[int]] = {name: [] for name in variants}
    outs = {}
    for rnd in range(repeats):
        for name, run in list(variants.items())[:: 1 if rnd % 2 else -1]:
            flt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            outs[name] = run()
            times[name].append(time.perf_counter() - start)
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - flt)
    dense, sparse = outs["dense"], outs["sparse"]
    ratios = [d / s for d, s in zip(times["dense"], times["sparse"])]
    result = {
        "experts": k, "points": coords.shape[0], "chunk": chunk, "repeats": repeats,
        **{f"{name}_s": statistics.median(t) for name, t in times.items()},
        "speedup": statistics.median(ratios), "speedup_min_max": (min(ratios), max(ratios)),
        "minor_faults": {name: statistics.median(f) for name, f in faults.items()},
        "selected_equal": bool(torch.equal(dense.selected, sparse.selected)),
        "pred_max_abs_diff": (dense.pred - sparse.pred).abs().max().item(),
        "pred_bit_equal": bool(torch.equal(dense.pred, sparse.pred)),
        "outputs_match": bool(torch.equal(dense.selected, sparse.selected)
                              and torch.allclose(dense.pred, sparse.pred, rtol=1e-5, atol=1e-6)),
    }
    if legacy:
        result["legacy_sparse_vs_sparse"] = statistics.median(
            o / s for o, s in zip(times["legacy_sparse"], times["sparse"]))
        result["legacy_pred_bit_equal"] = bool(torch.equal(outs["legacy_sparse"], sparse.pred))
    return result


# --------------------------------------------------------------------------- torch.compile


def graph_breaks(network: nn.Module, coords: torch.Tensor) -> dict:
    """``torch._dynamo.explain`` of the network's forward (the training-mode graph)."""
    import torch._dynamo

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(network)(coords)
    torch._dynamo.reset()
    return {"graphs": explanation.graph_count, "graph_breaks": explanation.graph_break_count,
            "reasons": sorted({str(b.reason) for b in explanation.break_reasons})}


def compile_speedup(build, coords: torch.Tensor, steps: int) -> dict[str, float]:
    """Eager vs ``torch.compile``d training steps (what ``SignalFit(compile=True)`` does) of two
    copies of one network, alternating; the compiled copy's first step, less an eager one, is the
    compilation time."""
    torch.manual_seed(0)
    eager_net, compiled_net = build(), build()
    compiled_net.load_state_dict(eager_net.state_dict())
    breaks = graph_breaks(compiled_net, coords)
    compiled_net.compile()
    eager, target = make_step(eager_net, coords)
    compiled, _ = make_step(compiled_net, coords, None, target)
    first = {}
    for name, step in (("eager", eager), ("compiled", compiled)):
        start = time.perf_counter()
        first[name] = (step(), time.perf_counter() - start)
    eager()
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for rnd in range(steps):
        for name, step in (("eager", eager), ("compiled", compiled))[:: 1 if rnd % 2 else -1]:
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    ratios = sorted(e / c for e, c in zip(times["eager"], times["compiled"]))
    (eager_loss, eager_t), (compiled_loss, compiled_t) = first["eager"], first["compiled"]
    return {"eager_s": statistics.median(times["eager"]), "compiled_s": statistics.median(times["compiled"]),
            "speedup": statistics.median(ratios), "speedup_min": ratios[0], "speedup_max": ratios[-1],
            "compile_s": max(0.0, compiled_t - eager_t),
            "first_loss_rel_diff": abs(eager_loss - compiled_loss).item() / abs(eager_loss).item(), **breaks}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=["step", "train", "render"], default=["step", "train", "render"])
    parser.add_argument("--size", type=int, default=128, help="training image side (full batch)")
    parser.add_argument("--step-experts", type=int, default=4, help="K of the old-vs-new step comparison")
    parser.add_argument("--experts", type=int, nargs="*", default=[2, 4, 8, 16], help="K of the train table")
    parser.add_argument("--steps", type=int, default=5, help="timed rounds (one training step per model each)")
    parser.add_argument("--render-size", type=int, default=512)
    parser.add_argument("--render-experts", type=int, default=8)
    parser.add_argument("--render-repeats", type=int, default=3)
    parser.add_argument("--no-render-legacy", action="store_true", help="skip the old sparse path in render")
    parser.add_argument("--chunk", type=int, default=65536)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--compile", type=int, nargs="*", default=None, metavar="K",
                        help="only time eager vs torch.compile'd steps: SIREN and Neural Experts with these K")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{load()} (at start)", flush=True)
    results: dict = {"points": args.size**2, "load_start": load()}
    if args.compile is not None:
        coords = grid(args.size)
        builds = {"siren": INR, **{f"neural_experts_k{k}": partial(NeuralExperts, n_experts=k) for k in args.compile}}
        results["compile"] = {}
        for name, build in builds.items():
            r = results["compile"][name] = compile_speedup(build, coords, args.steps)
            print(f"{name:22s} eager {r['eager_s']:.3f} s/step  compiled {r['compiled_s']:.3f} s/step  "
                  f"eager/compiled {r['speedup']:.2f}x [{r['speedup_min']:.2f}-{r['speedup_max']:.2f}]  "
                  f"compile {r['compile_s']:.0f} s  graphs {r['graphs']}, breaks {r['graph_breaks']}  "
                  f"first-loss rel. diff {r['first_loss_rel_diff']:.1e}", flush=True)
    else:
        if "step" in args.parts:
            peak = results["matmul_peak_gflops"] = matmul_peak_gflops()
            r = results["step"] = step_speedup(args.step_experts, args.size, args.steps)
            print(f"Neural Experts K={r['experts']} training step, {r['points']} points, old vs new, "
                  f"{r['steps']} interleaved rounds:\n"
                  f"  old {r['old_s']:.3f} s/step, new {r['new_s']:.3f} s/step: old/new {r['speedup']:.2f}x "
                  f"[IQR {r['speedup_iqr'][0]:.2f}-{r['speedup_iqr'][1]:.2f}, "
                  f"min-max {r['speedup_min_max'][0]:.2f}-{r['speedup_min_max'][1]:.2f}]; "
                  f"CPU-time ratio {r['cpu_speedup']:.2f}x\n"
                  f"  matmul FLOPs/step {r['gflop_per_step']:.2f} G (FlopCounterMode: old "
                  f"{r['gflop_counted']['old']:.2f}, new {r['gflop_counted']['new']:.2f}); achieved "
                  f"old {r['gflops']['old']:.1f}, new {r['gflops']['new']:.1f} GFLOP/s; fp32 matmul peak "
                  f"(2048³) {peak:.1f} GFLOP/s (new at {100 * r['gflops']['new'] / peak:.0f} %)\n"
                  f"  minor page faults/step old {r['minor_faults_per_step']['old']:.0f}, new "
                  f"{r['minor_faults_per_step']['new']:.0f}; first loss bit-equal {r['first_loss_bit_equal']}, "
                  f"max loss rel. diff over steps {r['max_loss_rel_diff']:.1e}", flush=True)
        if "train" in args.parts:
            results["train"] = train_table(args.size, args.experts, args.steps)
        if "render" in args.parts:
            r = results["render"] = render_speedup(args.render_experts, args.render_size, args.render_repeats,
                                                   args.chunk, legacy=not args.no_render_legacy)
            legacy = (f", old sparse {r['legacy_sparse_s']:.2f} s ({r['legacy_sparse_vs_sparse']:.2f}x the new)"
                      if "legacy_sparse_s" in r else "")
            print(f"render {args.render_size}² K={args.render_experts} chunk {args.chunk}: dense {r['dense_s']:.2f} s, "
                  f"sparse {r['sparse_s']:.2f} s: dense/sparse {r['speedup']:.2f}x "
                  f"[{r['speedup_min_max'][0]:.2f}-{r['speedup_min_max'][1]:.2f}]{legacy}; selections identical: "
                  f"{r['selected_equal']}, pred max |diff| {r['pred_max_abs_diff']:.1e}; "
                  f"minor faults dense {r['minor_faults']['dense']:.0f}, sparse {r['minor_faults']['sparse']:.0f}",
                  flush=True)
    results["load_end"] = load()
    print(f"{load()} (at end)", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
