"""Manager pretraining: a phase of its own, before the reconstruction schedule.

As in the official code, the manager (with the manager encoder and the expert encoder it is
conditioned on) first learns a fixed label map with its own Adam and its own exponential lr decay;
the result is saved once and every later fit loads it, so the reconstruction steps, their lr
schedule and their stages never lose steps to it. :func:`pretrain_manager` is that phase as a plain
function (no Trainer); :class:`~lightning_inr.SignalFit` runs it before the first training step
when its ``manager_checkpoint`` does not exist yet, and saves the result there.

The default image setting (128×128 pixel grid, K = 4, random labels, image-independent) ships with
the package as ``managers/image_128_k4_random.pt`` (``lightning_inr/managers/``), made by::

    python -m lightning_inr.manager_pretraining --resolution 128 --experts 4 \\
        --out lightning_inr/managers/image_128_k4_random.pt          # = make manager

A ``manager_checkpoint`` value ``managers/<file>`` names that folder whenever no such file exists
relative to the working directory, so the configs find it from any directory and installed.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lightning_inr.field import CoordinateNetwork
from lightning_inr.losses import manager_pretraining_loss

log = logging.getLogger(__name__)

MANAGERS = Path(__file__).resolve().parent / "managers"
"""Pretrained managers shipped in the package (``managers/<file>`` in a ``manager_checkpoint``)."""

DEFAULT_IMAGE_MANAGER = "managers/image_128_k4_random.pt"
"""The shipped manager of the default image setting, as the configs name it."""

# The official recipe: 3,000 iterations of Adam (0.9, 0.999) with ExponentialLR 0.9999 per step, at the
# run's learning rate (1e-5 for images and audio); loss 1000·(CE, smoothing 0.01, + 0.1·BCE to 1/K).
DEFAULT_STEPS = 3000


def manager_parameters(network: CoordinateNetwork) -> list[nn.Parameter]:
    """The parameters the phase trains: those of ``network.manager_modules()`` (each once)."""
    seen: dict[int, nn.Parameter] = {}
    for module in network.manager_modules().values():
        for p in module.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


def pretrain_manager(
    network: CoordinateNetwork,
    coords: torch.Tensor,
    labels: torch.Tensor,
    steps: int = DEFAULT_STEPS,
    lr: float = 1e-5,
    betas: tuple[float, float] = (0.9, 0.999),
    lr_gamma: float = 0.9999,
    weight: float = 1000.0,
    label_smoothing: float = 0.01,
    uniform_weight: float = 0.1,
    log_every: int = 100,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
) -> dict:
    """Train ``network``'s manager to reproduce ``labels`` at ``coords``, in place; return what it reached.

    Full batch every step: ``weight``·(cross-entropy with ``label_smoothing`` + ``uniform_weight``·BCE of
    the logits towards 1/K) (:func:`~lightning_inr.losses.manager_pretraining_loss`), Adam (``lr``,
    ``betas``) over the parameters of ``network.manager_modules()`` (the experts get no gradient from
    this loss), the lr multiplied by ``lr_gamma`` after every step. A fresh optimizer: nothing of it
    carries into the reconstruction. Which parameters require gradients is restored at the end.

    Args:
        network: a :class:`~lightning_inr.field.CoordinateNetwork` with a manager.
        coords: ``(N, in_dim)`` points; moved to the network's device.
        labels: ``(N,)`` expert index of each point (``lightning_inr.label_maps``).
        steps: optimizer steps (official 3,000). 0 trains nothing and only measures.
        log_every: call ``on_log(step, {"loss", "accuracy", "lr"})`` every this many steps and at the last.

    Returns:
        ``{"steps", "loss", "accuracy", "seconds", "history"}``: the loss and label accuracy of the trained
        manager (one more forward after the last step), and the logged ``(step, loss, accuracy)`` records.
    """
    if not network.manager_modules():
        raise ValueError(f"pretrain_manager: {type(network).__name__} has no manager to pretrain")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if coords.shape[0] != labels.shape[0]:
        raise ValueError(f"coords ({coords.shape[0]} points) and labels ({labels.shape[0]}) differ in length")
    device = next(network.parameters()).device
    coords, labels = coords.to(device), labels.to(device=device, dtype=torch.long)
    params = manager_parameters(network)
    flags = {id(p): p.requires_grad for p in network.parameters()}
    for p in params:
        p.requires_grad_(True)

    def objective(logits: torch.Tensor) -> torch.Tensor:
        return weight * manager_pretraining_loss(logits, labels, label_smoothing, uniform_weight)

    optimizer = torch.optim.Adam(params, lr=lr, betas=betas)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=lr_gamma)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    try:
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            logits = network.manager_logits(coords)
            loss = objective(logits)
            loss.backward()
            current_lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            if (step + 1) % max(1, log_every) == 0 or step + 1 == steps:
                record = {
                    "step": float(step + 1), "loss": float(loss.detach()), "lr": current_lr,
                    "accuracy": float((logits.detach().argmax(-1) == labels).float().mean()),
                }
                history.append(record)
                if on_log is not None:
                    on_log(step + 1, {k: v for k, v in record.items() if k != "step"})
        with torch.no_grad():
            logits = network.manager_logits(coords)
            final_loss = float(objective(logits))
            accuracy = float((logits.argmax(-1) == labels).float().mean())
    finally:
        for p in network.parameters():
            p.requires_grad_(flags[id(p)])
    return {"steps": steps, "loss": final_loss, "accuracy": accuracy,
            "seconds": time.perf_counter() - start, "history": history}


# ------------------------------------------------------------------ the manager file


def _activations(module: nn.Module) -> list[str]:
    """The parameter-free leaf modules of ``module`` (its activations), as ``Name(extra_repr)``."""
    return [f"{type(m).__name__}({m.extra_repr()})" for m in module.modules()
            if not list(m.children()) and not list(m.parameters(recurse=False))]


def architecture(network: CoordinateNetwork) -> dict:
    """What a manager file must agree on beyond tensor shapes: activations (type, ω₀/β) and conditioning."""
    return {
        "conditioning": getattr(network, "conditioning", None),
        "activations": {name: _activations(m) for name, m in network.manager_modules().items()},
    }


def save_manager(network: CoordinateNetwork, path: str | Path, meta: dict | None = None) -> Path:
    """Write ``network``'s manager modules (their state dicts, by name) and ``meta`` to ``path`` (atomically)."""
    from lightning_run import atomic_torch_save

    state: dict = {name: {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                   for name, module in network.manager_modules().items()}
    state["meta"] = {"n_experts": network.n_experts, "in_dim": network.in_dim, **architecture(network), **(meta or {})}
    atomic_torch_save(state, path)
    return Path(path)


def load_manager(network: CoordinateNetwork, path: str | Path, label_map: str | None = None,
                 n_points: int | None = None) -> dict:
    """Load a manager file into ``network``'s manager modules; return its ``meta``.

    Clear errors for a file that is not a manager file, or was made for another label map (when
    ``label_map`` is given), other activations or conditioning, or other shapes. A file pretrained on
    another number of points than ``n_points`` only logs a warning (the partition is a function of the
    coordinates, learnt on other ones).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign file
        raise ValueError(f"manager_checkpoint {path}: cannot be read as a pretrained manager ({err})") from err
    modules = network.manager_modules()
    if not isinstance(state, dict) or any(name not in state for name in modules):
        missing = [name for name in modules if not isinstance(state, dict) or name not in state]
        raise ValueError(f"manager_checkpoint {path}: not a pretrained manager (missing {missing})")
    meta = state.get("meta", {})
    if label_map is not None and meta.get("label_map") not in (None, label_map):
        raise ValueError(
            f"manager_checkpoint {path}: pretrained on label_map={meta['label_map']!r}, this run asks for {label_map!r}"
        )
    mine = architecture(network)
    for key in ("conditioning", "activations"):
        if meta.get(key) is not None and mine[key] is not None and meta[key] != mine[key]:
            raise ValueError(
                f"manager_checkpoint {path}: pretrained with {key} {meta[key]}, this network has {mine[key]}; "
                "pretrain a manager for it (python -m lightning_inr.manager_pretraining, or a manager_checkpoint "
                "path that does not exist yet)"
            )
    for name, module in modules.items():
        try:
            module.load_state_dict(state[name])
        except RuntimeError as err:
            raise ValueError(f"manager_checkpoint {path}: does not fit this network's {name}: {err}") from err
    if n_points is not None and meta.get("n_points") not in (None, n_points):
        log.warning("manager_checkpoint %s was pretrained on %d points, this signal has %d", path,
                    meta["n_points"], n_points)
    return meta


def resolve_manager_checkpoint(value: str | Path | None) -> Path | None:
    """The file a ``manager_checkpoint`` option names (``None`` for none).

    ``value`` as given (relative to the working directory) when it exists; otherwise a relative
    ``managers/<file>`` names a manager shipped in the package (``lightning_inr/managers/<file>``) when
    that exists; otherwise ``value`` as given: where a fit saves the manager it pretrains.
    """
    if value is None or str(value) == "":
        return None
    path = Path(value).expanduser()
    if path.exists() or path.is_absolute():
        return path
    if path.parts and path.parts[0] == "managers":
        shipped = MANAGERS.joinpath(*path.parts[1:])
        if shipped.exists():
            return shipped
    return path


# ------------------------------------------------------------------ the command


def build_image_manager(resolution: int, n_experts: int, seed: int = 0, label_seed: int = 0,
                        label_map: str = "random"):
    """The network, pixel grid and label map of the image setting (``experiments/inr_image.yaml``'s network,
    built after ``torch.manual_seed(seed)``): what ``python -m lightning_inr.manager_pretraining`` trains."""
    from datamodules.signals.image import pixel_grid
    from lightning_inr.experts import NeuralExperts
    from lightning_inr.label_maps import make_label_map

    torch.manual_seed(seed)
    network = NeuralExperts(in_dim=2, out_dim=3, n_experts=n_experts, conditioning="cat", activation="sine")
    coords = pixel_grid(resolution, resolution)
    labels = make_label_map(label_map, coords, n_experts, seed=label_seed)
    return network, coords, labels


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_inr.manager_pretraining",
        description="Pretrain the Neural Experts manager of the image setting (inr_image.yaml's network) on a "
                    "label map of an R×R pixel grid and save it as a manager_checkpoint file.",
    )
    parser.add_argument("--resolution", type=int, default=128, help="pixels per side of the grid on [-1, 1]²")
    parser.add_argument("--experts", type=int, default=4, help="K")
    parser.add_argument("--label-map", default="random", choices=["random", "grid"],
                        help="random: an independent uniform label per pixel (the paper's best); grid: K blocks")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--lr-gamma", type=float, default=0.9999)
    parser.add_argument("--seed", type=int, default=0, help="seed of the network's initialisation")
    parser.add_argument("--label-seed", type=int, default=0, help="seed of the random label map")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (results differ in the last bits)")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--out", required=True, help="the manager file to write")
    args = parser.parse_args(argv)
    if args.resolution < 2 or args.experts < 2 or args.steps < 0:
        parser.error("--resolution and --experts must be >= 2, --steps >= 0")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    network, coords, labels = build_image_manager(args.resolution, args.experts, args.seed, args.label_seed,
                                                  args.label_map)
    network.to(args.device)

    def report(step: int, metrics: dict[str, float]) -> None:
        log.info("step %d/%d  loss %.4f  accuracy %.4f  lr %.3e", step, args.steps, metrics["loss"],
                 metrics["accuracy"], metrics["lr"])

    result = pretrain_manager(network, coords, labels, args.steps, args.lr, lr_gamma=args.lr_gamma,
                              log_every=args.log_every, on_log=report)
    command = (f"python -m lightning_inr.manager_pretraining --resolution {args.resolution} --experts {args.experts} "
               f"--label-map {args.label_map} --steps {args.steps} --lr {args.lr:g} --lr-gamma {args.lr_gamma:g} "
               f"--seed {args.seed} --label-seed {args.label_seed}")
    meta = {
        "label_map": args.label_map, "n_points": coords.shape[0], "resolution": args.resolution,
        "steps": args.steps, "lr": args.lr, "lr_gamma": args.lr_gamma, "seed": args.seed,
        "label_seed": args.label_seed, "loss": result["loss"], "accuracy": result["accuracy"], "command": command,
        # the trajectory, so that a rerun of the command's first steps can be checked against the file's run
        "history": [{"step": int(h["step"]), "loss": h["loss"], "accuracy": h["accuracy"]} for h in result["history"]],
        "log_every": args.log_every, "threads": torch.get_num_threads(), "torch": str(torch.__version__),
    }
    out = save_manager(network, args.out, meta)
    log.info("accuracy %.4f, loss %.4f after %d steps (%.0f s); wrote %s (%d bytes)", result["accuracy"],
             result["loss"], args.steps, result["seconds"], out, out.stat().st_size)
    if not math.isfinite(result["loss"]):
        raise SystemExit(f"manager pretraining diverged (loss {result['loss']})")
    return out


if __name__ == "__main__":
    main()
