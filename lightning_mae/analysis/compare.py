"""Overlay the clustering curves of several runs: ``python -m lightning_mae.analysis.compare``.

Reads the ``metrics.csv`` that ``python -m lightning_mae.analysis.figures`` writes for each run (one row per
checkpoint) and draws, for one encoder layer, the bi-partition gap (on cosine edges, and on attention edges
when the runs' ``metrics.csv`` have it) and the KL of the token relations to the run's last checkpoint
against the epoch, one line per run::

    python -m lightning_mae.analysis.compare --run MAE=runs/analysis/mae --run SG-MAE=runs/analysis/sgmae \
        --layer 3 --out runs/analysis/compare.png
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CURVES = (("gap", "bi-partition gap µintra − µinter, cosine"),
          ("gap_attn", "bi-partition gap µintra − µinter, attention"),
          ("kl_last", "KL(token relations of last ‖ epoch)"))
OPTIONAL = {"gap_attn"}  # absent from metrics.csv files written before it existed, or without attention


def read_curves(folder: Path, layer: int) -> dict[str, list[tuple[int, float]]]:
    """``{"gap": [(epoch, value), ...], "gap_attn": [...], "kl_last": [...]}`` of ``folder/metrics.csv`` at
    ``enc{layer}`` (``gap_attn`` is left out when the file has no such column)."""
    path = Path(folder) / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run `python -m lightning_mae.analysis.figures ... --out {folder}` first"
        )
    with path.open() as f:
        rows = list(csv.DictReader(f))
    curves: dict[str, list[tuple[int, float]]] = {}
    for name, _ in CURVES:
        key = f"{name}/enc{layer}"
        if rows and key not in rows[0] and name in OPTIONAL:
            continue
        if rows and key not in rows[0]:
            raise KeyError(f"{path} has no column {key!r} (layers: 1..depth)")
        curves[name] = [(int(r["epoch"]), float(r[key])) for r in rows if not math.isnan(float(r[key]))]
    return curves


def compare(runs: dict[str, Path], layer: int, out: Path, starts: dict[str, int] | None = None) -> Path:
    """Write one PNG with a panel per curve; ``starts`` marks each run's first informed epoch."""
    all_curves = {label: read_curves(folder, layer) for label, folder in runs.items()}
    shown = [(name, title) for name, title in CURVES if any(name in c for c in all_curves.values())]
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 3.8), squeeze=False)
    axes = axes[0]
    for label, curves in all_curves.items():
        for ax, (name, _) in zip(axes, shown):
            epochs, values = zip(*curves[name]) if curves.get(name) else ((), ())
            (line,) = ax.plot(epochs, values, marker="o", label=label)
            if starts and label in starts:
                ax.axvline(starts[label] - 0.5, color=line.get_color(), linestyle=":", linewidth=1)
    for ax, (_, title) in zip(axes, shown):
        ax.set_title(f"{title}, block {layer}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _pair(text: str) -> tuple[str, str]:
    label, sep, value = text.partition("=")
    if not sep or not label or not value:
        raise argparse.ArgumentTypeError(f"expected LABEL=VALUE, got {text!r}")
    return label, value


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m lightning_mae.analysis.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=_pair, action="append", required=True, metavar="LABEL=ANALYZE_DIR")
    parser.add_argument("--start", type=_pair, action="append", default=[], metavar="LABEL=EPOCH",
                        help="first informed epoch of a run (dotted line)")
    parser.add_argument("--layer", type=int, required=True, help="encoder block (1-based, as in metrics.csv)")
    parser.add_argument("--out", type=Path, required=True, help="output PNG")
    args = parser.parse_args(argv)
    out = compare({k: Path(v) for k, v in args.run}, args.layer, args.out, {k: int(v) for k, v in args.start})
    print(f"Wrote {out}")
    return out


if __name__ == "__main__":
    main()
