"""Sparse (selected-expert-only) inference equals the dense output."""

import torch

from lightning_inr import INR, NeuralExperts, render, sparse_forward


def small_experts(k: int = 8, conditioning: str = "cat") -> NeuralExperts:
    torch.manual_seed(0)
    return NeuralExperts(n_experts=k, encoder_width=32, expert_width=32, manager_encoder_width=32,
                         manager_width=32, conditioning=conditioning).eval()


def test_sparse_equals_dense():
    net = small_experts()
    coords = torch.rand(4000, 2) * 2 - 1
    with torch.no_grad():
        dense = net(coords)
        sparse = sparse_forward(net, coords)
    assert torch.unique(dense.selected).numel() > 1  # several experts in use
    assert torch.equal(sparse.selected, dense.selected)
    torch.testing.assert_close(sparse.pred, dense.pred, rtol=1e-5, atol=1e-6)


def test_chunked_sparse_render_equals_dense():
    net = small_experts()
    coords = torch.rand(3000, 2) * 2 - 1
    with torch.no_grad():
        dense = net(coords)
    out = render(net, coords, chunk_size=700, sparse=True)
    assert out.expert_preds is None
    torch.testing.assert_close(out.pred, dense.pred, rtol=1e-5, atol=1e-6)
    assert torch.equal(out.selected, dense.selected)


def test_render_of_a_plain_inr():
    torch.manual_seed(0)
    net = INR(encoder_width=16, width=16).eval()
    coords = torch.rand(500, 2)
    with torch.no_grad():
        torch.testing.assert_close(render(net, coords, chunk_size=128).pred, net(coords).pred)
