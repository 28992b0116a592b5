"""Classification metrics from a confusion matrix: pure tensor functions, no other mlp_torch imports.

With imbalanced classes (5,000 cat, 5,000 dog, 500 bear) plain accuracy can look fine while bear is
never predicted; the balanced accuracy (mean per-class recall) cannot.
"""

from __future__ import annotations

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``cm[i, j]`` = how many images of true class i were predicted as j: int64 (C, C).

    Args:
        pred: predicted labels (N,).
        target: true labels (N,), same device.
        num_classes: C.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    flat = target.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(cm: torch.Tensor) -> torch.Tensor:
    """Recall of each class, ``cm[c, c] / Σ_j cm[c, j]``: float (C,), NaN for a class with no images.

    Args:
        cm: a confusion matrix, rows = true class.
    """
    return cm.diagonal().double() / cm.sum(1).double()


def balanced_accuracy(cm: torch.Tensor) -> float:
    """Mean per-class recall over the classes present (NaN if none are).

    Args:
        cm: a confusion matrix, rows = true class.
    """
    return per_class_accuracy(cm).nanmean().item()


def accuracy(cm: torch.Tensor) -> float:
    """Fraction of all images predicted correctly (NaN for an empty matrix).

    Args:
        cm: a confusion matrix, rows = true class.
    """
    total = cm.sum().item()
    return cm.trace().item() / total if total else float("nan")
