"""``dicebench compare RUN_A RUN_B``: which stored numbers and claims moved between two runs.

A run folder holds ``experiments/<name>/{results.parquet, claims.json, manifest.json}`` and
optionally ``asv/`` (asv's results folder), as ``dicebench run`` writes them and as ``results/``
is committed; a folder that directly holds ``<name>/results.parquet`` is read as experiments only.

Experiments run with different settings (manifest scale, seed, impl, threads, config) are
flagged first. Experiment rows are matched on their non-float columns (the settings: loss, seed, fraction, ...)
and every float column is compared with ``|a - b| <= atol + rtol * |b|`` (NaN equals NaN).
Claims are matched by id: a flipped outcome or a value beyond the tolerance is reported.
Benchmarks (each machine's newest commit) are matched on machine, benchmark and parameters and
compared with the looser ``time_rtol``, because timings on a shared machine vary far more than
seeded computations. When the two runs share no machine name, the numbers are matched without it
(the command compares timings of different hardware only with ``--across-machines``). A timing
that is unstable in either run (``benchmarks.results.is_unstable``: quartile spread over 15 % of
the median, or too few samples) is listed as unstable instead of being compared: it neither
counts as a change nor as agreement.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd

from .errors import UsageError
from .report_template import esc, table


@dataclass(frozen=True)
class RunPaths:
    experiments: Optional[Path]
    asv: Optional[Path]

    @classmethod
    def of(cls, folder: Path) -> "RunPaths":
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"run folder {folder} does not exist")
        if (folder / "experiments").is_dir() or (folder / "asv").is_dir():
            experiments, asv = folder / "experiments", folder / "asv"
            return cls(experiments if experiments.is_dir() else None, asv if asv.is_dir() else None)
        if any(folder.glob("*/results.parquet")):
            return cls(folder, None)
        raise FileNotFoundError(f"{folder} holds neither experiments/ and asv/ nor <name>/results.parquet")


@dataclass(frozen=True)
class Change:
    """One thing that differs: ``kind`` is number, claim, benchmark, setting or missing."""

    kind: str
    where: str
    what: str
    a: object
    b: object
    relative: float = math.nan


@dataclass
class Comparison:
    a: RunPaths
    b: RunPaths
    rtol: float
    atol: float
    time_rtol: float
    changes: List[Change] = field(default_factory=list)
    checked: int = 0
    unstable: List[Change] = field(default_factory=list)  # benchmark cells too noisy to compare

    @property
    def moved(self) -> bool:
        return bool(self.changes)


def relative_change(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # From 0 the change is infinite (the division by the tiny floor overflows): inf, no warning.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.abs(a - b) / np.maximum(np.abs(b), np.finfo(float).tiny)


def _moved(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    same = np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
    return ~same


def compare_frames(name: str, a: pd.DataFrame, b: pd.DataFrame, rtol: float, atol: float) -> Tuple[List[Change], int]:
    """Rows matched on their settings (plus their order among equal settings): the non-float
    columns, and float columns with a few values that are the same in both runs (a sweep's rho)."""
    if set(a.columns) != set(b.columns):
        return [Change("missing", name, "columns", sorted(a.columns), sorted(b.columns))], 0
    keys = [c for c in a.columns if not pd.api.types.is_float_dtype(a[c]) or _is_setting(a[c], b[c])]
    values = [c for c in a.columns if c not in keys]
    a, b = (df.assign(_occurrence=df.groupby(keys, sort=False).cumcount() if keys else np.arange(len(df))) for df in (a, b))
    keys = keys + ["_occurrence"]
    merged = a.merge(b, on=keys, how="outer", suffixes=("_a", "_b"), indicator=True)
    changes = []
    unmatched = merged[merged["_merge"] != "both"]
    if len(unmatched):
        changes.append(Change("missing", name, "rows", int((unmatched["_merge"] == "left_only").sum()),
                              int((unmatched["_merge"] == "right_only").sum())))
    both = merged[merged["_merge"] == "both"]
    for column in values:
        va, vb = both[f"{column}_a"].to_numpy(float), both[f"{column}_b"].to_numpy(float)
        moved = _moved(va, vb, rtol, atol)
        if moved.any():
            rel = relative_change(va, vb)
            worst = int(np.nanargmax(np.where(moved, rel, -1.0)))
            setting = ", ".join(f"{k}={both[k].iloc[worst]}" for k in keys if k != "_occurrence")
            changes.append(Change("number", name, f"{column}: {int(moved.sum())}/{len(moved)} rows moved; worst at {setting}",
                                  float(va[worst]), float(vb[worst]), float(rel[worst])))
    return changes, len(both) * len(values)


def _is_setting(a: pd.Series, b: pd.Series, most: int = 20) -> bool:
    """A float column that looks like a swept setting: few values, repeated, equal in both runs."""
    values = set(a.dropna().unique())
    return len(values) <= min(most, len(a) // 4) and values == set(b.dropna().unique())


def compare_claims(name: str, a: List[dict], b: List[dict], rtol: float, atol: float) -> Tuple[List[Change], int]:
    by_id_a, by_id_b = {c["id"]: c for c in a}, {c["id"]: c for c in b}
    changes = []
    for claim_id in sorted(by_id_a.keys() ^ by_id_b.keys()):
        changes.append(Change("missing", name, f"claim {claim_id}", claim_id in by_id_a, claim_id in by_id_b))
    for claim_id in sorted(by_id_a.keys() & by_id_b.keys()):
        ca, cb = by_id_a[claim_id], by_id_b[claim_id]
        if bool(ca["passed"]) != bool(cb["passed"]):
            changes.append(Change("claim", name, f"{claim_id} flipped ({'passed' if ca['passed'] else 'failed'} -> "
                                  f"{'passed' if cb['passed'] else 'failed'})", ca["value"], cb["value"]))
        elif _moved(np.array([float(ca["value"])]), np.array([float(cb["value"])]), rtol, atol)[0]:
            changes.append(Change("claim", name, f"{claim_id} value moved", ca["value"], cb["value"],
                                  float(relative_change(np.array(float(ca["value"])), np.array(float(cb["value"]))))))
    return changes, len(by_id_a.keys() & by_id_b.keys())


def compare_experiments(a_dir: Optional[Path], b_dir: Optional[Path], rtol: float, atol: float) -> Tuple[List[Change], int]:
    from .storage import load_results

    names = [{p.parent.name for p in Path(d).glob("*/results.parquet")} if d else set() for d in (a_dir, b_dir)]
    changes, checked = [], 0
    for name in sorted(names[0] ^ names[1]):
        changes.append(Change("missing", name, "experiment", name in names[0], name in names[1]))
    for name in sorted(names[0] & names[1]):
        (df_a, claims_a, manifest_a), (df_b, claims_b, manifest_b) = load_results(a_dir, name), load_results(b_dir, name)
        for key in ("scale", "seed", "impl", "threads", "config"):  # different settings: not a reproduction
            if manifest_a.get(key) != manifest_b.get(key):
                changes.append(Change("setting", name, f"manifest {key} differs", manifest_a.get(key), manifest_b.get(key)))
        for found, count in (compare_frames(name, df_a, df_b, rtol, atol), compare_claims(name, claims_a, claims_b, rtol, atol)):
            changes.extend(found)
            checked += count
    return changes, checked


BENCHMARK_KEYS = ("machine", "benchmark", "implementation", "device", "dtype", "shape", "label_dtype")


def compare_benchmarks(a_dir: Optional[Path], b_dir: Optional[Path],
                       time_rtol: float) -> Tuple[List[Change], int, List[Change]]:
    """asv numbers of each machine's newest commit matched on machine, benchmark and parameters;
    returns (changes, numbers compared, unstable cells)."""
    if a_dir is None and b_dir is None:
        return [], 0, []
    if a_dir is None or b_dir is None:
        return [Change("missing", "asv", "benchmark results", a_dir is not None, b_dir is not None)], 0, []
    from benchmarks.results import latest, load_asv_results

    frames = [latest(load_asv_results(d)) for d in (a_dir, b_dir)]
    changes = []
    if not set(frames[0]["machine"]) & set(frames[1]["machine"]):
        # No machine name in common (the command line compares such runs only when asked to,
        # --across-machines): match the numbers without it.
        frames = [f.assign(machine="(any)") for f in frames]
    keys = [k for k in BENCHMARK_KEYS if all(k in f for f in frames)]
    a, b = (f.groupby(keys, dropna=False).agg(value=("value", "median"), unstable=("unstable", "any")) for f in frames)
    merged = a.merge(b, how="outer", left_index=True, right_index=True, suffixes=("_a", "_b"))
    merged["unstable"] = merged["unstable_a"].eq(True) | merged["unstable_b"].eq(True)
    unstable = []
    for key, row in merged.iterrows():
        where = " ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        va, vb = row["value_a"], row["value_b"]
        if math.isnan(va) != math.isnan(vb):
            changes.append(Change("missing", "asv", where, va, vb))
        elif math.isnan(va):
            continue
        elif row["unstable"]:
            unstable.append(Change("unstable", "asv", where, va, vb, float(relative_change(np.array(va), np.array(vb)))))
        elif _moved(np.array([va]), np.array([vb]), time_rtol, 0.0)[0]:
            changes.append(Change("benchmark", "asv", where, va, vb, float(relative_change(np.array(va), np.array(vb)))))
    compared = int(merged[["value_a", "value_b"]].notna().all(axis=1).sum()) - len(unstable)
    return changes, compared, unstable


def compare_runs(a: Path | RunPaths, b: Path | RunPaths, rtol: float = 1e-3, atol: float = 1e-9,
                 time_rtol: float = 0.25) -> Comparison:
    a, b = (x if isinstance(x, RunPaths) else RunPaths.of(x) for x in (a, b))
    comparison = Comparison(a, b, rtol, atol, time_rtol)
    changes, checked = compare_experiments(a.experiments, b.experiments, rtol, atol)
    bench_changes, bench_checked, comparison.unstable = compare_benchmarks(a.asv, b.asv, time_rtol)
    comparison.changes = changes + bench_changes
    comparison.checked = checked + bench_checked
    return comparison


def _value(x: object) -> str:
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def comparison_to_text(c: Comparison) -> str:
    lines = [f"A = {c.a.experiments} (experiments), {c.a.asv} (asv)", f"B = {c.b.experiments} (experiments), {c.b.asv} (asv)",
             f"tolerances: rtol={c.rtol:g} atol={c.atol:g} (experiments, claims), time_rtol={c.time_rtol:g} (asv)",
             f"{c.checked} numbers and claims compared; {len(c.changes)} changes"]
    for ch in c.changes:
        rel = "" if math.isnan(ch.relative) else f"  (relative change {ch.relative:.3g})"
        lines.append(f"  [{ch.kind}] {ch.where}: {ch.what}: A={_value(ch.a)} B={_value(ch.b)}{rel}")
    if c.unstable:
        lines.append(f"{len(c.unstable)} benchmark timings unstable in A or B (quartile spread over 15 % of the median, "
                     "or too few samples): not compared, neither a change nor agreement")
        lines += [f"  [unstable] {ch.what}: A={_value(ch.a)} B={_value(ch.b)}  (relative change {ch.relative:.2g})"
                  for ch in c.unstable]
    return "\n".join(lines)


def comparison_to_html(c: Comparison) -> str:
    from .benchmark_report import display_path

    repo = Path(__file__).resolve().parent.parent
    intro = (f"<p>This run (B) against <code>{esc(display_path(c.a.experiments or c.a.asv, repo))}</code> (A): "
             f"{c.checked} stored numbers "
             f"and claims compared with relative tolerance {c.rtol:g} (absolute {c.atol:g}); benchmark times with "
             f"relative tolerance {c.time_rtol:g}. {len(c.changes)} moved.</p>")
    unstable = ""
    if c.unstable:
        unstable = table(["where", "A", "B", "relative change"],
                         [[ch.what, _value(ch.a), _value(ch.b), f"{ch.relative:.2g}"] for ch in c.unstable],
                         "Benchmark timings unstable in A or B (quartile spread over 15 % of the median, or too few "
                         "samples): not compared, neither a change nor agreement.")
    if not c.changes:
        return intro + "<p>Nothing moved beyond the tolerances.</p>" + unstable
    rows = [[ch.kind, ch.where, ch.what, _value(ch.a), _value(ch.b), "" if math.isnan(ch.relative) else f"{ch.relative:.3g}"]
            for ch in c.changes]
    return intro + table(["kind", "where", "what", "A", "B", "relative change"], rows,
                         "Numbers and claims that moved beyond the tolerance between the two runs.", text_columns=3) + unstable


DESCRIPTION = "Compare two run folders (exit status 1 when a number or claim moved beyond the tolerance)."
# What makes two asv machines the same hardware (asv's machine.json); its name and OS version do not.
MACHINE_FIELDS = ("arch", "cpu", "num_cpu", "ram")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance for experiment numbers and claims")
    parser.add_argument("--atol", type=float, default=1e-9, help="absolute tolerance for experiment numbers and claims")
    parser.add_argument("--time-rtol", type=float, default=0.25, help="relative tolerance for asv timings and memory")
    parser.add_argument("--across-machines", action="store_true",
                        help="compare asv timings even when the two runs measured them on different machines")


def asv_machines(asv_dir: Path) -> List[str]:
    """The machines of an asv results folder, each as its hardware (machine.json) or, without it, its name."""
    machines = []
    for folder in sorted(p for p in Path(asv_dir).iterdir() if p.is_dir()):
        info = json.loads((folder / "machine.json").read_text()) if (folder / "machine.json").is_file() else {}
        machines.append(", ".join(str(info[k]) for k in MACHINE_FIELDS if k in info) or folder.name)
    return machines


def main(args: argparse.Namespace) -> int:
    try:
        run_a, run_b = RunPaths.of(args.run_a), RunPaths.of(args.run_b)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from None
    if run_a.asv and run_b.asv and not args.across_machines:
        machines_a, machines_b = asv_machines(run_a.asv), asv_machines(run_b.asv)
        if machines_a and machines_b and machines_a != machines_b:
            # Timings of two machines differ by their hardware; only the seeded numbers can reproduce.
            print(f"dicebench compare: warning: asv timings not compared: A measured on {'; '.join(machines_a)}, "
                  f"B on {'; '.join(machines_b)} (--across-machines compares them anyway)", file=sys.stderr)
            run_a, run_b = replace(run_a, asv=None), replace(run_b, asv=None)
    try:
        comparison = compare_runs(run_a, run_b, args.rtol, args.atol, args.time_rtol)
    except FileNotFoundError as error:  # a run folder without some of its files
        raise UsageError(str(error)) from None
    if not comparison.checked and not comparison.changes:
        raise UsageError(f"nothing to compare: {args.run_a} and {args.run_b} share no stored numbers")
    print(comparison_to_text(comparison))
    return 1 if comparison.moved else 0
