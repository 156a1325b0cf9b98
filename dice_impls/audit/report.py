"""The audit's result: what the loss computes, its defects, its cost; printable and JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import List, Optional

from ..spec import DiceSpec

DEFECT_IDS = (
    "absent_class_penalty", "perfect_not_best", "negative_loss", "nan_or_inf", "half_precision_overflow",
    "mutates_input", "batch_size_dependent", "crash", "no_gradient", "nondeterministic", "host_sync", "ignore_leak",
)


@dataclass
class Defect:
    id: str  # one of DEFECT_IDS
    message: str  # what happened, in numbers
    evidence: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.id not in DEFECT_IDS:
            raise ValueError(f"unknown defect id {self.id!r}; ids are {DEFECT_IDS}")


@dataclass
class AuditReport:
    """What ``dice_impls.audit`` found. ``spec`` is set when a ``DiceSpec`` reproduces the loss
    (``max_abs_diff <= 1e-4`` on random inputs, and the gradient); otherwise ``closest_spec`` and
    ``disagreeing_probes`` say how near the family comes. ``error`` is set when the loss could
    not be audited at all."""

    target: str
    channels: int
    target_encoding: Optional[str] = None
    input_kind: Optional[str] = None  # "logits" or "probabilities"
    spec: Optional[dict] = None
    closest_spec: Optional[dict] = None
    affine: Optional[dict] = None  # {"offset": a, "scale": b}: loss = a + b * closest_spec's loss
    max_abs_diff: Optional[float] = None
    max_grad_diff: Optional[float] = None
    disagreeing_probes: List[dict] = field(default_factory=list)
    activation: Optional[str] = None
    reduction_unit: Optional[str] = None  # "per_image" | "batch" | "global" | "other"
    include_background: Optional[bool] = None
    squared: Optional[bool] = None
    smooth_nr: Optional[float] = None
    smooth_dr: Optional[float] = None
    sentence: str = ""
    defects: List[Defect] = field(default_factory=list)
    cost: Optional[dict] = None
    notes: List[str] = field(default_factory=list)
    error: Optional[str] = None
    seconds: float = 0.0

    @property
    def exit_status(self) -> int:
        """0 audited without defects, 1 defects found, 2 could not audit."""
        return 2 if self.error else 1 if self.defects else 0

    @property
    def defect_ids(self) -> List[str]:
        return [d.id for d in self.defects]

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["exit_status"] = self.exit_status
        return _json_safe(out)

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def __str__(self) -> str:
        lines = [f"audit of {self.target} ({self.channels} channel{'s' if self.channels != 1 else ''})"]
        if self.error:
            return "\n".join(lines + [f"could not audit: {self.error}"])
        lines.append(f"  {self.sentence}")
        lines.append(f"  target encoding   {self.target_encoding}, {self.input_kind}")
        for name in ("activation", "reduction_unit", "include_background", "squared", "smooth_nr", "smooth_dr"):
            lines.append(f"  {name:<17} {getattr(self, name)}")
        if self.spec is None and self.disagreeing_probes:
            shown = ", ".join(f"{d['probe']} ({d['loss']:.4g} vs {d['spec']:.4g})" for d in self.disagreeing_probes[:4])
            lines.append(f"  disagreeing probes {shown}")
        lines.append(f"defects: {len(self.defects) or 'none'}")
        lines += [f"  {d.id}: {d.message}" for d in self.defects]
        if self.cost:
            lines.append("cost (forward+backward):")
            for row in self.cost.get("rows", []):
                lines.append("  " + _cost_line(row))
        elif self.cost is None:
            lines.append("cost: not measured (--quick)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _cost_line(row: dict) -> str:
    def fmt(value, unit, scale):
        return "n/a" if value is None else f"{value * scale:.3g} {unit}"
    return (f"{row['shape']:<18} {row['implementation']:<22} {fmt(row.get('seconds'), 'ms', 1e3):>10}  "
            f"peak {fmt(row.get('peak_bytes'), 'MiB', 2**-20):>10}" + (f"  ({row['note']})" if row.get("note") else ""))


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def spec_fields(spec: Optional[DiceSpec]) -> Optional[dict]:
    return None if spec is None else dataclasses.asdict(spec)


def short_repr(spec: DiceSpec) -> str:
    """``DiceSpec(...)`` with the fields that differ from the defaults (the activation always)."""
    default = DiceSpec()
    parts = [f"activation={spec.activation!r}"]
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if f.name != "activation" and value != getattr(default, f.name):
            parts.append(f"{f.name}={_number(value)}")
    return f"DiceSpec({', '.join(parts)})"


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return repr(value)


def reduction_unit(spec: DiceSpec, channels: int) -> str:
    if not spec.batch:
        return "per_image"
    scored = channels - (0 if spec.include_background else 1)
    pooled = spec.average == "micro" or spec.generalized is not None
    return "global" if pooled and scored > 1 else "batch"


def describe(spec: DiceSpec, channels: int) -> str:
    """The spec in words: unit, family, classes, activation, smoothing, loss form."""
    unit = {"per_image": "per-image", "batch": "batch", "global": "global (classes pooled)"}[reduction_unit(spec, channels)]
    if spec.jaccard:
        family = "Jaccard (IoU)"
    elif spec.fp_weight is not None:
        family = f"Tversky (alpha={spec.fp_weight:.3g} on false positives, beta={spec.fn_weight:.3g} on false negatives)"
    elif spec.beta != 1:
        family = f"F-beta (beta={spec.beta:.3g})"
    else:
        family = "Dice"
    if spec.generalized:
        family = f"generalized {family} (class weights {dict(square='1/G^2', simple='1/G', uniform='1')[spec.generalized]})"
    if spec.squared:
        family += " with squared sums (p^2, g^2)"
    if channels == 1:
        classes = "on the single channel"
    else:
        first = 0 if spec.include_background else 1
        classes = f"over classes {first}..{channels - 1}"
        if spec.average == "micro":
            classes += " pooled (micro)"
        elif spec.absent_classes == "zero":
            classes += ", an absent class counting 0"
        elif spec.absent_classes == "exclude":
            classes += ", absent classes left out"
    activation = {"softmax": "after a softmax", "sigmoid": "after a sigmoid", "none": "on probabilities"}[spec.activation]
    if spec.smooth_nr == spec.smooth_dr:
        smoothing = f"smoothing {spec.smooth_nr:g} in numerator and denominator" if spec.smooth_nr else "no smoothing"
    else:
        smoothing = f"smoothing {spec.smooth_nr:g} in the numerator and {spec.smooth_dr:g} in the denominator"
    if spec.min_denominator:
        smoothing += f", denominator clamped at {spec.min_denominator:g}"
    form = "loss -score" if spec.negate else "loss -log(score)" if spec.log_loss else \
        f"loss (1 - score)^{spec.focal_gamma:.3g}" if spec.focal_gamma != 1 else "loss 1 - score"
    reduce = ", summed" if spec.reduction == "sum" else ""
    return f"{unit} {family} {classes} {activation}, {smoothing}, {form}{reduce}"
