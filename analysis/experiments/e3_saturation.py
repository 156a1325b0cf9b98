"""E3, saturation: what Dice does to the model over long training, against cross-entropy.

Long full-batch training (Adam) of the logistic model at a small foreground fraction, logging the
loss, the parameter-gradient norm, the logit scale (mean |logit|), the fraction of unsaturated
pixels (0.01 < p < 0.99), calibration (ECE and NLL) and the hard DSC. Dice's optimum is a hard
decision, so it drives the logits to grow without bound: larger logit scale, fewer unsaturated
pixels, worse calibration, and a soft loss that stays above ``1 - hard DSC`` while its gradient
vanishes. A second set of runs uses plain SGD at a learning rate tuned for cross-entropy.
References: Bertels 2019, Eelbode 2020 (Dice vs CE), Mehrtash 2020 (calibration of Dice-trained models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import pandas as pd

from ..synthetic import generator_for, make_batch
from ..training import evaluate, gradient_norm, make_loss, make_model, train
from . import Claim, verification


@dataclass(frozen=True)
class Config:
    seed: int = 0
    impl: str = "vectorized"
    seeds: int = 2
    losses: Tuple[str, ...] = ("ce", "dice", "dice_ce")  # trained with Adam
    sgd_losses: Tuple[str, ...] = ("dice", "dice_ce")
    fg_fraction: float = 0.01
    size: int = 128
    images: int = 2
    sigma: float = 1.5  # overlapping classes: at 0.55 the Bayes posterior is already ~0/1 (docs/experiments.md)
    steps: int = 2000
    lr: float = 0.05
    sgd_lr: float = 1.0
    sgd_steps: int = 300
    log_every: int = 25
    model: str = "logistic"


SCALES = {
    "small": Config(seeds=1, losses=("ce", "dice"), size=64, fg_fraction=0.03, steps=600, sgd_steps=150, log_every=20),
    "paper": Config(),
}


def tasks(config: Config) -> List[dict]:
    return [dict(seed=config.seed + s, optimizer=optimizer, loss=loss) for s in range(config.seeds)
            for optimizer, losses in (("adam", config.losses), ("sgd", config.sgd_losses)) for loss in losses]


def run_task(config: Config, task: dict) -> pd.DataFrame:
    seed, optimizer, loss = task["seed"], task["optimizer"], task["loss"]
    data = make_batch(config.images, (config.size, config.size), fg_fraction=config.fg_fraction,
                      sigma=config.sigma, generator=generator_for(seed, 0))
    rows = []

    def log(step, value, logits, model):
        rows.append(dict(seed=seed, optimizer=optimizer, loss=loss, step=step, loss_value=float(value),
                         grad_norm=gradient_norm(model), **evaluate(logits, data.masks)))

    adam = optimizer == "adam"
    train(make_model(config.model, generator=generator_for(seed, 1)), data.images, data.masks,
          make_loss(loss, impl=config.impl), steps=config.steps if adam else config.sgd_steps,
          lr=config.lr if adam else config.sgd_lr, optimizer=optimizer, log_every=config.log_every, log=log)
    return pd.DataFrame(rows)


def _final(df: pd.DataFrame) -> pd.DataFrame:
    adam = df[df["optimizer"] == "adam"]
    last = adam[adam["step"] == adam.groupby(["seed", "loss"])["step"].transform("max")]
    return last.groupby("loss").mean(numeric_only=True)


def _steps_to(df: pd.DataFrame, loss: str, fraction: float) -> float:
    """Mean over seeds of the first logged SGD step whose hard DSC reaches ``fraction`` of the final
    DSC of the seed's Adam-trained Dice run (the run's length if never)."""
    adam = df[(df["optimizer"] == "adam") & (df["loss"] == "dice")]
    goal = adam[adam["step"] == adam["step"].max()].set_index("seed")["dsc"] * fraction
    sgd = df[(df["optimizer"] == "sgd") & (df["loss"] == loss)]
    firsts = []
    for seed, run in sgd.groupby("seed"):
        reached = run.loc[run["dsc"] >= goal[seed], "step"]
        firsts.append(reached.min() if len(reached) else run["step"].max() + 1)
    return float(sum(firsts) / len(firsts))


def claims(df: pd.DataFrame, config: Config) -> List[Claim]:
    final = _final(df)
    dice, ce = final.loc["dice"], final.loc["ce"]
    adam_dice = df[(df["optimizer"] == "adam") & (df["loss"] == "dice")]
    peak = adam_dice.groupby("seed")["grad_norm"].max()
    last_grad = adam_dice[adam_dice["step"] == adam_dice["step"].max()].set_index("seed")["grad_norm"]
    return [
        verification("e3.dice_larger_logits", "final mean |logit|, Dice / CE", dice["logit_scale"] / ce["logit_scale"], ">", 1.0),
        verification("e3.dice_fewer_unsaturated", "final fraction of pixels with 0.01 < p < 0.99, Dice / CE",
              dice["unsaturated"] / ce["unsaturated"], "<", 1.0),
        verification("e3.dice_worse_nll", "final negative log-likelihood, Dice / CE (calibration)", dice["nll"] / ce["nll"], ">", 1.0),
        verification("e3.dice_worse_ece", "final expected calibration error, Dice - CE", dice["ece"] - ce["ece"], ">", 0.0),
        verification("e3.soft_loss_above_hard", "final soft Dice loss - (1 - hard DSC) of the Dice run",
              dice["loss_value"] - (1 - dice["dsc"]), ">", 0.0),
        verification("e3.dice_gradient_vanishes", "Dice run: final / peak parameter-gradient norm (max over seeds)",
              (last_grad / peak).max(), "<", 0.1),
        verification("e3.sgd_dice_plateau", "plain SGD at CE's lr: steps to half the Adam-Dice DSC, Dice minus Dice+CE",
              _steps_to(df, "dice", 0.5) - _steps_to(df, "dice_ce", 0.5), ">", 0.0),
    ]


def figures(df: pd.DataFrame, out_dir) -> list:
    from ..plotting import plt, save_figure

    panels = (("loss_value", "training loss", "log"), ("grad_norm", "parameter-gradient norm", "log"),
              ("logit_scale", "mean |logit|", "linear"), ("unsaturated", "fraction 0.01 < p < 0.99", "linear"),
              ("ece", "expected calibration error", "linear"), ("dsc", "hard DSC (train)", "linear"))
    paths = []
    for optimizer, group in df.groupby("optimizer"):
        fig, axes = plt.subplots(2, 3, figsize=(15, 8))
        for ax, (column, label, yscale) in zip(axes.flat, panels):
            for loss, runs in group.groupby("loss", sort=False):
                curve = runs.groupby("step")[column].mean()
                ax.plot(curve.index, curve.values, label=loss)
            ax.set_yscale(yscale)
            ax.set_xlabel("training step")
            ax.set_ylabel(label)
            ax.set_title(f"E3 ({optimizer}): {label}")
        axes.flat[0].legend(title="loss")
        paths += save_figure(fig, out_dir, f"e3_saturation_{optimizer}")
    return paths
