"""The synthetic experiments at small scale: claims hold for two seeds, storage is deterministic,
figures draw from stored results, and E2's closed-form gradients match autograd in float64."""

from __future__ import annotations

import pytest
import torch

from analysis.experiments import EXPERIMENTS
from analysis.experiments import e2_gradients
from analysis.storage import load_results, run_experiment
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


@pytest.mark.parametrize("name", ["e5_empty", "p1_precision"])
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


def test_average_precision_and_calibration_error_on_known_cases():
    from analysis.training import average_precision, calibration_error

    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=torch.float64)
    labels = torch.tensor([1, 0, 1, 0])
    assert average_precision(scores, labels) == pytest.approx((1 / 1 + 2 / 3) / 2, abs=1e-12)
    assert calibration_error(torch.full((4,), 0.5, dtype=torch.float64), labels) == pytest.approx(0.0, abs=1e-12)
    assert calibration_error(torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.long)) == pytest.approx(1.0)


@pytest.mark.parametrize("model_name", ["logistic", "cnn"])
def test_models_train_and_lower_the_loss(model_name):
    from analysis.training import make_loss, make_model, predict, train

    data = make_batch(2, (32, 32), fg_fraction=0.1, sigma=0.5, generator=generator_for(0))
    model = make_model(model_name, generator=generator_for(1))
    loss_fn = make_loss("dice_ce")
    before = float(loss_fn(predict(model, data.images), data.masks))
    train(model, data.images, data.masks, loss_fn, steps=30, lr=0.05)
    logits = predict(model, data.images)
    assert logits.shape == (2, 1, 32, 32)
    assert float(loss_fn(logits, data.masks)) < before
