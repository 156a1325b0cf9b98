"""Stored asv results as a pandas DataFrame, for the report and for ad-hoc comparisons.

``load_asv_results("results/asv")`` reads every ``<machine>/<commit>-<env>.json`` under the asv
results folder (and the folder's ``benchmarks.json`` for units) into one row per benchmark and
parameter combination.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
from pathlib import Path
from typing import Iterator, Union

import pandas as pd

# asv writes n/a (NotImplementedError in setup) as NaN and a failure as null.
STATUS_OK, STATUS_NA, STATUS_FAILED = "ok", "n/a", "failed"


def load_asv_results(results_dir: Union[str, Path] = "results/asv") -> pd.DataFrame:
    """One row per (result file, benchmark, parameter combination).

    Columns: ``benchmark`` (e.g. ``bench_loss.Headline.time_forward_backward``), one column per
    parameter name (``implementation``, ``dtype``, ``shape``, ...), ``value`` (seconds, bytes,
    ...; NaN unless ``status`` is ``"ok"``), ``unit``, ``status`` (ok, n/a, failed), ``machine``,
    ``commit``, ``date`` (ms since the epoch, asv's convention) and ``env``.
    """
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
                  date=stored.get("date"), env=stored.get("env_name"))
    for name, entry in stored["results"].items():
        entry = dict(zip(columns, entry))
        definition = definitions.get(name, {})
        param_names = definition.get("param_names", [])
        combos = itertools.product(*entry.get("params") or [[]])
        for value, combo in zip(entry["result"], combos):
            status = STATUS_FAILED if value is None else STATUS_NA if math.isnan(value) else STATUS_OK
            params = {key: ast.literal_eval(text) for key, text in zip(param_names, combo)}
            yield dict(benchmark=name, **params, value=math.nan if value is None else float(value),
                       unit=definition.get("unit"), status=status, **common)


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
