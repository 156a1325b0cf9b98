"""Shared pieces of the benchmark suite: shapes, dtypes, devices, inputs, timers, and the losses.

Every loss in ``LOSSES`` is ``loss(logits, labels) -> scalar`` with the same semantics: softmax
over channels, labels an integer map ``(N, *spatial)``, one Dice per image and class, background
included, mean over both (our ``DiceSpec.preset("monai")``). Ours come from
``dice_impls.IMPLEMENTATIONS``; the peers are configured to match:

- ``monai``: ``monai.losses.DiceLoss(softmax=True, to_onehot_y=True)`` = preset ``"monai"``.
- ``kornia``: ``kornia.losses.dice_loss(average="micro", eps=1e-8)`` = preset ``"kornia"``
  (classes pooled before the ratio). It differs from ``"monai"`` only in the scoring of the
  ``(N, C)`` sums, so its cost is comparable with ours. It takes ``(B, C, H, W)`` only and int64
  labels (other label dtypes are converted inside the timed call, as a user would have to).
- ``vectorized_compiled``: ``torch.compile`` of our vectorized loss, what a user would try first.

Heavy peers are imported on first use, so a benchmark process only pays for what it runs.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Tuple

import torch
from torch import Tensor

from dice_impls import IMPLEMENTATIONS, DiceCELoss, DiceSpec

LossFn = Callable[[Tensor, Tensor], Tensor]

SPEC = DiceSpec.preset("monai")

# Shapes are "NxCxD1x...": batch, classes, spatial. Strings keep asv's parameter labels readable.
SHAPES_2D = ["4x4x128x128", "4x4x512x512", "8x4x512x512"]
SHAPES_3D = ["2x4x32x32x32", "1x4x96x96x96", "2x4x128x128x128"]
SHAPES_MANY_CLASSES = ["4x16x256x256", "2x32x64x64x64"]
# Whole-body CT label sets have 100+ classes: one 3-D patch at C = 104 (logits 109 MB in float32),
# where a loss that keeps several logits-sized intermediates decides whether a batch fits.
SHAPES_WHOLE_BODY = ["1x104x64x64x64"]
# One training step of a small U-Net: N x classes x spatial of its output (one input channel).
TRAINING_SHAPES = ["4x4x256x256", "1x4x64x64x64"]
# The full CPU grid uses small shapes (every implementation x dtype in minutes on 2 cores); the
# headline ratios use large ones; the GPU grid uses all of them.
GRID_SHAPES = [SHAPES_2D[0], SHAPES_3D[0]]
HEADLINE_SHAPES = [SHAPES_2D[1], SHAPES_3D[1]]
CUDA_SHAPES = SHAPES_2D[1:] + SHAPES_3D[2:] + SHAPES_MANY_CLASSES[:1]
# Scaling series: voxels per image at fixed C = 4 (one image), and classes at fixed voxels.
SCALING_VOXELS = ["1x4x64x64", "1x4x128x128", "1x4x256x256", "1x4x512x512", "1x4x1024x1024"]
SCALING_CLASSES = ["1x2x256x256", "1x4x256x256", "1x8x256x256", "1x16x256x256", "1x32x256x256"]

DTYPES: Dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ["cpu", "cuda"]
LABEL_DTYPES: Dict[str, torch.dtype] = {"int64": torch.int64, "uint8": torch.uint8}

OURS = ("naive", "vectorized", "mixed", "fused")
PEERS = ("monai", "kornia", "vectorized_compiled")


def parse_shape(shape: str) -> Tuple[int, ...]:
    """``"2x4x64x64"`` -> ``(2, 4, 64, 64)``."""
    return tuple(int(size) for size in shape.split("x"))


def voxels(shape: str) -> int:
    """Logit elements of a shape: N * C * spatial."""
    return int(torch.tensor(parse_shape(shape)).prod())


def pin_threads(n: int = 2) -> None:
    """Fix the intra-op thread count so CPU numbers are comparable between runs and machines."""
    torch.set_num_threads(n)


def require(condition: bool, why: str) -> None:
    """Raise NotImplementedError (asv shows n/a) when a combination cannot run."""
    if not condition:
        raise NotImplementedError(why)


def require_device(device: str) -> None:
    require(device != "cuda" or torch.cuda.is_available(), "CUDA is not available on this machine")


def make_inputs(shape: str, dtype: str, device: str = "cpu", seed: int = 0, *,
                label_dtype: str = "int64", requires_grad: bool = False) -> Tuple[Tensor, Tensor]:
    """Seeded random ``(logits, labels)``: logits ``(N, C, *spatial)`` ~ N(0, 1) in ``dtype``,
    labels ``(N, *spatial)`` uniform in ``[0, C)`` of ``label_dtype``."""
    require_device(device)
    n, c, *spatial = parse_shape(shape)
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn((n, c, *spatial), generator=generator).to(device=device, dtype=DTYPES[dtype])
    labels = torch.randint(0, c, (n, *spatial), generator=generator).to(device=device, dtype=LABEL_DTYPES[label_dtype])
    return logits.requires_grad_(requires_grad), labels


def cuda_synchronized_timer() -> float:
    """A wall clock that waits for queued CUDA work first (asv's ``timer`` for GPU benchmarks)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def cuda_event_seconds(fn: Callable[[], object], repeat: int = 20, warmup: int = 3) -> float:
    """Median seconds of ``fn()`` measured with CUDA events, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return float(torch.tensor(times).median())


def _ours(name: str) -> LossFn:
    implementation = IMPLEMENTATIONS[name]
    return lambda logits, labels: implementation(logits, labels, SPEC)


@functools.lru_cache(maxsize=None)
def _monai_module():
    from monai.losses import DiceLoss

    return DiceLoss(softmax=True, to_onehot_y=True)  # smooth_nr = smooth_dr = 1e-5, per image


def monai_dice(logits: Tensor, labels: Tensor) -> Tensor:
    return _monai_module()(logits, labels.unsqueeze(1))  # MONAI wants (N, 1, *spatial)


@functools.lru_cache(maxsize=None)
def _monai_dice_ce_module():
    from monai.losses import DiceCELoss

    return DiceCELoss(softmax=True, to_onehot_y=True)  # Dice as above + cross-entropy, weights 1 and 1


def monai_dice_ce(logits: Tensor, labels: Tensor) -> Tensor:
    return _monai_dice_ce_module()(logits, labels.unsqueeze(1))


def kornia_dice(logits: Tensor, labels: Tensor) -> Tensor:
    from kornia.losses import dice_loss

    return dice_loss(logits, labels.long(), average="micro", eps=1e-8)  # .long() is a no-op on int64


@functools.lru_cache(maxsize=None)
def _compiled_vectorized():
    import logging

    # The input checks' .item() calls break the graph (a warning per compilation); that is what a
    # user compiling the loss gets, so keep it, but keep the benchmark logs readable.
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    return torch.compile(_ours("vectorized"))


def vectorized_compiled(logits: Tensor, labels: Tensor) -> Tensor:
    return _compiled_vectorized()(logits, labels)


LOSSES: Dict[str, LossFn] = {name: _ours(name) for name in OURS if name in IMPLEMENTATIONS}
LOSSES.update(monai=monai_dice, kornia=kornia_dice, vectorized_compiled=vectorized_compiled)
# Dice + cross-entropy (the "monai" Dice plus the mean cross-entropy over pixels, weights 1 and 1):
# ours with impl="fused" (both terms in the C++ operator's two passes) and MONAI's DiceCELoss.
COMPOUND_LOSSES: Dict[str, LossFn] = {"fused": DiceCELoss(impl="fused", spec=SPEC), "monai": monai_dice_ce}


def nnunet_dice(logits: Tensor, labels: Tensor) -> Tensor:
    """nnU-Net's MemoryEfficientSoftDiceLoss (softmax, one Dice per image and class, background
    included, smooth 1e-5) as ``1 + its negative Dice``, the "monai" semantics up to its clamp."""
    return 1 + _nnunet_module()(logits, labels.unsqueeze(1))


@functools.lru_cache(maxsize=None)
def _nnunet_module():
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    return MemoryEfficientSoftDiceLoss(apply_nonlin=lambda x: torch.softmax(x, 1), batch_dice=False, do_bg=True,
                                       smooth=1e-5, ddp=False)


# Peak memory at many classes: fused against MONAI and nnU-Net (nnunetv2 is installed by the
# Makefile, not in asv's own environments, where its cells are n/a).
MANY_CLASS_LOSSES: Dict[str, LossFn] = {"fused": LOSSES["fused"], "monai": monai_dice, "nnunet": nnunet_dice}


def check_supported(name: str, shape: str, dtype: str, device: str = "cpu", losses: Dict[str, LossFn] = LOSSES) -> None:
    """NotImplementedError for combinations that cannot run (asv: n/a), never a fake number."""
    require(name in losses, f"{name!r} is not available (not registered in dice_impls)")
    if name == "nnunet":
        import importlib.util

        require(importlib.util.find_spec("nnunetv2") is not None, "nnunetv2 is not installed in this environment")
    require_device(device)
    require(name != "kornia" or len(parse_shape(shape)) == 4, "kornia's dice_loss takes (B, C, H, W) only")
    require(name != "naive" or voxels(shape) <= 2**22, "naive is only timed on small shapes (Python loops)")
    # Each compilation costs 30-70 s on the 2-core machine; one dtype keeps the grid affordable.
    require(name != "vectorized_compiled" or dtype == "float32", "torch.compile is benchmarked in float32 only")
    if name == "fused" and device == "cpu":
        # Without its C++ kernel fused falls back to a chunked torch path, many times slower: a number
        # under fused's name would then measure something else (an installed copy that lacks the kernel).
        from dice_impls.fused.cpu import extension_available

        require(extension_available(), "fused's C++ CPU kernel is not available in this environment")


def _libc():
    import ctypes

    return ctypes.CDLL(None)


def peak_rss_increase(fn: Callable[[], object]) -> int:
    """Bytes by which the resident set's high-water mark rises above the current RSS during
    ``fn()`` (Linux only: the mark is reset through /proc/self/clear_refs).

    malloc is told to serve every block over 64 KiB with mmap and to hand freed memory back, so
    memory freed before the call cannot be reused invisibly and the mark sees each allocation.
    """
    require(sys.platform.startswith("linux"), "peak RSS reset needs Linux (/proc/self/clear_refs)")
    libc = _libc()
    libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD; a fixed value also stops glibc raising it
    gc.collect()
    libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current VmRSS
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) * 1024


@contextlib.contextmanager
def fresh_gradients():
    """The fused operator's gradient pool off (``DICE_FUSED_POOL=0``, read on every call): its
    gradient is then new memory that a peak measurement counts, as every other loss's is; with the
    pool on it would already be resident before the call and read as 0."""
    previous = os.environ.get("DICE_FUSED_POOL")
    os.environ["DICE_FUSED_POOL"] = "0"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["DICE_FUSED_POOL"]
        else:
            os.environ["DICE_FUSED_POOL"] = previous


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


class LossCase:
    """Shared setup of the benchmark classes: one loss, one input pair, already warmed up.

    Subclasses set ``params`` (implementation, dtype, shape[, device]) and name the measurements
    with asv's prefixes (time_, peakmem_, track_).
    """

    param_names = ("implementation", "dtype", "shape")
    device = "cpu"
    losses = LOSSES  # where ``implementation`` is looked up
    # Two rounds: asv runs every combination once, then all of them again, so a burst of load on a
    # shared machine hits one round of every implementation rather than all samples of one; the
    # quartiles of both rounds' samples give each number its spread (benchmarks.results).
    rounds = 2
    repeat = (5, 10, 2.0)  # per round: at least 5 samples, at most 10 or about 2 s
    warmup_time = 0.1

    def setup(self, implementation: str, dtype: str = "float32", shape: str = SHAPES_2D[0], *_):
        check_supported(implementation, shape, dtype, self.device, self.losses)
        pin_threads()
        self.loss = self.losses[implementation]
        self.logits, self.labels = make_inputs(shape, dtype, self.device, requires_grad=True)
        # Imports, compilation and first-call caches stay out of the timings; compiled code
        # settles on its second call.
        for _ in range(2 if implementation == "vectorized_compiled" else 1):
            self.forward_backward()

    def forward(self) -> Tensor:
        return self.loss(self.logits, self.labels)

    def forward_backward(self) -> None:
        self.forward().backward()
        self.logits.grad = None


class _PeakBytes:
    """Adds the peak bytes a forward+backward call allocates (``peak_rss_increase``); underscored
    so that asv does not collect it on its own."""

    def track_peak_bytes_forward_backward(self, *params):
        with fresh_gradients():
            return peak_rss_increase(self.forward_backward)

    track_peak_bytes_forward_backward.unit = "bytes"


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
