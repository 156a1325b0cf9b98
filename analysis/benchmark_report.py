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
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .report_template import Cell, esc, figure, table

BASELINE = "monai"
CUDA_MODULE, SCALING_MODULE = "bench_cuda", "bench_scaling"
HEADLINE_CLASSES = ("Headline", "HeadlineCompiled")  # bench_loss classes at the headline shapes
STORED, FRESH = "stored", "this run"  # the two origins of asv results a page can show
MISSING = "n/a — not measured"
SHORT_MISSING = "n/a"  # in dense tables, whose captions spell it out
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


def significant(value: float, digits: int = 3) -> str:
    """2-3 significant digits, never scientific notation for the ranges the report shows."""
    if value is None or not np.isfinite(value):
        return "NaN" if value is not None and math.isnan(value) else str(value)
    if value == 0:
        return "0"
    text = f"{value:.{digits}g}"
    return f"{float(text):f}".rstrip("0").rstrip(".") if "e" in text else text


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


def with_baseline_ratio(asv: pd.DataFrame) -> pd.DataFrame:
    """Each number divided by MONAI's for the same measurement (module and method; the class may
    differ, e.g. Headline and HeadlineCompiled), run, commit, dtype and shape: both were measured
    in the same asv run, so the ratio survives a noisy machine better than either number. Adds
    ``ratio``, its quartile interval ``ratio_low``/``ratio_high`` and ``ratio_unstable``."""
    keys = ["run", "module", "method", "commit", "dtype", "shape"]
    baseline = asv[(asv["implementation"] == BASELINE) & asv["value"].notna()].drop_duplicates(keys)
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
    text = significant(row["ratio"], 2 if row["ratio"] < 1 else 3)
    if interval and np.isfinite(row["ratio_low"]) and np.isfinite(row["ratio_high"]):
        text += f" ({significant(row['ratio_low'], 2)}–{significant(row['ratio_high'], 2)})"
    return text + (f" {UNSTABLE_MARK}" if row["ratio_unstable"] else "")


def ratio_cell(row, interval: bool = True) -> Cell:
    if row["status"] == "failed":
        return Cell("failed", css="fail")
    if not np.isfinite(row["ratio"]):
        return Cell(SHORT_MISSING, css="missing")
    unstable = bool(row["ratio_unstable"])
    return Cell(ratio_text(row, interval), value=float(row["ratio"]), css="unstable" if unstable else "",
                title=("unstable: " + spread_note(row)) if unstable else "")


def value_cell(row, scale: float) -> Cell:
    if row["status"] == "failed":
        return Cell("failed", css="fail")
    if not np.isfinite(row["value"]):
        return Cell(SHORT_MISSING, css="missing")
    unstable = bool(row["unstable"])
    return Cell(significant(row["value"] * scale) + (f" {UNSTABLE_MARK}" if unstable else ""),
                value=float(row["value"] * scale), css="unstable" if unstable else "",
                title=("unstable: " + spread_note(row)) if unstable else "")


def run_label(rows: pd.DataFrame, device: str) -> str:
    first = rows.iloc[0]
    kind = "CPU" if device == "cpu" else "GPU"
    return f"{kind} · {first['run']} ({first['cpu']}) @ {str(first['commit'])[:8]}"


UNSTABLE_NOTE = (f"{UNSTABLE_MARK} and shading: unstable, the quartile spread of the samples exceeds 15 % of the "
                 "median (for a ratio: of either number) or there were fewer than 4 samples; hover for the "
                 "spreads. Read such a number as indicative only.")


# --------------------------------------------------------------------------------------------
# Tables


def measure_table(ratios: pd.DataFrame, label: str, metric: str, methods: Dict[str, str], number: int) -> str:
    """Rows: shape x dtype. One column group per device and run (machine and results folder, never
    mixed): MONAI's own number, then each other implementation's ratio to it. Devices without
    numbers show as not measured."""
    scale, unit = unit_scale(metric)
    rows_df = measure_rows(ratios, methods)
    others = [i for i in dict.fromkeys(rows_df["implementation"]) if i != BASELINE]
    dtypes = list(dict.fromkeys(_expected("DTYPES", []) + list(rows_df["dtype"])))
    measured = rows_df[rows_df["value"].notna()]
    groups_of_columns = []  # (device, run or None, rows)
    for device in _expected("DEVICES", ["cpu", "cuda"]):
        runs = list(dict.fromkeys(measured.loc[measured["device"] == device, "run"]))
        if not runs:
            groups_of_columns.append((device, None, rows_df.iloc[:0]))
        for run in runs:
            groups_of_columns.append((device, run, rows_df[(rows_df["device"] == device) & (rows_df["run"] == run)]))
    header, groups = ["shape", "dtype"], [("", 2)]
    for device, run, on_run in groups_of_columns:
        if run is None:
            header.append("all implementations")
            groups.append(("CPU" if device == "cpu" else "GPU", 1))
        else:
            header += [f"{BASELINE} ({unit})"] + others
            groups.append((f"{run_label(on_run, device)}: {BASELINE} in {unit}, others ÷ {BASELINE}", 1 + len(others)))
    rows = []
    for shape in dict.fromkeys(rows_df["shape"]):
        for dtype in dtypes:
            row = [shape, dtype]
            for device, run, on_run in groups_of_columns:
                if run is None:
                    row.append(Cell(MISSING, css="missing"))
                    continue
                here = on_run[(on_run["shape"] == shape) & (on_run["dtype"] == dtype)]
                here = {r["implementation"]: r for _, r in here.iterrows()}
                row.append(value_cell(here[BASELINE], scale) if BASELINE in here else Cell(SHORT_MISSING, css="missing"))
                row += [ratio_cell(here[i]) if i in here else Cell(SHORT_MISSING, css="missing") for i in others]
            rows.append(row)
    benchmarks = ", ".join(f"{d}: {m}" for d, m in methods.items())
    caption = (f"Table {number}. {esc(label)} ({esc(benchmarks)}). Shapes are N×C×spatial. Per device and run, MONAI's "
               "own number, then each implementation's ratio to MONAI's on the same shape and dtype in the same run "
               "(below 1 is better), with its quartile interval in brackets where the samples give one. "
               f"{UNSTABLE_NOTE} “{SHORT_MISSING}”, “{MISSING}”: the combination did not run here (no such device, a "
               "dtype or shape a peer does not take, or not part of this grid).")
    return table(header, rows, caption, text_columns=2, groups=groups)


def _headline_rows(ratios: pd.DataFrame, methods: Dict[str, str]) -> pd.DataFrame:
    rows = measure_rows(ratios, methods)
    return rows[rows["benchmark_class"].isin(HEADLINE_CLASSES) & (rows["device"] == "cpu")]


def glance_tables(ratios: pd.DataFrame) -> List[str]:
    """Per stored run (machine) and headline measure, the ratios to MONAI with their intervals:
    one table each, rows implementations, columns dtype x shape."""
    out = []
    stored = ratios[ratios["origin"] == STORED]
    for run in dict.fromkeys(stored["run"]):
        on_run = stored[stored["run"] == run]
        for label, _, methods in GLANCE_MEASURES:
            rows = _headline_rows(on_run, methods)
            columns = list(dict.fromkeys(zip(rows["dtype"], rows["shape"])))
            if not columns:
                continue
            cells = {(r["dtype"], r["shape"], r["implementation"]): r for _, r in rows.iterrows()}
            implementations = [i for i in dict.fromkeys(rows["implementation"]) if i != BASELINE]
            body = [[i] + [ratio_cell(cells[(*c, i)]) if (*c, i) in cells else Cell(SHORT_MISSING, css="missing")
                           for c in columns] for i in implementations]
            caption = (f"Headline {esc(label)} on {esc(run_label(on_run, 'cpu'))}, each implementation ÷ MONAI: the "
                       f"headline shapes, below 1 is better, quartile interval in brackets. {UNSTABLE_NOTE}")
            out.append(table(["implementation"] + [f"{dtype} {shape}" for dtype, shape in columns], body, caption))
    return out


def headline_sentences(ratios: pd.DataFrame) -> List[str]:
    """The fused path against MONAI at the 2-D headline cell of each stored run, or why not."""
    shape = _expected("HEADLINE_SHAPES", [""])[0]
    sentences = []
    stored = ratios[ratios["origin"] == STORED]
    for run in dict.fromkeys(stored["run"]):
        on_run = stored[stored["run"] == run]
        found = {}
        for label, _, methods in GLANCE_MEASURES:
            rows = _headline_rows(on_run, methods)
            rows = rows[(rows["implementation"] == "fused") & (rows["dtype"] == "float32") & (rows["shape"] == shape)
                        & rows["ratio"].notna()]
            if len(rows):
                found[label] = rows.iloc[0]
        if not found:
            continue
        parts = []
        for label, row in found.items():
            if row["ratio_unstable"]:
                parts.append(f"its {label} ratio is unstable ({spread_note(row)}), so no headline is drawn from it")
            else:
                parts.append(f"{label} {ratio_text(row)}× MONAI's")
        sentences.append(f"On {run} ({on_run.iloc[0]['cpu']}), fused at {shape} float32: " + "; ".join(parts) + ".")
    return sentences


def fresh_comparison(ratios: pd.DataFrame) -> List[str]:
    """This run's headline cells against each stored run's: both ratios with their intervals, the
    quotient, and a verdict that never reads an unstable cell as agreement or as a change."""
    fresh = ratios[ratios["origin"] == FRESH]
    stored = ratios[ratios["origin"] == STORED]
    out = []
    if fresh.empty:
        return out
    for fresh_run in dict.fromkeys(fresh["run"]):
        for stored_run in dict.fromkeys(stored["run"]):
            rows = []
            for label, _, methods in GLANCE_MEASURES:
                mine = _headline_rows(fresh[fresh["run"] == fresh_run], methods)
                theirs = _headline_rows(stored[stored["run"] == stored_run], methods)
                theirs = {(r["implementation"], r["dtype"], r["shape"]): r for _, r in theirs.iterrows()}
                for _, r in mine.iterrows():
                    key = (r["implementation"], r["dtype"], r["shape"])
                    if r["implementation"] == BASELINE or key not in theirs or not np.isfinite(r["ratio"]):
                        continue
                    s = theirs[key]
                    rows.append([label, *key, ratio_cell(s), ratio_cell(r), *_verdict(s, r)])
            if rows:
                mine = fresh[fresh["run"] == fresh_run].iloc[0]
                theirs = stored[stored["run"] == stored_run].iloc[0]
                same = mine["cpu"] == theirs["cpu"]
                caption = (f"This run ({esc(fresh_run)}, {esc(mine['cpu'])}, commit {esc(str(mine['commit'])[:8])}) against "
                           f"the stored {esc(stored_run)} ({esc(theirs['cpu'])}, commit {esc(str(theirs['commit'])[:8])}): "
                           "each implementation's ratio to MONAI, measured within each run. "
                           + ("" if same else "The CPUs differ: only ratios carry over between them, and even those "
                              "may differ for real. ")
                           + "“agree”: the quartile intervals overlap (memory, a count without samples: within 5 %); "
                           "“differ”: they do not; “unstable”: one of the cells is, so neither agreement nor a change "
                           f"can be read. {UNSTABLE_NOTE}")
                out.append(table(["measure", "implementation", "dtype", "shape", f"stored: ratio to {BASELINE}",
                                  f"this run: ratio to {BASELINE}", "this run ÷ stored", "verdict"], rows, caption,
                                 text_columns=4))
    return out


def _verdict(stored, fresh) -> Tuple[Cell, Cell]:
    quotient = fresh["ratio"] / stored["ratio"]
    quotient_cell = Cell(significant(quotient, 2), value=float(quotient))
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
    per shape and dtype, one fixed colour per implementation, the quartile interval as an error
    bar, unstable bars hatched; the legend sits outside the bars."""
    from .plotting import legend_outside, plt, readable_log_axis, save_figure, style

    out = []
    df = measure_rows(ratios, methods)
    df = df[(df["device"] == "cpu") & (df["implementation"] != BASELINE) & df["ratio"].notna()]
    for run, on_run in df.groupby("run", sort=False):
        cases = list(dict.fromkeys(zip(on_run["shape"], on_run["dtype"])))
        implementations = list(dict.fromkeys(on_run["implementation"]))
        height = 0.8 / len(implementations)
        fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.17 * len(cases) * len(implementations)))
        for k, implementation in enumerate(implementations):
            rows = on_run[on_run["implementation"] == implementation].set_index(["shape", "dtype"])
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
        ax.set_yticks(range(len(cases)), [f"{shape}  {dtype}" for shape, dtype in cases], fontsize=8)
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
            why.append(f"lower than at {previous['shape']} ({significant(previous['value'] * scale)} {unit}): "
                       "cost does not fall with size, so load or caching moved one of the two")
        if why:
            ax.plot([r["x"]], [shown], marker="o", ms=13, mfc="none", mec="#cc0000", mew=1.2, ls="none")
            notes.append(f"{r['implementation']} at {r['shape']}: {significant(r['value'] * scale)} {unit}, " + ", ".join(why))
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
            rows = on_run[on_run["benchmark_class"].isin(HEADLINE_CLASSES) & (on_run["method"] == methods["cpu"])
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


def figure_html(items: List[Tuple[Path, str]], out_dir: Path, width: Optional[int] = None) -> str:
    return "\n".join(figure(path.relative_to(out_dir).as_posix(), caption, width=width) for path, caption in items)
