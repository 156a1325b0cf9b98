"""The known defects of Dice losses in the wild, each probed by designed inputs.

Each probe returns ``Defect`` records (ids from ``report.DEFECT_IDS``) whose message says what
happened in numbers. docs/audit.md gives every threshold and its false-positive risk.
"""

from __future__ import annotations

import inspect
import math
from collections import Counter
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..registry import dice_loss
from .encoding import Convention
from .identify import Identification
from .probes import CONFIDENCE, Probe, ProbeFactory
from .report import Defect
from .target import Outcome, Target

ABSENT_PENALTY = 0.05  # of the loss range (confidently wrong minus perfect)
HALF_TOLERANCE = 0.01  # |loss(half) - loss(float32)|, relative where |loss| > 1
BATCH_RATIO = 0.05  # |loss(4 copies) / loss(2 copies) - 1|
HALF_SIDE = 272  # 272 x 272 = 73 984 pixels of one class in one image: beyond float16's 65 504
HOST_READS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu", "nonzero", "unique",
              "masked_select", "argwhere", "unique_consecutive"}
IGNORE_NAMES = ("ignore_index", "ignore_label", "ignore_value", "ignore")


class Prober:
    """The defect probes of one audit; ``run`` returns the defects and notes."""

    def __init__(self, target: Target, convention: Convention, factory: ProbeFactory, identification: Identification,
                 ignore_index: Optional[int]) -> None:
        self.target = target
        self.encoding = convention.encoding
        self.factory = factory
        self.channels = factory.channels
        self.identification = identification
        self.ignore_index = ignore_index
        self.defects: List[Defect] = []
        self.notes: List[str] = []
        self.values: List[Tuple[str, float]] = list(identification.probe_values.items())

    def call(self, probe: Probe, *, grad: bool = False, watch=None) -> Outcome:
        outcome = self.target.call(probe.inputs, self.encoding.encode(probe.labels, self.channels), grad=grad,
                                   watch=watch)
        self.values.append((probe.name, outcome.value))
        return outcome

    def flag(self, defect_id: str, message: str, **evidence) -> None:
        self.defects.append(Defect(defect_id, message, evidence))

    def run(self) -> Tuple[List[Defect], List[str]]:
        for probe in (self.crash, self.absent_class_penalty, self.perfect_not_best, self.nan_or_inf,
                      self.half_precision_overflow, self.batch_size_dependent, self.no_gradient, self.nondeterministic,
                      self.host_sync, self.ignore_leak):
            probe()
        self.negative_loss()  # reads every value the probes above saw
        self.mutates_input()
        return self.defects, self.notes

    # -- identification-based -------------------------------------------------------------------
    def absent_class_penalty(self) -> None:
        f, last = self.factory, max(self.channels - 1, 1)
        present = f.labels(2)
        base = self.call(f.probe("present_perfect", f.confident(present), present)).value
        wrong_labels = 1 - present if self.channels == 1 else (present + 1) % self.channels
        wrong = self.call(f.probe("present_wrong", f.confident(wrong_labels), present)).value
        span = wrong - base
        if not (math.isfinite(span) and span > 0):
            return
        where = "class" if self.channels > 1 else "foreground"
        found = {}
        for scope, absent in (("one image", [(0, last)]), ("the whole batch", [(0, last), (1, last)])):
            labels = f.labels(2, absent=absent)
            value = self.call(f.probe(f"absent_from_{scope}", f.confident(labels), labels)).value
            if math.isfinite(value):
                found[scope] = value
        worst = max(found.items(), key=lambda kv: kv[1], default=None)
        if worst and (worst[1] - base) > ABSENT_PENALTY * span:
            parts = ", ".join(f"{v:.4g} when {where} {last} is absent from {s}" for s, v in found.items())
            self.flag("absent_class_penalty",
                      f"a perfect prediction (logits +-{CONFIDENCE:g}) scores {base:.4g} with every class present but "
                      f"{parts}: +{worst[1] - base:.3g}, {100 * (worst[1] - base) / span:.0f}% of the loss range "
                      f"({base:.3g} perfect .. {wrong:.3g} confidently wrong)",
                      perfect=base, wrong=wrong, absent=found)

    def perfect_not_best(self) -> None:
        f, last = self.factory, max(self.channels - 1, 1)
        scenarios = {"every class present": f.labels(2), "a class absent from one image": f.labels(2, absent=[(0, last)]),
                     "all-background images": f.labels(2, background_only=True)}
        for scenario, labels in scenarios.items():
            perfect = self.call(f.probe("perfect", f.confident(labels), labels)).value
            others = {
                "more confident (logits +-10)": f.confident(labels, 2 * CONFIDENCE),
                "less confident (logits +-1)": f.confident(labels, 1.0),
                "uniform": torch.zeros_like(f.confident(labels)),
                "noisy": f.noisy(labels, 1.0, 1.5),
            }
            for name, x in others.items():
                value = self.call(f.probe(name, x, labels)).value
                if not (math.isfinite(perfect) and math.isfinite(value)):
                    continue
                better = value < perfect - 1e-6 * max(1.0, abs(perfect))
                if name.startswith("more confident"):
                    better = value > perfect + 1e-6 * max(1.0, abs(perfect))  # more confidence must not cost
                if better:
                    self.flag("perfect_not_best",
                              f"with {scenario}, a perfect prediction (logits +-{CONFIDENCE:g}) scores {perfect:.4g} "
                              f"but a {name} prediction scores {value:.4g}",
                              scenario=scenario, perfect=perfect, other=name, other_value=value)
                    return

    def negative_loss(self) -> None:
        finite = [(n, v) for n, v in self.values if math.isfinite(v)]
        if not finite:
            return
        name, lowest = min(finite, key=lambda nv: nv[1])
        spec = self.identification.spec
        floor = -1.0 if spec is not None and spec.negate and spec.reduction == "mean" else 0.0
        if lowest < floor - 1e-6:
            what = "below -1, the floor of the -score form" if floor else "negative"
            self.flag("negative_loss", f"the loss is {what}: {lowest:.4g} on the {name} probe", probe=name, value=lowest)

    def batch_size_dependent(self) -> None:
        values = self.identification.probe_values
        two, many = values.get("unit_aa", math.nan), values.get("unit_aaaa", math.nan)
        repeats = 3 if self.channels == 4 else 4
        if not (math.isfinite(two) and math.isfinite(many)) or abs(two) < 1e-6:
            return
        ratio = many / two
        if abs(ratio - 1) > BATCH_RATIO:
            self.flag("batch_size_dependent",
                      f"the same image repeated {repeats} times scores {ratio:.3g}x the loss of 2 copies "
                      f"({many:.4g} vs {two:.4g})", two_copies=two, copies=repeats, many_copies=many)

    def mutates_input(self) -> None:
        for what in ("logits", "target"):
            seen = [m for m in self.target.mutations if m.what == what]
            if seen:
                self.flag("mutates_input",
                          f"the {what} changed in place in {len(seen)} of {self.target.calls} calls "
                          f"({seen[0].changed} values, e.g. {seen[0].example})",
                          input=what, calls=len(seen), first_example=seen[0].example)

    # -- robustness ------------------------------------------------------------------------------
    def crash(self) -> None:
        f = self.factory
        labels = f.labels(2)
        x = f.noisy(labels, 1.0, 1.5)
        reference = self.call(f.probe("contiguous", x, labels))
        cases = []
        # channels-last logits and a transposed-then-restored label map: same values, other strides
        strided_x = f.activate(x).float().double().permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        strided_labels = labels.transpose(1, 2).contiguous().transpose(1, 2)
        cases.append(("non-contiguous input", Probe("non_contiguous", strided_x, strided_labels), reference.value))
        labels_3d = f.labels(2, (4, 6, 5))
        cases.append(("3-D input (N, C, D, H, W)", f.probe("three_d", f.noisy(labels_3d, 1.0, 1.5), labels_3d), None))
        labels_big = f.labels(3)
        cases.append(("a batch of 3", f.probe("batch_of_3", f.noisy(labels_big, 1.0, 1.5), labels_big), None))
        if self.channels <= 2:
            self.notes.append("more than 2 classes not probed: the loss was audited with --channels "
                              f"{self.channels}")
        for what, probe, expected in cases:
            outcome = self.call(probe)
            if not outcome.ok:
                shape = "x".join(map(str, probe.inputs.shape))
                self.flag("crash", f"raises on {what} (logits {shape}, strides {probe.inputs.stride()}; labels "
                                   f"strides {probe.labels.stride()}): {outcome.error}",
                          case=what, shape=shape, error=outcome.error)
                continue
            source = "the same data otherwise gives"
            if expected is None and self.identification.spec is not None:
                expected = float(dice_loss(probe.inputs, probe.labels, self.identification.spec, impl="reference",
                                           validate=False))
                source = "its DiceSpec gives"
            if expected is not None and math.isfinite(expected) and not abs(outcome.value - expected) <= 1e-4 * max(1, abs(expected)):
                self.flag("crash", f"{what} gives {outcome.value:.6g} where {source} {expected:.6g}",
                          case=what, value=outcome.value, expected=expected)

    def nan_or_inf(self) -> None:
        f, last = self.factory, max(self.channels - 1, 1)
        empty = f.labels(2, background_only=True)
        one_empty = f.labels(2, absent=[(0, c) for c in range(1, max(self.channels, 2))])
        cases = [
            ("empty masks, perfect prediction", f.probe("empty_perfect", f.confident(empty), empty)),
            ("empty masks, noisy prediction", f.probe("empty_noisy", f.noisy(empty, 0.5, 1.5), empty)),
            ("one all-background image", f.probe("one_background_image", f.noisy(one_empty, 1.0, 1.5), one_empty)),
            ("a class absent from the batch", f.probe("absent_batch", f.confident(f.labels(2, absent=[(0, last), (1, last)])),
                                                      f.labels(2, absent=[(0, last), (1, last)]))),
        ]
        for what, probe in cases:
            outcome = self.call(probe, grad=True)
            if not outcome.ok:
                self.flag("crash", f"raises on {what}: {outcome.error}", case=what, error=outcome.error)
            elif not math.isfinite(outcome.value):
                self.flag("nan_or_inf", f"{what} (2 images of {f.spatial[0]}x{f.spatial[1]}) gives a loss of "
                                        f"{outcome.value}", case=what, value=outcome.value)
                return
            elif outcome.grad is not None and not bool(torch.isfinite(outcome.grad).all()):
                bad = int((~torch.isfinite(outcome.grad)).sum())
                self.flag("nan_or_inf", f"{what} gives a finite loss {outcome.value:.4g} but {bad} NaN/inf gradient values",
                          case=what, value=outcome.value, bad_gradients=bad)
                return
        nothing = torch.zeros(0, *f.spatial, dtype=torch.int64)
        outcome = self.call(Probe("empty_batch", torch.zeros(0, self.channels, *f.spatial, dtype=torch.float64), nothing))
        if not outcome.ok:
            self.notes.append(f"an empty batch (N = 0) raises {outcome.error}")
        elif not math.isfinite(outcome.value):
            self.flag("nan_or_inf", f"an empty batch (N = 0) gives {outcome.value}", case="empty batch", value=outcome.value)

    def half_precision_overflow(self) -> None:
        f = self.factory
        labels = f.labels(2, (HALF_SIDE, HALF_SIDE))
        labels[0] = 1  # 73 984 pixels of class 1 in one image
        x = f.activate(f.noisy(labels, 0.5, 1.5))
        for dtype in (torch.float16, torch.bfloat16):
            rounded = x.to(dtype)
            encoded = self.encoding.encode(labels, self.channels)
            full = self.target.call(rounded.double(), encoded)
            half = self.target.call(rounded, encoded, grad=True)
            name = str(dtype).replace("torch.", "")
            if not half.ok:
                self.notes.append(f"{name} inputs raise {half.error}")
                continue
            if not full.ok or not math.isfinite(full.value):
                continue
            off = abs(half.value - full.value) / max(1.0, abs(full.value))
            grad_bad = half.grad is not None and not bool(torch.isfinite(half.grad).all())
            if not math.isfinite(half.value) or off > HALF_TOLERANCE or grad_bad:
                detail = "with NaN/inf gradients" if grad_bad and math.isfinite(half.value) and off <= HALF_TOLERANCE else ""
                self.flag("half_precision_overflow",
                          f"{name} inputs with {HALF_SIDE * HALF_SIDE} pixels of class 1 in an image give "
                          f"{half.value:.4g} where float32 gives {full.value:.4g} {detail}".rstrip(),
                          dtype=name, half=half.value, float32=full.value, pixels=HALF_SIDE * HALF_SIDE)

    def no_gradient(self) -> None:
        f = self.factory
        labels = f.labels(2)
        outcome = self.call(f.probe("gradient", f.noisy(labels, 0.5, 1.5), labels), grad=True)
        if not outcome.ok or not math.isfinite(outcome.value):
            return
        if not outcome.has_grad:
            self.flag("no_gradient", f"the result ({outcome.result_type} {outcome.value:.4g} on an imperfect prediction) "
                                     "is not attached to the logits' autograd graph: 0 gradient values",
                      result_type=outcome.result_type, value=outcome.value)
        elif outcome.grad is None or float(outcome.grad.abs().max()) == 0:
            self.flag("no_gradient", "the gradient with respect to the logits is zero on an imperfect prediction "
                                     f"(loss {outcome.value:.4g})", value=outcome.value)

    def nondeterministic(self) -> None:
        f = self.factory
        labels = f.labels(2)
        probe = f.probe("repeat", f.noisy(labels, 0.5, 1.5), labels)
        runs = [self.call(probe, grad=True) for _ in range(3)]
        if not all(r.ok for r in runs):
            return
        values = [r.value for r in runs]
        grads_differ = all(r.grad is not None for r in runs) and not all(torch.equal(runs[0].grad, r.grad) for r in runs)
        if len({repr(v) for v in values}) > 1 or grads_differ:
            spread = max(values) - min(values)
            self.flag("nondeterministic", f"three calls on the same input give {min(values):.10g} .. {max(values):.10g} "
                                          f"(spread {spread:.3g}{', and different gradients' if grads_differ else ''})",
                      values=values, gradients_differ=grads_differ)

    def host_sync(self) -> None:
        f = self.factory
        labels = f.labels(2)
        probe = f.probe("host_reads", f.noisy(labels, 0.5, 1.5), labels)
        counter = HostReads()
        outcome = self.call(probe, watch=counter)
        if outcome.ok and counter.counts:
            total = sum(counter.counts.values())
            listing = ", ".join(f"{name} x{n}" for name, n in counter.counts.most_common())
            self.flag("host_sync", f"reads tensor values to the host {total} time(s) per call ({listing}); "
                                   "each is a device synchronisation on a GPU", reads=dict(counter.counts))

    def ignore_leak(self) -> None:
        index = self.ignore_index if self.ignore_index is not None else find_ignore_index(self.target.fn)
        if index is None:
            return
        if self.encoding.float_target:
            self.notes.append(f"ignore index {index} not probed: the loss takes float targets")
            return
        f = self.factory
        labels = f.labels(2)
        labels[:, : f.spatial[0] // 2] = index  # the top half ignored
        kept = torch.where(labels == index, 1 % max(self.channels, 2), labels)
        x = f.noisy(kept, 1.0, 1.0)
        other = x.clone()
        other[:, :, : f.spatial[0] // 2] = f.confident(torch.zeros_like(labels))[:, :, : f.spatial[0] // 2]
        a, b = self.call(f.probe("ignored_a", x, labels)), self.call(f.probe("ignored_b", other, labels))
        if not (a.ok and b.ok):
            self.flag("crash", f"raises on labels equal to its ignore index {index}: {a.error or b.error}",
                      case="ignore index", error=a.error or b.error)
            return
        if abs(a.value - b.value) > 1e-6 * max(1.0, abs(a.value)):
            self.flag("ignore_leak", f"changing the prediction on pixels labelled {index} (ignored) moves the loss "
                                     f"from {a.value:.4g} to {b.value:.4g}", ignore_index=index, a=a.value, b=b.value)


class HostReads(TorchFunctionMode):
    """Counts the calls that copy tensor values to the host (``item``, ``bool(t)``, ``nonzero``...)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS or (name == "__getitem__" and len(args) > 1 and _has_bool_mask(args[1])):
            self.counts[f"Tensor.{name}"] += 1
        return func(*args, **(kwargs or {}))


def _has_bool_mask(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in items)


def find_ignore_index(fn) -> Optional[int]:
    """The ignore label a loss takes: a keyword it was given, an attribute of the instance, or a
    default of its signature; None when it takes none."""
    keywords = getattr(fn, "keywords", None) or {}  # functools.partial (kwargs given to a function)
    function = getattr(fn, "func", fn)
    for name in IGNORE_NAMES:
        value = keywords.get(name, None if inspect.isroutine(function) else getattr(function, name, None))
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    try:
        parameters = inspect.signature(function.forward if isinstance(function, nn.Module) else function).parameters
    except (TypeError, ValueError):
        return None
    for name in IGNORE_NAMES:
        default = parameters[name].default if name in parameters else None
        if isinstance(default, int) and not isinstance(default, bool):
            return default
    return None
