"""Explicit Python loops over images and classes, in the seed's readable style."""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import is_label_map
from .score import DiceStatistics
from .spec import DiceSpec


def naive_statistics(logits: Tensor, target: Tensor, spec: DiceSpec) -> DiceStatistics:
    images, channels = logits.shape[:2]
    power = 2 if spec.squared else 1
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
            keep = torch.ones_like(labels, dtype=x.dtype)
            if spec.ignore_index is not None:
                keep = (labels != spec.ignore_index).to(x.dtype)
        else:
            keep = torch.ones_like(x[0])
        tps, preds, targets = [], [], []
        for c in range(channels):
            if is_label_map(target):
                truth = (labels == (1 if channels == 1 else c)).to(x.dtype)
            else:
                truth = target[n, c].to(x.dtype)
            p = probs[c]
            tps.append((keep * p * truth).sum())
            preds.append((keep * p**power).sum())
            targets.append((keep * truth**power).sum())
        rows["intersection"].append(torch.stack(tps))
        rows["pred_sum"].append(torch.stack(preds))
        rows["target_sum"].append(torch.stack(targets))
    if images == 0:
        return DiceStatistics(*(logits.new_zeros(0, channels, dtype=torch.float32) for _ in range(3)))
    stats = (torch.stack(rows[k]) for k in ("intersection", "pred_sum", "target_sum"))
    return DiceStatistics(*(s.float() if s.dtype in (torch.float16, torch.bfloat16) else s for s in stats))
