"""D1, distributed batch Dice: naive per-rank batch Dice against the global one as ranks shrink.

Under data parallelism each rank holds ``per_rank`` of the batch's images. The naive recipe scores
batch Dice on each rank's slice and averages the losses (what DDP does to any per-rank loss);
the global one (``dice_impls.distributed.global_dice_loss``) sums the per-class statistics over
ranks first. Simulated in one process by splitting a batch: the global loss is scored from the
summed per-slice statistics (checked against the whole-batch loss), the naive one is the mean of
the per-slice losses. Both gradients are taken w.r.t. all logits, so they compare what DDP would
apply (up to its constant world-size factor, which the cosine ignores).

Data: ``analysis.synthetic`` discs covering ``fg_fraction`` of each image, a fraction of the
images empty, intensity ``label + N(0, sigma^2)``. Predictions: a fixed logistic detector on the
3x3 mean intensity, ``logit = sharpness * (mean - 0.5)`` (a reasonably trained per-pixel model).
Binary sigmoid Dice, ``DiceSpec(activation="sigmoid", batch=True)``.

Expected: with one image per rank the naive loss is per-image Dice, under which an empty image
scores ``s / (P + s)``: loss ~1 and gradient ~0 whatever it predicts, so false positives on empty
images go unpunished and the loss is biased up; the error shrinks as ranks hold more images and
vanishes with one rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import pandas as pd
import torch
import torch.nn.functional as F

from analysis.experiments import Claim, verification
from analysis.synthetic import generator_for, make_batch
from dice_impls import DiceSpec, DiceStatistics, dice_loss, dice_statistics, loss_from_statistics

SPEC = DiceSpec(activation="sigmoid", batch=True)


@dataclass(frozen=True)
class Config:
    seed: int = 0
    impl: str = "vectorized"
    size: int = 128
    images: int = 64
    per_rank: Tuple[int, ...] = (64, 32, 16, 8, 4, 2, 1)
    fg_fractions: Tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1)
    empty_fractions: Tuple[float, ...] = (0.0, 0.5)
    draws: int = 5
    sigma: float = 0.5
    sharpness: float = 10.0


SCALES = {
    "small": Config(size=48, images=16, per_rank=(16, 8, 4, 2, 1), fg_fractions=(0.003, 0.03), draws=2),
    "paper": Config(),
}


def detector_logits(images: torch.Tensor, sharpness: float) -> torch.Tensor:
    return sharpness * (F.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False) - 0.5)


def compare(logits: torch.Tensor, masks: torch.Tensor, per_rank: int, impl: str) -> dict:
    """Losses and gradients of the whole batch, of the summed per-rank statistics (global) and of
    the mean per-rank loss (naive), with the batch split into slices of ``per_rank`` images."""
    logits = logits.detach().requires_grad_(True)
    whole = dice_loss(logits, masks, SPEC, impl=impl)
    (whole_grad,) = torch.autograd.grad(whole, logits)
    slices = list(zip(logits.split(per_rank), masks.split(per_rank)))
    pooled = [dice_statistics(x, y, SPEC, impl=impl).pooled() for x, y in slices]
    summed = loss_from_statistics(DiceStatistics(*(torch.stack(s).sum(0) for s in zip(*pooled))), SPEC)
    (summed_grad,) = torch.autograd.grad(summed, logits)
    naive = torch.stack([dice_loss(x, y, SPEC, impl=impl) for x, y in slices]).mean()
    (naive_grad,) = torch.autograd.grad(naive, logits)
    fg_per_rank = torch.stack([y.sum() for _, y in slices])
    whole, summed, naive = whole.detach(), summed.detach(), naive.detach()
    return dict(
        ranks=len(slices),
        whole_loss=float(whole),
        global_loss=float(summed),
        naive_loss=float(naive),
        global_rel_error=float((summed - whole).abs() / whole.abs()),
        global_grad_rel_error=float((summed_grad - whole_grad).norm() / whole_grad.norm()),
        loss_error=float(naive - whole),
        grad_cosine=float(F.cosine_similarity(naive_grad.double().flatten(), whole_grad.double().flatten(), dim=0)),
        grad_norm_ratio=float(naive_grad.norm() / whole_grad.norm()),
        ranks_without_fg=float((fg_per_rank == 0).double().mean()),
        min_fg_per_rank=int(fg_per_rank.min()),
    )


def tasks(config: Config) -> List[dict]:
    return [dict(fg_index=i, fg_fraction=rho, empty_index=j, empty_fraction=empty, draw=draw)
            for i, rho in enumerate(config.fg_fractions) for j, empty in enumerate(config.empty_fractions)
            for draw in range(config.draws)]


def run_task(config: Config, task: dict) -> pd.DataFrame:
    rho, empty, draw = task["fg_fraction"], task["empty_fraction"], task["draw"]
    batch = make_batch(config.images, (config.size, config.size), fg_fraction=rho, sigma=config.sigma,
                       empty_fraction=empty, generator=generator_for(config.seed, task["fg_index"], task["empty_index"], draw))
    logits = detector_logits(batch.images, config.sharpness)
    return pd.DataFrame([dict(fg_fraction=rho, empty_fraction=empty, draw=draw, images=config.images, per_rank=per_rank,
                              **compare(logits, batch.masks, per_rank, config.impl)) for per_rank in config.per_rank])


def claims(df: pd.DataFrame, config: Config) -> List[Claim]:
    mean = df.groupby(["fg_fraction", "empty_fraction", "per_rank"])[["loss_error", "grad_cosine"]].mean().reset_index()
    worst = mean[(mean["per_rank"] == 1) & (mean["empty_fraction"] == mean["empty_fraction"].max())
                 & (mean["fg_fraction"] == mean["fg_fraction"].max())]
    split = df[df["ranks"] > 1]
    with_empty_ranks = split.loc[split["ranks_without_fg"] > 0, "loss_error"].abs().mean()
    without = split.loc[split["ranks_without_fg"] == 0, "loss_error"].abs().mean()
    two_ranks = df["images"].iloc[0] // 2
    growth = []  # settings with empty images: |mean error| with one image per rank over that with two ranks
    for _, group in mean[mean["empty_fraction"] > 0].groupby(["fg_fraction", "empty_fraction"]):
        by_rank = group.set_index("per_rank")["loss_error"].abs()
        growth.append(by_rank.loc[1] / max(by_rank.loc[two_ranks], 1e-12))
    return [
        verification("d1.summed_statistics_are_exact", "max relative error of the loss from summed per-rank statistics vs the "
              "whole batch, and of its gradient (what global_dice_loss computes)",
              max(df["global_rel_error"].max(), df["global_grad_rel_error"].max()), "<=", 1e-5),
        verification("d1.one_rank_is_exact", "max |naive - global| with a single rank",
              df.loc[df["ranks"] == 1, "loss_error"].abs().max(), "<=", 1e-6),
        verification("d1.empty_ranks_bias_the_loss_up", "most empty images, largest foreground, one image per rank: "
              "mean (naive - global) loss", worst["loss_error"].iloc[0], ">=", 0.1),
        verification("d1.empty_ranks_turn_the_gradient", "most empty images, largest foreground, one image per rank: "
              "mean cosine between the naive and the global gradient", worst["grad_cosine"].iloc[0], "<=", 0.9),
        verification("d1.error_comes_from_ranks_without_foreground", "mean |naive - global| over splits where some rank "
              "holds no foreground / the same where every rank holds some", with_empty_ranks / without, ">=", 10.0),
        verification("d1.error_grows_as_ranks_shrink", "settings with empty images: smallest ratio of |mean naive error| "
              "with one image per rank to that with two ranks", min(growth), ">=", 5.0),
    ]


def figures(df: pd.DataFrame, out_dir) -> list:
    from analysis.plotting import plt, save_figure

    mean = df.groupby(["fg_fraction", "empty_fraction", "per_rank"])[["loss_error", "grad_cosine"]].mean().reset_index()
    empties = sorted(mean["empty_fraction"].unique())
    fig, axes = plt.subplots(2, len(empties), figsize=(5.5 * len(empties), 7.5), squeeze=False)
    for col, empty in enumerate(empties):
        for rho, group in mean[mean["empty_fraction"] == empty].groupby("fg_fraction"):
            axes[0, col].plot(group["per_rank"], group["loss_error"], marker="o", label=f"fg {rho:.1%}")
            axes[1, col].plot(group["per_rank"], group["grad_cosine"], marker="o", label=f"fg {rho:.1%}")
        axes[0, col].set_title(f"D1: {empty:.0%} empty images, {int(df['images'].iloc[0])} images in all")
        axes[0, col].set_ylabel("naive - global batch Dice loss")
        axes[1, col].set_ylabel("cosine(naive gradient, global gradient)")
        for ax in axes[:, col]:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("images per rank")
            ax.invert_xaxis()
        axes[0, col].legend()
    return save_figure(fig, out_dir, "d1_distributed")
