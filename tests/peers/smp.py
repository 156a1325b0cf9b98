"""segmentation_models_pytorch's ``DiceLoss``, written out from its published source for conformance tests.

Reproduces ``segmentation_models_pytorch.losses.DiceLoss`` (``losses/dice.py``) with
``soft_dice_score`` (``losses/_functional.py``) in the "binary" and "multiclass" modes, read from
github.com/qubvel-org/segmentation_models.pytorch (MIT license) at commits
0d8c7a63f2484085709b6173354277836359911b (dice.py) and 14c60e202bad4b0f5a14927950a1cab72f3af42e
(_functional.py). smp does not install here; this module re-states its steps, it is not a copy of
its code.
"""

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def soft_dice_score(output, target, smooth: float = 0.0, eps: float = 1e-7, dims=None) -> torch.Tensor:
    """``(2 sum(o t) + smooth) / max(sum(o + t) + smooth, eps)`` over ``dims``."""
    intersection = torch.sum(output * target, dim=dims)
    cardinality = torch.sum(output + target, dim=dims)
    return (2.0 * intersection + smooth) / (cardinality + smooth).clamp_min(eps)


def smp_dice_loss(y_pred: torch.Tensor, y_true: torch.Tensor, mode: str, *, classes: Optional[Sequence[int]] = None,
                  log_loss: bool = False, smooth: float = 0.0, ignore_index: Optional[int] = None,
                  eps: float = 1e-7) -> torch.Tensor:
    """``DiceLoss(mode, classes, log_loss, from_logits=True, smooth, ignore_index, eps)(y_pred, y_true)``."""
    if mode == "multiclass":
        y_pred = y_pred.log_softmax(dim=1).exp()
    elif mode == "binary":
        y_pred = F.logsigmoid(y_pred).exp()
    else:
        raise ValueError(f"mode {mode!r} is not reproduced here")
    bs, num_classes = y_true.size(0), y_pred.size(1)
    dims = (0, 2)  # sums over the batch and the pixels: one score per class
    if mode == "binary":
        y_true = y_true.view(bs, 1, -1)
        y_pred = y_pred.view(bs, 1, -1)
        if ignore_index is not None:
            mask = y_true != ignore_index
            y_pred, y_true = y_pred * mask, y_true * mask
    else:
        y_true = y_true.view(bs, -1)
        y_pred = y_pred.view(bs, num_classes, -1)
        if ignore_index is not None:
            mask = y_true != ignore_index
            y_pred = y_pred * mask.unsqueeze(1)
            y_true = F.one_hot((y_true * mask).to(torch.long), num_classes).permute(0, 2, 1) * mask.unsqueeze(1)
        else:
            y_true = F.one_hot(y_true, num_classes).permute(0, 2, 1)
    scores = soft_dice_score(y_pred, y_true.type_as(y_pred), smooth, eps, dims)
    loss = -torch.log(scores.clamp_min(eps)) if log_loss else 1.0 - scores
    loss = loss * (y_true.sum(dims) > 0).to(loss.dtype)  # classes absent from the batch count as 0
    if classes is not None:
        loss = loss[torch.as_tensor(classes, dtype=torch.long)]
    return loss.mean()
