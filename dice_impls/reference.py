"""The float64 oracle: DiceSpec's formula written out directly, for tests to compare against.

Deliberately independent of the other implementations' helpers: the one-hot target comes from
comparing labels with ``arange(C)``, every sum is a float64 sum over the spatial axes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import is_label_map
from .score import DiceStatistics
from .spec import DiceSpec


def reference_statistics(logits: Tensor, target: Tensor, spec: DiceSpec) -> DiceStatistics:
    x = logits.to(torch.float64)
    channels = x.shape[1]
    if spec.activation == "softmax":
        p = torch.softmax(x, dim=1)
    elif spec.activation == "sigmoid":
        p = torch.sigmoid(x)
    else:
        p = x
    if is_label_map(target):
        labels = target.to(torch.int64).unsqueeze(1)
        if channels == 1:
            g = (labels == 1).to(torch.float64)
        else:
            classes = torch.arange(channels, device=x.device).view(1, channels, *([1] * (x.ndim - 2)))
            g = (labels == classes).to(torch.float64)
        if spec.ignore_index is not None:
            keep = (labels != spec.ignore_index).to(torch.float64)
        else:
            keep = torch.ones_like(labels, dtype=torch.float64)
    else:
        g = target.to(torch.float64)
        keep = torch.ones_like(g[:, :1])
    power = 2 if spec.squared else 1
    axes = tuple(range(2, x.ndim))
    pred_sum = (keep * p**power).sum(axes)
    target_sum = (keep * g**power).sum(axes)
    if spec.soft_label and not is_label_map(target):
        # Wang et al.'s semimetric form as MONAI writes it; with k = 2 it is sum p g exactly.
        difference = (keep * (p - g).abs() ** power).sum(axes)
        intersection = (pred_sum + target_sum - difference) / 2
    else:
        intersection = (keep * p * g).sum(axes)
    return DiceStatistics(intersection, pred_sum, target_sum)
