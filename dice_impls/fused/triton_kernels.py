"""GPU kernels of ``fused`` in Triton (they also run on CPU tensors under ``TRITON_INTERPRET=1``).

Statistics: a grid of (image, program); each program walks ``tiles_per_program`` tiles of
``BLOCK_C x BLOCK_V`` logits (all channels of ``BLOCK_V`` pixels), keeps per-lane float32
accumulators and reduces them once at the end. With ``deterministic`` every program writes its
partial sums to its own slot and the slots are summed in a fixed order; otherwise the partials are
added with float atomics (faster, order-dependent rounding). Gradient: one program per tile
recomputes p from the logits and writes ``dL/dlogits`` (see ``autograd``) in the logits' dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import autograd
from .autograd import Backend, KernelParams

TILE_ELEMENTS = 2048  # BLOCK_C * BLOCK_V
PROGRAMS_PER_GRID = 2048  # statistics programs in all, enough to fill a large GPU


@triton.jit
def _tile(x_ptr, y_ptr, n, v, V, C, ignore_index,
          BLOCK_C: tl.constexpr, ACTIVATION: tl.constexpr, HAS_IGNORE: tl.constexpr, LABEL_LOW: tl.constexpr):
    """(p, g, keep, probe) of one tile: probabilities, target mask, counted pixels, x - x."""
    c = tl.arange(0, BLOCK_C)
    c_ok = c < C
    v_ok = v < V
    mask = c_ok[:, None] & v_ok[None, :]
    row = n.to(tl.int64) * C
    x = tl.load(x_ptr + (row + c[:, None]) * V + v[None, :], mask=mask, other=0.0).to(tl.float32)
    probe = tl.sum(tl.sum(tl.where(mask, x - x, 0.0), 1), 0)
    if ACTIVATION == 0:
        x = tl.where(c_ok[:, None], x, float("-inf"))
        e = tl.exp(x - tl.max(x, 0)[None, :])
        p = e / tl.sum(e, 0)[None, :]
    elif ACTIVATION == 1:
        p = 1.0 / (1.0 + tl.exp(-x))
    else:
        p = x
    label = tl.load(y_ptr + n.to(tl.int64) * V + v, mask=v_ok, other=0).to(tl.int64)
    keep = v_ok
    if HAS_IGNORE:
        keep = keep & (label != ignore_index)
    g = ((label - LABEL_LOW)[None, :] == c[:, None]) & keep[None, :] & c_ok[:, None]
    p = tl.where(keep[None, :] & c_ok[:, None], p, 0.0)
    return p, g, keep, probe


@triton.jit
def _statistics_kernel(x_ptr, y_ptr, out_ptr, probe_ptr, V, C, ignore_index, tiles_per_program,
                       BLOCK_C: tl.constexpr, BLOCK_V: tl.constexpr, ACTIVATION: tl.constexpr,
                       SQUARED: tl.constexpr, HAS_IGNORE: tl.constexpr, LABEL_LOW: tl.constexpr,
                       DETERMINISTIC: tl.constexpr):
    n = tl.program_id(0)
    program = tl.program_id(1)
    programs = tl.num_programs(1)
    tp = tl.zeros([BLOCK_C, BLOCK_V], dtype=tl.float32)
    ps = tl.zeros([BLOCK_C, BLOCK_V], dtype=tl.float32)
    gs = tl.zeros([BLOCK_C, BLOCK_V], dtype=tl.float32)
    probe = 0.0
    for t in range(tiles_per_program):
        v = (program * tiles_per_program + t) * BLOCK_V + tl.arange(0, BLOCK_V)
        p, g, keep, tile_probe = _tile(x_ptr, y_ptr, n, v, V, C, ignore_index,
                                       BLOCK_C, ACTIVATION, HAS_IGNORE, LABEL_LOW)
        tp += tl.where(g, p, 0.0)
        if SQUARED:
            ps += p * p
        else:
            ps += p
        gs += g.to(tl.float32)
        probe += tile_probe
    c = tl.arange(0, BLOCK_C)
    c_ok = c < C
    sums = (tl.sum(tp, 1), tl.sum(ps, 1), tl.sum(gs, 1))
    if DETERMINISTIC:
        # Slot (n, program) of the (N, programs, 3, C) partials; summed in order on the host.
        slot = (n.to(tl.int64) * programs + program) * 3 * C
        tl.store(out_ptr + slot + c, sums[0], mask=c_ok)
        tl.store(out_ptr + slot + C + c, sums[1], mask=c_ok)
        tl.store(out_ptr + slot + 2 * C + c, sums[2], mask=c_ok)
        tl.store(probe_ptr + n * programs + program, probe)
    else:
        # Atomics into the zeroed (3, N, C) sums.
        stride = tl.num_programs(0).to(tl.int64) * C
        tl.atomic_add(out_ptr + n * C + c, sums[0], mask=c_ok)
        tl.atomic_add(out_ptr + stride + n * C + c, sums[1], mask=c_ok)
        tl.atomic_add(out_ptr + 2 * stride + n * C + c, sums[2], mask=c_ok)
        tl.atomic_add(probe_ptr, probe)


@triton.jit
def _gradient_kernel(x_ptr, y_ptr, a_ptr, b_ptr, grad_ptr, V, C, ignore_index,
                     BLOCK_C: tl.constexpr, BLOCK_V: tl.constexpr, ACTIVATION: tl.constexpr,
                     SQUARED: tl.constexpr, HAS_IGNORE: tl.constexpr, LABEL_LOW: tl.constexpr):
    n = tl.program_id(0)
    v = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    p, g, keep, _ = _tile(x_ptr, y_ptr, n, v, V, C, ignore_index, BLOCK_C, ACTIVATION, HAS_IGNORE, LABEL_LOW)
    c = tl.arange(0, BLOCK_C)
    c_ok = c < C
    a = tl.load(a_ptr + n * C + c, mask=c_ok, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + n * C + c, mask=c_ok, other=0.0).to(tl.float32)
    if SQUARED:
        q = 2.0 * a[:, None] * p
    else:
        q = a[:, None] + tl.zeros_like(p)
    q += tl.where(g, b[:, None], 0.0)
    if ACTIVATION == 0:
        d = p * (q - tl.sum(p * q, 0)[None, :])
    elif ACTIVATION == 1:
        d = p * (1.0 - p) * q
    else:
        d = q
    d = tl.where(keep[None, :], d, 0.0)
    mask = c_ok[:, None] & (v < V)[None, :]
    offsets = (n.to(tl.int64) * C + c[:, None]) * V + v[None, :]
    tl.store(grad_ptr + offsets, d.to(grad_ptr.dtype.element_ty), mask=mask)


def _blocks(channels: int):
    block_c = triton.next_power_of_2(channels)
    return block_c, max(16, TILE_ELEMENTS // block_c)


def _constants(logits: Tensor, params: KernelParams):
    block_c, block_v = _blocks(logits.shape[1])
    return dict(
        BLOCK_C=block_c, BLOCK_V=block_v, ACTIVATION=params.activation, SQUARED=params.squared,
        HAS_IGNORE=params.ignore_index is not None, LABEL_LOW=1 if logits.shape[1] == 1 else 0,
    )


def triton_statistics(logits: Tensor, labels: Tensor, params: KernelParams, deterministic: bool,
                      tiles_per_program: int | None = None):
    n, c, v = logits.shape
    constants = _constants(logits, params)
    tiles = triton.cdiv(v, constants["BLOCK_V"])
    if tiles_per_program is None:
        tiles_per_program = max(1, triton.cdiv(tiles, max(1, PROGRAMS_PER_GRID // max(n, 1))))
    programs = max(1, triton.cdiv(tiles, tiles_per_program))
    ignore = 0 if params.ignore_index is None else params.ignore_index
    if deterministic:
        out = autograd.output_buffer((n, programs, 3, c), logits.device, torch.float32)
        probe = autograd.output_buffer((n, programs), logits.device, torch.float32)
    else:
        out = torch.zeros((3, n, c), device=logits.device, dtype=torch.float32)
        probe = torch.zeros((), device=logits.device, dtype=torch.float32)
    if n and v:
        _statistics_kernel[(n, programs)](logits, labels, out, probe, v, c, ignore, tiles_per_program,
                                          DETERMINISTIC=deterministic, **constants)
    if deterministic:
        return out.double().sum(1).permute(1, 0, 2), probe.double().sum()
    return out.double(), probe.double()


def triton_gradient(logits: Tensor, labels: Tensor, a: Tensor, b: Tensor, params: KernelParams) -> Tensor:
    n, c, v = logits.shape
    grad = autograd.output_buffer(logits.shape, logits.device, logits.dtype)
    constants = _constants(logits, params)
    ignore = 0 if params.ignore_index is None else params.ignore_index
    if n and v:
        _gradient_kernel[(n, triton.cdiv(v, constants["BLOCK_V"]))](logits, labels, a, b, grad, v, c, ignore,
                                                                    **constants)
    return grad


TRITON = Backend(triton_statistics, triton_gradient)
