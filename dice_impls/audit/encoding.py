"""The calling convention: how the loss wants its ground truth, and logits or probabilities.

Each encoding of the target (label map ``(N, *spatial)``, ``(N, 1, *spatial)``, float one-hot
``(N, C, *spatial)``; with one channel also a float mask ``(N, *spatial)``) is tried with logits,
then with probabilities. The first under which a perfect prediction scores better than the uniform,
random and confidently wrong predictions, and no worse than a less confident or noisy one, is the
loss's convention; when several qualify (a loss that reshapes whatever it gets), the identification
tries them in order and keeps the first that a DiceSpec reproduces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import Tensor

from .probes import ProbeFactory
from .target import Target

KINDS = ("logits", "probabilities")


@dataclass(frozen=True)
class Encoding:
    """One way of handing the ground truth to the loss."""

    key: str
    description: str
    float_target: bool  # the loss receives floats (a one-hot or a mask) rather than integer labels

    def encode(self, labels: Tensor, channels: int) -> Tensor:
        """``labels``: an int64 label map ``(N, *spatial)`` or a float target ``(N, C, *spatial)``
        (soft labels, one-hot encoding only)."""
        if labels.is_floating_point():
            if self.key != "one_hot":
                raise ValueError(f"soft targets have no {self.description} form")
            return labels.float()
        if self.key == "labels":
            return labels.clone()  # a fresh tensor per call: a loss that edits it in place spoils no other call
        if self.key == "labels_channel":
            return labels.unsqueeze(1).clone()
        if self.key == "mask":
            return labels.float()
        if self.key == "one_hot":
            if channels == 1:
                return (labels == 1).float().unsqueeze(1)
            classes = torch.arange(channels, device=labels.device).view(1, channels, *([1] * (labels.ndim - 1)))
            return (labels.unsqueeze(1) == classes).float()
        raise AssertionError(self.key)


ENCODINGS = {
    "labels": Encoding("labels", "label map (N, *spatial) int64", False),
    "labels_channel": Encoding("labels_channel", "label map (N, 1, *spatial) int64", False),
    "one_hot": Encoding("one_hot", "one-hot (N, C, *spatial) float32", True),
    "mask": Encoding("mask", "mask (N, *spatial) float32", True),
}


def encodings_for(channels: int) -> List[Encoding]:
    """Encodings to try, most common first. With one channel the one-hot is the (N, 1, *spatial)
    float mask of binary losses."""
    keys = ["one_hot", "labels_channel", "labels", "mask"] if channels == 1 else ["labels", "labels_channel", "one_hot"]
    return [ENCODINGS[k] for k in keys]


@dataclass
class Convention:
    encoding: Encoding
    kind: str
    perfect: float = math.nan  # the loss of the perfect prediction
    runner_up: Tuple[str, float] = ("", math.nan)  # the best imperfect prediction

    @property
    def description(self) -> str:
        return f"{self.encoding.description}, {self.kind}"


def find_conventions(target: Target, channels: int, seed: int = 0) -> Tuple[List[Convention], str]:
    """Every convention under which the loss ranks a perfect prediction first, most common first,
    and why none does when the list is empty."""
    failures: List[str] = []
    found: List[Convention] = []
    for kind in KINDS:
        factory = ProbeFactory(channels, kind, seed)
        labels = factory.labels(2)
        wrong = 1 - labels if channels == 1 else (labels + 1) % channels
        cases = {
            "perfect": factory.confident(labels),
            "less confident": factory.confident(labels, 1.0),
            "uniform": torch.zeros_like(factory.confident(labels)),
            "noisy": factory.noisy(labels, 0.5, 1.5),
            "random": factory.noisy(labels, 0.0, 2.0),
            "wrong": factory.confident(wrong),
        }
        for encoding in encodings_for(channels):
            encoded = encoding.encode(labels, channels)
            outcomes = {name: target.call(factory.probe(name, x, labels).inputs, encoded) for name, x in cases.items()}
            raised = [f"{name}: {o.error}" for name, o in outcomes.items() if not o.ok]
            where = f"{encoding.description} with {kind}"
            if raised:
                failures.append(f"{where} raised ({raised[0]})")
                continue
            values = {name: o.value for name, o in outcomes.items()}
            perfect = values.pop("perfect")
            runner_up = min(values.items(), key=lambda kv: kv[1] if math.isfinite(kv[1]) else math.inf)
            if not math.isfinite(perfect):
                failures.append(f"{where}: a perfect prediction gives {perfect}")
                continue
            margin = 1e-7 * max(1.0, abs(perfect))
            # a tie with the less confident prediction is allowed: a hard (argmax) Dice is still audited
            if all(math.isfinite(v) and perfect <= v + margin for v in values.values()) and \
                    all(perfect < values[k] - margin for k in ("uniform", "random", "wrong")):
                found.append(Convention(encoding, kind, perfect, runner_up))
                continue
            failures.append(f"{where}: a perfect prediction scores {perfect:.4g}, the {runner_up[0]} one {runner_up[1]:.4g}")
    return found, "" if found else _reason(failures)


def _reason(failures: List[str]) -> str:
    scored = [f for f in failures if "raised" not in f]
    if scored:
        return "no encoding of the target makes a perfect prediction score best (" + "; ".join(scored[:2]) + ")"
    return "the loss raised under every encoding of the target (" + failures[0] + ")" if failures else "nothing to try"
