"""``dice_impls.audit``: point it at any Dice loss and learn what it computes, which known defects
it has, and what it costs.

    report = dice_impls.audit(my_loss, channels=3)
    print(report)            # the sentence, the properties, the defects, the cost
    report.to_json()         # the same, for tools; report.exit_status: 0, 1 (defects), 2 (not audited)

The loss is a black box ``f(logits, target)`` (a function, an ``nn.Module`` class built with
``kwargs``, or an instance). The audit finds its calling convention (``encoding``), identifies
the ``DiceSpec`` it computes (``identify``), probes the known defects (``defects``) and measures
its cost (``cost``). docs/audit.md describes every probe and threshold.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch

from .cost import measure_cost
from .defects import Prober
from .encoding import find_conventions
from .identify import Identification, identify, identify_convention
from .probes import ProbeFactory
from .report import DEFECT_IDS, AuditReport, Defect, describe, reduction_unit, short_repr, spec_fields
from .target import Target

__all__ = ["AuditReport", "DEFECT_IDS", "Defect", "audit"]


AUTO_CHANNELS = (3, 1, 2)  # channels=None: multiclass first, then binary losses (one channel, or two)


def audit(fn: Callable, channels: Optional[int] = None, *, kwargs: Optional[dict] = None, device="cpu",
          quick: bool = False, ignore_index: Optional[int] = None, name: Optional[str] = None,
          seed: int = 0) -> AuditReport:
    """Audit the Dice loss ``fn`` for ``channels`` classes (1: binary, one channel; None: 3, or 1
    or 2 when the loss takes no 3-channel input).

    ``quick`` skips the cost measurement. ``ignore_index`` names the label the loss ignores when
    it cannot be read from its keywords, attributes or signature. Never raises for the loss's
    sake: a loss that cannot be audited gives a report with ``error`` set (exit status 2).
    """
    if channels is not None and (isinstance(channels, bool) or not isinstance(channels, int) or channels < 1):
        raise ValueError(f"channels must be a positive int (1 for a binary loss) or None, got {channels!r}")
    started = time.perf_counter()
    label = name or getattr(fn, "__qualname__", None) or type(fn).__name__
    report = AuditReport(target=label, channels=channels or AUTO_CHANNELS[0])
    try:
        _run(report, fn, channels, kwargs, torch.device(device), quick, ignore_index, seed)
    except Exception as error:  # the audit itself must not crash on a strange loss: say why instead
        report.error = f"the audit stopped: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    report.seconds = time.perf_counter() - started
    return report


def _run(report: AuditReport, fn, channels, kwargs, device, quick, ignore_index, seed) -> None:
    failures = []
    for count in (channels,) if channels else AUTO_CHANNELS:
        try:
            target = Target.build(fn, kwargs, device, report.target, count)
        except (TypeError, ValueError) as error:
            failures.append(str(error))
            continue
        conventions, reason = find_conventions(target, count, seed)
        if conventions:
            break
        failures.append(reason)
    else:
        others = f" (also tried {' and '.join(map(str, AUTO_CHANNELS[1:]))} channels)" if not channels else ""
        report.error = failures[0] + others
        return
    if failures:
        target.notes.append(f"audited with {count} channel(s): with {AUTO_CHANNELS[0]}, {failures[0]}")
    convention, factory, identification = identify_convention(target, conventions, count, seed)
    if identification.spec is None and not channels:
        target, count, convention, factory, identification = _binary_instead(
            (target, count, convention, factory, identification), fn, kwargs, device, report.target, seed)
    report.channels = count
    report.target_encoding, report.input_kind = convention.encoding.description, convention.kind
    _describe(report, identification, count)
    report.defects, notes = Prober(target, convention, factory, identification, ignore_index).run()
    report.notes = target.notes + identification.notes + notes
    if not quick:
        report.cost = measure_cost(target, convention.encoding, factory, identification.spec or identification.closest)


def _binary_instead(found, fn, kwargs, device, name, seed):
    """With the channel count left to the audit: a loss that no spec reproduces with 3 channels
    may be a binary loss that also runs on 3 (e.g. one that flattens everything); the exact search
    with 1 and 2 channels, kept when a spec reproduces it there."""
    for count in AUTO_CHANNELS[1:]:
        if count == found[1]:
            continue
        try:
            target = Target.build(fn, kwargs, device, name, count)
        except (TypeError, ValueError):
            continue
        conventions, _ = find_conventions(target, count, seed)
        if not conventions:
            continue
        factory = ProbeFactory(count, conventions[0].kind, seed)
        identification = identify(target, conventions[0].encoding, factory, affine_fallback=False)
        if identification.spec is not None:
            target.notes.append(f"audited with {count} channel(s): no DiceSpec reproduces it with {found[1]}")
            return target, count, conventions[0], factory, identification
    return found


def _describe(report: AuditReport, found: Identification, channels: int) -> None:
    spec = found.spec or found.closest
    report.spec, report.closest_spec = spec_fields(found.spec), spec_fields(found.closest)
    report.affine = None if found.affine is None else {"offset": found.affine[0], "scale": found.affine[1]}
    report.max_abs_diff, report.max_grad_diff = found.max_abs_diff, found.max_grad_diff
    report.disagreeing_probes = found.disagreeing
    if spec is None:
        report.reduction_unit = "per_image" if found.per_image else "other"
        report.sentence = "no DiceSpec gives finite values on the probes"
        return
    report.activation, report.include_background, report.squared = spec.activation, spec.include_background, spec.squared
    report.smooth_nr, report.smooth_dr = spec.smooth_nr, spec.smooth_dr
    report.reduction_unit = reduction_unit(spec, channels) if found.spec else \
        ("per_image" if found.per_image else "other")
    words = describe(spec, channels)
    diff = f"{found.max_abs_diff:.1g}" if math.isfinite(found.max_abs_diff) else "inf"
    if found.spec is not None:
        report.sentence = f"{words} — equal to {short_repr(spec)} within {diff}"
    elif found.affine is not None and found.max_abs_diff <= 1e-4:
        a, b = found.affine
        report.sentence = (f"{words}, rescaled: the loss equals {a:.4g} + {b:.4g} x {short_repr(spec)} within {diff} "
                           "(no DiceSpec by itself)")
    else:
        report.sentence = (f"no DiceSpec matches; closest: {words} — {short_repr(spec)}, off by {diff}"
                           + (f" after rescaling by {found.affine[1]:.4g} and shifting by {found.affine[0]:.4g}"
                              if found.affine else ""))
