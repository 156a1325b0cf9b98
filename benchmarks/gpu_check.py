"""One command for a CUDA machine: the fused kernels against the reference, the CUDA benchmark grid,
peak memory, written to ``results/gpu/`` (``make gpu-check``; about 8 minutes at most).

    python -m benchmarks.gpu_check [--out results/gpu] [--budget 420]

Without CUDA (or with a CPU build of torch) it prints one line and exits with status 2 at once.

Writes, each overwritten per run:

- ``summary.json``: ``environment`` (device, capability, torch, triton, commit), ``checks`` (one
  entry per correctness or sync check: ``name``, ``passed``, ``detail``), ``kernels`` (the
  statistics and gradient kernels alone at 16x4x512x512 float32: ``seconds``, ``bytes``,
  ``bandwidth`` in bytes/s and its fraction of the ``copy_bandwidth`` measured in the same run),
  ``benchmarks`` (the rows of bench_cuda.csv), ``skipped`` (combinations left out, with why) and
  ``passed`` (every check passed).
- ``bench_cuda.csv``: ``loss,dtype,shape,forward_ms,forward_backward_ms,peak_mib`` from
  ``bench_cuda.CudaLoss`` (CUDA events, medians of 20; peak = ``max_memory_allocated`` above
  the inputs during one forward+backward).

Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List

import torch

CORRECTNESS_SHAPES = [((2, 33, 47), 4), ((2, 5, 7, 9), 3), ((1, 64, 64), 32), ((2, 17, 19), 150),
                      ((1, 9, 11), 256), ((3, 40, 40), 1)]
KERNEL_SHAPE = (16, 4, 512 * 512)  # the shape of the performance model in docs/performance.md
CSV_COLUMNS = ["loss", "dtype", "shape", "forward_ms", "forward_backward_ms", "peak_mib"]


def cuda_unavailable() -> str:
    """Why this machine cannot run the check, or '' when it can."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build; install a CUDA build of the same torch version"
    if not torch.cuda.is_available():
        return f"no CUDA device visible to torch {torch.__version__} (CUDA {torch.version.cuda})"
    return ""


def _check(checks: List[Dict[str, Any]], name: str, fn: Callable[[], str]) -> None:
    """Run ``fn`` (returns a detail string, raises AssertionError on failure) and record the outcome."""
    try:
        checks.append(dict(name=name, passed=True, detail=fn()))
    except Exception as error:  # every failure is recorded; the run goes on to the next check
        checks.append(dict(name=name, passed=False, detail=f"{type(error).__name__}: {error}"[:500]))
    print(f"gpu_check: {'ok  ' if checks[-1]['passed'] else 'FAIL'} {name}: {checks[-1]['detail']}", flush=True)


def correctness_checks(checks: List[Dict[str, Any]]) -> None:
    import dice_impls
    from dice_impls import DiceSpec, loss_from_statistics
    from dice_impls.fused import fused_statistics

    def compare(shape, channels, spec, dtype, deterministic):
        gen = torch.Generator().manual_seed(channels)
        n, *spatial = shape
        logits = torch.randn((n, channels, *spatial), generator=gen, dtype=torch.float64) * 2
        if spec.activation == "none":
            logits = logits.softmax(1) if channels > 1 else logits.sigmoid()
        high = 2 if channels == 1 else channels
        labels = torch.randint(0, high, shape, generator=gen)
        if spec.ignore_index is not None:
            labels[torch.rand(shape, generator=gen) < 0.25] = spec.ignore_index
        logits = logits.to(dtype)
        results = []
        for device in ("cuda", "cpu"):
            x = (logits.cuda() if device == "cuda" else logits.double()).clone().requires_grad_()
            y = labels.cuda() if device == "cuda" else labels
            if device == "cuda":
                loss = loss_from_statistics(fused_statistics(x, y, spec, backend="triton",
                                                             deterministic=deterministic), spec)
            else:
                loss = dice_impls.dice_loss(x, y, spec, impl="reference")
            loss.double().sum().backward()
            results.append((loss.detach().double().cpu(), x.grad.double().cpu()))
        (loss, grad), (expected_loss, expected_grad) = results
        loss_error = float((loss - expected_loss).abs().max())
        grad_error = float((grad - expected_grad).norm() / expected_grad.norm().clamp_min(1e-30))
        tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 1e-2)
        assert loss_error <= tol and grad_error <= tol, \
            f"loss error {loss_error:.2e}, gradient {grad_error:.2e} > {tol}"
        return f"loss error {loss_error:.1e}, gradient {grad_error:.1e} (tolerance {tol})"

    specs = [DiceSpec(ignore_index=255, squared=True), DiceSpec(batch=True), DiceSpec(activation="sigmoid"),
             DiceSpec(activation="none", squared=True)]
    for shape, channels in CORRECTNESS_SHAPES:
        for index, spec in enumerate(specs):
            if channels == 1:
                spec = spec.replace(activation="sigmoid")
            for dtype in (torch.float32, torch.float64, torch.bfloat16) if index == 0 else (torch.float32,):
                for deterministic in (True, False):
                    name = f"reference {shape} C={channels} {spec} {str(dtype)[6:]} deterministic={deterministic}"
                    _check(checks, name, lambda: compare(shape, channels, spec, dtype, deterministic))


def determinism_and_sync_checks(checks: List[Dict[str, Any]]) -> None:
    from dice_impls import DiceSpec, loss_from_statistics
    from dice_impls.fused import fused_statistics, triton_kernels
    from dice_impls.fused.autograd import KernelParams

    logits = torch.randn(4, 150, 300, 301, device="cuda")
    labels = torch.randint(0, 150, (4, 300, 301), device="cuda")
    spec = DiceSpec(ignore_index=7)

    def bitwise():
        runs = [fused_statistics(logits, labels, spec, backend="triton", deterministic=True) for _ in range(3)]
        assert all(torch.equal(a, b) for run in runs[1:] for a, b in zip(run, runs[0])), "runs differ"
        return "3 runs bitwise equal"

    def launchers_without_sync():
        x, y = logits.reshape(4, 150, -1), labels.reshape(4, -1)
        params = KernelParams.from_spec(spec)
        a = torch.rand(4, 150, device="cuda", dtype=torch.float64)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for deterministic in (True, False):
                triton_kernels.triton_statistics(x, y, params, deterministic)
            triton_kernels.triton_gradient(x, y, a, a, params)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return "statistics and gradient launchers ran under set_sync_debug_mode('error')"

    def forward_backward_without_sync():
        x = logits.clone().requires_grad_()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            loss_from_statistics(fused_statistics(x, labels, spec, backend="triton"), spec).sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return "fused_statistics forward + backward ran under set_sync_debug_mode('error')"

    _check(checks, "deterministic statistics are bitwise reproducible (4x150x300x301)", bitwise)
    _check(checks, "Triton launchers do not synchronise", launchers_without_sync)
    _check(checks, "fused forward+backward (no validation) does not synchronise", forward_backward_without_sync)


def event_seconds(fn: Callable[[], object], repeat: int = 20) -> float:
    from .benchmarks.common import cuda_event_seconds

    return cuda_event_seconds(fn, repeat=repeat)


def kernel_times() -> List[Dict[str, Any]]:
    """The two kernels alone at KERNEL_SHAPE (float32 logits, int64 labels) against a device copy."""
    from dice_impls import DiceSpec
    from dice_impls.fused import triton_kernels
    from dice_impls.fused.autograd import KernelParams

    n, c, v = KERNEL_SHAPE
    x = torch.randn(n, c, v, device="cuda")
    y = torch.randint(0, c, (n, v), device="cuda")
    a = torch.rand(n, c, device="cuda", dtype=torch.float64)
    params = KernelParams.from_spec(DiceSpec())
    big = torch.empty(2**28, device="cuda")  # 1 GiB
    copy = event_seconds(lambda: big.clone())
    copy_bandwidth = 2 * big.numel() * 4 / copy
    logit_bytes, label_bytes = x.numel() * 4, y.numel() * 8
    rows = []
    for name, fn, moved in [
        ("statistics (deterministic)", lambda: triton_kernels.triton_statistics(x, y, params, True),
         logit_bytes + label_bytes),
        ("statistics (atomics)", lambda: triton_kernels.triton_statistics(x, y, params, False),
         logit_bytes + label_bytes),
        ("gradient", lambda: triton_kernels.triton_gradient(x, y, a, a, params), 2 * logit_bytes + label_bytes),
    ]:
        seconds = event_seconds(fn)
        rows.append(dict(kernel=name, shape="16x4x512x512", dtype="float32", seconds=seconds, bytes=moved,
                         bandwidth=moved / seconds, copy_bandwidth=copy_bandwidth,
                         fraction_of_copy=moved / seconds / copy_bandwidth))
        print(f"gpu_check: {name}: {seconds * 1e6:.1f} us, {moved / seconds / 1e9:.0f} GB/s "
              f"({moved / seconds / copy_bandwidth:.0%} of copy)", flush=True)
    return rows


def benchmark_grid(deadline: float, skipped: List[Dict[str, str]]) -> List[Dict[str, Any]]:
    """bench_cuda.CudaLoss over its parameter grid, fused and MONAI first, until ``deadline``."""
    from .benchmarks.bench_cuda import CudaLoss

    losses, dtypes, shapes = CudaLoss.params
    order = sorted(losses, key=lambda name: (name not in ("fused", "monai"), name == "vectorized_compiled"))
    rows = []
    for loss in order:
        for dtype in dtypes:
            for shape in shapes:
                if time.monotonic() > deadline:
                    skipped.append(dict(loss=loss, dtype=dtype, shape=shape, why="time budget spent"))
                    continue
                case = CudaLoss()
                try:
                    case.setup(loss, dtype, shape)
                except NotImplementedError as why:
                    skipped.append(dict(loss=loss, dtype=dtype, shape=shape, why=str(why)))
                    continue
                row = dict(loss=loss, dtype=dtype, shape=shape,
                           forward_ms=1e3 * event_seconds(case.forward),
                           forward_backward_ms=1e3 * case.track_seconds_forward_backward(),
                           peak_mib=case.track_max_memory_allocated_forward_backward() / 2**20)
                rows.append(row)
                print(f"gpu_check: {loss} {dtype} {shape}: forward {row['forward_ms']:.3f} ms, forward+backward "
                      f"{row['forward_backward_ms']:.3f} ms, peak {row['peak_mib']:.0f} MiB", flush=True)
                del case
                torch.cuda.empty_cache()
    return rows


def environment() -> Dict[str, Any]:
    import triton

    props = torch.cuda.get_device_properties(0)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return dict(device=props.name, capability=f"sm_{props.major}{props.minor}", memory_gib=props.total_memory / 2**30,
                sms=props.multi_processor_count, torch=torch.__version__, cuda=torch.version.cuda,
                triton=triton.__version__, commit=commit, date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/gpu", help="folder for summary.json and bench_cuda.csv")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds after which no new benchmark combination starts")
    args = parser.parse_args(argv)
    why = cuda_unavailable()
    if why:
        print(f"gpu_check: cannot run: {why}", file=sys.stderr)
        return 2
    os.environ.pop("TRITON_INTERPRET", None)
    deadline = time.monotonic() + args.budget
    checks: List[Dict[str, Any]] = []
    skipped: List[Dict[str, str]] = []
    summary: Dict[str, Any] = dict(environment=environment())
    correctness_checks(checks)
    determinism_and_sync_checks(checks)
    summary["kernels"] = kernel_times()
    rows = benchmark_grid(deadline, skipped)
    summary.update(checks=checks, benchmarks=rows, skipped=skipped, passed=all(c["passed"] for c in checks))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v))
        f.write("\n")
    with open(os.path.join(args.out, "bench_cuda.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    failed = [c["name"] for c in checks if not c["passed"]]
    print(f"gpu_check: {len(checks) - len(failed)}/{len(checks)} checks passed, {len(rows)} benchmarks, "
          f"{len(skipped)} skipped; wrote {args.out}/summary.json and bench_cuda.csv")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
