"""The package as a user installs it: the sdist carries the C++ sources, the wheel the compiled
extension, and a fresh virtual environment with that wheel (and no compiler on PATH) runs the
C++ kernels without building anything.

Slow (about 2-3 minutes: one compile of the extension, torch installed from the local wheel
cache), but part of `make test`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["fused_ops.cpp", "fused_scoring.cpp", "fused_scoring.h", "gradient_pool.cpp", "gradient_pool.h",
           "folded_autograd.cpp", "fused_kernels.h", "fused_args.h", "fused_kernels_baseline.cpp", "fused_kernels_avx2.cpp",
           "fused_kernels_avx512.cpp", "build_config.py"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """sdist and wheel of the working tree, built as pip builds them (PEP 517 hooks, one process
    each), without isolation (the running environment has the pinned torch). The wheel's objects
    are kept in the checkout's build/ (ignored), so a rerun recompiles only what changed."""
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    names = []
    for hook in ("build_sdist", "build_wheel"):
        code = f"import sys; from setuptools import build_meta; print(build_meta.{hook}(sys.argv[1]))"
        result = subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, env=env, capture_output=True,
                                text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        names.append(result.stdout.split()[-1])
    return out / names[0], out / names[1]


def test_sdist_has_the_sources(dists):
    sdist, _ = dists
    with tarfile.open(sdist) as archive:
        names = {Path(name).name for name in archive.getnames()}
    assert {"setup.py", "pyproject.toml", *SOURCES} <= names


def test_wheel_has_the_extension(dists):
    _, wheel = dists
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert any(name.startswith("dice_impls/fused/_C") and name.endswith(".so") for name in names), names
    assert "-linux_" in wheel.name or "manylinux" in wheel.name  # a platform wheel, not py3-none-any


def test_installed_wheel_uses_the_cpp_kernel_without_a_compiler(dists, tmp_path):
    _, wheel = dists
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # Without PYTHONPATH: the checkout on it (its dicebench.egg-info) would look installed already.
    clean = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    subprocess.run(pip + ["torch==2.13.0"], check=True, env=clean)
    subprocess.run(pip + ["--no-deps", str(wheel)], check=True, env=clean)
    extensions = tmp_path / "torch_extensions"
    extensions.mkdir()
    check = (
        "import shutil, torch, dice_impls\n"
        "from dice_impls.fused import cpu, ops\n"
        "assert shutil.which('c++') is None and shutil.which('gcc') is None, 'a compiler is on PATH'\n"
        "assert 'site-packages' in cpu.built_library(), cpu.built_library()\n"
        "assert cpu.load_extension() == 'built' and ops.isa() in ('baseline', 'avx2', 'avx512')\n"
        "x = torch.randn(2, 3, 9, 7, dtype=torch.float64, requires_grad=True)\n"
        "y = torch.randint(0, 3, (2, 9, 7))\n"
        "loss = dice_impls.dice_loss(x, y, impl='fused')\n"
        "assert abs(float(loss - dice_impls.dice_loss(x, y, impl='reference'))) < 1e-9\n"
        "loss.backward()\n"
        "print(ops.isa())\n"
    )
    env = {"PATH": str(venv / "bin"), "HOME": str(tmp_path), "TORCH_EXTENSIONS_DIR": str(extensions)}
    result = subprocess.run([str(python), "-c", check], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "building" not in result.stderr and "compiling" not in result.stderr, result.stderr
    assert not any(extensions.iterdir()), "something was compiled"
