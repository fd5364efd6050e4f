"""Networks of lightning_inr: official parameter counts, batched experts, conditioning, activations."""

import math

import pytest
import torch

from lightning_inr import INR, MLP, CoordinateNetwork, Finer, FourierFeatures, NeuralExperts
from lightning_inr.activations import activate_fresh, make_activation
from lightning_inr.experts import condition
from lightning_inr.field import PARAMETER_GROUPS, missing_members


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("network", "expected"),
    [
        (lambda: INR(), 99_843),  # SIREN baseline
        (lambda: INR(width=512), 642_819),  # SIREN wider
        (lambda: NeuralExperts(), 365_968),  # Neural Experts K = 4
        (lambda: NeuralExperts(conditioning="none"), 349_584),  # naive MoE
        # the audio and SDF baselines, as their config headers state (inr_audio_siren*.yaml, inr_sdf_siren.yaml)
        (lambda: INR(1, 1, width=128, first_layer_init="siren"), 99_457),
        (lambda: INR(1, 1, width=512, first_layer_init="siren"), 641_665),
        (lambda: INR(3, 1, encoder_width=256, encoder_layers=1, width=256, n_layers=3), 198_657),
    ],
    ids=["siren", "siren_wider", "neural_experts", "naive_moe", "audio_siren", "audio_siren_wider", "sdf_siren"],
)
def test_official_parameter_counts(network, expected):
    assert n_params(network()) == expected


def test_siren_first_layer_rule_reaches_1d_input_and_nothing_else():
    torch.manual_seed(0)
    official = INR(in_dim=1, out_dim=1, encoder_width=64, width=16)
    torch.manual_seed(0)
    siren = INR(in_dim=1, out_dim=1, encoder_width=64, width=16, first_layer_init="siren")
    # SIREN's U(±1/fan_in) = U(±1) for audio, where the official rule gives U(±√6/30) ≈ ±0.082
    assert official.encoder.mlp.weights[0].abs().max() <= math.sqrt(6) / 30
    assert 0.9 < siren.encoder.mlp.weights[0].abs().max() <= 1.0
    for key, value in siren.state_dict().items():  # every other tensor as drawn without the option
        assert torch.equal(value, official.state_dict()[key]) == (key != "encoder.mlp.weights.0"), key
    # 2-D/3-D input: both rules are U(±1/fan_in)
    assert INR(in_dim=3, first_layer_init="siren").encoder.mlp.weights[0].abs().max() <= 1 / 3
    with pytest.raises(ValueError, match="init='siren'"):
        INR(activation="softplus", init="kaiming", first_layer_init="siren")


def test_neural_experts_take_sirens_first_layer_in_both_encoders_and_nothing_else():
    torch.manual_seed(0)
    official = NeuralExperts(in_dim=1, out_dim=1, n_experts=3)
    torch.manual_seed(0)
    siren = NeuralExperts(in_dim=1, out_dim=1, n_experts=3, first_layer_init="siren")
    first = {"expert_encoder.mlp.weights.0", "manager_encoder.mlp.weights.0"}
    for key in first:
        assert official.state_dict()[key].abs().max() <= math.sqrt(6) / 30
        assert 0.9 < siren.state_dict()[key].abs().max() <= 1.0
    for key, value in siren.state_dict().items():  # the default draws exactly what it always drew
        assert torch.equal(value, official.state_dict()[key]) == (key not in first), key
    with pytest.raises(ValueError, match="init='kaiming'"):
        NeuralExperts(manager_init="kaiming", first_layer_init="siren")
    with pytest.raises(ValueError, match="neural_experts|siren"):
        NeuralExperts(first_layer_init="uniform")


def test_batched_experts_equal_a_loop_over_experts():
    torch.manual_seed(0)
    bank = MLP(16, 32, 3, out_dim=3, n_copies=5)
    x = torch.randn(50, 16)
    batched = bank(x)
    assert batched.shape == (5, 50, 3)
    for k in range(5):
        single = MLP(16, 32, 3, out_dim=3)
        with torch.no_grad():
            for w_s, b_s, w_b, b_b in zip(single.weights, single.biases, bank.weights, bank.biases):
                w_s.copy_(w_b[k])
                b_s.copy_(b_b[k])
        torch.testing.assert_close(batched[k], single(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bank.forward_copy(x, k), single(x), rtol=1e-5, atol=1e-6)


def test_experts_are_independent_networks():
    bank = MLP(8, 16, 2, out_dim=1, n_copies=3)
    assert not torch.equal(bank.weights[1][0], bank.weights[1][1])  # each expert its own init


def test_hard_top1_output_is_the_argmax_expert():
    torch.manual_seed(0)
    net = NeuralExperts(n_experts=3, encoder_width=16, expert_width=16, manager_encoder_width=16, manager_width=16)
    out = net(torch.rand(100, 2) * 2 - 1)
    assert torch.equal(out.selected, out.q.argmax(-1))
    picked = out.expert_preds[out.selected, torch.arange(100)]
    torch.testing.assert_close(out.pred, picked)
    torch.testing.assert_close(out.q.sum(-1), torch.ones(100))


@pytest.mark.parametrize("mode", ["cat", "max", "mean"])
def test_conditioning_gradient_reaches_the_expert_encoder(mode):
    torch.manual_seed(0)
    net = NeuralExperts(n_experts=2, encoder_width=16, expert_width=16, manager_encoder_width=16,
                        manager_width=16, conditioning=mode)
    net.manager_logits(torch.rand(30, 2)).sum().backward()
    grads = [p.grad for p in net.expert_encoder.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in net.experts.parameters())  # experts are not in the routing


def test_no_conditioning_keeps_the_manager_away_from_the_expert_encoder():
    net = NeuralExperts(n_experts=2, encoder_width=16, expert_width=16, manager_encoder_width=16,
                        manager_width=16, conditioning="none")
    net.manager_logits(torch.rand(30, 2)).sum().backward()
    assert all(p.grad is None for p in net.expert_encoder.parameters())


def test_condition_rejects_unknown_mode():
    with pytest.raises(ValueError, match="conditioning"):
        condition(torch.zeros(2, 3), torch.zeros(2, 3), "sum")
    with pytest.raises(ValueError, match="conditioning"):
        NeuralExperts(conditioning="sum")


def test_max_conditioning_broadcasts_a_global_pool():
    m, e = torch.randn(5, 3), torch.randn(5, 4)
    out = condition(m, e, "max")
    assert out.shape == (5, 7)
    torch.testing.assert_close(out[:, 3:], e.max(0).values.expand(5, 4))


def test_siren_init_bounds():
    net = INR(encoder_width=64, width=64)
    first = net.encoder.mlp.weights[0]
    assert first.abs().max() <= 1 / 2 and first.abs().max() > 0.4  # U(±1/fan_in), fan_in = 2
    hidden = net.head.weights[1]
    bound = math.sqrt(6 / 64) / 30
    assert hidden.abs().max() <= bound and hidden.abs().max() > 0.9 * bound
    assert all(torch.count_nonzero(b) == 0 for b in net.head.biases)


def test_finer_gradient_treats_the_scale_as_constant():
    z = torch.tensor([0.3], requires_grad=True)
    Finer(omega=2.0)(z).backward()
    scale = 1.3
    expected = math.cos(2.0 * scale * 0.3) * 2.0 * scale  # d/dz sin(ω·s·z) with s fixed
    assert z.grad.item() == pytest.approx(expected, rel=1e-5)


def test_fourier_features_layout():
    ff = FourierFeatures(2, 8, sigma=3.0)
    x = torch.rand(10, 2)
    y = ff(x)
    assert y.shape == (10, 2 + 16)
    torch.testing.assert_close(y[:, :2], x)
    # sin² + cos² of each frequency sums to 1/m after the 1/√m scaling
    torch.testing.assert_close(y[:, 2:10] ** 2 + y[:, 10:] ** 2, torch.full((10, 8), 1 / 8))


def test_softplus_ff_network_builds_and_runs():
    net = INR(activation="softplus", init="kaiming", fourier_features=64)
    assert net.encoder.mlp.weights[0].shape == (130, 128)
    assert net(torch.rand(7, 2)).pred.shape == (7, 3)


@pytest.mark.parametrize("kind", ["inr", "neural_experts"])
def test_both_networks_satisfy_the_coordinate_network_protocol(kind):
    torch.manual_seed(0)
    if kind == "inr":
        net, k = INR(in_dim=2, out_dim=3, encoder_width=8, width=8), 1
    else:
        net, k = NeuralExperts(in_dim=2, out_dim=3, n_experts=3, encoder_width=8, expert_width=8,
                               manager_encoder_width=8, manager_width=8), 3
    assert isinstance(net, CoordinateNetwork) and missing_members(net) == []
    assert (net.in_dim, net.out_dim, net.n_experts) == (2, 3, k)
    # FieldOutput's documented shapes, K = 1 for the plain INR
    coords = torch.rand(10, 2)
    out = net(coords)
    assert out.pred.shape == (10, 3) and out.expert_preds.shape == (k, 10, 3)
    assert out.q.shape == (10, k) and out.selected.shape == (10,)
    # every parameter in exactly one group, under the fixed group names
    groups = net.parameter_groups()
    assert tuple(groups) == PARAMETER_GROUPS
    grouped = sorted(id(p) for ps in groups.values() for p in ps)
    assert grouped == sorted(id(p) for p in net.parameters())
    modules = net.manager_modules()
    logits = net.manager_logits(coords)
    if kind == "inr":  # no manager, and the type says so
        assert modules == {} and logits is None and out.logits is None
        assert groups["manager"] == groups["manager_encoder"] == []
    else:
        assert list(modules) == ["expert_encoder", "manager_encoder", "manager"]
        assert all(isinstance(m, torch.nn.Module) for m in modules.values())
        assert logits.shape == (10, 3)
        torch.testing.assert_close(logits, out.logits)


def test_an_incomplete_network_is_not_a_coordinate_network():
    class Plain(torch.nn.Module):
        in_dim, out_dim, n_experts = 2, 1, 1

        def forward(self, coords):
            return coords

    assert not isinstance(Plain(), CoordinateNetwork)
    assert missing_members(Plain()) == ["manager_logits", "manager_modules", "parameter_groups"]
    assert missing_members(object()) == ["nn.Module", *sorted(
        ["forward", "in_dim", "manager_logits", "manager_modules", "n_experts", "out_dim", "parameter_groups",
         "parameters"])]


@pytest.mark.parametrize("name", ["sine", "finer", "relu", "softplus"])
@pytest.mark.parametrize("grad", [True, False])
def test_activations_on_fresh_pre_activations_are_the_modules_bit_for_bit(name, grad):
    act = make_activation(name)
    torch.manual_seed(0)
    z = torch.randn(64, 32) * 0.1
    expected_in = z.clone().requires_grad_(grad)
    expected = act(expected_in)
    fresh_in = z.clone().requires_grad_(grad)
    got = activate_fresh(act, fresh_in * 1.0 if grad else fresh_in)  # a product's fresh output
    assert torch.equal(got, expected)
    if grad:  # the backward pass too
        (g_expected,) = torch.autograd.grad(expected.square().sum(), expected_in)
        (g_got,) = torch.autograd.grad(got.square().sum(), fresh_in)
        assert torch.equal(g_got, g_expected)


def plain_mlp(mlp: MLP, x: torch.Tensor) -> torch.Tensor:
    """The textbook formulation the fused one must reproduce: product, then bias, then activation."""
    for i, (w, b) in enumerate(zip(mlp.weights, mlp.biases)):
        if mlp.n_copies is None:
            z = x @ w + b
        elif x.dim() == 2:
            z = torch.einsum("nd,kdh->knh", x, w) + b.unsqueeze(1)
        else:
            z = torch.baddbmm(b.unsqueeze(1), x, w)
        x = z if i >= mlp.n_activated else (mlp.first_act if i == 0 else mlp.act)(z)
    return x


@pytest.mark.parametrize("copies", [None, 3])
def test_fused_layers_equal_the_plain_formulation(copies, monkeypatch):
    torch.manual_seed(0)
    mlp = MLP(2, 32, 3, out_dim=3, n_copies=copies)
    x = torch.rand(500, 2) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), plain_mlp(mlp, x), rtol=1e-6, atol=1e-6)  # reassociation only
        if copies:  # CPU groups of copies (small groups forced): the same bits as all copies at once
            whole = mlp(x)
            monkeypatch.setattr(MLP, "CPU_GROUP_BYTES", 500 * 32 * 4)
            assert mlp.copies_per_group(x) == 1
            assert torch.equal(mlp(x), whole)


def test_allocation_free_evaluations_equal_forward_copy():
    torch.manual_seed(0)
    bank = MLP(16, 32, 3, out_dim=3, n_copies=4)
    x = torch.randn(40, 16)
    work = (torch.empty(40 * 32), torch.empty(40 * 32))
    for k in range(4):
        out = torch.empty(40, 3)
        assert torch.equal(bank.forward_into(x, work, out, k), bank.forward_copy(x, k).detach())
    owner = torch.tensor([0] * 10 + [2] * 30)  # rows sorted by copy; copies 1 and 3 own nothing
    out = torch.empty(40, 3)
    got = bank.forward_sorted_into(x, owner, [10, 0, 30, 0], work, out)
    expected = torch.cat([bank.forward_copy(x[:10], 0), bank.forward_copy(x[10:], 2)]).detach()
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="k is given exactly"):
        bank.forward_into(x, work, out)
