"""``dicebench run``: benchmarks, experiments and report in one go (what ``make report`` calls).

Writes one self-describing run folder (default ``reports/``)::

    reports/asv/                    asv results of the CPU grid (asv's own layout)
    reports/experiments/<name>/     results.parquet, claims.json, manifest.json
    reports/index.html, figures/    the report

The full run (the whole CPU asv grid, every experiment at small scale) fits in 20 minutes on a
2-core machine; ``--quick`` (one asv pass over a small subset, every experiment at small scale) in 3.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import List

from .experiments import SCALE_NAMES

REPO = Path(__file__).resolve().parent.parent
ASV_CONFIG = REPO / "asv.conf.json"


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def asv_config(results_dir: Path) -> Path:
    """A copy of the project's asv.conf.json that stores results in ``results_dir``."""
    from asv.util import load_json

    config = load_json(str(ASV_CONFIG), js_comments=True)
    # asv reads relative paths against the config file's folder: make them point into the repo.
    for key in ("repo", "benchmark_dir", "env_dir"):
        config[key] = str((REPO / config.get(key, ".")).resolve())
    config["results_dir"] = str(results_dir.resolve())
    config["html_dir"] = str((results_dir.parent / "asv-html").resolve())
    path = results_dir.parent / "asv.conf.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def run_asv(results_dir: Path, quick: bool) -> int:
    """The CPU grid in this environment (``--python=same``), results stored under this commit."""
    from benchmarks.common import ASV_CPU_GRID, GRID_SHAPES

    # asv matches --bench against "name(param, ...)": --quick keeps one float32 2-D case per implementation.
    quick_selection = rf"^bench_loss\.Grid\.time_forward_backward\(.*'float32', '{GRID_SHAPES[0]}'\)$"

    results_dir.mkdir(parents=True, exist_ok=True)
    config = asv_config(results_dir)
    asv = [sys.executable, "-m", "asv", "--config", str(config)]
    if not (Path.home() / ".asv-machine.json").exists():
        subprocess.run(asv + ["machine", "--yes"], cwd=REPO, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    # forkserver: no CPU benchmark module touches CUDA at import, so one torch import serves all.
    command_line = asv + ["run", "--python=same", "--set-commit-hash", commit, "--show-stderr",
                          "--launch-method=forkserver", "--bench", quick_selection if quick else ASV_CPU_GRID]
    if quick:
        command_line.append("--quick")  # one sample per combination: indicative numbers only
    print("$ " + " ".join(command_line[2:]), flush=True)
    # asv prints its own progress ([ 12%] ··· name  time); it exits non-zero when a benchmark fails.
    return subprocess.run(command_line, cwd=REPO).returncode


def run_experiments(out_dir: Path, names: List[str], scale: str, seed: int) -> int:
    """``dicebench experiment NAME`` for each name (it prints every claim); 1 when a claim failed."""
    from tqdm.auto import tqdm

    from . import experiment_commands

    status = 0
    for name in tqdm(names, desc="experiments", unit="experiment"):
        banner(f"experiment {name} ({scale})")
        # Figures are drawn by the report, from the stored results.
        status |= experiment_commands.run_and_print([name], out_dir, scale=scale, seed=seed, figures=False)
    return status


DESCRIPTION = "Run the CPU asv grid and every experiment, then write the report (what make report does)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a look in under 3 minutes: one quick asv pass over a small subset")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="run folder and report (default: reports/)")
    parser.add_argument("--scale", choices=SCALE_NAMES, default="small", help="experiments' scale (default: small)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-asv", action="store_true", help="keep the asv results already in the run folder")
    parser.add_argument("--skip-experiments", action="store_true", help="keep the experiment results already there")


def main(args: argparse.Namespace) -> int:
    from .experiments import EXPERIMENTS
    from .report import DEFAULT_BENCH_JSON, collect, write_report

    start, status = time.perf_counter(), 0
    out: Path = args.out
    if not args.skip_asv:
        banner("1/3 benchmarks: asv CPU grid" + (" (quick subset)" if args.quick else ""))
        if run_asv(out / "asv", args.quick) != 0:
            print("asv reported failing benchmarks (see above); they show as n/a in the report", flush=True)
            status = 1
    if not args.skip_experiments:
        names = list(EXPERIMENTS)
        banner(f"2/3 experiments: {', '.join(names)}")
        if run_experiments(out / "experiments", names, args.scale, args.seed):
            print("some claims failed (listed above); the report shows them as failed", flush=True)
    banner("3/3 report")
    bench_json = [p for p in (out / "bench.json", DEFAULT_BENCH_JSON) if p.is_file()][:1]
    index = write_report(collect(out / "experiments", out / "asv", bench_json), out)
    print(f"report: {index.resolve()}\nwall time {time.perf_counter() - start:.0f} s", flush=True)
    return status
