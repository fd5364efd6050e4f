"""The pretraining LightningModule: lr scaling, schedule, probe, panels, resume."""

from __future__ import annotations

import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mae import MAEPretraining, MaskedAutoencoderViT, MaskPanels, SelfGuidedMasking, mask_panel
from lightning_mae.optim import warmup_cosine
from lightning_mae.panels import OBJECT_COLOR, REST_COLOR, panel_titles
from lightning_mae.pretrain import masks_and_encoder_output
from lightning_run import effective_batch_size


def tiny_module(start_epoch: int | None = 1, **kw) -> MAEPretraining:
    backbone = MaskedAutoencoderViT(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2,
                                    decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    masking = SelfGuidedMasking(start_epoch=start_epoch, hint_start=0.5, hint_end=0.0)
    return MAEPretraining(backbone, masking, warmup_epochs=1, num_classes=kw.pop("num_classes", 2), **kw)


class Data(pl.LightningDataModule):
    def __init__(self, n: int = 32, batch_size: int = 8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.labels = torch.arange(n) % 2
        self.images = torch.randn(n, 1, 16, 16, generator=g) + self.labels[:, None, None, None] * 2.0
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.images, self.labels), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.images, self.labels), batch_size=self.batch_size)


def trainer(tmp_path, **kw) -> pl.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    return pl.Trainer(**{**defaults, **kw})


def test_warmup_cosine():
    assert warmup_cosine(0, 10, 110) == 0.0
    assert warmup_cosine(5, 10, 110) == 0.5
    assert warmup_cosine(10, 10, 110) == 1.0
    assert warmup_cosine(60, 10, 110) == pytest.approx(0.5)
    assert warmup_cosine(110, 10, 110, min_ratio=0.1) == pytest.approx(0.1)


def test_lr_scales_with_the_effective_batch(tmp_path):
    module = tiny_module(blr=1e-3)
    trainer(tmp_path, max_epochs=2, accumulate_grad_batches=2, limit_val_batches=0).fit(module, Data(batch_size=8))
    assert effective_batch_size(module.trainer) == 8 * 1 * 2
    optimizer = module.trainer.optimizers[0]
    assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(1e-3 * 16 / 256)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.95)
    # the MAE reference's weight decay: only 1-D parameters (biases, norms) are exempt, the tokens are decayed
    assert decay_split(module) == reference_decay_split(module.backbone)
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert id(module.backbone.cls_token) in decayed and id(module.backbone.mask_token) in decayed
    assert id(module.backbone.norm.weight) not in decayed and id(module.backbone.blocks[0].attn.qkv.bias) not in decayed
    # 32 images / 8 per batch / 2 accumulation = 2 optimizer steps per epoch; 4 in all; warm-up = 1 epoch
    assert module.trainer.global_step == 4
    scheduler = module.trainer.lr_scheduler_configs[0]
    assert scheduler.interval == "step"
    assert scheduler.scheduler.lr_lambdas[0](1) == pytest.approx(0.5)
    assert scheduler.scheduler.lr_lambdas[0](3) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def reference_decay_split(model: nn.Module) -> tuple[set[int], set[int]]:
    """(decayed, exempt) parameter ids as facebookresearch/mae's main_pretrain.py groups them: timm's
    ``add_weight_decay`` with an empty skip list, which exempts trainable parameters that are 1-D or
    named ``*.bias`` and decays every other trainable one."""
    decay, exempt = set(), set()
    for name, param in model.named_parameters():
        if param.requires_grad:
            (exempt if param.ndim == 1 or name.endswith(".bias") else decay).add(id(param))
    return decay, exempt


def decay_split(module: MAEPretraining) -> tuple[set[int], set[int]]:
    """(decayed, exempt) ids of the backbone's parameters in the module's optimizer (the probe's left out)."""
    backbone = {id(p) for p in module.backbone.parameters()}
    decay, exempt = set(), set()
    for group in module.trainer.optimizers[0].param_groups:
        (decay if group["weight_decay"] > 0 else exempt).update(id(p) for p in group["params"] if id(p) in backbone)
    return decay, exempt


def test_no_weight_decay_tokens_exempts_the_tokens(tmp_path):
    module = tiny_module(no_weight_decay_tokens=True, num_classes=0)
    trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0).fit(module, Data())
    decay, exempt = decay_split(module)
    ref_decay, ref_exempt = reference_decay_split(module.backbone)
    tokens = {id(module.backbone.cls_token), id(module.backbone.mask_token)}
    assert tokens <= ref_decay  # decayed by the reference ...
    assert decay == ref_decay - tokens and exempt == ref_exempt | tokens  # ... and only they move


def test_a_checkpoint_from_before_the_option_resumes_with_its_groups(tmp_path):
    # Before the option existed the tokens were exempt, i.e. today's no_weight_decay_tokens=True groups.
    old = tiny_module(no_weight_decay_tokens=True, num_classes=0)
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    t.fit(old, Data())
    ckpt = tmp_path / "old.ckpt"
    t.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=True)
    del state["hyper_parameters"]["no_weight_decay_tokens"]
    torch.save(state, ckpt)
    resumed = tiny_module(num_classes=0)  # the new default would not fit the saved optimizer state
    with pytest.warns(UserWarning, match="predates `no_weight_decay_tokens`"):
        trainer(tmp_path, max_epochs=2, limit_train_batches=1, limit_val_batches=0).fit(resumed, Data(),
                                                                                          ckpt_path=ckpt)
    assert resumed.hparams.no_weight_decay_tokens and resumed.trainer.global_step == 2
    assert id(resumed.backbone.cls_token) in decay_split(resumed)[1]


def test_probe_sees_detached_features():
    module = tiny_module()
    imgs = torch.randn(4, 1, 16, 16)
    out = module.backbone(imgs, torch.arange(16).expand(4, -1), 4)
    assert out.latent.requires_grad and not module._probe_features(imgs, out.latent).requires_grad
    # the default probes the unmasked image (comparable between MAE and SG-MAE); "visible" the masked pass
    assert module.hparams.probe_features == "full"
    with torch.no_grad():
        assert torch.equal(module._probe_features(imgs, out.latent), module.backbone.forward_features(imgs)[:, 0])
    visible = tiny_module(probe_features="visible")
    feats = visible._probe_features(imgs, out.latent)
    assert feats.shape == (4, 32) and not feats.requires_grad and torch.equal(feats, out.latent[:, 0])


def test_online_probe_accuracy_is_top1_over_images():
    # 3 images of class 0 all right, 1 of class 1 wrong: top-1 is 3/4; the per-class mean would be 1/2
    module = tiny_module(num_classes=2)
    module.val_probe_acc(torch.tensor([[2.0, 0.0]] * 4), torch.tensor([0, 0, 0, 1]))
    assert module.val_probe_acc.compute().item() == pytest.approx(0.75)


@pytest.mark.parametrize("source,layer", [("encoder", 0), ("encoder", 1), ("encoder", 2), ("decoder", 1)])
def test_masks_share_the_probe_pass_and_equal_separate_passes(source, layer):
    # The step's one unmasked pass feeds both the probe and the informed masks: the same bits as two passes.
    torch.manual_seed(0)
    backbone = MaskedAutoencoderViT(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2,
                                    decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    masking = SelfGuidedMasking(start_epoch=1, source=source, source_layer=layer, tau="mean", hint_start=0.5)
    imgs = torch.randn(4, 1, 16, 16)
    for epoch in (0, 1):  # random, then informed masks
        info_shared: dict = {}
        ids, encoded = masks_and_encoder_output(masking, backbone, imgs, epoch, 3,
                                                torch.Generator().manual_seed(7), info_shared)
        info_alone: dict = {}
        expected = masking(imgs, backbone, epoch, 3, torch.Generator().manual_seed(7), info_alone)
        with torch.no_grad():
            assert torch.equal(encoded, backbone.forward_features(imgs))
        assert torch.equal(ids, expected)
        assert info_shared.keys() == info_alone.keys() and (epoch == 0) == (not info_alone)
        assert all(torch.equal(info_shared[k], info_alone[k]) for k in info_alone)
    assert not encoded.requires_grad


class Recorder(pl.Callback):
    def __init__(self) -> None:
        self.seen: dict[int, tuple[bool, float]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen[trainer.current_epoch] = (pl_module.masks_informed, pl_module.hint_ratio)


class StopAfter(pl.Callback):
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


@pytest.mark.slow
def test_resume_keeps_the_masking_schedule(tmp_path):
    full = Recorder()
    trainer(tmp_path, max_epochs=4, callbacks=[full], limit_val_batches=0).fit(tiny_module(start_epoch=2), Data())
    assert full.seen == {0: (False, 0.0), 1: (False, 0.0), 2: (True, 0.5), 3: (True, 0.0)}

    first = Recorder()
    t1 = trainer(tmp_path, max_epochs=4, callbacks=[first, StopAfter(2)], limit_val_batches=0)
    t1.fit(tiny_module(start_epoch=2), Data())
    ckpt = tmp_path / "interrupted.ckpt"
    t1.save_checkpoint(ckpt)
    assert set(first.seen) == {0, 1}
    saved = torch.load(ckpt, weights_only=True)  # plain data only: loadable without trusting pickles
    assert saved["mae_config"]["embed_dim"] == 32 and saved["epoch"] == 2  # the next epoch to run

    resumed = Recorder()
    t2 = trainer(tmp_path, max_epochs=4, callbacks=[resumed], limit_val_batches=0)
    t2.fit(tiny_module(start_epoch=2), Data(), ckpt_path=ckpt)
    assert resumed.seen == {2: full.seen[2], 3: full.seen[3]}  # informed from the first resumed epoch


def two_region_images(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """16x16 images (4x4 patches of 4 px): a bright 2x2-patch square on a dark background, at a different
    place in each image; and the square's patches ``[n, 16]``."""
    imgs, squares = torch.full((n, 1, 16, 16), -20.0), torch.zeros(n, 4, 4, dtype=torch.bool)
    for b in range(n):
        r, c = b % 3, (2 * b) % 3
        imgs[b, :, 4 * r:4 * r + 8, 4 * c:4 * c + 8] = 20.0
        squares[b, r:r + 2, c:c + 2] = True
    return imgs, squares.flatten(1)


def test_mask_panel_is_large_titled_and_shows_the_partition():
    module = tiny_module()
    module.masking = SelfGuidedMasking(start_epoch=1, source_layer=0, tau="mean")  # the patch embedding
    imgs, squares = two_region_images()
    panel = mask_panel(module.backbone, module.masking, imgs, epoch=0, max_epochs=4)
    # 3 rows of 5 tiles, 16 px enlarged x7 (nearest) to 112 px, 2 px padding, under a title strip
    tile, columns = 112, 5
    assert panel_titles(module.masking) == ["input", "random mask", "informed mask", "reconstruction",
                                            "NCut partition"]
    assert panel.shape[2] == columns * (tile + 2) + 2
    header = panel.shape[1] - (3 * (tile + 2) + 2)
    assert 10 <= header <= 40 and (panel[:, :header] < 0.5).any()  # the titles are drawn
    assert 0.0 <= panel.min() and panel.max() <= 1.0
    untitled = mask_panel(module.backbone, module.masking, imgs, epoch=0, max_epochs=4, titles=False)
    assert untitled.shape == (3, 3 * (tile + 2) + 2, columns * (tile + 2) + 2)
    assert torch.equal(untitled, panel[:, header:])
    # the last column: the two regions in the two colours, patch by patch (the square is the object side)
    colors = {OBJECT_COLOR: True, REST_COLOR: False}
    for b in range(3):
        top, left = 2 + b * (tile + 2), 2 + 4 * (tile + 2)
        part = untitled[:, top:top + tile, left:left + tile]
        cells = part[:, tile // 8::tile // 4, tile // 8::tile // 4].reshape(3, 16).T  # one pixel per patch
        seen = [colors[tuple(round(v, 2) for v in rgb.tolist())] for rgb in cells]
        assert seen == squares[b].tolist()
        assert len({tuple(px.tolist()) for px in part.reshape(3, -1).T}) == 2  # two colours, nothing else


def test_informed_masks_log_the_graph_and_warn_once_when_it_is_degenerate(tmp_path):
    module = tiny_module(start_epoch=0)
    module.masking = SelfGuidedMasking(start_epoch=0, tau=-1.0)  # every pair is an edge: a complete graph
    logger = CSVLogger(tmp_path, name="graph")
    with pytest.warns(UserWarning, match=r"nearly complete \(edge density 1.000.*tau=-1.0.*tau: mean") as record:
        trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=0, logger=logger,
                log_every_n_steps=1).fit(module, Data())
    assert sum("NCut graph" in str(w.message) for w in record) == 1  # once, not per epoch or step
    logged = (tmp_path / "graph" / "version_0" / "metrics.csv").read_text()
    for key in ("mask/edge_density", "mask/sim_q10", "mask/sim_q50", "mask/sim_q90"):
        assert key in logged

    calm = tiny_module(start_epoch=0)
    calm.masking = SelfGuidedMasking(start_epoch=0, tau="mean")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*NCut graph.*")
        trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0).fit(calm, Data())


def test_panels_are_png_files_without_wandb(tmp_path):
    logger = CSVLogger(tmp_path, name="csv")
    t = trainer(tmp_path, max_epochs=2, logger=logger, callbacks=[MaskPanels(every_n_epochs=1, num_images=2)],
                limit_train_batches=2, limit_val_batches=1, log_every_n_steps=1)
    t.fit(tiny_module(), Data())
    panels = sorted((tmp_path / "csv" / "version_0" / "panels").glob("*.png"))
    assert [p.name for p in panels] == ["epoch_0000.png", "epoch_0001.png"]
    assert (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().count("mask/informed") == 1


def test_auto_start_switch_is_logged_and_survives_resume(tmp_path):
    def module() -> MAEPretraining:
        m = tiny_module(start_epoch=None)
        # Any movement counts as settled after 2 epochs: the switch is decided at the end of epoch 1.
        m.masking = SelfGuidedMasking(start_epoch="auto", auto_threshold=1e9, auto_min_epoch=2, auto_probe_images=4)
        return m

    first = module()
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    logger = CSVLogger(tmp_path, name="auto")
    trainer(tmp_path, max_epochs=2, limit_val_batches=0, logger=logger, callbacks=[ckpt],
            enable_checkpointing=True).fit(first, Data())
    assert first.masking.switch_epoch == 2 and not first.masking.is_informed(1)  # decided, not yet used
    logged = (tmp_path / "auto" / "version_0" / "metrics.csv").read_text()
    assert "mask/start_epoch" in logged and "mask/relation_kl" in logged

    resumed = module()
    epochs: list[bool] = []
    probe = pl.callbacks.LambdaCallback(on_train_epoch_start=lambda t, m: epochs.append(m.masks_informed))
    trainer(tmp_path, max_epochs=4, limit_val_batches=0, callbacks=[probe]).fit(
        resumed, Data(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.masking.switch_epoch == 2 and epochs == [True, True]  # epochs 2 and 3
    assert torch.equal(resumed.masking.probe_images, first.masking.probe_images)
