"""``torch.nn.Module`` wrappers."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from .registry import dice_loss, get_implementation, resolve_spec
from .spec import DiceSpec


class DiceLoss(nn.Module):
    """Soft Dice loss as a module: ``DiceLoss(impl="fused", batch=True)(logits, target)``.

    ``spec``, ``validate`` and keyword fields follow ``dice_loss``; an unknown implementation or
    field raises at construction.
    """

    def __init__(self, impl: str = "vectorized", spec: Optional[DiceSpec] = None, *, validate: bool = True,
                 **fields) -> None:
        super().__init__()
        get_implementation(impl)
        self.impl = impl
        self.spec = resolve_spec(spec, fields)
        self.validate = validate

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return dice_loss(logits, target, self.spec, impl=self.impl, validate=self.validate)

    def extra_repr(self) -> str:
        return f"impl={self.impl!r}, validate={self.validate}, spec={self.spec}"
