"""k-nearest-neighbour accuracy of frozen features: the label-free evaluation of an encoder that no
training of a head can blur (no learning rate, no epochs, no augmentation).

The classifier is the one of InstDisc (Wu et al. 2018) and DINO (Caron et al. 2021, ``eval_knn.py``):
features are L2-normalised, a test image's ``k`` nearest training images are found by cosine
similarity, and each of them votes for its class with weight ``exp(cos / T)``; the class with the
largest summed weight wins. Defaults: ``k = 20``, ``T = 0.07`` (DINO's). ``temperature=None`` gives a
plain majority vote instead (one vote per neighbour; a tie goes to the tied class whose neighbours
have the larger summed cosine similarity, then to the lower class index).

``extract_features`` runs a frozen encoder (``lightning_mae.downstream.encoder.ViTEncoder``) over a
loader and returns the pooled features: the cls token after the final norm (``pool="token"``, the
linear probe's feature) or the mean of the normalised patch tokens (``pool="mean"``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Pool = Literal["token", "mean"]


def _check(train_features: Tensor, train_labels: Tensor, test_features: Tensor, k: int) -> None:
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError(f"features must be [N, D], got train {tuple(train_features.shape)} and test "
                         f"{tuple(test_features.shape)}")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"train features have {train_features.shape[1]} dimensions, test features "
                         f"{test_features.shape[1]}")
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"{train_features.shape[0]} train features but train labels of shape "
                         f"{tuple(train_labels.shape)}")
    if not 1 <= k <= train_features.shape[0]:
        raise ValueError(f"k must be in [1, {train_features.shape[0]}] (the train set's size), got {k}")


@torch.no_grad()
def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    k: int = 20,
    temperature: float | None = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 512,
) -> Tensor:
    """Predicted class ``[M]`` of each of the ``M`` test features (see the module docstring).

    Args:
        train_features: ``[N, D]`` features of the labelled set (normalised here).
        train_labels: ``[N]`` integer labels in ``[0, num_classes)``.
        test_features: ``[M, D]`` features to classify (normalised here).
        k: neighbours that vote.
        temperature: ``T`` of the ``exp(cos / T)`` vote weights; ``None`` = one vote per neighbour.
        num_classes: ``None`` = ``max(train_labels) + 1``.
        chunk_size: test features compared with the whole train set at a time (bounds the memory to
            ``chunk_size x N`` similarities).
    """
    _check(train_features, train_labels, test_features, k)
    if temperature is not None and temperature <= 0:
        raise ValueError(f"temperature must be > 0 or None, got {temperature}")
    train = F.normalize(train_features.float(), dim=1)
    labels = train_labels.long().to(train.device)
    classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise ValueError(f"train labels must lie in [0, {classes}), got [{int(labels.min())}, {int(labels.max())}]")
    preds = []
    for start in range(0, test_features.shape[0], chunk_size):
        test = F.normalize(test_features[start:start + chunk_size].float().to(train.device), dim=1)
        sims, idx = (test @ train.T).topk(k, dim=1)  # [m, k], most similar first
        neighbours = labels[idx]
        if temperature is None:
            weights = torch.ones_like(sims)
        else:
            weights = (sims / temperature).exp()
        scores = torch.zeros(test.shape[0], classes, device=train.device).scatter_add_(1, neighbours, weights)
        if temperature is None:
            # Tie-break: the summed similarity, shifted into [0, 1) so it never outweighs one vote.
            sim_sum = torch.zeros_like(scores).scatter_add_(1, neighbours, sims + 1.0)  # in [0, 2 * votes]
            scores = scores + sim_sum / (2 * k + 1)
        preds.append(scores.argmax(dim=1))  # argmax: the first (lowest) class among exact ties
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    k: int = 20,
    temperature: float | None = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 512,
) -> float:
    """Top-1 accuracy in percent of ``knn_predict`` on the labelled test features."""
    if test_labels.shape != (test_features.shape[0],):
        raise ValueError(f"{test_features.shape[0]} test features but test labels of shape {tuple(test_labels.shape)}")
    if test_features.shape[0] == 0:
        raise ValueError("no test features")
    preds = knn_predict(train_features, train_labels, test_features, k, temperature, num_classes, chunk_size)
    return 100.0 * float((preds.cpu() == test_labels.long().cpu()).float().mean())


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    batches: Iterable,
    pool: Pool = "token",
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor]:
    """``(features [N, D], labels [N])`` of a frozen ViT encoder over ``(images, labels)`` batches.

    ``encoder`` must have ``forward_features`` (all tokens, cls first, after the final norm), as
    ``ViTEncoder`` built with ``global_pool="token"`` has. It is run in eval mode; its mode is restored.
    """
    if pool not in ("token", "mean"):
        raise ValueError(f"pool must be 'token' or 'mean', got {pool!r}")
    was_training = encoder.training
    encoder.eval().to(device)
    features, labels = [], []
    try:
        for imgs, targets in batches:
            tokens = encoder.forward_features(imgs.to(device))
            feats = tokens[:, 0] if pool == "token" else tokens[:, 1:].mean(dim=1)
            features.append(feats.float().cpu())
            labels.append(torch.as_tensor(targets).long().cpu())
    finally:
        encoder.train(was_training)
    if not features:
        raise ValueError("extract_features: the loader gave no batch")
    return torch.cat(features), torch.cat(labels)
