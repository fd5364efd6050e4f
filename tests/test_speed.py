"""The fast paths compute what the plain ones do: fused AdamW, ``compile=True`` (MAE and INR); the
benchmarks' own arithmetic (FLOP counting, workers needed) and inputs (reference file, JPEGs).
No timing asserts: timings on a shared machine are noise."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from benchmarks.data_loading import dataset_images_per_s, workers_needed, write_jpegs
from benchmarks.mae_speed import TrainStep, load_reference
from datamodules.pretraining.imagenet import ImageNet
from lightning_inr.baselines import INR
from lightning_inr.signal_fit import SignalFit
from lightning_inr.stages import Stage
from lightning_inr.tasks import ImageTask
from lightning_mae.masking import random_ids_shuffle
from lightning_mae.optim import param_groups_weight_decay
from lightning_mae.pretrain import MAEPretraining, adamw
from lightning_run import compile_once
from tests.test_mae_model import tiny


def test_adamw_is_fused_on_cpu_and_steps_like_the_for_loop_adamw():
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    fused = adamw(param_groups_weight_decay(models[0], 0.05), 1e-2, (0.9, 0.95))
    plain = torch.optim.AdamW(param_groups_weight_decay(models[1], 0.05), lr=1e-2, betas=(0.9, 0.95), foreach=False)
    assert fused.defaults["fused"] and fused.param_groups[1]["weight_decay"] == 0.0
    x = torch.randn(32, 8)
    for _ in range(5):
        for model, opt in zip(models, (fused, plain)):
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_train_step_counts_forward_and_weight_gradient_flops():
    layer = nn.Linear(64, 32)
    step = TrainStep("linear", layer, lambda x: layer(x).sum(), torch.optim.SGD(layer.parameters(), lr=0.1),
                     torch.randn(10, 64), "32")
    # forward 2*B*in*out; backward only the weight gradient (the input needs none): 2*B*in*out
    assert step.flops() == 4 * 10 * 64 * 32
    assert layer.weight.grad is None  # counting leaves no gradient behind
    assert len(step()) == 3 and layer.weight.grad is None  # forward, backward, optimizer (+ zero_grad)


def test_reference_file_errors_name_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.py"):
        load_reference(tmp_path / "nowhere.py")
    other = tmp_path / "models_other.py"
    other.write_text("X = 1\n")
    with pytest.raises(ValueError, match="models_other.py"):
        load_reference(other)


def test_workers_needed():
    assert workers_needed(1000.0, 300.0) == 4
    assert workers_needed(0.5, 300.0) == 1


def test_data_bench_reads_real_jpegs_through_the_imagenet_transform(tmp_path):
    paths = write_jpegs(None, tmp_path, short_side=64)  # skimage.data's photographs, no download
    assert len(paths) >= 4 and all(p.suffix == ".JPEG" for p in paths)
    data = ImageNet(data_dir=str(tmp_path), batch_size=2, num_workers=0, img_size=32)
    data.setup("fit")
    img, _ = data.train_set[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert dataset_images_per_s(data.train_set, seconds=0.2) > 0


@pytest.mark.slow
def test_compiled_mae_gives_the_eager_loss_and_keeps_state_dict_keys():
    torch.manual_seed(0)
    module = MAEPretraining(backbone=tiny(in_chans=3, depth=1), compile=True)  # one block: compiles faster
    keys = module.state_dict().keys()
    imgs, ids = torch.randn(4, 3, 28, 28), random_ids_shuffle(4, 49)
    eager = module.backbone(imgs, ids, 12).loss
    module.configure_model()
    module.configure_model()  # Lightning calls it again per stage: compiles once
    compiled = module.backbone(imgs, ids, 12).loss
    compiled.backward()
    assert module.backbone._compiled_call_impl is not None and module.state_dict().keys() == keys
    assert compiled.item() == pytest.approx(eager.item(), rel=1e-5)
    assert module.backbone.patch_embed.proj.weight.grad is not None


@pytest.mark.slow
def test_compiled_inr_gives_the_eager_output():
    torch.manual_seed(0)
    module = SignalFit(INR(encoder_width=16, width=16), ImageTask(lpips=False), [Stage("fit", 1.0)], compile=True)
    coords = torch.rand(64, 2) * 2 - 1
    eager = module.network(coords).pred
    module.configure_model()
    assert torch.allclose(module.network(coords).pred, eager, rtol=1e-5, atol=1e-6)
    assert "network._orig_mod" not in " ".join(module.state_dict())


class _Doubler(torch.nn.Module):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail

    def forward(self, x):
        if self.fail:
            raise ValueError("a bug of the module")
        return 2 * x

    def compile(self, *args, **kwargs):  # stands in for a compiler that cannot build this forward
        def broken(*a, **k):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        self._compiled_call_impl = broken


def test_a_forward_the_compiler_cannot_build_runs_eager_with_one_warning():
    owner, module = torch.nn.Module(), _Doubler()
    compile_once(owner, module, True)
    with pytest.warns(UserWarning, match="torch.compile failed for _Doubler .*C\\+\\+ compiler.*running eager"):
        assert torch.equal(module(torch.ones(2)), torch.full((2,), 2.0))
    assert module._compiled_call_impl is None  # eager from now on: no second attempt, no second warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(module(torch.ones(2)), torch.full((2,), 2.0))


def test_an_error_of_the_module_itself_is_raised_not_hidden_by_the_fallback():
    owner, module = torch.nn.Module(), _Doubler(fail=True)
    compile_once(owner, module, True)
    with pytest.raises(ValueError, match="a bug of the module"):
        module(torch.ones(2))
    assert module._compiled_call_impl is not None


def test_a_loss_through_the_gradient_keeps_the_network_eager():
    from lightning_inr.tasks import SDFTask

    module = SignalFit(INR(in_dim=3, out_dim=1, encoder_width=8, width=8), SDFTask(loss="siren"),
                       [Stage("fit", 1.0)], label_map="none", compile=True)
    module.configure_model()  # SIREN's SDF loss needs a double backward, which torch.compile cannot do
    assert module.network._compiled_call_impl is None
    assert SDFTask().double_backward is False and SDFTask(loss="siren").double_backward is True


@pytest.mark.parametrize(("compile_", "trainer_kw", "expected"), [
    ("auto", {"max_steps": 30000}, True),  # the configs' fits: compiled
    ("auto", {"max_steps": 999}, False),  # short fits: the compile would not pay off
    ("auto", {"max_steps": 30000, "fast_dev_run": True}, False),
    (False, {"max_steps": 30000}, False),
    (True, {"max_steps": 10}, True),
])
def test_auto_compile_is_for_long_fits(compile_, trainer_kw, expected):
    import lightning.pytorch as pl

    module = SignalFit(INR(encoder_width=8, width=8), ImageTask(lpips=False), [Stage("fit", 1.0)], compile=compile_)
    module.trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, **trainer_kw)
    assert module.wants_compile() is expected
    module.configure_model()  # compiles lazily: nothing is built before the first call
    assert (module.network._compiled_call_impl is not None) is expected
    with pytest.raises(ValueError, match="compile must be true, false or 'auto'"):
        SignalFit(INR(encoder_width=8, width=8), ImageTask(lpips=False), compile="yes")
