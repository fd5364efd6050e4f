"""``make downstream``: linear probing and fine-tuning of pretrained encoders, one results table.

For every checkpoint x dataset x protocol it runs the matching experiment config
(``experiments/{linprobe,finetune}_<dataset>.yaml``) through the project's LightningCLI, evaluates the
final model on the validation split, and writes ``results.md`` / ``results.csv`` into its run
directory (``<out_dir>/<timestamp>``); the table is also logged to W&B as ``downstream/results``.

Fashion-MNIST (embedded, CPU-sized budget) runs by default; the other datasets run when their
folder is given, e.g.::

    python -m lightning_mae.downstream.runner --ckpt runs/.../last.ckpt --imagenet /data/imagenet \
        --cub /data/CUB_200_2011

Anything after ``--`` is passed to every run, e.g. ``-- --trainer.max_epochs 1``.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import wandb

from lightning_run import run_dir
from lightning_run.cli import cli
from lightning_run.configs import shipped_experiments

# Dataset name -> option naming its folder (Fashion-MNIST's is optional: Debian's files by default).
DATASETS = ("fashion_mnist", "imagenet", "inat2019", "cifar10", "cifar100", "cub")
CONFIG_NAMES = {"fashion_mnist": "fmnist"}
PROTOCOLS = ("linprobe", "finetune")


@dataclass
class Result:
    dataset: str
    protocol: str
    top1: float
    epochs: int
    checkpoint: str


def config_path(dataset: str, protocol: str) -> Path:
    """The shipped experiment ``<protocol>_<dataset>.yaml`` (source tree or installed package)."""
    name = f"{protocol}_{CONFIG_NAMES.get(dataset, dataset)}.yaml"
    shipped = shipped_experiments()
    if shipped is None or not (shipped / name).is_file():
        raise FileNotFoundError(f"no experiment config {name} for {protocol} on {dataset} (looked in {shipped})")
    return shipped / name


def run_one(ckpt: str, dataset: str, data_dir: str | None, protocol: str, out: Path, extra: list[str]) -> Result:
    """Fit one (checkpoint, dataset, protocol) run and evaluate it; its files go under ``out``."""
    args = ["fit", "--config", str(config_path(dataset, protocol)), "--model.init_args.checkpoint", ckpt,
            "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out)]
    if data_dir is not None:
        args += ["--data.init_args.data_dir", data_dir]
    try:
        run = cli(args + extra)
        trainer = run.trainer
        metrics = trainer.callback_metrics
        if getattr(run.model, "validated_epoch", None) != trainer.current_epoch - 1 or "val/acc1" not in metrics:
            # the last epoch was not validated (check_val_every_n_epoch): evaluate the final model now
            [metrics] = trainer.validate(run.model, datamodule=run.datamodule, verbose=False)
        print(f"{dataset} {protocol}: top-1 {100 * metrics['val/acc1']:.2f} % ({run_dir(trainer)})")
        return Result(dataset, protocol, 100.0 * float(metrics["val/acc1"]), trainer.current_epoch, ckpt)
    finally:
        if wandb.run is not None:  # the next run must get its own W&B run, not reuse this one
            wandb.finish()


def write_tables(results: list[Result], directory: Path) -> tuple[Path, Path]:
    """``results.md`` and ``results.csv`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    md, csv_path = directory / "results.md", directory / "results.csv"
    lines = ["| dataset | protocol | top-1 (%) | epochs | checkpoint |", "|---|---|---:|---:|---|"]
    lines += [f"| {r.dataset} | {r.protocol} | {r.top1:.2f} | {r.epochs} | {r.checkpoint} |" for r in results]
    md.write_text("\n".join(lines) + "\n")
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(Result.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(r) for r in results)
    return md, csv_path


def log_wandb_table(results: list[Result], directory: Path, project: str) -> None:
    run = wandb.init(project=project, dir=str(directory), name=f"downstream-{directory.name}", job_type="downstream")
    try:
        columns = list(Result.__dataclass_fields__)
        run.log({"downstream/results": wandb.Table(columns=columns, data=[list(asdict(r).values()) for r in results])})
        run.save(str(directory / "results.csv"), base_path=str(directory), policy="now")
    finally:
        run.finish()


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", action="append", required=True,
                        help="pretrained checkpoint (our .ckpt or an official MAE .pth); repeat for several")
    parser.add_argument("--fashion_mnist", default="default",
                        help="Fashion-MNIST idx folder; 'default' = Debian's/./data, 'off' = skip")
    for name in DATASETS[1:]:
        parser.add_argument(f"--{name}", default=None, help=f"{name} root folder (standard layout); skipped if unset")
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    parser.add_argument("--out_dir", default="runs/downstream", help="parent of this run's directory")
    parser.add_argument("--wandb_project", default="downstream")
    args, extra = parser.parse_known_args(argv)
    if extra and extra[0] == "--":
        extra = extra[1:]
    elif extra:
        parser.error(f"unrecognised arguments {extra} (put LightningCLI overrides after `--`)")
    for ckpt in args.ckpt:
        if not Path(ckpt).is_file():
            parser.error(f"--ckpt {ckpt}: no such file")
    datasets: list[tuple[str, str | None]] = []
    if args.fashion_mnist != "off":
        datasets.append(("fashion_mnist", None if args.fashion_mnist == "default" else args.fashion_mnist))
    for name in DATASETS[1:]:
        if getattr(args, name) is not None:
            if not Path(getattr(args, name)).is_dir():
                parser.error(f"--{name} {getattr(args, name)}: no such folder")
            datasets.append((name, getattr(args, name)))
    if not datasets:
        parser.error("no dataset selected")

    directory = Path(args.out_dir) / time.strftime("%Y%m%d-%H%M%S")
    results = []
    for i, ckpt in enumerate(args.ckpt):
        for dataset, data_dir in datasets:
            for protocol in args.protocols:
                out = directory / f"ckpt{i}_{dataset}_{protocol}"
                results.append(run_one(ckpt, dataset, data_dir, protocol, out, extra))
                write_tables(results, directory)  # partial tables survive an interrupted run
    md, csv_path = write_tables(results, directory)
    log_wandb_table(results, directory, args.wandb_project)
    print(f"\nDownstream results ({directory}):\n\n{md.read_text()}\nCSV: {csv_path}")
    return results


if __name__ == "__main__":
    os.environ.setdefault("WANDB_SILENT", "true")
    main()
