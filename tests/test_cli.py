"""The ``dicebench`` command line: one-way imports, one-line usage errors, documented exit codes."""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

from analysis import cli

REPO = Path(__file__).resolve().parent.parent
USAGE_ERROR = re.compile(r"^dicebench( [a-z]+)?: error: \S.*\n$")


def run_cli(argv, capsys):
    """``dicebench argv`` in this process: (exit status, stdout, stderr)."""
    try:
        status = cli.main(argv)
    except SystemExit as exit_:  # argparse's own exits (--help, --version, its errors)
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def test_subcommand_modules_define_the_interface_and_never_import_the_dispatcher():
    for name, (module_name, _) in cli.SUBCOMMANDS.items():
        source = REPO / "analysis" / f"{module_name}.py"
        tree = ast.parse(source.read_text())
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        defined |= {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
        assert {"DESCRIPTION", "add_arguments", "main"} <= defined, name
    for path in (REPO / "analysis").rglob("*.py"):
        if path.name == "cli.py":
            continue
        package = ".".join(path.relative_to(REPO).parent.parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
                module = ".".join(p for p in (base, node.module) if p)
                imported = [module, *(f"{module}.{alias.name}" for alias in node.names)]
            else:
                imported = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            assert "analysis.cli" not in imported, f"{path.relative_to(REPO)} imports the dispatcher"


def test_top_level_help_has_one_line_per_subcommand_and_the_exit_codes(capsys):
    status, out, _ = run_cli(["--help"], capsys)
    assert status == 0
    for name, (module_name, _) in cli.SUBCOMMANDS.items():
        module = __import__(f"analysis.{module_name}", fromlist=["DESCRIPTION"])
        assert "\n" not in module.DESCRIPTION and len(module.DESCRIPTION) < 100, name
        assert re.search(rf"^\s+{name}\s", out, re.M), name
    assert "Exit status: 0 ok, 1 a difference or a failed verification, 2 a usage or input error" in " ".join(out.split())


def test_version(capsys):
    status, out, _ = run_cli(["--version"], capsys)
    assert status == 0 and re.fullmatch(r"dicebench \d+\.\d+\.\d+\S*\n", out)


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: COMMAND"),
    (["nope"], "invalid choice: 'nope'"),
    (["run", "--scale", "huge"], "argument --scale: invalid choice: 'huge'"),
    (["experiment", "s1_imbalance", "--impl", "nope"], "argument --impl: invalid choice: 'nope'"),
    (["experiment", "e9_nope"], "invalid choice: 'e9_nope'"),
    (["compare", "/nonexistent/a", "/nonexistent/b"], "run folder /nonexistent/a does not exist"),
    (["report", "--results", "/nonexistent"], "--results /nonexistent does not exist"),
    (["report", "--bench-json", "/nonexistent.json"], "--bench-json /nonexistent.json does not exist"),
    (["figures", "--results", "/nonexistent"], "no experiment results under /nonexistent"),
])
def test_a_misuse_is_one_line_and_exit_status_2(argv, message, capsys, tmp_path):
    status, out, err = run_cli(argv, capsys)
    assert status == 2
    assert USAGE_ERROR.match(err), err
    assert message in err and "Traceback" not in err and out == ""


def test_compare_of_a_folder_without_results_is_a_usage_error(capsys, tmp_path):
    (tmp_path / "a").mkdir()
    status, _, err = run_cli(["compare", str(tmp_path / "a"), str(tmp_path / "a")], capsys)
    assert status == 2 and USAGE_ERROR.match(err) and "holds neither" in err


def test_a_missing_extra_is_named_before_any_import(monkeypatch, capsys):
    monkeypatch.setitem(cli.SUBCOMMANDS, "report", ("report", ("needs_a_missing_package",)))
    monkeypatch.setattr(cli, "pyproject", lambda: {"project": {"version": "0", "optional-dependencies": {
        "needs_a_missing_package": ["dicebench[other]", "pytest"], "other": ["no-such-distribution>=1; python_version > '3'"]}}})
    status, _, err = run_cli(["report", "--anything"], capsys)
    assert status == 2 and USAGE_ERROR.match(err)
    assert "needs dicebench[needs_a_missing_package]" in err and "missing: no-such-distribution" in err


def test_the_extras_of_every_subcommand_exist_in_pyproject():
    extras = cli.pyproject()["project"]["optional-dependencies"]
    for name, (_, needed) in cli.SUBCOMMANDS.items():
        assert set(needed) <= set(extras), name
    assert cli.missing_requirements(("dev",)) == []  # this environment has everything


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_elsewhere(monkeypatch):
    from tqdm import tqdm

    from analysis import progress

    assert isinstance(progress.track(range(3), desc="x", file=Terminal()), tqdm)
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)
    log = io.StringIO()
    assert list(progress.track(range(1000), desc="stage", file=log)) == list(range(1000))
    lines = log.getvalue().splitlines()
    assert lines[0] == "stage: 0/1000" and re.fullmatch(r"stage: 1000/1000 in \d+ s", lines[-1])
    assert 10 <= len(lines) <= 12  # about one line per tenth
    assert all(re.fullmatch(r"stage: \d+/1000 \(\d+%\), \d+ s, about \d+ s left", line) for line in lines[1:-1])
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    quiet = io.StringIO()
    with progress.track(total=5, desc="off", disable=True, file=quiet) as bar:
        bar.update(5)
    assert quiet.getvalue() == ""


def asv_run(folder: Path, cpu: str, zero_a_memory: bool = False) -> Path:
    """A run folder holding a copy of the committed asv results and one small experiment's numbers; with
    ``zero_a_memory``, one peak memory in bytes (a value above 4: its change from 0 overflows a
    division by the smallest float) is 0."""
    shutil.copytree(REPO / "results" / "asv", folder / "asv")
    shutil.copytree(REPO / "results" / "experiments" / "e5_empty", folder / "experiments" / "e5_empty")
    (folder / "experiments" / "e5_empty" / "claims.json").write_text("[]")  # numbers alone are compared here
    (machine_json,) = (folder / "asv").glob("*/machine.json")
    machine_json.write_text(json.dumps({**json.loads(machine_json.read_text()), "cpu": cpu}))
    if zero_a_memory:
        (path,) = [p for p in (folder / "asv").glob("*/*.json") if p.name != "machine.json"]
        stored = json.loads(path.read_text())
        values = next(v[0] for name, v in stored["results"].items() if ".track_peak_bytes" in name)
        values[next(i for i, x in enumerate(values) if isinstance(x, (int, float)) and x > 4)] = 0.0
        path.write_text(json.dumps(stored))
    return folder


def test_compare_does_not_compare_timings_of_different_machines(tmp_path, capsys):
    a, b = asv_run(tmp_path / "a", "cpu one"), asv_run(tmp_path / "b", "cpu two", zero_a_memory=True)
    status, out, err = run_cli(["compare", str(a), str(b)], capsys)
    assert status == 0 and "None (asv)" in out
    (warning,) = err.splitlines()
    assert warning.startswith("dicebench compare: warning: asv timings not compared") and "cpu one" in warning
    status, out, err = run_cli(["compare", str(a), str(b), "--across-machines"], capsys)
    assert status == 1 and err == "" and "[benchmark]" in out


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_compare_of_a_timing_that_was_zero_leaks_no_numpy_warning(tmp_path, capsys):
    a, b = asv_run(tmp_path / "a", "cpu", zero_a_memory=True), asv_run(tmp_path / "b", "cpu")
    status, out, err = run_cli(["compare", str(b), str(a)], capsys)
    assert status == 1 and "relative change inf" in out and err == ""


def test_compare_of_runs_sharing_nothing_is_a_usage_error(tmp_path, capsys):
    a, b = asv_run(tmp_path / "a", "cpu one"), asv_run(tmp_path / "b", "cpu two")
    for run in (a, b):
        shutil.rmtree(run / "experiments")
    status, _, err = run_cli(["compare", str(a), str(b)], capsys)
    assert status == 2 and err.splitlines()[-1].startswith("dicebench compare: error: nothing to compare")


# ---- the launcher: the installed `dicebench` command finds the checkout --------------------------


def test_the_checkout_is_found_from_the_variable_the_current_directory_or_the_editable_install(tmp_path):
    from dicebench import find_checkout

    site_packages = tmp_path / "site-packages"
    site_packages.mkdir()
    assert find_checkout(REPO / "docs", {}, site_packages) == REPO
    assert find_checkout(tmp_path, {}, site_packages) is None
    assert find_checkout(tmp_path, {}, REPO) == REPO  # an editable install: the package sits in the checkout
    assert find_checkout(tmp_path, {"DICEBENCH_CHECKOUT": str(REPO)}, site_packages) == REPO
    assert find_checkout(REPO, {"DICEBENCH_CHECKOUT": str(tmp_path)}, REPO) is None  # a wrong variable is an error


def launcher_outside_the_checkout(tmp_path: Path) -> dict:
    """Environment of a `python -m dicebench` installed apart from the checkout, as `pip install .` does."""
    shutil.copytree(REPO / "dicebench", tmp_path / "site-packages" / "dicebench")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DICEBENCH_CHECKOUT")}
    return {**env, "PYTHONPATH": str(tmp_path / "site-packages")}


def test_the_launcher_outside_a_checkout_says_so_in_one_line(tmp_path):
    env = launcher_outside_the_checkout(tmp_path)
    done = subprocess.run([sys.executable, "-m", "dicebench", "report"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert USAGE_ERROR.match(done.stderr) and "no checkout of dicebench" in done.stderr


def test_the_launcher_runs_the_checkout_it_is_called_from(tmp_path):
    env = launcher_outside_the_checkout(tmp_path)
    done = subprocess.run([sys.executable, "-m", "dicebench", "--version"], cwd=REPO / "docs", env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == f"dicebench {cli.version()}\n" and done.stderr == ""


def test_only_the_project_s_own_packages_are_installed():
    import setuptools

    project = cli.pyproject()
    found = setuptools.find_packages(str(REPO), include=project["tool"]["setuptools"]["packages"]["find"]["include"])
    assert {name.split(".")[0] for name in found} == {"dice_impls", "dicebench"}
    assert "analysis" not in found and "benchmarks" not in found
    heavy = {"pandas", "pyarrow", "matplotlib", "asv", "monai", "kornia"}
    assert not heavy & {re.match(r"[A-Za-z0-9._-]+", r).group() for r in project["project"]["dependencies"]}
    assert project["project"]["scripts"] == {"dicebench": "dicebench:main"}


def test_run_outside_a_git_checkout_stops_before_any_stage(monkeypatch, tmp_path, capsys):
    from analysis import run

    monkeypatch.setattr(run, "REPO", tmp_path)
    status, out, err = run_cli(["run", "--out", str(tmp_path / "out")], capsys)
    assert status == 2 and out == "" and USAGE_ERROR.match(err) and "not a git checkout" in err
    assert not (tmp_path / "out").exists()
