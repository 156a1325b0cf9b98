"""S7, saturation (d): the plateau of Dice under plain SGD, separated from gradient scale.

At initialisation (p near 1/2) Dice's per-pixel gradient is about the same on every pixel and its
fg and bg pushes nearly cancel, leaving a net parameter gradient of order rho, while CE's stays
of order 1 (E2's closed forms): so at a learning rate tuned for CE, SGD on Dice moves ~1/rho
times slower, a "plateau" that is gradient *scale*, not saturation. Measured: (1) the parameter-
gradient norm of Dice and CE at initialisation over rho in 0.1 %..30 % (the slope of
log(|grad Dice| / |grad CE|) against log rho, theory 1); (2) SGD (no momentum) at rho = 1 %: CE at
rates 0.3, 1 and 3 (bracketing its optimum), Dice at the same rates and at those rates scaled by
1/rho (30.72, 102.4, 307.2): Dice at CE's best rate against CE there and against Dice at the best
of the scaled rates (best: mean validation DSC at its best threshold, at convergence, over the
runs that trained; compared: test DSC at the validation-tuned threshold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import pandas as pd
import torch

from ..stats import bootstrap_ci
from ..synthetic import generator_for, object_area
from ..training import UNet, make_loss
from . import Claim, hypothesis
from .common import (SMALL, TrainingConfig, colour, label, make_data, rows, run_setting, seeded, series_claim, setting,
                     task, trained)
from .figures_training import line_panel, present

__all__ = ["Config", "SCALES", "tasks", "run_task", "claims", "figures"]
SOURCE = "theory: E2's closed forms give Dice's net push at p = 1/2 of order rho, CE's of order 1"


@dataclass(frozen=True)
class Config(TrainingConfig):
    size: int = 32
    sigma: float = 0.5
    area: int = 10
    sgd_lrs: Tuple[float, ...] = (0.3, 1.0, 3.0)  # CE's grid; Dice also runs it scaled by 1 / rho
    fg_fractions: Tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
    gradient_images: int = 8


SCALES = {"small": Config(**SMALL, sgd_lrs=(0.3,), fg_fractions=(0.003, 0.03, 0.3)), "paper": Config()}


def tasks(config: Config) -> List[dict]:
    rho = config.area / config.size ** 2
    rates = {"ce": list(config.sgd_lrs), "dice": list(config.sgd_lrs) + [round(lr / rho, 6) for lr in config.sgd_lrs]}
    training = [task(loss, setting((config.size, config.size), area=config.area, sigma=config.sigma, optimizer="sgd",
                                   lrs=[lr])) for loss in ("ce", "dice") for lr in rates[loss]]
    return [dict(kind="gradient_scale", fg_fraction=rho) for rho in config.fg_fractions] + training


def run_task(config: Config, task: dict) -> pd.DataFrame:
    if task.get("kind") == "gradient_scale":
        return gradient_scale(config, task["fg_fraction"])
    return run_setting(config, task["setting"], task["loss"], task["variant"])


def gradient_scale(config: Config, rho: float) -> pd.DataFrame:
    """Per seed: the parameter-gradient norm of CE and of Dice at initialisation, on one mini-batch."""
    s = setting((config.size, config.size), area=object_area((config.size, config.size), rho), sigma=config.sigma)
    out = []
    for seed in range(config.seeds):
        batch = make_data(config, s, config.gradient_images, seed, 0)
        for loss in ("ce", "dice"):
            model = UNet(2, 1, 1, config.width, generator=generator_for(config.seed, seed, 2))
            make_loss(loss, impl=config.impl)(model(batch.images), batch.masks).backward()
            norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())))
            out.append(dict(stage="gradient_scale", seed=seed, fg_fraction=rho, variant=loss, loss=loss, grad_norm=norm))
    return pd.DataFrame(out)


def slopes(df: pd.DataFrame) -> np.ndarray:
    """Per seed, the least-squares slope of log(|grad Dice| / |grad CE|) against log rho."""
    part = df[df["stage"] == "gradient_scale"].pivot_table(index=["seed", "fg_fraction"], columns="variant",
                                                           values="grad_norm")
    out = []
    for _, group in part.groupby(level="seed"):
        x = np.log(group.index.get_level_values("fg_fraction").to_numpy(float))
        out.append(np.polyfit(x, np.log(group["dice"] / group["ce"]).to_numpy(float), 1)[0])
    return np.asarray(out)


def best_rate(df: pd.DataFrame, variant: str, above: float = 0.0) -> float:
    """The SGD rate (above ``above``) with the best mean validation DSC (best threshold) at
    convergence over the runs that trained (NaN when no run there trained: every claim on it fails)."""
    part = trained(rows(df, "convergence", variant=variant))
    means = part[part["lr"] > above].groupby("lr")["val_dsc_best"].mean().fillna(-1.0)
    return float(means.idxmax()) if len(means) else math.nan


def claims(df: pd.DataFrame, config: Config) -> List[Claim]:
    s = slopes(df)
    ci = bootstrap_ci(s) if len(s) > 1 else (float("nan"), float("nan"))
    statement = "slope of log(|grad Dice| / |grad CE|) at initialisation against log rho"
    out = [hypothesis("s7.dice_gradient_scales_with_rho.low", statement, SOURCE, float(s.mean()), ci, ">", 0.7),
           hypothesis("s7.dice_gradient_scales_with_rho.high", statement, SOURCE, float(s.mean()), ci, "<", 1.3)]
    # Dice's own rates are CE's grid scaled by 1 / rho: compared with Dice at CE's best rate, never
    # with the same runs (a best rate over both grids could be CE's rate itself, a comparison of a
    # run with itself).
    ce_rate, scaled_rate = best_rate(df, "ce"), best_rate(df, "dice", above=max(config.sgd_lrs))
    stage = "convergence"

    def dsc(variant, lr):
        return seeded(df, stage, dict(variant=variant, lr=lr), "dsc_tuned")

    out += [
        series_claim("s7.dice_plateau_at_ce_rate", f"SGD: tuned DSC(Dice at CE's best rate {ce_rate:g}) - "
                     f"tuned DSC(CE at it)", SOURCE, stage, dsc("dice", ce_rate), dsc("ce", ce_rate), "<", -0.1),
        series_claim("s7.rescaled_rate_lifts_plateau", f"SGD: tuned DSC(Dice at the best of CE's rates scaled by "
                     f"1/rho, {scaled_rate:g}) - tuned DSC(Dice at CE's best rate {ce_rate:g})", SOURCE, stage,
                     dsc("dice", scaled_rate), dsc("dice", ce_rate), ">", 0.1),
    ]
    return out


def figures(df: pd.DataFrame, out_dir) -> list:
    from ..plotting import plt, save_figure

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    grads = df[df["stage"] == "gradient_scale"]
    for variant in ("ce", "dice"):
        part = grads[grads["variant"] == variant].groupby("fg_fraction")["grad_norm"]
        axes[0].plot(part.mean().index, part.mean().to_numpy(), marker="o", color=colour(variant), label=label(variant))
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("foreground fraction rho")
    axes[0].set_ylabel("parameter-gradient norm at initialisation")
    axes[0].set_title("gradient scale (mean over seeds)")
    axes[0].legend()
    for ax, stage in zip(axes[1:], ("budget", "convergence")):
        line_panel(ax, df, "lr", "dsc_tuned", present(df, ["ce", "dice"]), stage)
        ax.set_xlabel("SGD learning rate")
    fig.suptitle("S7: Dice under SGD: the plateau is gradient scale")
    return save_figure(fig, out_dir, "s7_sgd")
