"""The designed inputs of the audit: labels and predictions whose Dice statistics are known.

A ``Probe`` holds what the loss receives (float64 values exactly representable in float32, so the
float64 reference sees the very numbers the loss sees) and the ground truth as an int64 label map
(or a float soft target), before any encoding. ``ProbeFactory`` draws them, seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

CONFIDENCE = 5.0  # "realistic" logits: +-5 (sigmoid 0.993; softmax gap 10)
LARGE = (36, 40)


@dataclass(frozen=True)
class Probe:
    name: str
    inputs: Tensor  # (N, C, *spatial) float64: logits, or probabilities when the loss takes those
    labels: Tensor  # (N, *spatial) int64, or (N, C, *spatial) float soft labels

    @property
    def soft(self) -> bool:
        return self.labels.is_floating_point()


def as_float32_values(x: Tensor) -> Tensor:
    return x.float().double()


class ProbeFactory:
    """Probes for ``channels`` classes; ``kind`` is what the loss takes: ``"logits"`` or
    ``"probabilities"`` (softmax over channels, or a sigmoid with one channel)."""

    def __init__(self, channels: int, kind: str, seed: int = 0, spatial: Tuple[int, ...] = (12, 10)) -> None:
        self.channels = channels
        self.kind = kind
        self.spatial = tuple(spatial)
        self.generator = torch.Generator().manual_seed(seed)

    # -- building blocks -------------------------------------------------------------------------
    def randn(self, *shape: int) -> Tensor:
        return torch.randn(*shape, generator=self.generator, dtype=torch.float64)

    def one_hot(self, labels: Tensor) -> Tensor:
        if self.channels == 1:
            return (labels == 1).double().unsqueeze(1)
        classes = torch.arange(self.channels).view(1, self.channels, *([1] * (labels.ndim - 1)))
        return (labels.unsqueeze(1) == classes).double()

    def confident(self, labels: Tensor, confidence: float = CONFIDENCE) -> Tensor:
        """Logits of a perfect prediction: +confidence on the true class, -confidence elsewhere."""
        return confidence * (2 * self.one_hot(labels) - 1)

    def noisy(self, labels: Tensor, signal: float, noise: float) -> Tensor:
        """Logits of an imperfect prediction: ``signal`` towards the truth plus Gaussian noise."""
        return signal * (2 * self.one_hot(labels) - 1) + noise * self.randn(labels.shape[0], self.channels, *labels.shape[1:])

    def labels(self, n: int, spatial: Sequence[int] = None, *, absent: Sequence[Tuple[int, int]] = (),
               background_only: bool = False) -> Tensor:
        """Random labels with every class present in every image (uneven proportions), except the
        (image, class) pairs in ``absent``; ``background_only`` gives all-zero maps."""
        spatial = tuple(spatial or self.spatial)
        classes = max(self.channels, 2)
        if background_only:
            return torch.zeros(n, *spatial, dtype=torch.int64)
        images = []
        for image in range(n):
            banned = {c for i, c in absent if i == image}
            allowed = [c for c in range(classes) if c not in banned]
            weights = torch.rand(len(allowed), generator=self.generator, dtype=torch.float64) + 0.2
            draw = torch.multinomial(weights, int(torch.tensor(spatial).prod()), replacement=True,
                                     generator=self.generator)
            flat = torch.tensor(allowed)[draw]
            positions = torch.randperm(flat.numel(), generator=self.generator)[: len(allowed)]
            flat[positions] = torch.tensor(allowed)  # every allowed class present at least once
            images.append(flat.view(spatial))
        return torch.stack(images)

    def probe(self, name: str, logits: Tensor, labels: Tensor) -> Probe:
        return Probe(name, as_float32_values(self.activate(logits)), labels)

    def activate(self, logits: Tensor) -> Tensor:
        if self.kind == "logits":
            return logits
        return torch.sigmoid(logits) if self.channels == 1 else torch.softmax(logits, 1)

    def logits_of(self, probabilities: Tensor, activation: str) -> Tensor:
        """Inputs whose ``activation`` gives ``probabilities`` (for the loss's own input kind)."""
        if self.kind == "probabilities" or activation == "none":
            return probabilities
        if activation == "sigmoid":
            return torch.logit(probabilities)
        return torch.log(probabilities)

    # -- the identification probes -----------------------------------------------------------------
    def identification(self, float_target: bool) -> List[Probe]:
        c = self.channels
        last = max(c - 1, 1)
        probes = []
        # Large images where every class is present: the structure shows there while a smoothing
        # of up to ~1 hardly moves the values.
        for k, (signal, noise) in enumerate([(1.0, 1.5), (0.5, 2.0), (2.0, 1.0), (0.0, 3.0)]):
            labels = self.labels(2, LARGE)
            probes.append(self.probe(f"mixed_{k}", self.noisy(labels, signal, noise), labels))
        labels = self.labels(2, LARGE)
        probes.append(self.probe("perfect", self.confident(labels), labels))
        probes.append(self.probe("scaled", 3 * self.noisy(labels, 0.5, 1.0), labels))
        probes.append(self.probe("uniform", torch.zeros(2, c, *LARGE, dtype=torch.float64), labels))
        for name, absent in [("absent_one", [(0, last)]), ("absent_batch", [(0, last), (1, last)]),
                             ("absent_two", [(0, last), (1, 0 if c == 1 else min(1, last))])]:
            labels = self.labels(2, absent=absent)
            probes.append(self.probe(f"{name}_perfect", self.confident(labels), labels))
            probes.append(self.probe(f"{name}_noisy", self.noisy(labels, 1.0, 1.5), labels))
        for confidence in (2.0, 8.0):
            labels = self.labels(2, absent=[(0, last), (1, last)])
            probes.append(self.probe(f"absent_batch_at_{confidence:g}", self.confident(labels, confidence), labels))
        empty = self.labels(2, background_only=True)
        for confidence in (3.0, 12.0):
            probes.append(self.probe(f"empty_at_{confidence:g}", self.confident(empty, confidence), empty))
        probes.append(self.probe("empty_noisy", self.noisy(empty, 0.5, 1.5), empty))
        tiny = self.labels(2, absent=[(0, last), (1, last)])
        tiny[:, 0, 0] = last  # one pixel of the last class per image
        probes.append(self.probe("tiny", self.noisy(tiny, 1.0, 1.0), tiny))
        probes.extend(self.unit_probes())
        if float_target:
            probes.append(self.soft_probe())
        return probes

    def unit_probes(self) -> List[Probe]:
        """Two very different images a and b as (a, a), (b, b), (a, b) and (a, a, a, a): one score
        per image makes (a, b) the mean of the first two; a sum over images doubles (a, a, a, a)."""
        a_labels = self.labels(1)
        b_labels = self.labels(1, absent=[(0, max(self.channels - 1, 1))])
        a = self.noisy(a_labels, 2.0, 1.0)
        b = self.noisy(b_labels, -0.5, 1.0)
        pairs = {"unit_aa": (a, a, a_labels, a_labels), "unit_bb": (b, b, b_labels, b_labels),
                 "unit_ab": (a, b, a_labels, b_labels)}
        probes = [self.probe(n, torch.cat([x1, x2]), torch.cat([y1, y2])) for n, (x1, x2, y1, y2) in pairs.items()]
        repeats = 3 if self.channels == 4 else 4  # a batch size unlike the class count
        probes.append(self.probe("unit_aaaa", a.repeat(repeats, *([1] * (a.ndim - 1))),
                                 a_labels.repeat(repeats, *([1] * (a_labels.ndim - 1)))))
        return probes

    def soft_probe(self) -> Probe:
        shape = (2, self.channels, *LARGE)
        if self.channels == 1:
            soft = torch.rand(shape, generator=self.generator, dtype=torch.float64)
        else:
            soft = torch.softmax(2 * self.randn(*shape), 1)
        labels = soft.argmax(1) if self.channels > 1 else (soft[:, 0] > 0.5).long()
        return Probe("soft", as_float32_values(self.activate(self.noisy(labels, 1.0, 1.0))), as_float32_values(soft))

    def shift_pair(self) -> Tuple[Probe, Probe]:
        """The same logits with a per-pixel constant added to every channel: softmax ignores it."""
        labels = self.labels(2)
        x = self.noisy(labels, 1.0, 1.5)
        shift = 2 * self.randn(x.shape[0], 1, *x.shape[2:])
        return self.probe("shift_base", x, labels), self.probe("shift_moved", x + shift, labels)

    def spread_pair(self, activation: str) -> Tuple[Probe, Probe]:
        """Pixels in same-label pairs; the second probe averages each pair's probabilities, which keeps
        every sum of p and p*g and lowers every sum of p**2."""
        half = list(self.spatial)
        half[-1] = max(half[-1] // 2, 1)
        labels = self.labels(2, half).repeat_interleave(2, dim=-1)
        x = self.noisy(labels, 0.0, 3.0)
        if activation == "softmax":
            p = torch.softmax(x, 1)
        elif activation == "sigmoid" or (self.kind == "probabilities" and self.channels == 1):
            p = torch.sigmoid(x)
        elif self.kind == "probabilities":
            p = torch.softmax(x, 1)
        else:
            p = torch.sigmoid(x)  # activation "none" on logits: any values keep the sums linear
        pairs = p.view(*p.shape[:-1], -1, 2)
        mean = pairs.mean(-1, keepdim=True).expand_as(pairs).reshape(p.shape)
        base = Probe("spread_base", as_float32_values(self.logits_of(p, activation)), labels)
        moved = Probe("spread_mean", as_float32_values(self.logits_of(mean, activation)), labels)
        return base, moved

    def random_inputs(self, count: int, float_target: bool) -> List[Probe]:
        """Confirmation inputs: varied sizes, class mixes (absent classes included) and confidence."""
        probes = []
        for k in range(count):
            n = 2 + k % 2
            spatial = (8 + k % 5, 7 + (3 * k) % 6)
            absent = [(0, max(self.channels - 1, 1))] if k % 3 == 1 else []
            labels = self.labels(n, spatial, absent=absent)
            logits = self.noisy(labels, 0.3 * (k % 5), 0.5 + (k % 4))
            if float_target and k % 4 == 3:
                soft = torch.softmax(2 * self.randn(n, self.channels, *spatial), 1) if self.channels > 1 else \
                    torch.rand(n, 1, *spatial, generator=self.generator, dtype=torch.float64)
                probes.append(Probe(f"random_{k}", as_float32_values(self.activate(logits)), as_float32_values(soft)))
            else:
                probes.append(self.probe(f"random_{k}", logits, labels))
        return probes
