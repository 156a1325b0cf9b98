"""S5, several imbalanced classes: three foreground classes of 3, 10 and 31 pixels (rho = 0.3 %,
1 %, 3 % of a 32x32 image), softmax over four channels.

Each class has its own input channel (its whole object plus N(0, 0.5^2) noise; a larger class
index is drawn on top), so the classes are independent given the image and the Bayes posterior
is exact (``analysis.bayes.multiclass_posterior``). Dice terms average over the foreground
classes (nnU-Net's convention); generalized Dice includes the background and weights each class
by ``1 / G_c^2`` (Sudre et al. 2017).
Measured per class (pooled DSC, recall) and macro over the foreground classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import pandas as pd

from . import Claim
from .common import SMALL, TrainingConfig, paired_claim, run_task, setting, task
from .figures_training import bar_panel, present

__all__ = ["Config", "SCALES", "tasks", "run_task", "claims", "figures"]
SOURCES = dict(
    sudre="Sudre et al. 2017 (generalized Dice)",
    milletari="Milletari et al. 2016; Sudre et al. 2017",
)


@dataclass(frozen=True)
class Config(TrainingConfig):
    size: int = 32
    sigma: float = 0.5
    areas: Tuple[int, ...] = (3, 10, 31)
    losses: Tuple[str, ...] = ("ce", "dice", "gen_dice")
    lrs: Tuple[float, ...] = (3e-4, 1e-3, 3e-3)  # softmax Dice and generalized Dice collapse at 1e-2 and above


SCALES = {"small": Config(**SMALL, lrs=(1e-2,)), "paper": Config()}


def tasks(config: Config) -> List[dict]:
    return [task(loss, setting((config.size, config.size), areas=config.areas, sigma=config.sigma, lrs=config.lrs))
            for loss in config.losses]


def claims(df: pd.DataFrame, config: Config) -> List[Claim]:
    small = f"the smallest class ({config.areas[0]} px)"
    stage = "convergence"
    return [
        paired_claim(df, "s5.generalized_dice_helps_smallest_class", f"DSC of {small}, generalized Dice - Dice",
                     SOURCES["sudre"], stage, "dsc_c1", dict(variant="gen_dice"), dict(variant="dice"), ">", 0.0),
        paired_claim(df, "s5.dice_beats_ce_smallest_class", f"DSC of {small}, Dice - CE", SOURCES["milletari"], stage,
                     "dsc_c1", dict(variant="dice"), dict(variant="ce"), ">", 0.0),
    ]


def figures(df: pd.DataFrame, out_dir) -> list:
    from ..plotting import plt, save_figure

    variants = present(df, ["ce", "wce", "dice", "gen_dice", "dice_ce"])
    classes = sorted(int(c.split("_c")[1]) for c in df.columns if c.startswith("dsc_c"))
    fig, axes = plt.subplots(1, len(classes), figsize=(5 * len(classes), 4.5), sharey=True)
    areas = [int(a) for a in df["areas"].iloc[0].strip("[]").split(",")]
    for ax, c in zip(axes, classes):
        bar_panel(ax, df, f"dsc_c{c}", variants, "convergence", {}, reference=f"bayes_dsc_c{c}")
        ax.set_title(f"class {c} ({areas[c - 1]} px), converged")
    fig.suptitle("S5: per-class DSC with three imbalanced classes (dashed: Bayes argmax)")
    return save_figure(fig, out_dir, "s5_multiclass")
