"""MAE vs SG-MAE (fixed start) vs SG-MAE (``start_epoch: auto``) on Fashion-MNIST over several seeds, as one command:

    python -m benchmarks.sgmae_evidence --seeds 0 1 2 --out docs/evidence      (or: make sgmae-evidence)

For every seed S and method it

1. pretrains ``experiments/{mae_fmnist,sgmae_fmnist,sgmae_fmnist_auto}.yaml`` with ``--seed_everything S`` into
   its own run directory ``<runs>/<method>/seed<S>/sgmae-fmnist/<method>-s<S>-<tag>/`` (a run whose final
   ``last.ckpt`` exists is skipped, an unfinished one is resumed from its last checkpoint, so an interrupted
   sweep continues where it stopped);
2. evaluates the final encoder: the linear probe (``linprobe_fmnist.yaml``), a linear probe fitted to
   convergence on its frozen cls features (``lightning_mae.analysis.frozen_probe``: L-BFGS logistic regression
   on the standardised features), the k-NN accuracy of the same features (``lightning_mae.analysis.knn``:
   cosine, k = 20, DINO's ``exp(cos / 0.07)`` votes; both Fashion-MNIST train set vs test set), fine-tuning
   (``finetune_fmnist.yaml``) and a transfer linear probe on scikit-learn's 8x8 digits (``linprobe_digits.yaml``);
   the downstream runs are seeded with S too. Results are cached in the run's ``evidence.json``, keyed by the
   checkpoint and the evaluation options;
3. reads the clustering curves that ``AnalysisMonitor`` logs during pretraining (the bi-partition gap and the KL
   of the token relations to the previous epoch, per encoder block; ``CurveRecorder`` copies them and the logged
   ``mask/start_epoch`` into the run's ``curves.jsonl``);

and writes into ``--out``: ``table.md`` (mean ± std per metric and method, a paired comparison per seed of
SG-MAE − MAE and SG-MAE auto − MAE with a paired t-test, and a verdict line per comparison generated from the
numbers), ``results.csv`` (every raw number), ``comparisons.csv``, ``accuracy.png`` and ``clustering.png``.
The outputs are rewritten after every (seed, method), so a partial sweep still leaves a table.

The budget: ``--epochs`` and ``--train_subset`` of pretraining (default: the demo's 6 x 16,000 images);
``--pretrain_args`` / ``--eval_args`` pass further LightningCLI overrides to the pretraining / downstream runs,
e.g. the tiny budget of the tests::

    python -m benchmarks.sgmae_evidence --seeds 0 1 --methods mae sgmae --epochs 3 --train_subset 512 \\
        --pretrain_args "--trainer.limit_val_batches 0.025" \\
        --eval_args "--trainer.max_epochs 1 --data.init_args.train_subset 512 --trainer.limit_val_batches 0.25" \\
        --knn_train_subset 512 --knn_test_subset 256 --runs /tmp/ev/runs --out /tmp/ev/out

(``--trainer.limit_*_batches`` takes fractions only: jsonargparse reads ``2`` as the float 2.0 = 200 % of the
batches, so budgets are set with ``train_subset`` and fractions; the command refuses values >= 1.)
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np

from lightning_run.rundir import run_dir

# --- what is compared ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    config: str  # shipped experiment


METHODS = {
    "mae": Method("mae", "MAE", "mae_fmnist.yaml"),
    "sgmae": Method("sgmae", "SG-MAE", "sgmae_fmnist.yaml"),
    "sgmae_auto": Method("sgmae_auto", "SG-MAE auto", "sgmae_fmnist_auto.yaml"),
}
BASELINE = "mae"
EVALS = {  # key -> label in the table
    "linprobe": "linear probe (Fashion-MNIST)",
    "logreg": "converged linear probe (Fashion-MNIST)",
    "knn": "k-NN (Fashion-MNIST)",
    "finetune": "fine-tune (Fashion-MNIST)",
    "digits": "transfer linear probe (digits)",
}
# The demo's budget when experiments/sgmae_fmnist.yaml (the base of the three configs) cannot be read; the
# final-checkpoint check needs the epochs up front, so they are always passed explicitly.
DEFAULT_EPOCHS, DEFAULT_TRAIN_SUBSET = 6, 16000
CURVES_FILE = "curves.jsonl"
CURVE_FAMILIES = (("gap", "bi-partition gap µintra − µinter"),
                  ("kl_prev", "KL(token relations: previous ‖ this epoch)"))
ALPHA = 0.05


# --- recording the curves during pretraining ---------------------------------------------------------------
class CurveRecorder(pl.Callback):
    """Copies the ``analysis/*`` metrics (``AnalysisMonitor``), ``mask/start_epoch`` / ``mask/relation_kl`` and the
    per-epoch ``val/probe_acc`` / ``val/loss`` (has the online probe stopped moving?) that the run's first logger
    receives into ``<run_dir>/curves.jsonl``: one JSON line per logging call, with
    ``done`` = the training epochs completed when they were measured (0: the check before the first step).

    The run's W&B metrics stay where they are; this file only makes them readable without W&B. A resumed run
    appends to the file (the reader keeps the last value of a metric at an epoch).
    """

    KEYS = ("analysis/", "mask/start_epoch", "mask/relation_kl", "val/probe_acc", "val/loss")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero or not trainer.loggers:
            return
        logger = trainer.loggers[0]
        if getattr(logger, "_curve_recorder_wrapped", False):
            return
        path = run_dir(trainer) / CURVES_FILE
        original = logger.log_metrics

        def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
            picked = {k: float(v) for k, v in metrics.items() if k.startswith(self.KEYS)}
            if picked:
                done = 0 if trainer.global_step == 0 else trainer.current_epoch + 1
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a") as f:
                    f.write(json.dumps({"done": done, "step": trainer.global_step, "metrics": picked}) + "\n")
            original(metrics, step)

        logger.log_metrics = log_metrics  # type: ignore[method-assign]
        logger._curve_recorder_wrapped = True


def read_curves(directory: Path) -> dict[str, dict[int, float]]:
    """``{metric: {epochs completed: value}}`` of a run's ``curves.jsonl`` (``{}`` when there is none)."""
    curves: dict[str, dict[int, float]] = defaultdict(dict)
    path = Path(directory) / CURVES_FILE
    if not path.is_file():
        return {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a killed run
            continue
        for key, value in row["metrics"].items():
            curves[key][int(row["done"])] = float(value)
    return {k: dict(sorted(v.items())) for k, v in curves.items()}


# --- statistics: pure functions on (method, seed, metric, value) rows -----------------------------------------
@dataclass(frozen=True)
class Score:
    method: str
    seed: int
    metric: str
    value: float


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # sample std (ddof 1); nan for n < 2
    n: int


@dataclass
class Paired:
    method: str
    baseline: str
    metric: str
    seeds: list[int]
    diffs: list[float]  # method − baseline, per seed
    mean: float = math.nan
    std: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    p: float = math.nan  # paired t-test (scipy.stats.ttest_rel), two-sided
    verdict: str = field(default="")

    @property
    def n(self) -> int:
        return len(self.diffs)


def summarize(scores: Iterable[Score]) -> dict[tuple[str, str], Summary]:
    """Mean and sample std over seeds of every (method, metric)."""
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for s in scores:
        values[(s.method, s.metric)].append(s.value)
    out = {}
    for key, vals in values.items():
        arr = np.asarray(vals, dtype=float)
        out[key] = Summary(float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else math.nan, len(arr))
    return out


def paired_comparison(scores: Iterable[Score], method: str, baseline: str, metric: str,
                      method_label: str | None = None, baseline_label: str | None = None,
                      metric_label: str | None = None) -> Paired:
    """``method`` − ``baseline`` on the seeds both have: mean, std, 95 % CI (t), paired t-test p, verdict."""
    from scipy import stats

    by_seed: dict[str, dict[int, float]] = defaultdict(dict)
    for s in scores:
        if s.metric == metric and s.method in (method, baseline):
            by_seed[s.method][s.seed] = s.value
    seeds = sorted(set(by_seed[method]) & set(by_seed[baseline]))
    a = np.asarray([by_seed[method][s] for s in seeds], dtype=float)
    b = np.asarray([by_seed[baseline][s] for s in seeds], dtype=float)
    result = Paired(method, baseline, metric, seeds, [float(x) for x in a - b])
    n = len(seeds)
    if n >= 1:
        result.mean = float((a - b).mean())
    if n >= 2:
        result.std = float((a - b).std(ddof=1))
        half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * result.std / math.sqrt(n)
        result.ci_low, result.ci_high = result.mean - half, result.mean + half
        if result.std > 0:
            result.p = float(stats.ttest_rel(a, b).pvalue)
    result.verdict = verdict(result, method_label or method, baseline_label or baseline, metric_label or metric)
    return result


def _signed(x: float, digits: int = 2) -> str:
    return f"{x:+.{digits}f}".replace("-", "−")


def _p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return f"{p:.2g}" if p >= 0.001 else "< 0.001"


def verdict(c: Paired, method_label: str, baseline_label: str, metric_label: str) -> str:
    """One line from the numbers, e.g. ``SG-MAE − MAE, linear probe: −0.40 ± 0.60 points (95 % CI …, p = 0.4,
    n = 3): no difference shown``."""
    head = f"{method_label} − {baseline_label}, {metric_label}"
    if c.n == 0:
        return f"{head}: no seed with both results"
    if c.n == 1:
        return f"{head}: {_signed(c.mean)} points (one seed, n = 1: no test possible, no conclusion)"
    numbers = (f"{_signed(c.mean)} ± {c.std:.2f} points (95 % CI {_signed(c.ci_low)} to {_signed(c.ci_high)}, "
               f"p = {_p(c.p)}, n = {c.n})")
    if math.isnan(c.p):
        what = "no difference at all" if c.mean == 0 else "the same difference on every seed; no t-test possible"
        return f"{head}: {numbers}: {what}"
    if c.p < ALPHA:
        direction = "higher" if c.mean > 0 else "lower"
        return f"{head}: {numbers}: {method_label} {direction} (p < {ALPHA:g}, but n = {c.n}: see the caveats)"
    return f"{head}: {numbers}: no difference shown"


def headline(comparisons: list[Paired], method_label: str, baseline_label: str) -> str:
    """One sentence per comparison over all metrics: does the method beat the baseline?"""
    if not comparisons or all(c.n == 0 for c in comparisons):
        return f"{method_label} vs {baseline_label}: no paired results yet."
    n = max(c.n for c in comparisons)
    better = [c for c in comparisons if c.p < ALPHA and c.mean > 0]
    worse = [c for c in comparisons if c.p < ALPHA and c.mean < 0]
    higher = [c for c in comparisons if c.n and c.mean > 0]
    metrics = len(comparisons)
    if n < 2:
        return (f"{method_label} vs {baseline_label}: one seed only; no test possible (higher on {len(higher)} of "
                f"{metrics} metrics, which says nothing at n = 1).")
    if better and not worse:
        names = ", ".join(EVALS.get(c.metric, c.metric) for c in better)
        return (f"{method_label} beats {baseline_label} at p < {ALPHA:g} on {len(better)} of {metrics} metrics "
                f"({names}; n = {n} seeds, uncorrected for the {metrics} tests); on the others no difference "
                f"is shown.")
    if worse and not better:
        names = ", ".join(EVALS.get(c.metric, c.metric) for c in worse)
        return (f"{method_label} does not beat {baseline_label}: it is lower at p < {ALPHA:g} on {names} (n = {n}), "
                f"and no metric shows it higher.")
    if better and worse:
        return (f"{method_label} vs {baseline_label}: mixed: higher on "
                f"{', '.join(EVALS.get(c.metric, c.metric) for c in better)}, lower on "
                f"{', '.join(EVALS.get(c.metric, c.metric) for c in worse)} (p < {ALPHA:g}, n = {n}).")
    return (f"{method_label} does not beat {baseline_label}: no metric differs at p < {ALPHA:g} (n = {n} seeds); "
            f"its mean is higher on {len(higher)} of {metrics} metrics, within the seed-to-seed noise.")


def caveats(n: int, tests: int) -> list[str]:
    """What a paired t-test on ``n`` seeds can and cannot say, in numbers."""
    from scipy import stats

    if n < 2:
        return ["With one seed there is no estimate of the seed-to-seed noise: no difference can be tested."]
    t_crit = float(stats.t.ppf(1 - ALPHA / 2, n - 1))
    chance = 1 - (1 - ALPHA) ** tests
    return [
        f"n = {n} seeds: the paired t-test has {n - 1} degree{'s' if n > 2 else ''} of freedom, so p < {ALPHA:g} "
        f"needs the mean difference to exceed {t_crit / math.sqrt(n):.2f} × the std of the per-seed differences "
        f"(t > {t_crit:.2f}). A difference smaller than that is not shown, and not shown absent either: "
        "\"no difference shown\" is not \"equal\".",
        f"The test assumes normally distributed per-seed differences, which {n} values cannot check.",
        f"{tests} tests are made here (metrics × comparisons); with no real difference anywhere, at least one "
        f"p < {ALPHA:g} turns up with probability {chance:.0%}. No correction is applied.",
        "Seeds vary the initialisation, the masks and the data order, not the data: the 95 % CI is for this "
        "budget, this model and this data set only.",
    ]


# --- running the sweep ---------------------------------------------------------------------------------------
def experiment(name: str) -> Path:
    from lightning_run.configs import shipped_experiments

    shipped = shipped_experiments()
    if shipped is None or not (shipped / name).is_file():
        raise FileNotFoundError(f"experiment config {name} not found (looked in {shipped})")
    return shipped / name


@dataclass
class Run:
    method: str
    seed: int
    root: Path  # the logger's save_dir
    directory: Path  # the run directory: config.yaml, checkpoints/, curves.jsonl
    final: Path  # checkpoints/last.ckpt


def run_paths(runs: Path, method: str, seed: int, project: str = "sgmae-fmnist") -> Run:
    root = runs / method / f"seed{seed}"
    tag = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:6]  # W&B ids unique across sweep folders
    directory = root / project / f"{method}-s{seed}-{tag}"
    return Run(method, seed, root, directory, directory / "checkpoints" / "last.ckpt")


def checkpoint_epoch(path: Path) -> int | None:
    from lightning_mae.downstream.checkpoints import load_checkpoint_file

    try:
        ckpt = load_checkpoint_file(path, mmap=True)
    except (FileNotFoundError, ValueError):
        return None
    return int(ckpt["epoch"]) if isinstance(ckpt, dict) and "epoch" in ckpt else None


def is_final(run: Run, epochs: int) -> bool:
    return run.final.is_file() and checkpoint_epoch(run.final) == epochs - 1


def _check_budget(run: Run, budget: dict[str, Any]) -> None:
    path = run.root / "evidence-budget.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != budget:
            raise SystemExit(
                f"error: {run.root} was pretrained with another budget ({old}) than this sweep's ({budget})\n"
                "hint: give this budget its own --runs folder (or delete that folder to retrain)")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(budget, indent=1) + "\n")


def pretrain(run: Run, config: str, epochs: int, train_subset: int, extra: list[str]) -> Path:
    """Train (or resume, or skip) one run; returns its final checkpoint."""
    from lightning_run.cli import cli

    _check_budget(run, {"config": config, "seed": run.seed, "epochs": epochs, "train_subset": train_subset,
                        "pretrain_args": extra})
    if is_final(run, epochs):
        print(f"[evidence] {run.method} seed {run.seed}: final checkpoint exists, skipped ({run.final})", flush=True)
        return run.final
    args = ["fit", "--config", str(experiment(config)), "--seed_everything", str(run.seed),
            "--trainer.max_epochs", str(epochs), "--data.init_args.train_subset", str(train_subset),
            "--trainer.default_root_dir", str(run.root), "--trainer.logger.init_args.save_dir", str(run.root),
            "--trainer.logger.init_args.id", run.directory.name,
            "--trainer.callbacks+=benchmarks.sgmae_evidence.CurveRecorder"]
    resume = [p for p in (run.directory / "checkpoints").glob("*.ckpt") if p.name in ("last.ckpt", "interrupted.ckpt")]
    if resume:
        newest = max(resume, key=lambda p: p.stat().st_mtime)
        args += ["--ckpt_path", str(newest)]
        print(f"[evidence] {run.method} seed {run.seed}: resuming {newest}", flush=True)
    elif run.directory.exists():  # started, but never reached a checkpoint: keep it aside, start again
        n = 1
        while (aside := run.directory.with_name(f"{run.directory.name}.failed{n}")).exists():
            n += 1
        run.directory.rename(aside)
        print(f"[evidence] {run.method} seed {run.seed}: unfinished run without a checkpoint moved to {aside}")
    print(f"[evidence] pretraining {run.method} seed {run.seed}: {epochs} epochs x {train_subset} images", flush=True)
    start = time.perf_counter()
    _fit(cli, args + extra)
    seconds = time.perf_counter() - start
    if not is_final(run, epochs):
        raise RuntimeError(f"{run.method} seed {run.seed}: training ended without a final checkpoint at {run.final}")
    timing = run.directory / "evidence-time.json"
    timing.write_text(json.dumps({"seconds": seconds, "epochs": epochs, "resumed": bool(resume)}) + "\n")
    return run.final


def _fit(cli: Any, args: list[str]) -> Any:
    import wandb

    try:
        return cli(args)
    finally:
        if wandb.run is not None:  # the next run gets its own W&B run
            wandb.finish()


def switch_epoch(run: Run, curves: dict[str, dict[int, float]], epochs: int) -> tuple[int | None, str]:
    """The first informed epoch (0-based) and where it was read: the logged ``mask/start_epoch`` (auto), the
    checkpoint's masking state, or the config's ``start_epoch``; ``None`` for plain MAE and for a switch at or
    after the last epoch (``epochs``), which never happened."""
    from lightning_mae.analysis.figures import read_pretraining_checkpoint
    from lightning_mae.downstream.checkpoints import load_checkpoint_file

    logged = curves.get("mask/start_epoch")
    if logged:
        found, source = int(round(list(logged.values())[-1])), "logged mask/start_epoch"
    else:
        meta, _ = read_pretraining_checkpoint(run.final)
        start = meta.masking.get("start_epoch")
        if start == "auto":
            state = load_checkpoint_file(run.final, mmap=True).get("state_dict", {})
            extra = state.get("masking._extra_state") or {}
            switch = extra.get("switch_epoch") if isinstance(extra, dict) else None
            found, source = (None if switch is None else int(switch)), "checkpoint masking state"
        else:
            found, source = (None if start is None else int(start)), "config start_epoch"
    if found is not None and found >= epochs:
        return None, f"{source} {found}: after the last epoch"
    return found, source


# --- evaluations ------------------------------------------------------------------------------------------------
def eval_key(name: str, args: argparse.Namespace, eval_args: list[str], seed: int) -> dict[str, Any]:
    key: dict[str, Any] = {"eval": name, "seed": seed}
    if name == "knn":
        key.update(k=args.knn_k, temperature=args.knn_temperature, pool=args.knn_pool,
                   train_subset=args.knn_train_subset, test_subset=args.knn_test_subset)
    elif name == "logreg":
        key.update(c=args.logreg_c, pool=args.knn_pool, train_subset=args.knn_train_subset,
                   test_subset=args.knn_test_subset)
    else:
        key["eval_args"] = eval_args
    return key


def frozen_features(ckpt: Path, args: argparse.Namespace) -> dict[str, tuple[Any, Any]]:
    """``{"train": (features, labels), "val": ...}`` of the checkpoint's frozen encoder on Fashion-MNIST train
    (or its first knn_train_subset images) and test (or its first knn_test_subset), the linear probe's evaluation
    transforms, pooled as ``--knn_pool``. Kept for the last checkpoint asked: k-NN and the converged probe share
    one extraction."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from datamodules.classification.fashion_mnist import FashionMNISTClassification
    from lightning_mae.analysis.knn import extract_features
    from lightning_mae.downstream.checkpoints import load_encoder

    key = (str(ckpt), ckpt.stat().st_mtime_ns, args.knn_pool, args.knn_train_subset, args.knn_test_subset)
    if _FEATURES.get("key") == key:
        return _FEATURES["value"]
    data = FashionMNISTClassification(num_workers=0, img_size=28, eval_crop_ratio=1.0)
    data.check_files()
    transform = data.transform(train=False)
    sets = {}
    for split, limit in (("train", args.knn_train_subset), ("val", args.knn_test_subset)):
        dataset = data.make_dataset(split, transform)
        sets[split] = Subset(dataset, range(min(limit, len(dataset)))) if limit else dataset
    encoder = load_encoder(ckpt, global_pool="token")
    with torch.inference_mode():
        feats = {split: extract_features(encoder, DataLoader(ds, batch_size=512, shuffle=False), args.knn_pool,
                                         args.device) for split, ds in sets.items()}
    _FEATURES.update(key=key, value=feats)
    return feats


_FEATURES: dict[str, Any] = {}


def knn_eval(ckpt: Path, args: argparse.Namespace) -> float:
    """k-NN top-1 (%) of the checkpoint's frozen encoder (``frozen_features``)."""
    from lightning_mae.analysis.knn import knn_accuracy

    (train_x, train_y), (test_x, test_y) = frozen_features(ckpt, args).values()
    temperature = None if args.knn_temperature <= 0 else args.knn_temperature
    return knn_accuracy(train_x, train_y, test_x, test_y, k=args.knn_k, temperature=temperature, num_classes=10)


def logreg_eval(ckpt: Path, args: argparse.Namespace) -> float:
    """Top-1 (%) of a logistic regression fitted to convergence on the frozen features (``frozen_features``;
    ``lightning_mae.analysis.frozen_probe``)."""
    from lightning_mae.analysis.frozen_probe import logistic_probe_accuracy

    (train_x, train_y), (test_x, test_y) = frozen_features(ckpt, args).values()
    return logistic_probe_accuracy(train_x, train_y, test_x, test_y, c=args.logreg_c)


def evaluate(run: Run, evals: list[str], args: argparse.Namespace, eval_args: list[str]) -> dict[str, float]:
    """Every evaluation of the run's final checkpoint (cached in ``<run_dir>/evidence.json``)."""
    from lightning_mae.downstream.runner import run_one

    cache_path = run.directory / "evidence.json"
    stamp = {"checkpoint": str(run.final), "mtime_ns": run.final.stat().st_mtime_ns}
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    if {k: cache.get(k) for k in stamp} != stamp:
        cache = {**stamp, "evals": {}}
    results: dict[str, float] = {}
    for name in evals:
        key = eval_key(name, args, eval_args, run.seed)
        cached = cache["evals"].get(name)
        if cached and cached.get("key") == key:
            results[name] = float(cached["value"])
            print(f"[evidence] {run.method} seed {run.seed} {name}: {results[name]:.2f} % (cached)", flush=True)
            continue
        start = time.perf_counter()
        if name in ("knn", "logreg"):
            value, where = (knn_eval if name == "knn" else logreg_eval)(run.final, args), ""
        else:
            dataset, protocol = {"linprobe": ("fashion_mnist", "linprobe"), "finetune": ("fashion_mnist", "finetune"),
                                 "digits": ("digits", "linprobe")}[name]
            out = run.directory / "eval" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
            result = run_one(str(run.final), dataset, None, protocol, out,
                             ["--seed_everything", str(run.seed), *eval_args])
            value, where = result.top1, str(out)
        results[name] = value
        cache["evals"][name] = {"key": key, "value": value, "run": where,
                                "seconds": round(time.perf_counter() - start, 1)}
        cache_path.write_text(json.dumps(cache, indent=1) + "\n")
        print(f"[evidence] {run.method} seed {run.seed} {name}: {value:.2f} %", flush=True)
    return results


# --- outputs -------------------------------------------------------------------------------------------------------
@dataclass
class RunRecord:
    method: str
    seed: int
    directory: Path
    checkpoint: Path
    scores: dict[str, float]
    curves: dict[str, dict[int, float]]
    switch: int | None
    switch_source: str
    seconds: float | None = None


def _fmt(s: Summary | None, spec: str = ".2f") -> str:
    if s is None:
        return "–"
    return f"{s.mean:{spec}} (n = 1)" if s.n == 1 else f"{s.mean:{spec}} ± {s.std:{spec}}"


def write_results_csv(records: list[RunRecord], path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["kind", "method", "seed", "metric", "epoch", "value", "source"])
        for r in records:
            for metric, value in r.scores.items():
                writer.writerow(["eval", r.method, r.seed, metric, "", f"{value:.6g}", str(r.checkpoint)])
            if r.switch is not None:
                writer.writerow(["switch", r.method, r.seed, "start_epoch", "", r.switch, r.switch_source])
            for metric, series in r.curves.items():
                for epoch, value in series.items():
                    writer.writerow(["curve", r.method, r.seed, metric, epoch, f"{value:.6g}",
                                     str(r.directory / CURVES_FILE)])
    return path


def write_comparisons_csv(comparisons: list[Paired], path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["comparison", "metric", "n", "seeds", "differences", "mean", "std", "ci95_low",
                         "ci95_high", "p_paired_t", "verdict"])
        for c in comparisons:
            writer.writerow([f"{c.method}-{c.baseline}", c.metric, c.n, " ".join(map(str, c.seeds)),
                             " ".join(f"{d:.4g}" for d in c.diffs), f"{c.mean:.6g}", f"{c.std:.6g}",
                             f"{c.ci_low:.6g}", f"{c.ci_high:.6g}", f"{c.p:.6g}", c.verdict])
    return path


def compare_all(scores: list[Score], methods: list[str], evals: list[str]) -> dict[str, list[Paired]]:
    out: dict[str, list[Paired]] = {}
    for m in methods:
        if m == BASELINE or BASELINE not in methods:
            continue
        out[m] = [paired_comparison(scores, m, BASELINE, e, METHODS[m].label, METHODS[BASELINE].label, EVALS[e])
                  for e in evals]
    return out


def table_markdown(records: list[RunRecord], methods: list[str], evals: list[str], seeds: list[int],
                   budget: str, command: str, layer: int, files: list[str]) -> str:
    scores = [Score(r.method, r.seed, m, v) for r in records for m, v in r.scores.items()]
    summary = summarize(scores)
    comparisons = compare_all(scores, methods, evals)
    labels = [METHODS[m].label for m in methods]
    done = {(r.method, r.seed) for r in records}
    lines = ["# SG-MAE evidence: " + " vs ".join(labels) + " on Fashion-MNIST", ""]
    missing = [(m, s) for s in seeds for m in methods if (m, s) not in done]
    lines += [f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M')}. Budget: {budget}.", ""]
    if missing:
        lines += [f"**Partial**: {len(missing)} of {len(seeds) * len(methods)} runs still missing "
                  f"({', '.join(f'{METHODS[m].label} seed {s}' for m, s in missing)}).", ""]
    lines += ["## Verdict", ""]
    if comparisons:
        for m, cs in comparisons.items():
            lines.append(f"- **{headline(cs, METHODS[m].label, METHODS[BASELINE].label)}**")
        lines.append("")
        for cs in comparisons.values():
            lines += [f"- {c.verdict}" for c in cs]
    else:
        lines.append(f"- No comparison: the baseline ({METHODS[BASELINE].label}) or a second method is not in the "
                     "sweep.")
    lines += ["", "## Top-1 accuracy (%), mean ± std over seeds", "",
              "| metric | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for e in evals:
        lines.append(f"| {EVALS[e]} | " + " | ".join(_fmt(summary.get((m, e))) for m in methods) + " |")
    lines += ["", "Per seed:", "", "| method | seed | " + " | ".join(EVALS[e] for e in evals) + " |",
              "|---|---:|" + "---:|" * len(evals)]
    for r in sorted(records, key=lambda r: (methods.index(r.method), r.seed)):
        lines.append(f"| {METHODS[r.method].label} | {r.seed} | "
                     + " | ".join(f"{r.scores[e]:.2f}" if e in r.scores else "–" for e in evals) + " |")
    if comparisons:
        lines += ["", f"## Paired comparison with {METHODS[BASELINE].label} (same seed, points of top-1)", "",
                  "| metric | comparison | per-seed differences | mean ± std | 95 % CI | p (paired t) | n |",
                  "|---|---|---|---:|---|---:|---:|"]
        for e_index, e in enumerate(evals):
            for m, cs in comparisons.items():
                c = cs[e_index]
                diffs = ", ".join(_signed(d) for d in c.diffs) or "–"
                ms = "–" if c.n == 0 else (_signed(c.mean) if c.n == 1 else f"{_signed(c.mean)} ± {c.std:.2f}")
                ci = "–" if math.isnan(c.ci_low) else f"{_signed(c.ci_low)} to {_signed(c.ci_high)}"
                lines.append(f"| {EVALS[e]} | {METHODS[m].label} − {METHODS[BASELINE].label} | {diffs} | {ms} | {ci} | "
                             f"{_p(c.p)} | {c.n} |")
        n = max((c.n for cs in comparisons.values() for c in cs), default=0)
        tests = sum(len(cs) for cs in comparisons.values())
        lines += ["", f"### What n = {n} can say", ""] + [f"- {c}" for c in caveats(n, tests)]
    lines += ["", "## When informed masking starts", "",
              "| method | first informed epoch (0-based), per seed | read from |", "|---|---|---|"]
    for m in methods:
        rs = sorted((r for r in records if r.method == m), key=lambda r: r.seed)
        if not rs:
            continue
        switches = ", ".join(f"seed {r.seed}: {'never' if r.switch is None else r.switch}" for r in rs)
        sources = ", ".join(sorted({r.switch_source for r in rs if r.switch_source})) or "–"
        lines.append(f"| {METHODS[m].label} | {switches} | {sources} |")
    lines += probe_curve_lines(records, methods)
    lines += ["", f"## Clustering of block {layer} at the end of pretraining (AnalysisMonitor), mean ± std", "",
              "| method | bi-partition gap | KL to the previous epoch |", "|---|---:|---:|"]
    for m in methods:
        row = []
        for family, _ in CURVE_FAMILIES:
            vals = [list(v.values())[-1] for r in records if r.method == m
                    for k, v in r.curves.items() if k == f"analysis/{family}/enc{layer}" and v]
            row.append("–" if not vals else _fmt(Summary(float(np.mean(vals)),
                                                         float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan,
                                                         len(vals)), ".3g"))
        if any(r.method == m for r in records):
            lines.append(f"| {METHODS[m].label} | {row[0]} | {row[1]} |")
    lines += ["", "The curves per epoch are in `clustering.png` (dotted lines: the switch to informed masks) and "
              "`results.csv` (kind `curve`).", "", "## Files", ""] + [f"- `{f}`" for f in files]
    return "\n".join(lines) + "\n"


def probe_curve_lines(records: list[RunRecord], methods: list[str], key: str = "val/probe_acc") -> list[str]:
    """The online probe's accuracy after each pretraining epoch, mean over the seeds that logged it: whether
    the budget is one where the probe has stopped moving (the last epoch's change, in points)."""
    rows = []
    for m in methods:
        series = [r.curves[key] for r in records if r.method == m and r.curves.get(key)]
        if not series:
            continue
        epochs = sorted(set().union(*series))
        mean = {e: 100 * float(np.mean([s[e] for s in series if e in s])) for e in epochs}
        last = f"{_signed(mean[epochs[-1]] - mean[epochs[-2]])}" if len(epochs) > 1 else "–"
        rows.append((m, epochs, mean, last, len(series)))
    if not rows:
        return []
    epochs = sorted(set().union(*(r[1] for r in rows)))
    lines = ["", "## Online probe after each pretraining epoch (has it stopped moving?)", "",
             f"`{key}`: the online linear probe on the unmasked images' cls token, Fashion-MNIST test set, top-1 %, "
             "mean over the seeds that logged it; the last column is the change over the last epoch.", "",
             "| method | seeds | " + " | ".join(f"epoch {e}" for e in epochs) + " | last change |",
             "|---|---:|" + "---:|" * (len(epochs) + 1)]
    for m, _, mean, last, n in rows:
        lines.append(f"| {METHODS[m].label} | {n} | "
                     + " | ".join(f"{mean[e]:.2f}" if e in mean else "–" for e in epochs) + f" | {last} |")
    return lines


def plot_accuracy(records: list[RunRecord], methods: list[str], evals: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(evals), figsize=(3.6 * len(evals), 3.8), squeeze=False)
    seeds = sorted({r.seed for r in records})
    for ax, e in zip(axes[0], evals):
        for seed in seeds:  # paired: one grey line per seed across the methods
            ys = [next((r.scores.get(e) for r in records if r.method == m and r.seed == seed), None) for m in methods]
            xs = [i for i, y in enumerate(ys) if y is not None]
            ax.plot(xs, [ys[i] for i in xs], color="0.75", linewidth=0.8, zorder=1)
        for i, m in enumerate(methods):
            vals = [r.scores[e] for r in records if r.method == m and e in r.scores]
            if not vals:
                continue
            ax.scatter([i] * len(vals), vals, s=18, zorder=2, color=f"C{i}")
            std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
            ax.errorbar(i + 0.15, float(np.mean(vals)), yerr=std, fmt="s", color="k", capsize=4, markersize=5,
                        zorder=3)
        ax.set_xticks(range(len(methods)), [METHODS[m].label for m in methods], fontsize=8)
        ax.set_xlim(-0.5, len(methods) - 0.5)
        ax.set_title(EVALS[e], fontsize=9)
        ax.set_ylabel("top-1 (%)")
    fig.suptitle(f"per seed (dots, grey: the same seed) and mean ± std (black), n = {len(seeds)} seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_clustering(records: list[RunRecord], methods: list[str], layer: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVE_FAMILIES), figsize=(11, 4), squeeze=False)
    for ax, (family, title) in zip(axes[0], CURVE_FAMILIES):
        key = f"analysis/{family}/enc{layer}"
        for i, m in enumerate(methods):
            color, style, marker = f"C{i}", ("-", "--", "-.")[i % 3], "os^"[i % 3]
            series = [r.curves[key] for r in records if r.method == m and r.curves.get(key)]
            for s in series:
                ax.plot(list(s), list(s.values()), color=color, linestyle=style, alpha=0.35, linewidth=0.8)
            if series:
                epochs = sorted(set().union(*series))
                mean = [np.mean([s[e] for s in series if e in s]) for e in epochs]
                ax.plot(epochs, mean, color=color, linestyle=style, marker=marker, markersize=5, linewidth=1.8,
                        label=f"{METHODS[m].label} (mean of {len(series)} seeds; thin: each seed)")
            switches = sorted({r.switch for r in records if r.method == m and r.switch is not None})
            for j, s in enumerate(switches):
                ax.axvline(s, color=color, linestyle=":", linewidth=1.3,
                           label=f"{METHODS[m].label}: informed from epoch {s}" if j == 0 or len(switches) < 4
                           else None)
        ax.set_xlabel("epochs completed (0 = before training)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(f"{title}, block {layer}", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(records: list[RunRecord], args: argparse.Namespace, command: str) -> list[Path]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scores = [Score(r.method, r.seed, m, v) for r in records for m, v in r.scores.items()]
    comparisons = [c for cs in compare_all(scores, args.methods, args.evals).values() for c in cs]
    files = [write_results_csv(records, out / "results.csv"),
             write_comparisons_csv(comparisons, out / "comparisons.csv"),
             plot_accuracy(records, args.methods, args.evals, out / "accuracy.png"),
             plot_clustering(records, args.methods, args.layer, out / "clustering.png")]
    budget = (f"pretraining {args.epochs} epochs × {args.train_subset} Fashion-MNIST images per seed"
              + (f" (overrides: `{' '.join(args.pretrain_args)}`)" if args.pretrain_args else "")
              + "; downstream: the linprobe_fmnist, finetune_fmnist and linprobe_digits protocols"
              + (f" with `{' '.join(args.eval_args)}`" if args.eval_args else "")
              + f"; k-NN: k = {args.knn_k}, "
              + (f"exp(cos / {args.knn_temperature:g}) votes" if args.knn_temperature > 0 else "majority vote")
              + f", {args.knn_pool} features, train "
              + (f"first {args.knn_train_subset}" if args.knn_train_subset else "60,000") + " / test "
              + (f"first {args.knn_test_subset}" if args.knn_test_subset else "10,000") + " images")
    table = out / "table.md"
    table.write_text(table_markdown(records, args.methods, args.evals, args.seeds, budget, command, args.layer,
                                    [f.name for f in files]))
    return [table, *files]


# --- the command ----------------------------------------------------------------------------------------------
def demo_budget() -> tuple[int, int]:
    """``(max_epochs, train_subset)`` of ``experiments/sgmae_fmnist.yaml``, the base of the three configs."""
    import yaml

    try:
        config = yaml.safe_load(experiment("sgmae_fmnist.yaml").read_text())
        return int(config["trainer"]["max_epochs"]), int(config["data"]["init_args"]["train_subset"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return DEFAULT_EPOCHS, DEFAULT_TRAIN_SUBSET


def _split_args(text: str | None) -> list[str]:
    return shlex.split(text) if text else []


def batch_limit_problem(overrides: list[str]) -> str | None:
    """A ``--trainer.limit_*_batches N`` with N >= 1 does not limit anything here: the Trainer types it
    ``float | int`` and jsonargparse reads ``2`` as the float 2.0, i.e. 200 % of the batches. Fractions work."""
    for i, arg in enumerate(overrides):
        name, eq, value = arg.partition("=")
        if not (name.startswith("--trainer.limit_") and name.endswith("_batches")):
            continue
        value = value if eq else (overrides[i + 1] if i + 1 < len(overrides) else "")
        try:
            number = float(value)
        except ValueError:
            continue
        if number >= 1:
            return (f"{name} {value} is read as the float {number:g} (a fraction: {number:.0%} of the batches), "
                    "not as a number of batches; give a fraction below 1 (e.g. 0.05), or fewer images with "
                    "--data.init_args.train_subset")
    return None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sgmae_evidence", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("docs/evidence"), help="table.md, results.csv, plots")
    parser.add_argument("--runs", type=Path, default=Path("runs/sgmae_evidence"),
                        help="where the pretraining runs go (one folder per budget: runs are reused from here)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--evals", nargs="+", choices=list(EVALS), default=list(EVALS))
    epochs, train_subset = demo_budget()
    parser.add_argument("--epochs", type=int, default=epochs, help=f"pretraining epochs (the demo's: {epochs})")
    parser.add_argument("--train_subset", type=int, default=train_subset,
                        help=f"pretraining images per epoch (the demo's: {train_subset})")
    parser.add_argument("--pretrain_args", type=_split_args, default=[],
                        help="more LightningCLI overrides for pretraining, one quoted string")
    parser.add_argument("--eval_args", type=_split_args, default=[],
                        help="more LightningCLI overrides for the linear probes and fine-tuning, one quoted string")
    parser.add_argument("--knn_k", type=int, default=20)
    parser.add_argument("--knn_temperature", type=float, default=0.07,
                        help="T of the exp(cos/T) votes; 0 = plain majority vote")
    parser.add_argument("--knn_pool", choices=["token", "mean"], default="token",
                        help="cls token (the linear probe's feature) or mean of the patch tokens")
    parser.add_argument("--logreg_c", type=float, default=1.0,
                        help="inverse L2 strength of the converged linear probe (standardised features)")
    parser.add_argument("--knn_train_subset", type=int, default=None, help="first N train images (default: all)")
    parser.add_argument("--knn_test_subset", type=int, default=None, help="first N test images (default: all)")
    parser.add_argument("--layer", type=int, default=3, help="encoder block of the curves (SG-MAE's source layer)")
    parser.add_argument("--device", default=None, help="k-NN feature extraction device (default: cuda if available)")
    args = parser.parse_args(argv)
    if BASELINE not in args.methods or len(args.methods) < 2:
        parser.error(f"--methods must include {BASELINE} and at least one other method (the comparison is paired)")
    for option in ("--trainer.max_epochs", "--data.init_args.train_subset", "--seed_everything", "--ckpt_path"):
        if any(a == option or a.startswith(option + "=") for a in args.pretrain_args):
            parser.error(f"--pretrain_args: {option} is set by this command (use --epochs / --train_subset / --seeds)")
    for option, values in (("--pretrain_args", args.pretrain_args), ("--eval_args", args.eval_args)):
        if problem := batch_limit_problem(values):
            parser.error(f"{option}: {problem}")
    if args.epochs < 1 or args.train_subset < 1:
        parser.error("--epochs and --train_subset must be >= 1")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds must be distinct")
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv: Sequence[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    command = "python -m benchmarks.sgmae_evidence " + shlex.join(list(sys.argv[1:] if argv is None else argv))
    records: list[RunRecord] = []
    files: list[Path] = []
    for seed in args.seeds:  # seeds outside: every finished seed completes a pair
        for m in args.methods:
            method = METHODS[m]
            run = run_paths(args.runs, m, seed)
            pretrain(run, method.config, args.epochs, args.train_subset, args.pretrain_args)
            scores = evaluate(run, args.evals, args, args.eval_args)
            curves = read_curves(run.directory)
            switch, source = switch_epoch(run, curves, args.epochs)
            timing = run.directory / "evidence-time.json"
            seconds = json.loads(timing.read_text())["seconds"] if timing.is_file() else None
            records.append(RunRecord(m, seed, run.directory, run.final, scores, curves, switch, source, seconds))
            files = write_outputs(records, args, command)
    print(f"\n{(Path(args.out) / 'table.md').read_text()}")
    print("Wrote:\n" + "\n".join(f"  {f}" for f in files))
    return files


if __name__ == "__main__":
    os.environ.setdefault("WANDB_SILENT", "true")
    main()
