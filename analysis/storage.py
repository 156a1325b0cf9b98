"""Experiment results on disk: ``<out>/<name>/results.parquet``, ``claims.json``, ``manifest.json``.

The parquet file holds the raw measurements only (no timestamps, no index), concatenated in task
order, so the same seed and scale on the same machine give byte-identical files however the tasks
ran (in-process, local processes, a Dask cluster); everything about the run itself (versions,
commit, a digest of the sources, hardware, config, task count, workers, wall time) goes into the
manifest. Each finished task's frame is also kept under ``<out>/.task-cache/<name>/`` (git-ignored),
so that ``resume=True`` (``dicebench experiment --resume``) continues an interrupted run from its
finished tasks, storing the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd
import torch

from benchmarks.benchmarks.common import cpu_model

from .experiments import EXPERIMENTS, Claim, adjust_primaries, config_for, config_from_dict
from .runner import code_identity, run_tasks

REPO = Path(__file__).resolve().parent.parent


def save_results(out_dir: Path, name: str, df: pd.DataFrame, claims: List[Claim], manifest: dict) -> Path:
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    df.reset_index(drop=True).to_parquet(folder / "results.parquet", index=False, engine="pyarrow")
    _write_claims_and_manifest(folder, claims, manifest)
    return folder


def _write_claims_and_manifest(folder: Path, claims: List[Claim], manifest: dict) -> None:
    (folder / "claims.json").write_text(json.dumps([c.to_dict() for c in claims], indent=2) + "\n")
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")


def load_results(out_dir: Path, name: str) -> Tuple[pd.DataFrame, List[dict], dict]:
    """``(df, claims, manifest)`` of experiment ``name`` stored under ``out_dir``; each claim is the
    dict of a :class:`Claim` (checked on loading)."""
    folder = Path(out_dir) / name
    if not (folder / "results.parquet").is_file():
        raise FileNotFoundError(f"no stored results for {name!r} under {folder}")
    df = pd.read_parquet(folder / "results.parquet")
    claims = [Claim.from_dict(c).to_dict() for c in json.loads((folder / "claims.json").read_text())]
    manifest = json.loads((folder / "manifest.json").read_text())
    return df, claims, manifest


def checked_claims(name: str, claims) -> List[Claim]:
    """``claims`` as a list of :class:`Claim` with distinct ids (what ``claims(df, config)`` must return),
    the experiment's primary hypotheses Holm-adjusted as one family (:func:`adjust_primaries`)."""
    claims = list(claims)
    if not all(isinstance(c, Claim) for c in claims):
        raise TypeError(f"{name}.claims must return Claim objects (analysis.experiments.verification/hypothesis)")
    ids = [c.id for c in claims]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"{name}: claim ids must be distinct, repeated: {repeated}")
    return adjust_primaries(claims)


def recheck_claims(out_dir: Path, name: str) -> List[Claim]:
    """Recompute the claims of stored results with the current ``claims(df, config)`` and rewrite
    ``claims.json``; the manifest records when and at which commit (the data are untouched)."""
    folder = Path(out_dir) / name
    if not (folder / "results.parquet").is_file():
        raise FileNotFoundError(f"no stored results for {name!r} under {folder}")
    df = pd.read_parquet(folder / "results.parquet")
    manifest = json.loads((folder / "manifest.json").read_text())
    module = EXPERIMENTS[name]
    claims = checked_claims(name, module.claims(df, config_from_dict(module, manifest["config"])))
    manifest["claims_rechecked"] = dict(at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                        git_commit=_git("rev-parse", "HEAD"))
    _write_claims_and_manifest(folder, claims, manifest)
    return claims


def adjust_stored_primaries(out_dir: Path) -> List[Claim]:
    """Holm over the primary hypotheses of every experiment stored under ``out_dir`` as one family
    (the study's), rewriting the ``claims.json`` files whose claims change; returns the primaries."""
    files = sorted(Path(out_dir).glob("*/claims.json"))
    stored = [[Claim.from_dict(c) for c in json.loads(path.read_text())] for path in files]
    adjusted = iter(adjust_primaries([claim for claims in stored for claim in claims]))
    primaries = []
    for path, claims in zip(files, stored):
        updated = [next(adjusted) for _ in claims]
        primaries += [c for c in updated if c.primary]
        if updated != claims:
            path.write_text(json.dumps([c.to_dict() for c in updated], indent=2) + "\n")
    return primaries


def run_experiment(name: str, out_dir: Path, *, scale: str = "small", seed: int = 0, impl: str = "vectorized",
                   workers: int = 1, scheduler: Optional[str] = None, progress: bool = True,
                   resume: bool = False) -> Tuple[pd.DataFrame, List[Claim], dict]:
    """Run experiment ``name``'s tasks (``analysis.runner``: in this process, in ``workers`` local
    processes, or on the Dask cluster at ``scheduler``; with ``resume``, the tasks already in the
    task cache are read from it), then store and return the results, claims and manifest. The
    stored parquet does not depend on ``workers``, ``scheduler`` or ``resume``."""
    module = EXPERIMENTS[name]
    config = config_for(module, scale, seed=seed, impl=impl)
    tasks = module.tasks(config)
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    df = run_tasks(module, config, tasks, workers=workers, scheduler=scheduler, progress=progress,
                   cache=Path(out_dir) / ".task-cache" / name, resume=resume)
    wall = time.perf_counter() - start
    claims = checked_claims(name, module.claims(df, config))
    manifest = dict(
        experiment=name, scale=scale, seed=seed, impl=impl, config=dataclasses.asdict(config), tasks=len(tasks),
        workers=workers, scheduler=scheduler, threads=1,  # torch threads per task, wherever it ran
        code_digest=code_identity(module.__name__),  # the sources and library versions the numbers came from
        started_at=started_at, wall_time_s=round(wall, 3), **environment(),
    )
    if hasattr(config, "seed_sets"):  # the training experiments: evaluation and learning-rate selection seeds
        manifest.update(config.seed_sets())
    save_results(out_dir, name, df, claims, manifest)
    return df, claims, manifest


def environment() -> dict:
    """Versions, git state and hardware, for the manifest."""
    from importlib.metadata import PackageNotFoundError, version

    def package_version(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return dict(
        python=sys.version.split()[0], torch=torch.__version__, numpy=np.__version__, pandas=pd.__version__,
        packages={name: package_version(name) for name in ("dicebench", "pyarrow", "matplotlib", "monai", "triton", "distributed")},
        git_commit=_git("rev-parse", "HEAD"), git_dirty=bool(_git("status", "--porcelain", "--untracked-files=no")),
        platform=platform.platform(), cpu=cpu_model(),
        gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    )


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


