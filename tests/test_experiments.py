"""The synthetic experiments at small scale: claims hold for two seeds, storage is deterministic,
figures draw from stored results, and E2's closed-form gradients match autograd in float64.
Then the claims machinery on a tiny fake experiment (``tests/fake_experiment.py``): the
verification and hypothesis rules, storage round trips, the command's exit codes, the report's
claims table and the docs table."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

import fake_experiment
from analysis.experiments import (EXPERIMENTS, Claim, adjust_primaries, config_for, config_from_dict, hypothesis,
                                  verification)
from analysis.experiments import e2_gradients
from analysis.storage import load_results, recheck_claims, run_experiment
from analysis.synthetic import generator_for, make_batch, object_masks
from dice_impls import IMPLEMENTATIONS


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_small_scale_claims_hold_and_figures_render(name, seed, tmp_path):
    df, claims, manifest = run_experiment(name, tmp_path, scale="small", seed=seed, progress=False)
    assert len(df) > 0 and claims
    failed = [f"{c.id}: {c.statement}: value {c.value:.4g}" for c in claims if c.kind == "verification" and not c.passed]
    assert not failed, "claims failed:\n" + "\n".join(failed)

    stored, stored_claims, stored_manifest = load_results(tmp_path, name)
    assert stored.shape == df.shape
    assert [c["id"] for c in stored_claims] == [c.id for c in claims]
    for key in ("python", "torch", "numpy", "git_commit", "git_dirty", "cpu", "gpu", "config", "wall_time_s"):
        assert key in stored_manifest
    assert stored_manifest["seed"] == seed and stored_manifest["scale"] == "small"

    paths = EXPERIMENTS[name].figures(stored, tmp_path / "figures")
    assert {p.suffix for p in paths} == {".png", ".svg"}
    assert all(p.stat().st_size > 1000 for p in paths)


@pytest.mark.parametrize("name", ["s3_empty", "p1_precision"])
def test_same_seed_gives_identical_parquet(name, tmp_path):
    for run in ("a", "b"):
        run_experiment(name, tmp_path / run, scale="small", seed=3, progress=False)
    first, second = ((tmp_path / run / name / "results.parquet").read_bytes() for run in ("a", "b"))
    assert first == second
    if name == "p1_precision":  # cheap: a different seed must change the bytes
        run_experiment(name, tmp_path / "c", scale="small", seed=4, progress=False)
        assert (tmp_path / "c" / name / "results.parquet").read_bytes() != first


@pytest.mark.parametrize("impl", [name for name in ("reference", "naive", "vectorized", "mixed", "fused")
                                  if name in IMPLEMENTATIONS])
@pytest.mark.parametrize("loss", ["dice", "dice_squared"])
def test_e2_closed_form_gradients_match_autograd_float64(impl, loss):
    gen = torch.Generator().manual_seed(11)
    g = object_masks(1, (24, 24), 40, generator=gen)[0]
    p = torch.rand((24, 24), generator=gen, dtype=torch.float64) * 0.98 + 0.01
    autograd = e2_gradients.gradients(loss, p, g, impl, 1e-5)
    closed = e2_gradients.analytic(loss, p, g, 1e-5)
    assert autograd.dtype == torch.float64
    assert ((autograd - closed).abs().max() / closed.abs().max()) <= 1e-8
    assert not torch.equal(closed, torch.zeros_like(closed))


def test_e2_ce_closed_form_matches_autograd():
    gen = torch.Generator().manual_seed(12)
    g = object_masks(1, (16, 16), 20, generator=gen)[0]
    p = torch.rand((16, 16), generator=gen, dtype=torch.float64) * 0.98 + 0.01
    autograd, closed = e2_gradients.gradients("ce", p, g, "vectorized", 0.0), e2_gradients.analytic("ce", p, g, 0.0)
    assert ((autograd - closed).abs().max() / closed.abs().max()) <= 1e-8


def test_synthetic_batch_has_exact_areas_empty_images_and_is_seeded():
    batch = make_batch(6, (32, 32), area=37, sigma=0.5, empty_fraction=0.5, generator=generator_for(5, 1))
    counts = batch.masks.flatten(1).sum(1)
    assert sorted(counts.tolist()) == [0, 0, 0, 37, 37, 37]
    assert batch.images.shape == (6, 1, 32, 32) and batch.images.dtype == torch.float32
    noise = batch.images[:, 0] - batch.masks
    assert 0.4 < float(noise.std()) < 0.6
    again = make_batch(6, (32, 32), area=37, sigma=0.5, empty_fraction=0.5, generator=generator_for(5, 1))
    assert torch.equal(batch.images, again.images) and torch.equal(batch.masks, again.masks)
    other = make_batch(6, (32, 32), area=37, sigma=0.5, empty_fraction=0.5, generator=generator_for(6, 1))
    assert not torch.equal(batch.images, other.images)


def test_synthetic_3d_and_fraction():
    batch = make_batch(2, (16, 16, 16), fg_fraction=0.05, objects=2, sigma=0.0, generator=generator_for(0))
    assert batch.masks.shape == (2, 16, 16, 16)
    assert torch.equal(batch.images[:, 0], batch.masks.float())
    assert all(0 < int(c) <= round(0.05 * 16**3) for c in batch.masks.flatten(1).sum(1))


@pytest.mark.parametrize("kwargs, message", [
    (dict(area=0), "objects <= area"), (dict(area=10, empty_fraction=1.5), "empty_fraction"),
    (dict(area=10, fg_fraction=0.1), "exactly one"), (dict(area=10, sigma=-1.0), "sigma"),
])
def test_synthetic_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_batch(2, (16, 16), generator=generator_for(0), **kwargs)


# --------------------------------------------------------------------------------------------
# Claims, storage, the command and the report's claims table, on the tiny fake experiment.

@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setitem(EXPERIMENTS, "fake", fake_experiment)
    return fake_experiment


def test_verification_compares_and_fails_on_nan():
    claim = verification("x", "v", 0.5, "<", 1.0)
    assert (claim.kind, claim.passed, claim.outcome, claim.ci_low, claim.source) == ("verification", True, "PASS", None, "")
    assert verification("x", "v", 2.0, "<", 1.0).outcome == "FAIL"
    assert not verification("x", "v", float("nan"), "<", 1.0).passed
    assert verification("x", "v", 1.0, "<=", 1.0).passed and not verification("x", "v", 1.0, "<", 1.0).passed


@pytest.mark.parametrize("value, ci, op, supported", [
    (0.5, (0.2, 0.8), ">", True),
    (0.5, (-0.1, 0.8), ">", False),  # the value clears the threshold, the interval does not
    (0.5, (0.0, 0.8), ">", False), (0.5, (0.0, 0.8), ">=", True),
    (-0.5, (-0.8, -0.2), "<", True), (-0.5, (-0.8, 0.1), "<", False),
    (0.5, (float("nan"), 0.8), ">", False), (float("nan"), (0.2, 0.8), ">", False),
])
def test_hypothesis_is_supported_only_when_the_whole_interval_clears(value, ci, op, supported):
    claim = hypothesis("h", "difference", "Author et al. 2020", value, ci, op, 0.0, stage="convergence")
    assert claim.passed is supported and claim.outcome == ("SUPPORTED" if supported else "FAILED")
    assert claim.kind == "hypothesis" and claim.stage == "convergence" and claim.source == "Author et al. 2020"


@pytest.mark.parametrize("make, message", [
    (lambda: hypothesis("h", "s", "  ", 1.0, (0.0, 2.0), ">", 0.0), "needs a source"),
    (lambda: hypothesis("h", "s", "src", 1.0, (2.0, 0.0), ">", 0.0), "low > high"),
    (lambda: hypothesis("h", "s", "src", 1.0, (None, None), ">", 0.0), "needs a confidence interval"),
    (lambda: hypothesis("h", "s", "src", 1.0, (0.0, 2.0), ">", 0.0, stage="end"), "stage"),
    (lambda: verification("v", "s", 1.0, "==", 0.0), "op must be one of"),
    (lambda: Claim("c", "guess", "s", "", 1.0, None, None, "<", 2.0, True), "kind"),
    (lambda: Claim("c", "verification", "s", "", 1.0, 0.0, None, "<", 2.0, True), "both ends"),
    (lambda: Claim.from_dict(dict(verification("v", "s", 1.0, "<", 2.0).to_dict(), note="x")), "unknown fields \\[.note.\\]"),
    (lambda: Claim.from_dict(dict(id="old", statement="s", value=1.0, threshold=2.0, passed=True)), "missing fields \\[.kind.,"),
])
def test_bad_claims_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("p_values, supported", [
    ((0.001, 0.01, 0.02), [True, True, True]),  # Holm: 0.003, 0.02, 0.02
    ((0.01, 0.02, 0.02), [False, False, False]),  # Holm: 0.03, 0.04, 0.04 > 0.025 though every interval clears
])
def test_primary_hypotheses_need_their_holm_adjusted_p(p_values, supported):
    claims = [hypothesis(f"h{i}", "d", "src", 0.5, (0.2, 0.8), ">", 0.0, p_value=p, primary=True, n_seeds=20)
              for i, p in enumerate(p_values)]
    exploratory = hypothesis("x", "d", "src", 0.5, (0.2, 0.8), ">", 0.0, p_value=0.04)
    assert not any(c.passed for c in claims) and exploratory.passed  # a primary waits for its adjustment
    adjusted = adjust_primaries([*claims, exploratory])
    assert [c.passed for c in adjusted[:3]] == supported and adjusted[3] == exploratory
    assert [c.p_adjusted for c in adjusted[:3]] == pytest.approx(
        sorted([min(1, (3 - r) * p) for r, p in enumerate(sorted(p_values))]) if supported[0] else [0.03, 0.04, 0.04])
    assert adjusted[0].n_seeds == 20 and adjusted[0].primary


def test_primaries_of_every_stored_experiment_form_one_family(tmp_path):
    from analysis.storage import adjust_stored_primaries, checked_claims

    for name, p in (("a", 0.015), ("b", 0.02)):  # each alone: SUPPORTED (Holm of one p is the p)
        claims = checked_claims(name, [hypothesis(f"{name}.h", "d", "src", 0.5, (0.2, 0.8), ">", 0.0, p_value=p,
                                                  primary=True, n_seeds=20), verification(f"{name}.v", "v", 1.0, "<", 2.0)])
        assert claims[0].passed and claims[0].p_adjusted == p
        (tmp_path / name).mkdir()
        (tmp_path / name / "claims.json").write_text(json.dumps([c.to_dict() for c in claims]))
    primaries = adjust_stored_primaries(tmp_path)
    assert [(c.id, c.p_adjusted, c.passed) for c in primaries] == [("a.h", 0.03, False), ("b.h", 0.03, False)]
    stored = json.loads((tmp_path / "a" / "claims.json").read_text())
    assert stored[0]["p_adjusted"] == 0.03 and not stored[0]["passed"] and stored[1]["passed"]


def test_claims_stored_before_the_primary_fields_still_load():
    stored = verification("v", "s", 1.0, "<", 2.0).to_dict()
    for key in ("primary", "n_seeds", "p_adjusted"):
        del stored[key]
    claim = Claim.from_dict(stored)
    assert (claim.primary, claim.n_seeds, claim.p_adjusted, claim.outcome) == (False, None, None, "PASS")
    with pytest.raises(ValueError, match="only a hypothesis"):
        dataclasses.replace(claim, primary=True)


def test_claims_round_trip_through_storage_and_recheck(fake, tmp_path):
    _, claims, _ = run_experiment("fake", tmp_path, seed=2, progress=False)
    stored = json.loads((tmp_path / "fake" / "claims.json").read_text())
    manifest = load_results(tmp_path, "fake")[2]  # through JSON: the config's tuples come back as lists
    assert [Claim.from_dict(c) for c in stored] == claims
    assert [c["kind"] for c in stored] == ["verification", "hypothesis"] and stored[1]["source"]
    assert config_from_dict(fake, manifest["config"]) == config_for(fake, "small", seed=2)
    assert recheck_claims(tmp_path, "fake") == claims
    assert "claims_rechecked" in json.loads((tmp_path / "fake" / "manifest.json").read_text())


def test_claims_must_be_claims_with_distinct_ids(fake, monkeypatch, tmp_path):
    twice = lambda df, config: [verification("same", "a", 1.0, "<", 2.0)] * 2  # noqa: E731
    monkeypatch.setattr(fake, "claims", twice)
    with pytest.raises(ValueError, match="repeated: \\['same'\\]"):
        run_experiment("fake", tmp_path, progress=False)


def run_command(argv, capsys):
    from analysis.cli import main

    code = main(argv)
    return code, capsys.readouterr().out


@pytest.mark.parametrize("change, code, shown", [
    (dict(), 0, ["PASS fake.rows_per_task", "SUPPORTED fake.mean_above [budget]"]),
    (dict(hypothesis_threshold=10.0), 0, ["PASS fake.rows_per_task", "FAILED fake.mean_above [budget]"]),
    (dict(verification_threshold=10.0), 1, ["FAIL fake.rows_per_task", "1 verification(s) failed"]),
])
def test_command_exits_1_only_for_a_failed_verification(fake, monkeypatch, tmp_path, capsys, change, code, shown):
    monkeypatch.setitem(fake.SCALES, "small", dataclasses.replace(fake.SCALES["small"], **change))
    status, out = run_command(["experiment", "fake", "--out", str(tmp_path), "--no-figures"], capsys)
    assert status == code
    for text in shown:
        assert text in out
    assert "6 tasks on 1 worker(s)" in out and "95% CI" in out


@pytest.mark.parametrize("options, message", [
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not both"), (["--workers", "0"], "at least 1"),
    (["--scheduler", "127.0.0.1:8786"], "tcp://HOST:PORT"),
])
def test_command_refuses_bad_worker_options(fake, tmp_path, capsys, options, message):
    from analysis.cli import main

    assert main(["experiment", "fake", "--out", str(tmp_path), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dicebench experiment: error: ") and message in err
    assert not (tmp_path / "fake").exists()


def table_rows(html: str) -> dict:
    """``{first cell text: [cell html, ...]}`` for every row of the rendered tables."""
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", html):
        cells = re.findall(r"<td[^>]*>.*?</td>", row)
        if cells:
            rows[re.sub(r"<[^>]+>", "", cells[0])] = cells
    return rows


def test_report_shows_the_claims_table_with_failed_hypotheses(fake, monkeypatch, tmp_path):
    from analysis.report import ReportData, collect, section_experiments

    monkeypatch.setitem(fake.SCALES, "small", dataclasses.replace(fake.SCALES["small"], hypothesis_threshold=10.0))
    _, claims, _ = run_experiment("fake", tmp_path / "results", seed=1, progress=False)
    data = collect(tmp_path / "results", tmp_path / "no-asv")
    assert isinstance(data, ReportData) and list(data.experiments) == ["fake"]
    html = section_experiments(data, tmp_path / "page" / "figures", tmp_path / "page")
    rows = table_rows(html)
    failed, passed = rows["fake.mean_above"], rows["fake.rows_per_task"]
    assert failed[-1] == '<td class="fail">FAILED</td>' and passed[-1] == '<td class="pass">PASS</td>'
    hypo = claims[1]
    assert [re.sub(r"<[^>]+>", "", c) for c in failed[1:5]] == ["hypothesis", "budget", hypo.statement, fake.SOURCE]
    assert f'data-value="{hypo.value!r}"' in failed[5] and f'data-value="{hypo.threshold!r}"' in failed[7]
    assert "&gt; 10" in failed[7] and " .. " in failed[6]
    assert "verifications passed 1/1; hypotheses supported 0/1 (FAILED: fake.mean_above)" in html
    assert (tmp_path / "page" / "figures" / "fake" / "fake_experiment.png").is_file()


def test_docs_table_is_written_from_the_stored_claims(fake, monkeypatch, tmp_path, capsys):
    from analysis.experiment_table import TABLE_BEGIN, TABLE_END

    monkeypatch.setitem(fake.SCALES, "small", dataclasses.replace(fake.SCALES["small"], hypothesis_threshold=10.0))
    _, claims, _ = run_experiment("fake", tmp_path / "results", progress=False)
    doc = tmp_path / "experiments.md"
    doc.write_text(f"# Findings\n\n{TABLE_BEGIN}\nstale\n{TABLE_END}\n\nMore text.\n")
    argv = ["experiment-table", "--results", str(tmp_path / "results"), "--doc", str(doc)]
    assert run_command(argv + ["--check"], capsys)[0] == 1
    assert run_command(argv, capsys)[0] == 0
    assert run_command(argv + ["--check"], capsys)[0] == 0
    text = doc.read_text()
    assert "stale" not in text and text.startswith("# Findings") and text.endswith("More text.\n")
    (line,) = [x for x in text.splitlines() if "`fake.mean_above`" in x]
    hypo = claims[1]
    assert f"| {hypo.value:.4g} | {hypo.ci_low:.4g} .. {hypo.ci_high:.4g} |" in line and line.endswith("| **FAILED** |")
    assert "| budget |" in line and f"| {fake.SOURCE} | > 10 |" in line
    assert "Verifications: 1/1 passed." in text
    doc.write_text("no markers\n")
    assert run_command(argv, capsys)[0] == 2 and doc.read_text() == "no markers\n"
