"""What the loss costs: forward+backward time and peak memory beside ``fused`` of its spec and
MONAI's DiceLoss (when installed), at a 2-D and a 3-D shape."""

from __future__ import annotations

import statistics
import time
from typing import Callable, List, Optional

import torch

from ..registry import dice_loss
from ..spec import DiceSpec
from .encoding import Encoding
from .probes import ProbeFactory
from .target import Target

SHAPES = ((4, 256, 256), (2, 48, 96, 96))  # (N, *spatial)
REPEATS = 5


def measure_cost(target: Target, encoding: Encoding, factory: ProbeFactory, spec: Optional[DiceSpec]) -> dict:
    """Median seconds of forward+backward over ``REPEATS`` calls (after a warm-up) and, on CUDA,
    the peak memory allocated above the inputs; ``None`` where not measurable."""
    rows: List[dict] = []
    device = target.device
    for n, *spatial in SHAPES:
        labels = factory.labels(n, spatial).to(device)
        x = factory.activate(factory.noisy(labels.cpu(), 0.5, 1.5)).float().to(device)
        shape = "x".join(str(s) for s in (n, factory.channels, *spatial))
        encoded = encoding.encode(labels, factory.channels)
        rows.append(_row(shape, "audited loss", lambda x: target.fn(x, encoded), x, device))
        if spec is not None:
            rows.append(_row(shape, "fused (same spec)",
                             lambda x: dice_loss(x, labels, spec, impl="fused", validate=False), x, device))
        rows.append(_monai_row(shape, x, labels, factory.channels, factory.kind, device))
    return {"rows": rows, "device": str(device),
            "peak_memory": "CUDA only (torch.cuda.max_memory_allocated)" if device.type != "cuda" else "measured"}


def _monai_row(shape: str, x, labels, channels: int, kind: str, device) -> dict:
    try:
        from monai.losses import DiceLoss
    except ImportError:
        return dict(shape=shape, implementation="MONAI DiceLoss", seconds=None, peak_bytes=None, note="MONAI not installed")
    activation = {} if kind == "probabilities" else {"sigmoid": True} if channels == 1 else {"softmax": True}
    loss = DiceLoss(to_onehot_y=channels > 1, **activation)
    target = labels.unsqueeze(1).float() if channels == 1 else labels.unsqueeze(1)
    return _row(shape, "MONAI DiceLoss", lambda x: loss(x, target), x, device)


def _row(shape: str, name: str, loss: Callable, x: torch.Tensor, device) -> dict:
    row = dict(shape=shape, implementation=name, seconds=None, peak_bytes=None, note="")
    try:
        times, peak = [], None
        for repeat in range(REPEATS + 1):
            logits = x.detach().clone().requires_grad_(True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            start = time.perf_counter()
            value = loss(logits)
            (value if value.numel() == 1 else value.mean()).backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                peak = max(peak or 0, torch.cuda.max_memory_allocated(device) - base)
            if repeat:  # the first call warms up
                times.append(time.perf_counter() - start)
        row.update(seconds=statistics.median(times), peak_bytes=peak)
    except Exception as error:  # a loss that fails at this size is reported, not fatal
        row["note"] = f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
    return row
