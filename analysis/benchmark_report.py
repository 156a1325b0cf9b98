"""The benchmark parts of the report: asv results per machine, ratios to MONAI with their
intervals and stability, the "At a glance" tables, the measure tables and the figures.

Numbers from different machines or result folders never share a column: every column group is
one *run*, a machine's newest commit in one asv results folder, named in its header. A ratio is
``value / MONAI's value`` in the same run; its interval is the quartile interval
``[q25 / MONAI's q75, q75 / MONAI's q25]`` of the two cells' samples, and it is *unstable* when
either timing is (``benchmarks.results.is_unstable``: quartile spread over 15 % of the median or
fewer than 4 samples). Unstable numbers are shown, marked, and never used as a headline.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from markupsafe import Markup

from .report_template import MISSING, SHORT_MISSING, Cell, esc, figure, format_number, table

BASELINE = "monai"
CUDA_MODULE, SCALING_MODULE = "bench_cuda", "bench_scaling"
HEADLINE = "bench_loss.Headline"  # the comparison the headline numbers come from
COMPOUND = "bench_loss.Compound"  # Dice + cross-entropy: fused against MONAI's DiceCELoss
MANY_CLASSES = "bench_loss.ManyClasses"  # a 104-class 3-D patch: fused against MONAI and nnU-Net
# Every asv class is a comparison of its own (its rows, its baseline), except where named here:
# torch.compile of the vectorized loss has a class of its own only for its compile time, and is
# compared with the Headline class's MONAI.
COMPARED_WITH = {"bench_loss.HeadlineCompiled": HEADLINE}
# How the page names a comparison (the first column of its rows); others go by their class name.
COMPARISON_LABELS = {HEADLINE: "Dice", "bench_loss.Grid": "Dice (grid)", MANY_CLASSES: "Dice, 104 classes",
                     COMPOUND: "Dice+CE: fused Dice+CE vs MONAI DiceCELoss", "bench_cuda.CudaLoss": "Dice"}
STORED, FRESH = "stored", "this run"  # the two origins of asv results a page can show
UNSTABLE_MARK = "†"
# The implementations section's measures: (label, metric, {device: the asv method measuring it}).
MEASURES = (
    ("forward+backward time", "time", {"cpu": "time_forward_backward", "cuda": "track_seconds_forward_backward"}),
    ("forward time", "time", {"cpu": "time_forward", "cuda": "time_forward"}),
    ("forward+backward peak memory above the inputs", "memory",
     {"cpu": "track_peak_bytes_forward_backward", "cuda": "track_max_memory_allocated_forward_backward"}),
    ("forward+backward peak memory of the whole process (RSS)", "memory", {"cpu": "peakmem_forward_backward"}),
)
GLANCE_MEASURES = (MEASURES[0], MEASURES[2])
MEMORY_TOLERANCE = 0.05  # peak bytes are counted, not sampled: two runs agree within 5 % (benchmarks.memory_gate)
MEMORY_RESOLUTION = 2**20  # peak_rss_increase misses blocks of 64 KiB or less: below ~1 MiB, unreliable


def display_path(path: Path, repo: Path) -> str:
    """A path as the page shows it: relative to the repository or the working directory, else its
    last two parts (the page never shows the absolute paths of the machine that wrote it)."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    for root in (repo, Path.cwd()):
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return "…/" + "/".join(path.parts[-2:])


# --------------------------------------------------------------------------------------------
# Loading


def load_benchmarks(asv_dir: Path, origin: str, label: str) -> Optional[pd.DataFrame]:
    """asv results of one folder (``benchmarks.results.load_asv_results``), one result file per
    machine and commit, with ``origin``, ``run`` (machine and folder: the column key), ``latest``
    (the machine's newest commit), ``cpu`` (asv's machine.json), ``device``, ``module``,
    ``method`` and ``voxels`` added; None when there are none."""
    if not (Path(asv_dir) / "benchmarks.json").is_file():
        return None
    from benchmarks.benchmarks.common import voxels
    from benchmarks.results import latest, load_asv_results, one_file_per_commit

    df = load_asv_results(asv_dir)
    if df.empty:
        return None
    df = one_file_per_commit(df).copy()
    newest = latest(df)
    df["latest"] = df.index.isin(newest.index)
    df["origin"] = origin
    df["run"] = df["machine"] + " · " + label
    df["cpu"] = [str(machine_info(asv_dir, m).get("cpu") or m) for m in df["machine"]]
    df["module"] = df["benchmark"].str.split(".").str[0]
    df["benchmark_class"] = df["benchmark"].str.split(".").str[1]
    classes = df["module"] + "." + df["benchmark_class"]
    df["comparison"] = [COMPARED_WITH.get(c, c) for c in classes]
    df["comparison_label"] = [COMPARISON_LABELS.get(c, c.split(".")[-1]) for c in df["comparison"]]
    df["method"] = df["benchmark"].str.rsplit(".", n=1).str[-1]
    df["device"] = ["cuda" if module == CUDA_MODULE else "cpu" for module in df["module"]]
    if "dtype" not in df:
        df["dtype"] = math.nan
    df["dtype"] = df["dtype"].fillna("float32")  # benchmarks without a dtype parameter (scaling) run float32
    df["voxels"] = [voxels(s) for s in df["shape"]]
    return df.reset_index(drop=True)


def environment_label(env: str) -> str:
    """asv's environment name as the page shows it: asv names the running environment
    (``--python=same``) after its interpreter's path, which the page never shows."""
    return "existing (the running environment)" if str(env).startswith("existing-py_") else str(env)


def machine_info(asv_dir: Path, machine: str) -> dict:
    path = Path(asv_dir) / machine / "machine.json"
    return json.loads(path.read_text()) if path.is_file() else {}


CELL_KEYS = ["run", "comparison", "method", "commit", "dtype", "shape", "implementation"]


def with_baseline_ratio(asv: pd.DataFrame) -> pd.DataFrame:
    """Each number divided by MONAI's in the same comparison (``COMPARED_WITH``), method, run,
    commit, dtype and shape: both were measured in the same asv run, so the ratio survives a noisy
    machine better than either number. Adds ``ratio``, its quartile interval ``ratio_low`` /
    ``ratio_high`` and ``ratio_unstable``. Two numbers under one key are an error, never a guess."""
    clashes = asv[asv.duplicated(CELL_KEYS, keep=False)]
    if len(clashes):
        raise ValueError("two asv numbers for one cell of the page (benchmarks "
                         f"{sorted(set(clashes['benchmark']))}): give them separate comparisons in COMPARED_WITH")
    keys = CELL_KEYS[:-1]
    baseline = asv[(asv["implementation"] == BASELINE) & asv["value"].notna()]
    baseline = baseline.set_index(keys)[["value", "q25", "q75", "unstable"]].add_prefix("baseline_")
    out = asv.join(baseline, on=keys)
    out["ratio"] = out["value"] / out["baseline_value"]
    out["ratio_low"] = out["q25"] / out["baseline_q75"]
    out["ratio_high"] = out["q75"] / out["baseline_q25"]
    out["ratio_unstable"] = out["ratio"].notna() & (out["unstable"] | out["baseline_unstable"].eq(True))
    return out


def _expected(attribute: str, fallback: Sequence[str]) -> List[str]:
    from benchmarks.benchmarks import common

    return list(getattr(common, attribute, fallback))


def unit_scale(metric: str) -> Tuple[float, str]:
    return (1e3, "ms") if metric == "time" else (1 / 2**20, "MiB")


def measure_rows(ratios: pd.DataFrame, methods: Dict[str, str]) -> pd.DataFrame:
    """The newest rows of one measure: on each device, the benchmark method that measures it there."""
    chosen = [(ratios["device"] == device) & (ratios["method"] == method) for device, method in methods.items()]
    mask = pd.concat(chosen, axis=1).any(axis=1) & (ratios["module"] != SCALING_MODULE) & ratios["latest"]
    return ratios[mask]


# --------------------------------------------------------------------------------------------
# Cells


def spread_note(row) -> str:
    """Why a number is flagged: its own and MONAI's quartile spread and sample counts."""
    def one(name, spread, samples):
        samples = "?" if not np.isfinite(samples) else int(samples)
        return (f"{name}: spread unknown ({samples} samples)" if not np.isfinite(spread)
                else f"{name}: quartile spread {spread:.0%} of the median, {samples} samples")

    parts = [one(row["implementation"], row["spread"], row["samples"])]
    if row["implementation"] != BASELINE and "baseline_value" in row:
        base = row.get("baseline_q75", math.nan) - row.get("baseline_q25", math.nan)
        parts.append(one(BASELINE, base / row["baseline_value"] if row["baseline_value"] else math.nan,
                         row.get("baseline_samples", math.nan)))
    return "; ".join(parts)


def ratio_text(row, interval: bool = True) -> str:
    text = format_number(row["ratio"], 2 if row["ratio"] < 1 else 3)
    if interval and np.isfinite(row["ratio_low"]) and np.isfinite(row["ratio_high"]):
        text += f" ({format_number(row['ratio_low'], 2)}–{format_number(row['ratio_high'], 2)})"
    return text + (f" {UNSTABLE_MARK}" if row["ratio_unstable"] else "")


def _missing(key: str = "") -> Cell:
    return Cell(SHORT_MISSING, css="missing", key=key)


def ratio_cell(row, interval: bool = True, key: str = "") -> Cell:
    if row["status"] == "failed":
        return Cell("failed", css="fail", key=key)
    if not np.isfinite(row["ratio"]):
        return _missing(key)
    unstable = bool(row["ratio_unstable"])
    return Cell(ratio_text(row, interval), value=float(row["ratio"]), css="unstable" if unstable else "",
                title=("unstable: " + spread_note(row)) if unstable else "", key=key)


def value_cell(row, scale: float, key: str = "") -> Cell:
    if row["status"] == "failed":
        return Cell("failed", css="fail", key=key)
    if not np.isfinite(row["value"]):
        return _missing(key)
    unstable = bool(row["unstable"])
    return Cell(format_number(row["value"] * scale) + (f" {UNSTABLE_MARK}" if unstable else ""),
                value=float(row["value"] * scale), css="unstable" if unstable else "",
                title=("unstable: " + spread_note(row)) if unstable else "", key=key)


def run_label(rows: pd.DataFrame, device: str) -> str:
    first = rows.iloc[0]
    kind = "CPU" if device == "cpu" else "GPU"
    return f"{kind} · {first['run']} ({first['cpu']}) @ {str(first['commit'])[:8]}"


UNSTABLE_NOTE = (f"{UNSTABLE_MARK} and shading: unstable, the quartile spread of the samples exceeds 15 % of the "
                 "median (for a ratio: of either number) or there were fewer than 4 samples; hover for the "
                 "spreads. Read such a number as indicative only.")


# --------------------------------------------------------------------------------------------
# Tables


def cell_key(comparison: str, method: str, implementation: str, dtype: str, shape: str, run: str) -> str:
    """The ``data-key`` of a table cell: which asv number it shows (tests match cells to results)."""
    return f"{comparison}.{method}|{implementation}|{dtype}|{shape}|{run}"


def measure_table(ratios: pd.DataFrame, label: str, metric: str, methods: Dict[str, str], number: int) -> str:
    """Rows: comparison x shape x dtype (each asv class its own rows, so two benchmarks never meet
    in one cell). One column group per device and run (machine and results folder, never mixed):
    MONAI's own number, then each other implementation's ratio to it. Devices without numbers show
    as not measured."""
    scale, unit = unit_scale(metric)
    rows_df = measure_rows(ratios, methods)
    others = [i for i in dict.fromkeys(rows_df["implementation"]) if i != BASELINE]
    dtypes = _expected("DTYPES", [])
    measured = rows_df[rows_df["value"].notna()]
    groups_of_columns = []  # (device, run or None, rows)
    for device in _expected("DEVICES", ["cpu", "cuda"]):
        runs = list(dict.fromkeys(measured.loc[measured["device"] == device, "run"]))
        if not runs:
            groups_of_columns.append((device, None, rows_df.iloc[:0]))
        for run in runs:
            groups_of_columns.append((device, run, rows_df[(rows_df["device"] == device) & (rows_df["run"] == run)]))
    header, groups = ["benchmark", "shape", "dtype"], [("", 3)]
    for device, run, on_run in groups_of_columns:
        if run is None:
            header.append("all implementations")
            groups.append(("CPU" if device == "cpu" else "GPU", 1))
        else:
            header += [f"{BASELINE} ({unit})"] + others
            groups.append((f"{run_label(on_run, device)}: {BASELINE} in {unit}, others ÷ {BASELINE}", 1 + len(others)))
    rows = []
    for (comparison, label_of_rows), of_comparison in rows_df.groupby(["comparison", "comparison_label"], sort=False):
        for shape in dict.fromkeys(of_comparison["shape"]):
            for dtype in list(dict.fromkeys(dtypes + list(of_comparison["dtype"]))):
                row = [label_of_rows, shape, dtype]
                for device, run, on_run in groups_of_columns:
                    if run is None:
                        row.append(Cell(MISSING, css="missing"))
                        continue
                    here = on_run[(on_run["comparison"] == comparison) & (on_run["shape"] == shape) & (on_run["dtype"] == dtype)]
                    here = {r["implementation"]: r for _, r in here.iterrows()}
                    key = lambda i: cell_key(comparison, methods[device], i, dtype, shape, run)  # noqa: E731
                    row.append(value_cell(here[BASELINE], scale, key(BASELINE)) if BASELINE in here else _missing(key(BASELINE)))
                    row += [ratio_cell(here[i], key=key(i)) if i in here else _missing(key(i)) for i in others]
                rows.append(row)
    benchmarks = ", ".join(f"{d}: {m}" for d, m in methods.items())
    caption = (f"Table {number}. {esc(label)} ({esc(benchmarks)}). Shapes are N×C×spatial. Each benchmark has its own "
               "rows: “Dice” is the Dice loss alone, “Dice+CE” fused Dice + cross-entropy against MONAI's DiceCELoss. "
               "Per device and run, MONAI's own number, then each implementation's ratio to MONAI's on the same "
               "benchmark, shape and dtype in the same run (below 1 is better), with its quartile interval in brackets "
               f"where the samples give one. {UNSTABLE_NOTE} “{SHORT_MISSING}”, “{MISSING}”: the combination did not "
               "run here (no such device, a dtype or shape a peer does not take, or not part of this grid).")
    return table(header, rows, caption, text_columns=3, groups=groups)


def _headline_rows(ratios: pd.DataFrame, methods: Dict[str, str], comparison: str = HEADLINE) -> pd.DataFrame:
    rows = measure_rows(ratios, methods)
    return rows[(rows["comparison"] == comparison) & (rows["device"] == "cpu")]


def headline_tables(ratios: pd.DataFrame) -> List[str]:
    """Per stored run and headline measure, the ratios to MONAI with their intervals at the
    headline shapes: rows implementations (Dice), then fused Dice+CE; columns dtype x shape."""
    out = []
    stored = ratios[ratios["origin"] == STORED]
    for run in dict.fromkeys(stored["run"]):
        on_run = stored[stored["run"] == run]
        for label, _, methods in GLANCE_MEASURES:
            rows = pd.concat([_headline_rows(on_run, methods), _headline_rows(on_run, methods, COMPOUND)])
            columns = list(dict.fromkeys(zip(rows["dtype"], rows["shape"])))
            if not columns:
                continue
            body = []
            for (comparison, label_of_rows), of_comparison in rows.groupby(["comparison", "comparison_label"], sort=False):
                cells = {(r["dtype"], r["shape"], r["implementation"]): r for _, r in of_comparison.iterrows()}
                for i in dict.fromkeys(of_comparison["implementation"]):
                    if i == BASELINE:
                        continue
                    name = i if comparison == HEADLINE else f"{i} ({label_of_rows})"
                    body.append([name] + [ratio_cell(cells[(*c, i)]) if (*c, i) in cells else _missing() for c in columns])
            caption = (f"Headline {esc(label)} on {esc(run_label(on_run, 'cpu'))}, each implementation ÷ MONAI's "
                       "DiceLoss (Dice+CE rows: ÷ MONAI's DiceCELoss): the headline shapes, below 1 is better, "
                       f"quartile interval in brackets. {UNSTABLE_NOTE}")
            out.append(table(["implementation"] + [f"{dtype} {shape}" for dtype, shape in columns], body, caption))
    return out


@dataclass
class Speedup:
    """How many times faster (or leaner) ``fast`` is than ``slow``, measured in one run: the
    quotient of the medians and the quartile interval ``[slow q25 / fast q75, slow q75 / fast q25]``."""

    fast: str
    slow: str
    shape: str
    value: float
    low: float
    high: float
    unstable: bool

    @classmethod
    def of(cls, fast, slow, fast_name: str = "", slow_name: str = "") -> "Speedup":
        return cls(fast_name or fast["implementation"], slow_name or slow["implementation"], fast["shape"],
                   float(slow["value"] / fast["value"]), float(slow["q25"] / fast["q75"]),
                   float(slow["q75"] / fast["q25"]), bool(fast["unstable"] or slow["unstable"]))

    @property
    def text(self) -> str:
        interval = (f" ({format_number(self.low, 2)}–{format_number(self.high, 2)})"
                    if np.isfinite(self.low) and np.isfinite(self.high) else "")
        return f"{format_number(self.value, 2)}×{interval}" + (f" {UNSTABLE_MARK}" if self.unstable else "")


PEER_NAMES = {"monai": "MONAI", "kornia": "kornia", "vectorized_compiled": "torch.compile", "nnunet": "nnU-Net"}


def glance_facts(ratios: pd.DataFrame) -> List[dict]:
    """Per stored CPU run, the headline numbers of the page's first screen: fused's speed-up over
    each peer at the headline shapes (float32), its peak memory against MONAI's, fused Dice+CE
    against MONAI's DiceCELoss, and the many-class patch; every speed-up with its interval and
    stability."""
    facts = []
    stored = ratios[(ratios["origin"] == STORED) & (ratios["device"] == "cpu") & ratios["latest"]]
    for run in dict.fromkeys(stored["run"]):
        on_run = stored[(stored["run"] == run) & (stored["dtype"] == "float32") & stored["value"].notna()]
        time_method, memory_method = (m["cpu"] for _, _, m in GLANCE_MEASURES)
        cell = {(r["comparison"], r["method"], r["implementation"], r["shape"]): r for _, r in on_run.iterrows()}
        speed, memory, compound = [], [], []
        for shape in _expected("HEADLINE_SHAPES", []):
            fused = cell.get((HEADLINE, time_method, "fused", shape))
            if fused is not None:
                speed += [Speedup.of(fused, cell[(HEADLINE, time_method, peer, shape)], slow_name=name)
                          for peer, name in PEER_NAMES.items() if (HEADLINE, time_method, peer, shape) in cell]
            fused, monai = (cell.get((HEADLINE, memory_method, i, shape)) for i in ("fused", BASELINE))
            if fused is not None and monai is not None and fused["value"] > 0:
                memory.append(dict(shape=shape, ratio=float(fused["value"] / monai["value"]),
                                   fused_mib=float(fused["value"]) / 2**20, monai_mib=float(monai["value"]) / 2**20))
            fused, monai = (cell.get((COMPOUND, time_method, i, shape)) for i in ("fused", BASELINE))
            if fused is not None and monai is not None:
                compound.append(Speedup.of(fused, monai, "fused Dice+CE", "MONAI DiceCELoss"))
        many = []  # the many-class patch: fused's memory and speed against each peer's
        for (comparison, method, implementation, shape), peer in cell.items():
            if comparison != MANY_CLASSES or method != memory_method or implementation == "fused":
                continue
            fused_memory, fused_time, peer_time = (cell.get((MANY_CLASSES, m, i, shape)) for m, i in (
                (memory_method, "fused"), (time_method, "fused"), (time_method, implementation)))
            if fused_memory is None:
                continue
            many.append(dict(shape=shape, peer=PEER_NAMES.get(implementation, implementation),
                             fused_mib=fused_memory["value"] / 2**20, peer_mib=peer["value"] / 2**20,
                             speed=Speedup.of(fused_time, peer_time) if fused_time is not None and peer_time is not None
                             else None))
        if speed or memory or compound or many:
            first = on_run.iloc[0]
            by_peer = [(name, [x for x in speed if x.slow == name]) for name in PEER_NAMES.values()]
            facts.append(dict(run=run, cpu=first["cpu"], commit=str(first["commit"])[:8], speed=speed, memory=memory,
                              compound=compound, many=many, speed_by_peer=[(name, items) for name, items in by_peer if items]))
    return facts


def _fresh_rows(ratios: pd.DataFrame):
    """Per (fresh run, stored run): the headline cells both hold, as table rows whose last cell is the verdict."""
    fresh = ratios[ratios["origin"] == FRESH]
    stored = ratios[ratios["origin"] == STORED]
    for fresh_run in dict.fromkeys(fresh["run"]):
        for stored_run in dict.fromkeys(stored["run"]):
            rows = []
            for label, _, methods in GLANCE_MEASURES:
                for comparison in (HEADLINE, COMPOUND):
                    mine = _headline_rows(fresh[fresh["run"] == fresh_run], methods, comparison)
                    theirs = _headline_rows(stored[stored["run"] == stored_run], methods, comparison)
                    theirs = {(r["implementation"], r["dtype"], r["shape"]): r for _, r in theirs.iterrows()}
                    for _, r in mine.iterrows():
                        key = (r["implementation"], r["dtype"], r["shape"])
                        if r["implementation"] == BASELINE or key not in theirs or not np.isfinite(r["ratio"]):
                            continue
                        s = theirs[key]
                        rows.append([label, r["comparison_label"], *key, ratio_cell(s), ratio_cell(r), *_verdict(s, r)])
            if rows:
                yield fresh[fresh["run"] == fresh_run].iloc[0], stored[stored["run"] == stored_run].iloc[0], rows


def fresh_verdicts(ratios: pd.DataFrame) -> List[str]:
    """Every fresh headline cell's verdict against the stored one: agree, differ, unstable, no interval."""
    return [row[-1].text for _, _, rows in _fresh_rows(ratios) for row in rows]


def fresh_comparison(ratios: pd.DataFrame) -> List[str]:
    """This run's headline cells against each stored run's: both ratios with their intervals, the
    quotient, and a verdict that never reads an unstable cell as agreement or as a change."""
    out = []
    for mine, theirs, rows in _fresh_rows(ratios):
        same = mine["cpu"] == theirs["cpu"]
        caption = (f"This run ({esc(mine['run'])}, {esc(mine['cpu'])}, commit {esc(str(mine['commit'])[:8])}) against "
                   f"the stored {esc(theirs['run'])} ({esc(theirs['cpu'])}, commit {esc(str(theirs['commit'])[:8])}): "
                   "each implementation's ratio to MONAI, measured within each run. "
                   + ("" if same else "The CPUs differ: only ratios carry over between them, and even those "
                      "may differ for real. ")
                   + "“agree”: the quartile intervals overlap (memory, a count without samples: within 5 %); "
                   "“differ”: they do not; “unstable”: one of the cells is, so neither agreement nor a change "
                   f"can be read. {UNSTABLE_NOTE}")
        out.append(table(["measure", "benchmark", "implementation", "dtype", "shape", f"stored: ratio to {BASELINE}",
                          f"this run: ratio to {BASELINE}", "this run ÷ stored", "verdict"], rows, caption,
                         text_columns=5))
    return out


def _verdict(stored, fresh) -> Tuple[Cell, Cell]:
    quotient = fresh["ratio"] / stored["ratio"]
    quotient_cell = Cell(format_number(quotient, 2), value=float(quotient))
    if stored["ratio_unstable"] or fresh["ratio_unstable"]:
        return quotient_cell, Cell("unstable", css="unstable")
    low, high = (max(stored["ratio_low"], fresh["ratio_low"]), min(stored["ratio_high"], fresh["ratio_high"]))
    if np.isfinite(low) and np.isfinite(high):
        agree = low <= high
    elif stored["unit"] == "bytes":  # one deterministic count, no samples: the memory gate's 5 %
        agree = abs(quotient - 1) <= MEMORY_TOLERANCE
    else:
        return quotient_cell, Cell("no interval", css="missing")
    return quotient_cell, Cell("agree", css="pass") if agree else Cell("differ", css="fail")


# --------------------------------------------------------------------------------------------
# Figures


def _slug(text: str) -> str:
    return re.sub(r"\W+", "_", text).strip("_")


def ratio_figure(ratios: pd.DataFrame, label: str, methods: Dict[str, str], fig_dir: Path) -> List[Tuple[Path, str]]:
    """Per CPU run: horizontal bars of the ratios to MONAI (log scale, plain tick labels), one row
    per benchmark, shape and dtype, one fixed colour per implementation, the quartile interval as an error
    bar, unstable bars hatched; the legend sits outside the bars."""
    from .plotting import legend_outside, plt, readable_log_axis, save_figure, style

    out = []
    df = measure_rows(ratios, methods)
    df = df[(df["device"] == "cpu") & (df["implementation"] != BASELINE) & df["ratio"].notna()]
    for run, on_run in df.groupby("run", sort=False):
        cases = list(dict.fromkeys(zip(on_run["comparison_label"], on_run["shape"], on_run["dtype"])))
        implementations = list(dict.fromkeys(on_run["implementation"]))
        height = 0.8 / len(implementations)
        fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.17 * len(cases) * len(implementations)))
        for k, implementation in enumerate(implementations):
            rows = on_run[on_run["implementation"] == implementation].set_index(["comparison_label", "shape", "dtype"])
            y, values, low, high, unstable = [], [], [], [], []
            for c, case in enumerate(cases):
                if case not in rows.index:
                    continue
                r = rows.loc[case]
                y.append(c + (k - (len(implementations) - 1) / 2) * height)
                values.append(r["ratio"])
                low.append(r["ratio"] - r["ratio_low"])  # NaN (no samples, e.g. memory): no error bar drawn
                high.append(r["ratio_high"] - r["ratio"])
                unstable.append(bool(r["ratio_unstable"]))
            bars = ax.barh(y, values, height=height * 0.9, color=style(implementation)["color"], label=implementation,
                           xerr=[low, high], error_kw=dict(ecolor="#333333", lw=0.8, capsize=2))
            for bar, flag in zip(bars, unstable):
                if flag:
                    bar.set_hatch("///")
                    bar.set_edgecolor("white")
        ax.set_xscale("log")
        ax.axvline(1, color="k", lw=1)
        ax.set_yticks(range(len(cases)), [f"{loss}  {shape}  {dtype}" for loss, shape, dtype in cases], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("ratio to MONAI (log scale; below 1 is better)")
        ax.set_title(f"{label}\n{run}", fontsize=9)
        readable_log_axis(ax, "x")
        # Plain patches: a series' first bar may be hatched, and the legend must not suggest that all are.
        handles = [plt.Rectangle((0, 0), 1, 1, facecolor=style(i)["color"]) for i in implementations]
        hatched = plt.Rectangle((0, 0), 1, 1, facecolor="#bbbbbb", hatch="///", edgecolor="white")
        legend_outside(ax, handles=handles + [hatched], labels=implementations + ["unstable (hatched)"],
                       title="implementation")
        path = save_figure(fig, fig_dir, f"ratio_{_slug(label)}_{_slug(run)}")[0]
        caption = (f"{esc(label)} on {esc(run)} relative to MONAI, log scale; the black line is parity, the error bars "
                   "the quartile intervals of the ratios, hatched bars are unstable.")
        out.append((path, caption))
    return out


def scaling_figures(ratios: pd.DataFrame, fig_dir: Path) -> List[Tuple[Path, str]]:
    """Time and memory against size (log-log), one line per implementation in its fixed colour,
    quartile error bars, the slope-1 (linear) reference, and every irregular point circled and
    explained in the caption: a number that falls as the size grows, an unstable timing, or a
    memory below the measurement's resolution (a 0-byte point is drawn at the axis floor, not dropped)."""
    from benchmarks.benchmarks.common import parse_shape

    from .plotting import legend_outside, plt, readable_log_axis, save_figure, style

    out = []
    measured = ratios[(ratios["module"] == SCALING_MODULE) & ratios["value"].notna() & ratios["latest"]]
    for (run, benchmark), group in measured.groupby(["run", "benchmark"], sort=False):
        shapes = [parse_shape(s) for s in group["shape"]]
        by_classes = len({s[2:] for s in shapes}) == 1 and len({s[1] for s in shapes}) > 1
        group = group.assign(x=[s[1] for s in shapes] if by_classes else list(group["voxels"]))
        metric = "time" if group["unit"].iloc[0] == "seconds" else "memory"
        scale, unit = unit_scale(metric)
        positive = group.loc[group["value"] > 0, "value"] * scale
        floor = (positive.min() / 3) if len(positive) else 1e-3
        fig, ax = plt.subplots(figsize=(6.8, 4.2))
        notes = []
        for implementation, line in group.groupby("implementation", sort=False):
            line = line.sort_values("x")
            y = (line["value"] * scale).clip(lower=floor)
            err = None
            if line["q25"].notna().all():
                err = [(line["value"] - line["q25"]).clip(lower=0) * scale, (line["q75"] - line["value"]).clip(lower=0) * scale]
            ax.errorbar(line["x"], y, yerr=err, label=implementation, capsize=2, lw=1.4, ms=5, **style(implementation))
            notes += _irregular(ax, line, y, metric, scale, unit)
        first = group.sort_values("x").groupby("implementation").head(1)
        x0, y0 = float(first["x"].min()), float((first["value"] * scale).clip(lower=floor).median())
        xs = np.array(sorted(group["x"].unique()), dtype=float)
        ax.plot(xs, y0 * xs / x0, color="#888888", ls=":", lw=1.2, label="slope 1 (linear)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        readable_log_axis(ax, "y")
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}" if v < 1e4 else f"2^{math.log2(v):g}"))
        ax.set_xlabel("classes C (log), fixed voxels" if by_classes else "logit elements N·C·voxels (log), C fixed")
        what = "time" if metric == "time" else "peak memory above inputs"
        ax.set_ylabel(f"{what} ({unit}, log)")
        ax.set_title(f"{benchmark.split('.')[1]}: {benchmark.rsplit('.', 1)[-1]}\n{run} (CPU, float32)", fontsize=9)
        legend_outside(ax)
        path = save_figure(fig, fig_dir, f"scaling_{benchmark.replace('.', '_')}_{_slug(run)}")[0]
        caption = (f"{esc(benchmark)} on {esc(run)}: {what} against {'the class count' if by_classes else 'problem size'}, "
                   "log-log, CPU, float32, quartile error bars; the dotted line is slope 1 (cost proportional to size). "
                   + ("Circled points: " + "; ".join(esc(n) for n in notes) + "." if notes else "No irregular point."))
        out.append((path, caption))
    return out


def _irregular(ax, line: pd.DataFrame, y: pd.Series, metric: str, scale: float, unit: str) -> List[str]:
    """Circle and describe the points of one series that cannot be read at face value."""
    notes, previous = [], None
    for (_, r), shown in zip(line.iterrows(), y):
        why = []
        if metric == "memory" and r["value"] <= 0:
            why.append("0 bytes measured, drawn at the axis floor")
        elif metric == "memory" and r["value"] < MEMORY_RESOLUTION:
            why.append("under 1 MiB, below the measurement's resolution")
        if r.get("unstable", False):
            why.append(f"unstable (quartile spread {r['spread']:.0%} of the median)" if np.isfinite(r["spread"])
                       else "unstable (spread unknown)")
        if previous is not None and r["value"] < previous["value"]:
            why.append(f"lower than at {previous['shape']} ({format_number(previous['value'] * scale)} {unit}): "
                       "cost does not fall with size, so load or caching moved one of the two")
        if why:
            ax.plot([r["x"]], [shown], marker="o", ms=13, mfc="none", mec="#cc0000", mew=1.2, ls="none")
            notes.append(f"{r['implementation']} at {r['shape']}: {format_number(r['value'] * scale)} {unit}, " + ", ".join(why))
        previous = r
    return notes


def history_figures(ratios: pd.DataFrame, fig_dir: Path) -> List[Tuple[Path, str]]:
    """asv's per-benchmark history, offline: for each run with two or more commits, the headline
    forward+backward time and memory at the 2-D headline shape in float32 over its commits."""
    from .plotting import legend_outside, plt, save_figure, style

    shape = _expected("HEADLINE_SHAPES", [""])[0]
    out = []
    for run, on_run in ratios[ratios["device"] == "cpu"].groupby("run", sort=False):
        commits = on_run.drop_duplicates("commit").sort_values("date")["commit"].tolist()
        if len(commits) < 2:
            continue
        for label, metric, methods in GLANCE_MEASURES:
            rows = on_run[(on_run["comparison"] == HEADLINE) & (on_run["method"] == methods["cpu"])
                          & (on_run["dtype"] == "float32") & (on_run["shape"] == shape) & on_run["value"].notna()]
            if rows.empty:
                continue
            scale, unit = unit_scale(metric)
            fig, ax = plt.subplots(figsize=(6.8, 3.8))
            for implementation, line in rows.groupby("implementation", sort=False):
                line = line.set_index("commit").reindex(commits)
                x = np.arange(len(commits))
                err = None
                if metric == "time":
                    err = [((line["value"] - line["q25"]) * scale).clip(lower=0), ((line["q75"] - line["value"]) * scale).clip(lower=0)]
                ax.errorbar(x, line["value"] * scale, yerr=err, label=implementation, capsize=2, **style(implementation))
            ax.set_xticks(range(len(commits)), [str(c)[:8] for c in commits], rotation=30, ha="right", fontsize=8)
            ax.set_xlabel("commit (oldest to newest)")
            ax.set_ylabel(f"{label} ({unit})")
            ax.set_ylim(bottom=0)
            ax.set_title(f"History: {label}, {shape} float32\n{run}", fontsize=9)
            legend_outside(ax)
            path = save_figure(fig, fig_dir, f"history_{_slug(label)}_{_slug(run)}")[0]
            out.append((path, f"{esc(label)} at {esc(shape)} float32 over the commits stored for {esc(run)} (quartile "
                              "error bars): asv's history graph, drawn here so that it needs no network."))
    return out


def figure_html(items: List[Tuple[Path, str]], out_dir: Path, width: Optional[int] = None) -> Markup:
    return Markup("\n").join(figure(path.relative_to(out_dir).as_posix(), caption, width=width) for path, caption in items)


def glance_figure(fact: dict, fig_dir: Path) -> Optional[Tuple[Path, str]]:
    """The first screen's one figure: how many times faster fused is than each peer at each headline
    shape (float32, one stored run), Dice+CE included; quartile intervals as error bars, unstable
    bars hatched, and the peak memory against MONAI's written beside the bars."""
    from .plotting import plt, save_figure, style

    bars = [(s.shape, f"vs {s.slow}", s) for s in fact["speed"]] + [(s.shape, "Dice+CE vs MONAI DiceCELoss", s)
                                                                    for s in fact["compound"]]
    if not bars:
        return None
    colours = {"vs MONAI": style("monai")["color"], "vs kornia": style("kornia")["color"],
               "vs torch.compile": style("vectorized_compiled")["color"]}
    fig, ax = plt.subplots(figsize=(7.2, 0.9 + 0.32 * len(bars)))
    y = np.arange(len(bars))
    values = [s.value for _, _, s in bars]
    errors = [[s.value - s.low for _, _, s in bars], [s.high - s.value for _, _, s in bars]]
    drawn = ax.barh(y, values, color=[colours.get(what, "#009E73") for _, what, _ in bars], height=0.7,
                    xerr=errors, error_kw=dict(ecolor="#333333", lw=0.8, capsize=2))
    for bar, (_, _, s) in zip(drawn, bars):
        if s.unstable:
            bar.set_hatch("///")
            bar.set_edgecolor("white")
        ax.text(bar.get_width() * 1.04 + 0.05, bar.get_y() + bar.get_height() / 2, f"{format_number(s.value, 2)}×",
                va="center", fontsize=8)
    ax.set_yticks(y, [f"{shape}  {what}" for shape, what, _ in bars], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1, color="k", lw=1)
    ax.set_xlim(0, max(s.high if np.isfinite(s.high) else s.value for _, _, s in bars) * 1.18)
    ax.set_xlabel("times faster than the peer: forward+backward, float32 (1 = parity)")
    ax.set_title(f"fused against each peer — {fact['run']} ({fact['cpu']})", fontsize=9)
    fig.tight_layout()
    path = save_figure(fig, fig_dir, f"glance_{_slug(fact['run'])}")[0]
    return path, (f"Forward+backward speed-up of fused over each peer at the headline shapes, float32, measured side by "
                  f"side in one asv run on {esc(fact['run'])} at commit {esc(fact['commit'])}; error bars are the "
                  "quartile intervals, hatched bars unstable. The tables in “Implementations compared with MONAI” "
                  "have every shape, dtype and measure.")


TRAINING = "bench_training.TrainingStep.time_step"  # one training step, MONAI's loss against its drop-in
TRAINING_LOSSES = ("DiceLoss", "DiceCELoss")


def training_speedups(ratios: pd.DataFrame) -> List[Tuple[str, Speedup, object, object]]:
    """Per stored CPU run, shape and loss class: (run, the drop-in's speed-up over MONAI's loss in
    one training step, MONAI's row, the drop-in's row)."""
    rows = ratios[(ratios["benchmark"] == TRAINING) & (ratios["origin"] == STORED) & ratios["latest"]
                  & ratios["value"].notna()]
    out = []
    for (run, shape), group in rows.groupby(["run", "shape"], sort=False):
        cells = {r["implementation"]: r for _, r in group.iterrows()}
        for loss in TRAINING_LOSSES:
            monai, drop_in = cells.get(f"monai {loss}"), cells.get(f"drop-in {loss}")
            if monai is not None and drop_in is not None:
                out.append((run, Speedup.of(drop_in, monai, f"drop-in {loss}", f"MONAI {loss}"), monai, drop_in))
    return out


def training_table(speedups: List[Tuple[str, Speedup, object, object]]) -> str:
    """The rows of ``training_speedups`` as a table."""
    rows = [[run, s.shape, s.slow.split(" ", 1)[1], value_cell(monai, 1e3), value_cell(drop_in, 1e3),
             Cell(s.text, value=s.value, css="unstable" if s.unstable else "")]
            for run, s, monai, drop_in in speedups]
    return table(["run", "shape", "loss", "MONAI (ms)", "drop-in (ms)", "drop-in speed-up"], rows,
                 "One training step of a small U-Net (MONAI's BasicUNet, features 8-64, one input channel; forward, "
                 "loss, backward, Adam), with MONAI's loss and with its drop-in from <code>dice_impls.compat.monai</code> "
                 "(softmax, one-hot labels), float32, medians; the speed-up's quartile interval in brackets. "
                 f"Shapes are the network's output, N×C×spatial. {UNSTABLE_NOTE}", text_columns=3)
