"""asv as configured: environments built per commit, and runs that write only git-ignored paths.

The slow test runs what ``make asv`` runs (one benchmark combination, in this environment rather
than a virtualenv asv would take minutes to build) in a fresh clone, then checks that the clone's
``git status`` is clean and the results landed under ``reports/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def asv_config() -> dict:
    from asv.util import load_json

    return load_json(str(REPO / "asv.conf.json"), js_comments=True)


def test_asv_builds_an_environment_per_commit_with_torch_first():
    config = asv_config()
    assert config["environment_type"] == "virtualenv"
    requirements = list(config["matrix"]["req"].items())
    assert requirements[0] == ("torch", "2.13.0")  # installed first, pinned: the CPU build from local disk
    assert {"monai", "kornia"} <= set(config["matrix"]["req"])  # the peers, the same for every commit
    assert "--no-build-isolation" in config["build_command"][0]  # the wheel builds against that torch
    assert "[bench]" in config["install_command"][0]


@pytest.mark.parametrize("key", ["results_dir", "html_dir", "env_dir"])
def test_everything_asv_writes_is_git_ignored(key):
    path = asv_config()[key]
    assert not path.startswith("results"), f"{key} must not point into the committed results"
    ignored = subprocess.run(["git", "check-ignore", "-q", f"{path}/probe"], cwd=REPO)
    assert ignored.returncode == 0, f"{key} = {path} is not git-ignored"


def test_the_make_targets_never_write_the_curated_results():
    for target in ("asv", "asv-range", "asv-continuous", "asv-quick", "asv-gpu"):
        commands = subprocess.run(["make", "-n", target, "ASV_MACHINE=testbox"], cwd=REPO, capture_output=True,
                                  text=True, check=True).stdout
        assert "asv" in commands and "results/asv" not in commands, target


def test_a_machine_name_is_stable_and_path_free(tmp_path):
    from benchmarks.asv_machine import default_name, detected

    info = detected()
    name = default_name(info)
    assert name == default_name(detected()) and "/" not in name and name.endswith(f"-{info['num_cpu']}core")
    assert info["ram"].endswith(" GiB")


@pytest.mark.slow
def test_make_asv_leaves_git_status_clean(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = dict(os.environ, HOME=str(tmp_path / "home"))  # asv's machine file goes there, not to the user's
    (tmp_path / "home").mkdir()

    def run(*args: str) -> None:
        done = subprocess.run(args, cwd=clone, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    run(sys.executable, "-m", "benchmarks.asv_machine", "testbox")
    asv = [sys.executable, "-m", "asv"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True, check=True).stdout.strip()
    run(*asv, "run", "--python=same", "--machine", "testbox", "--set-commit-hash", commit, "--launch-method=forkserver",
        "-b", r"^bench_loss\.Grid\.time_forward_backward\('vectorized', 'float32', '4x4x128x128'\)$")
    run(*asv, "publish")
    assert list((clone / "reports" / "asv" / "testbox").glob(f"{commit[:8]}-*.json"))
    assert (clone / "reports" / "asv-html" / "index.html").is_file()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=clone,
                            capture_output=True, text=True, check=True).stdout
    assert status == ""


def test_the_selections_are_defined_once_and_match_the_suite():
    from benchmarks.benchmarks.common import HEADLINE_SHAPES
    from benchmarks.selections import HEADLINE_SHAPE_2D, SELECTIONS

    assert HEADLINE_SHAPE_2D == HEADLINE_SHAPES[0]
    makefile = (REPO / "Makefile").read_text()
    assert "bench_loss" not in makefile and "bench_scaling" not in makefile, "the Makefile spells out a selection"
    for name in ("cpu", "smoke", "gpu", "continuous"):
        assert f"$(call selection,{name})" in makefile
    assert set(SELECTIONS) >= {"cpu", "gpu", "smoke", "quick", "continuous"}
