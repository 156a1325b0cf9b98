"""GPU time and memory of every loss: wall time through a synchronising timer, seconds from CUDA
events, and the peak of ``torch.cuda.max_memory_allocated`` above the inputs.

Without CUDA every combination raises NotImplementedError in setup (asv: n/a).
"""

from __future__ import annotations

import torch

from .common import CUDA_SHAPES, DTYPES, LOSSES, LossCase, cuda_event_seconds, cuda_synchronized_timer


class CudaLoss(LossCase):
    params = (list(LOSSES), list(DTYPES), CUDA_SHAPES)
    device = "cuda"
    # asv reads the clock only after queued kernels finish; asv takes the attribute from an
    # instance, so a plain function would be bound as a method.
    timer = staticmethod(cuda_synchronized_timer)

    def time_forward(self, *params):
        self.forward()

    def time_forward_backward(self, *params):
        self.forward_backward()

    def track_seconds_forward_backward(self, *params):
        return cuda_event_seconds(self.forward_backward)

    track_seconds_forward_backward.unit = "seconds"

    def track_max_memory_allocated_forward_backward(self, *params):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        self.forward_backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - baseline

    track_max_memory_allocated_forward_backward.unit = "bytes"
