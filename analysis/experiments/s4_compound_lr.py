"""S4, compound losses and the learning rate: is Dice+CE / Dice+focal the most robust choice?

Ma et al. 2021 found compound losses (Dice + CE, Dice + focal) the most robust across tasks. Here
robustness is across the Adam learning rate: each of CE, Dice, Dice+CE and Dice+focal is trained
at both ends of a 30x range of rates, 1e-3 and 3e-2 (no selection), and a loss's *worst-rate* DSC per seed (the
minimum over the grid) is compared, paired over seeds. Data as S1 at rho = 1 % (10-pixel discs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import pandas as pd

from . import Claim
from .common import SMALL, TrainingConfig, series_claim, rows, run_task, setting, task
from .figures_training import line_panel, present

__all__ = ["Config", "SCALES", "tasks", "run_task", "claims", "figures"]
SOURCE = "Ma et al. 2021 (loss odyssey in medical image segmentation)"


@dataclass(frozen=True)
class Config(TrainingConfig):
    size: int = 32
    sigma: float = 0.5
    area: int = 10
    losses: Tuple[str, ...] = ("ce", "dice", "dice_ce", "dice_focal")
    lrs: Tuple[float, ...] = (1e-3, 3e-2)


SCALES = {"small": Config(**SMALL, lrs=(1e-3, 3e-2)), "paper": Config()}


def tasks(config: Config) -> List[dict]:
    return [task(loss, setting((config.size, config.size), area=config.area, sigma=config.sigma, lrs=[lr]))
            for loss in config.losses for lr in config.lrs]


def worst_rate(df: pd.DataFrame, stage: str, variant: str, metric: str = "dsc") -> pd.Series:
    """Per seed, the lowest ``metric`` over the learning-rate grid."""
    return rows(df, stage, variant=variant).groupby("seed")[metric].min().astype(float)


def claims(df: pd.DataFrame, config: Config) -> List[Claim]:
    out = []
    for stage in ("budget", "convergence"):
        suffix = "budget" if stage == "budget" else "converged"
        for compound, single in (("dice_ce", "dice"), ("dice_ce", "ce"), ("dice_focal", "dice"), ("dice_focal", "ce")):
            out.append(series_claim(f"s4.{compound}_more_robust_than_{single}.{suffix}",
                              f"worst DSC over the learning rates {list(config.lrs)}, {compound} - {single}", SOURCE,
                              stage, worst_rate(df, stage, compound), worst_rate(df, stage, single), ">", 0.0))
    return out


def figures(df: pd.DataFrame, out_dir) -> list:
    from ..plotting import plt, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, stage in zip(axes, ("budget", "convergence")):
        line_panel(ax, df, "lr", "dsc", present(df, ["ce", "dice", "dice_ce", "dice_focal"]), stage)
        ax.set_xlabel("Adam learning rate")
    axes[0].legend()
    fig.suptitle("S4: test DSC against the learning rate (rho = 1 %)")
    return save_figure(fig, out_dir, "s4_compound_lr")
