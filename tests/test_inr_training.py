"""Training: losses, label maps, the manager phase, stage switches, pretrained-manager reuse, the shipped
manager, SIREN's SDF loss."""

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import Logger

from datamodules import ImageSignal
from lightning_inr import INR, FieldOutput, ImageTask, NeuralExperts, SDFTask, SignalFit, Stage
from lightning_inr.label_maps import grid_labels, make_label_map
from lightning_inr.losses import manager_pretraining_loss, q_weighted_mse, siren_sdf_terms
from lightning_inr.manager_pretraining import (
    DEFAULT_IMAGE_MANAGER,
    MANAGERS,
    build_image_manager,
    load_manager,
    main,
    pretrain_manager,
    resolve_manager_checkpoint,
    save_manager,
)
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


def test_pretrain_manager_is_a_plain_function_with_its_own_optimizer():
    net = tiny_experts()
    set_trainable(net, "experts")  # whatever the caller had frozen is restored at the end
    flags = [p.requires_grad for p in net.parameters()]
    experts = {k: v.clone() for k, v in net.experts.state_dict().items()}
    coords = torch.rand(128, 2) * 2 - 1
    labels = grid_labels(coords, 4)
    logged = []
    result = pretrain_manager(net, coords, labels, steps=60, lr=3e-3, lr_gamma=0.99, log_every=20,
                              on_log=lambda step, m: logged.append((step, m)))
    assert result["steps"] == 60 and result["accuracy"] > 0.95 and math.isfinite(result["loss"])
    assert [step for step, _ in logged] == [20, 40, 60] and [h["step"] for h in result["history"]] == [20, 40, 60]
    assert set(logged[0][1]) == {"loss", "accuracy", "lr"}
    assert logged[0][1]["lr"] == pytest.approx(3e-3 * 0.99**19)  # its own exponential decay, per step
    assert logged[-1][1]["loss"] < logged[0][1]["loss"]
    assert [p.requires_grad for p in net.parameters()] == flags
    for key, value in net.experts.state_dict().items():  # the loss does not reach the experts
        assert torch.equal(value, experts[key]), key
    with pytest.raises(ValueError, match="no manager"):
        pretrain_manager(INR(encoder_width=8, width=8), coords, labels, steps=1)


def test_stage_schedule_and_validation():
    stages = [Stage("a", 0.1, "manager"), Stage("b", 0.8), Stage("e", 1.0, "experts")]
    validate_stages(stages)
    assert [stage_index(stages, s, 100) for s in (0, 9, 10, 79, 80, 99)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="until"):
        validate_stages([Stage("a", 0.5), Stage("b", 0.4), Stage("c", 1.0)])
    with pytest.raises(ValueError, match="last stage"):
        validate_stages([Stage("a", 0.5)])


def test_a_manager_stage_of_an_old_config_says_what_replaced_it():
    old = [Stage("manager_pretraining", 0.1, "all", "manager"), Stage("all", 0.8), Stage("experts", 1.0, "experts")]
    with pytest.raises(ValueError, match=r"stage 'manager_pretraining': objective 'manager' is no longer a stage.*"
                                         r"manager_steps.*manager_checkpoint"):
        validate_stages(old)
    with pytest.raises(ValueError, match="no longer a stage"):
        SignalFit(tiny_experts(), ImageTask(lpips=False), old)


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


class Recorder(Logger):
    """A logger that keeps what it is given."""

    def __init__(self):
        super().__init__()
        self.metrics = []

    @property
    def name(self):
        return "recorder"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))


def test_the_manager_phase_runs_before_the_steps_and_outside_their_schedule(tmp_path):
    probe, recorder = StageProbe(), Recorder()
    stages = [Stage("all", 0.6), Stage("experts", 1.0, "experts")]
    module = SignalFit(tiny_experts(), ImageTask(lpips=False), stages, lr=1e-3, lr_gamma=0.9, manager_steps=3,
                       manager_lr=3e-3, write_outputs=False)
    trainer = pl.Trainer(max_steps=10, logger=recorder, log_every_n_steps=1, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=tmp_path, callbacks=[probe])
    trainer.fit(module, datamodule=tiny_image(tmp_path))
    r = probe.records
    # the manager phase took none of the 10 steps: every one is a reconstruction step, stages at 60 %
    assert trainer.global_step == 10 and [x["stage"] for x in r] == ["all"] * 6 + ["experts"] * 4
    # the reconstruction optimizer starts fresh (nothing of the phase's Adam) at the undecayed lr
    assert r[0]["adam_steps"] == 1 and r[6]["adam_steps"] == 1 and r[5]["adam_steps"] == 6
    assert [x["lr"] for x in r] == pytest.approx([1e-3 * 0.9 ** (i + 1) for i in range(10)])
    n_expert_params = len(module.network.parameter_groups()["experts"])
    assert r[6]["states"] == n_expert_params  # only the experts train in the last stage
    assert r[6]["trainable"] == {"expert_encoder": False, "experts": True, "manager_encoder": False, "manager": False}
    assert r[0]["trainable"] == dict.fromkeys(r[0]["trainable"], True)
    # the phase is logged: loss, accuracy and its own lr (manager_lr, decayed by lr_gamma) per phase step
    phase = [(step, m) for step, m in recorder.metrics if "manager/loss" in m]
    assert [step for step, _ in phase] == [1, 2, 3]
    assert {"manager/loss", "manager/accuracy", "manager/lr"} <= set(phase[0][1])
    assert phase[0][1]["manager/lr"] == pytest.approx(3e-3) and phase[2][1]["manager/lr"] == pytest.approx(3e-3 * 0.81)
    assert module.manager_phase["source"] == "pretrained" and module.manager_phase["steps"] == 3


def test_stage_switch_freezes_and_resets_the_optimizer(tmp_path):
    probe = StageProbe()
    stages = [Stage("manager", 0.2, "manager"), Stage("all", 0.6), Stage("experts", 1.0, "experts")]
    module = SignalFit(tiny_experts(), ImageTask(lpips=False), stages, lr=1e-3, lr_gamma=0.9, label_map="none",
                       write_outputs=False)
    fit(module, tiny_image(tmp_path), 10, tmp_path, [probe])
    r = probe.records
    assert [x["stage"] for x in r] == ["manager"] * 2 + ["all"] * 4 + ["experts"] * 4
    # a stage training the manager on the reconstruction loss: the optimizer holds state for it alone
    groups = module.network.parameter_groups()
    assert r[1]["states"] == len(groups["manager"]) + len(groups["manager_encoder"])
    assert r[1]["trainable"] == {"expert_encoder": False, "experts": False, "manager_encoder": True, "manager": True}
    # the first step of each new stage starts from fresh Adam state (step counter 1)
    assert r[2]["adam_steps"] == 1 and r[6]["adam_steps"] == 1 and r[5]["adam_steps"] == 4
    assert r[6]["states"] == len(groups["experts"])  # only the experts train in the last stage
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
    ckpt = tmp_path / "managers" / "manager.pt"
    stages = [Stage("all", 1.0)]
    first = SignalFit(tiny_experts(), ImageTask(lpips=False), stages, lr=1e-3, manager_steps=2,
                      manager_checkpoint=str(ckpt), write_outputs=False)
    trainer = fit(first, tiny_image(tmp_path), 4, tmp_path)
    assert ckpt.exists() and trainer.global_step == 4  # the phase took none of the 4 steps
    saved = torch.load(ckpt, weights_only=True)
    assert saved["meta"]["steps"] == 2 and saved["meta"]["label_map"] == "random" and saved["meta"]["n_points"] == 144
    mtime = ckpt.stat().st_mtime_ns
    probe = StageProbe()
    # after loading, only the experts train, so the manager must still equal the saved one at the end
    second = SignalFit(tiny_experts(), ImageTask(lpips=False), [Stage("experts", 1.0, "experts")], lr=1e-3,
                       manager_checkpoint=str(ckpt), write_outputs=False)
    fit(second, tiny_image(tmp_path), 1, tmp_path, [probe])
    assert probe.records[0]["stage"] == "experts" and second.manager_phase["source"] == str(ckpt)
    assert ckpt.stat().st_mtime_ns == mtime  # reused, not rewritten
    torch.testing.assert_close(second.network.manager.state_dict(), saved["manager"])
    torch.testing.assert_close(second.network.expert_encoder.state_dict(), saved["expert_encoder"])
    bad = SignalFit(tiny_experts(k=3), ImageTask(lpips=False), stages, manager_checkpoint=str(ckpt),
                    write_outputs=False)
    with pytest.raises(ValueError, match="does not fit"):
        fit(bad, tiny_image(tmp_path), 1, tmp_path)
    assert set(saved) >= {"expert_encoder", "manager_encoder", "manager"}


def test_a_manager_file_must_match_the_label_map_and_the_activations(tmp_path):
    path = save_manager(tiny_experts(), tmp_path / "m.pt", {"label_map": "random"})
    load_manager(tiny_experts(), path, "random")
    with pytest.raises(ValueError, match="label_map='random'.*'grid'"):
        load_manager(tiny_experts(), path, "grid")
    torch.manual_seed(0)
    softplus = NeuralExperts(n_experts=4, encoder_width=16, expert_width=16, manager_encoder_width=32,
                             manager_width=32, encoder_layers=2, expert_layers=1, manager_encoder_layers=2,
                             manager_layers=2, activation="softplus", init="kaiming")
    with pytest.raises(ValueError, match="activations.*Sine.*Softplus"):  # same shapes, other activation
        load_manager(softplus, path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        load_manager(tiny_experts(), tmp_path / "junk.pt")


def test_a_debug_run_pretrains_one_step_and_saves_nothing(tmp_path):
    ckpt = tmp_path / "manager.pt"
    module = SignalFit(tiny_experts(), ImageTask(lpips=False), [Stage("all", 1.0)], manager_checkpoint=str(ckpt),
                       write_outputs=False)
    trainer = pl.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(module, datamodule=tiny_image(tmp_path))
    assert module.manager_phase["steps"] == 1 and not ckpt.exists()


def test_no_manager_phase_without_a_manager_or_a_label_map(tmp_path):
    for network, label_map in [(INR(encoder_width=8, width=8), "random"), (tiny_experts(), "none")]:
        module = SignalFit(network, ImageTask(lpips=False), [Stage("all", 1.0)], label_map=label_map,
                           write_outputs=False)
        fit(module, tiny_image(tmp_path), 1, tmp_path)
        assert module.manager_phase is None


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


# ------------------------------------------------------------------ the shipped manager and its command

SHIPPED = MANAGERS / "image_128_k4_random.pt"


def test_the_shipped_manager_is_found_from_anywhere_and_fits_the_image_config(tmp_path, monkeypatch):
    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "experiments" / "inr_image.yaml").read_text())
    assert config["model"]["init_args"]["manager_checkpoint"] == DEFAULT_IMAGE_MANAGER
    monkeypatch.chdir(tmp_path)  # a directory without managers/
    assert resolve_manager_checkpoint(DEFAULT_IMAGE_MANAGER) == SHIPPED and SHIPPED.stat().st_size < 1_000_000
    # not shipped: the path as given, where a fit saves the manager it pretrains
    assert resolve_manager_checkpoint("managers/not_shipped.pt") == Path("managers/not_shipped.pt")
    assert resolve_manager_checkpoint(None) is None
    own = tmp_path / "managers" / "image_128_k4_random.pt"  # a file of that name here wins
    own.parent.mkdir()
    own.write_bytes(b"")
    assert resolve_manager_checkpoint(DEFAULT_IMAGE_MANAGER).resolve() == own.resolve()


def test_the_shipped_manager_has_learnt_a_balanced_random_partition():
    network, coords, labels = build_image_manager(128, 4)  # inr_image.yaml's network, the 128² grid
    meta = load_manager(network, SHIPPED, "random", coords.shape[0])
    assert {k: meta[k] for k in ("label_map", "n_points", "steps", "lr", "lr_gamma", "seed", "label_seed")} == {
        "label_map": "random", "n_points": 128 * 128, "steps": 3000, "lr": 1e-5, "lr_gamma": 0.9999, "seed": 0,
        "label_seed": 0}
    assert meta["command"].startswith("python -m lightning_inr.manager_pretraining --resolution 128 --experts 4")
    with torch.no_grad():
        selected = network.manager_logits(coords).argmax(-1)
    accuracy = (selected == labels).float().mean().item()
    assert accuracy == pytest.approx(meta["accuracy"], abs=2e-3) and accuracy > 0.5  # far above chance (0.25)
    shares = torch.bincount(selected, minlength=4) / selected.numel()
    assert shares.min() > 0.2 and shares.max() < 0.3  # balanced, as the label map


def test_the_manager_command_is_deterministic_and_writes_a_manager_file(tmp_path):
    args = ["--resolution", "8", "--steps", "3", "--log-every", "1"]
    a = torch.load(main([*args, "--out", str(tmp_path / "a.pt")]), weights_only=True)
    b = torch.load(main([*args, "--out", str(tmp_path / "b.pt")]), weights_only=True)
    assert set(a) == {"expert_encoder", "manager_encoder", "manager", "meta"}
    for name in ("expert_encoder", "manager_encoder", "manager"):
        for key, value in a[name].items():
            assert torch.equal(value, b[name][key]), (name, key)
    assert a["meta"]["n_points"] == 64 and a["meta"]["steps"] == 3 and a["meta"]["command"].endswith("--label-seed 0")
    network, _, _ = build_image_manager(8, 4, seed=1)
    load_manager(network, tmp_path / "a.pt", "random")  # what a fit with manager_checkpoint: a.pt does


@pytest.mark.slow
def test_the_command_reproduces_the_run_that_made_the_shipped_manager(tmp_path):
    """The recorded command run again for its first 500 of 3,000 steps retraces the file's run: the loss and label
    accuracy it logged agree within 1e-3 relative (ExponentialLR does not depend on the total number of steps, so a
    shorter run is the same run's beginning). Run with the file's thread count; another CPU or thread count changes
    the last bits, which 500 steps amplify to ~2e-4 (1 thread vs the file's 2: 554.83 vs 554.96 at step 500). The
    remaining steps are the same code; the whole command is `make manager` (~9 min on 2 cores)."""
    import shlex

    shipped = torch.load(SHIPPED, weights_only=True)
    meta = shipped["meta"]
    command = shlex.split(meta["command"])
    assert command[:3] == ["python", "-m", "lightning_inr.manager_pretraining"]
    args = command[3:]
    args[args.index("--steps") + 1] = "500"
    threads = torch.get_num_threads()
    torch.set_num_threads(meta["threads"])
    try:
        again = torch.load(main([*args, "--log-every", str(meta["log_every"]), "--out", str(tmp_path / "m.pt")]),
                           weights_only=True)
    finally:
        torch.set_num_threads(threads)
    recorded = {h["step"]: h for h in meta["history"]}
    rerun = again["meta"]["history"]
    assert [h["step"] for h in rerun] == [s for s in recorded if s <= 500] and len(rerun) >= 2
    for h in rerun:
        assert h["loss"] == pytest.approx(recorded[h["step"]]["loss"], rel=1e-3), h["step"]
        assert h["accuracy"] == pytest.approx(recorded[h["step"]]["accuracy"], abs=1e-3), h["step"]
    assert meta["history"][-1]["step"] == 3000 and meta["history"][-1]["loss"] < rerun[-1]["loss"]


# ------------------------------------------------------------------ SIREN's SDF loss


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
