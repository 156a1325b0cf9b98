"""Explicit Python loops over images and classes, in the seed's readable style."""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import ignored_pixels, is_label_map, label_equals
from .score import DiceStatistics
from .spec import DiceSpec
from .vectorized import uses_soft_overlap


def naive_statistics(logits: Tensor, target: Tensor, spec: DiceSpec) -> DiceStatistics:
    images, channels = logits.shape[:2]
    power = 2 if spec.squared else 1
    soft_overlap = uses_soft_overlap(target, spec)
    rows = {"intersection": [], "pred_sum": [], "target_sum": []}
    for n in range(images):
        x = logits[n]
        if spec.activation == "softmax":
            probs = torch.softmax(x, dim=0)
        elif spec.activation == "sigmoid":
            probs = torch.sigmoid(x)
        else:
            probs = x
        if is_label_map(target):
            labels = target[n]
            ignored = ignored_pixels(labels, spec.ignore_index)
            keep = None if ignored is None else ~ignored
        else:
            keep = None

        def counted(values: Tensor) -> Tensor:
            # where, not a product by the mask: see dense_statistics
            return values if keep is None else torch.where(keep, values, 0)

        tps, preds, targets = [], [], []
        for c in range(channels):
            if is_label_map(target):
                truth = label_equals(labels, 1 if channels == 1 else c).to(x.dtype)
            else:
                truth = target[n, c].to(x.dtype)
            p = probs[c]
            overlap = torch.minimum(p, truth) if soft_overlap else p * truth
            tps.append(counted(overlap).sum())
            preds.append(counted(p**power).sum())
            targets.append(counted(truth**power).sum())
        rows["intersection"].append(torch.stack(tps))
        rows["pred_sum"].append(torch.stack(preds))
        rows["target_sum"].append(torch.stack(targets))
    if images == 0:
        # Zeros computed from the logits, so a loss of an empty batch (a rank without images)
        # stays attached to the graph and its backward reaches the model.
        empty = logits.flatten(2).sum(2)
        return DiceStatistics(*(empty.float() if empty.dtype != torch.float64 else empty for _ in range(3)))
    stats = (torch.stack(rows[k]) for k in ("intersection", "pred_sum", "target_sum"))
    return DiceStatistics(*(s.float() if s.dtype in (torch.float16, torch.bfloat16) else s for s in stats))
