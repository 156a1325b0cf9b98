"""S4, compound losses and the learning rate: is Dice+CE the most robust choice?
Ma et al. 2021 found compound losses (Dice + CE, Dice + focal) the most robust across tasks. Here
robustness is across the Adam learning rate: CE, Dice and Dice+CE are each trained at both ends of
a 10x range of rates, 1e-3 and 1e-2 (no selection), on S1's 32x32 data at rho = 1 % (10-pixel
discs, sigma 0.5). Two measures, paired over seeds: the share of a seed's runs that failed
(collapsed or diverged) over the grid, and, over the seeds where no run of either loss failed,
the worst tuned-threshold DSC over the grid. S8 measures collapse over a wider grid of rates,
optimisers and losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import pandas as pd

from . import Claim
from .common import SMALL, TrainingConfig, failed, rows, run_task, series_claim, setting, task
from .figures_training import line_panel, present

__all__ = ["Config", "SCALES", "tasks", "run_task", "claims", "figures"]
SOURCE = "Ma et al. 2021 (loss odyssey in medical image segmentation)"


@dataclass(frozen=True)
class Config(TrainingConfig):
    size: int = 32
    sigma: float = 0.5
    area: int = 10
    losses: Tuple[str, ...] = ("ce", "dice", "dice_ce")
    lrs: Tuple[float, ...] = (1e-3, 1e-2)


SCALES = {"small": Config(**SMALL, lrs=(1e-3, 3e-2)), "paper": Config()}


def tasks(config: Config) -> List[dict]:
    return [task(loss, setting((config.size, config.size), area=config.area, sigma=config.sigma, lrs=[lr]))
            for loss in config.losses for lr in config.lrs]


def over_rates(df: pd.DataFrame, variant: str, metric: str, how: str) -> pd.Series:
    """Per seed, ``how`` ("min", "mean") of ``metric`` over the learning-rate grid."""
    return rows(df, "convergence", variant=variant).groupby("seed")[metric].agg(how).astype(float)


def claims(df: pd.DataFrame, config: Config) -> List[Claim]:
    stage = "convergence"
    part = df.assign(failed=failed(df) if len(df) else False)
    out = [series_claim("s4.dice_ce_fails_less_than_dice", f"share of a seed's runs that collapsed or diverged over "
                        f"the rates {list(config.lrs)}, Dice - Dice+CE", SOURCE, stage,
                        over_rates(part, "dice", "failed", "mean"), over_rates(part, "dice_ce", "failed", "mean"),
                        ">", 0.0)]
    for single in ("dice", "ce"):
        a, b = over_rates(part, "dice_ce", "failed", "max"), over_rates(part, single, "failed", "max")
        both_trained = a.index[(a == 0) & (b.reindex(a.index) == 0)]
        out.append(series_claim(f"s4.dice_ce_more_robust_than_{single}",
                                f"worst tuned-threshold DSC over the rates {list(config.lrs)}, Dice+CE - {single} "
                                "(seeds where no run of either failed)", SOURCE, stage,
                                over_rates(part, "dice_ce", "dsc_tuned", "min").loc[both_trained],
                                over_rates(part, single, "dsc_tuned", "min").reindex(both_trained), ">", 0.0))
    return out


def figures(df: pd.DataFrame, out_dir) -> list:
    from ..plotting import plt, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, stage in zip(axes, ("budget", "convergence")):
        line_panel(ax, df, "lr", "dsc_tuned", present(df, ["ce", "dice", "dice_ce"]), stage)
        ax.set_xlabel("Adam learning rate")
    axes[0].legend()
    fig.suptitle("S4: tuned-threshold test DSC of the runs that trained, against the learning rate (rho = 1 %)")
    return save_figure(fig, out_dir, "s4_compound_lr")
