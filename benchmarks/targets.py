"""The CPU targets of ``fused``, measured side by side (docs/performance.md gives the numbers).

- Speed: forward+backward in float32 with 2 threads, medians of interleaved rounds (every
  candidate runs once per round), against MONAI ``DiceLoss(softmax=True, to_onehot_y=True)``
  (our ``"monai"`` preset) and ``DiceCELoss(softmax=True, to_onehot_y=True)``; targets: fused
  Dice >= 3x at 4x4x128x128 and >= 8x at 16x4x512x512 and 2x4x128x128x128, within 1.5x of the
  bandwidth floor at the two large sizes; fused Dice+CE >= 5x MONAI's at the large sizes and
  <= 1.3x the time of fused Dice alone.
- The floor: logits and labels read twice, the gradient written once, at the read bandwidth
  (2 threads, a sum over 256 MiB) measured in the same interleaved rounds as the losses, so that
  the floor sees the machine's state that the losses see (its bandwidth varies by 2x over
  minutes on a shared host).
- Cold and steady state (fresh subprocess per loss and shape): the first forward+backward after
  the inputs exist, then the median of the next ones, with the gradient pool on and off.
- Peak memory above the inputs for one forward+backward after a warm-up (pool off: the gradient
  counts; pool on: the pooled gradient is resident before the call); target <= 1.1x the logits.
- Per-call overhead at 4x4x128x128: the two C++ kernels alone against the whole call (folded,
  unvalidated, and unfolded: statistics + ``loss_from_statistics``), one thread, CPU time.
- Instruction sets: fused forward+backward with the baseline, AVX2 and AVX-512 kernels
  (``DICE_FUSED_ISA``), alternating subprocess rounds, one thread, CPU time.
- torch.compile(fullgraph=True) of a small conv net + fused loss against eager: no graph break,
  the same loss and gradients (1e-6), time per training step.
- Drop-ins (``compat``) at 2x3x64x64 and 4x5x96x128: each against the direct
  ``dice_loss(impl="fused")`` of the spec it builds (target <= 1.2x) and beside its peer (MONAI
  ``DiceLoss``/``TverskyLoss``: >= 1.5x and >= 3x faster); for the Dice drop-ins also the bare
  folded operator beside the peer, the most any front end over it could reach.
- Accuracy at 2^27 voxels: the loss in float32, bfloat16, float16 and the float32 gradient's
  norm against float64 sums computed slice by slice; targets 1e-5 (float32), 1e-3 (half).

Usage: ``python -m benchmarks.targets [--quick] [--skip accuracy isa ...]``; ``--quick`` shrinks
every size for a smoke run (its numbers are not the targets').
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
from tqdm import tqdm

from benchmarks.benchmarks.common import (COMPOUND_LOSSES, LOSSES, SPEC, cpu_model, make_inputs, parse_shape, peak_rss_increase,
                               pin_threads)
from dice_impls import DiceStatistics, dice_loss, loss_from_statistics
from dice_impls.fused import KernelParams, fused_statistics, ops
from dice_impls.fused.interface import folded_op_args
from dice_impls.reference import reference_statistics

THREADS = 2
SHAPES = ["4x4x128x128", "16x4x512x512", "2x4x128x128x128"]
QUICK_SHAPES = ["2x4x64x64", "1x4x256x256"]
LARGE = {"16x4x512x512", "2x4x128x128x128", "1x4x256x256"}
SPEED_TARGETS = {"4x4x128x128": 3.0, "16x4x512x512": 8.0, "2x4x128x128x128": 8.0}
FLOOR_TARGET, CE_SPEED_TARGET, CE_OVER_DICE_TARGET, MEMORY_TARGET = 1.5, 5.0, 1.3, 1.1
ACCURACY_SHAPE = (1, 2, 8192, 16384)  # 2^27 voxels
QUICK_ACCURACY_SHAPE = (1, 2, 512, 1024)
ACCURACY_TARGETS = {torch.float32: 1e-5, torch.bfloat16: 1e-3, torch.float16: 1e-3}
ISAS = ("baseline", "avx2", "avx512")
PARTS = ("speed", "states", "memory", "overhead", "fixed_cost", "drop_ins", "isa", "compile", "accuracy")
FIXED_COST_SHAPE = "1x4x4x4"  # small enough that the call's fixed cost is all there is
ROOT = Path(__file__).resolve().parent.parent


def _fused_chunked(logits, labels):
    return loss_from_statistics(fused_statistics(logits, labels, SPEC, backend="chunked"), SPEC)


def _fused_cpp_unfolded(logits, labels):
    """The C++ statistics operator + loss_from_statistics (what ``fused`` did before the fold)."""
    return loss_from_statistics(fused_statistics(logits, labels, SPEC, backend="cpp"), SPEC)


def candidates() -> Dict[str, Callable]:
    return {
        "monai": LOSSES["monai"],
        "fused": LOSSES["fused"],  # the registered implementation: the folded C++ operator on CPU
        "fused_chunked": _fused_chunked,
        "monai_dice_ce": COMPOUND_LOSSES["monai"],
        "fused_dice_ce": COMPOUND_LOSSES["fused"],
    }


def forward_backward(loss_fn: Callable, logits, labels) -> Callable[[], None]:
    def run():
        x = logits.detach().requires_grad_()
        loss_fn(x, labels).backward()
    return run


def interleaved(runs: Dict[str, Callable[[], None]], repeats: int, clock=time.perf_counter,
                cpu_times: Optional[Dict[str, list]] = None) -> Dict[str, list]:
    """Seconds of each run per round, the runs taking turns so machine load hits them alike
    (``clock=time.thread_time``: CPU seconds of this thread, for single-thread runs on a busy
    machine). ``cpu_times``, when given, also collects the process's CPU seconds per run (all its
    threads, OpenMP's spin-waits included)."""
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start, cpu = clock(), time.process_time()
            run()
            times[name].append(clock() - start)
            if cpu_times is not None:
                cpu_times.setdefault(name, []).append(time.process_time() - cpu)
    return times


def spread(values: list) -> dict:
    ordered = sorted(values)
    return {"median_s": statistics.median(values), "min_s": ordered[0], "max_s": ordered[-1],
            "q1_s": ordered[len(ordered) // 4], "q3_s": ordered[(3 * len(ordered)) // 4]}


READ_PROBE = 1 << 26  # float32 elements (256 MiB) the read bandwidth is measured on


def machine_rates(repeats: int) -> Dict[str, float]:
    """Read and copy bandwidth (bytes/s) on 256 MiB with the pinned threads."""
    big = torch.randn(READ_PROBE)
    out = torch.empty_like(big)
    out.copy_(big)  # first touch outside the timing
    times = interleaved({"read": lambda: big.sum(), "copy": lambda: out.copy_(big)}, repeats)
    nbytes = big.numel() * 4
    return {"read_bytes_per_s": nbytes / statistics.median(times["read"]),
            "copy_bytes_per_s": 2 * nbytes / statistics.median(times["copy"])}


def floor_seconds(shape: str, read_bytes_per_s: float) -> float:
    n, c, *spatial = parse_shape(shape)
    pixels = n * int(torch.tensor(spatial).prod())
    logits_bytes, label_bytes = pixels * c * 4, pixels * 8  # float32 logits, int64 labels
    return (2 * (logits_bytes + label_bytes) + logits_bytes) / read_bytes_per_s


def _subprocess(*args, env=None) -> dict:
    result = subprocess.run([sys.executable, "-m", "benchmarks.targets", *args], capture_output=True, text=True,
                            check=True, cwd=ROOT, env=dict(os.environ, **(env or {})))
    return json.loads(result.stdout.strip().splitlines()[-1])


def probe(name: str, shape: str, rounds: int) -> dict:
    """In this (fresh) process: the first call, the steady median, and the peak of one more call."""
    loss_fn = candidates()[name]
    logits, labels = make_inputs(shape, "float32")
    run = forward_backward(loss_fn, logits, labels)
    start = time.perf_counter()
    run()  # cold: fresh gradient memory, first use of every library
    cold = time.perf_counter() - start
    steady = interleaved({"run": run}, rounds)["run"]
    peak = peak_rss_increase(run)
    return {"cold_s": cold, "steady": spread(steady), "peak_above_inputs": peak,
            "x_logits": peak / (logits.numel() * 4)}


def isa_probe(shape: str, rounds: int) -> dict:
    """fused forward+backward with one thread, in CPU seconds of that thread (the kernels' own
    cost, insensitive to other processes on the machine)."""
    pin_threads(1)
    logits, labels = make_inputs(shape, "float32")
    run = forward_backward(LOSSES["fused"], logits, labels)
    run()
    return {"isa": ops.isa(), **spread(interleaved({"run": run}, rounds, time.thread_time)["run"])}


def overhead(shape: str, repeats: int) -> dict:
    """The whole call against its two kernels alone (the difference is the per-call overhead),
    one thread, CPU seconds of that thread."""
    logits, labels = make_inputs(shape, "float32")
    n, c = logits.shape[:2]
    x, y = logits.reshape(n, c, -1), labels.reshape(n, -1)
    a = torch.randn(n, c, dtype=torch.float64)
    unvalidated = folded_op_args(SPEC, validate=False)
    kernels = {
        # x.sum() forward and backward: what any loss with one autograd node pays for the engine
        "autograd_floor": forward_backward(lambda t, labels: t.sum(), logits, labels),
        "statistics_kernel": lambda: torch.ops.dice_fused.statistics(x, y, *KernelParams.from_spec(SPEC), True,
                                                                     True),
        "gradient_kernel": lambda: torch.ops.dice_fused.gradient(x, y, a, a, *KernelParams.from_spec(SPEC)),
        "fused_call": forward_backward(LOSSES["fused"], logits, labels),
        "fused_call_unvalidated": forward_backward(
            lambda t, labels: torch.ops.dice_fused.eager_loss(t, labels, *unvalidated),
            logits, labels),
        "dice_loss_fused": forward_backward(lambda t, labels: dice_loss(t, labels, SPEC, impl="fused"), logits, labels),
        "drop_in_monai_dice": forward_backward(_drop_in_monai_dice(), logits, labels.unsqueeze(1)),
        "monai": forward_backward(LOSSES["monai"], logits, labels),
        "fused_unfolded": forward_backward(_fused_cpp_unfolded, logits, labels),
    }
    pin_threads(1)
    for run in kernels.values():
        run()
    try:
        return {name: spread(values) for name, values in interleaved(kernels, repeats, time.thread_time).items()}
    finally:
        pin_threads(THREADS)


def _drop_in_monai_dice() -> Callable:
    """``compat.monai.DiceLoss`` as MONAI is called: labels ``(N, 1, *spatial)``, made by the caller."""
    from dice_impls.compat.monai import DiceLoss

    return DiceLoss(softmax=True, to_onehot_y=True)  # = SPEC, the "monai" preset


# The drop-ins against their peer and against the direct call of the spec they build, at the sizes
# the targets name: a small 2-D batch and a mid-size one with five classes.
DROP_IN_SHAPES = ["2x3x64x64", "4x5x96x128"]
QUICK_DROP_IN_SHAPES = ["2x3x32x32"]
DROP_IN_TARGETS = {"vs_direct": 1.2, "vs_peer": {"2x3x64x64": 1.5, "4x5x96x128": 3.0}}
DROP_INS = {  # name: (the drop-in class, its peer's class)
    "monai.DiceLoss": ("dice_impls.compat.monai.DiceLoss", "monai.losses.DiceLoss"),
    "monai.TverskyLoss": ("dice_impls.compat.monai.TverskyLoss", "monai.losses.TverskyLoss"),
    "monai.GeneralizedDiceLoss": ("dice_impls.compat.monai.GeneralizedDiceLoss", "monai.losses.GeneralizedDiceLoss"),
    "monai.DiceCELoss": ("dice_impls.compat.monai.DiceCELoss", "monai.losses.DiceCELoss"),
    "nnunet.MemoryEfficientSoftDiceLoss": ("dice_impls.compat.nnunet.MemoryEfficientSoftDiceLoss",
                                           "nnunetv2.training.loss.dice.MemoryEfficientSoftDiceLoss"),
    "smp.DiceLoss": ("dice_impls.compat.smp.DiceLoss", "segmentation_models_pytorch.losses.DiceLoss"),
}


def _class(path: str):
    import importlib

    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _arguments(library: str) -> dict:
    """The arguments both sides get: softmax over one-hot labels, one Dice per image and class."""
    if library == "monai":
        return dict(softmax=True, to_onehot_y=True)
    if library == "nnunet":
        from nnunetv2.utilities.helpers import softmax_helper_dim1  # the softmax nnU-Net's trainers pass

        return dict(apply_nonlin=softmax_helper_dim1, batch_dice=False, do_bg=True, smooth=1e-5, ddp=False)
    return dict(mode="multiclass")


def _drop_in_calls(name: str, channels: int) -> Dict[str, Tuple[Callable, bool]]:
    """``(logits, labels) -> loss`` for the drop-in, the direct call of the spec it builds for
    ``channels`` classes (built once, as the drop-in caches it; the compound ``DiceCELoss`` for
    Dice+CE), the bare folded operator of that spec (Dice drop-ins), and its peer where that is
    installed; each with whether it takes the label map as ``(N, 1, *spatial)`` (MONAI, nnU-Net)
    rather than ``(N, *spatial)``."""
    from dice_impls import DiceCELoss

    drop_in_path, peer_path = DROP_INS[name]
    library = name.split(".")[0]
    drop_in = _class(drop_in_path)(**_arguments(library))
    channel_axis = library != "smp"
    calls = {"drop_in": (drop_in, channel_axis)}
    if name == "monai.DiceCELoss":
        calls["direct"] = (DiceCELoss(impl="fused", spec=drop_in.dice.spec_for(channels)), False)
    else:
        spec = drop_in.spec if library == "nnunet" else drop_in.spec_for(channels)
        calls["direct"] = (lambda x, y: dice_loss(x, y, spec, impl="fused"), False)
        # The folded operator the direct call reaches, its arguments built, labels as the drop-in
        # gets them: what a front end with no Python cost at all would take.
        args = folded_op_args(spec)
        calls["operator"] = (lambda x, y: torch.ops.dice_fused.eager_loss(x, y, *args), channel_axis)
    try:
        calls["peer"] = (_class(peer_path)(**_arguments(library)), channel_axis)
    except ImportError:
        pass  # not installed: the drop-in is measured against the direct call only
    return calls


def drop_ins(shapes, repeats: int) -> list:
    """Each drop-in, its direct call and its peer in interleaved rounds, forward+backward, float32."""
    rows = []
    for shape in shapes:
        logits, labels = make_inputs(shape, "float32")
        # Each call gets the label map in its library's layout, made once as a data loader gives it:
        # a reshape inside the timed call (a fresh view, ~5 us) is no part of the loss.
        label_maps = {False: labels, True: labels.unsqueeze(1)}
        for name in DROP_INS:
            calls = _drop_in_calls(name, logits.shape[1])
            runs = {kind: forward_backward(fn, logits, label_maps[channel_axis])
                    for kind, (fn, channel_axis) in calls.items()}
            for run in runs.values():
                run()
            # Separate interleaved sets, so that the peer's large temporaries (a one-hot target, stored
            # probabilities) never sit between the drop-in and the direct call it is compared with,
            # and the drop-in and the bare operator each meet the cache the peer leaves.
            medians = {kind: statistics.median(v) for kind, v in interleaved(
                {kind: runs[kind] for kind in ("drop_in", "direct")}, repeats).items()}
            ratios = {"vs_direct": medians["drop_in"] / medians["direct"], "vs_peer": None, "operator_vs_peer": None}
            if "peer" in runs:
                against_peer = interleaved({kind: runs[kind] for kind in ("drop_in", "peer")}, repeats)
                medians["peer"] = statistics.median(against_peer["peer"])
                medians["drop_in_beside_peer"] = statistics.median(against_peer["drop_in"])
                ratios["vs_peer"] = medians["peer"] / medians["drop_in_beside_peer"]
            if "peer" in runs and "operator" in runs:  # in a third set, beside the peer as the drop-in is
                operator_set = {kind: statistics.median(t) for kind, t in interleaved(
                    {kind: runs[kind] for kind in ("operator", "peer")}, repeats).items()}
                medians["operator_beside_peer"] = operator_set["operator"]
                ratios["operator_vs_peer"] = operator_set["peer"] / operator_set["operator"]
            rows.append({"shape": shape, "drop_in": name, **{f"{kind}_s": t for kind, t in medians.items()}, **ratios})
    return rows


class SmallNet(torch.nn.Module):
    def __init__(self, channels: int = 4):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, channels, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))


def compile_check(repeats: int, size: int) -> dict:
    import torch._dynamo

    torch.manual_seed(0)
    net = SmallNet()
    images, labels = torch.randn(4, 1, size, size), torch.randint(0, 4, (4, size, size))

    def forward(images, labels):
        return LOSSES["fused"](net(images), labels)

    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = torch.compile(forward, fullgraph=True)

    def step(fn):
        def run():
            net.zero_grad(set_to_none=True)
            fn(images, labels).backward()
        return run

    results = {}
    for name, fn in (("eager", forward), ("compiled", compiled)):
        loss = fn(images, labels)
        grads = torch.autograd.grad(loss, list(net.parameters()))
        results[name] = (loss.detach(), grads)
    loss_diff = float((results["eager"][0] - results["compiled"][0]).abs())
    grad_diff = max(float((a - b).abs().max()) for a, b in zip(results["eager"][1], results["compiled"][1]))
    times = interleaved({"eager": step(forward), "compiled": step(compiled)}, repeats)
    return {"shape": f"4x1x{size}x{size} -> conv -> 4 classes", "graph_breaks": sum(counters["graph_break"].values()),
            "unique_graphs": counters["stats"]["unique_graphs"], "loss_diff": loss_diff, "grad_diff": grad_diff,
            "eager": spread(times["eager"]), "compiled": spread(times["compiled"])}


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
        loss = LOSSES["fused"](x, labels)
        loss.backward()
        # The float64 statistics, slice by slice (they are sums over voxels), then the loss.
        parts = [reference_statistics(logits[:, :, part].detach(), labels[:, part], SPEC) for part in slices]
        stats = DiceStatistics(*(torch.stack(s).sum(0).requires_grad_() for s in zip(*parts)))
        expected = loss_from_statistics(stats, SPEC)
        row = {"dtype": str(dtype).replace("torch.", ""), "voxels": base[:, 0].numel(),
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


def load_average() -> list:
    return list(os.getloadavg())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions (smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 9, quick 2)")
    parser.add_argument("--shapes", nargs="+", help=f"shapes (default {' '.join(SHAPES)})")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS, help="parts to leave out")
    parser.add_argument("--out", default="results/fused/targets_cpu.json", help="JSON file for the results")
    parser.add_argument("--probe", nargs=3, metavar=("NAME", "SHAPE", "ROUNDS"), help=argparse.SUPPRESS)
    parser.add_argument("--isa-probe", nargs=2, metavar=("SHAPE", "ROUNDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    pin_threads(THREADS)
    if args.probe:
        print(json.dumps(probe(args.probe[0], args.probe[1], int(args.probe[2]))))
        return 0
    if args.isa_probe:
        print(json.dumps(isa_probe(args.isa_probe[0], int(args.isa_probe[1]))))
        return 0
    repeats = args.repeats or (2 if args.quick else 9)
    shapes = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)
    parts = [part for part in PARTS if part not in args.skip]
    losses = candidates()
    results = {"machine": {"cpu": cpu_model(), "threads": THREADS,
                           "torch": torch.__version__, "isa": ops.isa(), "load_before": load_average()}}
    with tqdm(total=len(parts) * len(shapes), desc="targets", file=sys.stderr) as progress:
        results["machine"].update(machine_rates(repeats))
        if "speed" in parts:
            results["speed"] = []
            bandwidth_probe = torch.randn(READ_PROBE)
            for shape in shapes:
                logits, labels = make_inputs(shape, "float32")
                runs = {name: forward_backward(fn, logits, labels) for name, fn in losses.items()}
                # The bandwidth of the floor, in the same rounds. Its 256 MiB leave every cache cold, so
                # it runs right before fused_chunked, which no target reads, not before MONAI or fused.
                order = list(runs)
                order.insert(order.index("fused_chunked"), "read_probe")
                runs["read_probe"] = bandwidth_probe.sum
                runs = {name: runs[name] for name in order}
                for run in runs.values():  # warm-up: first touch, libraries, the gradient pool
                    run()
                cpu_times: Dict[str, list] = {}
                times = interleaved(runs, repeats, cpu_times=cpu_times)
                read_rate = bandwidth_probe.numel() * 4 / statistics.median(times.pop("read_probe"))
                medians = {name: statistics.median(values) for name, values in times.items()}
                floor = floor_seconds(shape, read_rate)
                for name, values in times.items():
                    results["speed"].append({
                        "shape": shape, "impl": name, "seconds": medians[name], **spread(values),
                        "cpu_median_s": statistics.median(cpu_times[name]), "floor_s": floor,
                        "read_bytes_per_s": read_rate,
                        "floor_ratio": medians[name] / floor,
                        "vs_monai": medians["monai"] / medians[name],
                        "vs_monai_dice_ce": medians["monai_dice_ce"] / medians[name],
                        "vs_fused": medians[name] / medians["fused"],
                    })
                progress.update(len(shapes) and 1)
        if "states" in parts or "memory" in parts:
            results["states"] = []
            for shape in shapes:
                for name in ("fused", "fused_dice_ce", "monai", "monai_dice_ce"):
                    for pool in ("1", "0") if name.startswith("fused") else ("1",):
                        row = _subprocess("--probe", name, shape, str(max(3, repeats // 2)),
                                          env={"DICE_FUSED_POOL": pool})
                        results["states"].append({"shape": shape, "impl": name, "pool": pool == "1", **row})
                progress.update(2)
            # Peak memory as the report reads it: pool off, so the returned gradient counts.
            results["memory"] = [{"shape": r["shape"], "impl": r["impl"], "peak_above_inputs": r["peak_above_inputs"],
                                  "x_logits": r["x_logits"]} for r in results["states"] if not r["pool"] or
                                 not r["impl"].startswith("fused")]
        if "overhead" in parts:
            results["overhead"] = {"shape": shapes[0], **overhead(shapes[0], 20 * repeats)}
            progress.update(len(shapes))
        if "fixed_cost" in parts:
            results["fixed_cost"] = {"shape": FIXED_COST_SHAPE, **overhead(FIXED_COST_SHAPE, 200 * repeats)}
            progress.update(len(shapes))
        if "drop_ins" in parts:
            results["drop_ins"] = drop_ins(QUICK_DROP_IN_SHAPES if args.quick else DROP_IN_SHAPES, 3 * repeats)
            progress.update(len(shapes))
        if "isa" in parts:
            results["isa"] = []
            for shape in (shapes[0], shapes[1 if len(shapes) > 1 else 0]):
                rounds = {isa: [] for isa in ISAS}
                for _ in range(3):
                    for isa in ISAS:
                        rounds[isa].append(_subprocess("--isa-probe", shape, str(max(3, repeats // 2)),
                                                       env={"DICE_FUSED_ISA": isa}))
                for isa, rows in rounds.items():
                    results["isa"].append({"shape": shape, "requested": isa, "ran": rows[0]["isa"],
                                           "median_s": statistics.median(r["median_s"] for r in rows),
                                           "runs_s": [r["median_s"] for r in rows]})
            progress.update(len(shapes))
        if "compile" in parts:
            results["compile"] = compile_check(max(5, repeats), 32 if args.quick else 64)
            progress.update(len(shapes))
        if "accuracy" in parts:
            results["accuracy"] = accuracy(QUICK_ACCURACY_SHAPE if args.quick else ACCURACY_SHAPE, progress)
    results["machine"]["load_after"] = load_average()
    report(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")
    return 0


def _verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def report(results: dict) -> None:
    m = results["machine"]
    print(f"\nmachine: {m['cpu']}, kernels {m['isa']}, read {m['read_bytes_per_s'] / 1e9:.1f} GB/s, "
          f"copy {m['copy_bytes_per_s'] / 1e9:.1f} GB/s, load {m['load_before']} -> {m['load_after']}")
    speed = results.get("speed", [])
    if speed:
        print(f"\n{'shape':<18}{'impl':<15}{'ms':>8}{'q1-q3 ms':>15}{'x MONAI':>9}{'x MONAI CE':>11}"
              f"{'x floor':>9}{'/ fused':>9}")
        for r in speed:
            print(f"{r['shape']:<18}{r['impl']:<15}{r['median_s'] * 1e3:>8.2f}"
                  f"{r['q1_s'] * 1e3:>7.2f}-{r['q3_s'] * 1e3:<7.2f}{r['vs_monai']:>9.2f}{r['vs_monai_dice_ce']:>11.2f}"
                  f"{r['floor_ratio']:>9.2f}{r['vs_fused']:>9.2f}")
        rows = {(r["shape"], r["impl"]): r for r in speed}
        for shape in {r["shape"] for r in speed}:
            fused, ce = rows[shape, "fused"], rows[shape, "fused_dice_ce"]
            if shape in SPEED_TARGETS:
                print(f"{shape}: fused {fused['vs_monai']:.2f}x MONAI (>= {SPEED_TARGETS[shape]}): "
                      f"{_verdict(fused['vs_monai'] >= SPEED_TARGETS[shape])}")
            if shape in LARGE:
                print(f"{shape}: fused {fused['floor_ratio']:.2f}x floor (<= {FLOOR_TARGET}): "
                      f"{_verdict(fused['floor_ratio'] <= FLOOR_TARGET)}; Dice+CE {ce['vs_monai_dice_ce']:.2f}x MONAI "
                      f"DiceCE (>= {CE_SPEED_TARGET}): {_verdict(ce['vs_monai_dice_ce'] >= CE_SPEED_TARGET)}; "
                      f"{ce['vs_fused']:.2f}x fused Dice (<= {CE_OVER_DICE_TARGET}): "
                      f"{_verdict(ce['vs_fused'] <= CE_OVER_DICE_TARGET)}")
    for r in results.get("states", []):
        print(f"{r['shape']:<18}{r['impl']:<15} pool {'on ' if r['pool'] else 'off'}  cold {r['cold_s'] * 1e3:8.1f} ms  "
              f"steady {r['steady']['median_s'] * 1e3:8.1f} ms ({r['steady']['min_s'] * 1e3:.1f}-"
              f"{r['steady']['max_s'] * 1e3:.1f})  peak above inputs {r['x_logits']:.2f}x logits")
    for part in ("overhead", "fixed_cost"):
        if part in results:
            o = results[part]
            print(f"\n{part} at", o["shape"], {k: f"{v['median_s'] * 1e6:.0f} us" for k, v in o.items() if k != "shape"})
    for r in results.get("drop_ins", []):
        peer_target = DROP_IN_TARGETS["vs_peer"].get(r["shape"])
        vs_peer = "no peer" if r["vs_peer"] is None else f"{r['vs_peer']:.2f}x faster than the peer" + (
            f" (>= {peer_target}: {_verdict(r['vs_peer'] >= peer_target)})" if peer_target and r["drop_in"] in (
                "monai.DiceLoss", "monai.TverskyLoss") else "")
        operator = "" if r.get("operator_vs_peer") is None else f"; the bare operator {r['operator_vs_peer']:.2f}x"
        print(f"drop-in {r['drop_in']:<36}{r['shape']:<14}{r['drop_in_s'] * 1e3:8.3f} ms, {r['vs_direct']:.2f}x the direct "
              f"call (<= {DROP_IN_TARGETS['vs_direct']}: {_verdict(r['vs_direct'] <= DROP_IN_TARGETS['vs_direct'])}), "
              f"{vs_peer}{operator}")
    for r in results.get("isa", []):
        print(f"isa {r['shape']:<18}{r['requested']:<9}(ran {r['ran']:<8}) {r['median_s'] * 1e3:8.2f} ms  "
              f"runs {[round(v * 1e3, 2) for v in r['runs_s']]}")
    if "compile" in results:
        c = results["compile"]
        print(f"\ncompile: graph breaks {c['graph_breaks']}, graphs {c['unique_graphs']}, loss diff {c['loss_diff']:.1e}, "
              f"grad diff {c['grad_diff']:.1e}, eager {c['eager']['median_s'] * 1e3:.2f} ms, "
              f"compiled {c['compiled']['median_s'] * 1e3:.2f} ms")
    for r in results.get("accuracy", []):
        grad = f"{r['grad_norm_error']:.1e}" if "grad_norm_error" in r else "-"
        print(f"accuracy {r['dtype']:<10}{r['voxels']:>12} loss {r['loss_error']:.1e} grad {grad}  "
              f"{_verdict(r['met'])} ({r['target']:g})")


if __name__ == "__main__":
    sys.exit(main())
