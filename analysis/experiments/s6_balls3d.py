"""S6, 3-D: balls of 12 voxels (rho = 0.7 %) in 12^3 volumes, intensity label + N(0, 0.5^2).

The 3-D version of S1's tiny-object comparison (V-Net, where the Dice loss was introduced, is
3-D): CE and Dice with the same U-Net in 3-D (batch 4), learning rate tuned per loss,
measured at convergence (recall at precision 0.5, tuned-threshold DSC, ECE) against the exact Bayes
posterior (8 ball shapes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import pandas as pd

from . import Claim
from .common import SMALL, TrainingConfig, paired_claim, run_task, setting, task
from .figures_training import bar_panel, present

__all__ = ["Config", "SCALES", "tasks", "run_task", "claims", "figures"]
SOURCES = dict(milletari="Milletari et al. 2016 (V-Net)",
               proper="theory: CE is a proper scoring rule, so a tuned threshold recovers Dice's operating point; "
                      "Bertels et al. 2019",
               mehrtash="Mehrtash et al. 2020; Yeung et al. 2022")


@dataclass(frozen=True)
class Config(TrainingConfig):
    size: int = 12
    sigma: float = 0.5
    area: int = 12
    losses: Tuple[str, ...] = ("ce", "dice")
    lrs: Tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    batch_size: int = 4
    train_images: int = 128


SCALES = {"small": Config(**SMALL, lrs=(1e-2,), batch_size=2), "paper": Config()}


def tasks(config: Config) -> List[dict]:
    return [task(loss, setting((config.size,) * 3, area=config.area, sigma=config.sigma, lrs=config.lrs))
            for loss in config.losses]


def claims(df: pd.DataFrame, config: Config) -> List[Claim]:
    stage = "convergence"
    balls = f"balls of {config.area} voxels"
    return [
        paired_claim(df, "s6.dice_higher_recall_at_precision_half_3d", f"{balls}: recall at precision 0.5, Dice - CE",
                     SOURCES["milletari"], stage, "recall_at_p50", dict(variant="dice"), dict(variant="ce"), ">", 0.0),
        paired_claim(df, "s6.ce_tuned_threshold_ranks_as_well_3d", f"{balls}: DSC at the validation-tuned threshold, "
                     "CE - Dice", SOURCES["proper"], stage, "dsc_tuned", dict(variant="ce"), dict(variant="dice"), ">",
                     -0.02),
        paired_claim(df, "s6.dice_worse_ece_3d", f"{balls}: ECE, Dice - CE", SOURCES["mehrtash"], stage, "ece",
                     dict(variant="dice"), dict(variant="ce"), ">", 0.0),
    ]


def figures(df: pd.DataFrame, out_dir) -> list:
    from ..plotting import plt, save_figure

    variants = present(df, ["ce", "dice", "dice_ce"])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, metric, stage, ref in zip(axes, ("dsc_tuned", "recall_at_p50", "ece"),
                                      ("convergence", "convergence", "convergence"), ("bayes_dsc", "", "bayes_ece")):
        bar_panel(ax, df, metric, variants, stage, {}, reference=ref)
    fig.suptitle("S6: 3-D balls (dashed: Bayes posterior)")
    return save_figure(fig, out_dir, "s6_balls3d")
