"""The candidate search: which ``DiceSpec`` reproduces the values a loss gave on the probes.

``grid_losses`` scores one structure of the spec (activation, squared, unit, background, class
average, family, reduction) for a whole grid of smoothing values and loss forms at once: the
formula of ``loss_from_statistics``, vectorised over those hypotheses (the tests keep the two
equal). The search walks the structures in stages, fits the continuous fields, and returns the
candidates best first; ``identify`` confirms them against the reference implementation.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..reference import reference_statistics
from ..score import DiceStatistics, generalized_weights, score_terms
from ..spec import DiceSpec
from .probes import Probe

# Loss forms: (name, focal exponent). The exponents are starting points; a fit refines them.
FORMS = (("one_minus", 1.0), ("negate", 1.0), ("log", 1.0), ("focal", 0.5), ("focal", 0.75), ("focal", 1.25),
         ("focal", 1.5), ("focal", 2.0), ("focal", 3.0))
SMOOTHING = (0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0, 2.0, 10.0, 100.0)
COARSE_SMOOTHING = (0.0, 1e-5, 1e-3, 1e-2, 0.5, 1.0, 10.0, 100.0)
MIN_DENOMINATORS = (0.0, 1e-8, 1e-7, 1e-6, 1e-5)
# Family members, with the common parameter values as starting points for the fit.
FAMILIES = (
    {}, {"jaccard": True}, {"generalized": "square"}, {"generalized": "simple"}, {"generalized": "uniform"},
    *({"fp_weight": a, "fn_weight": round(1 - a, 2)} for a in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)),
    *({"fp_weight": a, "fn_weight": b} for a in (0.2, 0.5, 1.0) for b in (0.2, 0.5, 1.0) if a + b != 1),
    {"beta": 0.5}, {"beta": 2.0},
)
AVERAGES = (("macro", "include"), ("macro", "zero"), ("macro", "exclude"), ("micro", "include"))
TINY = torch.finfo(torch.float32).tiny


@dataclass
class Candidate:
    spec: DiceSpec
    error: float  # max |loss - candidate| over the probes
    affine: Optional[Tuple[float, float]] = None  # loss = a + b * candidate, when no exact spec fits

    def __post_init__(self) -> None:
        if self.affine is not None and abs(self.affine[0]) <= 1e-7 and abs(self.affine[1] - 1) <= 1e-6:
            self.affine = None  # the identity: an exact fit

    @property
    def complexity(self) -> float:
        return complexity(self.spec) + (0 if self.affine is None else 10)


def complexity(spec: DiceSpec) -> float:
    """How far ``spec`` is from the plain conventions: among candidates that fit equally well the
    simplest is reported (e.g. one scored class makes micro and macro equal)."""
    default = DiceSpec()
    score = 0.0
    for name in ("average", "absent_classes", "jaccard", "generalized", "fp_weight", "beta", "negate", "log_loss",
                 "focal_gamma", "reduction", "soft_label", "squared"):
        score += getattr(spec, name) != getattr(default, name)
    score += 0.5 * (spec.smooth_nr != spec.smooth_dr) + 0.5 * (spec.min_denominator > 0)
    score += 0.1 * (not spec.include_background) + 0.05 * spec.batch
    score += 0.01 * sum(_not_round(v) for v in (spec.smooth_nr, spec.smooth_dr))
    score += 0.2 * (spec.generalized == "uniform")  # equal to micro; say micro
    return score


def _not_round(value: float) -> bool:
    return value != 0 and float(f"{value:.1g}") != value


# -- statistics of the probes under each hypothesis ----------------------------------------------
class ProbeStatistics:
    """Per-image statistics of every probe under (activation, squared, soft_label), cached, and the
    reduction units they form (one per image, or one per probe for batch Dice)."""

    def __init__(self, probes: Sequence[Probe]) -> None:
        self.probes = list(probes)
        self._stats: Dict[tuple, List[DiceStatistics]] = {}
        self._units: Dict[tuple, "Units"] = {}

    def units(self, activation: str, squared: bool, soft_label: bool, batch: bool) -> "Units":
        key = (activation, squared, soft_label, batch)
        if key not in self._units:
            stats = self._probe_stats(activation, squared, soft_label)
            per_probe = [s.pooled() if batch else s for s in stats]
            owner = torch.cat([torch.full((s.intersection.shape[0],), i) for i, s in enumerate(per_probe)])
            joined = DiceStatistics(*(torch.cat(parts) for parts in zip(*per_probe)))
            self._units[key] = Units(joined, owner, len(per_probe))
        return self._units[key]

    def _probe_stats(self, activation: str, squared: bool, soft_label: bool) -> List[DiceStatistics]:
        key = (activation, squared, soft_label)
        if key not in self._stats:
            spec = DiceSpec(activation=activation, squared=squared, soft_label=soft_label)
            with torch.no_grad():
                self._stats[key] = [reference_statistics(p.inputs, p.labels, spec) for p in self.probes]
        return self._stats[key]


@dataclass
class Units:
    stats: DiceStatistics  # (units, C)
    owner: Tensor  # (units,) the probe of each unit
    probes: int

    def reduce(self, per_unit: Tensor, mean: bool) -> Tensor:
        """(F, units, S) -> (probes, F, S): sum or mean of the units of each probe."""
        out = per_unit.new_zeros(per_unit.shape[0], self.probes, per_unit.shape[2]).index_add_(1, self.owner, per_unit)
        if mean:
            counts = torch.bincount(self.owner, minlength=self.probes).to(out.dtype)
            out = out / counts.clamp_min(1).view(1, -1, 1)
        return out.transpose(0, 1)


def grid_losses(units: Units, spec: DiceSpec, smooth_nr: Tensor, smooth_dr: Tensor, min_denominator: Tensor,
                forms: Sequence[Tuple[str, float]]) -> Tensor:
    """``loss_from_statistics`` of ``spec`` for every probe, smoothing triple and loss form: shape
    (probes, forms, S); the spec's own smoothing and form fields are ignored."""
    tp, pred_sum, target_sum = units.stats
    weight = torch.ones(tp.shape[1], dtype=tp.dtype) if spec.weight is None else torch.tensor(spec.weight, dtype=tp.dtype)
    if not spec.include_background:
        tp, pred_sum, target_sum, weight = tp[:, 1:], pred_sum[:, 1:], target_sum[:, 1:], weight[1:]
    numerator, denominator = score_terms(tp, pred_sum, target_sum, spec)
    pooled = spec.average == "micro" or spec.generalized is not None
    if pooled:
        pool = weight.expand_as(target_sum) if spec.generalized is None else generalized_weights(target_sum, spec.generalized)
        numerator, denominator = ((s * pool).sum(1, keepdim=True) for s in (numerator, denominator))
    numerator = numerator.unsqueeze(-1) + smooth_nr
    denominator = torch.maximum(denominator.unsqueeze(-1) + smooth_dr, min_denominator)
    empty = denominator == 0
    score = torch.where(empty, 1.0, numerator / torch.where(empty, 1.0, denominator))  # (units, K, S)
    losses = form_losses(score, forms)  # (F, units, K, S)
    weights = torch.ones(score.shape[:2], dtype=score.dtype) if pooled else weight.expand(score.shape[:2])
    if not pooled and spec.absent_classes == "zero":
        losses = losses * (target_sum > 0).unsqueeze(-1)
    elif not pooled and spec.absent_classes == "exclude":
        weights = weights * (target_sum > 0)
    weighted = (losses * weights.unsqueeze(-1)).sum(2)  # (F, units, S)
    if spec.reduction == "sum":
        return units.reduce(weighted, mean=False)
    normalizer = weights.sum(1).view(1, -1, 1)
    per_unit = torch.where(normalizer == 0, 1.0, weighted / torch.where(normalizer == 0, 1.0, normalizer))
    return units.reduce(per_unit, mean=True)


def form_losses(score: Tensor, forms: Sequence[Tuple[str, float]]) -> Tensor:
    """Each loss form of ``score``, stacked on a new first axis (the focal powers in one op)."""
    plain = {"one_minus": lambda: 1 - score, "negate": lambda: -score,
             "log": lambda: -torch.log(score.clamp_min(TINY))}
    gammas = [gamma for name, gamma in forms if name == "focal"]
    # (1 - score) clamped at 0, to the power gamma: focal_power's values, for every gamma at once
    powers = iter((1 - score).clamp_min(0).unsqueeze(0) ** torch.tensor(gammas, dtype=score.dtype).view(-1, 1, 1, 1)) \
        if gammas else iter(())
    return torch.stack([next(powers) if name == "focal" else plain[name]() for name, _ in forms])


def form_fields(name: str, gamma: float) -> dict:
    return {"negate": {"negate": True}, "log": {"log_loss": True}}.get(name, {"focal_gamma": gamma} if name == "focal" else {})


def form_of(spec: DiceSpec) -> Tuple[str, float]:
    if spec.negate:
        return ("negate", 1.0)
    if spec.log_loss:
        return ("log", 1.0)
    return ("focal", spec.focal_gamma) if spec.focal_gamma != 1 else ("one_minus", 1.0)


def spec_values(cache: ProbeStatistics, spec: DiceSpec) -> Tensor:
    """The losses of ``spec`` on every probe, shape (probes,)."""
    units = cache.units(spec.activation, spec.squared, spec.soft_label, spec.batch)
    one = lambda v: torch.tensor([float(v)], dtype=torch.float64)  # noqa: E731
    return grid_losses(units, spec, one(spec.smooth_nr), one(spec.smooth_dr), one(spec.min_denominator),
                       [form_of(spec)])[:, 0, 0]


# -- fitting -------------------------------------------------------------------------------------
def fit_errors(predicted: Tensor, observed: Tensor, affine: bool):
    """Max abs error over probes of ``predicted`` (probes, ...) against ``observed`` (probes,), and
    with ``affine`` the least-squares offset and scale (a, b) of ``observed ~ a + b * predicted``."""
    shape = (-1,) + (1,) * (predicted.ndim - 1)
    obs = observed.view(shape)
    magnitude = obs.abs().clamp_min(1.0)  # relative where a loss exceeds 1 (sums, logs, blow-ups)
    if not affine:
        error = ((predicted - obs).abs() / magnitude).amax(0)
        return torch.nan_to_num(error, nan=math.inf), None, None
    mean_p, mean_o = predicted.mean(0), obs.mean(0)
    centred = predicted - mean_p
    variance = (centred**2).sum(0)
    scale = (centred * (obs - mean_o)).sum(0) / torch.where(variance > 0, variance, 1.0)
    offset = mean_o - scale * mean_p
    error = ((offset + scale * predicted - obs).abs() / magnitude).amax(0)
    error = torch.where((variance > 1e-12) & (scale.abs() > 1e-3), error, math.inf)
    return torch.nan_to_num(error, nan=math.inf), offset, scale


def structures(channels: int, activations, squares, soft_labels, batches, reductions, averages=AVERAGES,
               families=FAMILIES):
    """Every combination of the discrete fields that DiceSpec accepts."""
    backgrounds = (True,) if channels == 1 else (True, False)
    for act, sq, soft, batch, bg, (average, absent), family, reduction in itertools.product(
            activations, squares, soft_labels, batches, backgrounds, averages, families, reductions):
        if soft and sq:
            continue  # soft_label equals the ordinary form with squared
        if "generalized" in family and (average, absent) != ("macro", "include"):
            continue
        yield DiceSpec(activation=act, squared=sq, soft_label=soft, batch=batch, include_background=bg,
                       average=average, absent_classes=absent, reduction=reduction, **family)


def search_grid(cache: ProbeStatistics, observed: Tensor, specs, smooth_nr: Sequence[float],
                smooth_dr: Sequence[float], min_denominators: Sequence[float] = (0.0,), forms=FORMS,
                affine: bool = False, keep: int = 3) -> List[Candidate]:
    """The ``keep`` best (smoothing, form) of each structure in ``specs`` over the grid of
    ``smooth_nr`` x ``smooth_dr`` x ``min_denominators``, on the probes where the loss gave a
    finite value."""
    grid = torch.tensor(list(itertools.product(smooth_nr, smooth_dr, min_denominators)), dtype=torch.float64)
    s_nr, s_dr, md = grid.T
    usable = torch.isfinite(observed)
    found = []
    for spec in specs:
        units = cache.units(spec.activation, spec.squared, spec.soft_label, spec.batch)
        predicted = grid_losses(units, spec, s_nr, s_dr, md, forms)[usable]
        error, offset, scale = fit_errors(predicted, observed[usable], affine)
        flat = error.flatten()
        best = torch.topk(flat, min(keep, flat.numel()), largest=False)
        for err, index in zip(best.values.tolist(), best.indices.tolist()):
            if not math.isfinite(err):
                continue
            f, s = divmod(index, grid.shape[0])
            fields = dict(smooth_nr=float(s_nr[s]), smooth_dr=float(s_dr[s]), min_denominator=float(md[s]),
                          **form_fields(*forms[f]))
            try:
                candidate_spec = spec.replace(**fields)
            except ValueError:
                continue
            pair = None if offset is None else (float(offset[f, s]), float(scale[f, s]))
            found.append(Candidate(candidate_spec, err, pair))
    return found


def best_of(candidates: List[Candidate], slack: float = 1e-6) -> List[Candidate]:
    """Sorted best first: among candidates within ``slack`` (or 2x) of the lowest error the simplest
    comes first, then the rest by error."""
    if not candidates:
        return []
    lowest = min(c.error for c in candidates)
    close = sorted((c for c in candidates if c.error <= max(2 * lowest, lowest + slack)), key=lambda c: (c.complexity, c.error))
    rest = sorted((c for c in candidates if c.error > max(2 * lowest, lowest + slack)), key=lambda c: c.error)
    return close + rest


def fit_weights(cache: ProbeStatistics, observed: Tensor, candidate: Candidate) -> Optional[Candidate]:
    """Class weights for a macro-averaged candidate by linear least squares: the loss of each probe
    is a fixed combination of its mean per-class losses, sum_c v_c l_c. Weights summing to 1 give
    the spec's weighted mean; another sum s is the weighted mean scaled by s (MONAI's plain mean of
    w_c l_c), returned as an affine candidate. None where the rule makes weights non-linear."""
    spec = candidate.spec.replace(weight=None, include_background=True)  # a background left out: weight 0
    if spec.average != "macro" or spec.generalized is not None or spec.absent_classes == "exclude" or candidate.affine:
        return None
    units = cache.units(spec.activation, spec.squared, spec.soft_label, spec.batch)
    channels = units.stats.intersection.shape[1]
    kept = list(range(channels))
    if channels < 2:
        return None
    one = lambda v: torch.tensor([float(v)], dtype=torch.float64)  # noqa: E731
    per_class = []
    for c in kept:  # the loss with all weight on class c: its mean (or sum) over units, per probe
        only = spec.replace(weight=tuple(float(k == c) for k in range(channels)))
        per_class.append(grid_losses(units, only, one(spec.smooth_nr), one(spec.smooth_dr), one(spec.min_denominator),
                                     [form_of(spec)])[:, 0, 0])
    design = torch.stack(per_class, 1)
    usable = torch.isfinite(observed) & torch.isfinite(design).all(1)
    if usable.sum() < len(kept) + 2:
        return None
    solution = torch.linalg.lstsq(design[usable], observed[usable].unsqueeze(1)).solution[:, 0]
    total = float(solution.sum())
    if total <= 0 or bool((solution < -1e-6).any()):
        return None
    # reduction="sum" keeps the weights as they are (sum of w_c l_c); the mean divides by their sum
    divisor = 1.0 if spec.reduction == "sum" else total
    weights = [float(f"{max(float(v) / divisor, 0.0):.4g}") for v in solution]
    weighted = spec.replace(weight=tuple(weights))
    if weights[0] < 1e-4:
        weighted = weighted.replace(include_background=False, weight=tuple([1.0] + weights[1:]))
    if spec.reduction == "mean" and len(set(weighted.weight[0 if weighted.include_background else 1:])) == 1:
        weighted = weighted.replace(weight=None)  # equal weights: the plain mean
    values = spec_values(cache, weighted)
    affine = None if abs(total - 1) < 1e-6 or spec.reduction == "sum" else (0.0, total)
    scale = 1.0 if affine is None else total
    error = float(((scale * values - observed).abs() / observed.abs().clamp_min(1.0))[usable].max())
    return Candidate(weighted, error, affine)


# -- continuous refinement -----------------------------------------------------------------------
LOG_FIELDS = ("smooth_nr", "smooth_dr", "min_denominator")
NEGLIGIBLE = 1e-9  # a smoothing fitted below this is 0
MAX_LOG10 = 300.0  # smoothing fitted in log space stays below 1e300 (a finite float)


def refine(cache: ProbeStatistics, observed: Tensor, candidate: Candidate, affine: bool, *,
           every_field: bool = False) -> Candidate:
    """Nelder-Mead on the candidate's continuous fields (smoothing in log space, least squares over
    the probes), then the values snapped to round ones where that costs no accuracy. Fields at
    their defaults (beta 1, focal_gamma 1) are fitted too with ``every_field``."""
    spec = candidate.spec
    names = _free_fields(spec, every_field)
    usable = torch.isfinite(observed)

    def evaluate(fields: dict):
        """(max abs error, sum of squares, affine pair, spec)."""
        try:
            trial = spec.replace(**{n: (0.0 if n in LOG_FIELDS and v < NEGLIGIBLE else v) for n, v in fields.items()})
        except (ValueError, TypeError):
            return math.inf, math.inf, None, None
        values = spec_values(cache, trial)[usable]
        error, offset, scale = fit_errors(values.view(-1, 1), observed[usable], affine)
        target_values = observed[usable]
        fitted = values if offset is None else offset[0] + scale[0] * values
        squares = float((((fitted - target_values) / target_values.abs().clamp_min(1.0)) ** 2).sum())
        pair = None if offset is None else (float(offset[0]), float(scale[0]))
        return float(error[0]), squares if math.isfinite(squares) else math.inf, pair, trial

    def decode(u: Sequence[float]) -> dict:
        # The simplex may wander far out in log space; 10.0 ** v overflows a float above 308.
        return {n: (10.0 ** min(v, MAX_LOG10) if n in LOG_FIELDS else v) for n, v in zip(names, u)}

    start = [math.log10(max(getattr(spec, n), NEGLIGIBLE / 10)) if n in LOG_FIELDS else getattr(spec, n) for n in names]
    best_u = nelder_mead(lambda u: evaluate(decode(u))[1], start, step=0.5)
    fields = decode(best_u)
    error, _, pair, trial = evaluate(fields)
    if trial is None or error > candidate.error:
        return candidate
    for snapped in _snaps(fields):
        err, _, p, t = evaluate(snapped)
        if t is not None and err <= max(1.5 * error, 1e-7):
            fields, error, pair, trial = snapped, err, p, t
    return Candidate(trial, error, pair)


def _free_fields(spec: DiceSpec, every_field: bool) -> List[str]:
    names = ["smooth_nr", "smooth_dr"] + (["min_denominator"] if spec.min_denominator > 0 else [])
    if spec.fp_weight is not None:
        names += ["fp_weight", "fn_weight"]
    elif not spec.jaccard and (every_field or spec.beta != 1):
        names.append("beta")
    if not (spec.negate or spec.log_loss) and (every_field or spec.focal_gamma != 1):
        names.append("focal_gamma")
    return names


def _snaps(fields: dict) -> List[dict]:
    """Rounder versions of ``fields`` to try, boldest first: everything at once, then one at a time."""
    def rounded(value: float, digits: int) -> float:
        return float(f"{value:.{digits}g}")
    tries = [{n: rounded(v, d) for n, v in fields.items()} for d in (1, 2, 3)]
    if "smooth_nr" in fields:
        tied = rounded(fields["smooth_nr"], 2)
        tries.append(dict(fields, smooth_nr=tied, smooth_dr=tied))
    for name, value in fields.items():
        tries += [dict(fields, **{name: rounded(value, d)}) for d in (1, 2, 3)]
        tries.append(dict(fields, **{name: {"beta": 1.0, "focal_gamma": 1.0}.get(name, 0.0)}))
    return tries


def nelder_mead(f, start: Sequence[float], step: float, iterations: int = 200, tolerance: float = 1e-22) -> List[float]:
    """A plain Nelder-Mead minimiser (the library depends on torch alone)."""
    n = len(start)
    simplex = [list(start)] + [[s + (step if i == j else 0.0) for j, s in enumerate(start)] for i in range(n)]
    values = [f(p) for p in simplex]
    for _ in range(iterations):
        order = sorted(range(n + 1), key=lambda i: values[i])
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        if abs(values[-1] - values[0]) <= tolerance + 1e-9 * abs(values[0]):
            break
        centroid = [sum(p[j] for p in simplex[:-1]) / n for j in range(n)]
        worst = simplex[-1]
        reflected = [c + (c - w) for c, w in zip(centroid, worst)]
        f_r = f(reflected)
        if f_r < values[0]:
            expanded = [c + 2 * (c - w) for c, w in zip(centroid, worst)]
            f_e = f(expanded)
            simplex[-1], values[-1] = (expanded, f_e) if f_e < f_r else (reflected, f_r)
        elif f_r < values[-2]:
            simplex[-1], values[-1] = reflected, f_r
        else:
            contracted = [c + 0.5 * (w - c) for c, w in zip(centroid, worst)]
            f_c = f(contracted)
            if f_c < values[-1]:
                simplex[-1], values[-1] = contracted, f_c
            else:
                best = simplex[0]
                simplex = [best] + [[b + 0.5 * (p - b) for b, p in zip(best, q)] for q in simplex[1:]]
                values = [values[0]] + [f(p) for p in simplex[1:]]
    return simplex[min(range(n + 1), key=lambda i: values[i])]
