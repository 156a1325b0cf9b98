"""S3, empty images: half the images hold no object; does the model leave them empty?

Per-image Dice with a tiny smoothing scores an empty image ``s / (P + s)``: about 0 whatever is
predicted, with a gradient of about ``s / P^2``, so false positives on empty images go unpunished;
batch Dice (one score over the batch) or a smoothing of the order of the objects restores the
signal (Tilborghs et al. 2022). The U-Net sees the whole image (global-context bottleneck), so it
*can* tell an empty image; the Bayes posterior shows how often a perfect model would still fire.
Measured: the image-level false-positive rate (share of empty test images with any pixel above
the threshold) at the threshold where each model's pixel recall on the object images is 1/2
(matched recall: the primary hypothesis, per-image Dice against batch Dice), and the FP-recall
curve over fixed thresholds.
Data: 32x32, one 10-pixel disc (rho = 1 % on object images), sigma 0.5, empty fraction 1/2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import pandas as pd

from ..evaluation import MATCHED_RECALL
from . import Claim
from .common import (FP_THRESHOLDS, SMALL, TrainingConfig, colour, label, mean_ci, run_task, seeded, series_claim,
                     setting, task, trained, within_claim)
from .figures_training import bar_panel, present

__all__ = ["Config", "SCALES", "tasks", "run_task", "claims", "figures"]
SOURCE = "Tilborghs et al. 2022 (Dice loss with missing or empty labels)"
MATCHED_FP = "image_fp_rate_at_recall50"  # compared at matched recall: firing less by finding less gains nothing
VARIANTS = {  # variant: (loss, smoothing, batch Dice)
    "ce": ("ce", 1e-5, False), "dice": ("dice", 1e-5, False), "dice_smooth1": ("dice", 1.0, False),
    "dice_batch": ("dice", 1e-5, True),
}


@dataclass(frozen=True)
class Config(TrainingConfig):
    size: int = 32
    sigma: float = 0.5
    area: int = 10
    empty_fraction: float = 0.5
    variants: Tuple[str, ...] = tuple(VARIANTS)
    lrs: Tuple[float, ...] = (1e-3, 3e-3, 1e-2)


SCALES = {"small": Config(**SMALL, lrs=(1e-2, 3e-2)), "paper": Config()}  # small: the selection path too


def tasks(config: Config) -> List[dict]:
    out = []
    for variant in config.variants:
        loss, smooth, batch = VARIANTS[variant]
        out.append(task(loss, setting((config.size, config.size), area=config.area, sigma=config.sigma,
                                      empty_fraction=config.empty_fraction, smooth=smooth, batch=batch, lrs=config.lrs),
                        variant))
    return out


def claims(df: pd.DataFrame, config: Config) -> List[Claim]:
    stage = "convergence"

    def fp(name, statement, a, b, primary=False):
        return series_claim(f"s3.{name}", f"image-level FP rate at pixel recall {MATCHED_RECALL:g} on the object "
                            f"images, {statement} (runs that trained)", SOURCE, stage,
                            seeded(df, stage, dict(variant=a), MATCHED_FP), seeded(df, stage, dict(variant=b), MATCHED_FP),
                            ">", 0.0, primary=primary)

    return [
        fp("batch_dice_fixes_empty", "per-image Dice - batch Dice", "dice", "dice_batch", primary=True),
        fp("per_image_dice_fires_on_empty", "per-image Dice (smooth 1e-5) - CE", "dice", "ce"),
        fp("smoothing_fixes_empty", "per-image Dice, smooth 1e-5 - smooth 1", "dice", "dice_smooth1"),
        within_claim(df, "s3.ce_sees_empty_images", "image-level FP rate at threshold 1/2, CE - the Bayes posterior",
                     "design: a model whose receptive field covers the image can approach the Bayes posterior",
                     stage, dict(variant="ce"), "image_fp_rate", "bayes_image_fp_rate", "<", 0.1),
    ]


def figures(df: pd.DataFrame, out_dir) -> list:
    from ..plotting import plt, save_figure

    variants = present(df, list(VARIANTS))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    bar_panel(axes[0], df, MATCHED_FP, variants, "convergence", {})
    axes[0].set_ylabel(f"share of empty images with a false positive\nat pixel recall {MATCHED_RECALL:g}")
    for ax, stage in zip(axes[1:], ("budget", "convergence")):
        part = trained(df[df["stage"] == stage])
        for variant in variants:
            group = part[part["variant"] == variant]
            fp = np.array([mean_ci(group[f"fp_rate@{t:g}"]) for t in FP_THRESHOLDS])
            rec = np.array([mean_ci(group[f"recall@{t:g}"]) for t in FP_THRESHOLDS])
            ax.errorbar(fp[:, 0], rec[:, 0], xerr=[fp[:, 0] - fp[:, 1], fp[:, 2] - fp[:, 0]],
                        yerr=[rec[:, 0] - rec[:, 1], rec[:, 2] - rec[:, 0]], marker="o", color=colour(variant),
                        label=label(variant), capsize=2)
        ax.set_xlabel("image-level false-positive rate (empty images)")
        ax.set_ylabel("pixel recall (object images)")
        ax.set_title(f"FP-recall over thresholds {FP_THRESHOLDS[0]:g}..{FP_THRESHOLDS[-1]:g}, "
                     + ("at the budget" if stage == "budget" else "at convergence"))
    axes[2].legend()
    fig.suptitle("S3: empty images (half the test set)")
    return save_figure(fig, out_dir, "s3_empty")
