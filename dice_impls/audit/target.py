"""Calling the audited loss: building it, and a safety net around every call.

Every call goes through ``Target.call``: the inputs are copied first so that an in-place change
is caught, warnings are silenced, and any exception becomes an ``Outcome`` with its message
instead of stopping the audit.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import warnings
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
from torch import Tensor, nn


@dataclass
class Outcome:
    """What one call gave: ``value`` (a float, NaN when it raised or returned nothing numeric)."""

    value: float
    error: Optional[str] = None
    grad: Optional[Tensor] = None
    has_grad: bool = False  # the result was attached to the logits' graph
    shape: tuple = ()
    result_type: str = "Tensor"

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Mutation:
    what: str  # "logits" or "target"
    changed: int
    example: str


@dataclass
class Target:
    """The loss under audit, ready to call as ``loss(logits, target)``."""

    fn: Callable
    name: str
    device: torch.device
    mutations: List[Mutation] = field(default_factory=list)
    calls: int = 0
    notes: List[str] = field(default_factory=list)

    @classmethod
    def build(cls, fn, kwargs: Optional[dict], device, name: Optional[str] = None,
              channels: Optional[int] = None) -> "Target":
        """``fn``: a function ``f(logits, target)``, an ``nn.Module`` class (instantiated with
        ``kwargs``) or any callable instance. A required parameter that names the class count
        (``n_classes``, ``num_classes``...) and is not in ``kwargs`` gets ``channels``; ``notes``
        says so. Raises TypeError/ValueError naming the problem."""
        kwargs = dict(kwargs or {})
        label = name or getattr(fn, "__qualname__", None) or type(fn).__name__
        filled = _class_count_arguments(fn, kwargs, channels)
        kwargs.update(filled)
        if inspect.isclass(fn):
            try:
                fn = fn(**kwargs)
            except Exception as error:  # the user's constructor: any failure is theirs to read
                raise ValueError(f"{label}(**{kwargs}) failed: {type(error).__name__}: {error}") from None
        elif kwargs:
            fn = functools.partial(fn, **kwargs)
        if not callable(fn):
            raise TypeError(f"{label} is a {type(fn).__name__}, not a loss function, class or callable instance")
        if isinstance(fn, nn.Module):
            fn = fn.to(device)
        notes = [f"built with {k}={v} (the class count, --channels)" for k, v in filled.items()]
        order = _argument_names(fn)
        if order and order[0] in TARGET_NAMES and order[1] not in TARGET_NAMES:
            loss = fn
            fn = functools.wraps(loss)(lambda logits, target: loss(target, logits))
            notes.append(f"called as f({order[0]}, {order[1]}): its first parameter takes the ground truth")
        target = cls(fn, label, torch.device(device))
        target.notes = notes
        return target

    def call(self, logits: Tensor, target: Tensor, *, grad: bool = False, watch=None) -> Outcome:
        """``loss(logits, target)`` with float32 logits (or ``logits.dtype`` when it is half or
        bfloat16); the gradient with respect to the logits when ``grad``. ``watch``: a context
        manager entered around the loss's own call alone (e.g. a counter of host reads)."""
        self.calls += 1
        dtype = logits.dtype if logits.dtype in (torch.float16, torch.bfloat16) else torch.float32
        x = logits.detach().to(self.device, dtype).requires_grad_(grad)
        t = target.to(self.device)
        x_before, t_before = x.detach().clone(), t.clone()
        try:
            # warnings and prints of the loss (debug output is common) stay out of the report
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                with watch or contextlib.nullcontext():
                    result = self.fn(x, t)
                outcome = self._outcome(result, x, grad)
        except Exception as error:  # the loss under audit may raise anything; it becomes a finding
            outcome = Outcome(float("nan"), error=f"{type(error).__name__}: {_first_line(error)}")
        self._check_mutation("logits", x.detach(), x_before)
        self._check_mutation("target", t, t_before)
        return outcome

    def _outcome(self, result, x: Tensor, grad: bool) -> Outcome:
        if isinstance(result, (tuple, list)) and result and isinstance(result[0], Tensor):
            result = result[0]  # (loss, extras) pairs
        if not isinstance(result, Tensor):
            try:
                return Outcome(float(result), result_type=type(result).__name__)
            except (TypeError, ValueError):
                return Outcome(float("nan"), error=f"returned a {type(result).__name__}, not a number or tensor")
        shape = tuple(result.shape)
        if result.numel() == 0:
            return Outcome(float("nan"), error=f"returned an empty tensor of shape {shape}", shape=shape)
        scalar = result if result.numel() == 1 else result.float().mean()
        value = float(scalar.detach().double())
        attached = scalar.requires_grad
        outcome = Outcome(value, has_grad=attached, shape=shape)
        if grad and attached:
            (gradient,) = torch.autograd.grad(scalar, x, allow_unused=True)
            outcome.grad = None if gradient is None else gradient.detach().double().cpu()
        return outcome

    def _check_mutation(self, what: str, now: Tensor, before: Tensor) -> None:
        if now.shape == before.shape and torch.equal(now, before):
            return
        if now.shape != before.shape:
            self.mutations.append(Mutation(what, before.numel(), f"shape {tuple(before.shape)} -> {tuple(now.shape)}"))
            return
        changed = now != before
        index = tuple(int(i) for i in changed.nonzero()[0])
        example = f"at {index}: {before[index].item():g} -> {now[index].item():g}"
        self.mutations.append(Mutation(what, int(changed.sum()), example))


CLASS_COUNT_NAMES = ("n_classes", "num_classes", "classes", "nclass", "n_class", "num_class", "nclasses",
                     "class_num", "number_of_classes")


def _class_count_arguments(fn, kwargs: dict, channels: Optional[int]) -> dict:
    """Required parameters of ``fn``'s constructor (a class) or of ``fn`` after its two inputs
    (a function) that name the class count and are not given: {name: channels}."""
    if channels is None:
        return {}
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return {}
    if not inspect.isclass(fn):
        parameters = parameters[2:]  # (logits, target) come first
    return {p.name: channels for p in parameters
            if p.default is inspect.Parameter.empty and p.name.lower() in CLASS_COUNT_NAMES and p.name not in kwargs
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


TARGET_NAMES = ("y_true", "target", "targets", "true", "gt", "y", "label", "labels", "mask", "masks", "ground_truth",
                "truth", "y_gt")


def _argument_names(fn) -> List[str]:
    """The names of the two inputs of a loss function or module's ``forward`` ([] if unknown)."""
    function = getattr(fn, "forward", fn) if isinstance(fn, nn.Module) else getattr(fn, "func", fn)
    try:
        parameters = [p for p in inspect.signature(function).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return []
    return [p.name.lower() for p in parameters[:2]] if len(parameters) >= 2 else []


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else "(no message)"
