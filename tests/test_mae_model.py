"""The MAE model: shapes, patchify, loss on masked patches only, presets, the mid-layer feature pass."""

from __future__ import annotations

import pytest
import torch

from lightning_mae.mae import PRESETS, MaskedAutoencoderViT, mae_vit
from lightning_mae.masking import random_ids_shuffle


def tiny(**kw) -> MaskedAutoencoderViT:
    args = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=4, num_heads=4,
                decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    return MaskedAutoencoderViT(**{**args, **kw})


def test_28x28_one_channel_shapes_and_loss():
    model = tiny()
    imgs = torch.randn(3, 1, 28, 28)
    ids = random_ids_shuffle(3, model.num_patches)
    out = model(imgs, ids, len_keep=12)
    assert model.num_patches == 49
    assert out.pred.shape == (3, 49, 16)
    assert out.latent.shape == (3, 1 + 12, 32)
    assert torch.equal(out.mask.sum(1), torch.full((3,), 37.0))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0


def test_visible_patches_are_the_first_of_ids_shuffle():
    model = tiny()
    ids = random_ids_shuffle(2, 49)
    _, mask = model.forward_encoder(torch.randn(2, 1, 28, 28), ids, 12)
    for b in range(2):
        assert set(torch.nonzero(mask[b] == 0).flatten().tolist()) == set(ids[b, :12].tolist())


def test_patchify_roundtrip_rgb():
    model = tiny(in_chans=3)
    imgs = torch.randn(2, 3, 28, 28)
    patches = model.patchify(imgs)
    assert patches.shape == (2, 49, 48)
    assert torch.equal(model.unpatchify(patches), imgs)
    # patch 1 is the second patch of the first row
    assert torch.equal(patches[0, 1].reshape(4, 4, 3).permute(2, 0, 1), imgs[0, :, 0:4, 4:8])


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_counts_masked_patches_only(norm_pix):
    model = tiny(norm_pix_loss=norm_pix)
    imgs = torch.rand(2, 1, 28, 28)
    target = model.target(imgs)
    if norm_pix:
        assert torch.allclose(target.mean(-1), torch.zeros(2, 49), atol=1e-5)
    mask = torch.zeros(2, 49)
    mask[:, :10] = 1.0
    pred = target.clone()
    pred[:, 10:] += 100.0  # garbage on visible patches is not penalised
    assert model.forward_loss(imgs, pred, mask).item() == pytest.approx(0.0, abs=1e-10)
    pred[:, :10] += 1.0
    assert model.forward_loss(imgs, pred, mask).item() == pytest.approx(1.0, rel=1e-5)


def test_patch_features_stop_at_the_source_layer():
    model = tiny()
    ran = []
    for i, blk in enumerate(model.blocks):
        blk.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
    z = model.patch_features(torch.randn(2, 1, 28, 28), layer=2)
    assert ran == [0, 1]  # the later blocks never run
    assert z.shape == (2, 49, 32) and not z.requires_grad
    assert torch.allclose(z.norm(dim=-1), torch.ones(2, 49), atol=1e-5)


def test_blocks_use_fused_attention():
    assert all(blk.attn.fused_attn for blk in tiny().blocks)


def test_presets_match_the_mae_paper():
    base = mae_vit("base")
    assert (base.patch_embed.proj.out_channels, base.depth, base.blocks[0].attn.num_heads) == (768, 12, 12)
    # ViT-B/16 MAE: 111.65M trainable parameters (the reference also counts its frozen pos-embeds, 0.25M)
    assert sum(p.numel() for p in base.parameters()) == 111_655_680
    assert PRESETS["huge"]["patch_size"] == 14 and PRESETS["large"]["depth"] == 24
    with pytest.raises(ValueError, match="unknown MAE preset"):
        mae_vit("gigantic")


@pytest.mark.parametrize("kwargs, option", [
    ({"img_size": 30, "patch_size": 4}, "patch_size"), ({"embed_dim": 30, "num_heads": 4}, "num_heads"),
])
def test_impossible_shapes_are_rejected(kwargs, option):
    with pytest.raises(ValueError, match=option):
        tiny(**kwargs)


def test_wrong_image_size_names_the_option():
    model = tiny()
    with pytest.raises(ValueError, match="img_size"):
        model(torch.randn(1, 1, 32, 32), random_ids_shuffle(1, 49), 12)
