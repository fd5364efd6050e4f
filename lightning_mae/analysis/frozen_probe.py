"""A linear classifier fitted to convergence on frozen features: multinomial logistic regression, L-BFGS.

The MAE linear-probing protocol (``lightning_mae.downstream``: SGD/LARS, augmentation, a BatchNorm head,
90 epochs on ImageNet) is what a paper reports, but on a CPU budget of a few epochs it stops long before
the head has converged, and its accuracy then measures the budget as much as the features. This probe
has no such knob: the features of every training image are computed once (``knn.extract_features``, no
augmentation), standardised with the training set's mean and std, and the convex logistic loss is
minimised to its optimum (L2 strength ``C``, the same for every encoder). It is the protocol of linear
evaluation on frozen features used by e.g. CLIP (scikit-learn's L-BFGS logistic regression).
"""

from __future__ import annotations

import warnings

import numpy as np
from torch import Tensor


def logistic_probe_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    c: float = 1.0,
    max_iter: int = 3000,
) -> float:
    """Top-1 (%) on the test features of a logistic regression fitted on the training features.

    ``c``: inverse L2 strength on the standardised features (scikit-learn's ``C``). A fit that stops at
    ``max_iter`` before converging is an error rather than a silently lower accuracy.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if train_features.ndim != 2 or test_features.shape[1:] != train_features.shape[1:]:
        raise ValueError(f"features must be [N, D] with the same D, got train {tuple(train_features.shape)} "
                         f"and test {tuple(test_features.shape)}")
    if len(train_features) != len(train_labels) or len(test_features) != len(test_labels):
        raise ValueError("each feature needs one label")
    x_train = train_features.double().numpy()
    mean, std = x_train.mean(0), x_train.std(0) + 1e-8
    x_train = (x_train - mean) / std
    x_test = (test_features.double().numpy() - mean) / std
    classifier = LogisticRegression(C=c, max_iter=max_iter, tol=1e-4)  # scikit-learn's default tolerance
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        try:
            classifier.fit(x_train, train_labels.numpy())
        except ConvergenceWarning as warning:
            raise RuntimeError(f"logistic probe: not converged after max_iter={max_iter} ({warning})") from None
    return 100.0 * float(np.mean(classifier.predict(x_test) == test_labels.numpy()))
