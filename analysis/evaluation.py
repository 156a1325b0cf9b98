"""Held-out measurements of a segmentation: hard and soft overlap, operating points, calibration,
empty images, and saturation of the loss's logit gradient. Everything is float64.

Binary measurements take ``probs``, the foreground probability ``(N, *shape)``, and ``masks``
``(N, *shape)`` in {0, 1}; overlap is pooled over the whole test set (one F1 of all its pixels).
The definitions are spelled out in docs/experiments.md ("Measurements").
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

CONFIDENT = 0.01  # "confidently wrong": the true class has probability below this
ECE_BINS = 15
PRECISION_LEVELS = (0.5, 0.7, 0.9)
MATCHED_RECALL = 0.5  # empty images are compared at the threshold where each model finds half the object pixels
TEST_FOLDS = 4  # disjoint parts of the test split, to size the test set's share of an interval


def f1_counts(pred: Tensor, masks: Tensor) -> Dict[str, float]:
    """Pooled DSC (F1), precision and recall of a boolean prediction; precision is 0 when nothing is
    predicted (the zero-division convention of scikit-learn), DSC and recall NaN only without any
    foreground at all."""
    tp = float((pred & (masks == 1)).sum())
    fp = float((pred & (masks == 0)).sum())
    fn = float((~pred & (masks == 1)).sum())
    return dict(dsc=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan,
                precision=tp / (tp + fp) if tp + fp else 0.0, recall=tp / (tp + fn) if tp + fn else math.nan)


def pr_curve(probs: Tensor, masks: Tensor):
    """``(precision, recall, thresholds)`` at every distinct probability, highest threshold first."""
    scores, labels = probs.flatten().double(), masks.flatten().double()
    order = torch.argsort(scores, descending=True, stable=True)
    scores, hits = scores[order], labels[order]
    tp, predicted = hits.cumsum(0), torch.arange(1, hits.numel() + 1, dtype=torch.float64)
    last = torch.ones_like(scores, dtype=torch.bool)  # the last of each run of equal scores
    last[:-1] = scores[1:] != scores[:-1]
    return (tp / predicted)[last], tp[last] / max(float(labels.sum()), 1.0), scores[last]


def best_threshold(probs: Tensor, masks: Tensor) -> float:
    """The probability threshold (``p >= t``) with the highest F1 on these data."""
    precision, recall, thresholds = pr_curve(probs, masks)
    return float(thresholds[int(torch.argmax(_f1(precision, recall)))])


def best_dsc(probs: Tensor, masks: Tensor) -> float:
    """The highest pooled F1 (DSC) over every threshold ``p >= t``: how well the scores rank pixels,
    whatever threshold a loss happens to favour (0 without foreground)."""
    precision, recall, _ = pr_curve(probs, masks)
    return float(_f1(precision, recall).max())


def _f1(precision: Tensor, recall: Tensor) -> Tensor:
    return 2 * precision * recall / (precision + recall).clamp_min(1e-300)


def recall_at_precision(probs: Tensor, masks: Tensor, level: float, curve=None) -> float:
    """The highest recall at any threshold whose precision is at least ``level`` (0 if none);
    ``curve`` is ``pr_curve(probs, masks)`` when already computed."""
    precision, recall, _ = curve if curve is not None else pr_curve(probs, masks)
    ok = precision >= level
    return float(recall[ok].max()) if bool(ok.any()) else 0.0


def average_precision(probs: Tensor, masks: Tensor) -> float:
    """Area under the precision-recall curve as average precision (NaN without a positive)."""
    labels = masks.flatten().double()
    if float(labels.sum()) == 0:
        return math.nan
    order = torch.argsort(probs.flatten(), descending=True, stable=True)
    hits = labels[order]
    precision_at = hits.cumsum(0) / torch.arange(1, hits.numel() + 1, dtype=torch.float64)
    return float((precision_at * hits).sum() / labels.sum())


def calibration_error(probs: Tensor, labels: Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the foreground probability over equal-width bins:
    sum over bins of (bin share) * |mean p - foreground rate|."""
    probs, labels = probs.flatten().double(), labels.flatten().double()
    if probs.numel() == 0:
        return math.nan
    index = (probs * bins).long().clamp(0, bins - 1)
    mean_p = torch.bincount(index, weights=probs, minlength=bins)
    rate = torch.bincount(index, weights=labels, minlength=bins)
    return float((mean_p - rate).abs().sum() / probs.numel())


def near_object(masks: Tensor, radius: int = 2) -> Tensor:
    """Pixels within ``radius`` (Chebyshev) of a foreground pixel: where the boundary is decided."""
    pool = F.max_pool2d if masks.ndim == 3 else F.max_pool3d
    return pool(masks.double().unsqueeze(1), 2 * radius + 1, stride=1, padding=radius)[:, 0] > 0


def binary_nll(probs: Tensor, masks: Tensor) -> float:
    p_true = torch.where(masks == 1, probs, 1 - probs).clamp_min(1e-300)
    return float(-torch.log(p_true).mean())


def fit_temperature(logits: Tensor, masks: Tensor) -> float:
    """The temperature ``T`` minimising the validation NLL of ``sigmoid(z / T)`` (golden-section
    search on log T in [1/100, 100]; the NLL is convex in 1/T)."""
    z, y = logits.double().flatten(), masks.double().flatten()

    def nll(log_t: float) -> float:
        return float(F.binary_cross_entropy_with_logits(z / math.exp(log_t), y))

    low, high = math.log(0.01), math.log(100.0)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(b)
    return math.exp((low + high) / 2)


def binary_metrics(logits: Tensor, masks: Tensor, *, val_logits: Tensor, val_masks: Tensor,
                   matched_precision: float, empty: Optional[Tensor] = None) -> Dict[str, float]:
    """Every held-out measurement of one binary model (one-channel ``logits`` (N, 1, ...))."""
    probs = torch.sigmoid(logits.double()[:, 0])
    val_probs = torch.sigmoid(val_logits.double()[:, 0])
    pred = probs > 0.5
    out = f1_counts(pred, masks)
    tuned = best_threshold(val_probs, val_masks)
    out["dsc_tuned"] = f1_counts(probs >= tuned, masks)["dsc"]
    out["threshold_tuned"] = tuned
    out["soft_dsc"] = float(2 * (probs * masks).sum() / (probs.sum() + masks.sum()))
    out["pr_auc"] = average_precision(probs, masks)
    curve = pr_curve(probs, masks)
    out["recall_at_matched_precision"] = recall_at_precision(probs, masks, matched_precision, curve)
    for level in PRECISION_LEVELS:
        out[f"recall_at_p{round(level * 100)}"] = recall_at_precision(probs, masks, level, curve)
    out.update(fold_metrics(probs, masks, tuned))
    out["nll"] = binary_nll(probs, masks)
    out["ece"] = calibration_error(probs, masks)
    near = near_object(masks)
    out["ece_near"] = calibration_error(probs[near], masks[near])
    temperature = fit_temperature(val_logits[:, 0], val_masks)
    scaled = torch.sigmoid(logits.double()[:, 0] / temperature)
    out.update(temperature=temperature, nll_ts=binary_nll(scaled, masks), ece_ts=calibration_error(scaled, masks),
               ece_near_ts=calibration_error(scaled[near], masks[near]))
    out["mean_abs_logit"] = float(logits.double().abs().mean())
    if empty is not None and bool(empty.any()):
        flat = pred.flatten(1)
        out["image_fp_rate"] = float(flat[empty].any(1).double().mean())
        out["image_fp_rate_at_recall50"] = fp_rate_at_recall(probs, masks, empty, MATCHED_RECALL)
        out["fp_pixels_per_empty_image"] = float(flat[empty].sum(1).double().mean())
        out["fp_pixels_per_object_image"] = float((flat[~empty] & (masks.flatten(1)[~empty] == 0)).sum(1).double().mean())
    return out


def fp_recall_curve(probs: Tensor, masks: Tensor, empty: Tensor, thresholds: Sequence[float]) -> Dict[str, float]:
    """Image-level false-positive rate (share of empty images with any pixel ``p > t``) and pixel
    recall at each threshold ``t``, as columns ``fp_rate@t`` and ``recall@t``."""
    out = {}
    for t in thresholds:
        pred = probs > t
        out[f"fp_rate@{t:g}"] = float(pred.flatten(1)[empty].any(1).double().mean())
        out[f"recall@{t:g}"] = f1_counts(pred, masks)["recall"]
    return out


def fp_rate_at_recall(probs: Tensor, masks: Tensor, empty: Tensor, level: float) -> float:
    """Image-level false-positive rate at the highest threshold ``t`` whose pixel recall on the
    object images (``p >= t``) is at least ``level``: models compared at the same recall, so a
    model that fires less only because it finds less gains nothing."""
    object_probs = probs[~empty][masks[~empty] == 1]
    if object_probs.numel() == 0:
        return math.nan
    needed = math.ceil(level * object_probs.numel())
    t = torch.sort(object_probs, descending=True).values[needed - 1]
    return float((probs[empty].flatten(1).amax(1) >= t).double().mean())


def fold_metrics(probs: Tensor, masks: Tensor, tuned_threshold: float) -> Dict[str, float]:
    """``dsc_tuned`` and ``recall_at_p50`` on each of :data:`TEST_FOLDS` disjoint, equal parts of
    the test split (``dsc_tuned_f0``, ...): how much the test images alone move a result."""
    out = {}
    for k, index in enumerate(torch.arange(probs.shape[0]).chunk(TEST_FOLDS)):
        p, m = probs[index], masks[index]
        out[f"dsc_tuned_f{k}"] = f1_counts(p >= tuned_threshold, m)["dsc"]
        out[f"recall_at_p50_f{k}"] = recall_at_precision(p, m, 0.5)
    return out


def multiclass_metrics(logits: Tensor, labels: Tensor, classes: int) -> Dict[str, float]:
    """Per-class pooled DSC / recall / precision of the argmax (``dsc_c1``, ...), their macro mean over
    the foreground classes, and the categorical NLL."""
    probs = torch.softmax(logits.double(), 1)
    pred = probs.argmax(1)
    out, dscs = {}, []
    for c in range(1, classes):
        counts = f1_counts(pred == c, (labels == c).long())
        out.update({f"{k}_c{c}": v for k, v in counts.items()})
        dscs.append(counts["dsc"])
    out["dsc"] = sum(dscs) / len(dscs)
    out["nll"] = float(-torch.log(probs.gather(1, labels.unsqueeze(1)).clamp_min(1e-300)).mean())
    return out


def saturation_probe(logits: Tensor, grad: Tensor, labels: Tensor) -> Dict[str, float]:
    """Saturation (a): the share of the loss's logit-gradient mass ``sum |dL/dz|`` on confidently
    wrong pixels (true class probability < 1 %), the share of such pixels, and the total mass."""
    probs = probabilities(logits)
    p_true = probs.gather(1, labels.unsqueeze(1))[:, 0]
    wrong = p_true < CONFIDENT
    mass = grad.double().abs().sum(1)
    total = float(mass.sum())
    return dict(cw_grad_share=float(mass[wrong].sum()) / total if total > 0 else math.nan,
                cw_pixel_share=float(wrong.double().mean()), logit_grad_mass=total)


def probabilities(logits: Tensor) -> Tensor:
    """Class probabilities ``(N, C, ...)`` float64; a one-channel sigmoid output becomes (background, foreground)."""
    logits = logits.double()
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], 1)
    return torch.softmax(logits, 1)
