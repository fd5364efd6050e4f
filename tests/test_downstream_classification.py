"""Downstream classification: checkpoint loading (ours and official), the frozen linear probe, the
fine-tuning recipe's layer decay, and `make downstream` end to end on Fashion-MNIST."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from datamodules.classification.fashion_mnist import FashionMNISTClassification
from lightning_mae import MAEPretraining, MaskedAutoencoderViT
from lightning_mae.downstream import runner
from lightning_mae.downstream.checkpoints import load_encoder, read_checkpoint, save_official
from lightning_mae.downstream.encoder import ViTEncoder, scaled_block_indices
from lightning_mae.downstream.finetune import FineTuning
from lightning_mae.downstream.layer_decay import layer_id, param_groups_layer_decay
from lightning_mae.downstream.linear_probe import LinearProbing
from tests.conftest import REPO

TINY = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=4, num_heads=4)
TINY_MAE = dict(TINY, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def tiny_trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


def write_pretraining_ckpt(path: Path, **mae_kwargs) -> MaskedAutoencoderViT:
    """A real MAEPretraining checkpoint (``backbone.*`` + ``mae_config``), as `lightning fit` writes it."""
    mae = MaskedAutoencoderViT(**{**TINY_MAE, **mae_kwargs})
    trainer = tiny_trainer()
    trainer.strategy.connect(MAEPretraining(backbone=mae))
    trainer.save_checkpoint(path)
    return mae


# --- checkpoints -------------------------------------------------------------------------------------
def test_our_pretraining_checkpoint_loads_the_same_encoder(tmp_path):
    mae = write_pretraining_ckpt(tmp_path / "last.ckpt").eval()
    encoder = load_encoder(tmp_path / "last.ckpt").eval()
    assert encoder.config == {k: TINY_MAE[k] for k in encoder.config if k in TINY_MAE} | {"mlp_ratio": 4.0}
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(encoder.forward_features(x), mae.forward_features(x))


def test_official_checkpoint_round_trips(tmp_path):
    mae = MaskedAutoencoderViT(**TINY_MAE).eval()
    save_official(mae.state_dict(), tmp_path / "mae_pretrain.pth")  # the full pretraining model, as published
    state, config = read_checkpoint(tmp_path / "mae_pretrain.pth")
    assert not any(k.startswith(("decoder_", "mask_token")) for k in state)
    assert config["depth"] == 4 and config["patch_size"] == 8 and config["img_size"] == 32
    encoder = load_encoder(tmp_path / "mae_pretrain.pth", num_heads=4).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(encoder.forward_features(x), mae.forward_features(x))
    # ... and back: an encoder's weights saved in the official layout load again, with the same output
    save_official(encoder.state_dict(), tmp_path / "encoder.pth")
    again = load_encoder(tmp_path / "encoder.pth", num_heads=4).eval()
    torch.testing.assert_close(again.forward_features(x), encoder.forward_features(x))


def test_official_finetuned_checkpoint_with_fc_norm_and_head_loads(tmp_path):
    ft = ViTEncoder(**TINY, global_pool="avg")
    state = {**ft.state_dict(), "head.weight": torch.zeros(10, 32), "head.bias": torch.zeros(10)}
    torch.save({"model": state}, tmp_path / "mae_finetuned.pth")
    load_encoder(tmp_path / "mae_finetuned.pth", num_heads=4, global_pool="avg")


def test_mismatched_checkpoint_lists_the_offending_keys(tmp_path):
    state = MaskedAutoencoderViT(**TINY_MAE).state_dict()
    state.pop("blocks.1.attn.qkv.weight")
    state["blocks.0.extra.weight"] = torch.zeros(3)
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        load_encoder(tmp_path / "bad.pth", num_heads=4)
    assert "blocks.1.attn.qkv.weight" in str(err.value) and "blocks.0.extra.weight" in str(err.value)
    assert "bad.pth" in str(err.value)
    # an architecture that does not fit (wider MLP in the checkpoint) names the mis-shaped tensors
    torch.save({"model": ViTEncoder(**TINY).state_dict()}, tmp_path / "ok.pth")
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.fc1\.weight"):
        load_encoder(tmp_path / "ok.pth", num_heads=4, mlp_ratio=2.0)


def test_missing_or_corrupt_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_encoder(tmp_path / "nope.ckpt")
    (tmp_path / "corrupt.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.ckpt"):
        load_encoder(tmp_path / "corrupt.ckpt")
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="not a ViT/MAE encoder checkpoint"):
        load_encoder(tmp_path / "resnet.pth")


def test_positional_embedding_is_resized_for_another_resolution(tmp_path):
    write_pretraining_ckpt(tmp_path / "last.ckpt")
    encoder = load_encoder(tmp_path / "last.ckpt", img_size=64)
    assert encoder.pos_embed.shape == (1, 1 + 64, 32)
    assert encoder(torch.randn(1, 3, 64, 64)).shape == (1, 32)
    # dense heads feed non-square inputs: the grid is resized on the fly
    maps = encoder.forward_intermediates(torch.randn(1, 3, 32, 48), [1, 3])
    assert [m.shape for m in maps] == [(1, 32, 4, 6)] * 2


def test_block_indices_scale_with_depth():
    assert scaled_block_indices(12) == [3, 5, 7, 11]
    assert scaled_block_indices(24) == [7, 11, 15, 23]
    assert scaled_block_indices(4) == [0, 1, 2, 3]


# --- linear probe --------------------------------------------------------------------------------------
class BNPatchEncoder(ViTEncoder):
    """A ViT whose patch projection has a BatchNorm: its running statistics move if the encoder is
    ever run in train mode."""

    def __init__(self) -> None:
        super().__init__(**TINY)
        self.patch_embed.proj = nn.Sequential(self.patch_embed.proj, nn.BatchNorm2d(32))


def separable_images(n_per_class: int = 32, classes: int = 4) -> TensorDataset:
    """Each class is a distinct fixed pattern plus a little noise: features are linearly separable."""
    gen = torch.Generator().manual_seed(0)
    patterns = torch.randn(classes, 3, 32, 32, generator=gen)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    imgs = patterns[labels] + 0.05 * torch.randn(len(labels), 3, 32, 32, generator=gen)
    return TensorDataset(imgs, labels)


@pytest.mark.parametrize("optimizer,lr", [("lars", 50.0), ("sgd", 0.5)])
def test_linear_probe_separates_separable_features_with_a_frozen_encoder(optimizer, lr):
    pl.seed_everything(0)
    encoder = BNPatchEncoder()
    # running statistics that a train-mode pass would overwrite
    encoder.patch_embed.proj[1].running_mean.fill_(0.1)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    model = LinearProbing(encoder=encoder, num_classes=4, optimizer=optimizer, lr=lr, warmup_epochs=1)
    modes = []

    class RecordMode(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append((pl_module.training, pl_module.encoder.training, pl_module.head.training))

    data = separable_images()
    trainer = tiny_trainer(max_epochs=15, callbacks=[RecordMode()])
    trainer.fit(model, DataLoader(data, batch_size=32, shuffle=True, drop_last=True), DataLoader(data, batch_size=64))
    assert float(trainer.callback_metrics["val/acc1"]) == 1.0
    assert set(modes) == {(True, False, True)}  # the head trains; the encoder stays in eval mode
    after = encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the frozen encoder changed"
    assert not any(p.requires_grad for p in model.encoder.parameters())
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimized == {id(p) for p in model.head.parameters()}


def test_linear_probe_head_is_bn_without_affine_and_linear():
    model = LinearProbing(encoder=ViTEncoder(**TINY), num_classes=5)
    bn, linear = model.head
    assert isinstance(bn, nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert linear.weight.std() < 0.02


def test_num_classes_must_match_the_datamodule():
    model = LinearProbing(encoder=ViTEncoder(**TINY), num_classes=5)

    class Data(pl.LightningDataModule):
        num_classes = 7

        def train_dataloader(self):
            return DataLoader(separable_images(), batch_size=8)

    with pytest.raises(ValueError, match="num_classes=5 but the DataModule has 7"):
        tiny_trainer(max_epochs=1).fit(model, datamodule=Data())


def test_a_module_without_checkpoint_or_encoder_is_an_error():
    with pytest.raises(ValueError, match="checkpoint"):
        LinearProbing(num_classes=3)


# --- top-1 / top-5: known answers ------------------------------------------------------------------------
# Ten samples of 3 classes, in batches of 4: 7 of 10 right (4/4, 2/4 and 1/2 per batch). Top-1 accuracy is
# 7/10; the mean of per-class recalls (6/6, 0/2, 1/2: torchmetrics' default "macro") would be 0.5 and the
# mean of per-batch accuracies 2/3.
LABELS = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
SEVEN_OF_TEN = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 2, 0])


def logits_loader(logits: torch.Tensor, labels: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(logits, labels), batch_size=4)


def network_returns_its_input(model: pl.LightningModule, monkeypatch) -> None:
    """The module's network is the identity: a batch's "images" are the logits the metrics see."""
    monkeypatch.setattr(model, "forward", lambda imgs: imgs)


@pytest.mark.parametrize("module", [LinearProbing, FineTuning])
@pytest.mark.parametrize("preds,expected", [
    pytest.param(LABELS, 1.0, id="all-right"),
    pytest.param((LABELS + 1) % 3, 0.0, id="all-wrong"),
    pytest.param(SEVEN_OF_TEN, 0.7, id="7-of-10"),
])
def test_top1_is_the_fraction_of_samples_right(module, preds, expected, monkeypatch):
    pool = "avg" if module is FineTuning else "token"
    model = module(encoder=ViTEncoder(**TINY, global_pool=pool), num_classes=3, global_pool=pool)
    network_returns_its_input(model, monkeypatch)
    loader = logits_loader(F.one_hot(preds, 3).float(), LABELS)
    [val] = tiny_trainer().validate(model, loader, verbose=False)
    [test] = tiny_trainer().test(model, loader, verbose=False)
    assert val["val/acc1"] == pytest.approx(expected, abs=1e-6)
    assert test["test/acc1"] == pytest.approx(expected, abs=1e-6)
    assert "val/acc5" not in val  # top-5 only with more than 5 classes


def ranked_logits(labels: torch.Tensor, ranks: list[int], num_classes: int) -> torch.Tensor:
    """Logits in which sample i's true class has the ``ranks[i]``-th highest score (1 = the top)."""
    logits = torch.zeros(len(labels), num_classes)
    for i, (label, rank) in enumerate(zip(labels.tolist(), ranks)):
        order = [c for c in range(num_classes) if c != label]
        order.insert(rank - 1, label)
        logits[i, order] = torch.arange(num_classes, 0, -1, dtype=torch.float32)
    return logits


def test_top5_counts_the_samples_whose_class_is_among_the_five_best(monkeypatch):
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])
    ranks = [1, 2, 5, 6, 7, 1, 3, 6]  # top-1: 2 of 8; top-5: 5 of 8
    logits = ranked_logits(labels, ranks, 7)
    assert (logits.argsort(-1, descending=True).argsort(-1)[torch.arange(8), labels] + 1).tolist() == ranks
    model = LinearProbing(encoder=ViTEncoder(**TINY), num_classes=7)
    network_returns_its_input(model, monkeypatch)
    [val] = tiny_trainer().validate(model, logits_loader(logits, labels), verbose=False)
    assert val["val/acc1"] == pytest.approx(2 / 8, abs=1e-6)
    assert val["val/acc5"] == pytest.approx(5 / 8, abs=1e-6)


class LogitsData(pl.LightningDataModule):
    num_classes = 3

    def train_dataloader(self) -> DataLoader:
        return logits_loader(F.one_hot(SEVEN_OF_TEN, 3).float(), LABELS)

    val_dataloader = train_dataloader


@pytest.mark.parametrize("val_every", [1, 2], ids=["validated-in-fit", "validated-after-fit"])
def test_runner_reports_the_final_top1_in_percent(tmp_path, monkeypatch, val_every):
    """``run_one`` on a run whose final model gets 7 of 10 right: ``Result.top1`` is 70.0 (percent), from
    the last epoch's validation or, when fit did not validate it, from the validation run after fit."""

    def fake_cli(args):
        model = LinearProbing(encoder=ViTEncoder(**TINY), num_classes=3, optimizer="sgd", lr=0.1, warmup_epochs=0)
        # the logits are the input (with a zero term, so that the training step has a gradient to follow)
        monkeypatch.setattr(model, "forward", lambda imgs: imgs + 0.0 * model.head[1].weight.sum())
        data = LogitsData()
        trainer = tiny_trainer(max_epochs=1, check_val_every_n_epoch=val_every, default_root_dir=tmp_path)
        trainer.fit(model, datamodule=data)
        assert ("val/acc1" in trainer.callback_metrics) == (val_every == 1)
        return SimpleNamespace(trainer=trainer, model=model, datamodule=data)

    monkeypatch.setattr(runner, "cli", fake_cli)
    monkeypatch.setattr(runner, "config_path", lambda dataset, protocol: tmp_path / f"{protocol}_{dataset}.yaml")
    result = runner.run_one("pre.ckpt", "fashion_mnist", None, "linprobe", tmp_path, [])
    assert result.top1 == pytest.approx(70.0, abs=1e-4)
    assert (result.dataset, result.protocol, result.epochs, result.checkpoint) == ("fashion_mnist", "linprobe", 1,
                                                                                   "pre.ckpt")


# --- fine-tuning -------------------------------------------------------------------------------------
def test_layer_ids_follow_the_mae_rule():
    assert layer_id("encoder.cls_token", 4, "encoder.") == 0
    assert layer_id("encoder.patch_embed.proj.weight", 4, "encoder.") == 0
    assert layer_id("encoder.blocks.0.attn.qkv.weight", 4, "encoder.") == 1
    assert layer_id("encoder.blocks.3.mlp.fc2.bias", 4, "encoder.") == 4
    assert layer_id("encoder.fc_norm.weight", 4, "encoder.") == 5
    assert layer_id("head.weight", 4, "encoder.") == 5


def test_layer_decay_groups_have_the_right_scales_and_decay():
    model = FineTuning(encoder=ViTEncoder(**TINY, global_pool="avg"), num_classes=3, layer_decay=0.5)
    groups = param_groups_layer_decay(model, depth=4, weight_decay=0.05, layer_decay=0.5,
                                      encoder_prefix="encoder.", no_weight_decay=model.encoder.no_weight_decay())
    scale = {name: g["lr_scale"] for g in groups for name in g["param_names"]}
    decay = {name: g["weight_decay"] for g in groups for name in g["param_names"]}
    assert set(scale) == {n for n, _ in model.named_parameters()}  # every parameter, once
    assert scale["head.weight"] == 1.0 and scale["encoder.fc_norm.weight"] == 1.0
    assert scale["encoder.blocks.3.attn.qkv.weight"] == 0.5
    assert scale["encoder.blocks.0.attn.qkv.weight"] == 0.5**4
    assert scale["encoder.patch_embed.proj.weight"] == scale["encoder.cls_token"] == 0.5**5
    assert decay["encoder.blocks.0.attn.qkv.weight"] == 0.05 and decay["head.weight"] == 0.05
    assert decay["encoder.blocks.0.attn.qkv.bias"] == decay["encoder.cls_token"] == decay["encoder.pos_embed"] == 0.0


def test_finetune_step_applies_the_scales_and_trains():
    pl.seed_everything(0)
    model = FineTuning(encoder=ViTEncoder(**TINY, global_pool="avg", drop_path_rate=0.1), num_classes=4,
                       lr=1e-3, layer_decay=0.5, warmup_epochs=0)
    data = separable_images(n_per_class=8)
    before = model.encoder.blocks[0].attn.qkv.weight.clone()
    trainer = tiny_trainer(max_epochs=1)
    trainer.fit(model, DataLoader(data, batch_size=8, shuffle=True, drop_last=True), DataLoader(data, batch_size=32))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    imgs, labels = data.tensors  # validated in one batch of 32, after the last step
    with torch.no_grad():
        right = int((model.eval()(imgs).argmax(-1) == labels).sum())
    assert float(trainer.callback_metrics["val/acc1"]) == pytest.approx(right / 32, abs=1e-6)
    assert not torch.equal(before, model.encoder.blocks[0].attn.qkv.weight)  # fine-tuning trains the encoder
    [optimizer] = trainer.optimizers
    base = max(g["initial_lr"] for g in optimizer.param_groups)
    by_name = {n: g["initial_lr"] / base for g in optimizer.param_groups for n in g["param_names"]}
    assert by_name["encoder.blocks.0.attn.qkv.weight"] == pytest.approx(0.5**4)
    assert model.mixup_fn is not None and model.mixup_fn.label_smoothing == 0.1


def test_finetune_builds_drop_path_from_the_checkpoint(tmp_path):
    write_pretraining_ckpt(tmp_path / "last.ckpt")
    model = FineTuning(checkpoint=str(tmp_path / "last.ckpt"), num_classes=3, drop_path=0.2)
    assert model.encoder.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
    assert model.encoder.global_pool == "avg" and model.encoder.fc_norm is not None
    # the checkpoint reloads with weights_only (no pickled modules in the hparams)
    assert "encoder" not in model.hparams or model.hparams["encoder"] is None


# --- the downstream runner -------------------------------------------------------------------------------
def test_make_downstream_requires_a_checkpoint():
    proc = subprocess.run(["make", "-s", "downstream"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "CKPT is required" in proc.stderr
    proc = subprocess.run(["make", "-s", "downstream", "CKPT=/nonexistent.ckpt"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "/nonexistent.ckpt" in proc.stderr


@pytest.mark.slow
def test_downstream_runs_end_to_end_on_fashion_mnist(tmp_path, monkeypatch):
    ckpt = tmp_path / "last.ckpt"
    write_pretraining_ckpt(ckpt, img_size=28, patch_size=7, in_chans=1)
    quick = ["--data.init_args.train_subset", "32", "--data.init_args.batch_size", "16",
             "--data.init_args.num_workers", "0", "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_mae.downstream.runner", "--ckpt", str(ckpt),
         "--out_dir", str(tmp_path / "out"), "--", *quick],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    [run] = list((tmp_path / "out").iterdir())
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert [(r["dataset"], r["protocol"]) for r in rows] == [("fashion_mnist", "linprobe"),
                                                              ("fashion_mnist", "finetune")]
    assert all(row["epochs"] == "1" and row["checkpoint"] == str(ckpt) for row in rows)
    # top-1 is the final model's accuracy, in percent, on the 2 x 16 validated images: recount it with each
    # run's own last checkpoint
    monkeypatch.chdir(tmp_path)  # where the runs looked for the data
    data = FashionMNISTClassification(batch_size=16, num_workers=0, img_size=28, eval_crop_ratio=1.0)
    data.setup("validate")
    batches = [batch for batch, _ in zip(data.val_dataloader(), range(2))]
    for row, module in zip(rows, (LinearProbing, FineTuning)):
        [last] = list((run / f"ckpt0_fashion_mnist_{row['protocol']}").rglob("last.ckpt"))
        model = module.load_from_checkpoint(last, weights_only=True).eval()
        with torch.no_grad():
            right = sum(int((model(imgs).argmax(-1) == labels).sum()) for imgs, labels in batches)
        assert float(row["top1"]) == pytest.approx(100.0 * right / 32, abs=1e-4), (row, right)
    table = (run / "results.md").read_text()
    assert "| fashion_mnist | linprobe |" in table and "| fashion_mnist | finetune |" in table
    assert list((run / "wandb").glob("offline-run-*")), "the results table was not logged to W&B"
    # each run's own checkpoint reloads on its own (head sized from the DataModule, no pickled modules)
    [probe_ckpt] = list((run / "ckpt0_fashion_mnist_linprobe").rglob("last.ckpt"))
    probe = LinearProbing.load_from_checkpoint(probe_ckpt, weights_only=True)
    assert probe.head[1].out_features == 10 and not probe.encoder.training


@pytest.mark.slow
@pytest.mark.parametrize("config,data", [("linprobe_imagenet.yaml", "imagefolder"), ("finetune_cifar10.yaml", "cifar")])
def test_real_dataset_configs_run_on_fixtures(tmp_path, monkeypatch, config, data):
    from lightning_run.cli import cli
    from tests.conftest import EXPERIMENTS
    from tests.test_downstream_data import save_jpeg, write_cifar

    if data == "imagefolder":
        for split in ("train", "val"):
            for cls in ("n01", "n02"):
                for i in range(4):
                    save_jpeg(tmp_path / "data" / split / cls / f"{i}.JPEG", i)
    else:
        write_cifar(tmp_path / "data", 10)
    write_pretraining_ckpt(tmp_path / "last.ckpt")
    monkeypatch.chdir(tmp_path)
    ckpt = str(tmp_path / "last.ckpt")
    run = cli(["fit", "--config", str(EXPERIMENTS / config), "--model.init_args.checkpoint", ckpt,
               "--data.init_args.data_dir", str(tmp_path / "data"), "--data.init_args.img_size", "32",
               "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0", "--trainer.devices", "1",
               "--trainer.precision", "32-true", "--trainer.fast_dev_run", "1"])
    assert run.model.num_classes == (2 if data == "imagefolder" else 10)
    assert torch.isfinite(run.trainer.callback_metrics["train/loss"])
