"""``dicebench run``: benchmarks, experiments and report in one go (what ``make report`` calls).

Writes one self-describing run folder (default ``reports/``)::

    reports/asv/                    asv results of the CPU grid (asv's own layout)
    reports/experiments/<name>/     results.parquet, claims.json, manifest.json
    reports/index.html, figures/    the report

The page shows the curated results (``results/asv``) as its headline and this run's asv numbers
as a comparison against them. The full run is the whole CPU asv grid and every experiment at small
scale; ``--quick`` times only the headline cell of every implementation (README gives the times).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

from .errors import UsageError
from .experiments import SCALE_NAMES

REPO = Path(__file__).resolve().parent.parent
ASV_CONFIG = REPO / "asv.conf.json"


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def asv_config(results_dir: Path, folder: Path) -> Path:
    """A copy of the project's asv.conf.json in ``folder`` (a temporary one: the run folder keeps no
    machine path) that stores results in ``results_dir``: a run never writes into the repository's
    committed results."""
    from asv.util import load_json

    config = load_json(str(ASV_CONFIG), js_comments=True)
    # asv reads relative paths against the config file's folder: make them point into the repo.
    for key in ("repo", "benchmark_dir", "env_dir"):
        config[key] = str((REPO / config.get(key, ".")).resolve())
    config["results_dir"] = str(results_dir.resolve())
    config["html_dir"] = str((results_dir.parent / "asv-html").resolve())
    path = folder / "asv.conf.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def asv_selection(quick: bool) -> str:
    """What ``dicebench run`` benchmarks: the CPU grid, or (``--quick``) the headline cell of every
    implementation, float32 at the 2-D headline shape, with the benchmark's full repeat and rounds,
    so that even the quick look has a spread and a headline ratio to compare with the curated one."""
    from benchmarks.selections import SELECTIONS

    return SELECTIONS["quick" if quick else "cpu"]


def asv_command(config: Path, machine: str, commit: str, selection: str) -> List[str]:
    """``asv run`` in this environment (``--python=same``: the installed working tree, no
    environment to build), results filed under ``commit`` and ``machine``."""
    # forkserver: no CPU benchmark module touches CUDA at import, so one torch import serves all.
    return [sys.executable, "-m", "asv", "--config", str(config), "run", "--python=same", "--machine", machine,
            "--set-commit-hash", commit, "--show-stderr", "--launch-method=forkserver", "--bench", selection]


def name_environment_without_paths(results_dir: Path) -> None:
    """asv names the running environment (``--python=same``) after its interpreter's path, in the
    results' file names and fields (``existing-py_work_..._bin_python``); a run folder is shared
    and shown, so it is renamed after the Python version, as asv names the environments it builds."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for path in results_dir.glob("*/*-existing-py_*.json"):
        result = json.loads(path.read_text())
        result["env_name"] = f"existing-py{version}"
        result["python"] = version
        result.get("params", {})["python"] = version
        path.with_name(f"{path.name.split('-', 1)[0]}-{result['env_name']}.json").write_text(json.dumps(result))
        path.unlink()
    for path in results_dir.glob("*/machine.json"):
        machine = json.loads(path.read_text())
        if "python" in machine:
            machine["python"] = version
            path.write_text(json.dumps(machine, indent=4))


def run_asv(results_dir: Path, quick: bool) -> int:
    """The CPU grid (or the quick headline subset) in this environment; asv's exit status."""
    from benchmarks.asv_machine import define

    results_dir.mkdir(parents=True, exist_ok=True)
    machine = define()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as folder:
        command_line = asv_command(asv_config(results_dir, Path(folder)), machine, commit, asv_selection(quick))
        print("$ asv run " + " ".join(command_line[command_line.index("run") + 1:]), flush=True)
        # asv prints its own progress ([ 12%] ··· name  time); it exits non-zero when a benchmark fails.
        status = subprocess.run(command_line, cwd=REPO).returncode
    name_environment_without_paths(results_dir)
    return status


def run_experiments(out_dir: Path, names: List[str], scale: str, seed: int) -> int:
    """``dicebench experiment NAME`` for each name (it prints every claim); 1 when a claim failed."""
    from . import experiment_commands

    status = 0
    for i, name in enumerate(names, 1):
        banner(f"experiment {i}/{len(names)}: {name} ({scale})")
        # Figures are drawn by the report, from the stored results.
        status |= experiment_commands.run_and_print([name], out_dir, scale=scale, seed=seed, figures=False)
    return status


DESCRIPTION = "Run the CPU asv grid and every experiment, then write the report (what make report does)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a look in under 3 minutes: the headline cell of every implementation")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="run folder and report (default: reports/)")
    parser.add_argument("--scale", choices=SCALE_NAMES, default="small", help="experiments' scale (default: small)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-asv", action="store_true", help="keep the asv results already in the run folder")
    parser.add_argument("--skip-experiments", action="store_true", help="keep the experiment results already there")


def main(args: argparse.Namespace) -> int:
    from .experiments import EXPERIMENTS
    from .report import DEFAULT_ASV_RESULTS, DEFAULT_BENCH_JSON, collect, write_report

    start, status = time.perf_counter(), 0
    out: Path = args.out
    if not args.skip_asv and (shutil.which("git") is None or subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True).returncode != 0):
        raise UsageError(f"the asv stage stores its results under the checkout's git commit, and {REPO} is not a "
                         "git checkout (or git is missing); --skip-asv skips that stage")
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
    # The headline comes from the curated results; this run's asv numbers are compared with them.
    index = write_report(collect(out / "experiments", DEFAULT_ASV_RESULTS, bench_json, fresh_asv_dir=out / "asv"), out)
    print(f"report: {index.resolve()}\nwall time {time.perf_counter() - start:.0f} s", flush=True)
    return status
