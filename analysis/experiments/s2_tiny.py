"""S2, tiny objects and smoothing: the Dice smoothing term against objects of 3 and 10 pixels.

With ``smooth = s`` an image whose object has ``A`` pixels scores ``s / (A + s)`` when nothing is
predicted: for ``s >= A`` that is at least 1/2, so the loss barely rewards finding the object, and
large smoothing should erase tiny structures (theory; the smoothing values of common libraries
range from 1e-5, MONAI and nnU-Net, to 1, the V-Net / many tutorials). With ``s << A`` the term
is negligible. Data as S1 (32x32, sigma 0.5); Dice per image, learning rate tuned per setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import pandas as pd

from . import Claim
from .common import SMALL, TrainingConfig, paired_claim, run_task, setting, task
from .figures_training import line_panel, present

__all__ = ["Config", "SCALES", "tasks", "run_task", "claims", "figures"]
SOURCE = "theory: an empty prediction scores s / (A + s), which is >= 1/2 once the smoothing s >= the area A"
SMOOTHING = {"dice": 1e-5, "dice_smooth1": 1.0, "dice_smooth10": 10.0}


@dataclass(frozen=True)
class Config(TrainingConfig):
    size: int = 32
    sigma: float = 0.5
    # (area, variant): smoothing 10 against 1e-5 on 3-pixel objects, smoothing 1 against 1e-5 on 10-pixel ones
    runs: Tuple[Tuple[int, str], ...] = ((3, "dice"), (3, "dice_smooth10"), (10, "dice"), (10, "dice_smooth1"))
    lrs: Tuple[float, ...] = (1e-3, 3e-3)  # where every arm trains (smoothing 1 was unstable at 3e-2)


SCALES = {"small": Config(**SMALL, lrs=(3e-3,)), "paper": Config()}
TINY, LARGER = 3, 10


def tasks(config: Config) -> List[dict]:
    return [task("dice", setting((config.size, config.size), area=area, sigma=config.sigma, smooth=SMOOTHING[v],
                                 lrs=config.lrs), v)
            for area, v in config.runs]


def claims(df: pd.DataFrame, config: Config) -> List[Claim]:
    stage = "convergence"
    return [
        paired_claim(df, "s2.large_smoothing_erases_tiny", f"area {TINY} px: recall(Dice, smooth 10) - "
                     "recall(Dice, smooth 1e-5)", SOURCE, stage, "recall", dict(variant="dice_smooth10", area=TINY),
                     dict(variant="dice", area=TINY), "<", -0.1),
        paired_claim(df, "s2.unit_smoothing_harmless_at_10px", f"area {LARGER} px: DSC(Dice, smooth 1) - "
                     "DSC(Dice, smooth 1e-5)", SOURCE, stage, "dsc", dict(variant="dice_smooth1", area=LARGER),
                     dict(variant="dice", area=LARGER), ">", -0.05),
    ]


def figures(df: pd.DataFrame, out_dir) -> list:
    from ..plotting import plt, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, stage in zip(axes, ("budget", "convergence")):
        line_panel(ax, df, "area", "recall", present(df, list(SMOOTHING)), stage)
        ax.set_xlabel("object area (pixels)")
    axes[0].legend(title="Dice smoothing")
    fig.suptitle("S2: recall of tiny objects against the Dice smoothing term")
    return save_figure(fig, out_dir, "s2_tiny_smoothing")
