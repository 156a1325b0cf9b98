"""The synthetic experiments: one module each, all with the same interface.

Each module has

- ``Config``: a frozen dataclass with ``seed`` and ``impl`` fields, and ``SCALES``
  (``{"small": Config(...), "paper": Config(...)}``), read by :func:`config_for`;
- ``tasks(config) -> list[dict]``: the experiment's independent units of work (e.g. one setting
  and seed each), JSON-serialisable so that any worker can receive them;
- ``run_task(config, task) -> DataFrame``: the raw measurements of one task, determined by
  ``config`` and ``task`` alone (every random generator seeded from them, no global state), so
  ``analysis.runner`` may run the tasks in any process and in any order;
- ``claims(df, config) -> list[Claim]``: computed from the concatenated measurements alone;
- ``figures(df, out_dir) -> list[Path]``.

Claims come in two kinds. A *verification* (an identity, a precision bound, an exactness check)
must pass: its failure is a bug, and ``dicebench experiment`` exits 1. A *hypothesis* is a
statement from the literature, with its threshold and citation fixed in code before the data are
seen; it is SUPPORTED only when its value **and its whole confidence interval** satisfy
``<op> threshold``, and FAILED otherwise (including a NaN anywhere). A FAILED hypothesis is a
finding: it is reported, and the command still exits 0. A *primary* hypothesis (one of the few
fixed before the paper-scale run) must also pass a multiplicity control: its one-sided p-value
against the threshold, Holm-adjusted over the family of primaries (:func:`adjust_primaries`), must
be at most :data:`PRIMARY_ALPHA`; every other hypothesis is exploratory.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass
from importlib import import_module
from types import ModuleType
from typing import Dict, List, Optional, Sequence, Tuple

NAMES = (
    "e2_gradients", "p1_precision", "d1_distributed", "s1_imbalance", "s2_tiny", "s3_empty", "s4_compound_lr",
    "s5_multiclass", "s6_balls3d", "s7_sgd", "s8_saturation",
)
SCALE_NAMES = ("small", "paper")
# The claim the report's first screen states as the study's main finding (whatever its outcome).
MAIN_FINDING = "s8.ce_term_prevents_collapse"
KINDS = ("verification", "hypothesis")
STAGES = ("budget", "convergence", "")
OUTCOMES = {("verification", True): "PASS", ("verification", False): "FAIL",
            ("hypothesis", True): "SUPPORTED", ("hypothesis", False): "FAILED"}
_OPERATORS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
PRIMARY_ALPHA = 0.025  # one-sided, family-wise: the tail a 95 % two-sided interval leaves on each side


@dataclass(frozen=True)
class Claim:
    """A falsifiable statement checked on an experiment's own data (see the module docstring).

    ``stage`` says where in training a hypothesis was measured: ``"budget"`` (a fixed step
    budget), ``"convergence"`` (at the stated convergence criterion) or ``""`` (not about
    training). ``p_value`` is the one-sided test of the threshold in the claimed direction (the
    paired sign-flip test, or the exact binomial test of a rate), ``n_seeds`` the number of seeds
    (pairs, runs) it rests on, and ``p_adjusted`` the Holm-adjusted p-value of a ``primary``
    hypothesis over its family (:func:`adjust_primaries`).
    """

    id: str
    kind: str
    statement: str
    source: str
    value: float
    ci_low: Optional[float]
    ci_high: Optional[float]
    op: str
    threshold: float
    passed: bool
    stage: str = ""
    p_value: Optional[float] = None
    primary: bool = False
    n_seeds: Optional[int] = None
    p_adjusted: Optional[float] = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"claim {self.id!r}: kind must be one of {KINDS}, not {self.kind!r}")
        if self.op not in _OPERATORS:
            raise ValueError(f"claim {self.id!r}: op must be one of {sorted(_OPERATORS)}, not {self.op!r}")
        if self.stage not in STAGES:
            raise ValueError(f"claim {self.id!r}: stage must be one of {STAGES}, not {self.stage!r}")
        if self.kind == "hypothesis" and not self.source.strip():
            raise ValueError(f"hypothesis {self.id!r} needs a source (the paper or theory it comes from)")
        if (self.ci_low is None) != (self.ci_high is None):
            raise ValueError(f"claim {self.id!r}: give both ends of the confidence interval or neither")
        if self.kind == "hypothesis" and self.ci_low is None:
            raise ValueError(f"hypothesis {self.id!r} needs a confidence interval (analysis.stats)")
        if self.primary and self.kind != "hypothesis":
            raise ValueError(f"claim {self.id!r}: only a hypothesis can be primary")

    @property
    def outcome(self) -> str:
        """PASS / FAIL for a verification, SUPPORTED / FAILED for a hypothesis."""
        return OUTCOMES[self.kind, self.passed]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Claim":
        """The claim stored by :meth:`to_dict` (``claims.json``); unknown or missing fields fail."""
        fields = dataclasses.fields(cls)
        unknown = sorted(set(data) - {f.name for f in fields})
        missing = [f.name for f in fields if f.default is dataclasses.MISSING and f.name not in data]
        if unknown or missing:
            raise ValueError(f"claim {data.get('id')!r}: unknown fields {unknown}, missing fields {missing} (stored "
                             "by another version: rerun the experiment, or analysis.storage.recheck_claims)")
        return cls(**data)


def _satisfies(value: Optional[float], op: str, threshold: float) -> bool:
    return value is not None and not math.isnan(value) and bool(_OPERATORS[op](value, threshold))


def _number(value) -> Optional[float]:
    return None if value is None else float(value)


def verification(claim_id: str, statement: str, value: float, op: str, threshold: float) -> Claim:
    """A check that must hold, ``value <op> threshold``; a NaN value fails."""
    value, threshold = float(value), float(threshold)
    passed = op in _OPERATORS and _satisfies(value, op, threshold)
    return Claim(claim_id, "verification", statement, "", value, None, None, op, threshold, passed)


def hypothesis(claim_id: str, statement: str, source: str, value: float, ci: Tuple[float, float], op: str,
               threshold: float, stage: str = "", p_value: Optional[float] = None, *, primary: bool = False,
               n_seeds: Optional[int] = None) -> Claim:
    """A hypothesis from ``source`` (a citation): SUPPORTED only when ``value`` and both ends of its
    confidence interval ``ci = (low, high)`` satisfy ``<op> threshold`` (the whole interval lies on
    the claimed side), FAILED otherwise. NaN anywhere fails. A ``primary`` one also needs its
    Holm-adjusted p-value, set by :func:`adjust_primaries` (until then it is FAILED)."""
    low, high = _number(ci[0]), _number(ci[1])
    value, threshold = float(value), float(threshold)
    if low is not None and high is not None and low > high:
        raise ValueError(f"hypothesis {claim_id!r}: confidence interval ({low}, {high}) has low > high")
    claim = Claim(claim_id, "hypothesis", statement, source, value, low, high, op, threshold, False, stage,
                  _number(p_value), primary, None if n_seeds is None else int(n_seeds))
    return dataclasses.replace(claim, passed=_hypothesis_passes(claim))


def _hypothesis_passes(claim: Claim) -> bool:
    clears = claim.op in _OPERATORS and all(_satisfies(x, claim.op, claim.threshold)
                                            for x in (claim.value, claim.ci_low, claim.ci_high))
    if not claim.primary:
        return clears
    return clears and claim.p_adjusted is not None and claim.p_adjusted <= PRIMARY_ALPHA


def adjust_primaries(claims: Sequence[Claim]) -> List[Claim]:
    """``claims`` with ``p_adjusted`` (Holm over the primary hypotheses among them: one family) and
    their outcome set; the other claims unchanged. A primary without a p-value counts as p = 1."""
    from ..stats import holm

    claims = list(claims)
    index = [i for i, c in enumerate(claims) if c.primary]
    adjusted = holm([claims[i].p_value if claims[i].p_value is not None else 1.0 for i in index])
    for i, p in zip(index, adjusted):
        claim = dataclasses.replace(claims[i], p_adjusted=float(p))
        claims[i] = dataclasses.replace(claim, passed=_hypothesis_passes(claim))
    return claims


def config_for(module: ModuleType, scale: str, **changes):
    """The module's ``scale`` config with ``changes`` (``seed``, ``impl``) applied."""
    if scale not in module.SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(module.SCALES)}")
    return dataclasses.replace(module.SCALES[scale], **{k: v for k, v in changes.items() if v is not None})


def config_from_dict(module: ModuleType, stored: dict):
    """The ``Config`` stored in a manifest (``dataclasses.asdict``, through JSON: tuples read back as
    lists, and are turned back into tuples)."""

    def thaw(value):
        return tuple(thaw(v) for v in value) if isinstance(value, list) else value

    return module.Config(**{key: thaw(value) for key, value in stored.items()})


EXPERIMENTS: Dict[str, ModuleType] = {name: import_module(f"{__name__}.{name}") for name in NAMES}
