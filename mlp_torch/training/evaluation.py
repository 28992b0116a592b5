"""``evaluate``: loss, accuracy, balanced accuracy and confusion matrix of a model on one split."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..data import Preprocessor
from ..metrics import accuracy, balanced_accuracy, confusion_matrix, per_class_accuracy
from ..models import Classifier

EVAL_BATCH = 2048


@dataclass
class EvalResult:
    """Loss and accuracies of a model on one split."""

    loss: float
    accuracy: float
    balanced_accuracy: float
    per_class_accuracy: list[float]
    confusion_matrix: list[list[int]]


@torch.no_grad()
def evaluate(
    model: Classifier, x: Tensor, y: Tensor, standardizer: Preprocessor, batch_size: int = EVAL_BATCH
) -> EvalResult:
    """Mean loss, accuracy, balanced accuracy (mean per-class recall) and confusion matrix.

    As pytorch/examples mnist's ``test()``: one forward pass per batch, the loss and the
    predictions both from its logits.

    Args:
        model: any model from :mod:`mlp_torch.models`, already on ``x``'s device.
        x: uint8 images (N, 3, H, W) on the model's device.
        y: int64 labels (N,).
        standardizer: the training split's preprocessing (a Standardizer, or a Whitener).
        batch_size: images per forward pass.
    """
    return evaluation_result(*evaluation_sums(model, x, y, standardizer, batch_size))


@torch.no_grad()
def evaluation_sums(
    model: Classifier, x: Tensor, y: Tensor, standardizer: Preprocessor, batch_size: int = EVAL_BATCH
) -> tuple[Tensor, Tensor]:
    """What :func:`evaluate` reports, as sums over the samples: the loss sum (float64) and the confusion matrix.

    Sums of parts of a split add up to the split's (several processes evaluate one split this way).
    """
    num_classes = model.config()["num_classes"]
    dtype = next(model.parameters()).dtype
    total_loss = torch.zeros((), dtype=torch.float64, device=x.device)
    preds = []
    for start in range(0, len(x), batch_size):
        xb = standardizer(x[start : start + batch_size], dtype)
        yb = y[start : start + batch_size]
        logits = model(xb)  # N,C for every model, the binary perceptron's too
        total_loss += model.loss_from_logits(logits, yb).double() * len(xb)
        preds.append(logits.argmax(1))
    return total_loss, confusion_matrix(torch.cat(preds) if preds else y[:0], y, num_classes)


def evaluation_result(loss_sum: Tensor, cm: Tensor) -> EvalResult:
    """The :class:`EvalResult` of :func:`evaluation_sums`' loss sum and confusion matrix."""
    return EvalResult(
        loss=float(loss_sum) / max(int(cm.sum()), 1),
        accuracy=accuracy(cm),
        balanced_accuracy=balanced_accuracy(cm),
        per_class_accuracy=[float(a) for a in per_class_accuracy(cm)],
        confusion_matrix=cm.tolist(),
    )
