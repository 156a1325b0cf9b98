"""``fused``: one-hot-free Dice statistics with an analytic gradient, C++ on CPU, Triton on GPU.

Importing this package registers ``IMPLEMENTATIONS["fused"]``. The kernels are ``torch.library``
operators (``ops``), so ``torch.compile(fullgraph=True)`` sees them without a graph break. On
the CPU, ``dice_loss(..., impl="fused")`` runs one folded operator forward (the sums, their
scoring for every ``DiceSpec``, and the coefficients of the gradient) and one backward; on the GPU
the Triton sums go through ``loss_from_statistics``. ``routing.fusion`` decides which, for every
caller. ``compound_loss`` adds cross-entropy or focal terms inside the same two passes.

Modules: ``loss`` (the implementation, ``fused_statistics``, ``folded_loss``), ``compound``
(``compound_loss``), ``routing`` (``fusion``), ``interface`` (what the kernels and operators take,
by name), ``ops`` (the ``torch.library`` operators of the three backends), ``autograd`` (their
autograd formulas and fake kernels), ``cpu`` (the C++ extension's loader), ``chunked`` (the torch
fallback kernels), ``triton_kernels``; C++: ``fused_ops.cpp`` and the files it names.
"""

from __future__ import annotations

from ..registry import register
from . import cpu, ops
from .compound import compound_loss
from .interface import FoldedLossArgs, KernelPair, KernelParams, PixelTerm
from .loss import FusedImplementation, folded_loss, fused_statistics
from .routing import fusion

BACKENDS = tuple(ops.BACKENDS)

if cpu.built_library() is not None:
    ops.cpp()  # the built extension loads in milliseconds; doing it now keeps it out of compiled code

register(
    FusedImplementation(
        "fused",
        fused_statistics,
        "one-hot-free sums and analytic gradient: vectorised C++ on CPU (one folded op), Triton on GPU",
        checks_finite=True,
        label_maps_only=True,
    )
)

__all__ = ["BACKENDS", "FoldedLossArgs", "KernelPair", "KernelParams", "PixelTerm", "compound_loss", "fused_statistics",
           "folded_loss", "fusion"]
