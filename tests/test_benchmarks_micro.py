"""Benchmark helpers, and the pytest-benchmark micro suite.

The micro suite (the tests that take pytest-benchmark's ``benchmark`` fixture) times a few key
cases: ``pytest --benchmark-only tests/test_benchmarks_micro.py`` runs it alone, ``make bench``
adds ``--benchmark-json=reports/bench.json`` for the report. Every other run skips it
(``--benchmark-skip`` in pyproject's addopts, which ``--benchmark-only`` overrides); the helper
tests run in the normal ``make test``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmarks.benchmarks import bench_cuda
from benchmarks.benchmarks.common import LOSSES, check_supported, make_inputs, parse_shape, voxels
from benchmarks.results import load_asv_results, ratios_to
from dice_impls import DiceSpec, dice_loss

REPO = Path(__file__).resolve().parent.parent

# ---- helpers ------------------------------------------------------------------------------------


def test_peers_and_ours_agree_with_the_reference_on_their_presets():
    logits, labels = make_inputs("2x3x8x8", "float32", seed=1)
    for name, loss in LOSSES.items():
        if name == "vectorized_compiled":
            continue  # compiling costs tens of seconds; it wraps "vectorized", checked here
        preset = "kornia" if name == "kornia" else "monai"
        expected = dice_loss(logits.double(), labels, DiceSpec.preset(preset), impl="reference")
        torch.testing.assert_close(loss(logits, labels).double(), expected, rtol=1e-5, atol=1e-6, msg=name)


def test_make_inputs_is_seeded_and_typed():
    a, la = make_inputs("2x3x4x5x6", "bfloat16", seed=7, label_dtype="uint8", requires_grad=True)
    b, lb = make_inputs("2x3x4x5x6", "bfloat16", seed=7, label_dtype="uint8")
    c, _ = make_inputs("2x3x4x5x6", "bfloat16", seed=8)
    assert a.shape == (2, 3, 4, 5, 6) and la.shape == (2, 4, 5, 6)
    assert a.dtype == torch.bfloat16 and la.dtype == torch.uint8 and a.requires_grad
    assert torch.equal(a.detach(), b) and torch.equal(la, lb) and not torch.equal(a.detach(), c)
    assert int(la.min()) >= 0 and int(la.max()) == 2
    assert parse_shape("2x3x4") == (2, 3, 4) and voxels("2x3x4") == 24


def test_impossible_combinations_are_not_implemented():
    with pytest.raises(NotImplementedError, match="kornia"):
        check_supported("kornia", "1x4x8x8x8", "float32")
    with pytest.raises(NotImplementedError, match="float32 only"):
        check_supported("vectorized_compiled", "1x4x8x8", "bfloat16")
    with pytest.raises(NotImplementedError, match="not available"):
        check_supported("no_such_loss", "1x4x8x8", "float32")
    check_supported("kornia", "1x4x8x8", "float16")  # runs


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_cuda_benchmarks_are_not_implemented_without_cuda():
    with pytest.raises(NotImplementedError, match="CUDA"):
        bench_cuda.CudaLoss().setup("vectorized", "float32", "1x4x8x8")


def test_cuda_timer_is_callable_the_way_asv_calls_it():
    # asv_runner reads ``timer`` from the benchmark instance and calls it with no arguments.
    timer = bench_cuda.CudaLoss().timer
    first = timer()
    assert isinstance(first, float) and timer() >= first


def test_peak_rss_increase_sees_a_known_allocation():
    # In a child process: the measurement changes malloc's settings for the rest of the process.
    size = 16 * 2**20
    code = ("import torch; from benchmarks.benchmarks.common import peak_rss_increase; "
            f"print(peak_rss_increase(lambda: torch.empty({size // 4}).fill_(1.0)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert 0.9 * size <= int(out) <= 1.5 * size


def test_load_asv_results_reads_values_na_and_failures(tmp_path):
    (tmp_path / "box").mkdir()
    (tmp_path / "benchmarks.json").write_text(json.dumps({
        "bench_loss.Grid.time_forward": {"unit": "seconds", "param_names": ["implementation", "shape"]},
        "version": 2,
    }))
    (tmp_path / "box" / "machine.json").write_text(json.dumps({"machine": "box", "version": 1}))
    (tmp_path / "box" / "abc-existing.json").write_text(json.dumps({
        "commit_hash": "abc", "env_name": "existing", "date": 1, "params": {"machine": "box"},
        "result_columns": ["result", "params", "version"],
        "results": {"bench_loss.Grid.time_forward": [
            [0.5, None, float("nan"), 2.0], [["'fused'", "'monai'"], ["'1x4x8x8'", "'1x4x8x8x8'"]], "v"]},
        "version": 2,
    }))
    df = load_asv_results(tmp_path)
    assert list(df["implementation"]) == ["fused", "fused", "monai", "monai"]
    assert list(df["shape"]) == ["1x4x8x8", "1x4x8x8x8"] * 2
    assert list(df["status"]) == ["ok", "failed", "n/a", "ok"]
    assert df["value"].iloc[0] == 0.5 and df["value"].iloc[3] == 2.0 and math.isnan(df["value"].iloc[1])
    assert set(df["unit"]) == {"seconds"} and set(df["machine"]) == {"box"} and set(df["commit"]) == {"abc"}


def test_ratios_to_divides_by_the_baseline_of_the_same_measurement():
    rows = [("bench_loss.Headline.time_forward_backward", "monai", 2.0, "ok"),
            ("bench_loss.Headline.time_forward_backward", "fused", 0.5, "ok"),
            ("bench_loss.HeadlineCompiled.time_forward_backward", "vectorized_compiled", 3.0, "ok"),
            ("bench_loss.Headline.track_peak_bytes_forward_backward", "monai", 10.0, "ok"),
            ("bench_loss.Headline.track_peak_bytes_forward_backward", "fused", float("nan"), "n/a"),
            ("bench_loss.Grid.time_forward", "fused", 9.0, "ok")]
    df = pd.DataFrame([dict(benchmark=b, implementation=i, value=v, status=s, dtype="float32", shape="1x4x8x8",
                            machine="box", commit="abc") for b, i, v, s in rows])
    table = ratios_to(df, "monai").droplevel(["dtype", "shape", "machine", "commit"])
    assert table.loc["time_forward_backward", "fused"] == 0.25
    assert table.loc["time_forward_backward", "vectorized_compiled"] == 1.5
    assert math.isnan(table.loc["track_peak_bytes_forward_backward", "fused"])
    assert "time_forward" not in table.index  # Grid is not a headline benchmark


# ---- the micro suite (make bench) ---------------------------------------------------------------

MICRO_CASES = [(name, "float32") for name in ("vectorized", "mixed", "fused", "monai", "kornia")] + [
    (name, "bfloat16") for name in ("mixed", "fused", "monai")
]


@pytest.fixture
def two_threads():
    """Timings on two torch threads (the committed numbers' machine has two cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("shape", ["4x4x256x256", "1x4x64x64x64"])
@pytest.mark.parametrize("name, dtype", MICRO_CASES)
def test_forward_backward(benchmark, two_threads, name, dtype, shape):
    check_supported_or_skip(name, shape, dtype)
    logits, labels = make_inputs(shape, dtype, requires_grad=True)
    loss = LOSSES[name]

    def forward_backward():
        loss(logits, labels).backward()
        logits.grad = None

    benchmark.group = f"forward+backward {dtype} {shape}"
    benchmark.extra_info.update(implementation=name, dtype=dtype, shape=shape)
    benchmark.pedantic(forward_backward, warmup_rounds=1, rounds=7, iterations=1)


def check_supported_or_skip(name: str, shape: str, dtype: str) -> None:
    try:
        check_supported(name, shape, dtype)
    except NotImplementedError as why:
        pytest.skip(f"n/a: {why}")
