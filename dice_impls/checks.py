"""Input validation shared by every implementation: clear errors before any kernel runs.

Checks that need no data (rank, dtypes, shapes, channel counts) cost nothing and always run. The
value checks (finite logits, label range, float target range) read the data without allocating
anything of the logits' size: a float32 sum of the logits (finite unless a logit is NaN/inf), the
min/max of the labels, the min/max of a float target. They end in one 0-d flag each, and the flags
are read back together: one device-to-host synchronisation per call when the inputs are fine.
Only when a flag is down does an exact, allocating pass run to name the problem. ``validate=False``
skips the value checks (see ``prepare_inputs``).

Labels are compared exactly whatever their dtype: a value the dtype cannot hold (an
``ignore_index`` of 256 or -100 for uint8 labels, a class index above its maximum) matches no
pixel instead of wrapping around.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .spec import DiceSpec

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# torch 2.13 has no min/max/less-than for these on CPU; they are read as int64 (one copy).
WIDE_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)
INT64_MAX = torch.iinfo(torch.int64).max


def is_label_map(target: Tensor) -> bool:
    return not target.is_floating_point()


def comparable_labels(labels: Tensor) -> Tensor:
    """``labels`` in a dtype every torch op supports: uint16/32/64 become int64, others pass.

    uint64 values of 2**63 and above (no label map holds them) become ``2**63 - 1``, out of range
    for every class count, instead of wrapping to negative numbers.
    """
    if labels.dtype not in WIDE_UNSIGNED:
        return labels
    if labels.dtype == torch.uint64:
        signed = labels.view(torch.int64)
        return torch.where(signed < 0, INT64_MAX, signed)
    return labels.to(torch.int64)


def dtype_holds(dtype: torch.dtype, value: int) -> bool:
    """Whether a label map of ``dtype`` can hold ``value`` (bool: 0 and 1)."""
    low, high = _bounds(dtype)
    return low <= value <= high


def label_equals(labels: Tensor, value: int) -> Tensor:
    """``labels == value`` without wrap-around: all False when the dtype cannot hold ``value``."""
    if dtype_holds(labels.dtype, value):
        return labels == value
    return torch.zeros_like(labels, dtype=torch.bool)


def ignored_pixels(labels: Tensor, ignore_index: Optional[int]) -> Optional[Tensor]:
    """The bool mask of pixels labelled ``ignore_index``; None when no pixel can be (no
    ``ignore_index``, or one the label dtype cannot hold)."""
    if ignore_index is None or not dtype_holds(labels.dtype, ignore_index):
        return None
    return labels == ignore_index


def outside_range(labels: Tensor, low: int, high: int) -> Tensor:
    """The bool mask of labels outside ``[low, high)``, exact for bounds beyond the dtype's range."""
    low_info, high_info = _bounds(labels.dtype)
    outside = torch.zeros_like(labels, dtype=torch.bool)
    if low > low_info:
        outside |= labels < low if dtype_holds(labels.dtype, low) else torch.ones_like(outside)
    if high <= high_info:
        outside |= labels >= high if dtype_holds(labels.dtype, high) else torch.ones_like(outside)
    return outside


def _bounds(dtype: torch.dtype) -> tuple:
    if dtype == torch.bool:
        return 0, 1
    info = torch.iinfo(dtype)
    return info.min, info.max


def prepare_inputs(logits: Tensor, target: Tensor, spec: DiceSpec, *, check_finite: bool = True,
                   validate: bool = True, squeeze_labels: bool = True):
    """Validate ``logits`` and ``target`` against ``spec``; return them ready for an implementation.

    A label map of shape ``(N, 1, *spatial)`` is squeezed to ``(N, *spatial)`` and uint16/32/64
    labels become int64; logits are resized to the target when ``spec.resize_logits`` asks for
    it. Raises TypeError/ValueError naming the problem. ``validate=False`` skips the checks that
    read the data (finite logits, label range, float target in [0, 1]): no device-to-host
    synchronisation, but bad values then give wrong losses instead of errors. ``check_finite=False``
    skips the finite-logits check alone (for implementations that detect NaN/inf themselves).
    ``squeeze_labels=False`` checks an ``(N, 1, *spatial)`` label map the same way but returns it
    unsqueezed, for kernels that read labels by pixel count: a fresh view per call costs a few
    microseconds of a small call (docs/performance.md).
    """
    if not isinstance(logits, Tensor) or not isinstance(target, Tensor):
        raise TypeError(
            f"logits and target must be torch.Tensors, got {type(logits).__name__} and {type(target).__name__}"
        )
    if logits.dtype not in FLOAT_DTYPES:
        raise TypeError(f"logits must be a floating tensor (float16/bfloat16/float32/float64), got {logits.dtype}")
    if logits.ndim < 3:
        raise ValueError(
            f"logits must have shape (N, C, *spatial) with at least one spatial dim, got shape {tuple(logits.shape)}"
        )
    if target.device != logits.device:
        raise ValueError(f"logits are on {logits.device} but target is on {target.device}")
    if target.dtype == torch.complex64 or target.dtype == torch.complex128:
        raise TypeError(f"target must be an integer label map or a float tensor, got {target.dtype}")
    n, c = logits.shape[:2]
    if c < 1:
        raise ValueError(f"logits have {c} channels; need at least one")
    label_map = is_label_map(target)
    if label_map:
        shape = tuple(target.shape)
        if len(shape) == logits.ndim and shape[1] == 1:
            shape = shape[:1] + shape[2:]
            if squeeze_labels:
                target = target.squeeze(1)  # a view, cheaper than indexing on a small call
        if len(shape) != logits.ndim - 1:
            raise ValueError(
                f"an integer label map must have shape (N, *spatial) = {(n, *logits.shape[2:])}-like with "
                f"{logits.ndim - 2} spatial dims, got shape {tuple(target.shape)}"
            )
        target = comparable_labels(target)
        target_spatial = shape[1:]
    else:
        if target.ndim != logits.ndim:
            raise ValueError(
                f"a float target must have shape (N, C, *spatial) like the logits {tuple(logits.shape)}, "
                f"got shape {tuple(target.shape)}"
            )
        if target.shape[1] != c:
            raise ValueError(f"float target has {target.shape[1]} channels but logits have {c}")
        target_spatial = tuple(target.shape[2:])
    if target.shape[0] != n:
        raise ValueError(f"batch size differs: logits have {n} images, target has {target.shape[0]}")
    if tuple(logits.shape[2:]) != target_spatial:
        if not spec.resize_logits:
            raise ValueError(
                f"spatial size differs: logits {tuple(logits.shape[2:])} vs target {target_spatial} "
                "(set resize_logits=True to resize the logits to the target)"
            )
        logits = resize_to(logits, target_spatial)
    check_spec_against_channels(spec, c)
    if validate:
        check_values(logits, target, spec, check_finite=check_finite)
    return logits, target


def check_values(logits: Tensor, target: Tensor, spec: DiceSpec, *, check_finite: bool = True) -> None:
    """The checks that read the data, with one device-to-host synchronisation when all pass."""
    label_map = is_label_map(target)
    flags = [
        finite_flag(logits) if check_finite else None,
        label_range_flag(target, logits.shape[1], spec) if label_map else float_target_flag(target),
    ]
    flags = [flag for flag in flags if flag is not None]
    if not flags or bool(torch.stack(flags).all()):
        return
    if check_finite:
        check_finite_logits(logits)
    if label_map:
        check_label_range(target, logits.shape[1], spec)
    else:
        check_float_target(target)


def check_spec_against_channels(spec: DiceSpec, channels: int) -> None:
    if spec.weight is not None and len(spec.weight) != channels:
        raise ValueError(f"weight has {len(spec.weight)} entries but logits have {channels} channels (one per channel)")
    if channels == 1 and spec.activation == "softmax":
        raise ValueError("softmax over a single channel is constant 1; use activation='sigmoid' for a binary task")
    if channels == 1 and not spec.include_background:
        raise ValueError("include_background=False drops the only channel; nothing would be left to score")
    if spec.weight is not None and not spec.include_background and sum(spec.weight[1:]) == 0:
        raise ValueError("weight is zero on every class left after dropping the background")


def finite_flag(logits: Tensor) -> Tensor:
    """0-d bool, True when no logit is NaN or inf (one float32 sum, no synchronisation)."""
    return torch.isfinite(logits.sum(dtype=torch.float32))


def check_finite_logits(logits: Tensor) -> None:
    if bool(finite_flag(logits)):
        return
    bad = ~torch.isfinite(logits)
    if bad.any():
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"logits contain NaN or inf ({int(bad.sum())} values; first at index {index})")


def label_range(channels: int) -> tuple:
    """Valid labels ``[low, high)``: ``{0, 1}`` for a one-channel (binary) task, else ``[0, C)``."""
    return (0, 2) if channels == 1 else (0, channels)


def label_range_flag(target: Tensor, channels: int, spec: DiceSpec) -> Optional[Tensor]:
    """0-d bool, True when every label is in range or ignored (no synchronisation); None when
    there is nothing to check."""
    if target.dtype == torch.bool or target.numel() == 0 or spec.out_of_range == "zero_target":
        return None
    low, high = label_range(channels)
    ignored = ignored_pixels(target, spec.ignore_index)
    if ignored is not None and not low <= spec.ignore_index < high:
        target = torch.where(ignored, torch.zeros((), dtype=target.dtype, device=target.device), target)
    t_min, t_max = (t.to(torch.int64) for t in torch.aminmax(target))  # int64: bounds beyond the dtype stay exact
    return (t_min >= low) & (t_max < high)


def check_label_range(target: Tensor, channels: int, spec: DiceSpec) -> None:
    flag = label_range_flag(target, channels, spec)
    if flag is None or bool(flag):
        return
    low, high = label_range(channels)
    bad = outside_range(target, low, high)
    ignored = ignored_pixels(target, spec.ignore_index)
    if ignored is not None:
        bad &= ~ignored
    values = torch.unique(target[bad])[:5].tolist()
    hint = "" if spec.ignore_index is None else f" other than ignore_index={spec.ignore_index}"
    raise ValueError(
        f"labels out of range: found {values} but labels must lie in [{low}, {high - 1}]{hint} "
        f"for {channels} channel(s)"
    )


def float_target_flag(target: Tensor) -> Optional[Tensor]:
    """0-d bool, True when the float target lies in [0, 1] (False on NaN); None when empty."""
    if target.numel() == 0:  # an empty batch (e.g. a rank with no images) has nothing to check
        return None
    t_min, t_max = torch.aminmax(target.detach())
    return (t_min >= 0) & (t_max <= 1)


def check_float_target(target: Tensor) -> None:
    flag = float_target_flag(target)
    if flag is None or bool(flag):
        return
    t_min, t_max = torch.aminmax(target.detach())
    if not (torch.isfinite(t_min) and torch.isfinite(t_max)):
        raise ValueError("float target contains NaN or inf")
    raise ValueError(f"a float target must hold probabilities in [0, 1], found values in [{float(t_min)}, {float(t_max)}]")


def resize_to(logits: Tensor, spatial: tuple) -> Tensor:
    modes = {1: "linear", 2: "bilinear", 3: "trilinear"}
    if len(spatial) not in modes:
        raise ValueError(f"resize_logits supports 1 to 3 spatial dims, got {len(spatial)}")
    return F.interpolate(logits, size=spatial, mode=modes[len(spatial)], align_corners=True)


# --- parameters of the per-pixel terms (cross-entropy, focal) -----------------------------------

def check_focal_parameters(gamma: float, alpha: Optional[float]) -> None:
    """``gamma >= 0`` (finite) and ``alpha`` in ``[0, 1]`` or None; a ValueError names the bad one."""
    if not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"focal gamma must be finite and >= 0, got {gamma}")
    if alpha is not None and not 0 <= alpha <= 1:
        raise ValueError(f"focal alpha must lie in [0, 1] (or be None), got {alpha}")


def check_label_smoothing(label_smoothing: float) -> None:
    """Cross-entropy's ``label_smoothing`` in [0, 1], as torch, MONAI and nnU-Net require."""
    if not 0 <= label_smoothing <= 1:  # also False for NaN
        raise ValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing}")


def check_class_weight(weight: Optional[Sequence[float]], channels: int, name: str = "class_weight") -> None:
    """One per-pixel-term class weight per logits channel (``F.cross_entropy``'s rule)."""
    if weight is not None and len(weight) != channels:
        raise ValueError(f"{name} has {len(weight)} entries but logits have {channels} channels (one per channel)")
