"""Stored asv results as a pandas DataFrame, for the report and for ad-hoc comparisons.

``load_asv_results("results/asv")`` reads every ``<machine>/<commit>-<env>.json`` under the asv
results folder (and the folder's ``benchmarks.json`` for units) into one row per benchmark and
parameter combination, with asv's own statistics of the samples behind each number (quartiles,
99 % interval, sample count) and a stability verdict.

Stability: a timing whose interquartile range exceeds ``UNSTABLE_SPREAD`` of its median, or that
rests on fewer than ``MIN_SAMPLES`` samples, is *unstable*: the report and ``dicebench compare``
flag it and never use it as a headline. The threshold is the reproducibility target of the
headline ratio (two runs within 15 % of each other), fixed before looking at any run.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Union

if TYPE_CHECKING:  # pandas is imported on use: asv imports this module when it discovers benchmarks
    import pandas as pd

# asv writes n/a (NotImplementedError in setup) as NaN and a failure as null.
STATUS_OK, STATUS_NA, STATUS_FAILED = "ok", "n/a", "failed"
UNSTABLE_SPREAD = 0.15  # interquartile range / median above which a timing is unstable
MIN_SAMPLES = 4  # fewer samples (e.g. an `asv run --quick` pass) say nothing about the spread
# asv's per-combination statistics (result_columns) -> our column names.
STATS = {"stats_q_25": "q25", "stats_q_75": "q75", "stats_ci_99_a": "ci_low", "stats_ci_99_b": "ci_high",
         "stats_repeat": "samples"}


def load_asv_results(results_dir: Union[str, Path] = "results/asv") -> pd.DataFrame:
    """One row per (result file, benchmark, parameter combination).

    Columns: ``benchmark`` (e.g. ``bench_loss.Headline.time_forward_backward``), one column per
    parameter name (``implementation``, ``dtype``, ``shape``, ...), ``value`` (seconds, bytes,
    ...; NaN unless ``status`` is ``"ok"``), ``unit``, ``status`` (ok, n/a, failed), ``machine``,
    ``commit``, ``date`` (the commit's date, ms since the epoch, asv's convention), ``started_at``
    (when the benchmark ran, ms), ``env``, ``file`` (the result file's name), asv's statistics
    ``q25``, ``q75``, ``ci_low``, ``ci_high``, ``samples`` (NaN where asv keeps none, e.g. for
    ``track_`` benchmarks), ``spread`` (``(q75 - q25) / value``) and ``unstable`` (see the module
    docstring; always False for measurements that are not timings).
    """
    import pandas as pd

    results_dir = Path(results_dir)
    benchmarks_file = results_dir / "benchmarks.json"
    if not benchmarks_file.is_file():
        raise FileNotFoundError(f"no asv results in {results_dir} (missing benchmarks.json; run `make asv`)")
    with open(benchmarks_file) as f:
        definitions = json.load(f)
    rows = [row for path in sorted(results_dir.glob("*/*.json")) if path.name != "machine.json"
            for row in _rows(path, definitions)]
    return pd.DataFrame(rows)


def _rows(path: Path, definitions: dict) -> Iterator[dict]:
    with open(path) as f:
        stored = json.load(f)
    columns = stored["result_columns"]
    common = dict(machine=stored["params"].get("machine", path.parent.name), commit=stored["commit_hash"],
                  date=stored.get("date"), env=stored.get("env_name"), file=path.name)
    for name, entry in stored["results"].items():
        entry = dict(zip(columns, entry))
        definition = definitions.get(name, {})
        param_names = definition.get("param_names", [])
        combos = list(itertools.product(*entry.get("params") or [[]]))
        stats = {ours: entry.get(theirs) or [None] * len(combos) for theirs, ours in STATS.items()}
        for i, (value, combo) in enumerate(zip(entry["result"], combos)):
            status = STATUS_FAILED if value is None else STATUS_NA if math.isnan(value) else STATUS_OK
            params = {key: ast.literal_eval(text) for key, text in zip(param_names, combo)}
            value = math.nan if value is None else float(value)
            numbers = {ours: _number(column[i]) for ours, column in stats.items()}
            spread = (numbers["q75"] - numbers["q25"]) / value if status == STATUS_OK and value else math.nan
            unit = definition.get("unit")
            yield dict(benchmark=name, **params, value=value, unit=unit, status=status, **common,
                       started_at=entry.get("started_at"), **numbers, spread=spread,
                       unstable=is_unstable(unit, status, spread, numbers["samples"]))


def _number(value: Optional[float]) -> float:
    return math.nan if value is None else float(value)


def is_unstable(unit: Optional[str], status: str, spread: float, samples: float) -> bool:
    """A measured timing whose spread is unknown or too wide to be read on its own."""
    if unit != "seconds" or status != STATUS_OK:
        return False
    return not (samples >= MIN_SAMPLES and spread <= UNSTABLE_SPREAD)  # NaN compares False: unstable


def ratios_to(df: pd.DataFrame, baseline: str = "monai", benchmark_contains: str = "Headline") -> pd.DataFrame:
    """Each implementation's value divided by ``baseline``'s for the same measurement (the
    benchmark's method, e.g. ``time_forward_backward``), dtype, shape, machine and commit, over
    the benchmarks whose name contains ``benchmark_contains`` (< 1: faster or leaner).

    Returns one row per (measure, dtype, shape, machine, commit) and one column per
    implementation; combinations that are n/a for either side are NaN.
    """
    selected = df["benchmark"].str.contains(benchmark_contains, regex=False) & (df["status"] == STATUS_OK)
    rows = df[selected].assign(measure=lambda d: d["benchmark"].str.rsplit(".", n=1).str[-1])
    keys = ["measure", "dtype", "shape", "machine", "commit"]
    table = rows.pivot_table(index=keys, columns="implementation", values="value", aggfunc="median")
    if baseline not in table:
        raise ValueError(f"no {baseline!r} results among {sorted(table.columns)}")
    return table.div(table[baseline], axis=0)


def one_file_per_commit(df: pd.DataFrame) -> pd.DataFrame:
    """Per machine and commit, only the rows of the result file that ran last (an environment
    rerun at the same commit, e.g. ``make asv`` after ``dicebench run``, replaces the earlier one)."""
    if df.empty:
        return df
    ran = df["started_at"].astype(float).fillna(0.0).groupby([df["machine"], df["file"]]).transform("max")
    last = ran.groupby([df["machine"], df["commit"]]).transform("max")
    return df[ran == last]


def latest(df: pd.DataFrame) -> pd.DataFrame:
    """Per machine, the rows of its newest commit (asv's commit date), one result file each."""
    df = one_file_per_commit(df)
    if df.empty:
        return df
    return df[df["date"] == df.groupby("machine")["date"].transform("max")]
