"""``dicebench report``: the results as one static HTML page, read from the stored results alone.

Inputs (each optional; what is absent is shown as "n/a — not measured", never dropped):

- experiments: ``<results>/<name>/results.parquet``, ``claims.json``, ``manifest.json``
  (``analysis.storage``); figures are redrawn from the parquet by each experiment's ``figures``;
- asv: the stored results folder (default the curated ``results/asv``), which the first screen
  and the tables read, and optionally a fresh run's folder (``dicebench run`` passes its
  ``reports/asv``), shown beside it and compared with it (``analysis.benchmark_report``);
- the fused path's targets (``benchmarks/targets.py``) and pytest-benchmark JSON files (``make bench``);
- a comparison with another run folder (``analysis.compare``).

This module collects and shapes the data; each section's prose and markup is a jinja2 template in
``analysis/templates`` (``section_<id>.html.j2``, the first screen ``glance.html.j2``), rendered by
``report_template``. By default the page is one self-contained file, its figures embedded as data
URIs; with ``inline_figures=False`` they are PNG files in ``figures/`` beside it. Either way it
loads nothing else and opens from the file system, offline.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import pandas as pd
from markupsafe import Markup

from . import benchmark_report
from .benchmark_report import display_path
from .errors import UsageError
from .report_template import (MISSING, SHORT_MISSING, Cell, figure, format_number, inline_images, page, render, table)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = REPO / "results" / "experiments"
DEFAULT_ASV_RESULTS = REPO / "results" / "asv"
# benchmarks/targets.py's output: the fused path against MONAI and its physical floor.
DEFAULT_TARGETS = REPO / "results" / "fused" / "targets_cpu.json"
# `make audit-peers` (analysis.peer_audits): what each installed peer's Dice loss computes.
DEFAULT_AUDITS = REPO / "results" / "audit" / "peers.json"
# `make bench` (pytest-benchmark) writes here; the report includes it when present.
DEFAULT_BENCH_JSON = REPO / "reports" / "bench.json"
PRECISION_EXPERIMENT = "p1_precision"
# The report's sections, in order: (id, title). Tests check that each one is present.
SECTIONS = (
    ("run", "What was run, and on what"),
    ("implementations", "Implementations compared with MONAI"),
    ("scaling", "Scaling with problem size"),
    ("precision", "Precision in half precision (P1)"),
    ("audit", "What each peer's Dice computes"),
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
    audits_path: Path = DEFAULT_AUDITS
    audits: Optional[pd.DataFrame] = None  # analysis.peer_audits.load_peer_audits: one row per peer
    audits_skipped: List[dict] = field(default_factory=list)


def number_cell(value: object, short: bool = False) -> Cell:
    """A stored number; None/NaN shows as not measured (``short``: "n/a", for dense tables)."""
    if value is None or (isinstance(value, float) and value != value):
        return Cell(SHORT_MISSING if short else MISSING, css="missing")
    return Cell(format_number(value), value=float(value))


def shown(path: Path) -> str:
    """A path as the page prints it (never the absolute paths of the machine that wrote it)."""
    return display_path(path, REPO)


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
            fresh_asv_dir: Optional[Path] = None, audits: Path = DEFAULT_AUDITS) -> ReportData:
    """Load everything the page shows. ``asv_dir``: the stored asv results the headline is built
    from; ``fresh_asv_dir``: a new run's, shown as a comparison against them."""
    data = ReportData(Path(results_dir), Path(asv_dir), Path(fresh_asv_dir) if fresh_asv_dir else None)
    data.experiments = load_experiments(data.results_dir)
    frames = [benchmark_report.load_benchmarks(folder, origin, shown(folder))
              for folder, origin in ((data.asv_dir, benchmark_report.STORED), (data.fresh_asv_dir, benchmark_report.FRESH)) if folder]
    frames = [f for f in frames if f is not None]
    data.asv = pd.concat(frames, ignore_index=True) if frames else None
    data.pytest_benchmarks = load_pytest_benchmarks(bench_json)
    if targets is not None and Path(targets).is_file():
        data.targets_path, data.targets = Path(targets), json.loads(Path(targets).read_text())
    if audits is not None and Path(audits).is_file():
        from .peer_audits import load_peer_audits, skipped_peers

        data.audits_path, data.audits, data.audits_skipped = Path(audits), load_peer_audits(audits), skipped_peers(audits)
    return data


# --------------------------------------------------------------------------------------------
# Sections: each collects its data and renders its template; figures go to ``fig_dir`` (linked
# relative to the page).


def claims_table(claims: List[dict], caption: str) -> str:
    """Every claim with its kind, stage, value, confidence interval, threshold, source and outcome
    (PASS/FAIL for verifications, SUPPORTED/FAILED for hypotheses; a failure is styled, never hidden)."""
    from .experiments import Claim

    rows = []
    for c in map(Claim.from_dict, claims):
        ci = (Cell(f"{format_number(c.ci_low)} .. {format_number(c.ci_high)}") if c.ci_low is not None
              else Cell("—", css="missing"))
        optional = lambda value: number_cell(value, short=True) if value is not None else Cell("—", css="missing")  # noqa: E731
        rows.append([c.id, c.kind + (" (primary)" if c.primary else ""), c.stage or "—", c.statement, c.source or "—",
                     number_cell(c.value, short=True), ci, Cell(f"{c.op} {format_number(c.threshold)}", value=c.threshold),
                     optional(c.n_seeds), optional(c.p_value), optional(c.p_adjusted),
                     Cell(c.outcome, css="pass" if c.passed else "fail")])
    return table(["claim", "kind", "stage", "statement", "source", "value", "95% CI", "required", "n", "p",
                  "p (Holm)", "outcome"], rows,
                 caption + " p: one-sided, against the threshold; p (Holm): adjusted over the primary hypotheses.",
                 text_columns=5)


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
    values = dict(results_path=shown(data.results_dir), asv_path=shown(data.asv_dir),
                  asv_folders=[shown(d) for d in (data.asv_dir, data.fresh_asv_dir) if d],
                  experiments_table="", environment_table="", machines_table="", pytest_table="")
    if data.experiments:
        rows = []
        for result in data.experiments.values():
            m = result.manifest
            commit = str(m.get("git_commit", "unknown"))[:10] + (" (dirty)" if m.get("git_dirty") else "")
            rows.append([result.name, m.get("scale", MISSING), m.get("seed", MISSING), m.get("impl", MISSING),
                         m.get("threads", MISSING), commit, m.get("started_at", MISSING),
                         number_cell(m.get("wall_time_s")), _claims_tally(result.claims)])
        values["experiments_table"] = table(
            ["experiment", "scale", "seed", "impl", "threads", "commit", "started (UTC)", "wall time (s)", "claims passed"],
            rows, "Table 1. The experiments in this report, from their manifests.", text_columns=7)
        values["environment_table"] = _environment_table(data)
    if data.asv is not None:
        values["machines_table"] = _asv_machine_table(data)
    if data.pytest_benchmarks is not None:
        rows = [[r.file, r.name, number_cell(r.median_s), number_cell(r.iqr_s), number_cell(r.rounds), r.cpu,
                 str(r.commit)[:10]] for r in data.pytest_benchmarks.itertuples()]
        values["pytest_table"] = table(["file", "benchmark", "median (s)", "IQR (s)", "rounds", "CPU", "commit"], rows,
                                       "pytest-benchmark micro suite (<code>make bench</code>).", text_columns=2)
    return render("section_run.html.j2", **values)


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
    rows = []
    folders = {benchmark_report.STORED: data.asv_dir, benchmark_report.FRESH: data.fresh_asv_dir}
    for (origin, run, machine), group in data.asv.groupby(["origin", "run", "machine"], sort=False):
        info = benchmark_report.machine_info(folders[origin], machine)
        newest = group[group["latest"]]
        devices = ", ".join(sorted(newest.loc[newest["value"].notna(), "device"].unique())) or "none"
        rows.append([origin, run, info.get("cpu", MISSING), info.get("num_cpu", MISSING), info.get("ram", MISSING),
                     str(newest["commit"].iloc[0])[:8], number_cell(group["commit"].nunique()),
                     benchmark_report.environment_label(newest["env"].iloc[0]),
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


def _prose(text: str) -> Markup:
    """Docstring text as HTML: escaped, with ``literals`` as code."""
    return Markup(re.sub(r"``(.+?)``", r"<code>\1</code>", str(Markup.escape(text))))


def failures_table(result: ExperimentResult) -> str:
    """Per loss and setting of a training experiment: how many runs collapsed into a saturated state,
    diverged or reached the step cap, the collapse share with its Clopper-Pearson interval, and the
    mean DSC of the runs that trained beside that of all runs ("" for experiments without runs)."""
    from .experiments.common import evaluated_failures, selection_grid

    found = evaluated_failures(result.df)
    if found is None:
        return ""

    def setting(record: dict, columns) -> list:
        return [format_number(record[c]) if isinstance(record[c], float) else str(record[c]) for c in columns]

    by, metric, rates = found
    grid = selection_grid(result.df)
    selection = ""
    if grid is not None:
        columns, choices = grid
        selection = table([*columns, "rate", "runs", "failed", "median validation DSC (best threshold)", "chosen"],
                          [[*setting(r, columns),
                            number_cell(r["lr"]), r["runs"], Cell(str(r["failed"]), css="fail" if r["failed"] else ""),
                            number_cell(r["median_val_dsc"], short=True), Cell("yes", css="pass") if r["chosen"] else ""]
                           for r in choices.to_dict("records")],
                          f"Learning-rate selection of {result.name}: every rate of the grid on the selection seeds "
                          "(disjoint from the evaluation seeds); the rate with the best median validation DSC at its "
                          "best threshold is used for every evaluation seed.", text_columns=len(columns))
    rows = [[*setting(r, by), r["runs"], r["collapsed"],
             r["collapsed_background"], r["diverged"], r["capped"],
             Cell(f"{format_number(r['rate'])} [{format_number(r['rate_low'])}, {format_number(r['rate_high'])}]",
                  value=r["rate"], css="fail" if r["collapsed"] else ""),
             number_cell(r[f"{metric}_trained"], short=True), number_cell(r[f"{metric}_all"], short=True)]
            for r in rates.to_dict("records")]
    what = "test DSC at threshold 1/2" if metric == "dsc" else "validation DSC at the last step"
    return table([*by, "runs", "collapsed", "of which all background", "diverged", "stopped by the cap",
                  "collapse rate [95% CI]", "mean DSC, runs that trained", "mean DSC, all runs"], rows,
                 f"Failures of {result.name}: a run is collapsed when it predicts one class on every validation "
                 "pixel with a parameter-gradient norm below 1e-9 (the absorbing saturated state). Collapsed and "
                 f"diverged runs are left out of the paired claims and of the first mean ({what}); the second mean "
                 "averages them in, to show what averaging would hide.", text_columns=len(by)) + selection


def experiment_block(result: ExperimentResult, fig_dir: Path, out_dir: Path, heading: bool = True) -> str:
    """One experiment: what it tests, how it ran, its figures (redrawn from the stored parquet) and claims."""
    from .experiments import EXPERIMENTS

    module = EXPERIMENTS.get(result.name)
    title, text = _docstring_parts(module) if module else (result.name, "")
    m = result.manifest
    figures = []
    if module is not None and hasattr(module, "figures"):
        for path in (Path(p) for p in module.figures(result.df, fig_dir / result.name) or []):
            if path.suffix == ".png":
                figures.append(figure(path.relative_to(out_dir).as_posix(),
                                      f"{result.name}: {path.stem.replace('_', ' ')} (redrawn from results.parquet)."))
    return render("experiment.html.j2", name=result.name, heading=heading, title=_prose(title or result.name),
                  text=_prose(text), m={k: m.get(k, MISSING) for k in ("scale", "seed", "impl", "tasks")},
                  where=f"Dask cluster {m['scheduler']}" if m.get("scheduler") else f"{m.get('workers', MISSING)} local worker(s)",
                  rows=len(result.df), wall_time=format_number(m.get("wall_time_s")),
                  claims_summary=claims_summary(result.claims), has_figure_code=module is not None and hasattr(module, "figures"),
                  figures=figures, failures=failures_table(result), claims_table=claims_table(
                      result.claims, f"Claims of {result.name}, each computed from the stored data with its threshold "
                      "fixed in code beforehand."))


def section_implementations(data: ReportData, ratios: Optional[pd.DataFrame], fig_dir: Path, out_dir: Path) -> str:
    values = dict(has_asv=ratios is not None, asv_path=shown(data.asv_dir), targets=targets_block(data))
    if ratios is not None:
        measures, measured = [], set()
        for number, (label, metric, methods) in enumerate(benchmark_report.MEASURES, start=4):
            rows = benchmark_report.measure_rows(ratios, methods)
            measured.update(rows["benchmark"])
            drawn = len(rows) > 0
            measures.append(dict(
                title=label[0].upper() + label[1:],
                table=benchmark_report.measure_table(ratios, label, metric, methods, number) if drawn else "",
                figures=benchmark_report.figure_html(benchmark_report.ratio_figure(ratios, label, methods, fig_dir),
                                                     out_dir) if drawn else ""))
        history = benchmark_report.history_figures(ratios, fig_dir)
        training = benchmark_report.training_speedups(ratios)
        measured.add(benchmark_report.TRAINING)
        values.update(training=benchmark_report.training_table(training) if training else "",
                      headline_tables=benchmark_report.headline_tables(ratios),
                      fresh_tables=benchmark_report.fresh_comparison(ratios),
                      fresh_path=shown(data.fresh_asv_dir) if data.fresh_asv_dir else "", measures=measures,
                      history=benchmark_report.figure_html(history, out_dir) if history else "",
                      others=sorted(set(ratios.loc[ratios["module"] != benchmark_report.SCALING_MODULE, "benchmark"])
                                    - measured))
    return render("section_implementations.html.j2", **values)


def targets_block(data: ReportData) -> str:
    """The fused path at its target shapes: speed-up over MONAI, its floor, memory, accuracy."""
    values = dict(targets=data.targets, targets_path=shown(data.targets_path or DEFAULT_TARGETS))
    if data.targets is not None:
        t = data.targets
        memory = {(r["shape"], r["impl"]): r for r in t.get("memory", [])}
        rows = []
        for r in t.get("speed", []):
            peak = memory.get((r["shape"], r["impl"]), {})
            rows.append([r["shape"], r["impl"], number_cell(r["seconds"] * 1e3), number_cell(r["vs_monai"]),
                         number_cell(r["floor_s"] * 1e3), number_cell(r["floor_ratio"]), number_cell(peak.get("x_logits"))])
        values.update(machine={k: t.get("machine", {}).get(k, MISSING) for k in ("cpu", "threads", "torch")}, speed=table(
            ["shape", "implementation", "time (ms)", "speed-up over MONAI", "floor (ms)", "time / floor",
             "peak memory / logits"], rows,
            "Forward+backward in float32, medians of interleaved repetitions. Time / floor is how many times slower "
            "than the hardware limit a path runs (1 = at the floor; below 1 means the floor itself was measured low, "
            "e.g. on a busy machine). Peak memory is the growth of the peak resident set during one call, in logits' "
            "sizes.", text_columns=2), accuracy=table(
                ["dtype", "voxels", "loss relative error", "gradient-norm relative error", "target", "met"],
                [[r["dtype"], number_cell(r["voxels"]), number_cell(r["loss_error"]), number_cell(r.get("grad_norm_error")),
                  number_cell(r["target"]), Cell("yes", css="pass") if r["met"] else Cell("no", css="fail")]
                 for r in t.get("accuracy", [])],
                "Accuracy of fused against float64 sums at the largest size.", text_columns=1))
    return render("targets.html.j2", **values)


def section_scaling(data: ReportData, ratios: Optional[pd.DataFrame], fig_dir: Path, out_dir: Path) -> str:
    figures = benchmark_report.scaling_figures(ratios, fig_dir) if ratios is not None else []
    return render("section_scaling.html.j2", has_asv=ratios is not None,
                  figures=benchmark_report.figure_html(figures, out_dir, width=620) if figures else "")


PRECISION_COLUMNS = {"impl", "dtype", "voxels", "rel_error", "finite"}


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
    values = dict(name=PRECISION_EXPERIMENT, results_path=shown(data.results_dir),
                  experiment="", summary="")
    if result is not None:
        values["experiment"] = experiment_block(result, fig_dir, out_dir, heading=False)
        if PRECISION_COLUMNS <= set(result.df.columns):
            values["summary"] = precision_table(result.df)
    return render("section_precision.html.j2", **values)


def section_experiments(data: ReportData, fig_dir: Path, out_dir: Path) -> str:
    from .experiments import EXPERIMENTS

    others = [r for n, r in data.experiments.items() if n != PRECISION_EXPERIMENT]
    every = [c for r in data.experiments.values() for c in r.claims]
    overview = ""
    if others:
        rows = []
        for r in others:
            kinds = {kind: [c for c in r.claims if c["kind"] == kind] for kind in ("verification", "hypothesis")}
            failed = sum(not c["passed"] for c in kinds["hypothesis"])
            rows.append([r.name, _docstring_parts(EXPERIMENTS[r.name])[0] if r.name in EXPERIMENTS else "",
                         f"{sum(c['passed'] for c in kinds['verification'])}/{len(kinds['verification'])}",
                         f"{len(kinds['hypothesis']) - failed}/{len(kinds['hypothesis'])}",
                         Cell(str(failed), css="fail") if failed else Cell("0")])
        overview = table(["experiment", "question", "verifications passed", "hypotheses supported",
                                 "hypotheses FAILED"], rows, "Overview of the experiments.", text_columns=2)
    primaries = [c for c in every if c.get("primary")]
    primaries_table = claims_table(primaries, "The primary hypotheses, fixed in code before the paper-scale run: "
                                   "each SUPPORTED only when its value and whole interval clear the threshold and its "
                                   "Holm-adjusted p is at most 0.025.") if primaries else ""
    return render("section_experiments.html.j2", summary=claims_summary(every) if every else "",
                  count=len(data.experiments), overview=overview, primaries=primaries_table,
                  missing=[n for n in EXPERIMENTS if n not in data.experiments and n != PRECISION_EXPERIMENT],
                  blocks=[experiment_block(r, fig_dir, out_dir) for r in others])


def section_reproduce(data: ReportData) -> str:
    experiments = [dict(name=r.name, commit=str(r.manifest.get("git_commit", "unknown"))[:10],
                        dirty=bool(r.manifest.get("git_dirty")), scale=r.manifest.get("scale", "small"),
                        seed=r.manifest.get("seed", 0), impl=r.manifest.get("impl", "vectorized"))
                   for r in data.experiments.values()]
    commits = sorted(data.asv.loc[data.asv["latest"], "commit"].unique()) if data.asv is not None else []
    return render("section_reproduce.html.j2", experiments=experiments, asv_commits=[str(c) for c in commits],
                  results_path=shown(data.results_dir), asv_path=shown(data.asv_dir),
                  targets_path=shown(data.targets_path) if data.targets is not None else "")


def section_audit(data: ReportData) -> str:
    table_html = ""
    if data.audits is not None:
        rows = []
        for r in data.audits.itertuples():
            rows.append([r.name, r.sentence, r.target_encoding, r.activation, r.reduction_unit,
                         str(r.include_background), str(r.squared), number_cell(r.smooth_nr), number_cell(r.smooth_dr),
                         Cell("yes", css="pass") if r.spec_match else Cell("no", css="fail"),
                         number_cell(r.max_abs_diff, short=True),
                         Cell(r.defects, css="fail") if r.defects else Cell("none", css="pass")])
        table_html = table(["peer", "what it computes", "target encoding", "activation", "reduction unit", "background",
                            "squared", "smooth_nr", "smooth_dr", "DiceSpec match", "max |diff|", "defects"], rows,
                           "What each peer's Dice loss computes, found by <code>dice_impls.audit</code> from its values "
                           "alone; “DiceSpec match”: one spec reproduces its loss within 1e-4 on random inputs "
                           "(value and gradient); defects by their ids (docs/audit.md).", text_columns=8)
    return render("section_audit.html.j2", table=table_html, path=shown(data.audits_path), skipped=data.audits_skipped)


def audit_sentence(data: ReportData) -> str:
    if data.audits is None:
        return ""
    import collections

    matched = int(data.audits["spec_match"].sum())
    ids = collections.Counter(i for defects in data.audits["defects"] for i in defects.split(", ") if i)
    flagged = int((data.audits["defects"] != "").sum())
    common = ", ".join(f"{i} ({n})" for i, n in ids.most_common(3))
    return (f"{len(data.audits)} peer configurations audited; {matched} reproduced exactly by a DiceSpec; "
            + (f"{flagged} with known defects, most often {common}." if flagged else "no known defect found."))


def study_summary(data: ReportData) -> Optional[dict]:
    """The study in one sentence: claims tallied and the main finding (``experiments.MAIN_FINDING``)."""
    from .experiments import MAIN_FINDING, Claim

    claims = [c for r in data.experiments.values() for c in r.claims]
    if not claims:
        return None
    of_kind = lambda kind: [c for c in claims if c["kind"] == kind]  # noqa: E731
    main = next((Claim.from_dict(c) for c in claims if c["id"] == MAIN_FINDING), None)
    scales = sorted({str(r.manifest.get("scale", "?")) for r in data.experiments.values()})
    return dict(experiments=len(data.experiments), scales=" and ".join(f"{s} scale" for s in scales),
                small_only=scales == ["small"],
                verifications=len(of_kind("verification")),
                verifications_passed=sum(bool(c["passed"]) for c in of_kind("verification")),
                hypotheses=len(of_kind("hypothesis")), supported=sum(bool(c["passed"]) for c in of_kind("hypothesis")),
                primaries=sum(bool(c.get("primary")) for c in claims),
                primaries_supported=sum(bool(c.get("primary")) and bool(c["passed"]) for c in claims), main=main)


def precision_sentence(data: ReportData) -> str:
    result = data.experiments.get(PRECISION_EXPERIMENT)
    if result is None or not PRECISION_COLUMNS <= set(result.df.columns):
        return ""
    df = result.df
    broken = df[~df["finite"]].groupby(["impl", "dtype"])["voxels"].min()
    sound = df[~df["impl"].isin({i for i, _ in broken.index})]
    text = "; ".join(f"{i} in {d} from {format_number(v)} voxels" for (i, d), v in broken.items()) or "none"
    return (f"inf/NaN statistics up to {format_number(df['voxels'].max())} voxels: {text}; worst relative error of "
            f"the others ({', '.join(dict.fromkeys(sound['impl']))}): {format_number(sound['rel_error'].max())}")


def glance(data: ReportData, ratios: Optional[pd.DataFrame], fig_dir: Path, out_dir: Path) -> str:
    """The first screen: the headline numbers with their intervals, the study's finding, the audit
    and GPU coverage, and one figure; the detailed tables are in the sections."""
    facts = benchmark_report.glance_facts(ratios) if ratios is not None else []
    drawn = benchmark_report.glance_figure(facts[0], fig_dir) if facts else None
    fresh = None
    if ratios is not None and data.fresh_asv_dir is not None:
        verdicts = benchmark_report.fresh_verdicts(ratios)
        fresh = dict(total=len(verdicts), **{v: verdicts.count(v) for v in ("agree", "differ", "unstable")})
    gpu = ratios[(ratios["device"] == "cuda") & ratios["value"].notna()] if ratios is not None else []
    training = [s for _, s, _, _ in benchmark_report.training_speedups(ratios)] if ratios is not None else []
    return render("glance.html.j2", facts=facts,
                  unstable_mark=benchmark_report.UNSTABLE_MARK,
                  unstable_any=any(s.unstable for f in facts for s in f["speed"] + f["compound"]),
                  figure=benchmark_report.figure_html([drawn], out_dir) if drawn else "", fresh=fresh,
                  study=study_summary(data), precision=precision_sentence(data), audit=audit_sentence(data), gpu_count=len(gpu),
                  training=training)


def write_report(data: ReportData, out_dir: Path, comparison_html: Optional[str] = None,
                 inline_figures: bool = True) -> Path:
    """Write ``<out_dir>/index.html``; return its path. ``inline_figures``: one self-contained file
    (figures as data URIs); otherwise the figures stay beside it in ``<out_dir>/figures/``."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    if fig_dir.exists():
        shutil.rmtree(fig_dir)  # figures are redrawn every time; stale ones must not linger
    fig_dir.mkdir(parents=True)
    ratios = benchmark_report.with_baseline_ratio(data.asv) if data.asv is not None else None
    bodies = {
        "run": section_run(data),
        "implementations": section_implementations(data, ratios, fig_dir, out_dir),
        "scaling": section_scaling(data, ratios, fig_dir, out_dir),
        "precision": section_precision(data, fig_dir, out_dir),
        "audit": section_audit(data),
        "experiments": section_experiments(data, fig_dir, out_dir),
        "reproduce": section_reproduce(data),
    }
    sections = [(sid, title, bodies[sid]) for sid, title in SECTIONS]
    if comparison_html is not None:
        sections.append((*COMPARISON_SECTION, comparison_html))
    document = page("dicebench: soft Dice loss — results", glance(data, ratios, fig_dir, out_dir), sections)
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
    parser.add_argument("--audits", type=Path, default=DEFAULT_AUDITS, help="make audit-peers' JSON (results/audit/peers.json)")
    parser.add_argument("--compare", type=Path, help="another run folder to compare these results with")
    parser.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance of the comparison")
    parser.add_argument("--fresh-asv-results", type=Path, help="a new run's asv folder, compared with --asv-results")
    parser.add_argument("--figure-files", action="store_true", help="write the figures beside the page, not inline")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default: reports/)")


def main(args: argparse.Namespace) -> int:
    # Absent measurements show as n/a on the page; a path that does not exist is a typo, not a result.
    for option, path in [("--results", args.results), ("--asv-results", args.asv_results), ("--targets", args.targets),
                         ("--audits", args.audits),
                         ("--compare", args.compare), ("--fresh-asv-results", args.fresh_asv_results),
                         *(("--bench-json", p) for p in args.bench_json)]:
        if path is not None and not path.exists():
            raise UsageError(f"{option} {path} does not exist")
    bench_json = args.bench_json or [p for p in (DEFAULT_BENCH_JSON,) if p.is_file()]
    data = collect(args.results, args.asv_results, bench_json, args.targets, args.fresh_asv_results, args.audits)
    comparison_html = None
    if args.compare is not None:
        from .compare import RunPaths, compare_runs, comparison_to_html

        this_run = RunPaths(args.results if args.results.is_dir() else None,
                            args.asv_results if args.asv_results.is_dir() else None)
        comparison_html = comparison_to_html(compare_runs(args.compare, this_run, rtol=args.rtol))
    index = write_report(data, args.out, comparison_html, inline_figures=not args.figure_files)
    print(f"report written to {index}")
    return 0
