"""Small Dice losses written for the audit's tests: one per convention, one per defect id, and a
clean one that no probe may flag.

They take ``(logits, labels)`` with an integer label map ``(N, *spatial)`` unless said otherwise and
work for any number of spatial dims. ``clean_dice`` is the base: per-image Dice over the classes
present in each image (absent classes left out), float32 sums, an empty batch gives 0. Each
defect case changes exactly one thing of it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dice_impls import DiceSpec

SMOOTH = 1e-5


def _one_hot(labels, channels, dtype=torch.float32):
    classes = torch.arange(channels, device=labels.device).view(1, channels, *([1] * (labels.ndim - 1)))
    return (labels.unsqueeze(1) == classes).to(dtype)


def _sums(p, g):
    dims = tuple(range(2, p.ndim))
    return (p * g).sum(dims), p.sum(dims), g.sum(dims)


def _present_mean(score, present):
    """Mean of ``score`` over the present classes of each image, then over images (0 for no image)."""
    per_image = (score * present).sum(1) / present.sum(1)
    return per_image.mean() if per_image.numel() else per_image.sum()


def clean_dice(logits, labels):
    p = torch.softmax(logits.float(), 1)
    g = _one_hot(labels, logits.shape[1])
    tp, pred, true = _sums(p, g)
    score = (2 * tp + SMOOTH) / (pred + true + SMOOTH)
    return 1 - _present_mean(score, (true > 0).float())


CLEAN_SPEC = DiceSpec(absent_classes="exclude")


# -- one per convention: (loss, channels, the DiceSpec it computes) ----------------------------------
def binary_flat_sigmoid(logits, mask):
    """The most copied binary loss: sigmoid, everything flattened, smooth 1; mask (N, 1, H, W) float."""
    p = torch.sigmoid(logits).reshape(-1)
    g = mask.reshape(-1)
    return 1 - (2 * (p * g).sum() + 1) / (p.sum() + g.sum() + 1)


def batch_foreground_dice(logits, labels, smooth=1.0):
    """Batch Dice over classes 1..C-1 (one score per class over the batch), smooth 1."""
    p = torch.softmax(logits, 1)
    g = _one_hot(labels, logits.shape[1], p.dtype)
    dims = (0, *range(2, p.ndim))
    tp, pred, true = (p * g).sum(dims), p.sum(dims), g.sum(dims)
    return 1 - ((2 * tp[1:] + smooth) / (pred[1:] + true[1:] + smooth)).mean()


def global_dice(logits, labels):
    """Every class and image pooled into one score ("global"), smoothing in the denominator only."""
    p = torch.softmax(logits, 1)
    g = F.one_hot(labels, logits.shape[1]).movedim(-1, 1).to(p.dtype)
    return 1 - 2 * (p * g).sum() / (p.sum() + g.sum() + 1e-7)


def squared_dice(logits, labels):
    """V-Net's squared denominator, per image, smooth 1e-5."""
    p = torch.softmax(logits, 1)
    g = _one_hot(labels, logits.shape[1], p.dtype)
    dims = tuple(range(2, p.ndim))
    score = (2 * (p * g).sum(dims) + SMOOTH) / ((p * p).sum(dims) + (g * g).sum(dims) + SMOOTH)
    return 1 - score.mean()


def probability_dice(probabilities, one_hot):
    """Takes probabilities and a float one-hot target (N, C, ...); per image, smooth 1."""
    tp, pred, true = _sums(probabilities, one_hot)
    return 1 - ((2 * tp + 1) / (pred + true + 1)).mean()


def tversky(logits, labels, alpha=0.3, beta=0.7):
    """Tversky index per image, smooth 1."""
    p = torch.softmax(logits, 1)
    g = _one_hot(labels, logits.shape[1], p.dtype)
    tp, pred, true = _sums(p, g)
    return 1 - ((tp + 1) / (tp + alpha * (pred - tp) + beta * (true - tp) + 1)).mean()


def log_dice(logits, labels):
    """-log(dice) per image and class, averaged; smooth 1."""
    p = torch.softmax(logits, 1)
    g = _one_hot(labels, logits.shape[1], p.dtype)
    tp, pred, true = _sums(p, g)
    return (-torch.log((2 * tp + 1) / (pred + true + 1))).mean()


def negated_batch_dice(logits, labels):
    """nnU-Net's form: -dice, batch Dice without background, smooth 1e-5."""
    return batch_foreground_dice(logits, labels, SMOOTH) - 1


CONVENTIONS = {
    "binary_flat_sigmoid": (binary_flat_sigmoid, 1, DiceSpec(activation="sigmoid", smooth_nr=1, smooth_dr=1, batch=True)),
    "batch_foreground_dice": (batch_foreground_dice, 3,
                              DiceSpec(smooth_nr=1, smooth_dr=1, batch=True, include_background=False)),
    "global_dice": (global_dice, 3, DiceSpec(smooth_nr=0, smooth_dr=1e-7, batch=True, average="micro")),
    "squared_dice": (squared_dice, 3, DiceSpec(squared=True)),
    "probability_dice": (probability_dice, 3, DiceSpec(activation="none", smooth_nr=1, smooth_dr=1)),
    "tversky": (tversky, 3, DiceSpec(smooth_nr=1, smooth_dr=1, fp_weight=0.3, fn_weight=0.7)),
    "log_dice": (log_dice, 3, DiceSpec(smooth_nr=1, smooth_dr=1, log_loss=True)),
    "negated_batch_dice": (negated_batch_dice, 3, DiceSpec.preset("nnunet", min_denominator=0.0)),
    "clean_dice": (clean_dice, 3, CLEAN_SPEC),
}


# -- one per defect id: clean_dice with one thing changed -------------------------------------------
def absent_class_penalty(logits, labels):
    """Every class scored, absent ones too: a perfect prediction pays for each absent class."""
    p = torch.softmax(logits.float(), 1)
    tp, pred, true = _sums(p, _one_hot(labels, logits.shape[1]))
    return 1 - _present_mean((2 * tp + SMOOTH) / (pred + true + SMOOTH), torch.ones_like(true))


def perfect_not_best(logits, labels):
    """A confidence penalty beside the Dice term (log C minus the entropy, >= 0): more confident
    correct predictions cost more."""
    p = torch.softmax(logits.float(), 1)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(1).mean() if p.numel() else p.sum()
    return clean_dice(logits, labels) + 0.05 * (math.log(logits.shape[1]) - entropy)


def negative_loss(logits, labels):
    """Smoothing in the numerator only: a score above 1, a loss below 0."""
    p = torch.softmax(logits.float(), 1)
    tp, pred, true = _sums(p, _one_hot(labels, logits.shape[1]))
    return 1 - _present_mean((2 * tp + 1) / (pred + true), (true > 0).float())


def nan_or_inf(logits, labels):
    """Foreground classes only, mean over the present ones: an all-background image divides 0 by 0."""
    p = torch.softmax(logits.float(), 1)
    tp, pred, true = (s[:, 1:] for s in _sums(p, _one_hot(labels, logits.shape[1])))
    return 1 - _present_mean((2 * tp + SMOOTH) / (pred + true + SMOOTH), (true > 0).float())


def half_precision_overflow(logits, labels):
    """Sums in the logits' dtype: float16 overflows past 65 504, bfloat16 stops counting at 256."""
    p = torch.softmax(logits, 1)
    tp, pred, true = _sums(p, _one_hot(labels, logits.shape[1], p.dtype))
    return 1 - _present_mean((2 * tp + SMOOTH) / (pred + true + SMOOTH), (true > 0).to(p.dtype)).float()


class MutatesInput(torch.nn.Module):
    """Relabels ignored pixels as background in the caller's tensor (after masking them)."""

    def __init__(self, ignore_index=255):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits, labels):
        keep = (labels != self.ignore_index).unsqueeze(1).float()
        labels[labels == self.ignore_index] = 0
        p = torch.softmax(logits.float(), 1) * keep
        tp, pred, true = _sums(p, _one_hot(labels, logits.shape[1]) * keep)
        return 1 - _present_mean((2 * tp + SMOOTH) / (pred + true + SMOOTH), (true > 0).float())


def batch_size_dependent(logits, labels):
    """A sum over images instead of a mean."""
    p = torch.softmax(logits.float(), 1)
    tp, pred, true = _sums(p, _one_hot(labels, logits.shape[1]))
    present = (true > 0).float()
    return (1 - ((2 * tp + SMOOTH) / (pred + true + SMOOTH) * present).sum(1) / present.sum(1)).sum()


def crash(logits, labels):
    """``view`` where ``reshape`` is needed: non-contiguous inputs raise."""
    n, c = logits.shape[:2]
    p = torch.softmax(logits.float(), 1).view(n, c, -1)
    g = _one_hot(labels, c).view(n, c, -1)
    tp, pred, true = (p * g).sum(2), p.sum(2), g.sum(2)
    return 1 - _present_mean((2 * tp + SMOOTH) / (pred + true + SMOOTH), (true > 0).float())


def no_gradient(logits, labels):
    """The probabilities detached from the graph."""
    return clean_dice(logits.detach(), labels)


def nondeterministic(logits, labels):
    """A little noise on every call."""
    return clean_dice(logits, labels) + 1e-6 * torch.rand(())


def host_sync(logits, labels):
    """A label check that reads a value back to the host."""
    if labels.numel() and labels.max().item() >= max(logits.shape[1], 2):
        raise ValueError("labels out of range")
    return clean_dice(logits, labels)


class IgnoreLeak(torch.nn.Module):
    """The seed's way: ignored labels go to an extra one-hot channel that is dropped, so their
    target is 0 everywhere but their prediction still counts as false positives."""

    def __init__(self, ignore_index=255):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits, labels):
        c = logits.shape[1]
        labels = torch.where(labels == self.ignore_index, c, labels)
        p = torch.softmax(logits.float(), 1)
        g = _one_hot(labels, c + 1)[:, :c]
        tp, pred, true = _sums(p, g)
        return 1 - _present_mean((2 * tp + SMOOTH) / (pred + true + SMOOTH), (true > 0).float())


DEFECTS = {
    "absent_class_penalty": absent_class_penalty, "perfect_not_best": perfect_not_best,
    "negative_loss": negative_loss, "nan_or_inf": nan_or_inf, "half_precision_overflow": half_precision_overflow,
    "mutates_input": MutatesInput(), "batch_size_dependent": batch_size_dependent, "crash": crash,
    "no_gradient": no_gradient, "nondeterministic": nondeterministic, "host_sync": host_sync,
    "ignore_leak": IgnoreLeak(),
}
