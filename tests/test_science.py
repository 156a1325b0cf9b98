"""The science of the experiments: the generator and its exact Bayes posterior (against brute
force and Monte Carlo), the model and the training loop (deterministic), the measurements on known
cases, and every experiment at small scale (verifications pass, hypotheses finite, same seed ->
identical parquet)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analysis.bayes import multiclass_posterior, posterior
from analysis.evaluation import (average_precision, best_threshold, calibration_error, f1_counts, fit_temperature,
                                 fold_metrics, fp_rate_at_recall, recall_at_precision, saturation_probe)
from analysis.experiments import EXPERIMENTS, config_for
from analysis.experiments.common import TrainingConfig
from analysis.storage import load_results, run_experiment
from analysis.synthetic import (generator_for, make_batch, make_multiclass_batch, object_masks, placements, shapes,
                                stamp)
from analysis.training import (LOSSES, UNet, collapse_state, fit, make_loss, predict, set_prior_bias, validation_best_dsc,
                               validation_dsc)

TRAINING_EXPERIMENTS = [name for name in EXPERIMENTS if issubclass(EXPERIMENTS[name].Config, TrainingConfig)]
VERIFICATIONS = ["e2_gradients", "p1_precision", "d1_distributed"]


def all_masks(shape, area):
    """Every placement's mask, enumerated directly (the brute force)."""
    masks = []
    for index, counts in placements(shape, area):
        for anchor in itertools.product(*[range(c) for c in counts]):
            mask = torch.zeros(shape, dtype=torch.int64)
            stamp(mask, shapes(area, len(shape))[index], anchor)
            masks.append(mask)
    return torch.stack(masks)


def brute_force(image, masks, sigma, empty_fraction):
    """Posterior over "empty" and every mask from the Gaussian likelihood of the whole image."""
    x = image.double()
    loglik = -((x - masks.double()) ** 2).flatten(1).sum(1) / (2 * sigma**2)
    logs = loglik + math.log(1 - empty_fraction) - math.log(len(masks))
    if empty_fraction > 0:
        logs = torch.cat([logs, (-(x**2).sum() / (2 * sigma**2) + math.log(empty_fraction)).view(1)])
    w = torch.softmax(logs, 0)
    return (w[: len(masks), None] * masks.double().flatten(1)).sum(0).view(image.shape), float(w[: len(masks)].sum())


@pytest.mark.parametrize("shape, area, empty", [((7, 6), 3, 0.3), ((6, 6), 1, 0.0), ((6, 5, 4), 4, 0.5), ((8, 8), 9, 0.0)])
def test_bayes_posterior_matches_brute_force(shape, area, empty):
    batch = make_batch(5, shape, area=area, sigma=0.8, empty_fraction=0.4, generator=generator_for(3, area))
    p, p_object = posterior(batch.images, area, 0.8, empty)
    masks = all_masks(shape, area)
    for n in range(5):
        expected, expected_object = brute_force(batch.images[n, 0], masks, 0.8, empty)
        assert torch.allclose(p[n], expected, atol=1e-12, rtol=0)
        assert abs(float(p_object[n]) - expected_object) < 1e-12
    assert p.dtype == torch.float64 and bool(((p >= 0) & (p <= 1)).all())


def test_multiclass_posterior_matches_brute_force():
    shape, areas, sigma = (5, 5), (2, 4), 0.7
    batch = make_multiclass_batch(3, shape, areas, sigma=sigma, generator=generator_for(8))
    probs = multiclass_posterior(batch.images, areas, sigma)
    masks = [all_masks(shape, a) for a in areas]
    a, b = (m.double().flatten(1) for m in masks)
    for n in range(3):
        weights = [torch.softmax(-((batch.images[n, k].double() - m.double()) ** 2).flatten(1).sum(1) / (2 * sigma**2), 0)
                   for k, m in enumerate(masks)]
        joint = weights[0][:, None] * weights[1][None, :]  # every pair of placements
        expected = torch.stack([torch.einsum("ij,ip,jp->p", joint, 1 - a, 1 - b),
                                torch.einsum("ij,ip,jp->p", joint, a, 1 - b),
                                torch.einsum("ij,jp->p", joint, b)]).view(3, *shape)
        assert torch.allclose(probs[n], expected, atol=1e-12, rtol=0)


def test_bayes_posterior_is_calibrated_on_fresh_draws():
    """Monte Carlo: the generator's prior is the posterior's prior, so the posterior is calibrated."""
    batch = make_batch(1500, (8, 8), area=4, sigma=0.9, empty_fraction=0.3, generator=generator_for(21))
    p, p_object = posterior(batch.images, 4, 0.9, 0.3)
    assert calibration_error(p.flatten(), batch.masks.flatten(), bins=10) < 0.01
    has_object = (batch.masks.flatten(1).sum(1) > 0).double()
    assert abs(float(p_object.mean() - has_object.mean())) < 0.03


def test_generator_uses_every_shape_and_keeps_areas():
    masks = object_masks(400, (12, 12), 7, generator=generator_for(4))
    assert set(masks.flatten(1).sum(1).tolist()) == {7}
    distinct = {tuple(m.nonzero().min(0).values.tolist()) + tuple(m.flatten().tolist()) for m in masks}
    assert len(distinct) > 100  # many placements, not a few
    assert len({tuple(s.points.flatten().tolist()) for s in shapes(7, 2)}) > 1  # sub-pixel offsets change the shape


def test_unet_receptive_field_covers_the_image():
    model = UNet(2, width=4, generator=generator_for(0))
    x = torch.randn(1, 1, 32, 32, generator=generator_for(1))
    y = x.clone()
    y[0, 0, 0, 0] += 5.0
    assert not torch.equal(predict(model, x)[0, 0, 31, 31], predict(model, y)[0, 0, 31, 31])
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.zeros(1, 1, 30, 30))


@pytest.mark.parametrize("classes", [1, 3])
@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_is_finite_with_a_gradient(loss, classes):
    logits = torch.randn(2, classes, 16, 16, generator=generator_for(2), requires_grad=True)
    labels = torch.randint(0, max(classes, 2), (2, 16, 16), generator=generator_for(3))
    value = make_loss(loss, classes=classes, frequencies=[0.9, 0.1] if classes == 1 else [0.8, 0.15, 0.05])(logits, labels)
    value.backward()
    assert torch.isfinite(value) and float(logits.grad.abs().sum()) > 0


def test_binary_generalized_dice_is_the_two_class_softmax_of_zero_and_z():
    from dice_impls import DiceSpec, dice_loss

    z = torch.randn(2, 1, 8, 8, generator=generator_for(5), dtype=torch.float64)
    labels = (torch.rand(2, 8, 8, generator=generator_for(6)) > 0.8).long()
    two = torch.cat([-z / 2, z / 2], 1)  # softmax(-z/2, z/2) = softmax(0, z)
    spec = DiceSpec(activation="softmax", generalized="square", include_background=True)
    assert torch.allclose(make_loss("gen_dice")(z, labels), dice_loss(two, labels, spec), atol=1e-12)


def _fit(seed):
    train = make_batch(16, (16, 16), area=6, sigma=0.5, generator=generator_for(seed, 0))
    val = make_batch(8, (16, 16), area=6, sigma=0.5, generator=generator_for(seed, 1))
    model = UNet(2, width=4, generator=generator_for(seed, 2))
    result = fit(model, make_loss("dice_ce"), train, val, lr=1e-2, generator=generator_for(seed, 3), batch_size=4,
                 budget_steps=6, max_steps=12, eval_every=3, patience=1,
                 probe=lambda z, g: saturation_probe(z, g, val.masks))
    return model, result


def test_training_is_deterministic_and_keeps_both_checkpoints():
    (m1, r1), (m2, r2), (_, r3) = _fit(0), _fit(0), _fit(1)
    assert r1.trajectory == r2.trajectory
    for key in r1.selected_state:
        assert torch.equal(r1.selected_state[key], r2.selected_state[key])
        assert torch.equal(r1.budget_state[key], r2.budget_state[key])
    assert r1.trajectory != r3.trajectory
    assert [p["step"] for p in r1.trajectory][:3] == [0, 3, 6]
    assert r1.trajectory[-1]["val_loss"] < r1.trajectory[0]["val_loss"]
    assert math.isfinite(r1.initial_grad_norm) and 0 <= r1.trajectory[-1]["cw_grad_share"] <= 1


def _frozen_fit(**options):
    """A run whose validation DSC never changes (learning rate 0): only the stopping rule acts."""
    train = make_batch(8, (16, 16), area=6, sigma=0.5, generator=generator_for(0, 0))
    val = make_batch(4, (16, 16), area=6, sigma=0.5, generator=generator_for(0, 1))
    model = UNet(2, width=4, generator=generator_for(0, 2))
    settings = dict(lr=0.0, generator=generator_for(0, 3), batch_size=4, budget_steps=2, max_steps=40, eval_every=2,
                    patience=2, plateau_warmup=6)
    return fit(model, make_loss("dice"), train, val, **{**settings, **options})


def test_stopping_rule_never_keeps_step_0_and_counts_patience_after_the_warm_up():
    result = _frozen_fit()
    # Evaluations at 2 (the first after step 0: selected), 4 and 6 (inside the warm-up: not counted),
    # 8 and 10 (stale twice = patience): the plateau stops the run at step 10.
    assert [p["step"] for p in result.trajectory] == [0, 2, 4, 6, 8, 10]
    assert (result.stopped_by, result.steps, result.selected_step) == ("plateau", 10, 2)
    later = _frozen_fit(plateau_warmup=20)
    assert (later.stopped_by, later.steps, later.selected_step) == ("plateau", 24, 2)
    assert not result.collapsed and result.final_grad_norm > 0


@pytest.mark.parametrize("options, stopped_by, steps", [
    (dict(patience=100), "cap", 40), (dict(schedule="constant", max_steps=7), "schedule", 7),
    (dict(schedule="cosine", max_steps=7, lr=1e-3), "schedule", 7),
])
def test_stopped_by_says_how_the_run_ended(options, stopped_by, steps):
    result = _frozen_fit(**options)
    assert (result.stopped_by, result.steps) == (stopped_by, steps) and result.selected_step > 0


def test_a_non_finite_loss_stops_the_run_as_diverged():
    train = make_batch(8, (16, 16), area=6, sigma=0.5, generator=generator_for(0, 0))
    model = UNet(2, width=4, generator=generator_for(0, 2))
    result = fit(model, lambda logits, labels: logits.sum() * math.nan, train, train, lr=1e-3,
                 generator=generator_for(0, 3), batch_size=4, budget_steps=2, max_steps=10, eval_every=2)
    assert (result.stopped_by, result.diverged, result.steps, result.collapsed) == ("diverged", True, 0, False)
    assert result.selected_step == 0 and math.isnan(result.final_grad_norm)  # no step was taken


def test_diverged_weights_end_the_run_without_an_error():
    train = make_batch(8, (16, 16), area=6, sigma=0.5, generator=generator_for(0, 0))
    model = UNet(2, width=4, generator=generator_for(0, 2))
    with torch.no_grad():
        model.dec1[-1].bias.fill_(math.inf)  # the losses refuse non-finite logits with a ValueError
    result = fit(model, make_loss("dice_ce"), train, train, lr=1e-3, generator=generator_for(0, 3), batch_size=4,
                 budget_steps=2, max_steps=10, eval_every=2)
    assert (result.stopped_by, result.collapsed) == ("diverged", False) and math.isnan(result.final_fg_share)
    assert math.isnan(result.trajectory[0]["val_dsc"])


@pytest.mark.parametrize("bias, share", [(-1e3, 0.0), (1e3, 1.0)])
def test_collapse_needs_one_class_everywhere_and_no_gradient(bias, share):
    data = make_batch(4, (16, 16), area=6, sigma=0.5, generator=generator_for(0, 1))
    model = UNet(2, width=4, generator=generator_for(0, 2))
    assert not collapse_state(model, make_loss("dice"), data)["collapsed"]
    with torch.no_grad():  # the saturated state: a constant logit far beyond the sigmoid's range
        model.dec1[-1].weight.zero_()
        model.dec1[-1].bias.fill_(bias)
    dice = collapse_state(model, make_loss("dice"), data)
    assert dice == dict(fg_share=share, grad_norm=0.0, collapsed=True)
    for loss in ("ce", "dice_ce", "dice_focal"):  # under a CE or focal term: one class everywhere, but a gradient
        state = collapse_state(model, make_loss(loss), data)
        assert state["fg_share"] == share and state["grad_norm"] > 1e-3 and not state["collapsed"]


def test_prior_bias_sets_the_initial_foreground_probability():
    model = UNet(2, width=4, generator=generator_for(0, 2))
    set_prior_bias(model, 0.01)
    assert float(torch.sigmoid(model.dec1[-1].bias.detach())) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="strictly between"):
        set_prior_bias(model, 1.0)


def test_measurements_on_known_cases():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=torch.float64)
    labels = torch.tensor([1, 0, 1, 0])
    assert average_precision(scores, labels) == pytest.approx((1 / 1 + 2 / 3) / 2, abs=1e-12)
    assert recall_at_precision(scores, labels, 0.6) == pytest.approx(1.0)
    assert recall_at_precision(scores, labels, 0.9) == pytest.approx(0.5)
    assert best_threshold(scores, labels) == pytest.approx(0.7)
    assert calibration_error(torch.full((4,), 0.5, dtype=torch.float64), labels) == pytest.approx(0.0, abs=1e-12)
    assert calibration_error(torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.long)) == pytest.approx(1.0)
    z = 3 * torch.randn(40000, generator=generator_for(9), dtype=torch.float64)
    y = (torch.rand(40000, generator=generator_for(10), dtype=torch.float64) < torch.sigmoid(z / 2)).long()
    assert fit_temperature(z, y) == pytest.approx(2.0, rel=0.1)


def test_the_stopping_criterion_sees_a_model_that_ranks_well_below_one_half():
    # CE early at small rho: every pixel below 1/2 (DSC at 1/2 is 0) but the object ranked first
    masks = (torch.rand(4, 8, 8, generator=generator_for(5)) < 0.1).long()
    logits = (masks.float() * 3 - 8).unsqueeze(1)
    assert validation_dsc(logits, masks) == 0.0 and validation_best_dsc(logits, masks) == pytest.approx(1.0)
    labels = torch.randint(0, 3, (2, 6, 6), generator=generator_for(6))
    three_class = F.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 2 - 5  # softmax: the true class first
    assert validation_best_dsc(three_class, labels) == pytest.approx(1.0)


def test_false_positives_on_empty_images_are_counted_at_matched_recall():
    # two object images (4 object pixels at 0.9, 0.8, 0.3, 0.2) and three empty ones (max 0.85, 0.5, 0.1)
    probs = torch.tensor([[0.9, 0.8, 0.0], [0.3, 0.2, 0.0], [0.85, 0.0, 0.0], [0.5, 0.4, 0.0], [0.1, 0.0, 0.0]],
                         dtype=torch.float64)
    masks = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    empty = torch.tensor([False, False, True, True, True])
    assert fp_rate_at_recall(probs, masks, empty, 0.5) == pytest.approx(1 / 3)  # threshold 0.8: only 0.85 fires
    assert fp_rate_at_recall(probs, masks, empty, 0.75) == pytest.approx(2 / 3)  # threshold 0.3
    assert fp_rate_at_recall(probs, masks, empty, 1.0) == pytest.approx(2 / 3)  # threshold 0.2
    assert math.isnan(fp_rate_at_recall(probs, torch.zeros_like(masks), empty, 0.5))


def test_fold_metrics_split_the_test_images_into_disjoint_parts():
    probs = torch.rand(8, 4, 4, generator=generator_for(3), dtype=torch.float64)
    masks = (torch.rand(8, 4, 4, generator=generator_for(4)) < 0.3).long()
    folds = fold_metrics(probs, masks, 0.5)
    for k in range(4):
        part = slice(2 * k, 2 * k + 2)
        assert folds[f"dsc_tuned_f{k}"] == pytest.approx(f1_counts(probs[part] >= 0.5, masks[part])["dsc"])
        assert folds[f"recall_at_p50_f{k}"] == pytest.approx(recall_at_precision(probs[part], masks[part], 0.5))


def test_saturation_probe_counts_confidently_wrong_pixels():
    logits = torch.tensor([[[[-8.0, 8.0, 0.0, 0.0]]]])  # fg at p~0, bg at p~1, two unsure pixels
    labels = torch.tensor([[[1, 0, 1, 0]]])
    grad = torch.tensor([[[[1.0, 1.0, 2.0, 0.0]]]])
    probe = saturation_probe(logits, grad, labels)
    assert probe["cw_grad_share"] == pytest.approx(0.5) and probe["cw_pixel_share"] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    """Every experiment at small scale, seed 0, stored once for the tests below."""
    out = tmp_path_factory.mktemp("small")
    return out, {name: run_experiment(name, out, scale="small", seed=0, progress=False) for name in EXPERIMENTS}


def test_verifications_pass_at_small_scale_for_two_seeds(small_runs, tmp_path):
    _, runs = small_runs
    for name in VERIFICATIONS:
        for seed, (_, claims, _) in ((0, runs[name]), (1, run_experiment(name, tmp_path, scale="small", seed=1, progress=False))):
            failed = [c.id for c in claims if c.kind == "verification" and not c.passed]
            assert claims and not failed, f"{name} seed {seed}: {failed}"


def test_hypotheses_are_computed_and_finite_and_tested_at_convergence_only(small_runs):
    _, runs = small_runs
    values = []
    for name in TRAINING_EXPERIMENTS:
        df, claims, _ = runs[name]
        hypotheses = [c for c in claims if c.kind == "hypothesis"]
        values += [c.value for c in hypotheses]
        assert hypotheses, name
        for claim in hypotheses:
            assert claim.source, (name, claim.id)
            if claim.n_seeds is not None and claim.n_seeds < 2:  # a run of the pair collapsed: nothing to pair
                assert math.isnan(claim.value) and not claim.passed, (name, claim.id)
                continue
            assert math.isfinite(claim.value), (name, claim.id, claim.value)
            # two seeds: the sign-flip interval is the whole line (4 sign patterns cannot reject at 2.5 %)
            assert not math.isnan(claim.ci_low) and not math.isnan(claim.ci_high) and claim.ci_low <= claim.ci_high
        # the early checkpoint is described, never tested: no loss is judged before it converged
        assert "convergence" in {c.stage for c in hypotheses} <= {"convergence", ""}, name
        assert {"budget", "convergence"} <= set(df["stage"]), name
    # small runs collapse often (20 steps, one rate), but most pairs of them train
    assert sum(map(math.isfinite, values)) >= len(values) / 2


def test_training_experiments_hold_out_their_test_split(small_runs):
    _, runs = small_runs
    df = runs["s1_imbalance"][0]
    evaluated = df[df["stage"] == "convergence"]
    assert evaluated["seed"].nunique() == config_for(EXPERIMENTS["s1_imbalance"], "small").seeds
    assert np.isfinite(evaluated["bayes_dsc"]).all() and (evaluated["bayes_dsc"] > 0).all()
    selection, _, manifest = runs["s3_empty"]
    chosen_on = selection.loc[selection["stage"] == "selection", "seed"]
    evaluated_on = selection.loc[selection["stage"] == "convergence", "seed"]
    # the learning rate was chosen on the validation split of >= 3 seeds that are never evaluated
    assert chosen_on.nunique() >= 3 and not set(chosen_on) & set(evaluated_on)
    assert manifest["lr_selection_seeds"] == sorted(set(chosen_on)) and manifest["seeds"] == sorted(set(evaluated_on))
    assert {"selected_step", "stopped_by", "collapsed"} <= set(evaluated.columns)
    assert (evaluated["selected_step"] > 0).all() and set(evaluated["stopped_by"]) <= {"plateau", "cap", "diverged"}


@pytest.mark.parametrize("changes, message", [
    (dict(seeds=1001), "seeds \\[1000\\] are also evaluation seeds"), (dict(lr_selection_seeds=(1000, 1001)), "at least 3"),
])
def test_learning_rate_selection_seeds_are_disjoint_from_the_evaluation_seeds(changes, message):
    import dataclasses

    config = config_for(EXPERIMENTS["s1_imbalance"], "paper")
    assert len(config.lr_selection_seeds) >= 3 and not set(config.lr_selection_seeds) & set(range(config.seeds))
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(config, **changes)


def test_same_seed_gives_identical_parquet(small_runs, tmp_path):
    out, _ = small_runs
    for name in ("s3_empty", "s7_sgd"):
        run_experiment(name, tmp_path, scale="small", seed=0, progress=False)
        assert (tmp_path / name / "results.parquet").read_bytes() == (out / name / "results.parquet").read_bytes()


def test_figures_render_from_stored_results(small_runs, tmp_path):
    out, _ = small_runs
    for name in TRAINING_EXPERIMENTS:
        df, _, _ = load_results(out, name)
        paths = EXPERIMENTS[name].figures(df, tmp_path / name)
        assert paths and all(p.stat().st_size > 1000 for p in paths)


def test_saturation_experiment_records_collapse_and_trajectories(small_runs):
    from analysis.experiments import s8_saturation

    df, claims, manifest = small_runs[1]["s8_saturation"]
    config = config_for(s8_saturation, "small")
    run_rows = df[df["stage"] == "run"]
    assert len(run_rows) == len(s8_saturation.tasks(config)) * config.seeds
    assert set(run_rows["stopped_by"]) == {"schedule"} and (run_rows["selected_step"] == config.steps).all()
    collapsed = run_rows[run_rows["collapsed"].astype(bool)]
    assert len(collapsed) > 0  # the small scale reaches the saturated state (Dice, Adam 3e-2)
    assert ((collapsed["final_fg_share"].isin([0.0, 1.0])) & (collapsed["final_grad_norm"] < 1e-9)).all()
    assert (collapsed["ce_term_grad_norm"] > 1e-6).all()  # a CE term still pushes a collapsed network
    trace = df[df["stage"] == "trace"]
    assert set(trace["step"]) == set(range(config.steps)) and set(trace["optimizer"]) == {"adam"}
    assert {"mean_logit", "fg_share", "grad_norm"} <= set(trace.columns)
    primaries = [c for c in claims if c.primary]
    assert 3 <= len(primaries) <= 12 and all(c.p_adjusted is not None for c in primaries)
    ce_runs = int(((run_rows["loss"] == "ce") & (run_rows["remedy"] == "")).sum())
    assert {c.id: c.n_seeds for c in primaries}["s8.ce_never_collapses"] == ce_runs
    assert {c.n_seeds for c in primaries if c.id != "s8.ce_never_collapses"} == {config.seeds}
    assert manifest["seeds"] == [0, 1] and manifest["lr_selection_seeds"] == []


def test_saturation_experiment_paper_grid_meets_the_protocol():
    from analysis.experiments import s8_saturation

    config = config_for(s8_saturation, "paper")
    assert config.seeds >= 20 and set(config.losses) == {"ce", "dice", "dice_squared", "log_dice", "tversky",
                                                         "dice_ce", "dice_focal"}
    assert len(config.adam_lrs) >= 4 and min(config.adam_lrs) <= 1e-4 and max(config.adam_lrs) >= 3e-2
    assert len(config.sgd_lrs) >= 4 and len(config.fg_fractions) >= 2
    assert {s8_saturation.HIGH_RATE, s8_saturation.LOW_RATE} <= set(config.adam_lrs)
    assert set(config.remedies) == {"clip", "lr_warmup", "prior_bias"} and "dice_ce" in config.losses
