"""Compile every Triton kernel of ``fused`` for real GPUs on a machine without one, and check the launches.

    python -m benchmarks.gpu_compile                  # the CI sweep (make gpu-compile)
    python -m benchmarks.gpu_compile --sweep layouts  # every channel layout x dtype (~20 CPU minutes)
    python -m benchmarks.gpu_compile --sweep full     # every constexpr combination (hours)
    python -m benchmarks.gpu_compile --json results/gpu/compile.json

The real launchers (``triton_kernels.triton_statistics`` / ``triton_gradient``) run on ``meta``
tensors with the kernels' ``run`` replaced by a recorder, so grids, block sizes and scalar
arguments come from the project's code. Each recorded launch is bound the way Triton's JIT binds
it for the target (its own specialisation: ints equal to 1 become constexpr, 16-divisible ints and
pointers get divisibility hints) and compiled ttir → ttgir → llir → ptx → cubin with the ptxas in
the Triton wheel, for sm_80 and sm_90, without a driver. ptxas's ``-v`` log gives registers, spills
and stack; the compiled metadata gives warps and shared memory.

Fails (exit 1) on a compile error, a spill, a 32-bit multiply in the TTIR (index arithmetic must
be int64), or a launch a GPU would refuse: grid x > 2^31 - 1,
y or z > 65535, more than 1024 threads or more than 64 K registers per block, more shared memory
than the target allows per block.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import torch

TARGETS = (80, 90)
GRID_X_MAX = 2**31 - 1
GRID_YZ_MAX = 65535
THREADS_PER_BLOCK_MAX = 1024
REGISTERS_PER_BLOCK_MAX = 65536  # also the register file of one SM on sm_80 and sm_90
REGISTERS_PER_THREAD_MAX = 255
WARPS_PER_SM_MAX = 64
BLOCKS_PER_SM_MAX = 32
SHARED_PER_BLOCK_MAX = {80: 166912, 90: 232448}  # opt-in maximum (163 KiB, 227 KiB)
LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class Launch(NamedTuple):
    """One kernel launch as the launcher made it (tensors are ``meta``)."""

    kernel: Any  # the JITFunction (or InterpretedFunction under TRITON_INTERPRET=1)
    grid: Tuple[int, ...]
    args: tuple
    kwargs: dict

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__ if hasattr(self.kernel, "fn") else self.kernel.__name__


@contextlib.contextmanager
def recorded_launches():
    """Within the block, launching a Triton kernel records it instead of running it."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction
    from torch._library.triton import set_wrap_triton_enabled

    launches: List[Launch] = []

    def record(self, *args, grid, warmup, **kwargs):
        if callable(grid):
            import inspect

            bound = inspect.signature(self.fn).bind(*args, **kwargs)
            grid = grid(dict(bound.arguments))
        launches.append(Launch(self, tuple(int(g) for g in grid), args, kwargs))

    saved = {cls: cls.run for cls in (JITFunction, InterpretedFunction)}
    try:
        for cls in saved:
            cls.run = record
        with set_wrap_triton_enabled(False):  # as torch.library.triton_op runs its function in eager
            yield launches
    finally:
        for cls, run in saved.items():
            cls.run = run


def grid_violations(grid: Sequence[int]) -> List[str]:
    """What a CUDA launch would refuse in this grid (an empty list when it is fine)."""
    dims = list(grid) + [1] * (3 - len(grid))
    problems = []
    if any(d < 1 for d in dims):
        problems.append(f"empty grid dimension in {tuple(grid)}")
    if dims[0] > GRID_X_MAX:
        problems.append(f"grid x = {dims[0]} > 2^31 - 1")
    for axis, d in zip("yz", dims[1:]):
        if d > GRID_YZ_MAX:
            problems.append(f"grid {axis} = {d} > {GRID_YZ_MAX}")
    return problems


# --- the launches of a sweep ---------------------------------------------------------------------

class Case(NamedTuple):
    """Inputs of one call of both launchers: logits (N, C, V), labels (N, V), the spec's kernel fields."""

    n: int
    c: int
    v: int
    dtype: torch.dtype
    label_dtype: torch.dtype
    activation: str
    squared: bool
    ignore_index: Optional[int]
    deterministic: bool
    pixel: str = "none"  # the per-pixel term: "none", "ce", "ce_smoothed" or "focal"


def launches_of(case: Case) -> List[Launch]:
    """The launches of ``triton_statistics`` and ``triton_gradient`` for ``case``, on meta tensors."""
    from dice_impls import DiceSpec
    from dice_impls.fused import triton_kernels
    from dice_impls.fused.autograd import KernelParams

    params = KernelParams.from_spec(
        DiceSpec(activation=case.activation, squared=case.squared, ignore_index=case.ignore_index)
    )
    meta = torch.device("meta")
    logits = torch.empty((case.n, case.c, case.v), device=meta, dtype=case.dtype)
    labels = torch.empty((case.n, case.v), device=meta, dtype=case.label_dtype)
    a = torch.empty((case.n, case.c), device=meta, dtype=torch.float64)
    pixel, ks = None, torch.empty((case.n,), device=meta, dtype=torch.float64)
    if case.pixel != "none":
        weights = torch.empty((case.c,), device=meta, dtype=torch.float64) if case.pixel == "ce_smoothed" else None
        pixel = triton_kernels.PixelArgs(2 if case.pixel == "focal" else 1, 2.0 if case.pixel == "focal" else 0.0,
                                         weights, float(case.c))
    with recorded_launches() as launches:
        triton_kernels.triton_statistics(logits, labels, params, case.deterministic, pixel=pixel)
        triton_kernels.triton_gradient(logits, labels, a, a.clone(), params, pixel=pixel, kw=a.clone(), ks=ks)
    return launches


# The heaviest options, and enough voxels that every layout's statistics programs walk several tiles.
BASE = Case(1, 4, 2**22 + 3 * 4096, torch.float32, torch.uint8, "softmax", True, 255, True)
LIMIT_SHAPES = (  # (N, C, V): sizes whose launches broke or came near a limit before
    (1, 4, 512**3), (2, 7, 256**3), (1, 32, 2048**2), (4, 150, 1024**2), (2, 150, 128**3),
    (16, 4, 512 * 512), (1, 256, 2**24), (1, 1, 2**31 + 17),
)
SWEEPS = ("ci", "layouts", "full")


def layouts(counts: Iterable[int] = range(1, 1025)) -> Dict[tuple, List[int]]:
    """Channel counts grouped by the constexprs the launchers give them (one group per kernel layout)."""
    groups: Dict[tuple, List[int]] = {}
    for c in counts:
        key = tuple(
            (launch.name, tuple(sorted((k, str(v)) for k, v in launch.kwargs.items())))
            for launch in launches_of(BASE._replace(c=c))
        )
        groups.setdefault(key, []).append(c)
    return groups


def sweep(name: str) -> List[Case]:
    """The cases whose launches are compiled.

    ci: the resident (C = 4) and the looped layout (C = 150, and 256 for a 16-divisible C) with the
    heaviest options, then a small input (one tile per program), bfloat16, float64, sigmoid,
    identity, no ignore_index and the atomic reduction once each, and the per-pixel term (focal;
    cross-entropy with label smoothing) in both layouts.
    About 40 compilations. Every sweep adds ``LIMIT_SHAPES``: their grids are checked against the
    compiled configuration with the same constexprs and pointer types (their V and tile counts
    only change the JIT's integer hints), except V >= 2^31, which is compiled (int64 V).
    layouts: every layout (C up to 1024) x logits dtype x reduction, heaviest options.
    full: every layout x logits dtype x activation x squared x ignore x reduction x label dtype.
    """
    small, large = BASE, BASE._replace(c=150)
    cases = [small, large, BASE._replace(c=256), small._replace(n=2, v=3 * 4096),
             large._replace(deterministic=False), small._replace(dtype=torch.bfloat16),
             large._replace(dtype=torch.float64),
             large._replace(activation="sigmoid"), small._replace(activation="none", squared=False),
             small._replace(ignore_index=None, label_dtype=torch.int64, deterministic=False),
             small._replace(pixel="focal"), large._replace(pixel="ce_smoothed"), small._replace(pixel="ce_smoothed"),
             large._replace(pixel="focal")]
    if name == "ci":
        return cases
    counts = [group[0] for group in layouts().values()]
    if name == "layouts":
        return cases + [BASE._replace(c=c, dtype=d, deterministic=det)
                        for c in counts for d in LOGIT_DTYPES for det in (True, False)]
    return cases + [
        BASE._replace(c=c, dtype=d, label_dtype=lab, activation=act, squared=sq, ignore_index=ig, deterministic=det)
        for c in counts for d in LOGIT_DTYPES for lab in LABEL_DTYPES for act in ("softmax", "sigmoid", "none")
        for sq in (True, False) for ig in (255, None) for det in (True, False)
    ]


# --- compiling -----------------------------------------------------------------------------------

class Job(NamedTuple):
    """One compilation: a kernel bound for a target the way the JIT binds it."""

    kernel: Any
    target: int
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict

    def key(self):
        return (self.kernel.fn.__qualname__, self.target, repr(sorted(self.signature.items())),
                repr(sorted(self.constexprs.items())), repr(sorted(self.attrs.items())),
                repr(sorted(self.options.items())))

    def describe(self) -> Dict[str, Any]:
        names = self.kernel.arg_names
        const = {names[path[0]]: value for path, value in self.constexprs.items()}
        pointer_types = {k: v for k, v in self.signature.items() if v.startswith("*")}
        ints = {k: v for k, v in self.signature.items() if v.startswith("i")}
        hints = [names[path[0]] for path, a in self.attrs.items() if a]
        return dict(kernel=self.kernel.fn.__name__, target=f"sm_{self.target}", pointers=pointer_types,
                    ints=ints, constexprs=const, divisible_by_16=hints, num_warps=self.options["num_warps"])


def bind(launch: Launch, target: int) -> Job:
    """Bind ``launch`` for ``target`` with Triton's own binder (what ``JITFunction.run`` does)."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime import jit

    kernel, kwargs = launch.kernel, dict(launch.kwargs)
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    backend = make_backend(GPUTarget("cuda", target, 32))
    binder = jit.create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return Job(kernel, target, signature, constexprs, attrs, dict(options.__dict__))


_JOBS: List[Job] = []  # read by forked workers


def _compile(index: int) -> Dict[str, Any]:
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    job = _JOBS[index]
    knobs.nvidia.dump_ptxas_log = True
    log = io.StringIO()
    start = time.perf_counter()
    result = job.describe()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(ASTSource(job.kernel, job.signature, job.constexprs, job.attrs),
                                      target=GPUTarget("cuda", job.target, 32), options=job.options)
    except Exception as error:  # a compile error is a result, reported with the configuration
        result.update(error=f"{type(error).__name__}: {str(error).strip()[:2000]}")
        return result
    text = log.getvalue()
    registers = re.findall(r"Used (\d+) registers", text)
    spills = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text)
    if len(registers) != 1 or len(spills) != 1:
        result.update(error=f"could not read ptxas's log:\n{text}")
        return result
    stack, stores, loads = (int(s) for s in spills[0])
    # Index arithmetic must be int64: a 32-bit multiply is where V * C or tile offsets wrap.
    narrow = [line.strip() for line in compiled.asm["ttir"].splitlines() if re.search(r"arith\.muli .*: i32", line)]
    result.update(int32_multiplies=narrow)
    result.update(registers=int(registers[0]), spill_stores=stores, spill_loads=loads, stack=stack,
                  shared=int(compiled.metadata.shared), num_warps=int(compiled.metadata.num_warps),
                  seconds=round(time.perf_counter() - start, 2))
    return result


def resident_warps(registers: int, warps: int) -> int:
    """Warps of this kernel one SM holds at once (registers are allocated 256 per warp)."""
    per_warp = math.ceil(registers * 32 / 256) * 256
    blocks = min(BLOCKS_PER_SM_MAX, WARPS_PER_SM_MAX // warps, REGISTERS_PER_BLOCK_MAX // (per_warp * warps))
    return blocks * warps


def launch_problems(result: Dict[str, Any], grid: Sequence[int], target: int) -> List[str]:
    problems = grid_violations(grid)
    threads = result["num_warps"] * 32
    if threads > THREADS_PER_BLOCK_MAX:
        problems.append(f"{threads} threads per block > {THREADS_PER_BLOCK_MAX}")
    if result["registers"] * threads > REGISTERS_PER_BLOCK_MAX:
        problems.append(f"{result['registers']} registers x {threads} threads > {REGISTERS_PER_BLOCK_MAX}")
    if result["shared"] > SHARED_PER_BLOCK_MAX[target]:
        problems.append(f"{result['shared']} bytes of shared memory > {SHARED_PER_BLOCK_MAX[target]}")
    if result["int32_multiplies"]:
        problems.append(f"int32 index arithmetic: {result['int32_multiplies'][0]}")
    if result["spill_stores"] or result["spill_loads"]:
        problems.append(f"spills {result['spill_stores']} bytes stored, {result['spill_loads']} loaded")
    return problems


def label(result: Dict[str, Any]) -> str:
    const = result["constexprs"]
    pointers = result["pointers"]
    shown = {k: v for k, v in const.items() if not isinstance(v, bool) or v}
    dtypes = "/".join(pointers[k][1:] for k in list(pointers)[:2])
    hints = ",".join(result["divisible_by_16"])
    ints = ",".join(f"{k}:{v}" for k, v in result["ints"].items() if v != "i32")
    text = f"{result['kernel']:<20} {result['target']} {dtypes:<9} " + " ".join(f"{k}={v}" for k, v in shown.items())
    return text + (f" [{ints}]" if ints else "") + f" div16={hints}"


def layout_table(results: List[Dict[str, Any]]) -> str:
    """Markdown: per kernel, layout and accumulator type, the most registers, the most spilled bytes
    and the fewest warps one SM holds, over every other option, for each target."""
    rows: Dict[tuple, Dict[str, tuple]] = {}
    for r in results:
        if "error" in r:
            continue
        const = r["constexprs"]
        kernel = r["kernel"].strip("_").replace("_kernel", "")
        if "DETERMINISTIC" in const:
            kernel += " (fixed order)" if const["DETERMINISTIC"] else " (atomics)"
        looped = not const.get("RESIDENT", True)
        shape = f"{const['BLOCK_C']}x{const['BLOCK_V']}" + (" looped" if looped else "")
        key = (kernel, str(const.get("ACC", "fp32")), looped, const["BLOCK_C"], shape)
        value = (r["registers"], r["spill_stores"] + r["spill_loads"], resident_warps(r["registers"], r["num_warps"]))
        best = rows.setdefault(key, {}).get(r["target"], value)
        rows[key][r["target"]] = (max(best[0], value[0]), max(best[1], value[1]), min(best[2], value[2]))
    lines = ["| kernel | acc | tile (C x V) | sm_80 regs / spill B / warps per SM "
             "| sm_90 regs / spill B / warps per SM |",
             "|---|---|---|---|---|"]
    for key in sorted(rows):
        cells = [" / ".join(map(str, rows[key][t])) if t in rows[key] else "-" for t in ("sm_80", "sm_90")]
        lines.append(f"| {key[0]} | {key[1]} | {key[4]} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_compile", description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", choices=SWEEPS, default="ci", help="which configurations (see sweep())")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compilations")
    parser.add_argument("--json", help="write every compiled configuration and its numbers to this file")
    args = parser.parse_args(argv)

    # Before Triton is imported: real kernels (not the interpreter), a private cache, no reuse.
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("gpu_compile: Triton was imported in interpreter mode; run it in a fresh process", file=sys.stderr)
        return 2
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the 3.9 default, stated to silence its warning
    cache = tempfile.mkdtemp(prefix="dicebench-triton-")
    os.environ["TRITON_CACHE_DIR"] = cache
    try:
        return _run(args)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _run(args) -> int:
    start = time.perf_counter()
    cases = sweep(args.sweep)
    jobs: Dict[tuple, int] = {}
    families: Dict[tuple, int] = {}  # (kernel, target, pointer types, named constexprs, int64 scalars) -> job
    uses: List[Tuple[Case, Launch, int, int]] = []  # (case, launch, target, job index)

    def family(launch: Launch, job: Job) -> tuple:
        pointers = tuple(v for v in job.signature.values() if v.startswith("*"))
        wide = tuple(k for k, v in job.signature.items() if v == "i64")
        return (job.key()[:2], pointers, tuple(sorted((k, str(v)) for k, v in launch.kwargs.items())), wide)

    def add(case: Case, exact: bool):
        for launch in launches_of(case):
            for target in TARGETS:
                job = bind(launch, target)
                index = jobs.get(job.key()) if exact else families.get(family(launch, job))
                if index is None:
                    index = jobs[job.key()] = len(_JOBS)
                    families.setdefault(family(launch, job), index)
                    _JOBS.append(job)
                uses.append((case, launch, target, index))

    for case in cases:
        add(case, exact=True)
    for n, c, v in LIMIT_SHAPES:
        add(BASE._replace(n=n, c=c, v=v), exact=False)
    print(f"gpu_compile: {len(cases) + len(LIMIT_SHAPES)} cases, {len(uses) // len(TARGETS)} launches, "
          f"{len(_JOBS)} compilations for sm_{' sm_'.join(map(str, TARGETS))} on {args.jobs} processes", flush=True)

    if args.jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            results = pool.map(_compile, range(len(_JOBS)), chunksize=1)
    else:
        results = [_compile(i) for i in range(len(_JOBS))]

    failures = []
    for result in results:
        if "error" in result:
            failures.append(f"compile error: {label(result)}\n{result['error']}")
    print(f"{'regs':>4} {'spill':>5} {'smem':>6} {'warps':>5} {'warps/SM':>8}  configuration")
    for result in sorted((r for r in results if "error" not in r), key=label):
        spill = result["spill_stores"] + result["spill_loads"]
        print(f"{result['registers']:>4} {spill:>5} {result['shared']:>6} {result['num_warps']:>5} "
              f"{resident_warps(result['registers'], result['num_warps']):>8}  {label(result)}")
    checked = 0
    for case, launch, target, index in uses:
        result = results[index]
        if "error" in result:
            continue
        checked += 1
        for problem in launch_problems(result, launch.grid, target):
            failures.append(f"{problem}: {launch.name} grid {launch.grid} on sm_{target} for {case}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:  # one configuration per line
            head = json.dumps(dict(sweep=args.sweep, targets=[f"sm_{t}" for t in TARGETS]))[:-1]
            rows = ",\n".join(json.dumps(r, default=str) for r in results)
            f.write(f'{head}, "configurations": [\n{rows}\n]}}\n')
    print(layout_table(results))
    elapsed = time.perf_counter() - start
    for failure in dict.fromkeys(failures):
        print(f"FAIL {failure}")
    print(f"gpu_compile: {len(results)} compiled, {checked} launches checked, {len(set(failures))} failures, "
          f"{elapsed:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
