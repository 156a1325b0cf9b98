"""The synthetic experiments (DESIGN §6): one module each, all with the same interface.

Each module has ``Config`` (a frozen dataclass with ``seed`` and ``impl`` fields), ``SCALES``
(``{"small": Config(...), "paper": Config(...)}``), ``run(config, progress=True) -> DataFrame``
of raw measurements, ``claims(df) -> list[Claim]`` computed from that DataFrame alone, and
``figures(df, out_dir) -> list[Path]``.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass
from importlib import import_module
from types import ModuleType
from typing import Dict

NAMES = (
    "e1_imbalance", "e2_gradients", "e3_saturation", "e4_tiny", "e5_empty", "e6_compound", "p1_precision",
    "d1_distributed",
)
SCALE_NAMES = ("small", "paper")
_OPERATORS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


@dataclass(frozen=True)
class Claim:
    """A falsifiable statement checked on an experiment's own data: ``passed = value <op> threshold``."""

    id: str
    statement: str
    value: float
    threshold: float
    passed: bool


def check(claim_id: str, statement: str, value: float, op: str, threshold: float) -> Claim:
    """The claim ``value <op> threshold``; a NaN value fails."""
    value = float(value)
    passed = not math.isnan(value) and bool(_OPERATORS[op](value, threshold))
    return Claim(claim_id, f"{statement} [{op} {threshold:g}]", value, float(threshold), passed)


def config_for(module: ModuleType, scale: str, **changes):
    """The module's ``scale`` config with ``changes`` (``seed``, ``impl``) applied."""
    if scale not in module.SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(module.SCALES)}")
    return dataclasses.replace(module.SCALES[scale], **{k: v for k, v in changes.items() if v is not None})


EXPERIMENTS: Dict[str, ModuleType] = {name: import_module(f"{__name__}.{name}") for name in NAMES}
