"""``dicebench report``: the results as one static HTML page, read from the stored results alone.

Inputs (each optional; what is absent is shown as "n/a — not measured", never dropped):

- experiments: ``<results>/<name>/results.parquet``, ``claims.json``, ``manifest.json``
  (``analysis.storage``); figures are redrawn from the parquet by each experiment's ``figures``;
- asv: the stored results folder (default the curated ``results/asv``), which the "At a glance"
  block and the tables read, and optionally a fresh run's folder (``dicebench run`` passes its
  ``reports/asv``), shown beside it and compared with it (``analysis.benchmark_report``);
- pytest-benchmark JSON files (``make bench``);
- a comparison with another run folder (``analysis.compare``).

The page is rendered from the jinja2 templates in ``analysis/templates`` (``report_template``).
By default it is one self-contained file, its figures embedded as data URIs; with
``inline_figures=False`` they are PNG files in ``figures/`` beside it. Either way it loads nothing
else and opens from the file system, offline.
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

from . import benchmark_report as asv_page
from .benchmark_report import MISSING, SHORT_MISSING, display_path
from .errors import UsageError
from .report_template import Cell, code, esc, figure, inline_images, page, table

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = REPO / "results" / "experiments"
DEFAULT_ASV_RESULTS = REPO / "results" / "asv"
# benchmarks/targets.py's output: the fused path against MONAI and its physical floor.
DEFAULT_TARGETS = REPO / "results" / "fused" / "targets_cpu.json"
# `make bench` (pytest-benchmark) writes here; the report includes it when present.
DEFAULT_BENCH_JSON = REPO / "reports" / "bench.json"
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
    fresh_asv_dir: Optional[Path] = None
    experiments: Dict[str, ExperimentResult] = field(default_factory=dict)
    asv: Optional[pd.DataFrame] = None  # stored and fresh runs, told apart by ``origin`` and ``run``
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
    return f"{value:.3g}"


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
            bench_json: Sequence[Path] = (), targets: Optional[Path] = DEFAULT_TARGETS,
            fresh_asv_dir: Optional[Path] = None) -> ReportData:
    """Load everything the page shows. ``asv_dir``: the stored asv results the headline is built
    from; ``fresh_asv_dir``: a new run's, shown as a comparison against them."""
    data = ReportData(Path(results_dir), Path(asv_dir), Path(fresh_asv_dir) if fresh_asv_dir else None)
    data.experiments = load_experiments(data.results_dir)
    frames = [asv_page.load_benchmarks(folder, origin, display_path(folder, REPO))
              for folder, origin in ((data.asv_dir, asv_page.STORED), (data.fresh_asv_dir, asv_page.FRESH)) if folder]
    frames = [f for f in frames if f is not None]
    data.asv = pd.concat(frames, ignore_index=True) if frames else None
    data.pytest_benchmarks = load_pytest_benchmarks(bench_json)
    if targets is not None and Path(targets).is_file():
        data.targets_path, data.targets = Path(targets), json.loads(Path(targets).read_text())
    return data


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
    folders = " and, as this run, ".join(f"<code>{esc(display_path(d, REPO))}</code>"
                                         for d in (data.asv_dir, data.fresh_asv_dir) if d)
    parts = [f"<p>Experiments were read from <code>{esc(display_path(data.results_dir, REPO))}</code> and benchmarks "
             f"from {folders}. Each experiment's manifest records its scale, seed, "
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
                     f"<code>{esc(display_path(data.results_dir, REPO))}</code>.</p>")
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
        return (f'<p class="note">Benchmarks: {MISSING} — no asv results under '
                f"<code>{esc(display_path(data.asv_dir, REPO))}</code>.</p>")
    rows = []
    folders = {asv_page.STORED: data.asv_dir, asv_page.FRESH: data.fresh_asv_dir}
    for (origin, run, machine), group in data.asv.groupby(["origin", "run", "machine"], sort=False):
        info = asv_page.machine_info(folders[origin], machine)
        newest = group[group["latest"]]
        devices = ", ".join(sorted(newest.loc[newest["value"].notna(), "device"].unique())) or "none"
        rows.append([origin, run, info.get("cpu", MISSING), info.get("num_cpu", MISSING), info.get("ram", MISSING),
                     str(newest["commit"].iloc[0])[:8], number_cell(group["commit"].nunique()),
                     asv_page.environment_label(newest["env"].iloc[0]),
                     devices, number_cell(int(newest["value"].notna().sum())),
                     number_cell(int((newest["unstable"]).sum()))])
    return table(["origin", "asv run (machine · folder)", "CPU", "cores", "RAM", "newest commit", "commits stored",
                  "environment", "devices measured", "numbers", "unstable timings"], rows,
                 "Table 3. Benchmark runs (asv's machine.json): every table and figure below keeps them apart. "
                 "“stored”: the results the headline is built from; “this run”: a fresh run compared with them.",
                 text_columns=9)


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
             "gives one measure per device and run: the number itself and its ratio to MONAI's, so that the noise of a "
             "shared machine, which moves both, largely cancels. Runs of different machines or results folders "
             "stand side by side, never merged.</p>"]
    if ratios is None:
        return "\n".join(parts + [f'<p class="note">{MISSING}: no asv results under '
                                  f"<code>{esc(display_path(data.asv_dir, REPO))}</code>; run <code>dicebench run</code>.</p>",
                                  targets_block(data)])
    shown = set()
    for number, (label, metric, methods) in enumerate(asv_page.MEASURES, start=4):
        rows = asv_page.measure_rows(ratios, methods)
        shown.update(rows["benchmark"])
        parts.append(f"<h3>{esc(label[0].upper() + label[1:])}</h3>")
        if rows.empty:
            parts.append(f'<p class="note">{MISSING}: no benchmark measured it.</p>')
            continue
        parts.append(asv_page.measure_table(ratios, label, metric, methods, number))
        parts.append(asv_page.figure_html(asv_page.ratio_figure(ratios, label, methods, fig_dir), out_dir))
    parts.append(targets_block(data))
    history = asv_page.history_figures(ratios, fig_dir)
    parts.append("<h3>History over commits</h3>")
    parts.append(asv_page.figure_html(history, out_dir) if history else
                 '<p class="note">Every run here holds one commit: no history to draw (<code>make asv-range</code> '
                 "benchmarks a range of commits).</p>")
    others = sorted(set(ratios.loc[ratios["module"] != asv_page.SCALING_MODULE, "benchmark"]) - shown)
    if others:
        parts.append("<p>Other benchmarks in these results (see asv's own pages): " + ", ".join(esc(o) for o in others) + ".</p>")
    return "\n".join(parts)


def targets_block(data: ReportData) -> str:
    """The fused path at its target shapes: speed-up over MONAI, its floor, memory, accuracy."""
    heading = "<h3>The fused path against MONAI and against its floor</h3>"
    if data.targets is None:
        return heading + (f'<p class="note">{MISSING}: no results of <code>python -m benchmarks.targets</code> '
                          f"(expected at <code>{esc(display_path(DEFAULT_TARGETS, REPO))}</code>).</p>")
    t, m = data.targets, data.targets.get("machine", {})
    memory = {(r["shape"], r["impl"]): r for r in t.get("memory", [])}
    rows = []
    for r in t.get("speed", []):
        peak = memory.get((r["shape"], r["impl"]), {})
        rows.append([r["shape"], r["impl"], number_cell(r["seconds"] * 1e3), number_cell(r["vs_monai"]),
                     number_cell(r["floor_s"] * 1e3), number_cell(r["floor_ratio"]), number_cell(peak.get("x_logits"))])
    text = (f"<p>From <code>{esc(display_path(data.targets_path, REPO))}</code> (<code>python -m benchmarks.targets</code>; CPU "
            f"{esc(m.get('cpu', MISSING))}, {esc(m.get('threads', MISSING))} threads, torch {esc(m.get('torch', MISSING))}). "
            "The floor of forward+backward is reading logits and labels twice and writing the gradient once at the "
            "read bandwidth measured in the same interleaved rounds. Rows ending in _dice_ce are Dice + cross-entropy "
            "(their speed-up is still over MONAI's DiceLoss; docs/performance.md has the ratio over DiceCELoss). "
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
             "(MONAI dashed), one figure per run. Memory that grows faster than the inputs reveals stored "
             "intermediates (one-hot targets, probabilities). Points that cannot be read at face value are circled "
             "and explained under each figure.</p>")
    if ratios is None:
        return intro + f'<p class="note">{MISSING}: no asv results.</p>'
    figures = asv_page.scaling_figures(ratios, fig_dir)
    if not figures:
        return intro + f'<p class="note">{MISSING}: no benchmark was measured at three or more sizes.</p>'
    return intro + asv_page.figure_html(figures, out_dir, width=620)


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
                f"<code>{esc(display_path(data.results_dir, REPO))}</code>.</p>")
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
             "the CPU asv grid in this environment (results in <code>reports/asv</code>), every experiment, and this "
             "page, which compares the fresh numbers with the curated ones. Each number can also be reproduced on its "
             "own, at the commit it was measured at (given with each command):</p>"]
    results = display_path(data.results_dir, REPO)
    for result in data.experiments.values():
        m = result.manifest
        parts.append(f"<p>{esc(result.name)} (commit {esc(str(m.get('git_commit', 'unknown'))[:10])}"
                     f"{', uncommitted changes' if m.get('git_dirty') else ''}):</p>")
        parts.append(code(f"dicebench experiment {result.name} --scale {m.get('scale', 'small')} --seed {m.get('seed', 0)} "
                          f"--impl {m.get('impl', 'vectorized')} --out {results}"))
    if data.asv is not None:
        for commit in sorted(data.asv.loc[data.asv["latest"], "commit"].unique()):
            parts.append(f"<p>The CPU benchmark grid at commit {esc(str(commit)[:10])}, in an environment asv builds for "
                         "it (results in <code>reports/asv</code>, asv's HTML in <code>reports/asv-html</code>):</p>")
            parts.append(code(f"git checkout {commit}\nmake asv"))
        parts.append("<p>A timing regression check between two commits (on a quiet machine):</p>")
        parts.append(code("make asv-continuous BASE=HEAD~1 FACTOR=1.2"))
    if data.targets is not None:
        parts.append("<p>The fused path's targets (speed-up, floor, memory, accuracy):</p>")
        parts.append(code(f"python -m benchmarks.targets --out {display_path(data.targets_path, REPO)}"))
    parts.append("<p>This page, from the stored results:</p>")
    parts.append(code(f"dicebench report --results {results} --asv-results {display_path(data.asv_dir, REPO)} --out reports"))
    parts.append("<p>Two runs (two machines or two commits) compared number by number; exit status 1 when "
                 "something moved beyond the tolerance:</p>")
    parts.append(code("dicebench compare RUN_A RUN_B --rtol 1e-3 --time-rtol 0.25"))
    return "\n".join(parts)


def headline(data: ReportData, ratios: Optional[pd.DataFrame]) -> str:
    """The "At a glance" block: the findings, each computed from the stored results shown below;
    the benchmark headline per stored machine with its interval, and a fresh run against it."""
    claims = [(r.name, c) for r in data.experiments.values() for c in r.claims]
    failed = [c["id"] for _, c in claims if not c["passed"]]
    items = [f"{len(data.experiments)} experiments stored; {len(claims) - len(failed)}/{len(claims)} claims passed"
             + (f" (failed: {', '.join(failed)})" if failed else "") + "."]
    tables = []
    if ratios is not None:
        items += asv_page.headline_sentences(ratios)
        gpu = ratios[(ratios["device"] == "cuda") & ratios["value"].notna()]
        items.append("GPU: " + (f"{len(gpu)} numbers measured." if len(gpu) else f"{MISSING} (no GPU results in these runs)."))
        tables += asv_page.glance_tables(ratios)
        fresh = asv_page.fresh_comparison(ratios)
        if fresh:
            tables.append("<h3>This run against the stored results</h3>")
            tables += fresh
        elif data.fresh_asv_dir is not None:
            tables.append(f'<p class="note">This run: {MISSING} — no headline benchmark in '
                          f"<code>{esc(display_path(data.fresh_asv_dir, REPO))}</code>.</p>")
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
    return "<ul>" + "".join(f"<li>{esc(item)}</li>" for item in items) + "</ul>\n" + "\n".join(tables)


def write_report(data: ReportData, out_dir: Path, comparison_html: Optional[str] = None,
                 inline_figures: bool = True) -> Path:
    """Write ``<out_dir>/index.html``; return its path. ``inline_figures``: one self-contained file
    (figures as data URIs); otherwise the figures stay beside it in ``<out_dir>/figures/``."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    if fig_dir.exists():
        shutil.rmtree(fig_dir)  # figures are redrawn every time; stale ones must not linger
    fig_dir.mkdir(parents=True)
    ratios = asv_page.with_baseline_ratio(data.asv) if data.asv is not None else None
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
    document = page("dicebench: soft Dice loss — results", headline(data, ratios), sections)
    if inline_figures:
        document = inline_images(document, out_dir)
        shutil.rmtree(fig_dir)
    index = out_dir / "index.html"
    index.write_text(document, encoding="utf-8")
    return index


DESCRIPTION = "Write the HTML report (one self-contained index.html) from stored results."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="experiments' results folder")
    parser.add_argument("--asv-results", type=Path, default=DEFAULT_ASV_RESULTS, help="asv's results folder")
    parser.add_argument("--bench-json", type=Path, action="append", default=[],
                        help=f"pytest-benchmark JSON, repeatable (default: {DEFAULT_BENCH_JSON} when present)")
    parser.add_argument("--targets", type=Path, default=DEFAULT_TARGETS, help="benchmarks/targets.py JSON")
    parser.add_argument("--compare", type=Path, help="another run folder to compare these results with")
    parser.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance of the comparison")
    parser.add_argument("--fresh-asv-results", type=Path, help="a new run's asv folder, compared with --asv-results")
    parser.add_argument("--figure-files", action="store_true", help="write the figures beside the page, not inline")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default: reports/)")


def main(args: argparse.Namespace) -> int:
    # Absent measurements show as n/a on the page; a path that does not exist is a typo, not a result.
    for option, path in [("--results", args.results), ("--asv-results", args.asv_results), ("--targets", args.targets),
                         ("--compare", args.compare), ("--fresh-asv-results", args.fresh_asv_results),
                         *(("--bench-json", p) for p in args.bench_json)]:
        if path is not None and not path.exists():
            raise UsageError(f"{option} {path} does not exist")
    bench_json = args.bench_json or [p for p in (DEFAULT_BENCH_JSON,) if p.is_file()]
    data = collect(args.results, args.asv_results, bench_json, args.targets, args.fresh_asv_results)
    comparison_html = None
    if args.compare is not None:
        from .compare import RunPaths, compare_runs, comparison_to_html

        this_run = RunPaths(args.results if args.results.is_dir() else None,
                            args.asv_results if args.asv_results.is_dir() else None)
        comparison_html = comparison_to_html(compare_runs(args.compare, this_run, rtol=args.rtol))
    index = write_report(data, args.out, comparison_html, inline_figures=not args.figure_files)
    print(f"report written to {index}")
    return 0
