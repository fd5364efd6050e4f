"""Training: losses, label maps, manager pretraining, stage switches, pretrained-manager reuse."""

import lightning.pytorch as pl
import pytest
import torch

from datamodules import ImageSignal
from lightning_inr import INR, FieldOutput, ImageTask, NeuralExperts, SDFTask, SignalFit, Stage
from lightning_inr.label_maps import grid_labels, make_label_map
from lightning_inr.losses import manager_pretraining_loss, q_weighted_mse, siren_sdf_terms
from lightning_inr.stages import set_trainable, stage_index, validate_stages


def tiny_experts(k: int = 4) -> NeuralExperts:
    torch.manual_seed(0)
    return NeuralExperts(n_experts=k, encoder_width=16, expert_width=16, manager_encoder_width=32,
                         manager_width=32, encoder_layers=2, expert_layers=1, manager_encoder_layers=2,
                         manager_layers=2)


def test_q_weighted_mse_matches_its_definition():
    preds, target, q = torch.randn(3, 10, 2), torch.randn(10, 2), torch.rand(10, 3).softmax(-1)
    terms = (q[n, k] * (preds[k, n, c] - target[n, c]) ** 2 for k in range(3) for n in range(10) for c in range(2))
    expected = sum(terms)
    assert q_weighted_mse(preds, target, q).item() == pytest.approx(expected.item() / 60, rel=1e-5)


def test_label_maps():
    coords = torch.rand(400, 2) * 2 - 1
    rnd = make_label_map("random", coords, 4, seed=1)
    assert rnd.shape == (400,) and set(rnd.tolist()) == {0, 1, 2, 3}
    assert torch.equal(rnd, make_label_map("random", coords, 4, seed=1))  # reproducible
    grid = grid_labels(coords, 4)
    lo, hi = coords.min(0).values, coords.max(0).values
    upper = (coords >= lo + (hi - lo) / 2).long()  # which half along each axis
    assert torch.equal(grid, upper[:, 0] * 2 + upper[:, 1])
    values = torch.cat([torch.zeros(200, 3), torch.ones(200, 3)])
    km = make_label_map("kmeans", coords, 2, values=values)
    assert len(set(km[:200].tolist())) == 1 and km[0] != km[-1]
    assert make_label_map("none", coords, 4) is None
    with pytest.raises(ValueError, match="kmeans"):
        make_label_map("kmeans", coords, 4)


def test_manager_pretraining_learns_its_label_map():
    net = tiny_experts()
    coords = torch.rand(128, 2) * 2 - 1
    labels = grid_labels(coords, 4)
    before = (net.manager_logits(coords).argmax(-1) == labels).float().mean()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        manager_pretraining_loss(net.manager_logits(coords), labels).backward()
        opt.step()
    accuracy = (net.manager_logits(coords).argmax(-1) == labels).float().mean()
    assert before < 0.6 and accuracy > 0.95


def test_stage_schedule_and_validation():
    stages = [Stage("m", 0.1, "all", "manager"), Stage("a", 0.8), Stage("e", 1.0, "experts")]
    validate_stages(stages)
    assert [stage_index(stages, s, 100) for s in (0, 9, 10, 79, 80, 99)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="until"):
        validate_stages([Stage("a", 0.5), Stage("b", 0.4), Stage("c", 1.0)])
    with pytest.raises(ValueError, match="last stage"):
        validate_stages([Stage("a", 0.5)])


def test_set_trainable_freezes_exactly_the_right_parameters():
    net = tiny_experts()
    set_trainable(net, "experts")
    groups = net.parameter_groups()
    assert all(p.requires_grad for p in groups["experts"])
    for name in ("expert_encoder", "manager_encoder", "manager"):
        assert not any(p.requires_grad for p in groups[name])
    set_trainable(net, "manager")
    assert all(p.requires_grad for g in ("manager", "manager_encoder") for p in groups[g])
    assert not any(p.requires_grad for g in ("experts", "expert_encoder") for p in groups[g])


class StageProbe(pl.Callback):
    """Records, before each step, what trains and how much optimizer state exists."""

    def __init__(self):
        self.records = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        opt = trainer.optimizers[0]
        groups = module.network.parameter_groups()
        self.records.append({
            "step": trainer.global_step,
            "stage": module.current_stage.name,
            "trainable": {g: all(p.requires_grad for p in ps) for g, ps in groups.items()},
            "states": len(opt.state),
            "adam_steps": max((float(s["step"]) for s in opt.state.values()), default=0),
            "lr": opt.param_groups[0]["lr"],
        })


def tiny_image(tmp_path):
    import numpy as np
    from PIL import Image

    path = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((12, 12, 3)) * 255).astype("uint8")).save(path)
    return ImageSignal(str(path), downsample=1, steps_per_epoch=10)


def fit(module, data, steps, tmp_path, callbacks=()):
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
                         callbacks=list(callbacks))
    trainer.fit(module, datamodule=data)
    return trainer


def test_stage_switch_freezes_and_resets_the_optimizer(tmp_path):
    probe = StageProbe()
    stages = [Stage("manager", 0.2, "all", "manager"), Stage("all", 0.6), Stage("experts", 1.0, "experts")]
    module = SignalFit(tiny_experts(), ImageTask(lpips=False), stages, lr=1e-3, lr_gamma=0.9, write_outputs=False)
    fit(module, tiny_image(tmp_path), 10, tmp_path, [probe])
    r = probe.records
    assert [x["stage"] for x in r] == ["manager"] * 2 + ["all"] * 4 + ["experts"] * 4
    # experts get no gradient while the manager pretrains: the optimizer holds no state for them
    n_expert_params = len(module.network.parameter_groups()["experts"])
    n_all = len(list(module.network.parameters()))
    assert r[1]["states"] == n_all - n_expert_params
    # the first step of each new stage starts from fresh Adam state (step counter 1)
    assert r[2]["adam_steps"] == 1 and r[6]["adam_steps"] == 1 and r[5]["adam_steps"] == 4
    assert r[6]["states"] == n_expert_params  # only the experts train in the last stage
    assert r[6]["trainable"] == {"expert_encoder": False, "experts": True, "manager_encoder": False, "manager": False}
    assert r[2]["trainable"] == dict.fromkeys(r[2]["trainable"], True)
    # the learning rate carries over: one exponential decay per step, never reset
    assert [x["lr"] for x in r] == pytest.approx([1e-3 * 0.9 ** (i + 1) for i in range(10)])


def test_experts_stage_leaves_the_manager_untouched(tmp_path):
    stages = [Stage("all", 0.5), Stage("experts", 1.0, "experts")]
    module = SignalFit(tiny_experts(), ImageTask(lpips=False), stages, lr=1e-3, label_map="none", write_outputs=False)
    probe = StageProbe()

    class Snapshot(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 3:
                self.before = {k: v.clone() for k, v in pl_module.network.state_dict().items()}

    snap = Snapshot()
    fit(module, tiny_image(tmp_path), 6, tmp_path, [probe, snap])
    after = module.network.state_dict()
    for key, value in snap.before.items():
        changed = not torch.equal(value, after[key])
        assert changed == key.startswith("experts."), key


def test_pretrained_manager_is_saved_once_and_reused(tmp_path):
    ckpt = tmp_path / "manager.pt"
    stages = [Stage("manager", 0.5, "all", "manager"), Stage("all", 1.0)]
    first = SignalFit(tiny_experts(), ImageTask(lpips=False), stages, lr=1e-3, manager_checkpoint=str(ckpt),
                      write_outputs=False)
    fit(first, tiny_image(tmp_path), 4, tmp_path)
    assert ckpt.exists()
    saved = torch.load(ckpt, weights_only=True)
    mtime = ckpt.stat().st_mtime_ns
    probe = StageProbe()
    # after loading, only the experts train, so the manager must still equal the saved one at the end
    reuse = [Stage("manager", 0.5, "all", "manager"), Stage("experts", 1.0, "experts")]
    second = SignalFit(tiny_experts(), ImageTask(lpips=False), reuse, lr=1e-3, manager_checkpoint=str(ckpt),
                       write_outputs=False)
    fit(second, tiny_image(tmp_path), 1, tmp_path, [probe])
    assert probe.records[0]["stage"] == "experts"  # pretraining skipped
    assert ckpt.stat().st_mtime_ns == mtime  # reused, not rewritten
    torch.testing.assert_close(second.network.manager.state_dict(), saved["manager"])
    bad = SignalFit(tiny_experts(k=3), ImageTask(lpips=False), stages, manager_checkpoint=str(ckpt),
                    write_outputs=False)
    with pytest.raises(ValueError, match="does not fit"):
        fit(bad, tiny_image(tmp_path), 1, tmp_path)
    assert set(saved) >= {"expert_encoder", "manager_encoder", "manager"}


def test_manager_stage_needs_a_manager():
    from lightning_inr import INR

    with pytest.raises(ValueError, match="manager"):
        SignalFit(INR(encoder_width=8, width=8), ImageTask(), [Stage("m", 0.5, "all", "manager"), Stage("a", 1.0)])


def test_signal_fit_refuses_a_network_that_is_not_a_coordinate_network():
    class Bare(torch.nn.Module):  # a coordinate MLP that says nothing about experts or a manager
        in_dim, out_dim = 2, 3

        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 3)

        def forward(self, coords):
            return self.layer(coords)

    with pytest.raises(TypeError, match=r"Bare is not a CoordinateNetwork.*lacks manager_logits, manager_modules, "
                                        r"n_experts, parameter_groups"):
        SignalFit(Bare(), ImageTask(), [Stage("all", 1.0)], label_map="none")


def test_a_stage_must_train_something_of_the_network():
    from lightning_inr import INR

    with pytest.raises(ValueError, match="stage 'm': train='manager' trains no parameter of INR"):
        SignalFit(INR(encoder_width=8, width=8), ImageTask(), [Stage("m", 0.5, "manager"), Stage("a", 1.0)],
                  label_map="none")


class Sphere(torch.nn.Module):
    """The field scale·(|x| − radius), with the output of a one-expert network (an exact SDF for scale 1)."""

    in_dim, out_dim, n_experts = 3, 1, 1

    def __init__(self, radius: float = 0.5, scale: float = 1.0):
        super().__init__()
        self.radius, self.scale = radius, scale

    def forward(self, coords):
        f = self.scale * (coords.norm(dim=-1, keepdim=True) - self.radius)
        n = coords.shape[0]
        return FieldOutput(f, f.unsqueeze(0), None, f.new_ones(n, 1), torch.zeros(n, dtype=torch.long))


def sphere_batch(n: int = 200, radius: float = 0.5) -> dict:
    gen = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    points = torch.rand(n, 3, generator=gen) * 2.2 - 1.1
    return {"surface": radius * directions, "normals": directions, "points": points,
            "sdf": points.norm(dim=-1) - radius}


def test_siren_sdf_loss_on_known_fields():
    batch, task = sphere_batch(), SDFTask(loss="siren")
    distance = (batch["points"].norm(dim=-1) - 0.5).abs()
    # the exact SDF: no surface, normal or eikonal error; the off-surface term is exp(−100|f|), over all 400 points
    loss, logs = task.training_loss(Sphere(), batch)
    assert logs["sdf_term"] < 1e-6 and logs["normal_term"] < 1e-6 and logs["eikonal_term"] < 1e-5
    inter = (torch.exp(-100 * distance).sum() / 400).item()
    assert logs["inter_term"] == pytest.approx(inter, rel=1e-5)
    assert loss.item() == pytest.approx(1e2 * inter, rel=1e-4, abs=1e-3)
    # twice the SDF: same zero set and normals, ‖∇f‖ = 2 everywhere, so the eikonal term is exactly 1
    loss, logs = task.training_loss(Sphere(scale=2.0), batch)
    assert logs["eikonal_term"] == pytest.approx(1.0, abs=1e-5) and logs["normal_term"] < 1e-6
    inter = (torch.exp(-200 * distance).sum() / 400).item()
    assert loss.item() == pytest.approx(1e2 * inter + 5e1 * 1.0, rel=1e-4)
    # normals pointing inwards: 1 − cos = 2 on each of the 200 surface points, a mean of 1 over the batch
    flipped = {**batch, "normals": -batch["normals"]}
    assert task.training_loss(Sphere(), flipped)[1]["normal_term"] == pytest.approx(1.0, abs=1e-5)
    # a shifted sphere: |f| = 0.1 on the surface, a mean of 0.05 over the batch, weighted 3e3
    assert task.training_loss(Sphere(radius=0.4), batch)[1]["sdf_term"] == pytest.approx(0.05, rel=1e-4)


def test_siren_sdf_terms_weights_and_their_gradients():
    torch.manual_seed(0)
    net = INR(in_dim=3, out_dim=1, encoder_width=16, encoder_layers=1, width=16, n_layers=2)
    batch = sphere_batch(50)
    weights = {"siren_sdf_weight": 1.0, "siren_inter_weight": 2.0, "siren_normal_weight": 3.0,
               "siren_eikonal_weight": 4.0, "siren_inter_alpha": 10.0}
    loss, logs = SDFTask(loss="siren", **weights).training_loss(net, batch)
    expected = sum(w * logs[f"{k}_term"] for k, w in zip(("sdf", "inter", "normal", "eikonal"), (1, 2, 3, 4)))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()  # through ∇f: the eikonal and normal terms reach every layer
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    coords = torch.cat([batch["surface"], batch["points"]]).requires_grad_(True)
    f = net(coords).pred
    (grad,) = torch.autograd.grad(f.sum(), coords)
    terms = siren_sdf_terms(f[:50], grad[:50], batch["normals"], f[50:], grad[50:], alpha=10.0)
    assert {k: v.item() for k, v in terms.items()} == pytest.approx({k: logs[f"{k}_term"] for k in terms}, rel=1e-5)


def test_siren_sdf_loss_is_for_one_network():
    net = NeuralExperts(in_dim=3, out_dim=1, n_experts=2, encoder_width=8, expert_width=8, manager_encoder_width=8,
                        manager_width=8)
    with pytest.raises(ValueError, match="one network.*2 experts.*neural_experts"):
        SDFTask(loss="siren").training_loss(net, sphere_batch(10))
    with pytest.raises(ValueError, match="normals"):
        SDFTask(loss="siren").training_loss(Sphere(), {k: v for k, v in sphere_batch(10).items() if k != "normals"})
    with pytest.raises(ValueError, match="neural_experts\\|siren"):
        SDFTask(loss="eikonal")
