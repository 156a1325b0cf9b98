"""CPU time and memory of every loss, ours and the peers', side by side.

``Grid``: every implementation x dtype on small 2-D and 3-D shapes. ``Headline``: large shapes,
float32 and bfloat16, where the ratios against MONAI are read (docs/benchmarks.md).
``Compound``: Dice + cross-entropy, ours fused (both terms in one two-pass operator) against
MONAI's ``DiceCELoss``, at the headline shapes in float32. ``HeadlineCompiled``: ``torch.compile``
of the vectorized loss at the 2-D headline shape (its compilation, 30-70 s a combination here,
keeps it to one shape; its process peak, ``peakmem_``, would measure the compiler, so only the
call's own peak is tracked). ``ManyClasses``: a 3-D patch with 104 classes, fused against MONAI
and nnU-Net, where memory decides whether a batch fits.
"""

from __future__ import annotations

from .common import (COMPOUND_LOSSES, DTYPES, GRID_SHAPES, HEADLINE_SHAPES, LOSSES, MANY_CLASS_LOSSES, SHAPES_WHOLE_BODY,
                     LossCase, _PeakBytes)


class Grid(LossCase):
    params = ([name for name in LOSSES if name != "vectorized_compiled"], list(DTYPES), GRID_SHAPES)

    def time_forward(self, *params):
        self.forward()

    def time_forward_backward(self, *params):
        self.forward_backward()


class Headline(_PeakBytes, LossCase):
    params = ([name for name in LOSSES if name not in ("naive", "vectorized_compiled")], ["float32", "bfloat16"],
              HEADLINE_SHAPES)
    repeat = (3, 5, 10.0)
    number = 1

    def time_forward_backward(self, *params):
        self.forward_backward()

    def peakmem_forward_backward(self, *params):
        self.forward_backward()


class Compound(_PeakBytes, LossCase):
    losses = COMPOUND_LOSSES
    params = (list(COMPOUND_LOSSES), ["float32"], HEADLINE_SHAPES)
    repeat = Headline.repeat
    number = 1

    def time_forward_backward(self, *params):
        self.forward_backward()

    def peakmem_forward_backward(self, *params):
        self.forward_backward()


class HeadlineCompiled(_PeakBytes, LossCase):
    params = (["vectorized_compiled"], ["float32"], HEADLINE_SHAPES[:1])
    repeat = Headline.repeat
    number = 1

    def time_forward_backward(self, *params):
        self.forward_backward()


class ManyClasses(_PeakBytes, LossCase):
    losses = MANY_CLASS_LOSSES
    params = (list(MANY_CLASS_LOSSES), ["float32"], SHAPES_WHOLE_BODY)
    repeat = Headline.repeat
    number = 1

    def time_forward_backward(self, *params):
        self.forward_backward()
