"""The ``dicebench`` command line: one-way imports, one-line usage errors, documented exit codes."""

from __future__ import annotations

import ast
import re
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
    assert "dicebench[needs_a_missing_package]" in err and "missing: no-such-distribution" in err


def test_the_extras_of_every_subcommand_exist_in_pyproject():
    extras = cli.pyproject()["project"]["optional-dependencies"]
    for name, (_, needed) in cli.SUBCOMMANDS.items():
        assert set(needed) <= set(extras), name
    assert cli.missing_requirements(("dev",)) == []  # this environment has everything
