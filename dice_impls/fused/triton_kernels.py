"""GPU kernels of ``fused`` in Triton (they also run on CPU tensors under ``TRITON_INTERPRET=1``).

Both kernels walk tiles of ``BLOCK_V`` pixels on a 1-D grid of ``N x programs`` programs; program
``i`` takes image ``i // programs`` and ``tiles_per_program`` consecutive tiles of it. All index
arithmetic past the program id is int64, so no product of V, C and tile counts can wrap (the
compile check refuses any 32-bit multiply in the kernels' TTIR).

Channels have two layouts, chosen from C by ``layout``:

- resident (C <= ``RESIDENT_CHANNELS``): a tile holds all ``BLOCK_C = next_pow2(C)`` channels of
  its pixels; softmax needs one exp per logit, and the statistics keep per-lane accumulators that
  are reduced once at the end.
- looped (larger C): channels are walked in ``channel_blocks`` blocks of ``BLOCK_C = 8``, so
  registers do not grow with C and fewer than 8 lanes are padding. Softmax takes two passes over
  the blocks of a tile: the first an online max and sum (``m``, ``s``, rescaled when the max
  grows; the gradient also carries the softmax dot product there), the second the probabilities.
  Per-tile channel sums are added into ``(ACC_ROWS, BLOCK_C)`` accumulators (rows padded to a
  power of two).

Statistics are accumulated in float32 (float64 for float64 logits, which are computed in float64
throughout). With ``deterministic`` every program writes its partial sums to its own slot of a
``(3, N, programs, C)`` buffer that is summed in a fixed order; otherwise partials are added with
atomics into zeroed ``(3, N, C)`` sums (faster, order-dependent rounding). The gradient kernel
recomputes p from the logits and writes ``dL/dlogits`` (see ``autograd``) in the logits' dtype.

With a per-pixel term (softmax cross-entropy or focal, ``PixelArgs``; ``PIXEL`` 1 or 2) the
statistics kernel also returns, per image, the term ``f nll`` summed by class of the label (row 3)
and the label-smoothing sum ``sum_counted (W lse - sum_c w_c x_c)`` (row 4, column 0), from the
max and sum the softmax computes anyway; the gradient kernel adds the term's gradient
``p_c A - [c = y] kw_y h - ks w_c [counted]`` with the coefficients ``kw = dL/d(row 3)`` and
``ks = dL/d(row 4)`` (the formulas of ``fused_kernels.h``). The class weights enter through those
per-class rows and coefficients, never per pixel.

The launchers read no tensor values and create no tensor from host data, so they never wait for
the device. Kernels are launched through ``torch.library.wrap_triton`` so that a ``triton_op`` can
call these launchers under ``torch.compile``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from . import interface
from .interface import KernelPair, KernelParams

TILE_ELEMENTS = 2048  # BLOCK_C * BLOCK_V of the resident layout: 16 values per thread and tensor at 4 warps
LOOPED_TILE_ELEMENTS = 1024  # of the looped layout, which also holds the (ACC_ROWS, 8) accumulators
LOOPED_WARPS = 8  # at 4 warps ptxas spilled 16 bytes of the looped statistics on sm_80
RESIDENT_CHANNELS = 32  # up to this C all channels of a tile stay in registers
CHANNEL_BLOCK = 8  # channels per block of the looped layout: pads fewer than 8 lanes; larger blocks spilled
STATISTICS_PROGRAMS = 2048  # statistics programs in all, enough to fill a large GPU
GRID_X_MAX = 2**31 - 1  # CUDA's limit on grid dimension x (y and z: 65535; both kernels use x only)


@triton.jit
def _tile_pixels(y_ptr, n, tile, V, ignore_index, BLOCK_V: tl.constexpr, HAS_IGNORE: tl.constexpr,
                 LABEL_LOW: tl.constexpr):
    """(v, v_ok, keep, target class) of one tile: int64 pixel indices, in range, counted."""
    v = tile * BLOCK_V + tl.arange(0, BLOCK_V).to(tl.int64)
    v_ok = v < V
    label = tl.load(y_ptr + n * V + v, mask=v_ok, other=0).to(tl.int64)
    keep = v_ok
    if HAS_IGNORE:
        keep = keep & (label != ignore_index)
    return v, v_ok, keep, label - LABEL_LOW


@triton.jit
def _load_logits(x_ptr, n, c, v, C, V, ACC: tl.constexpr):
    """Logits of channels ``c`` at pixels ``v`` in ACC; -inf on channels past C, 0 on pixels past V."""
    c_ok = c < C
    x = tl.load(x_ptr + (n * C + c[:, None]) * V + v[None, :], mask=c_ok[:, None] & (v < V)[None, :],
                other=0.0).to(ACC)
    return tl.where(c_ok[:, None], x, float("-inf"))


@triton.jit
def _activate(x, m, r, ACTIVATION: tl.constexpr):
    """Probabilities from logits: softmax with the pixel's max ``m`` and 1 / sum ``r``, sigmoid, or none."""
    if ACTIVATION == 0:
        p = tl.exp(x - m[None, :]) * r[None, :]
    elif ACTIVATION == 1:
        p = 1.0 / (1.0 + tl.exp(-x))
    else:
        p = x
    return p


@triton.jit
def _softmax_normaliser(x_ptr, n, v, C, V, channel_blocks, BLOCK_C: tl.constexpr, BLOCK_V: tl.constexpr,
                        ACC: tl.constexpr):
    """Per-pixel max and 1 / sum of exp over all channel blocks (online: one pass, rescaled)."""
    m = tl.full([BLOCK_V], float("-inf"), ACC)
    s = tl.zeros([BLOCK_V], ACC)
    c = tl.arange(0, BLOCK_C).to(tl.int64)  # advanced by BLOCK_C per block: int64, no multiply
    for _ in range(channel_blocks):
        x = _load_logits(x_ptr, n, c, v, C, V, ACC)
        m_new = tl.maximum(m, tl.max(x, 0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[None, :]), 0)
        m = m_new
        c += BLOCK_C
    return m, 1.0 / s


@triton.jit
def _block_terms(x, c, c_ok, v_ok, keep, y, m, r, ACTIVATION: tl.constexpr, SQUARED: tl.constexpr,
                 ACC: tl.constexpr):
    """(m p g, m p**k + (x - x), g) of one block: the summands of the statistics, the probe folded in.

    ``x - x`` is 0 for every finite logit and NaN otherwise, so pred_sum is finite exactly when
    all logits are and serves as the probe of ``KernelPair``."""
    counted = keep[None, :] & c_ok[:, None]
    p = tl.where(counted, _activate(x, m, r, ACTIVATION), 0.0)
    g = (y[None, :] == c[:, None]) & counted
    probe = tl.where(c_ok[:, None] & v_ok[None, :], x - x, 0.0)
    return tl.where(g, p, 0.0), (p * p if SQUARED else p) + probe, g.to(ACC)


@triton.jit
def _pixel_term(lse, xy, gamma, PIXEL: tl.constexpr):
    """The per-pixel term f nll, nll = lse - x_y, f = (1 - p_y)^gamma for focal (PIXEL 2), else 1."""
    nll = lse - xy
    if PIXEL == 2:
        rest = 1.0 - tl.exp(-nll)
        nll = tl.where(rest > 0.0, tl.exp(gamma * tl.log(tl.maximum(rest, 1e-30))), 0.0) * nll
    return nll


@triton.jit
def _focal_factor(lse, xy, gamma):
    """h = (1 - p_y)^(gamma - 1) (1 - p_y + gamma p_y nll): d(f nll)/dnll."""
    nll = lse - xy
    py = tl.exp(-nll)
    rest = 1.0 - py
    return tl.where(rest > 0.0, tl.exp((gamma - 1.0) * tl.log(tl.maximum(rest, 1e-30))) * (rest + gamma * py * nll),
                    0.0)


@triton.jit
def _statistics_kernel(x_ptr, y_ptr, out_ptr, w_ptr, V, C, ignore_index, programs, tiles_per_program, channel_blocks,
                       gamma, weight_sum,
                       BLOCK_C: tl.constexpr, BLOCK_V: tl.constexpr, RESIDENT: tl.constexpr, ACC_ROWS: tl.constexpr,
                       ACTIVATION: tl.constexpr, SQUARED: tl.constexpr, HAS_IGNORE: tl.constexpr,
                       LABEL_LOW: tl.constexpr, DETERMINISTIC: tl.constexpr, ACC: tl.constexpr,
                       PIXEL: tl.constexpr, SMOOTHING: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    n = pid // programs
    program = pid % programs
    c_in_block = tl.arange(0, BLOCK_C).to(tl.int64)
    if RESIDENT:
        # Per-lane accumulators, reduced once after the last tile.
        c_ok = c_in_block < C
        tp = tl.zeros([BLOCK_C, BLOCK_V], ACC)
        ps = tl.zeros([BLOCK_C, BLOCK_V], ACC)
        gs = tl.zeros([BLOCK_C, BLOCK_V], ACC)
        pt = tl.zeros([BLOCK_C, BLOCK_V], ACC)
        smooth = tl.zeros([BLOCK_V], ACC)
        for t in range(tiles_per_program):
            v, v_ok, keep, y = _tile_pixels(y_ptr, n, program * tiles_per_program + t, V, ignore_index,
                                            BLOCK_V, HAS_IGNORE, LABEL_LOW)
            x = _load_logits(x_ptr, n, c_in_block, v, C, V, ACC)
            m = tl.max(x, 0)
            r = 1.0 / tl.sum(tl.exp(x - m[None, :]), 0) if ACTIVATION == 0 else m
            tile_tp, tile_ps, tile_gs = _block_terms(x, c_in_block, c_ok, v_ok, keep, y, m, r, ACTIVATION,
                                                     SQUARED, ACC)
            tp += tile_tp
            ps += tile_ps
            gs += tile_gs
            if PIXEL:
                lse = m - tl.log(r)
                g = (y[None, :] == c_in_block[:, None]) & c_ok[:, None]
                term = _pixel_term(lse, tl.sum(tl.where(g, x, 0.0), 0), gamma, PIXEL)
                pt += tl.where(g & keep[None, :], term[None, :], 0.0)
                if SMOOTHING:
                    w = tl.load(w_ptr + c_in_block, mask=c_ok, other=0.0).to(ACC)
                    wx = tl.sum(tl.where(c_ok[:, None], w[:, None] * x, 0.0), 0)
                    smooth += tl.where(keep & (y >= 0) & (y < C), weight_sum * lse - wx, 0.0)
        sums = (tl.sum(tp, 1), tl.sum(ps, 1), tl.sum(gs, 1), tl.sum(pt, 1),
                tl.where(c_in_block == 0, tl.sum(smooth, 0), 0.0))
        c_all = c_in_block
    else:
        # Per-tile channel sums added into row ``block`` of (ACC_ROWS, BLOCK_C) accumulators.
        blocks = tl.arange(0, ACC_ROWS)
        tp = tl.zeros([ACC_ROWS, BLOCK_C], ACC)
        ps = tl.zeros([ACC_ROWS, BLOCK_C], ACC)
        gs = tl.zeros([ACC_ROWS, BLOCK_C], ACC)
        pt = tl.zeros([ACC_ROWS, BLOCK_C], ACC)
        smooth = tl.zeros([BLOCK_V], ACC)
        for t in range(tiles_per_program):
            v, v_ok, keep, y = _tile_pixels(y_ptr, n, program * tiles_per_program + t, V, ignore_index,
                                            BLOCK_V, HAS_IGNORE, LABEL_LOW)
            m = tl.zeros([BLOCK_V], ACC)
            r = m
            if ACTIVATION == 0:
                m, r = _softmax_normaliser(x_ptr, n, v, C, V, channel_blocks, BLOCK_C, BLOCK_V, ACC)
            xy = tl.zeros([BLOCK_V], ACC)
            wx = tl.zeros([BLOCK_V], ACC)
            c = c_in_block
            for block in range(channel_blocks):
                x = _load_logits(x_ptr, n, c, v, C, V, ACC)
                tile_tp, tile_ps, tile_gs = _block_terms(x, c, c < C, v_ok, keep, y, m, r, ACTIVATION, SQUARED,
                                                         ACC)
                here = (blocks == block)[:, None]
                tp += tl.where(here, tl.sum(tile_tp, 1)[None, :], 0.0)
                ps += tl.where(here, tl.sum(tile_ps, 1)[None, :], 0.0)
                gs += tl.where(here, tl.sum(tile_gs, 1)[None, :], 0.0)
                if PIXEL:
                    xy += tl.sum(tl.where((y[None, :] == c[:, None]) & (c < C)[:, None], x, 0.0), 0)
                    if SMOOTHING:
                        w = tl.load(w_ptr + c, mask=c < C, other=0.0).to(ACC)
                        wx += tl.sum(tl.where((c < C)[:, None], w[:, None] * x, 0.0), 0)
                c += BLOCK_C
            if PIXEL:
                # The term is known once every block is read: a pass over the blocks (no loads) sums it by class.
                lse = m - tl.log(r)
                term = _pixel_term(lse, xy, gamma, PIXEL)
                if SMOOTHING:
                    smooth += tl.where(keep & (y >= 0) & (y < C), weight_sum * lse - wx, 0.0)
                c = c_in_block
                for block in range(channel_blocks):
                    g = (y[None, :] == c[:, None]) & (c < C)[:, None] & keep[None, :]
                    pt += tl.where((blocks == block)[:, None], tl.sum(tl.where(g, term[None, :], 0.0), 1)[None, :], 0.0)
                    c += BLOCK_C
        c_all = tl.arange(0, ACC_ROWS * BLOCK_C).to(tl.int64)
        sums = (tl.reshape(tp, [ACC_ROWS * BLOCK_C]), tl.reshape(ps, [ACC_ROWS * BLOCK_C]),
                tl.reshape(gs, [ACC_ROWS * BLOCK_C]), tl.reshape(pt, [ACC_ROWS * BLOCK_C]),
                tl.where(c_all == 0, tl.sum(smooth, 0), 0.0))
    c_ok = c_all < C
    if DETERMINISTIC:
        # Slot (k, n, program) of the (rows, N, programs, C) partials; summed in order by the launcher.
        total = tl.num_programs(0).to(tl.int64)
        for k in tl.static_range(5 if PIXEL else 3):
            tl.store(out_ptr + (k * total + pid) * C + c_all, sums[k], mask=c_ok)
    else:
        # Atomics into the zeroed (rows, N, C) sums.
        stride = (tl.num_programs(0).to(tl.int64) // programs) * C
        for k in tl.static_range(5 if PIXEL else 3):
            tl.atomic_add(out_ptr + k * stride + n * C + c_all, sums[k], mask=c_ok)


@triton.jit
def _p_and_q(x, c, c_ok, y, a_ptr, b_ptr, n, C, m, r, ACTIVATION: tl.constexpr, SQUARED: tl.constexpr,
             ACC: tl.constexpr):
    """p and q = dL/dp = a k p**(k-1) + b g of one block of channels."""
    a = tl.load(a_ptr + n * C + c, mask=c_ok, other=0.0).to(ACC)
    b = tl.load(b_ptr + n * C + c, mask=c_ok, other=0.0).to(ACC)
    p = _activate(x, m, r, ACTIVATION)
    q = 2.0 * a[:, None] * p if SQUARED else a[:, None] + tl.zeros_like(p)
    return p, q + tl.where(y[None, :] == c[:, None], b[:, None], 0.0)


@triton.jit
def _gradient_kernel(x_ptr, y_ptr, a_ptr, b_ptr, kw_ptr, ks_ptr, w_ptr, grad_ptr, V, C, ignore_index, programs,
                     tiles_per_program, channel_blocks, gamma, weight_sum, BLOCK_C: tl.constexpr,
                     BLOCK_V: tl.constexpr, RESIDENT: tl.constexpr, ACTIVATION: tl.constexpr, SQUARED: tl.constexpr,
                     HAS_IGNORE: tl.constexpr, LABEL_LOW: tl.constexpr, ACC: tl.constexpr, PIXEL: tl.constexpr,
                     SMOOTHING: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    n = pid // programs
    program = pid % programs
    c_in_block = tl.arange(0, BLOCK_C).to(tl.int64)
    ks = 0.0
    if SMOOTHING:
        ks = tl.load(ks_ptr + n).to(ACC)
    for t in range(tiles_per_program):
        v, v_ok, keep, y = _tile_pixels(y_ptr, n, program * tiles_per_program + t, V, ignore_index,
                                        BLOCK_V, HAS_IGNORE, LABEL_LOW)
        m = tl.zeros([BLOCK_V], ACC)
        r = m
        dot = m
        kwy = m  # the pixel term's coefficient of the label's class, kw_y
        xy = m
        if RESIDENT:
            c_ok = c_in_block < C
            x = _load_logits(x_ptr, n, c_in_block, v, C, V, ACC)
            if ACTIVATION == 0:
                m = tl.max(x, 0)
                r = 1.0 / tl.sum(tl.exp(x - m[None, :]), 0)
            p, q = _p_and_q(x, c_in_block, c_ok, y, a_ptr, b_ptr, n, C, m, r, ACTIVATION, SQUARED, ACC)
            if ACTIVATION == 0:
                dot = tl.sum(p * q, 0)
            if PIXEL:
                g = (y[None, :] == c_in_block[:, None]) & c_ok[:, None]
                kw = tl.load(kw_ptr + n * C + c_in_block, mask=c_ok, other=0.0).to(ACC)
                kwy = tl.sum(tl.where(g, kw[:, None], 0.0), 0)
                if PIXEL == 2:
                    xy = tl.sum(tl.where(g, x, 0.0), 0)
        elif ACTIVATION == 0:
            # First pass: max, sum and the softmax dot product sum_j p_j q_j = k sum_j a_j p_j**k + b_y p_y,
            # each accumulated relative to the running max and rescaled when it grows.
            m = tl.full([BLOCK_V], float("-inf"), ACC)
            s = tl.zeros([BLOCK_V], ACC)
            sa = tl.zeros([BLOCK_V], ACC)
            sb = tl.zeros([BLOCK_V], ACC)
            c = c_in_block
            for _ in range(channel_blocks):
                c_ok = c < C
                x = _load_logits(x_ptr, n, c, v, C, V, ACC)
                a = tl.load(a_ptr + n * C + c, mask=c_ok, other=0.0).to(ACC)
                b = tl.load(b_ptr + n * C + c, mask=c_ok, other=0.0).to(ACC)
                m_new = tl.maximum(m, tl.max(x, 0))
                scale = tl.exp(m - m_new)
                e = tl.exp(x - m_new[None, :])
                s = s * scale + tl.sum(e, 0)
                sa = sa * scale * scale + tl.sum(a[:, None] * e * e, 0) if SQUARED else \
                    sa * scale + tl.sum(a[:, None] * e, 0)
                sb = sb * scale + tl.sum(tl.where(y[None, :] == c[:, None], b[:, None] * e, 0.0), 0)
                if PIXEL:
                    g = (y[None, :] == c[:, None]) & c_ok[:, None]
                    kw = tl.load(kw_ptr + n * C + c, mask=c_ok, other=0.0).to(ACC)
                    kwy += tl.sum(tl.where(g, kw[:, None], 0.0), 0)
                    if PIXEL == 2:
                        xy += tl.sum(tl.where(g, x, 0.0), 0)
                m = m_new
                c += BLOCK_C
            r = 1.0 / s
            dot = (2.0 * sa * r * r if SQUARED else sa * r) + sb * r
        # The pixel term: p_c A - [c = y] H - ks w_c [counted], A = H + ks W [counted], H = kw_y h.
        counted = keep & (y >= 0) & (y < C)
        h = 1.0
        if PIXEL == 2:
            h = _focal_factor(m - tl.log(r), xy, gamma)
        label_term = tl.where(keep, kwy * h, 0.0)
        pixel_a = label_term + tl.where(counted, ks * weight_sum, 0.0)
        c = c_in_block
        for _ in range(channel_blocks):
            c_ok = c < C
            if not RESIDENT:
                x = _load_logits(x_ptr, n, c, v, C, V, ACC)
                p, q = _p_and_q(x, c, c_ok, y, a_ptr, b_ptr, n, C, m, r, ACTIVATION, SQUARED, ACC)
            if ACTIVATION == 0:
                d = p * (q - dot[None, :])
            elif ACTIVATION == 1:
                d = p * (1.0 - p) * q
            else:
                d = q
            d = tl.where(keep[None, :] & c_ok[:, None], d, 0.0)
            if PIXEL:
                d += p * pixel_a[None, :] - tl.where(y[None, :] == c[:, None], label_term[None, :], 0.0)
                if SMOOTHING:
                    w = tl.load(w_ptr + c, mask=c_ok, other=0.0).to(ACC)
                    d -= tl.where(counted[None, :], ks * w[:, None], 0.0)
            offsets = (n * C + c[:, None]) * V + v[None, :]
            tl.store(grad_ptr + offsets, d.to(grad_ptr.dtype.element_ty), mask=c_ok[:, None] & v_ok[None, :])
            c += BLOCK_C


class Layout(NamedTuple):
    """How tiles cover the channels: ``channel_blocks`` blocks of ``block_c`` channels x ``block_v`` pixels."""

    block_c: int
    block_v: int
    channel_blocks: int

    @property
    def resident(self) -> bool:
        return self.channel_blocks == 1


def layout(channels: int, float64: bool = False, pixel: bool = False) -> Layout:
    """The tiles for C channels; float64 values take two registers each, and the per-pixel term
    carries one more accumulator and the focal factor's exps (full tiles spilled 4-12 bytes on
    sm_80/sm_90), so each halves the tiles."""
    shrink = (2 if float64 else 1) * (2 if pixel else 1)
    if channels <= RESIDENT_CHANNELS:
        block_c = triton.next_power_of_2(channels)
        return Layout(block_c, max(1, TILE_ELEMENTS // shrink // block_c), 1)
    return Layout(CHANNEL_BLOCK, LOOPED_TILE_ELEMENTS // shrink // CHANNEL_BLOCK, triton.cdiv(channels, CHANNEL_BLOCK))


def program_split(images: int, tiles: int, max_programs: int):
    """(programs per image, tiles per program): each image's tiles over at most max_programs // images."""
    programs = max(1, min(tiles, max_programs // max(images, 1)))
    tiles_per_program = max(1, triton.cdiv(tiles, programs))
    return max(1, triton.cdiv(tiles, tiles_per_program)), tiles_per_program


def accumulator_dtype(logits: Tensor) -> torch.dtype:
    """float64 logits are computed in float64 throughout; every other dtype in float32."""
    if logits.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"the Triton kernels take float16/bfloat16/float32/float64 logits, got {logits.dtype}")
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


class PixelArgs(NamedTuple):
    """The per-pixel term of both kernels (softmax only): ``kind`` 1 cross-entropy, 2 focal with
    ``gamma``; ``smoothing_weight`` (C,) the class weights of the label-smoothing sum (None: no
    smoothing) and ``weight_sum`` their sum."""

    kind: int
    gamma: float = 0.0
    smoothing_weight: Optional[Tensor] = None
    weight_sum: float = 0.0


def _arguments(logits: Tensor, params: KernelParams, pixel: Optional[PixelArgs]):
    """(layout, the scalars after V and C, the constexprs) common to both kernels."""
    if pixel is not None and (params.activation != 0 or logits.shape[1] < 2):
        raise ValueError("the Triton per-pixel term needs softmax logits with at least 2 channels")
    float64 = accumulator_dtype(logits) == torch.float64
    shape = layout(logits.shape[1], float64, pixel is not None)
    ignore = 0 if params.ignore_index is None else params.ignore_index
    constants = dict(
        num_warps=4 if shape.resident else LOOPED_WARPS,
        BLOCK_C=shape.block_c, BLOCK_V=shape.block_v, RESIDENT=shape.resident, ACTIVATION=params.activation,
        SQUARED=params.squared, HAS_IGNORE=params.ignore_index is not None,
        LABEL_LOW=1 if logits.shape[1] == 1 else 0,
        ACC=tl.float64 if float64 else tl.float32,
        PIXEL=0 if pixel is None else pixel.kind,
        SMOOTHING=pixel is not None and pixel.smoothing_weight is not None,
    )
    return shape, ignore, constants


def triton_statistics(logits: Tensor, labels: Tensor, params: KernelParams, deterministic: bool,
                      tiles_per_program: int | None = None, pixel: Optional[PixelArgs] = None):
    """``(stats, probe)``: stats ``(3, N, C)`` float64, or ``(5, N, C)`` with the pixel term's rows."""
    n, c, v = logits.shape
    shape, ignore, constants = _arguments(logits, params, pixel)
    tiles = triton.cdiv(v, shape.block_v)
    programs, split = program_split(n, tiles, STATISTICS_PROGRAMS)
    if tiles_per_program is not None:  # tests choose the split to exercise the program loop
        split = tiles_per_program
        programs = max(1, triton.cdiv(tiles, split))
    acc = accumulator_dtype(logits)
    rows = 3 if pixel is None else 5
    if deterministic:
        out = interface.output_buffer((rows, n, programs, c), logits.device, acc)
    else:
        out = torch.zeros((rows, n, c), device=logits.device, dtype=acc)
    weights = pixel.smoothing_weight if pixel is not None and pixel.smoothing_weight is not None else out
    if n:  # also with no voxels: every program writes its (zero) partials
        wrap_triton(_statistics_kernel)[(n * programs,)](
            logits, labels, out, weights, v, c, ignore, programs, split, shape.channel_blocks,
            0.0 if pixel is None else float(pixel.gamma), 0.0 if pixel is None else float(pixel.weight_sum),
            ACC_ROWS=triton.next_power_of_2(shape.channel_blocks), DETERMINISTIC=deterministic, **constants,
        )
    stats = out.double().sum(2) if deterministic else out.double()
    return stats, stats[1].sum()  # pred_sum carries the probe (see _block_terms)


def triton_gradient(logits: Tensor, labels: Tensor, a: Tensor, b: Tensor, params: KernelParams,
                    pixel: Optional[PixelArgs] = None, kw: Optional[Tensor] = None,
                    ks: Optional[Tensor] = None) -> Tensor:
    """dL/dlogits; with the pixel term, ``kw`` (N, C) and ``ks`` (N,): the upstream gradients of the
    statistics' rows 3 and 4 (float64, contiguous)."""
    n, c, v = logits.shape
    shape, ignore, constants = _arguments(logits, params, pixel)
    grad = interface.output_buffer(logits.shape, logits.device, logits.dtype)
    programs, split = program_split(n, triton.cdiv(v, shape.block_v), GRID_X_MAX)
    weights = pixel.smoothing_weight if pixel is not None and pixel.smoothing_weight is not None else a
    if n and v:
        wrap_triton(_gradient_kernel)[(n * programs,)](
            logits, labels, a, b, a if kw is None else kw, a if ks is None else ks, weights, grad, v, c, ignore,
            programs, split, shape.channel_blocks, 0.0 if pixel is None else float(pixel.gamma),
            0.0 if pixel is None else float(pixel.weight_sum), **constants
        )
    return grad


TRITON = KernelPair(triton_statistics, triton_gradient)
