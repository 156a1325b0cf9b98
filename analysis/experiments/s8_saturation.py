"""S8, saturation as it happens: how often a run falls into an absorbing saturated state, by loss,
learning rate, optimiser and imbalance; what such a run looks like step by step; what removes it.

With a sigmoid output, every loss's logit gradient is ``dL/dp * p(1 - p)`` (E2). Once a step throws
every pixel's logit far past the sigmoid's range (all background, z << 0, or all foreground,
z >> 0), ``p(1 - p)`` underflows to exactly 0 in float32 for Dice, whose ``dL/dp`` is bounded: the
parameter gradient is exactly 0 and no later step can leave (Adam's momentum only carries the
logits further). CE's ``dL/dz = (p - g) / N`` is near -1/N on a missed foreground pixel however
saturated, so a CE term removes the absorbing state. A run is *collapsed* when, after a fixed
number of steps at a constant rate, it predicts one class on every validation pixel and its
parameter-gradient norm is below 1e-9 (``analysis.training.collapse_state``).

Grid: losses (CE, Dice, squared Dice, log-Dice, Tversky, Dice+CE, Dice+focal) x Adam and plain SGD,
each at its own grid of rates (SGD's gradient scale is ~rho times Adam's effective step, so its
grid sits higher) x foreground fractions; every cell the same seeds (paired: same weights, data and
mini-batches). Remedies, on Dice with Adam at the rates where it collapses: gradient-norm clipping
at 1, a linear learning-rate warm-up, a prior-bias initialisation (output bias log(rho / (1 - rho)),
Lin et al. 2017); adding CE is the Dice+CE cell. Rows: ``stage="run"`` (one per run) and, for the
first ``trace_seeds`` seeds of each Adam cell, ``stage="trace"`` (one per step: mini-batch mean
logit, predicted-foreground share, parameter-gradient norm). Collapse rates carry Clopper-Pearson
intervals; paired differences of collapse indicators the sign-flip interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
import pandas as pd
import torch

from ..synthetic import generator_for, object_area
from ..training import UNet, collapse_state, fit, make_loss, set_prior_bias
from . import Claim, verification
from .common import colour, failure_rates, label, make_data, rate_claim, series_claim, setting

__all__ = ["Config", "SCALES", "tasks", "run_task", "claims", "figures"]

LOSSES = ("ce", "dice", "dice_squared", "log_dice", "tversky", "dice_ce", "dice_focal")
REMEDIES = ("clip", "lr_warmup", "prior_bias")
REMEDY_LABELS = {"": "none", "clip": "clipping at norm 1", "lr_warmup": "learning-rate warm-up",
                 "prior_bias": "prior-bias init"}
SOURCES = dict(
    absorbing="theory: Dice's logit gradient dL/dp * p(1 - p) (E2) is exactly 0 once every sigmoid saturates; "
              "observed in the previous study's Adam runs (8/10 collapsed at 3e-2, rho = 1 %)",
    ce_term="theory: CE's logit gradient (p - g) / N stays near -1/N on a missed pixel however saturated (E2); the "
            "seed's advice to combine Dice with CE",
    focal_term="theory: the focal term's logit gradient tends to -(1 - p)^(gamma + 1) -> -1 on a missed pixel as "
               "p -> 0 (E2's focal), so it does not vanish at a saturated wrong prediction either",
    ce="theory: CE's logit gradient (p - g) / N vanishes only where every pixel is right",
    rate="theory: Adam's step is about the learning rate whatever the gradient's scale, so a large rate can "
         "overshoot the sigmoid's range in a few steps; previous study: 0/10 collapsed at 1e-3",
    remedies="previous study: 1/10 collapsed with clipping at norm 1 (Pascanu et al. 2013), 2/10 with a 50-step "
             "warm-up, 3/10 with prior-bias initialisation (Lin et al. 2017); but Adam's step is nearly invariant to "
             "the gradient's scale, which clipping changes",
)


@dataclass(frozen=True)
class Config:
    seed: int = 0
    impl: str = "vectorized"
    seeds: int = 20
    size: int = 32
    sigma: float = 0.5
    fg_fractions: Tuple[float, ...] = (0.01, 0.1)
    losses: Tuple[str, ...] = LOSSES
    adam_lrs: Tuple[float, ...] = (1e-4, 1e-3, 1e-2, 3e-2)
    sgd_lrs: Tuple[float, ...] = (1e-2, 1e-1, 1.0, 10.0)
    steps: int = 80
    train_images: int = 64
    val_images: int = 32
    batch_size: int = 8
    width: int = 8
    remedies: Tuple[str, ...] = REMEDIES
    remedy_lrs: Tuple[float, ...] = (1e-2, 3e-2)
    clip_norm: float = 1.0
    lr_warmup: int = 50
    trace_seeds: int = 2

    def seed_sets(self) -> Dict[str, List[int]]:
        """Every rate is an arm here, nothing is selected: no selection seeds."""
        return dict(seeds=list(range(self.seeds)), lr_selection_seeds=[])


SCALES = {
    "small": Config(seeds=2, size=16, fg_fractions=(0.01,), adam_lrs=(1e-3, 3e-2), sgd_lrs=(1.0,), steps=12,
                    train_images=8, val_images=4, batch_size=4, width=8, remedy_lrs=(3e-2,), lr_warmup=4,
                    trace_seeds=1),
    "paper": Config(),
}
HIGH_RATE, LOW_RATE = 3e-2, 1e-3  # the Adam rates the primary hypotheses compare (the configs' grids contain both)


def tasks(config: Config) -> List[dict]:
    """One task per cell (all seeds): the loss x optimiser x rate x fraction grid, then the remedies."""
    cells = [dict(loss=loss, optimizer=optimizer, lr=lr, fg_fraction=rho, remedy="")
             for rho in config.fg_fractions for loss in config.losses
             for optimizer, lrs in (("adam", config.adam_lrs), ("sgd", config.sgd_lrs)) for lr in lrs]
    return cells + [dict(loss="dice", optimizer="adam", lr=lr, fg_fraction=config.fg_fractions[0], remedy=remedy)
                    for remedy in config.remedies for lr in config.remedy_lrs]


def run_task(config: Config, task: dict) -> pd.DataFrame:
    shape = (config.size, config.size)
    rho, remedy = task["fg_fraction"], task["remedy"]
    s = setting(shape, area=object_area(shape, rho), sigma=config.sigma)
    loss_fn, ce_term = make_loss(task["loss"], impl=config.impl), make_loss("dice_ce", impl=config.impl)
    base = dict(loss=task["loss"], variant=task["loss"] + (f"+{remedy}" if remedy else ""), remedy=remedy,
                optimizer=task["optimizer"], lr=task["lr"], fg_fraction=rho)
    rows = []
    for seed in range(config.seeds):
        train, val = make_data(config, s, config.train_images, seed, 0), make_data(config, s, config.val_images, seed, 1)
        model = UNet(2, 1, 1, config.width, generator=generator_for(config.seed, seed, 2))
        if remedy == "prior_bias":
            set_prior_bias(model, rho)
        trace = seed < config.trace_seeds and task["optimizer"] == "adam"
        result = fit(model, loss_fn, train, val, lr=task["lr"], generator=generator_for(config.seed, seed, 3),
                     optimizer=task["optimizer"], batch_size=config.batch_size, budget_steps=config.steps,
                     max_steps=config.steps, eval_every=config.steps, schedule="constant",
                     lr_warmup=config.lr_warmup if remedy == "lr_warmup" else 0,
                     clip_norm=config.clip_norm if remedy == "clip" else None, trace=trace)
        with torch.no_grad():
            z = model(val.images).double()
        p = torch.sigmoid(z)
        rows.append(dict(stage="run", seed=seed, collapsed=result.collapsed, stopped_by=result.stopped_by,
                         selected_step=result.selected_step, final_fg_share=result.final_fg_share,
                         final_grad_norm=result.final_grad_norm,
                         val_dsc=math.nan if result.diverged else result.trajectory[-1]["val_dsc"],
                         mean_logit=float(z.mean()), max_p1mp=float((p * (1 - p)).max()),
                         # the same state under Dice+CE: does a CE term still push? (E2: it must)
                         ce_term_grad_norm=collapse_state(model, ce_term, val)["grad_norm"]))
        rows += [dict(stage="trace", seed=seed, **point) for point in result.step_trace]
    return pd.DataFrame([{**base, **row} for row in rows])


# ---- claims ----------------------------------------------------------------------------------


def runs(df: pd.DataFrame, **where) -> pd.DataFrame:
    """The ``run`` rows matching ``where`` (floats compared with a tolerance), sorted by seed."""
    part = df[df["stage"] == "run"].astype({"collapsed": bool})  # object in the file: trace rows leave it empty
    for key, value in where.items():
        part = part[np.isclose(part[key], value)] if isinstance(value, float) else part[part[key] == value]
    return part.sort_values("seed")


def _collapsed(df: pd.DataFrame, **where) -> pd.Series:
    return runs(df, **where).set_index("seed")["collapsed"].astype(float)


def claims(df: pd.DataFrame, config: Config) -> List[Claim]:
    rho = config.fg_fractions[0]
    cell = dict(optimizer="adam", fg_fraction=rho, remedy="")
    at = f"Adam, rho = {rho:.0%}"
    dice_high = _collapsed(df, loss="dice", lr=HIGH_RATE, **cell)
    out = [
        rate_claim("s8.dice_collapses_at_high_rate", f"{at}, rate {HIGH_RATE:g}: share of Dice runs collapsed",
                   SOURCES["absorbing"], runs(df, loss="dice", lr=HIGH_RATE, **cell)["collapsed"].tolist(), ">", 0.2,
                   primary=True),
        series_claim("s8.ce_term_prevents_collapse", f"{at}, rate {HIGH_RATE:g}: collapsed(Dice) - collapsed(Dice+CE), "
                     "paired over seeds", SOURCES["ce_term"], "", dice_high,
                     _collapsed(df, loss="dice_ce", lr=HIGH_RATE, **cell), ">", 0.0, primary=True),
        rate_claim("s8.ce_never_collapses", "share of CE runs collapsed, every optimiser, rate and fraction",
                   SOURCES["ce"], runs(df, loss="ce", remedy="")["collapsed"].tolist(), "<", 0.05, primary=True),
        series_claim("s8.low_rate_does_not_collapse", f"{at}: collapsed(Dice at {HIGH_RATE:g}) - collapsed(Dice at "
                     f"{LOW_RATE:g}), paired over seeds", SOURCES["rate"], "", dice_high,
                     _collapsed(df, loss="dice", lr=LOW_RATE, **cell), ">", 0.0, primary=True),
        series_claim("s8.focal_term_prevents_collapse", f"{at}, rate {HIGH_RATE:g}: collapsed(Dice) - "
                     "collapsed(Dice+focal), paired over seeds", SOURCES["focal_term"], "", dice_high,
                     _collapsed(df, loss="dice_focal", lr=HIGH_RATE, **cell), ">", 0.0, primary=True),
    ]
    for remedy in config.remedies:  # exploratory: the previous study's numbers, a pilot that did not repeat them
        out.append(series_claim(f"s8.{remedy}_reduces_collapse", f"{at}, rate {HIGH_RATE:g}: collapsed(Dice) - "
                                f"collapsed(Dice, {REMEDY_LABELS[remedy]}), paired over seeds", SOURCES["remedies"], "",
                                dice_high, _collapsed(df, loss="dice", lr=HIGH_RATE, optimizer="adam", fg_fraction=rho,
                                                      remedy=remedy), ">", 0.0))
    collapsed = runs(df)[runs(df)["collapsed"]]
    if len(collapsed):  # E2's mechanism on every absorbed run: Dice's gradient is gone, a CE term's is not
        out.append(verification("s8.ce_term_pushes_every_collapsed_run", f"smallest parameter-gradient norm of "
                                f"Dice+CE at the weights of the {len(collapsed)} collapsed runs",
                                float(collapsed["ce_term_grad_norm"].min()), ">", 1e-6))
    return out


def collapse_table(df: pd.DataFrame) -> pd.DataFrame:
    """Collapse counts per cell with the Clopper-Pearson 95 % interval of the rate, and the mean
    validation DSC of the runs that trained (never averaged with the collapsed ones)."""
    return failure_rates(runs(df), ["variant", "optimizer", "fg_fraction", "lr"], "val_dsc")


# ---- figures ---------------------------------------------------------------------------------


def figures(df: pd.DataFrame, out_dir) -> list:
    from ..plotting import plt, save_figure

    table = collapse_table(df)
    grid = table[~table["variant"].str.contains("+", regex=False)]
    panels = sorted({(o, r) for o, r in zip(grid["optimizer"], grid["fg_fraction"])})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False, sharey=True)
    for ax, (optimizer, rho) in zip(axes[0], panels):
        part = grid[(grid["optimizer"] == optimizer) & np.isclose(grid["fg_fraction"], rho)]
        for variant, line in part.groupby("variant", sort=False):
            line = line.sort_values("lr")
            errors = [line["rate"] - line["rate_low"], line["rate_high"] - line["rate"]]
            ax.errorbar(line["lr"], line["rate"], yerr=errors, marker="o", capsize=3, color=colour(variant),
                        label=label(variant))
        ax.set_xscale("log")
        ax.set_xlabel(f"{optimizer} learning rate")
        ax.set_title(f"{optimizer}, rho = {rho:.0%}")
    axes[0][0].set_ylabel("share of runs collapsed (95 % CI)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("S8: collapse rate by loss, learning rate, optimiser and imbalance")
    paths = save_figure(fig, out_dir, "s8_collapse_rate")

    trace = df[df["stage"] == "trace"]
    if len(trace):
        paths += _trajectory_figure(df, trace, plt, save_figure, out_dir)
    remedies = table[(table["variant"] == "dice") | table["variant"].str.startswith("dice+")]
    remedies = remedies[remedies["optimizer"] == "adam"]
    remedies = remedies[np.isclose(remedies["fg_fraction"], remedies["fg_fraction"].min())]
    remedies = remedies[remedies["lr"].isin(sorted(set(remedies.loc[remedies["variant"] != "dice", "lr"])))]
    if len(remedies):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        arms = sorted(remedies["variant"].unique(), key=lambda v: (v != "dice", v))
        rates = sorted(remedies["lr"].unique())
        width = 0.8 / len(rates)
        for j, lr in enumerate(rates):
            part = remedies[np.isclose(remedies["lr"], lr)].set_index("variant").reindex(arms)
            xs = np.arange(len(arms)) + j * width
            ax.bar(xs, part["rate"], width, yerr=[part["rate"] - part["rate_low"], part["rate_high"] - part["rate"]],
                   capsize=3, label=f"Adam {lr:g}")
        ax.set_xticks(np.arange(len(arms)) + width * (len(rates) - 1) / 2,
                      [REMEDY_LABELS[v.partition("+")[2]] if "+" in v else "Dice" for v in arms], rotation=20)
        ax.set_ylabel("share of Dice runs collapsed (95 % CI)")
        ax.legend()
        fig.suptitle("S8: remedies for Dice's collapse")
        paths += save_figure(fig, out_dir, "s8_remedies")
    return paths


def _trajectory_figure(df, trace, plt, save_figure, out_dir) -> list:
    """Mean logit, predicted-foreground share and gradient norm per step of Dice at the highest Adam
    rate (a collapsed seed, if any, and one that trained) and of Dice+CE on the same seed."""
    dice = trace[(trace["loss"] == "dice") & (trace["remedy"] == "") & (trace["optimizer"] == "adam")]
    lr = dice["lr"].max()
    rho = dice["fg_fraction"].min()
    outcome = runs(df, loss="dice", lr=lr, optimizer="adam", fg_fraction=rho, remedy="").set_index("seed")["collapsed"]
    traced = sorted(set(dice["seed"]))
    seed = next((s for s in traced if outcome.get(s, False)), traced[0])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for loss in ("dice", "dice_ce"):
        line = trace[(trace["loss"] == loss) & (trace["remedy"] == "") & (trace["optimizer"] == "adam")
                     & np.isclose(trace["lr"], lr) & np.isclose(trace["fg_fraction"], rho) & (trace["seed"] == seed)]
        if line.empty:
            continue
        state = " (collapsed)" if loss == "dice" and outcome.get(seed, False) else ""
        for ax, column in zip(axes, ("mean_logit", "fg_share", "grad_norm")):
            values = line[column].abs().clip(lower=1e-45) if column == "grad_norm" else line[column]
            ax.plot(line["step"], values, color=colour(loss), label=label(loss) + state)
    axes[0].set_yscale("symlog")
    axes[2].set_yscale("log")
    for ax, title in zip(axes, ("mean logit of the mini-batch", "share predicted foreground",
                                "parameter-gradient norm (exactly 0 drawn at 1e-45)")):
        ax.set_title(title)
        ax.set_xlabel("training step")
    axes[0].legend()
    fig.suptitle(f"S8: one run step by step (Adam {lr:g}, rho = {rho:.0%}, seed {seed})")
    return save_figure(fig, out_dir, "s8_trajectory")
