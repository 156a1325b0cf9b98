"""The chunked torch formulation of ``fused``'s kernels: the CPU fallback where the C++ extension
neither loads nor builds (``cpu``). It walks the voxels in slices so its temporaries stay small.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import interface
from .interface import KernelPair, KernelParams

# Temporaries: about this many elements of (N, C, chunk) at a time.
CHUNK_ELEMENTS = 1 << 18


def _chunks(logits: Tensor):
    n, c, v = logits.shape
    step = max(1, CHUNK_ELEMENTS // max(1, n * c))
    return (slice(start, start + step) for start in range(0, v, step))


def _activated(x: Tensor, labels: Tensor, params: KernelParams):
    """``(p, g, keep)`` of one slice in the compute dtype; ``g`` is the slice's one-hot."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(dtype)
    p = torch.softmax(x, 1) if params.activation == 0 else torch.sigmoid(x) if params.activation == 1 else x
    channels = x.shape[1]
    classes = torch.arange(channels, device=x.device).view(1, channels, 1) + (1 if channels == 1 else 0)
    keep = torch.ones_like(labels, dtype=dtype) if params.ignore_index is None else (labels != params.ignore_index).to(dtype)
    keep = keep.unsqueeze(1)
    g = (labels.unsqueeze(1) == classes).to(dtype) * keep
    return p, g, keep


def slice_statistics(x: Tensor, labels: Tensor, params: KernelParams):
    """``(stats (3, N, C) float64, probe)`` of a slice of voxels, in plain torch."""
    p, g, keep = _activated(x, labels, params)
    pk = p * p if params.squared else p
    stats = torch.stack([(p * g).sum(-1), (pk * keep).sum(-1), g.sum(-1)]).double()
    return stats, x.sum(dtype=torch.float32).double()


def slice_gradient(x: Tensor, labels: Tensor, a: Tensor, b: Tensor, params: KernelParams) -> Tensor:
    """``dL/dx`` of a slice of voxels (compute dtype), in plain torch."""
    p, g, keep = _activated(x, labels, params)
    q = a.to(p.dtype).unsqueeze(-1) * (2 * p if params.squared else 1) + b.to(p.dtype).unsqueeze(-1) * g
    if params.activation == 0:
        d = p * (q - (p * q).sum(1, keepdim=True))
    elif params.activation == 1:
        d = p * (1 - p) * q
    else:
        d = q.expand_as(p)
    return d * keep


def chunked_statistics(logits: Tensor, labels: Tensor, params: KernelParams, deterministic: bool):
    n, c, _ = logits.shape
    stats = torch.zeros(3, n, c, dtype=torch.float64, device=logits.device)
    probe = torch.zeros((), dtype=torch.float64, device=logits.device)
    for part in _chunks(logits):
        part_stats, part_probe = slice_statistics(logits[:, :, part], labels[:, part], params)
        stats += part_stats
        probe += part_probe
    return stats, probe


def chunked_gradient(logits: Tensor, labels: Tensor, a: Tensor, b: Tensor, params: KernelParams) -> Tensor:
    grad = interface.output_buffer(logits.shape, logits.device, logits.dtype)
    for part in _chunks(logits):
        grad[:, :, part] = slice_gradient(logits[:, :, part], labels[:, part], a, b, params)
    return grad


CHUNKED = KernelPair(chunked_statistics, chunked_gradient)
