"""``fused``: one-hot-free Dice statistics with an analytic gradient, Triton on GPU, C++ on CPU.

Importing this package registers ``IMPLEMENTATIONS["fused"]``. ``fused_statistics`` also takes an
explicit ``backend`` (``"cpp"``, ``"chunked"``, ``"triton"``; the Triton kernels run on CPU tensors
under ``TRITON_INTERPRET=1``) and ``deterministic`` (fixed-order reduction instead of atomics on
GPU; default: ``torch.are_deterministic_algorithms_enabled()``).
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from ..checks import comparable_labels
from ..registry import Implementation, register
from ..score import DiceStatistics
from ..spec import DiceSpec
from . import cpu
from .autograd import Backend, FusedStatistics, KernelParams

# Read without a copy; other integer dtypes (uint16/32/64) are converted to int64 once
# (``checks.comparable_labels``; validation has usually done it already).
NATIVE_LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
BACKENDS = ("cpp", "chunked", "triton")


def get_backend(name: Union[str, Backend, None], device: torch.device) -> Backend:
    """The kernels by name (None: Triton on CUDA, C++ on CPU); a ``Backend`` passes through."""
    if isinstance(name, Backend):
        return name
    if name is None:
        if device.type == "cuda":
            name = "triton"
        else:
            name = "cpp" if cpu.extension_available() else "chunked"
    if name == "cpp":
        return cpu.CPP
    if name == "chunked":
        return cpu.CHUNKED
    if name == "triton":
        from . import triton_kernels  # imported on demand: Triton reads TRITON_INTERPRET at import

        return triton_kernels.TRITON
    raise ValueError(f"unknown fused backend {name!r}; choose one of {BACKENDS}")


def label_codes(target: Tensor) -> Tensor:
    if target.dtype == torch.bool:
        return target.view(torch.uint8)
    return target if target.dtype in NATIVE_LABEL_DTYPES else comparable_labels(target)


def fused_statistics(
    logits: Tensor, target: Tensor, spec: DiceSpec, *, backend: Union[str, Backend, None] = None,
    deterministic: Optional[bool] = None,
) -> DiceStatistics:
    """Per-image, per-class Dice sums ``(N, C)`` of validated inputs, with the analytic backward.

    Takes integer label maps ``(N, *spatial)`` only; non-contiguous logits or labels are made
    contiguous first (one copy).
    """
    n, c = logits.shape[:2]
    voxels = math.prod(logits.shape[2:])  # explicit, not -1: an empty batch has no size to infer
    x = logits.reshape(n, c, voxels).contiguous()
    labels = label_codes(target).reshape(n, voxels).contiguous()
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    stats = FusedStatistics.apply(
        x, labels, KernelParams.from_spec(spec), get_backend(backend, logits.device), deterministic,
        logits.shape,
    )
    return DiceStatistics(*stats)


register(
    Implementation(
        "fused",
        fused_statistics,
        "one-hot-free sums and analytic gradient: Triton on GPU, vectorised C++ on CPU",
        checks_finite=True,
        label_maps_only=True,
    )
)
