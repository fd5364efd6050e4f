"""The SG-MAE evidence command (benchmarks.sgmae_evidence): k-NN accuracy, the digits DataModule, the paired
statistics and verdicts on known numbers, and one end-to-end sweep at a tiny budget."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.sgmae_evidence import (
    CurveRecorder,
    RunRecord,
    Score,
    batch_limit_problem,
    caveats,
    headline,
    paired_comparison,
    plot_accuracy,
    plot_clustering,
    probe_curve_lines,
    read_curves,
    run_paths,
    summarize,
    switch_epoch,
    table_markdown,
)
from datamodules.classification.digits import DigitsClassification, digits_arrays, stratified_split
from datamodules.pretraining.fashion_mnist import MEAN, STD
from lightning_mae.analysis.frozen_probe import logistic_probe_accuracy
from lightning_mae.analysis.knn import extract_features, knn_accuracy, knn_predict
from lightning_mae.downstream.encoder import ViTEncoder
from tests.conftest import REPO


# --- k-NN --------------------------------------------------------------------------------------------------
def _unit(*angles_deg: float) -> torch.Tensor:
    """2-d unit vectors at the given angles (cosine similarity = cos of the angle between them)."""
    a = torch.deg2rad(torch.tensor(angles_deg, dtype=torch.float64))
    return torch.stack([a.cos(), a.sin()], dim=1).float()


def test_knn_classifies_two_clusters_and_is_scale_and_chunk_invariant():
    train = _unit(0, 5, -5, 90, 85, 95)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    test = _unit(2, 88, 30, 60)
    want = torch.tensor([0, 1, 0, 1])
    assert torch.equal(knn_predict(train, labels, test, k=3), want)
    assert torch.equal(knn_predict(7.0 * train, labels, 0.1 * test, k=3, chunk_size=1), want)  # cosine: no scale
    assert torch.equal(knn_predict(train, labels, test, k=3, temperature=None), want)
    assert knn_accuracy(train, labels, test, torch.tensor([0, 1, 1, 1]), k=3) == pytest.approx(75.0)


def test_weighted_and_majority_votes_differ_where_they_should():
    # k = 3 neighbours of the test point (at 0°): one class-0 image at cos 1.0, two class-1 images at cos 0.5.
    train = _unit(0, 60, -60, 180)
    labels = torch.tensor([0, 1, 1, 0])
    test = _unit(0)
    # majority: 2 votes for class 1 against 1
    assert knn_predict(train, labels, test, k=3, temperature=None).item() == 1
    # DINO weights: exp(1 / 0.07) = 1.6e6 for class 0 against 2 exp(0.5 / 0.07) = 2.5e3 for class 1
    assert knn_predict(train, labels, test, k=3, temperature=0.07).item() == 0
    # a large temperature flattens the weights back to a vote count
    assert knn_predict(train, labels, test, k=3, temperature=100.0).item() == 1


def test_majority_tie_goes_to_the_more_similar_class_not_the_lower_index():
    train = _unit(30, 10)  # class 0 at cos(30°) = 0.87, class 1 at cos(10°) = 0.98 from the test point
    labels = torch.tensor([0, 1])
    assert knn_predict(train, labels, _unit(0), k=2, temperature=None).item() == 1


def test_converged_linear_probe_known_answers():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 4
    centres = torch.randn(4, 16, generator=g) * 5
    features = centres[labels] + 0.1 * torch.randn(400, 16, generator=g)
    # linearly separable classes: every test point right, whatever the feature scale
    assert logistic_probe_accuracy(features[:300], labels[:300], features[300:], labels[300:]) == 100.0
    assert logistic_probe_accuracy(1e3 * features[:300], labels[:300], 1e3 * features[300:], labels[300:]) == 100.0
    # labels unrelated to the features: chance (1/4), not better
    noise = torch.randn(4000, 16, generator=g)
    random_labels = torch.randint(0, 4, (4000,), generator=g)
    assert 20.0 < logistic_probe_accuracy(noise[:3000], random_labels[:3000], noise[3000:], random_labels[3000:]) < 30.0
    with pytest.raises(RuntimeError, match="not converged after max_iter=1"):
        logistic_probe_accuracy(noise[:3000], random_labels[:3000], noise[3000:], random_labels[3000:], max_iter=1)
    with pytest.raises(ValueError, match="same D"):
        logistic_probe_accuracy(features, labels, features[:, :8], labels)


def test_knn_names_bad_input():
    train, labels = _unit(0, 90), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="k must be in"):
        knn_predict(train, labels, _unit(0), k=3)
    with pytest.raises(ValueError, match="dimensions"):
        knn_predict(train, labels, torch.ones(1, 3), k=1)
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(train, labels, _unit(0), k=1, temperature=0.0)
    with pytest.raises(ValueError, match="labels must lie"):
        knn_predict(train, torch.tensor([0, 5]), _unit(0), k=1, num_classes=2)


def test_extract_features_gives_the_probe_feature_and_restores_the_mode():
    torch.manual_seed(0)
    enc = ViTEncoder(img_size=8, patch_size=4, in_chans=1, embed_dim=16, depth=1, num_heads=2).train()
    imgs = torch.randn(5, 1, 8, 8)
    batches = [(imgs[:3], torch.tensor([0, 1, 2])), (imgs[3:], torch.tensor([3, 4]))]
    feats, labels = extract_features(enc, batches, pool="token")
    assert enc.training and feats.shape == (5, 16) and labels.tolist() == [0, 1, 2, 3, 4]
    with torch.no_grad():
        assert torch.allclose(feats, enc.eval()(imgs), atol=1e-5)  # the cls token after the final norm
        mean, _ = extract_features(enc, batches, pool="mean")
        assert torch.allclose(mean, enc.forward_features(imgs)[:, 1:].mean(1), atol=1e-5)


# --- the digits DataModule ------------------------------------------------------------------------------------
def test_digits_are_28x28_ten_classes_normalised_like_fashion_mnist():
    images, labels = digits_arrays()
    assert images.shape == (1797, 28, 28) and images.dtype == np.uint8 and set(labels.tolist()) == set(range(10))
    data = DigitsClassification()
    data.prepare_data()
    data.setup("fit")
    assert data.num_classes == 10 and data.in_chans == 1
    assert len(data.train_set) + len(data.val_set) == 1797 and len(data.val_set) == 450
    img, label = data.val_set[0]
    assert img.shape == (1, 28, 28) and 0 <= label < 10
    train_idx, test_idx = data.split_indices()
    raw = torch.from_numpy(images[test_idx[0]]).float() / 255
    assert torch.allclose(img[0], (raw - MEAN[0]) / STD[0], atol=1e-5)  # eval: no resize, FMNIST mean/std
    imgs, targets = next(iter(data.train_dataloader()))
    assert imgs.shape == (128, 1, 28, 28) and targets.dtype == torch.int64


def test_digits_split_is_fixed_stratified_and_disjoint():
    a, b = DigitsClassification().split_indices(), DigitsClassification().split_indices()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # deterministic
    train, test = a
    assert not set(train) & set(test) and len(train) + len(test) == 1797
    labels = digits_arrays()[1]
    for cls in range(10):
        assert (labels[test] == cls).sum() == round(0.25 * (labels == cls).sum())
    other = DigitsClassification(split_seed=1).split_indices()[1]
    assert not np.array_equal(other, test)
    assert np.array_equal(stratified_split(labels, 0.25, 0)[1], test)
    with pytest.raises(ValueError, match="test_fraction"):
        DigitsClassification(test_fraction=1.0)


# --- statistics and verdicts on known numbers -----------------------------------------------------------------
def _scores(method: str, values: list[float], metric: str = "linprobe") -> list[Score]:
    return [Score(method, seed, metric, v) for seed, v in enumerate(values)]


def test_summary_is_mean_and_sample_std():
    s = summarize(_scores("mae", [70.0, 71.0, 72.0]) + _scores("sgmae", [80.0]))
    assert (s[("mae", "linprobe")].mean, s[("mae", "linprobe")].std, s[("mae", "linprobe")].n) == (71.0, 1.0, 3)
    assert math.isnan(s[("sgmae", "linprobe")].std)


def test_paired_t_test_known_answer_and_no_difference_verdict():
    # per-seed differences 1, 2, 3: mean 2, std 1, t = 2 sqrt(3), 2 dof: p = 1 − t / sqrt(2 + t²) = 1 − sqrt(12/14)
    scores = _scores("mae", [70.0, 71.0, 72.0]) + _scores("sgmae", [71.0, 73.0, 75.0])
    c = paired_comparison(scores, "sgmae", "mae", "linprobe", "SG-MAE", "MAE", "linear probe")
    assert c.diffs == [1.0, 2.0, 3.0] and c.mean == pytest.approx(2.0) and c.std == pytest.approx(1.0)
    assert c.p == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-6)  # 0.0742
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) x std / sqrt(n)
    assert (c.ci_low, c.ci_high) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert c.verdict == ("SG-MAE − MAE, linear probe: +2.00 ± 1.00 points (95 % CI −0.48 to +4.48, p = 0.074, "
                         "n = 3): no difference shown")


def test_significant_difference_is_called_with_its_direction():
    # differences −1.0, −1.1, −0.9: mean −1, std 0.1, t = −10 sqrt(3): p = 1 − sqrt(300/302) = 0.0033
    scores = _scores("mae", [70.0, 71.0, 72.0]) + _scores("sgmae", [69.0, 69.9, 71.1])
    c = paired_comparison(scores, "sgmae", "mae", "linprobe", "SG-MAE", "MAE", "linear probe")
    assert c.p == pytest.approx(1 - math.sqrt(300 / 302), rel=1e-5)
    assert c.verdict.endswith("SG-MAE lower (p < 0.05, but n = 3: see the caveats)")
    assert c.verdict.startswith("SG-MAE − MAE, linear probe: −1.00 ± 0.10 points")
    assert headline([c], "SG-MAE", "MAE").startswith("SG-MAE does not beat MAE: it is lower at p < 0.05")
    up = paired_comparison(_scores("mae", [69.0, 69.9, 71.1]) + _scores("sgmae", [70.0, 71.0, 72.0]),
                           "sgmae", "mae", "linprobe", "SG-MAE", "MAE", "linear probe")
    assert headline([up], "SG-MAE", "MAE").startswith("SG-MAE beats MAE at p < 0.05 on 1 of 1 metrics")


def test_degenerate_comparisons_say_what_cannot_be_tested():
    same = paired_comparison(_scores("mae", [70.0, 71.0]) + _scores("sgmae", [70.5, 71.5]), "sgmae", "mae", "linprobe")
    assert math.isnan(same.p) and same.std == 0 and "no t-test possible" in same.verdict
    one = paired_comparison(_scores("mae", [70.0]) + _scores("sgmae", [71.0, 75.0]), "sgmae", "mae", "linprobe")
    assert one.seeds == [0] and "n = 1: no test possible" in one.verdict
    nothing = paired_comparison(_scores("mae", [70.0]), "sgmae", "mae", "linprobe")
    assert nothing.n == 0 and "no seed" in nothing.verdict
    noisy = paired_comparison(_scores("mae", [70.0, 71.0, 72.0]) + _scores("sgmae", [70.5, 70.0, 72.9]),
                              "sgmae", "mae", "linprobe")
    assert headline([noisy], "SG-MAE", "MAE").startswith("SG-MAE does not beat MAE: no metric differs")


def test_caveats_give_the_threshold_of_three_seeds():
    text = " ".join(caveats(3, 8))
    assert "2 degrees of freedom" in text and "2.48 × the std" in text and "t > 4.30" in text
    assert "probability 34%" in text  # 1 − 0.95^8


def _record(method: str, seed: int, scores: dict[str, float], switch: int | None, gaps: list[float]) -> RunRecord:
    curves = {"analysis/gap/enc3": dict(enumerate(gaps)), "analysis/kl_prev/enc3": {e: 0.1 / e for e in range(1, 4)}}
    return RunRecord(method, seed, Path(f"/runs/{method}/{seed}"), Path(f"/runs/{method}/{seed}/last.ckpt"), scores,
                     curves, switch, "config start_epoch" if switch is not None else "", None)


def test_table_and_plots_from_synthetic_records(tmp_path):
    evals = ["linprobe", "knn"]
    records = []
    for seed, (m, s, a) in enumerate([(70.0, 71.0, 70.0), (71.0, 73.0, 70.5), (72.0, 75.0, 72.5)]):
        records.append(_record("mae", seed, {"linprobe": m, "knn": 60.0 + seed}, None, [0.1, 0.2, 0.3, 0.4]))
        records.append(_record("sgmae", seed, {"linprobe": s, "knn": 60.0 + seed}, 2, [0.1, 0.2, 0.35, 0.5]))
        records.append(_record("sgmae_auto", seed, {"linprobe": a, "knn": 61.0 + seed}, 2 + seed % 2,
                               [0.1, 0.2, 0.3, 0.3]))
    methods = ["mae", "sgmae", "sgmae_auto"]
    table = table_markdown(records, methods, evals, [0, 1, 2], "tiny", "cmd", 3, ["results.csv"])
    assert "| linear probe (Fashion-MNIST) | 71.00 ± 1.00 | 73.00 ± 2.00 | 71.00 ± 1.32 |" in table
    assert ("SG-MAE − MAE, linear probe (Fashion-MNIST): +2.00 ± 1.00 points (95 % CI −0.48 to +4.48, p = 0.074, "
            "n = 3): no difference shown") in table
    assert "SG-MAE auto − MAE, k-NN (Fashion-MNIST): +1.00 ± 0.00 points" in table  # same on every seed
    assert "**SG-MAE does not beat MAE: no metric differs at p < 0.05 (n = 3 seeds)" in table
    assert "| SG-MAE auto | seed 0: 2, seed 1: 3, seed 2: 2 |" in table and "| MAE | seed 0: never" in table
    assert "| SG-MAE | 0.5 ± 0 | 0.0333 ± 0 |" in table  # block 3 at the end: gap, KL
    assert "What n = 3 can say" in table and "Partial" not in table
    partial = table_markdown(records[:4], methods, evals, [0, 1, 2], "tiny", "cmd", 3, [])
    assert "**Partial**: 5 of 9 runs still missing" in partial and "n = 1: no test possible" in partial
    for plot, path in ((plot_accuracy, tmp_path / "a.png"), (plot_clustering, tmp_path / "c.png")):
        plot(records, methods, evals if plot is plot_accuracy else 3, path)
        assert Image.open(path).size[0] > 600


def test_online_probe_curve_says_whether_the_probe_stopped_moving():
    records = [_record("mae", seed, {}, None, [0.1]) for seed in (0, 1)]
    records[0].curves["val/probe_acc"] = {1: 0.50, 2: 0.60, 3: 0.61}
    records[1].curves["val/probe_acc"] = {1: 0.52, 2: 0.62, 3: 0.62}
    lines = probe_curve_lines(records, ["mae", "sgmae"])
    assert "| MAE | 2 | 51.00 | 61.00 | 61.50 | +0.50 |" in lines  # means over seeds; SG-MAE logged nothing
    assert not any(line.startswith("| SG-MAE") for line in lines)
    assert probe_curve_lines([_record("mae", 0, {}, None, [0.1])], ["mae"]) == []


def test_curve_recorder_copies_the_analysis_metrics_with_the_epochs_completed(tmp_path):
    class Logger:
        def __init__(self):
            self.seen = []

        def log_metrics(self, metrics, step=None):
            self.seen.append((metrics, step))

    class Trainer:
        is_global_zero, global_step, current_epoch = True, 0, 0
        default_root_dir = str(tmp_path)
        logger = None

    trainer, logger = Trainer(), Logger()
    trainer.loggers = [logger]
    CurveRecorder().setup(trainer, None, "fit")  # no logger with a save_dir: run_dir = default_root_dir
    logger.log_metrics({"analysis/gap/enc3": 0.1, "train/loss": 1.0}, step=0)
    trainer.global_step, trainer.current_epoch = 5, 1
    logger.log_metrics({"analysis/gap/enc3": 0.3, "mask/start_epoch": 2.0, "mask/informed": 1.0}, step=5)
    logger.log_metrics({"analysis/gap/enc3": 0.4}, step=5)  # a resumed run logs it again: the last one counts
    assert len(logger.seen) == 3  # the logger still gets everything
    assert read_curves(tmp_path) == {"analysis/gap/enc3": {0: 0.1, 2: 0.4}, "mask/start_epoch": {2: 2.0}}
    assert read_curves(tmp_path / "nowhere") == {}


def test_switch_epoch_is_the_logged_one_and_never_when_past_the_last_epoch(tmp_path):
    run = run_paths(tmp_path, "sgmae_auto", 0)  # no checkpoint is read when the switch was logged
    assert switch_epoch(run, {"mask/start_epoch": {4: 3.0, 5: 3.0}}, 6) == (3, "logged mask/start_epoch")
    assert switch_epoch(run, {"mask/start_epoch": {3: 3.0}}, 3) == (None, "logged mask/start_epoch 3: after the "
                                                                            "last epoch")


def test_batch_limits_that_limit_nothing_are_refused():
    # The Trainer types limit_*_batches `float | int`: jsonargparse reads "2" as 2.0, i.e. 200 % of the batches.
    assert "200% of the batches" in batch_limit_problem(["--trainer.limit_train_batches", "2"])
    assert batch_limit_problem(["--trainer.limit_val_batches=1"]) is not None
    assert batch_limit_problem(["--trainer.limit_val_batches", "0.05", "--trainer.max_epochs", "2"]) is None


# --- the whole command, tiny budget -------------------------------------------------------------------------
# Two steps of 32 images per pretraining epoch, four of 16 in the downstream runs. `--trainer.limit_*_batches` take
# fractions here (jsonargparse reads `2` as 200 %): 1 validation batch of 32 in pretraining; 21 batches of 16 on
# Fashion-MNIST (625 x 0.035) and 1 on the 450 digits (29 x 0.035) downstream, whose runs skip W&B (the runner's own
# end-to-end test covers it).
QUICK = "--data.init_args.num_workers 0 --trainer.num_sanity_val_steps 0 --trainer.enable_progress_bar false " \
        "--trainer.enable_model_summary false"
TINY = ["--epochs", "3", "--train_subset", "64", "--methods", "mae", "sgmae",
        "--pretrain_args", f"{QUICK} --data.init_args.batch_size 32 --trainer.limit_val_batches 0.005",
        "--eval_args", f"{QUICK} --data.init_args.batch_size 16 --trainer.max_epochs 1 "
                       "--data.init_args.train_subset 64 --trainer.limit_val_batches 0.035 --trainer.logger false",
        "--knn_train_subset", "256", "--knn_test_subset", "128"]


@pytest.mark.slow
def test_the_evidence_command_end_to_end_at_a_tiny_budget(tmp_path):
    if not Path("/usr/share/datasets/fashion-mnist").is_dir() and not (REPO / "data" / "FashionMNIST").is_dir():
        pytest.skip("Fashion-MNIST is not installed (make data)")
    out, runs = tmp_path / "out", tmp_path / "runs"
    command = [sys.executable, "-m", "benchmarks.sgmae_evidence", "--seeds", "0", "1", "--out", str(out),
               "--runs", str(runs), *TINY]
    env = {**__import__("os").environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    table = (out / "table.md").read_text()
    for metric in ("linear probe (Fashion-MNIST)", "converged linear probe (Fashion-MNIST)", "k-NN (Fashion-MNIST)",
                   "fine-tune (Fashion-MNIST)", "transfer linear probe (digits)"):
        assert f"| {metric} | " in table and f"SG-MAE − MAE, {metric}: " in table
    assert "| SG-MAE | seed 0: 2, seed 1: 2 | config start_epoch |" in table
    assert "What n = 2 can say" in table and "Partial" not in table
    rows = list(csv.DictReader((out / "results.csv").open()))
    evals = {(r["method"], r["seed"], r["metric"]) for r in rows if r["kind"] == "eval"}
    assert len(evals) == 2 * 2 * 5 and all(0.0 <= float(r["value"]) <= 100.0 for r in rows if r["kind"] == "eval")
    gap = [r for r in rows if r["kind"] == "curve" and r["metric"] == "analysis/gap/enc3"]
    assert sorted({int(r["epoch"]) for r in gap}) == [0, 1, 2, 3] and len(gap) == 4 * 4  # before + 3 epochs, 4 runs
    for png in ("accuracy.png", "clustering.png"):
        assert Image.open(out / png).size[0] > 600
    comparisons = list(csv.DictReader((out / "comparisons.csv").open()))
    assert {(c["comparison"], c["n"]) for c in comparisons} == {("sgmae-mae", "2")}

    # again: every run and evaluation is reused, nothing is trained
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
    assert again.stdout.count("final checkpoint exists, skipped") == 4 and again.stdout.count("(cached)") == 20
    cache = json.loads(next(runs.rglob("evidence.json")).read_text())
    assert set(cache["evals"]) == {"linprobe", "logreg", "knn", "finetune", "digits"}
