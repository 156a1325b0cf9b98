"""Issue 3's targets for ``fused`` on this machine's CPU, measured side by side.

- Speed: forward+backward in float32 with 2 threads against MONAI ``DiceLoss(softmax=True,
  to_onehot_y=True)`` (our ``"monai"`` preset), medians of interleaved repetitions, at
  (16, 4, 512, 512), (2, 32, 256, 256) and (2, 4, 128, 128, 128); target >= 3x. The CPU
  alternatives of ``fused`` (C++ kernel, chunked torch, ``torch.compile`` of the same torch
  formulation) are timed in the same rounds.
- The floor: logits and labels read twice, the gradient written once, over the measured read
  bandwidth; exps (one per logit per pass) over the measured ``torch.exp`` rate.
- Peak memory above the inputs for one forward+backward, in a fresh subprocess per loss:
  the growth of the peak resident set (VmHWM, reset through /proc/self/clear_refs) after the
  inputs exist and every library is loaded; target <= 1.25x the logits' size.
- Accuracy at 2^27 voxels (one image of 2 x 8192 x 16384): the loss in float32, bfloat16, float16 and
  the float32 gradient's norm against float64 sums computed slice by slice; targets 1e-5
  (float32) and 1e-3 (half dtypes).

Usage: ``python -m benchmarks.targets [--quick] [--out results/targets_cpu.json]``; ``--quick``
shrinks every size for a smoke run (its numbers are not the targets').
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict

import torch
from tqdm import tqdm

from benchmarks.common import LOSSES, SPEC, make_inputs, parse_shape, peak_rss_increase, pin_threads
from dice_impls import DiceStatistics, loss_from_statistics
from dice_impls.fused import Backend, cpu, fused_statistics
from dice_impls.reference import reference_statistics

THREADS = 2
SHAPES = ["16x4x512x512", "2x32x256x256", "2x4x128x128x128"]
QUICK_SHAPES = ["2x4x128x128", "1x32x64x64", "1x4x32x32x32"]
ACCURACY_SHAPE = (1, 2, 8192, 16384)  # 2^27 voxels
QUICK_ACCURACY_SHAPE = (1, 2, 512, 1024)
TIME_TARGET, MEMORY_TARGET = 3.0, 1.25
ACCURACY_TARGETS = {torch.float32: 1e-5, torch.bfloat16: 1e-3, torch.float16: 1e-3}


def _compiled_backend() -> Backend:
    """``torch.compile`` (inductor CPU code) of the plain torch formulation, over all voxels."""
    statistics_fn = torch.compile(cpu.slice_statistics, dynamic=False)
    gradient_fn = torch.compile(cpu.slice_gradient, dynamic=False)
    return Backend(lambda x, y, params, deterministic: statistics_fn(x, y, params),
                   lambda x, y, a, b, params: gradient_fn(x, y, a, b, params).to(x.dtype))


def fused_loss(backend) -> Callable:
    return lambda logits, labels: loss_from_statistics(fused_statistics(logits, labels, SPEC, backend=backend), SPEC)


def candidates() -> Dict[str, Callable]:
    return {
        "monai": LOSSES["monai"],
        "fused": LOSSES["fused"],  # the registered implementation: the C++ kernel on CPU
        "fused_chunked": fused_loss("chunked"),
        "fused_compiled": fused_loss(_compiled_backend()),
    }


def forward_backward(loss_fn: Callable, logits, labels) -> Callable[[], None]:
    def run():
        x = logits.detach().requires_grad_()
        loss_fn(x, labels).backward()
    return run


def interleaved_medians(runs: Dict[str, Callable[[], None]], repeats: int) -> Dict[str, float]:
    """Median seconds of each run, the runs taking turns so machine load hits them alike."""
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def machine_rates(repeats: int, threads: int) -> Dict[str, float]:
    """Read and copy bandwidth (bytes/s) on 256 MiB with ``threads``; torch.exp (elements/s) on
    a cache-resident 1 MiB tensor with one thread, times ``threads`` (on a loaded machine a
    2-thread call on 1 MiB measures OpenMP wake-ups, not exp)."""
    big = torch.randn(1 << 26)
    out = torch.empty_like(big)
    out.copy_(big)  # first touch outside the timing
    small = torch.randn(1 << 18)
    small_out = torch.empty_like(small)
    loops = 16

    def exp_one_thread():
        torch.set_num_threads(1)
        for _ in range(loops):
            torch.exp(small, out=small_out)
        torch.set_num_threads(threads)

    medians = interleaved_medians({
        "read": lambda: big.sum(),
        "copy": lambda: out.copy_(big),
        "exp": exp_one_thread,
    }, repeats)
    nbytes = big.numel() * 4
    return {
        "read_bytes_per_s": nbytes / medians["read"],
        "copy_bytes_per_s": 2 * nbytes / medians["copy"],
        "exp_per_s": threads * small.numel() * loops / medians["exp"],
    }


def floor_seconds(shape: str, rates: Dict[str, float]) -> Dict[str, float]:
    n, c, *spatial = parse_shape(shape)
    pixels = n * int(torch.tensor(spatial).prod())
    logits_bytes, label_bytes = pixels * c * 4, pixels * 8  # float32 logits, int64 labels
    moved = 2 * (logits_bytes + label_bytes) + logits_bytes  # read twice, gradient written once
    memory = moved / rates["read_bytes_per_s"]
    exps = 2 * pixels * c / rates["exp_per_s"]  # softmax recomputed in the gradient pass
    return {"memory_s": memory, "exp_s": exps, "floor_s": max(memory, exps)}


def peak_memory_bytes(name: str, shape: str, threads: int) -> int:
    """Peak RSS growth of one forward+backward of ``name`` in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.targets", "--memory-probe", name, shape, "--threads", str(threads)],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent,
    )
    return int(result.stdout.strip().splitlines()[-1])


def memory_probe(name: str, shape: str) -> None:
    loss_fn = candidates()[name]
    logits, labels = make_inputs(shape, "float32")
    x = logits.requires_grad_()
    loss_fn(x, labels).backward()  # warm-up: loads libraries, builds and compiles for this shape
    x.grad = None
    print(peak_rss_increase(lambda: loss_fn(x, labels).backward()))


def accuracy(shape, progress) -> list:
    """Loss (every dtype) and float32 gradient-norm errors of ``fused`` against float64 sums."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(shape, generator=gen)
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen)
    slices = [slice(i, i + 512) for i in range(0, shape[2], 512)]
    rows = []
    for dtype, target in ACCURACY_TARGETS.items():
        logits = base.to(dtype)
        x = logits.requires_grad_()
        loss = loss_from_statistics(fused_statistics(x, labels, SPEC), SPEC)
        loss.backward()
        # The float64 statistics, slice by slice (they are sums over voxels), then the loss.
        parts = [reference_statistics(logits[:, :, part].detach(), labels[:, part], SPEC) for part in slices]
        stats = DiceStatistics(*(torch.stack(s).sum(0).requires_grad_() for s in zip(*parts)))
        expected = loss_from_statistics(stats, SPEC)
        row = {"dtype": str(dtype).replace("torch.", ""), "voxels": base[:, 0].numel(),
               "loss": loss.item(), "reference": expected.item(),
               "loss_error": abs(loss.item() - expected.item()) / abs(expected.item()), "target": target}
        if dtype == torch.float32:
            # dL/dlogits = sum over statistics of dL/dstat * dstat/dlogits, slice by slice.
            grad_stats = torch.autograd.grad(expected, [stats.intersection, stats.pred_sum])
            diff2 = ref2 = 0.0
            for part in slices:
                x64 = logits[:, :, part].detach().double().requires_grad_()
                s = reference_statistics(x64, labels[:, part], SPEC)
                (g,) = torch.autograd.grad([s.intersection, s.pred_sum], x64, grad_stats)
                diff2 += float((x.grad[:, :, part].double() - g).pow(2).sum())
                ref2 += float(g.pow(2).sum())
            row["grad_norm_error"] = (diff2 / ref2) ** 0.5
        row["met"] = row["loss_error"] <= target and row.get("grad_norm_error", 0.0) <= target
        rows.append(row)
        progress.update()
        del x, logits, loss
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions (smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 7, quick 2)")
    parser.add_argument("--shapes", nargs="+", help=f"speed/memory shapes (default {' '.join(SHAPES)})")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the 2^27-voxel accuracy check")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads (the target: 2)")
    parser.add_argument("--out", default="results/fused/targets_cpu.json", help="JSON file for the results")
    parser.add_argument("--memory-probe", nargs=2, metavar=("NAME", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        pin_threads(args.threads)
        memory_probe(*args.memory_probe)
        return 0
    pin_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 7)
    shapes = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)
    losses = candidates()
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                           "torch": torch.__version__}, "speed": [], "memory": [], "accuracy": []}
    steps = len(shapes) * (1 + len(losses)) + 1 + (0 if args.no_accuracy else len(ACCURACY_TARGETS))
    with tqdm(total=steps, desc="targets", file=sys.stderr) as progress:
        rates = machine_rates(repeats, args.threads)
        results["machine"].update(rates)
        progress.update()
        for shape in shapes:
            logits, labels = make_inputs(shape, "float32")
            runs = {name: forward_backward(fn, logits, labels) for name, fn in losses.items()}
            for run in runs.values():  # warm-up: builds, compiles, first-touch
                run()
            medians = interleaved_medians(runs, repeats)
            floor = floor_seconds(shape, rates)
            for name, seconds in medians.items():
                results["speed"].append({
                    "shape": shape, "impl": name, "seconds": seconds, "vs_monai": medians["monai"] / seconds,
                    "floor_ratio": seconds / floor["floor_s"], **floor,
                })
            progress.update()
            logits_bytes = logits.numel() * 4
            for name in losses:
                peak = peak_memory_bytes(name, shape, args.threads)
                results["memory"].append({"shape": shape, "impl": name, "peak_above_inputs": peak,
                                          "x_logits": peak / logits_bytes})
                progress.update()
        if not args.no_accuracy:
            results["accuracy"] = accuracy(QUICK_ACCURACY_SHAPE if args.quick else ACCURACY_SHAPE, progress)
    report(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")
    return 0


def report(results: dict) -> None:
    m = results["machine"]
    print(f"\nmachine: read {m['read_bytes_per_s'] / 1e9:.1f} GB/s, copy {m['copy_bytes_per_s'] / 1e9:.1f} GB/s, "
          f"exp {m['exp_per_s'] / 1e9:.2f} G/s ({m['threads']} threads)")
    print(f"\n{'shape':<18}{'impl':<16}{'ms':>9}{'x MONAI':>9}{'x floor':>9}{'peak/logits':>13}")
    peaks = {(r["shape"], r["impl"]): r["x_logits"] for r in results["memory"]}
    for r in results["speed"]:
        print(f"{r['shape']:<18}{r['impl']:<16}{r['seconds'] * 1e3:>9.1f}{r['vs_monai']:>9.2f}"
              f"{r['floor_ratio']:>9.1f}{peaks[r['shape'], r['impl']]:>13.2f}")
    print(f"\n{'dtype':<10}{'voxels':>12}{'loss err':>11}{'grad err':>11}  met (target)")
    for r in results["accuracy"]:
        grad = f"{r['grad_norm_error']:.1e}" if "grad_norm_error" in r else "-"
        print(f"{r['dtype']:<10}{r['voxels']:>12}{r['loss_error']:>11.1e}{grad:>11}  {r['met']} ({r['target']:g})")
    fused = [r for r in results["speed"] if r["impl"] == "fused"]
    print("\nspeed target (>= 3x MONAI):", all(r["vs_monai"] >= TIME_TARGET for r in fused))
    print("memory target (<= 1.25x logits):",
          all(r["x_logits"] <= MEMORY_TARGET for r in results["memory"] if r["impl"] == "fused"))


if __name__ == "__main__":
    sys.exit(main())
