"""``dicebench report``: the results as one static HTML page, read from the stored results alone.

Inputs (each optional; what is absent is shown as "n/a — not measured", never dropped):

- experiments: ``<results>/<name>/results.parquet``, ``claims.json``, ``manifest.json``
  (``analysis.storage``); figures are redrawn from the parquet by each experiment's ``figures``;
- asv: the results folder of ``asv run`` (``benchmarks.results.load_asv_results``);
- pytest-benchmark JSON files (``make bench``);
- a comparison with another run folder (``analysis.compare``).

The page links its figures relatively (PNG files written next to it) and loads nothing else: it
opens from the file system, offline.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import pandas as pd

from .errors import UsageError
from .report_template import Cell, code, esc, figure, page, table

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = REPO / "results" / "experiments"
DEFAULT_ASV_RESULTS = REPO / "results" / "asv"
# benchmarks/targets.py's output: the fused path against MONAI and its physical floor.
DEFAULT_TARGETS = REPO / "results" / "fused" / "targets_cpu.json"
# `make bench` (pytest-benchmark) writes here; the report includes it when present.
DEFAULT_BENCH_JSON = REPO / "reports" / "bench.json"
MISSING = "n/a — not measured"
SHORT_MISSING = "n/a"  # in dense tables, whose captions spell it out
BASELINE = "monai"
CUDA_MODULE, SCALING_MODULE = "bench_cuda", "bench_scaling"
# The implementations section's measures: (label, metric, {device: the asv method measuring it}).
MEASURES = (
    ("forward+backward time", "time", {"cpu": "time_forward_backward", "cuda": "track_seconds_forward_backward"}),
    ("forward time", "time", {"cpu": "time_forward", "cuda": "time_forward"}),
    ("forward+backward peak memory above the inputs", "memory",
     {"cpu": "track_peak_bytes_forward_backward", "cuda": "track_max_memory_allocated_forward_backward"}),
    ("forward+backward peak memory of the whole process (RSS)", "memory", {"cpu": "peakmem_forward_backward"}),
)
PRECISION_EXPERIMENT = "p1_precision"
# The report's sections, in order: (id, title). Tests check that each one is present.
SECTIONS = (
    ("run", "What was run, and on what"),
    ("implementations", "Implementations compared with MONAI"),
    ("scaling", "Scaling with problem size"),
    ("precision", "Precision in half precision (P1)"),
    ("experiments", "Experiments: where Dice helps and where it saturates"),
    ("reproduce", "How to reproduce every number"),
)
COMPARISON_SECTION = ("comparison", "Comparison with another run")


@dataclass
class ExperimentResult:
    name: str
    df: pd.DataFrame
    claims: List[dict]
    manifest: dict


@dataclass
class ReportData:
    """Everything the report shows, loaded from disk into pandas."""

    results_dir: Path
    asv_dir: Path
    experiments: Dict[str, ExperimentResult] = field(default_factory=dict)
    asv: Optional[pd.DataFrame] = None
    pytest_benchmarks: Optional[pd.DataFrame] = None
    targets_path: Optional[Path] = None
    targets: Optional[dict] = None


def format_number(value: object) -> str:
    """How the report prints a stored number (the exact value rides along in ``data-value``)."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def number_cell(value: object, short: bool = False) -> Cell:
    """A stored number; None/NaN shows as not measured (``short``: "n/a", for dense tables)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Cell(SHORT_MISSING if short else MISSING, css="missing")
    return Cell(format_number(value), value=float(value))


# --------------------------------------------------------------------------------------------
# Loading


def load_experiments(results_dir: Path) -> Dict[str, ExperimentResult]:
    """Every experiment stored under ``results_dir``, in the registry's order, then any others."""
    from .experiments import EXPERIMENTS
    from .storage import load_results

    results_dir = Path(results_dir)
    stored = sorted(p.parent.name for p in results_dir.glob("*/results.parquet")) if results_dir.is_dir() else []
    names = [n for n in EXPERIMENTS if n in stored] + [n for n in stored if n not in EXPERIMENTS]
    return {name: ExperimentResult(name, *load_results(results_dir, name)) for name in names}


def load_pytest_benchmarks(paths: Iterable[Path]) -> Optional[pd.DataFrame]:
    """pytest-benchmark ``--benchmark-json`` files as one row per benchmark."""
    rows = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        machine = data.get("machine_info", {})
        for bench in data.get("benchmarks", []):
            stats = bench.get("stats", {})
            rows.append(dict(
                file=Path(path).name, name=bench.get("name"), median_s=stats.get("median"),
                iqr_s=stats.get("iqr"), rounds=stats.get("rounds"), cpu=machine.get("cpu", {}).get("brand_raw", ""),
                commit=data.get("commit_info", {}).get("id", ""), datetime=data.get("datetime", ""),
            ))
    return pd.DataFrame(rows) if rows else None


def collect(results_dir: Path = DEFAULT_RESULTS, asv_dir: Path = DEFAULT_ASV_RESULTS,
            bench_json: Sequence[Path] = (), targets: Optional[Path] = DEFAULT_TARGETS) -> ReportData:
    data = ReportData(Path(results_dir), Path(asv_dir))
    data.experiments = load_experiments(data.results_dir)
    data.asv = load_benchmarks(data.asv_dir)
    data.pytest_benchmarks = load_pytest_benchmarks(bench_json)
    if targets is not None and Path(targets).is_file():
        data.targets_path, data.targets = Path(targets), json.loads(Path(targets).read_text())
    return data


def load_benchmarks(asv_dir: Path) -> Optional[pd.DataFrame]:
    """asv results (``benchmarks.results.load_asv_results``), newest result file per machine, with
    ``device``, ``module``, ``method`` and ``voxels`` added; None when there are none."""
    if not (Path(asv_dir) / "benchmarks.json").is_file():
        return None
    from benchmarks.common import voxels
    from benchmarks.results import load_asv_results

    df = load_asv_results(asv_dir)
    if df.empty:
        return None
    newest = df.groupby("machine")["date"].transform("max")
    df = df[df["date"] == newest].copy()
    df["module"] = df["benchmark"].str.split(".").str[0]
    df["method"] = df["benchmark"].str.rsplit(".", n=1).str[-1]
    df["device"] = ["cuda" if module == CUDA_MODULE else "cpu" for module in df["module"]]
    if "dtype" not in df:
        df["dtype"] = math.nan
    df["dtype"] = df["dtype"].fillna("float32")  # benchmarks without a dtype parameter (scaling) run float32
    df["voxels"] = [voxels(s) for s in df["shape"]]
    return df.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Sections: each returns its HTML body; figures go to ``fig_dir`` (linked relative to the page).


def claims_table(claims: List[dict], caption: str) -> str:
    """Every claim with its kind, stage, value, confidence interval, threshold, source and outcome
    (PASS/FAIL for verifications, SUPPORTED/FAILED for hypotheses; a failure is styled, never hidden)."""
    from .experiments import Claim

    rows = []
    for c in map(Claim.from_dict, claims):
        ci = (Cell(f"{format_number(c.ci_low)} .. {format_number(c.ci_high)}") if c.ci_low is not None
              else Cell("—", css="missing"))
        rows.append([c.id, c.kind, c.stage or "—", c.statement, c.source or "—", number_cell(c.value, short=True), ci,
                     Cell(f"{c.op} {format_number(c.threshold)}", value=c.threshold),
                     number_cell(c.p_value, short=True) if c.p_value is not None else Cell("—", css="missing"),
                     Cell(c.outcome, css="pass" if c.passed else "fail")])
    return table(["claim", "kind", "stage", "statement", "source", "value", "95% CI", "required", "p", "outcome"],
                 rows, caption, text_columns=5)


def claims_summary(claims: List[dict]) -> str:
    """"verifications passed 5/5; hypotheses supported 2/4 (FAILED: a, b)" for a list of stored claims."""
    parts = []
    for kind, label, word in (("verification", "verifications passed", "FAIL"), ("hypothesis", "hypotheses supported", "FAILED")):
        of_kind = [c for c in claims if c["kind"] == kind]
        failed = [c["id"] for c in of_kind if not c["passed"]]
        parts.append(f"{label} {len(of_kind) - len(failed)}/{len(of_kind)}" + (f" ({word}: {', '.join(failed)})" if failed else ""))
    return "; ".join(parts)


def _claims_tally(claims: List[dict]) -> str:
    return f"{sum(bool(c['passed']) for c in claims)}/{len(claims)}"


ENVIRONMENT_FIELDS = ("python", "torch", "numpy", "pandas", "platform", "cpu", "gpu")


def section_run(data: ReportData) -> str:
    parts = [f"<p>Experiments were read from <code>{esc(data.results_dir)}</code> and benchmarks from "
             f"<code>{esc(data.asv_dir)}</code>. Each experiment's manifest records its scale, seed, "
             "implementation, thread count, commit and wall time; the table lists them.</p>"]
    if data.experiments:
        rows = []
        for result in data.experiments.values():
            m = result.manifest
            commit = str(m.get("git_commit", "unknown"))[:10] + (" (dirty)" if m.get("git_dirty") else "")
            rows.append([result.name, m.get("scale", MISSING), m.get("seed", MISSING), m.get("impl", MISSING),
                         m.get("threads", MISSING), commit, m.get("started_at", MISSING),
                         number_cell(m.get("wall_time_s")), _claims_tally(result.claims)])
        parts.append(table(["experiment", "scale", "seed", "impl", "threads", "commit", "started (UTC)",
                            "wall time (s)", "claims passed"], rows,
                           "Table 1. The experiments in this report, from their manifests.", text_columns=7))
        parts.append(_environment_table(data))
    else:
        parts.append(f'<p class="note">Experiments: {MISSING} — no stored results under '
                     f"<code>{esc(data.results_dir)}</code>.</p>")
    parts.append(_asv_machine_table(data))
    if data.pytest_benchmarks is not None:
        pb = data.pytest_benchmarks
        rows = [[r.file, r.name, number_cell(r.median_s), number_cell(r.iqr_s), number_cell(r.rounds), r.cpu,
                 str(r.commit)[:10]] for r in pb.itertuples()]
        parts.append(table(["file", "benchmark", "median (s)", "IQR (s)", "rounds", "CPU", "commit"], rows,
                           "pytest-benchmark micro suite (<code>make bench</code>).", text_columns=2))
    return "\n".join(parts)


def _environment_table(data: ReportData) -> str:
    """One column per distinct software/hardware environment among the experiments."""
    manifests = {name: result.manifest for name, result in data.experiments.items()}
    packages = sorted({p for m in manifests.values() for p in m.get("packages", {})})
    fields = list(ENVIRONMENT_FIELDS) + packages

    def value(m: dict, f: str) -> str:
        return str(m.get(f, m.get("packages", {}).get(f, MISSING)))

    groups: Dict[Tuple[str, ...], List[str]] = {}
    for name, m in manifests.items():
        groups.setdefault(tuple(value(m, f) for f in fields), []).append(name)
    header = ["field"] + [", ".join(names) for names in groups.values()]
    rows = [[f] + [values[i] for values in groups] for i, f in enumerate(fields)]
    return table(header, rows, "Table 2. Software and hardware of the experiment runs (one column per distinct "
                 "environment, headed by the experiments that ran in it).", text_columns=len(header))


def _asv_machine_table(data: ReportData) -> str:
    if data.asv is None:
        return (f'<p class="note">Benchmarks: {MISSING} — no asv results under <code>{esc(data.asv_dir)}</code>.</p>')
    rows = []
    for machine, group in data.asv.groupby("machine"):
        info = _machine_info(data.asv_dir, machine)
        devices = ", ".join(sorted(group.loc[group["value"].notna(), "device"].unique())) or "none"
        rows.append([machine, info.get("cpu", MISSING), info.get("num_cpu", MISSING), info.get("os", MISSING),
                     ", ".join(sorted(str(c)[:10] for c in group["commit"].unique())), devices,
                     number_cell(int(group["value"].notna().sum()))])
    return table(["asv machine", "CPU", "cores", "OS", "commit", "devices measured", "numbers"], rows,
                 "Table 3. Benchmark machines (asv's machine.json) and what they measured.", text_columns=6)


def _machine_info(asv_dir: Path, machine: str) -> dict:
    path = Path(asv_dir) / machine / "machine.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def with_baseline_ratio(asv: pd.DataFrame) -> pd.DataFrame:
    """Each number divided by MONAI's for the same measurement (module and method; the class may
    differ, e.g. Headline and HeadlineCompiled), machine, commit, dtype and shape: both were
    measured in the same asv run, so the ratio survives a noisy machine."""
    keys = ["module", "method", "machine", "commit", "dtype", "shape"]
    baseline = asv[(asv["implementation"] == BASELINE) & asv["value"].notna()].drop_duplicates(keys)
    baseline = baseline.set_index(keys)["value"].rename("baseline")
    out = asv.join(baseline, on=keys)
    out["ratio"] = out["value"] / out["baseline"]
    return out


def _device_label(data: ReportData, device: str, measured: pd.DataFrame) -> str:
    machines = sorted(measured.loc[measured["device"] == device, "machine"].unique())
    if device == "cpu":
        cpus = sorted({str(_machine_info(data.asv_dir, m).get("cpu") or m) for m in machines})
        return "CPU" + (f" ({', '.join(cpus)})" if cpus else "")
    return "GPU" + (f" ({', '.join(machines)})" if machines else "")


def _expected(attribute: str, fallback: Sequence[str]) -> List[str]:
    from benchmarks import common

    return list(getattr(common, attribute, fallback))


def _unit_scale(metric: str) -> Tuple[float, str]:
    return (1e3, "ms") if metric == "time" else (1 / 2**20, "MiB")


def measure_rows(ratios: pd.DataFrame, methods: Dict[str, str]) -> pd.DataFrame:
    """The rows of one measure: on each device, the benchmark method that measures it there."""
    chosen = [(ratios["device"] == device) & (ratios["method"] == method) for device, method in methods.items()]
    mask = pd.concat(chosen, axis=1).any(axis=1) & (ratios["module"] != SCALING_MODULE)
    return ratios[mask]


def measure_table(data: ReportData, ratios: pd.DataFrame, label: str, metric: str, methods: Dict[str, str], number: int) -> str:
    """Rows: shape x dtype. Per device (GPU beside CPU): MONAI's own number, then each other
    implementation's ratio to it. Devices, dtypes and combinations without numbers show as not measured."""
    scale, unit = _unit_scale(metric)
    rows_df = measure_rows(ratios, methods)
    measured = rows_df[rows_df["value"].notna()]
    others = [i for i in dict.fromkeys(rows_df["implementation"]) if i != BASELINE]
    dtypes = list(dict.fromkeys(_expected("DTYPES", []) + list(rows_df["dtype"])))
    # A device counts as measured when it has at least one number; then its failures show too.
    devices = [(d, rows_df[rows_df["device"] == d] if (measured["device"] == d).any() else rows_df.iloc[:0])
               for d in _expected("DEVICES", ["cpu", "cuda"])]
    missing = Cell(MISSING, css="missing")
    header, groups = ["shape", "dtype"], [("", 2)]
    for device, on_device in devices:
        name = _device_label(data, device, measured)
        if on_device.empty:
            header.append("all implementations")
            groups.append((name, 1))
        else:
            header += [f"{BASELINE} ({unit})"] + others
            groups.append((f"{name}: {BASELINE} in {unit}, others ÷ {BASELINE}", 1 + len(others)))
    rows = []
    for shape in dict.fromkeys(rows_df["shape"]):
        for dtype in dtypes:
            row = [shape, dtype]
            for device, on_device in devices:
                here = on_device[(on_device["shape"] == shape) & (on_device["dtype"] == dtype)].set_index("implementation")
                here = here[~here.index.duplicated(keep="last")]  # several machines of one kind: the last one
                if on_device.empty:
                    row.append(missing)
                    continue
                row.append(_result_cell(here, BASELINE, "value", scale))
                row += [_result_cell(here, i, "ratio") for i in others]
            rows.append(row)
    benchmarks = ", ".join(f"{d}: {m}" for d, m in methods.items())
    caption = (f"Table {number}. {esc(label)} ({esc(benchmarks)}). Shapes are N×C×spatial. Per device, MONAI's own "
               f"number, then each implementation's ratio to MONAI's on the same shape and dtype in the same run "
               f"(below 1 is better). “{SHORT_MISSING}”, “{MISSING}”: the combination did not run here (no such "
               f"device, a dtype or shape a peer does not take, or not part of this grid).")
    return table(header, rows, caption, text_columns=2, groups=groups)


def _result_cell(rows: pd.DataFrame, implementation: str, column: str, scale: float = 1.0) -> Cell:
    """A benchmark's number (short n/a when absent), or "failed" when asv recorded a failure."""
    if implementation in rows.index and rows.at[implementation, "status"] == "failed":
        return Cell("failed", css="fail")
    value = rows[column].get(implementation)
    return number_cell(None if value is None else value * scale, short=True)


def ratio_figure(ratios: pd.DataFrame, label: str, metric: str, methods: Dict[str, str], fig_dir: Path) -> Optional[Path]:
    """Bars of the CPU ratios to MONAI (log scale), grouped by shape and dtype."""
    from .plotting import plt, save_figure

    df = measure_rows(ratios, methods)
    df = df[(df["device"] == "cpu") & (df["implementation"] != BASELINE) & df["ratio"].notna()]
    if df.empty:
        return None
    df = df.assign(case=df["shape"] + "\n" + df["dtype"])
    pivot = df.pivot_table(index="case", columns="implementation", values="ratio", sort=False)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(pivot)), 4.2))
    pivot.plot.bar(ax=ax, logy=True, rot=0, width=0.8)
    ax.axhline(1, color="k", lw=1)
    ax.set_ylabel("ratio to MONAI (log scale)")
    ax.set_xlabel("shape (N×C×spatial), dtype")
    ax.set_title(f"CPU: {label}\nrelative to MONAI (below 1 is better)", fontsize=10)
    ax.legend(title="implementation", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # clear of the bars
    return save_figure(fig, fig_dir, "ratio_" + re.sub(r"\W+", "_", label).strip("_"))[0]


def scaling_figures(ratios: pd.DataFrame, fig_dir: Path) -> List[Tuple[Path, str]]:
    """Time and memory against size (log-log), one line per implementation, for each scaling
    series (a class of ``bench_scaling``) and each of its measurements."""
    from benchmarks.common import parse_shape

    from .plotting import plt, save_figure

    out = []
    measured = ratios[(ratios["module"] == SCALING_MODULE) & ratios["value"].notna()]
    for benchmark, group in measured.groupby("benchmark", sort=False):
        shapes = [parse_shape(s) for s in group["shape"]]
        by_classes = len({s[2:] for s in shapes}) == 1 and len({s[1] for s in shapes}) > 1
        x = [s[1] for s in shapes] if by_classes else list(group["voxels"])
        group = group.assign(x=x)
        metric = _metric(group)
        scale, unit = _unit_scale(metric)
        fig, ax = plt.subplots(figsize=(6.0, 4.2))
        for implementation, line in group.groupby("implementation", sort=False):
            line = line.sort_values("x")
            style = dict(ls="--", marker="s") if implementation == BASELINE else dict(marker="o")
            ax.plot(line["x"], line["value"] * scale, label=implementation, **style)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("classes C (log), fixed voxels" if by_classes else "logit elements N·C·voxels (log), C fixed")
        what = "time" if metric == "time" else "peak memory above inputs"
        ax.set_ylabel(f"{what} ({unit}, log)")
        ax.set_title(f"{benchmark.split('.')[1]}: {benchmark.rsplit('.', 1)[-1]} (CPU, float32)")
        ax.legend(fontsize=8)
        path = save_figure(fig, fig_dir, "scaling_" + benchmark.replace(".", "_"))[0]
        caption = (f"{esc(benchmark)}: {what} against {'the class count' if by_classes else 'problem size'}, log-log, "
                   "CPU, float32; a slope of 1 is linear growth. MONAI dashed.")
        out.append((path, caption))
    return out


def _metric(rows: pd.DataFrame) -> str:
    return "time" if rows["unit"].iloc[0] == "seconds" else "memory"


def _docstring_parts(module) -> Tuple[str, str]:
    """(title, description): the first two paragraphs of an experiment module's docstring."""
    paragraphs = [" ".join(p.split()) for p in (module.__doc__ or "").strip().split("\n\n")] + ["", ""]
    return paragraphs[0], paragraphs[1]


def _prose(text: str) -> str:
    """Docstring text as HTML: escaped, with ``literals`` as code."""
    return re.sub(r"``(.+?)``", r"<code>\1</code>", esc(text))


def experiment_block(result: ExperimentResult, fig_dir: Path, out_dir: Path, heading: bool = True) -> str:
    """One experiment: what it tests, how it ran, its figures (redrawn from the stored parquet) and claims."""
    from .experiments import EXPERIMENTS

    module = EXPERIMENTS.get(result.name)
    parts = []
    title, text = _docstring_parts(module) if module else (result.name, "")
    if heading:
        parts.append(f'<h3 id="exp-{esc(result.name)}">{_prose(title or result.name)}</h3>')
    elif title:
        parts.append(f"<p><b>{_prose(title)}</b></p>")
    if text:
        parts.append(f"<p>{_prose(text)}</p>")
    m = result.manifest
    where = f"Dask cluster {m['scheduler']}" if m.get("scheduler") else f"{m.get('workers', MISSING)} local worker(s)"
    parts.append(f"<p>Scale <b>{esc(m.get('scale', MISSING))}</b>, seed {esc(m.get('seed', MISSING))}, "
                 f"implementation <code>{esc(m.get('impl', MISSING))}</code>, {esc(m.get('tasks', MISSING))} tasks on "
                 f"{esc(where)}, {len(result.df)} stored rows, wall time {esc(format_number(m.get('wall_time_s')))} s. "
                 f"Claims: {esc(claims_summary(result.claims))}.</p>")
    if module is not None and hasattr(module, "figures"):
        paths = module.figures(result.df, fig_dir / result.name) or []
        for path in (Path(p) for p in paths):
            if path.suffix == ".png":
                parts.append(figure(path.relative_to(out_dir).as_posix(),
                                    f"{esc(result.name)}: {esc(path.stem.replace('_', ' '))} (redrawn from results.parquet)."))
    else:
        parts.append(f'<p class="note">Figures: {MISSING} — no figure code registered for {esc(result.name)}.</p>')
    parts.append(claims_table(result.claims, f"Claims of {esc(result.name)}, each computed from the stored data "
                              "with its threshold fixed in code beforehand."))
    return "\n".join(parts)


def section_implementations(data: ReportData, ratios: Optional[pd.DataFrame], fig_dir: Path, out_dir: Path) -> str:
    parts = ["<p>Every implementation (ours and the peers: MONAI, kornia, and <code>torch.compile</code> of our "
             "vectorized loss) computes the same loss — softmax, one Dice per image and class, background included "
             "(<code>DiceSpec.preset(\"monai\")</code>) — on the same seeded inputs, in one asv run. Each table "
             "gives one measure per device: the number itself and its ratio to MONAI's, so that the noise of a "
             "shared machine, which moves both, largely cancels. GPU numbers stand beside the CPU ones.</p>"]
    if ratios is None:
        return "\n".join(parts + [f'<p class="note">{MISSING}: no asv results under <code>{esc(data.asv_dir)}</code>; '
                                  "run <code>dicebench run</code>.</p>", targets_block(data)])
    shown = set()
    for number, (label, metric, methods) in enumerate(MEASURES, start=4):
        rows = measure_rows(ratios, methods)
        shown.update(rows["benchmark"])
        parts.append(f"<h3>{esc(label[0].upper() + label[1:])}</h3>")
        if rows.empty:
            parts.append(f'<p class="note">{MISSING}: no benchmark measured it.</p>')
            continue
        parts.append(measure_table(data, ratios, label, metric, methods, number))
        path = ratio_figure(ratios, label, metric, methods, fig_dir)
        if path is not None:
            parts.append(figure(path.relative_to(out_dir).as_posix(),
                                f"{esc(label)} on CPU relative to MONAI, log scale; the black line is parity."))
    parts.append(targets_block(data))
    others = sorted(set(ratios.loc[ratios["module"] != SCALING_MODULE, "benchmark"]) - shown)
    if others:
        parts.append("<p>Other benchmarks in these results (see asv's own pages): " + ", ".join(esc(o) for o in others) + ".</p>")
    return "\n".join(parts)


def targets_block(data: ReportData) -> str:
    """The fused path at issue 3's shapes: speed-up over MONAI, its floor, memory, accuracy."""
    heading = "<h3>The fused path against MONAI and against its floor</h3>"
    if data.targets is None:
        return heading + (f'<p class="note">{MISSING}: no results of <code>python -m benchmarks.targets</code> '
                          f"(expected at <code>{esc(DEFAULT_TARGETS)}</code>).</p>")
    t, m = data.targets, data.targets.get("machine", {})
    memory = {(r["shape"], r["impl"]): r for r in t.get("memory", [])}
    rows = []
    for r in t.get("speed", []):
        peak = memory.get((r["shape"], r["impl"]), {})
        rows.append([r["shape"], r["impl"], number_cell(r["seconds"] * 1e3), number_cell(r["vs_monai"]),
                     number_cell(r["floor_s"] * 1e3), number_cell(r["floor_ratio"]), number_cell(peak.get("x_logits"))])
    text = (f"<p>From <code>{esc(data.targets_path)}</code> (<code>python -m benchmarks.targets</code>; CPU "
            f"{esc(m.get('cpu', MISSING))}, {esc(m.get('threads', MISSING))} threads, torch {esc(m.get('torch', MISSING))}). "
            "The floor of forward+backward is the larger of two times: reading logits and labels twice and writing "
            "the gradient once at the measured bandwidth, and one exp per logit per pass at the measured exp rate. "
            "GPU: n/a — not measured.</p>")
    speed = table(["shape", "implementation", "time (ms)", "speed-up over MONAI", "floor (ms)", "time / floor",
                   "peak memory / logits"], rows,
                  "Forward+backward in float32, medians of interleaved repetitions. Time / floor is how many times "
                  "slower than the hardware limit a path runs (1 = at the floor; below 1 means the floor itself was "
                  "measured low, e.g. on a busy machine). Peak memory is the growth of the peak resident set during "
                  "one call, in logits' sizes.", text_columns=2)
    accuracy = table(["dtype", "voxels", "loss relative error", "gradient-norm relative error", "target", "met"],
                     [[r["dtype"], number_cell(r["voxels"]), number_cell(r["loss_error"]), number_cell(r.get("grad_norm_error")),
                       number_cell(r["target"]), Cell("yes", css="pass") if r["met"] else Cell("no", css="fail")]
                      for r in t.get("accuracy", [])],
                     "Accuracy of fused against float64 sums at the largest size.", text_columns=1)
    return heading + text + speed + accuracy


def section_scaling(data: ReportData, ratios: Optional[pd.DataFrame], fig_dir: Path, out_dir: Path) -> str:
    intro = ("<p>How time and memory grow with the number of logit elements, one line per implementation "
             "(MONAI dashed). Memory that grows faster than the inputs reveals stored intermediates "
             "(one-hot targets, probabilities).</p>")
    if ratios is None:
        return intro + f'<p class="note">{MISSING}: no asv results.</p>'
    figures = scaling_figures(ratios, fig_dir)
    if not figures:
        return intro + f'<p class="note">{MISSING}: no benchmark was measured at three or more sizes.</p>'
    return intro + "\n".join(figure(p.relative_to(out_dir).as_posix(), c, width=560) for p, c in figures)


def precision_table(df: pd.DataFrame) -> str:
    """Per implementation and dtype: the worst finite relative error, the error at the largest
    size, and the first size whose statistics were inf/NaN."""
    rows = []
    for (impl, dtype), group in df.groupby(["impl", "dtype"], sort=False):
        finite = group[group["finite"]]
        largest = group.loc[group["voxels"].idxmax()]
        broken = group.loc[~group["finite"], "voxels"]
        rows.append([impl, dtype, number_cell(finite["rel_error"].max() if len(finite) else None),
                     number_cell(largest["voxels"]),
                     number_cell(largest["rel_error"]) if largest["finite"] else Cell("inf/NaN", css="fail"),
                     number_cell(broken.min()) if len(broken) else Cell("never")])
    return table(["implementation", "dtype", "worst finite relative error", "largest voxels",
                  "relative error there", "first inf/NaN at voxels"], rows,
                 "Relative error of the loss against the float64 oracle on the same rounded inputs, per "
                 "implementation and input dtype, from the stored results of P1.", text_columns=2)


def section_precision(data: ReportData, fig_dir: Path, out_dir: Path) -> str:
    result = data.experiments.get(PRECISION_EXPERIMENT)
    if result is None:
        return (f'<p class="note">{MISSING}: no stored results for {PRECISION_EXPERIMENT} under '
                f"<code>{esc(data.results_dir)}</code>.</p>")
    summary = ""
    if {"impl", "dtype", "voxels", "rel_error", "finite"} <= set(result.df.columns):
        summary = precision_table(result.df)
    return summary + experiment_block(result, fig_dir, out_dir, heading=False)


def section_experiments(data: ReportData, fig_dir: Path, out_dir: Path) -> str:
    from .experiments import EXPERIMENTS

    others = [r for n, r in data.experiments.items() if n != PRECISION_EXPERIMENT]
    parts = ["<p>Seeded synthetic experiments on a controlled foreground/background imbalance. Each one stores "
             "its raw measurements; its figures are redrawn here from them, and its claims are computed from them. "
             "A claim is either a <b>verification</b> (an identity, a precision or exactness bound: it must PASS, "
             "and a FAIL is a bug) or a <b>hypothesis</b> from the literature, with its source and threshold fixed "
             "in code before the data were seen. A hypothesis is SUPPORTED only when its value and its whole 95% "
             "confidence interval lie on the stated side of the threshold, and FAILED otherwise; a FAILED "
             "hypothesis is a finding, shown as it came out. Its stage says whether it was measured after a fixed "
             "training budget or at convergence.</p>"]
    every = [c for r in data.experiments.values() for c in r.claims]
    if every:
        parts.append(f"<p><b>All stored experiments ({len(data.experiments)}): {esc(claims_summary(every))}.</b></p>")
    if others:
        rows = []
        for r in others:
            kinds = {kind: [c for c in r.claims if c["kind"] == kind] for kind in ("verification", "hypothesis")}
            failed = sum(not c["passed"] for c in kinds["hypothesis"])
            rows.append([r.name, _docstring_parts(EXPERIMENTS[r.name])[0] if r.name in EXPERIMENTS else "",
                         f"{sum(c['passed'] for c in kinds['verification'])}/{len(kinds['verification'])}",
                         f"{len(kinds['hypothesis']) - failed}/{len(kinds['hypothesis'])}",
                         Cell(str(failed), css="fail") if failed else Cell("0")])
        parts.append(table(["experiment", "question", "verifications passed", "hypotheses supported",
                            "hypotheses FAILED"], rows, "Overview of the experiments.", text_columns=2))
    missing = [n for n in EXPERIMENTS if n not in data.experiments and n != PRECISION_EXPERIMENT]
    if missing:
        parts.append(f'<p class="note">{MISSING}: ' + ", ".join(esc(n) for n in missing) + " (no stored results).</p>")
    parts.extend(experiment_block(r, fig_dir, out_dir) for r in others)
    return "\n".join(parts)


def section_reproduce(data: ReportData) -> str:
    parts = ["<p>From a fresh clone, <code>make report</code> installs everything and runs <code>dicebench run</code>: "
             "the CPU asv grid, every experiment, and this page. Each number can also be reproduced on its own, at the "
             "commit it was measured at (given with each command):</p>"]
    for result in data.experiments.values():
        m = result.manifest
        parts.append(f"<p>{esc(result.name)} (commit {esc(str(m.get('git_commit', 'unknown'))[:10])}"
                     f"{', uncommitted changes' if m.get('git_dirty') else ''}):</p>")
        parts.append(code(f"dicebench experiment {result.name} --scale {m.get('scale', 'small')} --seed {m.get('seed', 0)} "
                          f"--impl {m.get('impl', 'vectorized')} --out {data.results_dir}"))
    if data.asv is not None:
        from benchmarks.common import ASV_CPU_GRID

        for commit in sorted(data.asv["commit"].unique()):
            parts.append(f"<p>The CPU benchmark grid (asv, commit {esc(str(commit)[:10])}; results go to asv.conf.json's "
                         "<code>results_dir</code>), then asv's own HTML:</p>")
            parts.append(code(f"git checkout {commit}\nasv machine --yes\nasv run --python=same --set-commit-hash {commit} "
                              f"--launch-method=forkserver --bench '{ASV_CPU_GRID}'\nasv publish"))
    if data.targets is not None:
        parts.append("<p>The fused path's targets (speed-up, floor, memory, accuracy):</p>")
        parts.append(code(f"python -m benchmarks.targets --out {data.targets_path}"))
    parts.append("<p>This page, from the stored results:</p>")
    parts.append(code(f"dicebench report --results {data.results_dir} --asv-results {data.asv_dir} --out reports"))
    parts.append("<p>Two runs (two machines or two commits) compared number by number; exit status 1 when "
                 "something moved beyond the tolerance:</p>")
    parts.append(code("dicebench compare RUN_A RUN_B --rtol 1e-3 --time-rtol 0.25"))
    return "\n".join(parts)


def _median_ratios(ratios: pd.DataFrame, methods: Dict[str, str]) -> str:
    """``impl median (min–max)`` of the CPU ratios to MONAI of one measure, best first."""
    rows = measure_rows(ratios, methods)
    rows = rows[(rows["device"] == "cpu") & (rows["implementation"] != BASELINE) & rows["ratio"].notna()]
    stats = rows.groupby("implementation")["ratio"].agg(["median", "min", "max", "count"]).sort_values("median")
    return "; ".join(f"{impl} {format_number(r['median'])} ({format_number(r['min'])}–{format_number(r['max'])}, "
                     f"{int(r['count'])} cases)" for impl, r in stats.iterrows())


def headline(data: ReportData, ratios: Optional[pd.DataFrame]) -> str:
    """The findings at a glance, each computed from the stored results shown below."""
    claims = [(r.name, c) for r in data.experiments.values() for c in r.claims]
    failed = [c["id"] for _, c in claims if not c["passed"]]
    items = [f"{len(data.experiments)} experiments stored; {len(claims) - len(failed)}/{len(claims)} claims passed"
             + (f" (failed: {', '.join(failed)})" if failed else "") + "."]
    if ratios is not None:
        for label, metric, methods in MEASURES[:1] + MEASURES[2:3]:
            summary = _median_ratios(ratios, methods)
            if summary:
                items.append(f"CPU {label} as a ratio to MONAI, median (range) over shapes and dtypes, lower is "
                             f"better: {summary}.")
        gpu = ratios[(ratios["device"] == "cuda") & ratios["value"].notna()]
        items.append("GPU: " + (f"{len(gpu)} numbers measured." if len(gpu) else f"{MISSING} (no GPU results in this run)."))
    else:
        items.append(f"Benchmarks: {MISSING}.")
    precision = data.experiments.get(PRECISION_EXPERIMENT)
    if precision is not None and {"impl", "dtype", "voxels", "rel_error", "finite"} <= set(precision.df.columns):
        df = precision.df
        broken = df[~df["finite"]].groupby(["impl", "dtype"])["voxels"].min()
        sound = df[~df["impl"].isin({i for i, _ in broken.index})]
        text = "; ".join(f"{i} in {d} from {format_number(v)} voxels" for (i, d), v in broken.items()) or "none"
        items.append(f"Precision (P1, up to {format_number(df['voxels'].max())} voxels): inf/NaN statistics: {text}. "
                     f"Worst relative error of the others ({', '.join(dict.fromkeys(sound['impl']))}): "
                     f"{format_number(sound['rel_error'].max())}.")
    return "<ul>" + "".join(f"<li>{esc(item)}</li>" for item in items) + "</ul>"


def write_report(data: ReportData, out_dir: Path, comparison_html: Optional[str] = None) -> Path:
    """Write ``<out_dir>/index.html`` and its figures (``<out_dir>/figures/``); return the page's path."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    if fig_dir.exists():
        shutil.rmtree(fig_dir)  # figures are redrawn every time; stale ones must not linger
    fig_dir.mkdir(parents=True)
    ratios = with_baseline_ratio(data.asv) if data.asv is not None else None
    bodies = {
        "run": section_run(data),
        "implementations": section_implementations(data, ratios, fig_dir, out_dir),
        "scaling": section_scaling(data, ratios, fig_dir, out_dir),
        "precision": section_precision(data, fig_dir, out_dir),
        "experiments": section_experiments(data, fig_dir, out_dir),
        "reproduce": section_reproduce(data),
    }
    sections = [(sid, title, bodies[sid]) for sid, title in SECTIONS]
    if comparison_html is not None:
        sections.append((*COMPARISON_SECTION, comparison_html))
    index = out_dir / "index.html"
    index.write_text(page("dicebench: soft Dice loss — results", headline(data, ratios), sections), encoding="utf-8")
    return index


DESCRIPTION = "Write the HTML report (index.html + figures) from stored results."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="experiments' results folder")
    parser.add_argument("--asv-results", type=Path, default=DEFAULT_ASV_RESULTS, help="asv's results folder")
    parser.add_argument("--bench-json", type=Path, action="append", default=[],
                        help=f"pytest-benchmark JSON, repeatable (default: {DEFAULT_BENCH_JSON} when present)")
    parser.add_argument("--targets", type=Path, default=DEFAULT_TARGETS, help="benchmarks/targets.py JSON")
    parser.add_argument("--compare", type=Path, help="another run folder to compare these results with")
    parser.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance of the comparison")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default: reports/)")


def main(args: argparse.Namespace) -> int:
    # Absent measurements show as n/a on the page; a path that does not exist is a typo, not a result.
    for option, path in [("--results", args.results), ("--asv-results", args.asv_results), ("--targets", args.targets),
                         ("--compare", args.compare), *(("--bench-json", p) for p in args.bench_json)]:
        if path is not None and not path.exists():
            raise UsageError(f"{option} {path} does not exist")
    bench_json = args.bench_json or [p for p in (DEFAULT_BENCH_JSON,) if p.is_file()]
    data = collect(args.results, args.asv_results, bench_json, args.targets)
    comparison_html = None
    if args.compare is not None:
        from .compare import RunPaths, compare_runs, comparison_to_html

        this_run = RunPaths(args.results if args.results.is_dir() else None,
                            args.asv_results if args.asv_results.is_dir() else None)
        comparison_html = comparison_to_html(compare_runs(args.compare, this_run, rtol=args.rtol))
    index = write_report(data, args.out, comparison_html)
    print(f"report written to {index}")
    return 0
