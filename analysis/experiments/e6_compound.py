"""E6, compound losses and robustness: a learning rate x foreground fraction grid.

Each loss trains the logistic model (Adam, full batch, a fixed step budget) in every
(learning rate, rho) cell and is scored by test DSC. Expected (Ma 2021, "Loss Odyssey"): Dice+CE
and Dice+focal are never far below the best single loss in any cell, and vary least across
learning rates.

Measured refinement: Dice+focal does both. Dice+CE does not at the smallest learning rate and
the smallest rho: early on, the CE term's push towards the background prior dominates (its
gradient is O(1) per pixel, Dice's O(1/N)), the model first collapses to background like CE alone,
and the step budget ends before the Dice term pulls it back (Dice alone gets there first). Once
the learning rate is large enough to converge (lr >= 0.1), Dice+CE is as good as the best single
loss. The claims state this split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import pandas as pd

from ..synthetic import generator_for, make_batch
from ..training import evaluate, make_loss, make_model, predict, train
from . import Claim, verification

SINGLE, COMPOUND = ("ce", "focal", "dice"), ("dice_ce", "dice_focal")


@dataclass(frozen=True)
class Config:
    seed: int = 0
    impl: str = "vectorized"
    seeds: int = 2
    lrs: Tuple[float, ...] = (0.01, 0.1, 1.0)
    fg_fractions: Tuple[float, ...] = (0.003, 0.03, 0.3)
    losses: Tuple[str, ...] = SINGLE + COMPOUND
    size: int = 128
    train_images: int = 2
    test_images: int = 8
    sigma: float = 0.55
    steps: int = 200
    model: str = "logistic"


SCALES = {
    "small": Config(seeds=1, lrs=(0.03, 0.3), fg_fractions=(0.003, 0.3), size=64, steps=100),
    "paper": Config(),
}


def tasks(config: Config) -> List[dict]:
    return [dict(seed=config.seed + s, index=i, fg_fraction=rho)
            for s in range(config.seeds) for i, rho in enumerate(config.fg_fractions)]


def run_task(config: Config, task: dict) -> pd.DataFrame:
    seed, i, rho = task["seed"], task["index"], task["fg_fraction"]
    shape = (config.size, config.size)
    data = make_batch(config.train_images, shape, fg_fraction=rho, sigma=config.sigma, generator=generator_for(seed, i, 0))
    test = make_batch(config.test_images, shape, fg_fraction=rho, sigma=config.sigma, generator=generator_for(seed, i, 1))
    rows = []
    for lr in config.lrs:
        for loss in config.losses:
            model = train(make_model(config.model, generator=generator_for(seed, i, 2)), data.images, data.masks,
                          make_loss(loss, impl=config.impl, fg_fraction=rho), steps=config.steps, lr=lr)
            rows.append(dict(seed=seed, fg_fraction=rho, lr=lr, loss=loss,
                             **evaluate(predict(model, test.images), test.masks)))
    return pd.DataFrame(rows)


CONVERGED_LR = 0.1


def claims(df: pd.DataFrame, config: Config) -> List[Claim]:
    cells = df.groupby(["fg_fraction", "lr", "loss"])["dsc"].mean().unstack("loss")
    gap = cells.sub(cells[list(SINGLE)].max(axis=1), axis=0)  # DSC minus the best single loss's, per cell
    # Spread across learning rates: per rho, max - min of the mean DSC over lrs; then the mean over rho.
    spread = cells.groupby(level="fg_fraction").agg(lambda column: column.max() - column.min()).mean()
    converged = gap[gap.index.get_level_values("lr") >= CONVERGED_LR]
    hardest = cells.loc[(cells.index.get_level_values("fg_fraction").min(), cells.index.get_level_values("lr").min())]
    return [
        verification("e6.dice_focal_never_far_below", "min over (lr, rho) cells of Dice+focal's DSC minus the best single loss's",
              gap["dice_focal"].min(), ">=", -0.05),
        verification("e6.dice_focal_most_robust", "lr-spread of DSC (mean over rho of max - min over lr), Dice+focal / "
              "the smallest among single losses", spread["dice_focal"] / spread[list(SINGLE)].min(), "<=", 1.0),
        verification("e6.dice_ce_close_once_converged", f"min over cells with lr >= {CONVERGED_LR:g} of Dice+CE's DSC minus "
              "the best single loss's", converged["dice_ce"].min(), ">=", -0.05),
        verification("e6.dice_ce_slow_at_low_lr_and_rho", "at the smallest lr and rho, Dice+CE's DSC minus Dice's (CE's early "
              "collapse to background is inherited)", hardest["dice_ce"] - hardest["dice"], "<", 0.0),
    ]


def figures(df: pd.DataFrame, out_dir) -> list:
    from ..plotting import plt, save_figure

    losses = list(dict.fromkeys(df["loss"]))
    fig, axes = plt.subplots(1, len(losses), figsize=(3.6 * len(losses) + 1, 3.8), squeeze=False,
                             layout="constrained")
    for ax, loss in zip(axes[0], losses):
        grid = df[df["loss"] == loss].groupby(["fg_fraction", "lr"])["dsc"].mean().unstack("lr")
        image = ax.imshow(grid.values, vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
        for (r, c), value in zip(((r, c) for r in range(grid.shape[0]) for c in range(grid.shape[1])), grid.values.flat):
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black", fontsize=8)
        ax.set_xticks(range(grid.shape[1]), [f"{lr:g}" for lr in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [f"{rho:.1%}" for rho in grid.index])
        ax.set_xlabel("Adam learning rate")
        ax.set_ylabel("foreground fraction rho")
        ax.set_title(f"E6: test DSC, {loss}")
        ax.grid(False)
    fig.colorbar(image, ax=axes[0].tolist(), label="test DSC")
    return save_figure(fig, out_dir, "e6_compound")
