"""S6, 3-D: balls of 12 voxels (rho = 0.7 %) in 12^3 volumes, intensity label + N(0, 0.5^2).

The 3-D version of S1's tiny-object comparison (V-Net, where the Dice loss was introduced, is
3-D): CE and Dice with the same U-Net in 3-D (batch 4), learning rate tuned per loss,
measured at the budget and at convergence against the exact Bayes posterior (8 ball shapes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import pandas as pd

from . import Claim
from .common import SMALL, TrainingConfig, paired_claim, run_task, setting, task
from .figures_training import bar_panel, present

__all__ = ["Config", "SCALES", "tasks", "run_task", "claims", "figures"]
SOURCES = dict(milletari="Milletari et al. 2016 (V-Net)", bertels="Bertels et al. 2019; Eelbode et al. 2020",
               mehrtash="Mehrtash et al. 2020; Yeung et al. 2022")


@dataclass(frozen=True)
class Config(TrainingConfig):
    size: int = 12
    sigma: float = 0.5
    area: int = 12
    losses: Tuple[str, ...] = ("ce", "dice")
    lrs: Tuple[float, ...] = (3e-3, 1e-2, 3e-2)
    batch_size: int = 4
    train_images: int = 128


SCALES = {"small": Config(**SMALL, lrs=(1e-2,), batch_size=2), "paper": Config()}


def tasks(config: Config) -> List[dict]:
    return [task(loss, setting((config.size,) * 3, area=config.area, sigma=config.sigma, lrs=config.lrs))
            for loss in config.losses]


def claims(df: pd.DataFrame, config: Config) -> List[Claim]:
    out = []
    for stage in ("budget", "convergence"):
        suffix = "budget" if stage == "budget" else "converged"
        out += [
            paired_claim(df, f"s6.dice_keeps_recall_3d.{suffix}", "recall(Dice) - recall(CE), balls of "
                         f"{config.area} voxels", SOURCES["milletari"], stage, "recall", dict(variant="dice"),
                         dict(variant="ce"), ">", 0.2),
            paired_claim(df, f"s6.dice_higher_dsc_3d.{suffix}", "DSC(Dice) - DSC(CE)", SOURCES["bertels"], stage, "dsc",
                         dict(variant="dice"), dict(variant="ce"), ">", 0.0),
            paired_claim(df, f"s6.dice_worse_ece_3d.{suffix}", "ECE(Dice) - ECE(CE)", SOURCES["mehrtash"], stage, "ece",
                         dict(variant="dice"), dict(variant="ce"), ">", 0.0),
        ]
    return out


def figures(df: pd.DataFrame, out_dir) -> list:
    from ..plotting import plt, save_figure

    variants = present(df, ["ce", "dice", "dice_ce"])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, metric, stage, ref in zip(axes, ("dsc", "dsc", "ece"), ("budget", "convergence", "convergence"),
                                      ("bayes_dsc", "bayes_dsc", "bayes_ece")):
        bar_panel(ax, df, metric, variants, stage, {}, reference=ref)
    fig.suptitle("S6: 3-D balls (dashed: Bayes posterior)")
    return save_figure(fig, out_dir, "s6_balls3d")
