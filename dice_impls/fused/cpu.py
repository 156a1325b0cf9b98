"""CPU kernels of ``fused``: a vectorised C++ kernel (the default) and a chunked torch formulation.

The C++ source (``fused_dice.cpp``) is compiled at first use with ``torch.utils.cpp_extension.load``
(gcc and ninja) into torch's extension cache (``$TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``), so only the first process on a machine pays the build;
docs/performance.md gives its duration and the measurements that chose this kernel. The chunked
formulation walks the voxels in slices so its temporaries stay small; it is the fallback when
the build fails.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import warnings
from pathlib import Path

import torch
from torch import Tensor

from . import autograd
from .autograd import Backend, KernelParams

SOURCE = Path(__file__).with_name("fused_dice.cpp")
# Temporaries of the chunked formulation: about this many elements of (N, C, chunk) at a time.
CHUNK_ELEMENTS = 1 << 18


@functools.lru_cache(maxsize=None)
def load_extension():
    """Build (once per machine) and load the C++ kernels; returns ``torch.ops.dice_fused``."""
    from torch.utils.cpp_extension import load

    # torch runs `ninja` from PATH; a virtual environment used without activation has it beside python.
    if shutil.which("ninja") is None:
        os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    load(
        name="dice_fused_cpu",
        sources=[str(SOURCE)],
        extra_cflags=["-O3", "-march=native", "-fno-trapping-math", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        is_python_module=False,
        verbose=False,
    )
    return torch.ops.dice_fused


@functools.lru_cache(maxsize=None)
def extension_available() -> bool:
    try:
        load_extension()
    except Exception as error:  # a missing compiler or ninja: fall back, say why once
        warnings.warn(f"fused: the C++ CPU kernel did not build ({error}); using the chunked torch kernel")
        return False
    return True


def _ignore(params: KernelParams):
    return params.ignore_index is not None, 0 if params.ignore_index is None else params.ignore_index


def cpp_statistics(logits: Tensor, labels: Tensor, params: KernelParams, deterministic: bool):
    # Deterministic always: fixed tasks reduced in a fixed order.
    return load_extension().statistics(logits, labels, params.activation, params.squared, *_ignore(params))


def cpp_gradient(logits: Tensor, labels: Tensor, a: Tensor, b: Tensor, params: KernelParams) -> Tensor:
    grad = autograd.output_buffer(logits.shape, logits.device, logits.dtype)
    load_extension().gradient(logits, labels, a, b, grad, params.activation, params.squared, *_ignore(params))
    return grad


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
    grad = autograd.output_buffer(logits.shape, logits.device, logits.dtype)
    for part in _chunks(logits):
        grad[:, :, part] = slice_gradient(logits[:, :, part], labels[:, part], a, b, params)
    return grad


CPP = Backend(cpp_statistics, cpp_gradient)
CHUNKED = Backend(chunked_statistics, chunked_gradient)
