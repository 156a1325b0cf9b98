"""The operators of ``fused``, registered with ``torch.library`` so autograd, fake tensors and
``torch.compile`` see them as PyTorch's own.

Three backends of the same two operators, ``statistics`` and ``gradient`` (and, for the C++
one, the folded ``loss``, ``loss_backward`` and ``eager_loss``; for the Triton one,
``compound_statistics`` and ``compound_gradient`` with the per-pixel term of Dice + CE / focal):

- ``torch.ops.dice_fused``: the C++ CPU kernels (schemas and CPU kernels in ``fused_ops.cpp``);
  they validate their inputs in their own pass (``check_finite``, ``check_labels``).
- ``torch.ops.dice_fused_chunked``: the chunked torch formulation (``chunked.CHUNKED``) as
  ``custom_op``\\ s, opaque to the compiler; used when the C++ extension is not available.
- ``torch.ops.dice_fused_triton``: the Triton kernels (``triton_kernels.TRITON``, launched through
  ``wrap_triton``) as ``triton_op``\\ s, which ``torch.compile`` traces into; they do not validate
  (the caller checks the probe: one host sync per call).

Every backend's operators get a fake kernel (``register_fake``) and its backward (``register_autograd``);
the gradient operators refuse double backward with an error that says so.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from . import autograd, chunked as chunked_kernels, cpu, interface
from .interface import KernelParams


class BackendOperators(NamedTuple):
    """One backend's registered operators (``torch.ops.<namespace>``); ``loss`` only for the C++ one."""

    statistics: object
    gradient: object
    validates: bool  # statistics takes (check_finite, check_labels) and raises itself
    loss: object = None
    compound_statistics: object = None  # Triton: the statistics with the per-pixel term


# Each backend is registered once; a plain dict (not functools.lru_cache) so torch.compile reads
# the cached entry as a constant instead of tracing the loader.
_LOADED: Dict[str, Optional["BackendOperators"]] = {}


def _once(load: Callable[[], Optional["BackendOperators"]]) -> Callable[[], Optional["BackendOperators"]]:
    def cached():
        if load.__name__ not in _LOADED:
            _LOADED[load.__name__] = load()
        return _LOADED[load.__name__]

    cached.__name__, cached.__doc__ = load.__name__, load.__doc__
    return cached


def _register(statistics: str, gradient: str) -> None:
    torch.library.register_fake(statistics, autograd.statistics_fake)
    torch.library.register_fake(gradient, autograd.gradient_fake)
    setup, backward = autograd.statistics_autograd(getattr(torch.ops, gradient.split("::")[0]).gradient)
    torch.library.register_autograd(statistics, backward, setup_context=setup)
    torch.library.register_autograd(gradient, autograd.refuse_double_backward, setup_context=autograd.no_context)


@_once
def cpp() -> Optional[BackendOperators]:
    """The C++ operators, or None when the extension is not available."""
    if not cpu.extension_available():
        return None
    interface.check_layout(torch.ops.dice_fused.folded_loss_layout())
    _register("dice_fused::statistics", "dice_fused::gradient")
    torch.library.register_fake("dice_fused::loss", autograd.loss_fake)
    torch.library.register_fake("dice_fused::loss_backward", autograd.loss_backward_fake)
    torch.library.register_autograd("dice_fused::loss", autograd.loss_backward, setup_context=autograd.loss_setup_context)
    torch.library.register_autograd("dice_fused::loss_backward", autograd.refuse_double_backward,
                                    setup_context=autograd.no_context)
    ops = torch.ops.dice_fused
    return BackendOperators(ops.statistics, ops.gradient, True, ops.loss)


def isa() -> str:
    """The instruction set the C++ kernels run with here ("baseline", "avx2", "avx512")."""
    return torch.ops.dice_fused.isa() if cpp() is not None else "none"


def _flat(logits: Tensor, labels: Tensor):
    n, c = logits.shape[:2]
    voxels = math.prod(logits.shape[2:])  # explicit, not -1: an empty batch has no size to infer
    return logits.reshape(n, c, voxels), labels.reshape(n, voxels)


@_once
def chunked() -> BackendOperators:
    @torch.library.custom_op("dice_fused_chunked::statistics", mutates_args=())
    def statistics(logits: Tensor, labels: Tensor, activation: int, squared: bool, ignore_index: Optional[int],
                   check_finite: bool, check_labels: bool) -> Tuple[Tensor, Tensor]:
        from ..checks import check_finite_logits, check_label_range
        from ..spec import DiceSpec

        params = KernelParams(activation, squared, ignore_index)
        stats, probe = chunked_kernels.chunked_statistics(*_flat(logits, labels), params, True)
        if check_finite and not torch.isfinite(probe):
            check_finite_logits(logits)
        if check_labels:
            check_label_range(labels, logits.shape[1], DiceSpec(ignore_index=ignore_index))
        return stats, probe

    @torch.library.custom_op("dice_fused_chunked::gradient", mutates_args=())
    def gradient(logits: Tensor, labels: Tensor, a: Tensor, b: Tensor, activation: int, squared: bool,
                 ignore_index: Optional[int]) -> Tensor:
        x, y = _flat(logits, labels)
        return chunked_kernels.chunked_gradient(x, y, a, b, KernelParams(activation, squared, ignore_index)).view(logits.shape)

    _register("dice_fused_chunked::statistics", "dice_fused_chunked::gradient")
    ops = torch.ops.dice_fused_chunked
    return BackendOperators(ops.statistics, ops.gradient, True)


@_once
def triton() -> BackendOperators:
    from torch.library import triton_op

    from . import triton_kernels  # imported on demand: Triton reads TRITON_INTERPRET at import

    @triton_op("dice_fused_triton::statistics", mutates_args=())
    def statistics(logits: Tensor, labels: Tensor, activation: int, squared: bool, ignore_index: Optional[int],
                   deterministic: bool) -> Tuple[Tensor, Tensor]:
        return triton_kernels.TRITON.statistics(*_flat(logits, labels), KernelParams(activation, squared, ignore_index),
                                                deterministic)

    @triton_op("dice_fused_triton::gradient", mutates_args=())
    def gradient(logits: Tensor, labels: Tensor, a: Tensor, b: Tensor, activation: int, squared: bool,
                 ignore_index: Optional[int]) -> Tensor:
        x, y = _flat(logits, labels)
        grad = triton_kernels.TRITON.gradient(x, y, a, b, KernelParams(activation, squared, ignore_index))
        return grad.view(logits.shape)

    # With the per-pixel term (cross-entropy, focal; softmax): statistics rows 3 and 4, see triton_kernels.
    @triton_op("dice_fused_triton::compound_statistics", mutates_args=())
    def compound_statistics(logits: Tensor, labels: Tensor, activation: int, squared: bool,
                            ignore_index: Optional[int], deterministic: bool, gamma: float,
                            smoothing_weight: Optional[Tensor], weight_sum: float) -> Tuple[Tensor, Tensor]:
        pixel = triton_kernels.PixelArgs(2 if gamma else 1, gamma, smoothing_weight, weight_sum)
        return triton_kernels.TRITON.statistics(*_flat(logits, labels), KernelParams(activation, squared, ignore_index),
                                                deterministic, pixel=pixel)

    @triton_op("dice_fused_triton::compound_gradient", mutates_args=())
    def compound_gradient(logits: Tensor, labels: Tensor, a: Tensor, b: Tensor, kw: Tensor, ks: Tensor,
                          activation: int, squared: bool, ignore_index: Optional[int], gamma: float,
                          smoothing_weight: Optional[Tensor], weight_sum: float) -> Tensor:
        x, y = _flat(logits, labels)
        pixel = triton_kernels.PixelArgs(2 if gamma else 1, gamma, smoothing_weight, weight_sum)
        grad = triton_kernels.TRITON.gradient(x, y, a, b, KernelParams(activation, squared, ignore_index), pixel=pixel,
                                              kw=kw, ks=ks)
        return grad.view(logits.shape)

    _register("dice_fused_triton::statistics", "dice_fused_triton::gradient")
    torch.library.register_fake("dice_fused_triton::compound_statistics", autograd.compound_statistics_fake)
    torch.library.register_fake("dice_fused_triton::compound_gradient", autograd.gradient_fake)
    setup, backward = autograd.compound_statistics_autograd(torch.ops.dice_fused_triton.compound_gradient)
    torch.library.register_autograd("dice_fused_triton::compound_statistics", backward, setup_context=setup)
    torch.library.register_autograd("dice_fused_triton::compound_gradient", autograd.refuse_double_backward,
                                    setup_context=autograd.no_context)
    ops = torch.ops.dice_fused_triton
    return BackendOperators(ops.statistics, ops.gradient, False, compound_statistics=ops.compound_statistics)


BACKENDS = {"cpp": cpp, "chunked": chunked, "triton": triton}


def backend_operators(name: Optional[str], device: torch.device) -> BackendOperators:
    """The operators by backend name (None: Triton on CUDA, C++ on CPU, else chunked)."""
    if name is None:
        if device.type == "cuda":
            return triton()
        return cpp() or chunked()
    if name not in BACKENDS:
        raise ValueError(f"unknown fused backend {name!r}; choose one of {tuple(BACKENDS)}")
    found = BACKENDS[name]()
    if found is None:
        raise RuntimeError(f"fused backend {name!r} is not available here (the C++ extension did not load)")
    return found
