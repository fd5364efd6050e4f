"""The analysis suite: metrics on constructed inputs with known answers, the re-run of the model's
passes, the ``AnalysisMonitor`` callback in a tiny Trainer, and the ``analyze`` figure command."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from datamodules.pretraining.fashion_mnist import DEBIAN_DIR, MEAN, STD, read_idx
from lightning_mae.analysis.figures import load_images
from lightning_mae.analysis.figures import main as analyze_main
from lightning_mae.analysis.metrics import (
    attention_bipartition_gap,
    attention_distance,
    attention_edges,
    attention_maps,
    attention_nmi,
    bipartition_gap,
    decoder_trace,
    encoder_layer_tokens,
    encoder_trace,
    exploitation_rates,
    feature_variance,
    fourier_amplitude,
    mask_from_ids,
    model_relation_kl,
    model_report,
    patch_attention,
    relation_kl,
    relation_kl_per_layer,
    similarity_variance,
    token_relations,
)
from lightning_mae.analysis.monitor import AnalysisMonitor
from lightning_mae.mae import MaskedAutoencoderViT
from lightning_mae.masking import SelfGuidedMasking, random_ids_shuffle
from lightning_mae.pretrain import MAEPretraining

TINY = dict(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=3, num_heads=2, decoder_embed_dim=16,
            decoder_depth=2, decoder_num_heads=2, mlp_ratio=2.0, norm_pix_loss=True)


def two_clusters(n: int = 16, dim: int = 8, cos: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One image: the first n/2 patches along ``a``, the rest along ``b`` with ``<a, b> = cos``."""
    a = torch.zeros(dim)
    a[0] = 1.0
    b = torch.zeros(dim)
    b[0], b[1] = cos, math.sqrt(1 - cos**2)
    side = torch.arange(n) < n // 2
    return torch.where(side[:, None], a, b)[None], side[None]


# --- embedding geometry -------------------------------------------------------------------------
def test_feature_and_similarity_variance_known_answers():
    z, _ = two_clusters(cos=0.0)
    assert feature_variance(z).item() == pytest.approx(0.5)  # 1 - |mean|^2 with mean (a + b) / 2
    assert similarity_variance(z).item() == pytest.approx(0.25)  # half the entries 1, half 0
    same = torch.randn(1, 1, 8).expand(2, 10, 8) * 3.0  # scale does not matter
    assert torch.allclose(feature_variance(same), torch.zeros(2), atol=1e-6)
    assert torch.allclose(similarity_variance(same), torch.zeros(2), atol=1e-6)


@pytest.mark.parametrize("cos", [0.0, 0.1, -0.5])
def test_bipartition_gap_of_two_clusters(cos):
    z, side = two_clusters(cos=cos)
    # NCut finds the two clusters itself (their similarity is below tau): intra 1, inter cos.
    assert bipartition_gap(z).item() == pytest.approx(1 - cos, abs=1e-5)
    assert bipartition_gap(z, clusters=side).item() == pytest.approx(1 - cos, abs=1e-5)


def test_bipartition_gap_of_identical_embeddings_is_zero():
    z = F.normalize(torch.randn(1, 1, 8), dim=-1).expand(3, 12, 8)
    assert torch.allclose(bipartition_gap(z), torch.zeros(3), atol=1e-5)
    half = (torch.arange(12) < 5)[None].expand(3, -1)
    assert torch.allclose(bipartition_gap(z, clusters=half), torch.zeros(3), atol=1e-5)


def test_token_relations_and_kl():
    z = torch.randn(2, 9, 8)
    p = token_relations(z, 0.1)
    assert torch.allclose(p.sum(-1), torch.ones(2, 9))
    assert relation_kl(p, p).item() == pytest.approx(0.0, abs=1e-6)
    q = torch.full_like(p, 1 / 9)
    expected = (p * (p / q).log()).sum(-1).mean()  # KL to uniform = log N - entropy
    assert relation_kl(p, q).item() == pytest.approx(expected.item(), rel=1e-4)
    assert relation_kl(p, q) > 0
    per_layer = relation_kl_per_layer([p, p], [p, q])
    assert per_layer[0].item() == pytest.approx(0.0, abs=1e-6) and per_layer[1] > 0
    with pytest.raises(ValueError, match="temperature"):
        token_relations(z, 0.0)


def test_fourier_amplitude_known_maps():
    g = 8
    constant = torch.ones(2, g * g, 4)
    rel = fourier_amplitude(constant)
    assert rel.shape == (g // 2 + 1,) and rel[0] == 0
    assert (rel[1:] < -10).all()  # no amplitude at any non-zero frequency
    r, c = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
    checker = (1 + (-1.0) ** (r + c)).flatten()  # 0/2 checkerboard: DC and (pi, pi) only, equal amplitude
    rel = fourier_amplitude(checker[None, :, None].expand(1, -1, 3))
    assert rel[-1].item() == pytest.approx(0.0, abs=1e-5)
    assert (rel[1:-1] < -10).all()
    with pytest.raises(ValueError, match="square grid"):
        fourier_amplitude(torch.ones(1, 10, 2))


# --- attention metrics --------------------------------------------------------------------------
def test_attention_distance_and_nmi_of_identity_and_uniform():
    n = 4  # a 2x2 grid: pair distances 0 (4), 1 (8), sqrt 2 (4) in patch units
    identity = torch.eye(n).expand(2, 3, n, n)
    uniform = torch.full((2, 3, n, n), 1 / n)
    assert attention_distance(identity, patch_size=16).item() == pytest.approx(0.0)
    assert attention_distance(uniform, patch_size=16).item() == pytest.approx(16 * (8 + 4 * math.sqrt(2)) / 16)
    assert attention_nmi(identity).item() == pytest.approx(1.0, abs=1e-6)
    assert attention_nmi(uniform).item() == pytest.approx(0.0, abs=1e-6)
    # Queries attend uniformly within their half: I = log 2, H(Q) = H(K) = log N.
    n = 16
    half = (torch.arange(n)[:, None] < n // 2) == (torch.arange(n)[None] < n // 2)
    blocks = (half.float() / (n // 2))[None, None]
    assert attention_nmi(blocks).item() == pytest.approx(math.log(2) / math.log(n), abs=1e-6)


def test_patch_attention_drops_cls_and_renormalises():
    attn = torch.softmax(torch.randn(2, 2, 5, 5), -1)
    pa = patch_attention(attn)
    assert pa.shape == (2, 2, 4, 4)
    assert torch.allclose(pa.sum(-1), torch.ones(2, 2, 4))
    assert torch.allclose(pa, attn[..., 1:, 1:] / attn[..., 1:, 1:].sum(-1, keepdim=True))


def test_exploitation_rates_known_answers():
    t = 9  # cls + 8 patches
    mask = torch.tensor([[0, 1, 1, 1, 0, 1, 1, 1]], dtype=torch.float)  # 2 visible, 6 masked
    uniform = torch.full((1, 2, t, t), 1 / t)
    per_token = exploitation_rates(uniform, mask)  # the default: uniform attention treats every kind alike
    assert (per_token.visible.item(), per_token.mask.item(), per_token.cls.item()) == pytest.approx((1 / t,) * 3)
    raw = exploitation_rates(uniform, mask, normalization="raw")  # the shares follow the counts
    assert (raw.visible.item(), raw.mask.item(), raw.cls.item()) == pytest.approx((2 / t, 6 / t, 1 / t))
    # Masked queries put 0.3 on cls, 0.3 on the 2 visible patches and 0.4 on the 6 masked ones; visible
    # queries (all on cls) do not count.
    attn = torch.zeros(1, 1, t, t)
    attn[..., 0] = 1.0
    vis_keys, masked_keys = 1 + torch.tensor([0, 4]), 1 + mask[0].nonzero()[:, 0]
    attn[0, 0, masked_keys] = 0.0
    attn[0, 0, masked_keys, 0] = 0.3
    attn[0, 0, masked_keys[:, None], vis_keys] = 0.3 / 2
    attn[0, 0, masked_keys[:, None], masked_keys] = 0.4 / 6
    assert torch.allclose(attn.sum(-1), torch.ones(1, 1, t))
    raw = exploitation_rates(attn, mask, normalization="raw")
    assert (raw.visible.item(), raw.mask.item(), raw.cls.item()) == pytest.approx((0.3, 0.4, 0.3))
    per_token = exploitation_rates(attn, mask)
    assert (per_token.visible.item(), per_token.mask.item(), per_token.cls.item()) == pytest.approx(
        (0.15, 0.4 / 6, 0.3))
    # Per image: each image's shares are divided by its own counts (here 2 and 6, then 6 and 2 visible).
    flipped = 1 - mask
    both = exploitation_rates(uniform.expand(2, -1, -1, -1), torch.cat([mask, flipped]))
    assert (both.visible.item(), both.mask.item()) == pytest.approx((1 / t, 1 / t))
    with pytest.raises(ValueError, match="normalization"):
        exploitation_rates(uniform, mask, normalization="per_key")


def test_attention_gap_known_answers():
    n = 16
    side = torch.arange(n) < n // 2
    within = (side[:, None] == side[None]).float() / (n // 2)  # each patch attends evenly within its half
    attn = torch.zeros(2, 3, 1 + n, 1 + n)
    attn[..., 0, :] = 1 / (1 + n)  # the cls query and key are dropped
    attn[..., 1:, 0] = 0.5  # half of each patch row on cls: renormalised away over the patches
    attn[..., 1:, 1:] = 0.5 * within
    assert torch.allclose(attention_edges(attn), within.expand(2, -1, -1))
    # NCut on the attention graph finds the halves: intra 1/8, inter 0
    assert torch.allclose(attention_bipartition_gap(attn), torch.full((2,), 1 / 8))
    clusters = side[None].expand(2, -1)
    assert torch.allclose(attention_bipartition_gap(attn, clusters), torch.full((2,), 1 / 8))
    # uniform attention: every edge 1/N, no gap for any split
    uniform = torch.full((1, 2, 1 + n, 1 + n), 1 / (1 + n))
    assert attention_bipartition_gap(uniform, clusters[:1]).item() == pytest.approx(0.0, abs=1e-7)
    # the edges are symmetrised: a one-way attention counts half in both directions
    one_way = torch.zeros(1, 1, 1 + n, 1 + n)
    one_way[..., 1:, 1] = 1.0  # every patch attends to patch 0 only
    edges = attention_edges(one_way)
    assert edges[0, 0, 5].item() == edges[0, 5, 0].item() == pytest.approx(0.5)
    assert edges[0, 0, 0].item() == pytest.approx(1.0) and edges[0, 3, 5].item() == 0.0


def test_attention_maps_reproduce_the_blocks_attention():
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(**TINY).eval()
    x = torch.randn(2, 17, TINY["embed_dim"])
    for blk in model.blocks:
        a = attention_maps(blk, x)
        assert a.shape == (2, TINY["num_heads"], 17, 17)
        assert torch.allclose(a.sum(-1), torch.ones(2, TINY["num_heads"], 17), atol=1e-5)
        # attention @ v through the output projection is the block's own attention output
        h = blk.norm1(x)
        v = blk.attn.qkv(h).reshape(2, 17, 3, TINY["num_heads"], -1)[:, :, 2].transpose(1, 2)
        out = blk.attn.proj(blk.attn.norm((a @ v).transpose(1, 2).reshape(2, 17, -1)))
        assert torch.allclose(out, blk.attn(h), atol=1e-5)
        x = blk(x)


# --- the re-run matches the model -----------------------------------------------------------------
def test_traces_reproduce_the_models_outputs():
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(**TINY).eval()
    imgs = torch.randn(3, 1, 16, 16)
    ids = random_ids_shuffle(3, model.num_patches, generator=torch.Generator().manual_seed(1))
    len_keep = 4
    with torch.no_grad():
        out = model(imgs, ids, len_keep)
        features = model.forward_features(imgs)
    enc = encoder_trace(model, imgs, ids[:, :len_keep])
    assert torch.allclose(enc.out, out.latent, atol=1e-5)
    dec = decoder_trace(model, enc.out, ids)
    assert torch.allclose(dec.out, out.pred, atol=1e-5)
    assert torch.allclose(encoder_trace(model, imgs).out, features, atol=1e-5)
    tokens = encoder_layer_tokens(model, imgs)
    assert len(tokens) == TINY["depth"]
    for layer, z in enumerate(tokens, 1):
        assert torch.allclose(F.normalize(z, dim=-1), model.patch_features(imgs, layer), atol=1e-5)
    assert torch.equal(mask_from_ids(ids, len_keep), out.mask)


def test_model_relation_kl_between_two_models():
    torch.manual_seed(0)
    a, b = MaskedAutoencoderViT(**TINY).eval(), MaskedAutoencoderViT(**TINY).eval()
    imgs = torch.randn(2, 1, 16, 16)
    assert all(kl.item() == pytest.approx(0.0, abs=1e-6) for kl in model_relation_kl(a, a, imgs))
    kls = model_relation_kl(a, b, imgs)
    assert len(kls) == TINY["depth"] and all(kl > 0 for kl in kls)


def test_model_report_keys_and_ranges():
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(**TINY).eval()
    imgs = torch.randn(2, 1, 16, 16)
    ids = random_ids_shuffle(2, model.num_patches, generator=torch.Generator().manual_seed(0))
    report = model_report(model, imgs, ids, len_keep=4)
    raw = model_report(model, imgs, ids, len_keep=4, exploitation="raw").scalars
    s = report.scalars
    for i in (1, 2, 3):
        for family in ("sigma_f", "sigma_s", "gap", "gap_attn", "fourier_high", "attn_dist", "attn_nmi"):
            assert math.isfinite(s[f"{family}/enc{i}"])
    for i in (1, 2):
        for family in ("sigma_f", "sigma_s", "mask_var", "attn_dist", "attn_nmi", "exploit_visible"):
            assert math.isfinite(s[f"{family}/dec{i}"])
        total = raw[f"exploit_visible/dec{i}"] + raw[f"exploit_mask/dec{i}"] + raw[f"exploit_cls/dec{i}"]
        assert total == pytest.approx(1.0, abs=1e-5)  # the raw shares
        # per token: the shares divided by 4 visible tokens, 12 mask tokens and 1 cls
        for kind, count in (("visible", 4), ("mask", 12), ("cls", 1)):
            assert s[f"exploit_{kind}/dec{i}"] == pytest.approx(raw[f"exploit_{kind}/dec{i}"] / count, rel=1e-5)
    assert all(0 <= s[f"attn_nmi/enc{i}"] <= 1 for i in (1, 2, 3))
    assert len(report.relations) == 3 and report.relations[0].shape == (2, 16, 16)


# --- the callback ----------------------------------------------------------------------------------
def tiny_module() -> MAEPretraining:
    return MAEPretraining(MaskedAutoencoderViT(**TINY), SelfGuidedMasking(start_epoch=1, source_layer=1),
                          lr=1e-3, warmup_epochs=0.0)


def loader(n: int = 8, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(n, 1, 16, 16, generator=g), torch.zeros(n, dtype=torch.long)),
                      batch_size=4)


def fit(tmp_path: Path, callbacks: list[pl.Callback], epochs: int, val: bool, ckpt_path: str | None = None
        ) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=CSVLogger(tmp_path, name="logs", version=0),
                         callbacks=callbacks, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, log_every_n_steps=1, default_root_dir=tmp_path,
                         num_sanity_val_steps=0)
    trainer.fit(tiny_module(), loader(), loader(seed=1) if val else None, ckpt_path=ckpt_path)
    return trainer


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_analysis_monitor_logs_a_baseline_and_every_epoch(tmp_path):
    monitor = AnalysisMonitor(every_n_epochs=1, num_images=3)
    model_mode = {}

    class ModeProbe(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            model_mode["training"] = pl_module.backbone.training

    fit(tmp_path, [monitor, ModeProbe()], epochs=2, val=True)
    rows = [r for r in read_metrics(tmp_path / "logs" / "version_0" / "metrics.csv") if r.get("analysis/gap/enc3")]
    assert [int(r["step"]) for r in rows] == [0, 2, 4]  # baseline before the first step, then each epoch
    assert not rows[0]["analysis/kl_prev/enc1"]  # nothing to compare the baseline with
    for row in rows[1:]:
        for key in ("analysis/kl_prev/enc1", "analysis/kl_prev/enc3", "analysis/exploit_mask/dec2",
                    "analysis/gap_attn/enc2", "analysis/attn_nmi/enc2", "analysis/sigma_f/dec1",
                    "analysis/mask_var/dec2"):
            assert math.isfinite(float(row[key])), key
        assert float(row["analysis/kl_prev/enc3"]) > 0  # the model moved
    assert torch.equal(monitor.images, loader(seed=1).dataset.tensors[0][:3])  # the first validation images
    assert model_mode["training"] is True  # the check put the backbone back in train mode
    assert monitor.seconds > 0


@pytest.mark.filterwarnings("ignore:.*no `val_dataloader`")
def test_analysis_monitor_without_validation_probes_the_first_training_batch(tmp_path):
    monitor = AnalysisMonitor(every_n_epochs=5, num_images=2, attention=False)
    fit(tmp_path, [monitor], epochs=1, val=False)
    assert torch.equal(monitor.images, loader(seed=0).dataset.tensors[0][:2])
    rows = [r for r in read_metrics(tmp_path / "logs" / "version_0" / "metrics.csv") if r.get("analysis/gap/enc1")]
    assert [int(r["step"]) for r in rows] == [0, 2]  # baseline, then the last epoch (though not a 5th)
    assert "analysis/attn_nmi/enc1" not in rows[0]


def test_analysis_monitor_resumes_its_curve(tmp_path):
    first = AnalysisMonitor(num_images=2)
    trainer = fit(tmp_path / "a", [first], epochs=1, val=True)
    ckpt = tmp_path / "a.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["callbacks"]
    (saved,) = [v for k, v in state.items() if k.startswith("AnalysisMonitor")]
    assert saved["relations"].shape == (3, 2, 16, 16)  # layers, images, N, N

    resumed = AnalysisMonitor(num_images=2)
    fit(tmp_path / "b", [resumed], epochs=2, val=True, ckpt_path=str(ckpt))
    assert torch.equal(resumed.images, first.images)
    rows = [r for r in read_metrics(tmp_path / "b" / "logs" / "version_0" / "metrics.csv")
            if r.get("analysis/gap/enc1")]
    assert [int(r["step"]) for r in rows] == [4]  # no second baseline; epoch 1 compares with epoch 0
    assert math.isfinite(float(rows[0]["analysis/kl_prev/enc1"]))


def test_analysis_monitor_rejects_bad_options():
    with pytest.raises(ValueError, match="every_n_epochs"):
        AnalysisMonitor(every_n_epochs=0)
    with pytest.raises(ValueError, match="mask_ratio"):
        AnalysisMonitor(mask_ratio=1.0)
    with pytest.raises(ValueError, match="exploitation"):
        AnalysisMonitor(exploitation="per_key")


# --- the figure command -----------------------------------------------------------------------------
def save_tiny_checkpoint(path: Path, epoch: int, steps: int, config: dict = TINY) -> Path:
    torch.manual_seed(epoch)
    model = MaskedAutoencoderViT(**config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    imgs = torch.randn(4, config["in_chans"], config["img_size"], config["img_size"])
    for _ in range(steps):
        ids = random_ids_shuffle(4, model.num_patches)
        opt.zero_grad()
        model(imgs, ids, model.num_patches // 4).loss.backward()
        opt.step()
    masking = {"class_path": "lightning_mae.SelfGuidedMasking", "init_args": {"mask_ratio": 0.75, "source_layer": 2}}
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in model.state_dict().items()},
                "mae_config": model.config, "epoch": epoch, "hyper_parameters": {"masking": masking}}, path)
    return path


def image_folder(tmp_path: Path, n: int = 3) -> Path:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        array = (torch.rand(20 + i, 24, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(array).save(folder / ("sub" if i else ".") / f"img{i}.png")
    return folder


def test_load_images_resizes_crops_and_normalises(tmp_path):
    Image.new("RGB", (40, 20), (128, 128, 128)).save(tmp_path / "grey.png")
    imgs = load_images(str(tmp_path), 5, img_size=8, in_chans=3, norm="imagenet")
    assert imgs.shape == (1, 3, 8, 8)  # short side to 8, centre crop
    expected = (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(imgs[0, :, 4, 4], expected, atol=1e-3)
    grey = load_images(str(tmp_path), 5, img_size=8, in_chans=1)  # auto: Fashion-MNIST statistics for grey
    assert torch.allclose(grey, torch.full((1, 1, 8, 8), (128 / 255 - MEAN[0]) / STD[0]), atol=1e-3)


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="Debian's Fashion-MNIST files are not installed")
def test_load_images_from_fashion_mnist():
    imgs = load_images("fashion-mnist", 3, img_size=28, in_chans=1)
    raw = torch.from_numpy(read_idx(DEBIAN_DIR / "t10k-images-idx3-ubyte.gz")[:3].copy()).float() / 255
    assert torch.allclose(imgs[:, 0], (raw - MEAN[0]) / STD[0], atol=1e-6)


def test_analyze_writes_every_figure_and_the_csv(tmp_path):
    ckpts = [save_tiny_checkpoint(tmp_path / "late.ckpt", epoch=3, steps=1),
             save_tiny_checkpoint(tmp_path / "early.ckpt", epoch=0, steps=0)]
    out = tmp_path / "out"
    files = analyze_main([str(c) for c in ckpts] + ["--out", str(out), "--images", str(image_folder(tmp_path)),
                                                     "--num-images", "3", "--device", "cpu"])
    names = {f.name for f in files}
    expected = {"metrics.csv", "fig2_relations.png", "fig3_clustering.png", "fig4_exploitation.png",
                "fig5_informed_masks.png", "fig6_attention.png", "fig7_properties.png", "figIII_clusters.png"}
    assert names == expected
    for name in expected - {"metrics.csv"}:
        with Image.open(out / name) as im:
            assert im.size[0] > 200 and im.size[1] > 200
            assert len(set(im.convert("L").getdata())) > 10  # something was drawn
    rows = read_metrics(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 3]  # sorted by epoch
    assert float(rows[1]["kl_last/enc3"]) == pytest.approx(0.0, abs=1e-6)  # the last is the reference
    assert float(rows[0]["kl_last/enc3"]) > 0
    for key in ("sigma_f/enc1", "sigma_s/dec2", "gap/enc3", "gap_attn/enc3", "exploit_visible/dec1",
                "attn_dist/enc2", "attn_nmi/dec1", "fourier_high/enc3", "mask_var/dec2"):
        assert all(math.isfinite(float(r[key])) for r in rows), key


def test_analyze_exploitation_option_reaches_the_metrics(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "a.ckpt", epoch=0, steps=0)
    rates = {}
    for mode in ("per_token", "raw"):
        analyze_main([str(ckpt), "--out", str(tmp_path / mode), "--images", str(image_folder(tmp_path / mode)),
                      "--num-images", "2", "--device", "cpu", "--exploitation", mode])
        (row,) = read_metrics(tmp_path / mode / "metrics.csv")
        rates[mode] = {k: float(row[f"exploit_{k}/dec1"]) for k in ("visible", "mask", "cls")}
    assert sum(rates["raw"].values()) == pytest.approx(1.0, abs=1e-4)
    # 16 patches at 75%: 4 visible and 12 mask tokens
    assert rates["per_token"]["visible"] == pytest.approx(rates["raw"]["visible"] / 4, rel=1e-3)
    assert rates["per_token"]["mask"] == pytest.approx(rates["raw"]["mask"] / 12, rel=1e-3)
    with pytest.raises(SystemExit):
        analyze_main([str(ckpt), "--out", str(tmp_path / "x"), "--exploitation", "per_key"])


def test_analyze_errors_name_the_file(tmp_path):
    good = save_tiny_checkpoint(tmp_path / "good.ckpt", epoch=0, steps=0)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        analyze_main([str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "o")])
    (tmp_path / "corrupt.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint .*corrupt.ckpt"):
        analyze_main([str(good), str(tmp_path / "corrupt.ckpt"), "--out", str(tmp_path / "o")])
    torch.save({"state_dict": {}, "epoch": 1}, tmp_path / "noconfig.ckpt")
    with pytest.raises(ValueError, match="noconfig.ckpt.*mae_config"):
        analyze_main([str(good), str(tmp_path / "noconfig.ckpt"), "--out", str(tmp_path / "o")])
    other = save_tiny_checkpoint(tmp_path / "wide.ckpt", epoch=1, steps=0, config={**TINY, "embed_dim": 64})
    with pytest.raises(ValueError, match=r"good.ckpt and .*wide.ckpt have different architectures \(embed_dim"):
        analyze_main([str(good), str(other), "--out", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        analyze_main([str(good), "--out", str(tmp_path / "o"), "--images", str(tmp_path / "nowhere")])
