"""What the training experiments share: the training protocol, one (setting, loss) task, the paired
claims, and the figures' fixed colours. Not an experiment itself (it is not in ``NAMES``).

A *setting* is a JSON-plain dict: ``shape`` (list), ``area`` (binary) or ``areas`` (one per
foreground class), ``sigma``, ``empty_fraction``, the Dice terms' ``smooth`` and ``batch``, the
``optimizer`` and ``lrs``, the learning-rate grid. One task trains one loss in one setting for
``seeds`` evaluation seeds (0 .. seeds - 1). With more than one learning rate in ``lrs``, the
``lr_selection_seeds`` (at least 3, disjoint from the evaluation seeds) are first trained at each
rate and the rate with the best **median** validation DSC at its best threshold (selected
checkpoint; the first on ties) is used for every evaluation seed, so neither the evaluation
seeds nor the test split inform the choice. Every run records how it stopped (``stopped_by``), its ``selected_step`` and
whether it ``collapsed`` (``analysis.training.fit``).

Random streams: the test split depends on the data settings alone (every loss and seed of a
setting is scored on the same test images, so losses compare paired); the training and
validation splits on the data settings and the seed; the model's initialisation and the
mini-batch order on the seed alone (every loss of a seed starts from the same weights).
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

from ..bayes import multiclass_posterior, posterior
from ..evaluation import (TEST_FOLDS, binary_metrics, best_threshold, binary_nll, calibration_error, f1_counts,
                          fp_recall_curve, multiclass_metrics, saturation_probe)
from ..stats import binomial_p_value, clopper_pearson, paired_difference
from ..synthetic import SyntheticBatch, generator_for, make_batch, make_multiclass_batch
from ..training import UNet, fit, make_loss, predict, validation_best_dsc
from . import Claim, hypothesis

TEST_STREAM = 1_000_003
FP_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9, 0.97, 0.99)

# One colour per loss (and Dice variant) in every figure.
LOSS_COLOURS = {
    "ce": "#1f77b4", "wce": "#17becf", "focal": "#9467bd", "dice": "#d62728", "dice_squared": "#e7969c",
    "log_dice": "#ff9896",
    "gen_dice": "#8c564b", "tversky": "#e377c2", "focal_tversky": "#bcbd22", "dice_ce": "#2ca02c",
    "dice_focal": "#98df8a", "dice_batch": "#ff7f0e", "dice_smooth1": "#7f7f7f", "dice_smooth10": "#393b79", "bayes": "#000000",
}
LOSS_LABELS = {
    "ce": "CE", "wce": "weighted CE", "focal": "focal", "dice": "Dice", "dice_squared": "squared Dice",
    "log_dice": "log-Dice", "gen_dice": "generalized Dice",
    "tversky": "Tversky", "focal_tversky": "focal Tversky", "dice_ce": "Dice+CE", "dice_focal": "Dice+focal",
    "dice_batch": "batch Dice", "dice_smooth1": "Dice, smooth 1", "dice_smooth10": "Dice, smooth 10", "bayes": "Bayes",
}


@dataclass(frozen=True)
class TrainingConfig:
    """The training protocol every training experiment shares (its ``Config`` extends this)."""

    seed: int = 0
    impl: str = "vectorized"
    seeds: int = 20
    train_images: int = 256
    val_images: int = 32
    test_images: int = 256
    batch_size: int = 8
    width: int = 8
    # The early checkpoint, at the end of the warm-up: described in figures, never tested (no
    # claim is made at a budget some loss has not converged by).
    budget_steps: int = 200
    max_steps: int = 1200  # a cap fewer than 5 % of any loss's runs reach (checked from stopped_by)
    eval_every: int = 25
    patience: int = 4
    min_delta: float = 0.005  # validation DSC
    plateau_warmup: int = 200  # steps before the patience counts
    lr_selection_seeds: Tuple[int, ...] = (1000, 1001, 1002)  # disjoint from the evaluation seeds 0 .. seeds - 1

    def __post_init__(self):
        if len(set(self.lr_selection_seeds)) < 3:
            raise ValueError(f"the learning rate is chosen on at least 3 distinct seeds, got {self.lr_selection_seeds}")
        shared = sorted(set(self.lr_selection_seeds) & set(self.evaluation_seeds()))
        if shared:
            raise ValueError(f"learning-rate selection seeds {shared} are also evaluation seeds (0 .. {self.seeds - 1})")

    def evaluation_seeds(self) -> List[int]:
        return list(range(self.seeds))

    def seed_sets(self) -> Dict[str, List[int]]:
        """The seeds for the manifest: ``seeds`` (evaluated) and ``lr_selection_seeds`` (choose the rate)."""
        return dict(seeds=self.evaluation_seeds(), lr_selection_seeds=list(self.lr_selection_seeds))


# The small scale (CI, tests): two seeds, tiny splits, a few dozen steps; claims computed, not meaningful.
SMALL = dict(seeds=2, train_images=16, val_images=8, test_images=16, budget_steps=10, max_steps=20, eval_every=5,
             patience=1, plateau_warmup=10)


def setting(shape: Sequence[int], *, area: Optional[int] = None, areas: Optional[Sequence[int]] = None,
            sigma: float = 0.5, empty_fraction: float = 0.0, smooth: float = 1e-5, batch: bool = False,
            optimizer: str = "adam", lrs: Sequence[float] = (3e-3, 1e-2, 3e-2), **labels) -> dict:
    """A setting dict (see the module docstring); ``labels`` are extra plain values kept in every row."""
    if (area is None) == (areas is None):
        raise ValueError("give exactly one of area (binary) and areas (multi-class)")
    return dict(shape=list(shape), area=area, areas=None if areas is None else list(areas), sigma=sigma,
                empty_fraction=empty_fraction, smooth=smooth, batch=batch, optimizer=optimizer, lrs=list(lrs), **labels)


def data_id(s: dict) -> int:
    """A stable id of the setting's data (not its loss options), for the random streams."""
    keys = ("shape", "area", "areas", "sigma", "empty_fraction")
    return zlib.crc32(json.dumps({k: s[k] for k in keys}, sort_keys=True).encode())


def make_data(config: TrainingConfig, s: dict, count: int, *stream: int) -> SyntheticBatch:
    gen = generator_for(config.seed, data_id(s), *stream)
    if s["areas"] is not None:
        return make_multiclass_batch(count, s["shape"], s["areas"], sigma=s["sigma"], generator=gen)
    return make_batch(count, s["shape"], area=s["area"], sigma=s["sigma"], empty_fraction=s["empty_fraction"],
                      generator=gen)


def frequencies(s: dict) -> List[float]:
    """The classes' expected pixel shares (background first), from the generator's settings."""
    pixels = math.prod(s["shape"])
    if s["areas"] is None:
        rho = s["area"] / pixels * (1 - s["empty_fraction"])
        return [1 - rho, rho]
    shares = [a / pixels for a in s["areas"]]
    return [1 - sum(shares), *shares]


def bayes_reference(s: dict, test: SyntheticBatch) -> dict:
    """The Bayes posterior's measurements on the test split (``bayes_*`` columns): its best-threshold
    DSC (the reference), its DSC at 1/2, its NLL and ECE, and the precision at that best threshold."""
    if s["areas"] is not None:
        probs = multiclass_posterior(test.images, s["areas"], s["sigma"])
        metrics = multiclass_metrics(torch.log(probs.clamp_min(1e-300)), test.masks, len(s["areas"]) + 1)
        return {f"bayes_{k}": v for k, v in metrics.items()}
    probs, _ = posterior(test.images, s["area"], s["sigma"], s["empty_fraction"])
    t = best_threshold(probs, test.masks)
    best = f1_counts(probs >= t, test.masks)
    out = dict(bayes_dsc=best["dsc"], bayes_precision=best["precision"], bayes_recall=best["recall"],
               bayes_dsc_05=f1_counts(probs > 0.5, test.masks)["dsc"], bayes_nll=binary_nll(probs, test.masks),
               bayes_ece=calibration_error(probs, test.masks))
    empty = test.masks.flatten(1).sum(1) == 0
    if bool(empty.any()):
        out["bayes_image_fp_rate"] = float((probs > 0.5).flatten(1)[empty].any(1).double().mean())
    return out


def run_setting(config: TrainingConfig, s: dict, loss: str, variant: str = "") -> pd.DataFrame:
    """All rows of one task: ``stage`` "selection" (each selection seed at each rate), "budget" and "convergence"
    (one per seed: held-out measurements of that checkpoint) and "trajectory" (validation points).
    ``variant`` names the (loss, options) pair in the rows (default: the loss)."""
    binary = s["areas"] is None
    classes = 1 if binary else len(s["areas"]) + 1
    in_channels = 1 if binary else len(s["areas"])
    ndim = len(s["shape"])
    test = make_data(config, s, config.test_images, TEST_STREAM)
    reference = bayes_reference(s, test)
    loss_fn = make_loss(loss, classes=classes, impl=config.impl, smooth=s["smooth"], batch=s["batch"],
                        frequencies=frequencies(s))
    empty = test.masks.flatten(1).sum(1) == 0 if binary else None

    def train(seed: int, lr: float):
        train_split, val = make_data(config, s, config.train_images, seed, 0), make_data(config, s, config.val_images, seed, 1)
        model = UNet(ndim, in_channels, classes, config.width, generator=generator_for(config.seed, seed, 2))
        result = fit(model, loss_fn, train_split, val, lr=lr, generator=generator_for(config.seed, seed, 3),
                     optimizer=s["optimizer"], batch_size=config.batch_size, budget_steps=config.budget_steps,
                     max_steps=config.max_steps, eval_every=config.eval_every, patience=config.patience,
                     min_delta=config.min_delta, plateau_warmup=config.plateau_warmup,
                     probe=lambda logits, grad: saturation_probe(logits, grad, val.masks))
        return model, result, val

    rows: List[dict] = []
    if len(s["lrs"]) > 1:
        medians = []
        for lr in s["lrs"]:
            scores = []
            for seed in config.lr_selection_seeds:
                model, result, val = train(seed, lr)
                model.load_state_dict(result.selected_state)
                score = validation_best_dsc(predict(model, val.images), val.masks)
                scores.append(score if math.isfinite(score) else -math.inf)
                rows.append(dict(stage="selection", seed=seed, lr=lr, val_dsc_best=score, stopped_by=result.stopped_by,
                                 selected_step=result.selected_step, collapsed=result.collapsed))
            medians.append(float(np.median(scores)))
        chosen = s["lrs"][int(np.argmax(medians))]
    else:
        chosen = s["lrs"][0]
    base = dict(loss=loss, variant=variant or loss, **_setting_columns(s), **reference)
    for seed in config.evaluation_seeds():
        model, result, val = train(seed, chosen)
        common = dict(seed=seed, lr=chosen, steps=result.steps, stopped_by=result.stopped_by, diverged=result.diverged,
                      selected_step=result.selected_step, collapsed=result.collapsed,
                      final_fg_share=result.final_fg_share, final_grad_norm=result.final_grad_norm,
                      initial_grad_norm=result.initial_grad_norm)
        for stage, state in (("budget", result.budget_state), ("convergence", result.selected_state)):
            model.load_state_dict(state)
            logits, val_logits = predict(model, test.images), predict(model, val.images)
            if not (torch.isfinite(logits).all() and torch.isfinite(val_logits).all()):  # a diverged run
                logits, val_logits = torch.full_like(logits, math.nan), torch.full_like(val_logits, math.nan)
            if binary:
                metrics = binary_metrics(logits, test.masks, val_logits=val_logits, val_masks=val.masks,
                                         matched_precision=reference["bayes_precision"], empty=empty)
                if empty is not None and bool(empty.any()):
                    metrics.update(fp_recall_curve(torch.sigmoid(logits.double()[:, 0]), test.masks, empty, FP_THRESHOLDS))
            else:
                metrics = multiclass_metrics(logits, test.masks, classes)
            step = config.budget_steps if stage == "budget" else result.selected_step
            point = next((p for p in result.trajectory if p["step"] == step), {})  # none: diverged before it
            rows.append(dict(stage=stage, **common, **metrics,
                             **{k: point.get(k, math.nan) for k in ("cw_grad_share", "cw_pixel_share", "val_loss", "val_dsc",
                                                                  "val_dsc_best")}))
        rows += [dict(stage="trajectory", seed=seed, lr=chosen, **p) for p in result.trajectory]
    return pd.DataFrame([{**base, **row} for row in rows])


def _setting_columns(s: dict) -> dict:
    """The setting as flat row columns (lists as strings)."""
    return {k: json.dumps(v) if isinstance(v, list) else v for k, v in s.items() if k != "lrs"} | {"lrs": json.dumps(s["lrs"])}


# ---- claims ----------------------------------------------------------------------------------


def rows(df: pd.DataFrame, stage: str, **where) -> pd.DataFrame:
    """The ``stage`` rows matching ``where`` (column == value), one per seed, sorted by seed."""
    part = df[df["stage"] == stage]
    for key, value in where.items():
        part = part[np.isclose(part[key], value)] if isinstance(value, float) else part[part[key] == value]
    return part.sort_values("seed")


def trained(part: pd.DataFrame) -> pd.DataFrame:
    """The runs that trained: not collapsed into a saturated state and not diverged. The others are
    a failure rate (:func:`failure_rates`), reported beside the means, never averaged into them."""
    return part[~failed(part)]


def failed(part: pd.DataFrame) -> pd.Series:
    return part["collapsed"].astype(bool) | diverged(part)


def diverged(part: pd.DataFrame) -> pd.Series:
    return part["stopped_by"] == "diverged"


def seeded(df: pd.DataFrame, stage: str, where: dict, metric: str) -> pd.Series:
    """Per seed, ``metric`` of the runs matching ``where`` that trained (pairs use the seeds where both did)."""
    return trained(rows(df, stage, **where)).set_index("seed")[metric].astype(float)


def failure_rates(part: pd.DataFrame, by: Sequence[str], metric: str = "dsc") -> pd.DataFrame:
    """Per group of evaluated runs ``part`` (one row per run; ``by`` columns such as ``["variant",
    "fg_fraction"]``): runs; collapsed (and how many of those predict all background), diverged and
    capped counts; the collapse share ``rate`` with its Clopper-Pearson 95 % interval; the failure
    share (collapsed or diverged); and the mean ``metric`` of the runs that trained beside that of all."""
    out = []
    for key, group in part.groupby(list(by), sort=True):
        collapsed, bad = group["collapsed"].astype(bool), failed(group)
        n_collapsed = int(collapsed.sum())
        low, high = clopper_pearson(n_collapsed, len(group))
        out.append({
            **dict(zip(by, key if isinstance(key, tuple) else (key,))),
            "runs": len(group),
            "collapsed": n_collapsed,
            "collapsed_background": int((collapsed & (group["final_fg_share"] == 0)).sum()),
            "diverged": int(diverged(group).sum()),
            "capped": int((group["stopped_by"] == "cap").sum()),
            "rate": n_collapsed / len(group), "rate_low": low, "rate_high": high,
            "failure_rate": float(bad.mean()),
            f"{metric}_trained": float(group.loc[~bad, metric].mean()) if (~bad).any() else math.nan,
            f"{metric}_all": float(group[metric].mean()),
        })
    return pd.DataFrame(out)


def setting_columns(part: pd.DataFrame) -> List[str]:
    """``variant`` and the setting columns that vary among ``part``'s rows: what tells its runs' groups apart."""
    candidates = ("fg_fraction", "shape", "area", "empty_fraction", "smooth", "batch", "optimizer", "lr")
    return ["variant"] + [c for c in candidates if c in part and part[c].astype(str).nunique() > 1]


def series_claim(claim_id, statement, source, stage, a: pd.Series, b: pd.Series, op, threshold, *,
                 primary: bool = False) -> Claim:
    """Hypothesis on the paired mean of ``a - b`` (aligned on seed), with its sign-flip interval and
    the one-sided sign-flip p-value of the threshold in the claimed direction."""
    seeds = sorted(set(a.index) & set(b.index))
    if len(seeds) < 2:
        return hypothesis(claim_id, statement, source, math.nan, (math.nan, math.nan), op, threshold, stage,
                          primary=primary, n_seeds=len(seeds))
    diff = paired_difference(a.loc[seeds].to_numpy(), b.loc[seeds].to_numpy(),
                             alternative="greater" if op in (">", ">=") else "less", threshold=threshold)
    return hypothesis(claim_id, statement, source, diff.mean, diff.ci, op, threshold, stage, diff.p_value,
                      primary=primary, n_seeds=diff.n)


def rate_claim(claim_id: str, statement: str, source: str, outcomes: Sequence[bool], op: str, threshold: float, *,
               stage: str = "", primary: bool = False) -> Claim:
    """Hypothesis on a failure rate (e.g. the share of collapsed runs): ``k / n`` with its
    Clopper-Pearson interval and the exact one-sided binomial test of ``threshold``."""
    k, n = int(np.count_nonzero(outcomes)), len(outcomes)
    if n == 0:
        return hypothesis(claim_id, statement, source, math.nan, (math.nan, math.nan), op, threshold, stage,
                          primary=primary, n_seeds=0)
    p = binomial_p_value(k, n, threshold, "greater" if op in (">", ">=") else "less")
    return hypothesis(claim_id, statement, source, k / n, clopper_pearson(k, n), op, threshold, stage, p,
                      primary=primary, n_seeds=n)


def paired_claim(df: pd.DataFrame, claim_id: str, statement: str, source: str, stage: str, metric: str,
                 a: dict, b: dict, op: str, threshold: float) -> Claim:
    """``metric(a) - metric(b)`` over seeds at ``stage``; ``a``, ``b`` are row filters such as
    ``dict(variant="dice", fg_fraction=0.01)``."""
    return series_claim(claim_id, statement, source, stage, seeded(df, stage, a, metric), seeded(df, stage, b, metric),
                  op, threshold)


def within_claim(df: pd.DataFrame, claim_id: str, statement: str, source: str, stage: str, where: dict,
                 metric_a: str, metric_b: str, op: str, threshold: float) -> Claim:
    """``metric_a - metric_b`` on the same rows (e.g. ECE before and after temperature scaling)."""
    return series_claim(claim_id, statement, source, stage, seeded(df, stage, where, metric_a),
                  seeded(df, stage, where, metric_b), op, threshold)


EVALUATED_STAGES = ("convergence", "run")  # the rows holding one evaluated run each (S1-S7; S8)


def evaluated_failures(df: pd.DataFrame) -> Optional[Tuple[List[str], str, pd.DataFrame]]:
    """``(columns, metric, failure_rates(...))`` of an experiment's evaluated runs, grouped by
    :func:`setting_columns`, with the test DSC (S8: the validation DSC); None without such runs."""
    part = df[df["stage"].isin(EVALUATED_STAGES)] if "stage" in df else df.iloc[:0]
    if part.empty or "collapsed" not in part:
        return None
    metric = "dsc" if "dsc" in part else "val_dsc"
    by = setting_columns(part)
    return by, metric, failure_rates(part, by, metric)


def selection_grid(df: pd.DataFrame) -> Optional[Tuple[List[str], pd.DataFrame]]:
    """The learning-rate choice of an experiment, whole: per loss, setting and rate, the selection
    runs, how many failed (collapsed or diverged), their median validation DSC at its best threshold
    (the criterion) and whether the rate was chosen; None when no rate was selected."""
    part = df[df["stage"] == "selection"] if "stage" in df else df.iloc[:0]
    if part.empty:
        return None
    by = [c for c in setting_columns(part) if c != "lr"]
    used = rows(df, "convergence")[by + ["lr"]].drop_duplicates()
    chosen = {tuple(key): lr for *key, lr in used.itertuples(index=False)}
    out = []
    for key, group in part.groupby(by + ["lr"], sort=True):
        *setting, lr = key
        out.append(dict(zip(by, setting), lr=lr, runs=len(group), failed=int(failed(group).sum()),
                        median_val_dsc=float(group["val_dsc_best"].median()), chosen=chosen.get(tuple(setting)) == lr))
    return by, pd.DataFrame(out)


def test_set_sd(df: pd.DataFrame, a: dict, b: dict, metric: str, stage: str = "convergence") -> float:
    """How much the test images alone move the paired mean difference ``metric(a) - metric(b)``
    (``metric`` one of the fold-measured ones, ``dsc_tuned`` or ``recall_at_p50``): the same
    models scored on each of the test split's disjoint quarters give one mean difference each;
    their standard deviation over sqrt(number of quarters) estimates the standard error of the
    whole-split difference that comes from sampling test images (the interval is over seeds)."""
    means = [float((seeded(df, stage, a, f"{metric}_f{k}") - seeded(df, stage, b, f"{metric}_f{k}")).mean())
             for k in range(TEST_FOLDS)]
    return float(np.std(means, ddof=1) / math.sqrt(TEST_FOLDS))


# ---- figures ---------------------------------------------------------------------------------


def mean_ci(values: Sequence[float]) -> Tuple[float, float, float]:
    """Mean and the percentile-bootstrap 95 % interval of the mean (NaN-free values; one value: no interval)."""
    from ..stats import bootstrap_ci

    values = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if values.size == 0:
        return math.nan, math.nan, math.nan
    if values.size == 1:
        return float(values[0]), float(values[0]), float(values[0])
    low, high = bootstrap_ci(values, n_boot=2000)
    return float(values.mean()), low, high


def colour(name: str) -> str:
    return LOSS_COLOURS.get(name, "#444444")


def label(name: str) -> str:
    return LOSS_LABELS.get(name, name)


def run_task(config: TrainingConfig, task: dict) -> pd.DataFrame:
    """The experiment interface's ``run_task`` for tasks ``dict(loss=, variant=, setting=)``."""
    return run_setting(config, task["setting"], task["loss"], task.get("variant", ""))


def task(loss: str, s: dict, variant: str = "") -> dict:
    return dict(loss=loss, variant=variant or loss, setting=s)
