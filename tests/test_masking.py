"""Masking: random and self-guided informed masks, hints, and the schedule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_mae.mae import MaskedAutoencoderViT
from lightning_mae.masking import (
    SelfGuidedMasking,
    add_hints,
    degenerate_graph,
    graph_stats,
    informed_ids_shuffle,
    ncut_bipartition,
    object_similarity,
    pca_bipartition,
    random_ids_shuffle,
)
from lightning_mae.pretrain import MAEPretraining

GRID = 8  # 8x8 = 64 patches


def two_region_embeddings(batch: int = 4, dim: int = 32, noise: float = 0.05, seed: int = 0):
    """Embeddings of an 8x8 patch grid: a 4x4 'object' square (one direction) on a background
    (an orthogonal direction), plus noise. The square sits at a different place in each image."""
    g = torch.Generator().manual_seed(seed)
    obj_vec, bg_vec = torch.zeros(dim), torch.zeros(dim)
    obj_vec[0], bg_vec[1] = 1.0, 1.0
    z, masks = [], []
    for b in range(batch):
        r, c = b % 4, (3 * b) % 5
        mask = torch.zeros(GRID, GRID, dtype=torch.bool)
        mask[r:r + 4, c:c + 4] = True
        mask = mask.flatten()
        emb = torch.where(mask[:, None], obj_vec, bg_vec) + noise * torch.randn(GRID * GRID, dim, generator=g)
        z.append(F.normalize(emb, dim=-1))
        masks.append(mask)
    return torch.stack(z), torch.stack(masks)


def assert_valid(ids: torch.Tensor, n: int) -> None:
    assert ids.dtype == torch.long and ids.shape[1] == n
    assert torch.equal(ids.sort(dim=1).values, torch.arange(n).expand_as(ids))


def test_random_ids_is_a_permutation_with_exact_ratio():
    ids = random_ids_shuffle(16, 196)
    assert_valid(ids, 196)
    masking = SelfGuidedMasking(mask_ratio=0.75)
    assert masking.len_keep(196) == 49
    assert not torch.equal(ids[0], ids[1])  # independent per image


@pytest.mark.parametrize("partition", [ncut_bipartition, pca_bipartition])
def test_bipartition_recovers_the_two_regions(partition):
    z, obj = two_region_embeddings()
    assert torch.equal(partition(z), obj)  # the smaller, distinct region is the object side


def test_object_similarity_ranks_object_patches_first():
    z, obj = two_region_embeddings()
    s = object_similarity(z, obj)
    assert (s[obj].min() > s[~obj].max()).item()


@pytest.mark.parametrize("partition", ["ncut", "pca"])
@pytest.mark.parametrize("mask_ratio", [0.75, 0.2])
def test_informed_mask_takes_the_object_region_first(partition, mask_ratio):
    z, obj = two_region_embeddings()
    n = z.shape[1]
    len_keep = int(n * (1 - mask_ratio))
    ids = informed_ids_shuffle(z, len_keep, partition=partition)
    assert_valid(ids, n)
    masked = torch.zeros_like(obj).scatter(1, ids[:, len_keep:], True)
    assert (masked.sum(1) == n - len_keep).all()  # the ratio is exact
    if n - len_keep >= obj.sum(1).max():
        assert (masked | ~obj).all()  # the whole object is masked
    else:
        assert (~masked | obj).all()  # every masked patch belongs to the object


@pytest.mark.parametrize("selection", ["random", "lowest_score"])
def test_hints_keep_the_ratio_and_swap_exactly_k(selection):
    z, _ = two_region_embeddings()
    n, len_keep = z.shape[1], 16
    plain = informed_ids_shuffle(z, len_keep)
    hinted = informed_ids_shuffle(z, len_keep, hint_ratio=0.25, hint_selection=selection)
    assert_valid(hinted, n)
    k = round(0.25 * (n - len_keep))
    for b in range(z.shape[0]):
        vis_plain, vis_hint = set(plain[b, :len_keep].tolist()), set(hinted[b, :len_keep].tolist())
        assert len(vis_hint) == len_keep
        assert len(vis_hint - vis_plain) == k  # k hints revealed, k visible patches re-masked
    if selection == "lowest_score":
        # the revealed hints are the least object-like masked patches
        assert set(hinted[0, :len_keep].tolist()) >= set(plain[0, len_keep:len_keep + k].tolist())


def test_add_hints_is_capped_by_the_visible_count():
    ids = torch.arange(10)[None]
    out = add_hints(ids, len_keep=2, num_hints=8)
    assert_valid(out, 10)
    assert set(out[0, :2].tolist()).isdisjoint({0, 1})  # both visible swapped, no more possible


class CountingEncoder:
    """Stands in for the MAE: records which layers the feature pass was asked for."""

    num_patches, depth = GRID * GRID, 6

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.z, _ = two_region_embeddings(batch=2)

    def patch_features(self, imgs, layer):
        self.calls.append(layer)
        return self.z


def test_schedule_switches_at_start_epoch_and_anneals_hints():
    masking = SelfGuidedMasking(mask_ratio=0.75, start_epoch=3, hint_start=0.4, hint_end=0.1)
    encoder, imgs = CountingEncoder(), torch.zeros(2, 1, 8, 8)
    for epoch in range(3):
        assert not masking.is_informed(epoch) and masking.hint_ratio(epoch, 10) == 0.0
        assert_valid(masking(imgs, encoder, epoch, 10), 64)
    assert encoder.calls == []  # no feature pass during the random warm-up
    assert masking.is_informed(3)
    masking(imgs, encoder, 3, 10)
    assert encoder.calls == [3]  # default source layer: depth // 2
    ratios = [masking.hint_ratio(e, 10) for e in range(3, 10)]
    assert ratios[0] == pytest.approx(0.4) and ratios[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(ratios, ratios[1:]))
    assert not SelfGuidedMasking(start_epoch=None).is_informed(10**6)


@pytest.mark.parametrize("kwargs, option", [
    ({"mask_ratio": 1.0}, "mask_ratio"), ({"mask_ratio": 0.0}, "mask_ratio"),
    ({"partition": "kmeans"}, "partition"), ({"hint_start": 1.5}, "hint_start"),
    ({"start_epoch": -1}, "start_epoch"), ({"hint_selection": "best"}, "hint_selection"),
])
def test_impossible_options_are_rejected_by_name(kwargs, option):
    with pytest.raises(ValueError, match=option):
        SelfGuidedMasking(**kwargs)


def test_source_layer_beyond_depth_is_rejected():
    with pytest.raises(ValueError, match="source_layer"):
        SelfGuidedMasking(source_layer=13).layer(12)


# --- start_epoch="auto" -----------------------------------------------------------------------------
class _Encoder(torch.nn.Module):
    """Patch features = a linear map of the pixels: ``scale`` changes the model, hence the relations."""

    num_patches, depth = 16, 2

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 8)

    def patch_features(self, imgs: torch.Tensor, layer: int) -> torch.Tensor:
        patches = imgs.reshape(imgs.shape[0], 16, 4)
        return torch.nn.functional.normalize(self.proj(patches), dim=-1)


def test_auto_start_switches_after_quiet_epochs_and_keeps_its_decision():
    masking = SelfGuidedMasking(start_epoch="auto", auto_threshold=0.01, auto_patience=2, auto_min_epoch=2,
                                hint_start=0.2, hint_end=0.0)
    assert masking.auto and masking.informed_from is None and not masking.is_informed(100)
    assert not masking.settle(0.001, epoch=0)  # one quiet epoch: patience 2 not reached
    assert not masking.settle(0.5, epoch=1)  # a loud one resets the count
    assert not masking.settle(0.001, epoch=2)
    assert masking.settle(0.001, epoch=3)  # second consecutive quiet epoch: informed from epoch 4
    assert masking.switch_epoch == masking.informed_from == 4
    assert [masking.is_informed(e) for e in (3, 4, 5)] == [False, True, True]
    assert masking.hint_ratio(4, max_epochs=9) == pytest.approx(0.2)
    assert masking.hint_ratio(8, max_epochs=9) == pytest.approx(0.0)
    assert not masking.settle(0.0, epoch=4) and masking.switch_epoch == 4  # decided once


def test_auto_start_respects_the_minimum_epoch():
    masking = SelfGuidedMasking(start_epoch="auto", auto_threshold=0.01, auto_min_epoch=3)
    assert not masking.settle(0.0, epoch=0) and not masking.settle(0.0, epoch=1)
    assert masking.settle(0.0, epoch=2) and masking.switch_epoch == 3


def test_relation_drift_is_zero_for_an_unchanged_model_and_positive_after_a_change():
    torch.manual_seed(0)
    model, imgs = _Encoder(), torch.randn(6, 1, 8, 8)
    masking = SelfGuidedMasking(start_epoch="auto", auto_probe_images=4)
    assert masking.needs_probe
    masking.set_probe(imgs, model)
    assert masking.probe_images.shape[0] == 4 and not masking.needs_probe
    assert float(masking.relation_drift(model)) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        model.proj.weight.add_(torch.randn_like(model.proj.weight))
    assert float(masking.relation_drift(model)) > 1e-3
    assert float(masking.relation_drift(model)) == pytest.approx(0.0, abs=1e-6)  # remembers the latest


def test_auto_state_survives_a_state_dict_round_trip():
    torch.manual_seed(0)
    model, imgs = _Encoder(), torch.randn(6, 1, 8, 8)
    masking = SelfGuidedMasking(start_epoch="auto", auto_patience=2)
    masking.set_probe(imgs, model)
    masking.settle(0.0, epoch=0)
    masking.settle(0.0, epoch=1)
    state = masking.state_dict()
    restored = SelfGuidedMasking(start_epoch="auto", auto_patience=2)
    restored.load_state_dict(state)
    assert restored.switch_epoch == 2 and restored.quiet_epochs == 2
    assert torch.equal(restored.probe_images, masking.probe_images)
    assert torch.equal(restored.last_relations, masking.last_relations)


@pytest.mark.parametrize("bad", [{"start_epoch": "soon"}, {"start_epoch": -1}, {"auto_threshold": 0.0},
                                 {"auto_patience": 0}, {"auto_probe_images": 0}, {"relation_temperature": 0.0}])
def test_auto_options_are_validated(bad):
    with pytest.raises(ValueError):
        SelfGuidedMasking(**bad)


def test_ncut_mean_threshold_splits_anisotropic_embeddings():
    """Every pair has cosine > 0.2 (a shared offset), so tau=0.2 gives a complete graph; 'mean' still
    finds the two groups."""
    torch.manual_seed(0)
    base, a, b = torch.zeros(3, 16), torch.zeros(16), torch.zeros(16)
    base[0, 0], a[1], b[2] = 3.0, 1.0, 1.0
    truth = torch.zeros(2, 64, dtype=torch.bool)
    truth[:, :20] = True
    z = torch.where(truth[..., None], a, b) + base[0] + 0.05 * torch.randn(2, 64, 16)
    z = F.normalize(z, dim=-1)
    assert (z @ z.transpose(1, 2)).min() > 0.2
    obj = ncut_bipartition(z, tau="mean")
    assert all(torch.equal(o, t) or torch.equal(o, ~t) for o, t in zip(obj, truth))


# --- the feature source ----------------------------------------------------------------------------
def tiny_mae() -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    return MaskedAutoencoderViT(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=4, num_heads=2,
                                decoder_embed_dim=16, decoder_depth=3, decoder_num_heads=2).eval()


@pytest.mark.parametrize("layer", [0, 2, 3])
def test_decoder_features_are_the_unmasked_decoder_pass(layer):
    model, imgs = tiny_mae(), torch.randn(3, 1, 16, 16)
    ran = []
    for i, blk in enumerate(model.decoder_blocks):
        blk.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
    z = model.decoder_patch_features(imgs, layer)
    assert ran == list(range(layer))  # the later decoder blocks never run
    with torch.no_grad():  # by hand: full encoder, every patch visible (no mask token), then `layer` blocks
        identity = torch.arange(model.num_patches).expand(3, -1)
        x = model.decoder_input(model.forward_features(imgs), identity)
        for blk in model.decoder_blocks[:layer]:
            x = blk(x)
    assert z.shape == (3, 16, 16) and not z.requires_grad
    assert torch.allclose(z, F.normalize(x[:, 1:], dim=-1), atol=1e-6)


def test_decoder_source_makes_the_masks_from_the_decoder_features():
    model, imgs = tiny_mae(), torch.randn(4, 1, 16, 16)
    masking = SelfGuidedMasking(start_epoch=0, source="decoder", source_layer=2, tau="mean")
    ids = masking(imgs, model, epoch=0, generator=torch.Generator().manual_seed(1))
    expected = informed_ids_shuffle(model.decoder_patch_features(imgs, 2), masking.len_keep(16), tau="mean",
                                    hint_ratio=masking.hint_start, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ids, expected)
    assert SelfGuidedMasking(source="decoder").layer(4, decoder_depth=3) == 3  # default: the last decoder block
    assert SelfGuidedMasking(source="decoder").check(model) == 3


def test_encoder_source_is_unchanged():
    """The default source is the encoder, and its masks are exactly those of the encoder's features."""
    model, imgs = tiny_mae(), torch.randn(4, 1, 16, 16)
    for kwargs in ({}, {"source_layer": 1, "tau": "mean"}, {"source_layer": 0, "partition": "pca"}):
        masking = SelfGuidedMasking(start_epoch=0, **kwargs)
        assert masking.source == "encoder"
        info: dict = {}
        ids = masking(imgs, model, epoch=0, generator=torch.Generator().manual_seed(2), info=info)
        layer = masking.source_layer if masking.source_layer is not None else model.depth // 2
        expected = informed_ids_shuffle(model.patch_features(imgs, layer), masking.len_keep(16), masking.partition,
                                        masking.tau, hint_ratio=masking.hint_start,
                                        generator=torch.Generator().manual_seed(2))
        assert torch.equal(ids, expected)
        assert info["partition"].shape == (4, 16)


@pytest.mark.parametrize("source, layer, message", [
    ("decoder", 4, r"source_layer=4 exceeds the decoder depth 3 \(source='decoder'\): use 0 to 3"),
    ("encoder", 5, r"source_layer=5 exceeds the encoder depth 4"),
])
def test_source_layer_is_checked_against_its_source(source, layer, message):
    masking = SelfGuidedMasking(source=source, source_layer=layer)
    with pytest.raises(ValueError, match=message):
        masking.check(tiny_mae())
    with pytest.raises(ValueError, match=message):
        MAEPretraining(tiny_mae(), masking)  # at construction, not at start_epoch
    with pytest.raises(ValueError, match="source must be 'encoder' or 'decoder'"):
        SelfGuidedMasking(source="middle")


# --- the NCut graph's statistics ---------------------------------------------------------------------
def test_graph_stats_known_answers():
    z, obj = two_region_embeddings(batch=2, noise=0.0)  # cosine 1 within a region, 0 across
    n, inside = 64, 16
    stats = graph_stats(z @ z.transpose(1, 2), tau=0.5)
    pairs_within = inside * (inside - 1) + (n - inside) * (n - inside - 1)
    assert stats["edge_density"].item() == pytest.approx(pairs_within / (n * (n - 1)))
    # 3072 of the 4032 off-diagonal pairs have similarity 1, the rest 0: q10 = 0, q50 = q90 = 1
    assert [stats[k].item() for k in ("sim_q10", "sim_q50", "sim_q90")] == pytest.approx([0.0, 1.0, 1.0], abs=1e-6)
    assert not degenerate_graph(stats["edge_density"].item())
    complete = graph_stats(z @ z.transpose(1, 2), tau=-0.5)
    assert complete["edge_density"].item() == 1.0 and degenerate_graph(1.0) and degenerate_graph(0.01)


def test_informed_masks_report_the_graph_they_cut():
    z, obj = two_region_embeddings()
    info: dict = {}
    ids = informed_ids_shuffle(z, 16, tau=0.2, info=info)
    assert torch.equal(ids, informed_ids_shuffle(z, 16, tau=0.2))  # asking for the info changes nothing
    assert torch.equal(info["partition"], obj) and torch.equal(info["partition"], ncut_bipartition(z, 0.2))
    assert {k: v.item() for k, v in info.items() if k != "partition"} == pytest.approx(
        {k: v.item() for k, v in graph_stats(z @ z.transpose(1, 2), 0.2).items()})
    pca_info: dict = {}
    informed_ids_shuffle(z, 16, partition="pca", info=pca_info)
    assert set(pca_info) == {"partition"}  # no graph to describe
