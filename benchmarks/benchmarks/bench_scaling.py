"""How CPU cost grows: forward+backward time and peak memory vs voxels at fixed C = 4, and vs
the class count C at fixed voxels (float32; the implementations that differ in formulation)."""

from __future__ import annotations

from .common import SCALING_CLASSES, SCALING_VOXELS, LossCase, _PeakBytes

IMPLEMENTATIONS = ["vectorized", "fused", "monai"]


class _Scaling(_PeakBytes, LossCase):
    param_names = ("implementation", "shape")

    def setup(self, implementation, shape):
        super().setup(implementation, "float32", shape)

    def time_forward_backward(self, *params):
        self.forward_backward()


class Voxels(_Scaling):
    params = (IMPLEMENTATIONS, SCALING_VOXELS)


class Classes(_Scaling):
    params = (IMPLEMENTATIONS, SCALING_CLASSES)
