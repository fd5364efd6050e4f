"""The MAE model: shapes, patchify, loss on masked patches only, presets, the mid-layer feature pass."""

from __future__ import annotations

import copy

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


# --- the CPU attention path: same function as timm's fused attention ----------------------------------
def with_timm_attention(model: MaskedAutoencoderViT) -> MaskedAutoencoderViT:
    """A copy of ``model`` whose blocks use timm's own ``Attention`` (fused SDPA on every device)."""
    from timm.layers import Attention as TimmAttention

    twin = copy.deepcopy(model)
    for blk in [*twin.blocks, *twin.decoder_blocks]:
        blk.attn = TimmAttention(blk.attn.qkv.in_features, blk.attn.num_heads, qkv_bias=True)
        assert blk.attn.fused_attn
    twin.load_state_dict(model.state_dict())
    return twin


@pytest.mark.parametrize("bf16", [False, True])
def test_cpu_attention_matches_timm_fused_attention(bf16):
    from timm.layers import Attention as TimmAttention

    from lightning_mae.mae import Attention

    torch.manual_seed(0)
    ours, timm_attn = Attention(64, num_heads=4, qkv_bias=True), TimmAttention(64, num_heads=4, qkv_bias=True)
    timm_attn.load_state_dict(ours.state_dict())
    x = torch.randn(3, 17, 64, requires_grad=True)
    outs, grads = [], []
    for attn in (ours, timm_attn):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = attn(x)
        out.float().square().sum().backward()
        outs.append(out.float())
        grads.append([x.grad.clone(), attn.qkv.weight.grad.clone()])
        x.grad = None
    tol = dict(rtol=3e-2, atol=3e-2) if bf16 else dict(rtol=1e-5, atol=1e-5)
    assert torch.allclose(outs[0], outs[1], **tol)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, **tol)


@pytest.mark.parametrize("bf16", [False, True])
def test_model_loss_and_gradients_match_timm_attention(bf16):
    torch.manual_seed(0)
    model = tiny(in_chans=3)
    twin = with_timm_attention(model)
    imgs, ids = torch.randn(4, 3, 28, 28), random_ids_shuffle(4, 49)
    losses, grads = [], []
    for m in (model, twin):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = m(imgs, ids, len_keep=12).loss
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad for n, p in m.named_parameters()})
    assert losses[0] == pytest.approx(losses[1], rel=1e-2 if bf16 else 1e-6)
    for name, g in grads[0].items():
        ref = grads[1][name]
        # relative to the gradient's scale: bf16 rounds each product to 8 significant bits
        err = (g - ref).norm() / ref.norm().clamp_min(1e-12)
        assert err < (5e-2 if bf16 else 1e-5), name


def test_blocks_keep_timm_block_attributes_and_state_dict_keys():
    model = tiny()
    attn = model.blocks[0].attn
    assert (attn.num_heads, attn.head_dim, attn.scale) == (4, 8, 8**-0.5)
    assert isinstance(attn.qkv, torch.nn.Linear) and isinstance(attn.proj, torch.nn.Linear)
    assert model.state_dict().keys() == with_timm_attention(model).state_dict().keys()


@pytest.mark.parametrize("layer", [0, 1, 3])
def test_one_pass_gives_the_encoder_output_and_the_patch_features(layer):
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=3, num_heads=2,
                                 decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    imgs = torch.randn(2, 1, 28, 28)
    encoded, z = model.features_with_patch_features(imgs, layer)
    with torch.no_grad():
        assert torch.equal(encoded, model.forward_features(imgs))
    assert torch.equal(z, model.patch_features(imgs, layer))
    with pytest.raises(ValueError, match="source_layer=4"):
        model.features_with_patch_features(imgs, 4)
