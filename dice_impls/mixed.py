"""Mixed precision done right: half-size intermediates, float32 sums.

bf16/fp16 logits keep their dtype through the activation, the one-hot target and the products
(half the memory of float32), but every sum accumulates in float32, so a class covering more than
65504 pixels does not overflow the way a plain fp16 sum does. Autograd returns the gradient in the
logits' dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .score import DiceStatistics
from .spec import DiceSpec
from .vectorized import dense_statistics


def mixed_statistics(logits: Tensor, target: Tensor, spec: DiceSpec) -> DiceStatistics:
    accumulate = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return dense_statistics(logits, target, spec, accumulate=accumulate)
