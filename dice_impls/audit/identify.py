"""What a loss computes: designed probes narrow the ``DiceSpec`` candidates, a fit picks one, and
random inputs confirm it against the float64 reference, value and gradient."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch

from ..registry import dice_loss
from ..spec import DiceSpec
from .probes import LARGE, Probe, ProbeFactory
from .search import (AVERAGES, COARSE_SMOOTHING, FORMS, MIN_DENOMINATORS, SMOOTHING, Candidate, ProbeStatistics,
                     best_of, fit_weights, form_of, refine, search_grid, spec_values, structures)
from .encoding import Convention, Encoding
from .target import Target

MATCH = 1e-4  # max |loss - spec| (relative where |loss| > 1) on the confirmation inputs: the same loss
GRADIENT_MATCH = 1e-3  # max gradient difference relative to the largest gradient
FITS = 1e-5  # a candidate that fits the probes this well needs no continuous refinement
FAR = 0.02  # a candidate this far off after fitting its own fields is not refined further
CONFIRMATIONS = 20


@dataclass
class Identification:
    spec: Optional[DiceSpec]  # the match, or None
    closest: Optional[DiceSpec]
    affine: Optional[Tuple[float, float]]  # loss = a + b * closest, when only that fits
    max_abs_diff: float
    max_grad_diff: Optional[float]  # relative to the largest gradient; None without a gradient
    disagreeing: List[dict] = field(default_factory=list)
    per_image: Optional[bool] = None  # the loss is a mean (or sum) of one value per image
    sums_images: bool = False
    probe_values: dict = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)


def identify_convention(target: Target, conventions: Sequence[Convention], channels: int, seed: int = 0,
                        tries: int = 3) -> Tuple[Convention, ProbeFactory, Identification]:
    """The identification under the first of ``conventions`` that a DiceSpec reproduces (at most
    ``tries`` of them, exact search only), else the full search (affine relations included) under
    the first convention, the most common way of calling a loss."""
    if len(conventions) > 1:
        for convention in conventions[:tries]:
            factory = ProbeFactory(channels, convention.kind, seed)
            found = identify(target, convention.encoding, factory, affine_fallback=False)
            if found.spec is not None:
                return convention, factory, found
    factory = ProbeFactory(channels, conventions[0].kind, seed)
    return conventions[0], factory, identify(target, conventions[0].encoding, factory)


def identify(target: Target, encoding: Encoding, factory: ProbeFactory, *,
             affine_fallback: bool = True) -> Identification:
    """The spec ``target`` computes under ``encoding``; ``affine_fallback`` also searches for
    ``a + b * spec`` when no spec fits by itself."""
    channels = factory.channels
    probes = factory.identification(encoding.float_target)
    observed = evaluate(target, encoding, probes, channels)
    values = dict(zip((p.name for p in probes), observed.tolist()))
    notes = []

    activations = _activations(target, encoding, factory, notes)
    base, moved = factory.spread_pair(activations[0])
    spread = evaluate(target, encoding, [base, moved], channels)
    squares = _squared(spread, notes)
    probes += [base, moved]
    observed = torch.cat([observed, spread])
    per_image, sums_images = _unit(values, 3 if channels == 4 else 4)
    batches = (False,) if per_image else (True,) if per_image is False else (False, True)
    reductions = ("sum",) if sums_images else ("mean", "sum") if per_image is not True else ("mean",)
    soft_labels = (False, True) if encoding.float_target else (False,)

    cache = ProbeStatistics(probes)
    candidates = _search(cache, probes, observed, channels, activations, squares, soft_labels, batches, reductions,
                         affine=False)
    searched_affine = affine_fallback and (not candidates or candidates[0].error > MATCH)
    if searched_affine:
        candidates = best_of(candidates + _search(cache, probes, observed, channels, activations, squares,
                                                   soft_labels, batches, reductions, affine=True))
    if not candidates:
        return Identification(None, None, None, math.inf, None, per_image=per_image, sums_images=sums_images,
                              probe_values=values, notes=notes + ["no candidate spec gives finite values"])
    confirmation = factory.random_inputs(CONFIRMATIONS, encoding.float_target)
    tried = []
    exact = [c for c in candidates if c.affine is None][:3]
    related = [c for c in candidates if c.affine is not None][:2]
    for candidate in exact + [e for c in related for e in _exact_versions(c)] + related:
        value_diff, grad_diff = confirm(target, encoding, confirmation, candidate, channels)
        tried.append((candidate, value_diff, grad_diff))
        if value_diff <= MATCH and (grad_diff is None or grad_diff <= GRADIENT_MATCH):
            break
    agrees = lambda t: t[1] <= MATCH and (t[2] is None or t[2] <= GRADIENT_MATCH)  # noqa: E731
    candidate, value_diff, grad_diff = min(tried, key=lambda t: (not agrees(t), t[0].affine is not None, t[1]))
    matched = agrees((candidate, value_diff, grad_diff)) and candidate.affine is None
    predicted = spec_values(cache, candidate.spec)
    if candidate.affine is not None:
        predicted = candidate.affine[0] + candidate.affine[1] * predicted
    if matched:
        notes += _unobservable_smoothing(cache, observed, candidate)
    elif searched_affine:
        notes.append("no DiceSpec fits the probes by itself; searched for an affine relation loss = a + b * spec")
    disagreeing = [dict(probe=p.name, loss=float(o), spec=float(v)) for p, o, v in zip(probes, observed, predicted)
                   if not abs(float(o) - float(v)) <= MATCH * max(1.0, abs(float(o)))]
    return Identification(candidate.spec if matched else None, candidate.spec, candidate.affine, value_diff, grad_diff,
                          disagreeing, per_image, sums_images, values, notes)


def _exact_versions(candidate: Candidate) -> List[Candidate]:
    """An affine fit close to the identity, or to -1 + (1 - score) (the -score form), may be an
    exact spec that the fit landed beside."""
    offset, scale = candidate.affine
    versions = [Candidate(candidate.spec, candidate.error)]
    if abs(offset + 1) < 1e-3 and abs(scale - 1) < 1e-3 and form_of(candidate.spec)[0] == "one_minus":
        versions.append(Candidate(candidate.spec.replace(negate=True), candidate.error))
    if abs(offset) < 1e-3 and round(scale) >= 2 and abs(scale - round(scale)) < 1e-3 and candidate.spec.reduction == "mean":
        versions.append(Candidate(candidate.spec.replace(reduction="sum"), candidate.error))  # summed over classes
    return versions


def _unobservable_smoothing(cache: ProbeStatistics, observed: torch.Tensor, candidate: Candidate) -> List[str]:
    """Notes for smoothing values the probes cannot tell apart from the one reported (e.g. 1e-8
    beside sums of hundreds, or any denominator smoothing when the numerator has none)."""
    if candidate.affine is not None:
        return []
    usable = torch.isfinite(observed)
    def error(spec: DiceSpec) -> float:
        return float((spec_values(cache, spec)[usable] - observed[usable]).abs().max())
    tolerance = max(2 * error(candidate.spec), 1e-6)
    notes = []
    for name in ("smooth_nr", "smooth_dr"):
        value = getattr(candidate.spec, name)
        fitting = sorted({v for v in SMOOTHING if error(candidate.spec.replace(**{name: v})) <= tolerance} | {value})
        if len(fitting) > 1:
            notes.append(f"{name}: every value from {fitting[0]:g} to {fitting[-1]:g} fits the probes equally "
                         f"(no probe can show the difference); {value:g} is reported")
    return notes


def evaluate(target: Target, encoding: Encoding, probes: Sequence[Probe], channels: int) -> torch.Tensor:
    """The loss on each probe (NaN where it raised or gave no number)."""
    return torch.tensor([target.call(p.inputs, encoding.encode(p.labels, channels)).value for p in probes],
                        dtype=torch.float64)


def _activations(target: Target, encoding: Encoding, factory: ProbeFactory, notes: List[str]) -> List[str]:
    if factory.kind == "probabilities":
        return ["none", "softmax", "sigmoid"] if factory.channels > 1 else ["none", "sigmoid"]
    if factory.channels == 1:
        return ["sigmoid", "none"]
    a, b = evaluate(target, encoding, factory.shift_pair(), factory.channels).tolist()
    if math.isfinite(a) and math.isfinite(b) and abs(a - b) <= 1e-6 * max(1.0, abs(a)):
        return ["softmax"]
    notes.append(f"adding a per-pixel constant to every channel moves the loss ({a:.6g} -> {b:.6g}): no softmax")
    return ["sigmoid", "none", "softmax"]


def _squared(spread: torch.Tensor, notes: List[str]) -> List[bool]:
    a, b = spread.tolist()
    if not (math.isfinite(a) and math.isfinite(b)):
        return [False, True]
    difference = abs(a - b)
    if difference <= 1e-6 * max(1.0, abs(a)):
        return [False]
    if difference > 1e-4 * max(1.0, abs(a)):
        return [True]
    return [False, True]


def _unit(values: dict, repeats: int) -> Tuple[Optional[bool], bool]:
    """(per image?, summed over images?) from the (a, a), (b, b), (a, b), (a, a, a, a) probes: one
    value per image makes (a, b) the mean of the first two, and (a, a, a, a) equal to (a, a), or
    twice it when summed. (Pooled sums with the smoothing added once also move with the copies.)"""
    aa, bb, ab, many = (values[k] for k in ("unit_aa", "unit_bb", "unit_ab", "unit_aaaa"))
    if not all(math.isfinite(v) for v in (aa, bb, ab, many)):
        return None, False
    scale = max(1.0, abs(aa), abs(bb))
    close = lambda a, b: abs(a - b) <= 1e-5 * scale  # noqa: E731
    sums = close(many, aa * repeats / 2) and abs(aa) > 1e-4
    return close(ab, (aa + bb) / 2) and (close(many, aa) or sums), sums


def _search(cache: ProbeStatistics, probes: Sequence[Probe], observed: torch.Tensor, channels: int, activations,
            squares, soft_labels, batches, reductions, affine: bool) -> List[Candidate]:
    """Stage 1: the structure and loss form on the large probes where every class is present
    (there the smoothing hardly matters); stage 2: absent-class rule and smoothing on every probe; stage 3:
    the denominator clamp, and a continuous fit of whatever is still off."""
    present = torch.tensor([tuple(p.inputs.shape[2:]) == LARGE for p in probes])
    restricted = torch.where(present, observed, math.nan)
    first = search_grid(cache, restricted, structures(channels, activations, squares, soft_labels, batches, reductions,
                                                      averages=(("macro", "include"), ("micro", "include"))),
                        COARSE_SMOOTHING, COARSE_SMOOTHING, forms=FORMS, affine=affine, keep=2)
    shortlist = _distinct(best_of(first, slack=1e-3), 8)
    if soft_labels != (False,):  # the soft-label twin of each: its one probe weighs little in stage 1
        shortlist += [Candidate(c.spec.replace(soft_label=not c.spec.soft_label), c.error) for c in shortlist
                      if not c.spec.squared]
    ranked = _fit_smoothing(cache, observed, shortlist, affine)
    if ranked and ranked[0].error > FITS:  # class weights, from the best few structures' per-class losses
        # plain Dice structures join the best ones: class weights can push the right structure down the ranking
        plain = [Candidate(spec.replace(smooth_nr=s, smooth_dr=s), math.inf) for spec in structures(
            channels, activations, squares, (False,), batches, reductions, averages=(("macro", "include"),),
            families=({},)) if spec.include_background for s in (1e-5, 1.0)]
        weighted = [w for w in (fit_weights(cache, observed, c) for c in _distinct(ranked, 6) + plain) if w is not None]
        # the smoothing again under the weights, then the weights again under that smoothing
        again = [fit_weights(cache, observed, c) for c in _fit_smoothing(cache, observed, best_of(weighted)[:2], affine)[:2]]
        ranked = best_of([c for c in again if c is not None] + weighted + ranked)
    for every_field in (False, True):  # the fields off their defaults first, then every one
        if every_field and ranked[0].error > FAR:
            break  # far outside the family: fitting beta and gamma as well will not bring it in
        for candidate in _distinct(ranked, 3):
            if ranked[0].error <= FITS:
                return ranked
            ranked = best_of([refine(cache, observed, candidate, affine, every_field=every_field)] + ranked)
        if ranked[0].error > FITS:
            # the smoothing and absent-class rule again, around the best refined family parameters
            for again in _fit_smoothing(cache, observed, ranked[:1], affine)[:1]:
                ranked = best_of([refine(cache, observed, again, affine, every_field=every_field)] + ranked)
    return ranked


def _fit_smoothing(cache: ProbeStatistics, observed: torch.Tensor, shortlist: List[Candidate],
                   affine: bool) -> List[Candidate]:
    """Stages 2 and 3 for each structure of ``shortlist``: absent-class rule x smoothing grid on
    every probe, then the denominator clamp."""
    second = []
    for candidate in shortlist:
        spec = candidate.spec
        variants = [spec.replace(absent_classes=a) for avg, a in AVERAGES if avg == "macro"] \
            if spec.average == "macro" and spec.generalized is None else [spec]
        second += search_grid(cache, observed, variants, SMOOTHING, SMOOTHING, forms=[form_of(spec)], affine=affine,
                              keep=3)
    third = []
    for candidate in best_of(second)[:6]:
        spec = candidate.spec
        third += search_grid(cache, observed, [spec], (spec.smooth_nr,), (spec.smooth_dr,), MIN_DENOMINATORS,
                             forms=[form_of(spec)], affine=affine, keep=len(MIN_DENOMINATORS))
    return best_of(third)


def _distinct(candidates: List[Candidate], count: int) -> List[Candidate]:
    """The first ``count`` candidates that differ in more than smoothing."""
    seen, kept = set(), []
    for c in candidates:
        key = c.spec.replace(smooth_nr=0.0, smooth_dr=0.0)
        if key not in seen:
            seen.add(key)
            kept.append(c)
        if len(kept) == count:
            break
    return kept


def confirm(target: Target, encoding: Encoding, inputs: Sequence[Probe], candidate: Candidate,
            channels: int) -> Tuple[float, Optional[float]]:
    """Max |loss - spec| and the max gradient difference (relative to the largest gradient) over
    ``inputs``; the gradient one is None when the loss gives no gradient."""
    offset, scale = candidate.affine or (0.0, 1.0)
    value_diff, grad_diff, grad_scale, graded = 0.0, 0.0, 0.0, False
    for probe in inputs:
        outcome = target.call(probe.inputs, encoding.encode(probe.labels, channels), grad=True)
        x = probe.inputs.clone().requires_grad_(True)
        try:
            expected = offset + scale * dice_loss(x, probe.labels, candidate.spec, impl="reference", validate=False)
        except (ValueError, TypeError):
            return math.inf, None
        (expected_grad,) = torch.autograd.grad(expected, x)
        difference = abs(outcome.value - float(expected.detach())) / max(1.0, abs(float(expected.detach())))
        value_diff = max(value_diff, difference if math.isfinite(difference) else math.inf)
        if outcome.grad is not None and outcome.grad.shape == expected_grad.shape:
            graded = True
            grad_diff = max(grad_diff, float((outcome.grad - expected_grad).abs().max()))
            grad_scale = max(grad_scale, float(expected_grad.abs().max()))
    if not graded:
        return value_diff, None
    return value_diff, grad_diff / max(grad_scale, 1e-12)
