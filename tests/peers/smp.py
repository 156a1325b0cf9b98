"""segmentation_models_pytorch's DiceLoss, JaccardLoss and TverskyLoss, re-stated for conformance tests.

Read from github.com/qubvel-org/segmentation_models.pytorch (MIT) at commit
5006616357631a48c7c8e11977cf5abb00803590 (main after v0.5.0, version string 0.5.1.dev0), files
segmentation_models_pytorch/losses/dice.py, jaccard.py, tversky.py and _functional.py. The scoring
(``soft_tversky_score``, the L1 "soft-label" intersection) is the same since v0.4.0; ``class_weights``
and Jaccard's ``ignore_index`` are newer than v0.5.0. smp needs torchvision, which does not install
beside torch 2.13.0 here; this module re-states each step of its forward pass (same operations, same
order) in our own words, it is not a copy of its code.
"""

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def soft_tversky_score(output: torch.Tensor, target: torch.Tensor, alpha: float, beta: float, smooth: float,
                       eps: float, dims) -> torch.Tensor:
    """``_functional.soft_tversky_score``: intersection ``(sum o + sum t - ||o - t||_1) / 2``."""
    output_sum = output.sum(dim=dims)
    target_sum = target.sum(dim=dims)
    difference = torch.linalg.vector_norm(output - target, ord=1, dim=dims)
    intersection = (output_sum + target_sum - difference) / 2
    fp = output_sum - intersection
    fn = target_sum - intersection
    return (intersection + smooth) / (intersection + alpha * fp + beta * fn + smooth).clamp_min(eps)


def smp_region_loss(y_pred: torch.Tensor, y_true: torch.Tensor, mode: str, *, alpha: float, beta: float,
                    gamma: float = 1.0, classes: Optional[Sequence[int]] = None, log_loss: bool = False,
                    from_logits: bool = True, smooth: float = 0.0, ignore_index: Optional[int] = None,
                    eps: float = 1e-7, class_weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """The forward pass shared by smp's ``DiceLoss`` (alpha = beta = 0.5, gamma 1), ``JaccardLoss``
    (1, 1, gamma 1) and ``TverskyLoss`` (alpha, beta, gamma): one score per class over the batch."""
    if from_logits:
        y_pred = y_pred.log_softmax(dim=1).exp() if mode == "multiclass" else F.logsigmoid(y_pred).exp()
    bs, num_classes = y_true.size(0), y_pred.size(1)
    dims = (0, 2)
    if mode == "binary":
        y_true = y_true.reshape(bs, 1, -1)
        y_pred = y_pred.reshape(bs, 1, -1)
        if ignore_index is not None:
            mask = y_true != ignore_index
            y_pred, y_true = y_pred * mask, y_true * mask
    elif mode == "multiclass":
        y_true = y_true.reshape(bs, -1)
        y_pred = y_pred.reshape(bs, num_classes, -1)
        if ignore_index is not None:
            mask = y_true != ignore_index
            y_pred = y_pred * mask.unsqueeze(1)
            y_true = F.one_hot((y_true * mask).to(torch.long), num_classes).permute(0, 2, 1) * mask.unsqueeze(1)
        else:
            y_true = F.one_hot(y_true, num_classes).permute(0, 2, 1)
    else:  # multilabel
        y_true = y_true.reshape(bs, num_classes, -1)
        y_pred = y_pred.reshape(bs, num_classes, -1)
        if ignore_index is not None:
            mask = y_true != ignore_index
            y_pred, y_true = y_pred * mask, y_true * mask
    scores = soft_tversky_score(y_pred, y_true.type_as(y_pred), alpha, beta, smooth, eps, dims)
    loss = -torch.log(scores.clamp_min(eps)) if log_loss else 1.0 - scores
    loss = loss * (y_true.sum(dims) > 0).to(loss.dtype)  # a class absent from the batch counts as 0
    if classes is not None:
        loss = loss[torch.as_tensor(classes, dtype=torch.long)]
    if class_weights is not None:
        weights = torch.as_tensor(class_weights, dtype=torch.float)
        if classes is not None:
            weights = weights[torch.as_tensor(classes, dtype=torch.long)]
        return ((loss * weights).sum() / weights.sum()) ** gamma
    return loss.mean() ** gamma


def smp_dice_loss(y_pred, y_true, mode, **kwargs):
    """``DiceLoss(mode, **kwargs)(y_pred, y_true)``."""
    return smp_region_loss(y_pred, y_true, mode, alpha=0.5, beta=0.5, **kwargs)


def smp_jaccard_loss(y_pred, y_true, mode, **kwargs):
    """``JaccardLoss(mode, **kwargs)(y_pred, y_true)``."""
    return smp_region_loss(y_pred, y_true, mode, alpha=1.0, beta=1.0, **kwargs)


def smp_tversky_loss(y_pred, y_true, mode, *, alpha=0.5, beta=0.5, gamma=1.0, **kwargs):
    """``TverskyLoss(mode, alpha=..., beta=..., gamma=..., **kwargs)(y_pred, y_true)``."""
    return smp_region_loss(y_pred, y_true, mode, alpha=alpha, beta=beta, gamma=gamma, **kwargs)
