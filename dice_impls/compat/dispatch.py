"""What the drop-in classes share: the implementation for a call, activations, label maps.

Dispatch rule: an integer label map goes to ``fused`` (no one-hot, no stored probabilities, float32
arithmetic whatever the logits' dtype, CPU and GPU); a float target (one-hot, soft labels,
multi-label masks) goes to ``mixed``, the dense formulation with float32 sums: for half logits its
sums cannot overflow the way a half sum does, and for float32/float64 logits it computes exactly
what ``vectorized`` does.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import dice_loss
from ..spec import DiceSpec

LABEL_MAP_IMPL = "fused"
DENSE_IMPL = "mixed"
_INT32 = (-(2**31), 2**31 - 1)


def implementation_for(target: Tensor) -> str:
    """The implementation a drop-in class uses for ``target`` (see the module docstring)."""
    return DENSE_IMPL if target.is_floating_point() else LABEL_MAP_IMPL


def dice(logits: Tensor, target: Tensor, spec: DiceSpec) -> Tensor:
    """The spec's loss through the implementation ``implementation_for(target)``."""
    return dice_loss(logits, target, spec, impl=implementation_for(target))


def activation_of(fn: Optional[Callable]) -> Optional[str]:
    """The spec's activation equal to the callable ``fn`` (None when it is none of them).

    ``None`` is ``"none"``; ``torch.sigmoid``, ``nn.Sigmoid()`` are ``"sigmoid"``; softmax over
    dim 1 (``nn.Softmax(dim=1)``, nnU-Net's ``softmax_helper_dim1``) is ``"softmax"``. Any other
    callable is applied by the caller, followed by ``activation="none"``.
    """
    if fn is None:
        return "none"
    if fn in (torch.sigmoid, F.sigmoid) or isinstance(fn, nn.Sigmoid):
        return "sigmoid"
    if isinstance(fn, nn.Softmax) and fn.dim == 1:
        return "softmax"
    if getattr(fn, "__name__", None) == "softmax_helper_dim1" and getattr(fn, "__module__", "").startswith(
        ("nnunetv2.", "dice_impls.")
    ):
        return "softmax"
    return None


def apply_activation(fn: Callable, logits: Tensor, argument: str) -> Tensor:
    """``fn(logits)``, scored by the spec as probabilities (``activation="none"``): it must keep the
    logits' shape. Values outside [0, 1] are scored by the formula as the peers score them (a
    negative denominator is divided by, ``DiceSpec.min_denominator``)."""
    if not callable(fn):
        raise TypeError(f"{argument} must be None or callable but is {type(fn).__name__}.")
    out = fn(logits)
    if not isinstance(out, Tensor) or out.shape != logits.shape:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{argument} must return a tensor of the logits' shape {tuple(logits.shape)}, got {shape}")
    return out


def label_map(target: Tensor, ignore_index: Optional[int] = None) -> Tensor:
    """An integer label map from one the peers accept: integer maps pass unchanged (no copy), float
    maps (MONAI's loaders give float32 labels) are truncated like the peers' ``.long()``, into
    int32 when ``ignore_index`` fits (half of int64's bytes), int64 otherwise. A NaN or inf in a
    float map is refused by name (truncated, it would be a huge negative label)."""
    if not target.is_floating_point():
        return target
    if not bool(target.detach().isfinite().all()):  # one pass over labels (1/C of the logits), one sync
        raise ValueError("the float label map contains NaN or inf; labels must be class indices")
    fits = ignore_index is None or _INT32[0] <= ignore_index <= _INT32[1]
    return target.to(torch.int32 if fits else torch.int64)


def check_tensors(**arguments) -> None:
    """A TypeError naming every argument that is not a torch.Tensor (a numpy array, a list)."""
    wrong = {name: type(value).__name__ for name, value in arguments.items() if not isinstance(value, Tensor)}
    if wrong:
        found = ", ".join(f"{name} is {kind}" for name, kind in wrong.items())
        raise TypeError(f"{' and '.join(arguments)} must be torch.Tensors; {found} (convert with torch.as_tensor)")


def warn_ignored(argument: str) -> None:
    """MONAI's warning for an argument that a single-channel prediction makes meaningless."""
    warnings.warn(f"single channel prediction, `{argument}` ignored.", stacklevel=3)
