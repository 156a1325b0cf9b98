"""Input validation shared by every implementation: clear errors before any kernel runs.

Checks that need no data (rank, dtypes, shapes, channel counts) cost nothing. The two value
checks read the data once without allocating anything of its size: a float32 sum of the logits
(finite unless a logit is NaN/inf) and the min/max of the labels; only when those look wrong is
an exact, allocating check run to name the problem.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .spec import DiceSpec

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def is_label_map(target: Tensor) -> bool:
    return not target.is_floating_point()


def prepare_inputs(logits: Tensor, target: Tensor, spec: DiceSpec, *, check_finite: bool = True,
                   check_values: bool = True):
    """Validate ``logits`` and ``target`` against ``spec``; return them ready for an implementation.

    A label map of shape ``(N, 1, *spatial)`` is squeezed to ``(N, *spatial)``; logits are resized
    to the target when ``spec.resize_logits`` asks for it. Raises TypeError/ValueError naming the
    problem. ``check_values=False`` skips every check that reads data (an implementation that
    validates inside its own kernels).
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
        if target.ndim == logits.ndim and target.shape[1] == 1:
            target = target[:, 0]
        if target.ndim != logits.ndim - 1:
            raise ValueError(
                f"an integer label map must have shape (N, *spatial) = {(n, *logits.shape[2:])}-like with "
                f"{logits.ndim - 2} spatial dims, got shape {tuple(target.shape)}"
            )
        target_spatial = tuple(target.shape[1:])
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
    if not check_values:
        return logits, target
    if check_finite:
        check_finite_logits(logits)
    if label_map:
        check_label_range(target, c, spec)
    else:
        check_float_target(target)
    return logits, target


def check_spec_against_channels(spec: DiceSpec, channels: int) -> None:
    if spec.weight is not None and len(spec.weight) != channels:
        raise ValueError(f"weight has {len(spec.weight)} entries but logits have {channels} channels (one per channel)")
    if channels == 1 and spec.activation == "softmax":
        raise ValueError("softmax over a single channel is constant 1; use activation='sigmoid' for a binary task")
    if channels == 1 and not spec.include_background:
        raise ValueError("include_background=False drops the only channel; nothing would be left to score")
    if spec.weight is not None and not spec.include_background and sum(spec.weight[1:]) == 0:
        raise ValueError("weight is zero on every class left after dropping the background")


def check_finite_logits(logits: Tensor) -> None:
    if torch.isfinite(logits.sum(dtype=torch.float32)):
        return
    bad = ~torch.isfinite(logits)
    if bad.any():
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"logits contain NaN or inf ({int(bad.sum())} values; first at index {index})")


def label_range(channels: int) -> tuple:
    """Valid labels ``[low, high)``: ``{0, 1}`` for a one-channel (binary) task, else ``[0, C)``."""
    return (0, 2) if channels == 1 else (0, channels)


def check_label_range(target: Tensor, channels: int, spec: DiceSpec) -> None:
    if target.dtype == torch.bool or target.numel() == 0 or spec.out_of_range == "zero_target":
        return
    low, high = label_range(channels)
    t_min, t_max = torch.aminmax(target)
    if int(t_min) >= low and int(t_max) < high:
        return
    bad = (target < low) | (target >= high)
    if spec.ignore_index is not None:
        bad &= target != spec.ignore_index
    if bad.any():
        values = torch.unique(target[bad])[:5].tolist()
        hint = "" if spec.ignore_index is None else f" other than ignore_index={spec.ignore_index}"
        raise ValueError(
            f"labels out of range: found {values} but labels must lie in [{low}, {high - 1}]{hint} "
            f"for {channels} channel(s)"
        )


def check_float_target(target: Tensor) -> None:
    if target.numel() == 0:  # an empty batch (e.g. a rank with no images) has nothing to check
        return
    t_min, t_max = torch.aminmax(target.detach())
    if not (torch.isfinite(t_min) and torch.isfinite(t_max)):
        raise ValueError("float target contains NaN or inf")
    if float(t_min) < 0 or float(t_max) > 1:
        raise ValueError(f"a float target must hold probabilities in [0, 1], found values in [{float(t_min)}, {float(t_max)}]")


def resize_to(logits: Tensor, spatial: tuple) -> Tensor:
    modes = {1: "linear", 2: "bilinear", 3: "trilinear"}
    if len(spatial) not in modes:
        raise ValueError(f"resize_logits supports 1 to 3 spatial dims, got {len(spatial)}")
    return F.interpolate(logits, size=spatial, mode=modes[len(spatial)], align_corners=True)
