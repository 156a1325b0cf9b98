"""Implementations by name, and the public entry points that validate before dispatching."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

from torch import Tensor

from .checks import prepare_inputs
from .mixed import mixed_statistics
from .naive import naive_statistics
from .reference import reference_statistics
from .score import DiceStatistics, loss_from_statistics
from .spec import DiceSpec
from .vectorized import vectorized_statistics

StatisticsFn = Callable[[Tensor, Tensor, DiceSpec], DiceStatistics]


@dataclass(frozen=True)
class Implementation:
    """A named way of computing the Dice statistics; calling it gives the loss.

    ``statistics(logits, target, spec)`` receives validated inputs. ``checks_finite`` is True when
    the implementation detects NaN/inf logits itself, so validation skips its own pass over them.
    ``label_maps_only`` is True when it takes integer label maps but no float one-hot/soft targets.
    """

    name: str
    statistics: StatisticsFn
    description: str
    checks_finite: bool = False
    label_maps_only: bool = False

    def __call__(self, logits: Tensor, target: Tensor, spec: Optional[DiceSpec] = None, *,
                 validate: bool = True) -> Tensor:
        spec = spec or DiceSpec()
        return loss_from_statistics(self.compute_statistics(logits, target, spec, validate=validate), spec)

    def compute_statistics(self, logits: Tensor, target: Tensor, spec: DiceSpec, *,
                           validate: bool = True) -> DiceStatistics:
        """Validated statistics; ``validate=False`` skips the checks that read the data
        (``checks.prepare_inputs``)."""
        logits, target = prepare_inputs(logits, target, spec, check_finite=not self.checks_finite, validate=validate)
        if self.label_maps_only and target.is_floating_point():
            raise TypeError(
                f"impl={self.name!r} takes integer label maps only; for float one-hot or soft targets "
                "use impl='vectorized'"
            )
        return self.statistics(logits, target, spec)


IMPLEMENTATIONS: Dict[str, Implementation] = {}


def register(implementation: Implementation) -> Implementation:
    IMPLEMENTATIONS[implementation.name] = implementation
    return implementation


register(Implementation("reference", reference_statistics, "float64 oracle, the formula written out"))
register(Implementation("naive", naive_statistics, "Python loops over images and classes"))
register(Implementation("vectorized", vectorized_statistics, "one-hot target and broadcast sums in the logits' dtype"))
register(Implementation("mixed", mixed_statistics, "half-size intermediates, float32 accumulation"))


def get_implementation(name: str) -> Implementation:
    try:
        return IMPLEMENTATIONS[name]
    except KeyError:
        raise ValueError(f"unknown implementation {name!r}; choose one of {sorted(IMPLEMENTATIONS)}") from None


def resolve_spec(spec: Optional[DiceSpec], overrides: dict) -> DiceSpec:
    if spec is not None and not isinstance(spec, DiceSpec):
        raise TypeError(f"spec must be a DiceSpec, got {type(spec).__name__}")
    return (spec or DiceSpec()).replace(**overrides) if overrides else (spec or DiceSpec())


def dice_loss(
    logits: Tensor, target: Tensor, spec: Optional[DiceSpec] = None, *, impl: str = "vectorized",
    validate: bool = True, **overrides
) -> Tensor:
    """The soft Dice loss of ``logits`` against ``target``.

    Args:
        logits: ``(N, C, *spatial)`` float16/bfloat16/float32/float64 scores (probabilities when
            ``activation="none"``).
        target: integer label map ``(N, *spatial)`` (or ``(N, 1, *spatial)``) of any integer
            dtype, or float one-hot / soft labels ``(N, C, *spatial)`` in ``[0, 1]``. With one
            channel, labels are binary ``{0, 1}``.
        spec: a ``DiceSpec`` (default: ``DiceSpec()``, the MONAI-like defaults).
        impl: the implementation's name (``IMPLEMENTATIONS``).
        validate: run the checks that read the data (finite logits, labels in range, float
            target in [0, 1]); each costs a pass over its input and together one device-to-host
            synchronisation. ``False`` skips them (e.g. under ``torch.compile`` or in a tuned
            training loop): bad values then give a wrong loss instead of an error. Shape and
            dtype checks always run.
        **overrides: ``DiceSpec`` fields changed for this call.
    """
    spec = resolve_spec(spec, overrides)
    return get_implementation(impl)(logits, target, spec, validate=validate)


def dice_statistics(
    logits: Tensor, target: Tensor, spec: Optional[DiceSpec] = None, *, impl: str = "vectorized",
    validate: bool = True, **overrides
) -> DiceStatistics:
    """The per-image, per-class sums ``(N, C)`` of ``dice_loss``, before any scoring.

    ``loss_from_statistics(dice_statistics(...), spec)`` equals ``dice_loss(...)``; reduce the
    statistics across processes in between for a global batch Dice. Arguments as ``dice_loss``.
    """
    spec = resolve_spec(spec, overrides)
    return get_implementation(impl).compute_statistics(logits, target, spec, validate=validate)
