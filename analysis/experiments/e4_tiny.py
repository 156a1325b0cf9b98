"""E4, tiny structures and smoothing: how object size and the smoothing constant shape Dice.

Per image, the Dice gradient on a foreground pixel is ``-(2 - D) / (P + G + s)``: once the model
predicts the object (P close to G) it scales like ``1 / G``, so tiny objects get huge, noisy
per-pixel gradients and their results vary more between seeds. The smoothing ``s`` adds ``s`` to
numerator and denominator; when ``s >= 10 G`` an empty prediction already scores
``s / (G + s) > 0.9``, so the loss barely rewards finding the object and tiny objects vanish.
Trained per (area, smooth, seed): per-image Dice, logistic model, Adam; measured on test images.
References: Milletari 2016; Sudre 2017 (generalised Dice for small structures).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import pandas as pd
import torch

from dice_impls import DiceSpec, dice_loss

from ..synthetic import generator_for, make_batch
from ..training import evaluate, make_loss, make_model, predict, train
from . import Claim, verification


@dataclass(frozen=True)
class Config:
    seed: int = 0
    impl: str = "vectorized"
    seeds: int = 3
    areas: Tuple[int, ...] = (1, 4, 16, 64, 256, 1024)
    smooths: Tuple[float, ...] = (1e-6, 1e-2, 1.0, 100.0)
    size: int = 64
    train_images: int = 4
    test_images: int = 8
    sigma: float = 0.3
    steps: int = 300
    lr: float = 0.05
    model: str = "logistic"


SCALES = {
    "small": Config(seeds=2, areas=(4, 64, 1024), smooths=(1e-6, 100.0), test_images=4, steps=150),
    "paper": Config(steps=200),
}


def foreground_gradient(logits: torch.Tensor, masks: torch.Tensor, spec: DiceSpec, impl: str) -> float:
    """Mean over images of the mean |dL_image/dp| over the image's foreground pixels."""
    probs = torch.sigmoid(logits.double()).requires_grad_(True)
    loss = dice_loss(probs, masks, spec.replace(activation="none", reduction="sum"), impl=impl)
    (grad,) = torch.autograd.grad(loss, probs)
    fg = masks.unsqueeze(1).bool()
    per_image = (grad.abs() * fg).flatten(1).sum(1) / fg.flatten(1).sum(1)
    return float(per_image.mean())


def tasks(config: Config) -> List[dict]:
    return [dict(seed=config.seed + s, index=i, area=area, smooth=smooth) for s in range(config.seeds)
            for i, area in enumerate(config.areas) for smooth in config.smooths]


def run_task(config: Config, task: dict) -> pd.DataFrame:
    seed, i, area, smooth = task["seed"], task["index"], task["area"], task["smooth"]
    shape = (config.size, config.size)
    data = make_batch(config.train_images, shape, area=area, sigma=config.sigma, generator=generator_for(seed, i, 0))
    test = make_batch(config.test_images, shape, area=area, sigma=config.sigma, generator=generator_for(seed, i, 1))
    spec = DiceSpec(activation="sigmoid", smooth_nr=smooth, smooth_dr=smooth)
    model = train(make_model(config.model, generator=generator_for(seed, i, 2)), data.images, data.masks,
                  make_loss("dice", impl=config.impl, spec=spec), steps=config.steps, lr=config.lr)
    logits = predict(model, test.images)
    return pd.DataFrame([dict(seed=seed, area=area, smooth=smooth,
                              fg_gradient=foreground_gradient(logits, test.masks, spec, config.impl),
                              **evaluate(logits, test.masks))])


def claims(df: pd.DataFrame, config: Config) -> List[Claim]:
    smallest = df["smooth"].min()
    tiny_smooth = df[df["smooth"] == smallest].groupby("area").mean(numeric_only=True)
    slope = np.polyfit(np.log(tiny_smooth.index.values.astype(float)), np.log(tiny_smooth["fg_gradient"].values), 1)[0]
    spread = df[df["smooth"] <= 1e-2].groupby(["smooth", "area"])["dsc"].std().groupby("area").mean()
    vanished = df[df["smooth"] >= 10 * df["area"]]
    found = df[(df["smooth"] == smallest) & df["area"].isin(vanished["area"].unique())]
    return [
        verification("e4.gradient_scales_as_inverse_area", f"smooth {smallest:g}: |slope + 1| of log(mean fg |dL/dp|) vs log(area)",
              abs(slope + 1), "<", 0.2),
        verification("e4.seed_spread_falls_with_area", "smooth <= 1e-2: seed sd of test DSC at the largest area / "
              "the largest sd at any smaller area", spread.iloc[-1] / spread.iloc[:-1].max(), "<", 1.0),
        verification("e4.large_smooth_erases_tiny", "mean test recall over (area, smooth) cells with smooth >= 10 * area",
              vanished["recall"].mean(), "<", 0.2),
        verification("e4.small_smooth_keeps_tiny", f"the same areas at smooth {smallest:g}: mean test recall", found["recall"].mean(), ">", 0.3),
    ]


def figures(df: pd.DataFrame, out_dir) -> list:
    from ..plotting import plt, save_figure

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for smooth, group in df.groupby("smooth"):
        stats = group.groupby("area")
        axes[0].plot(stats["fg_gradient"].mean(), marker="o", label=f"smooth {smooth:g}")
        axes[1].plot(stats["dsc"].std(), marker="o", label=f"smooth {smooth:g}")
        axes[2].plot(stats["recall"].mean(), marker="o", label=f"smooth {smooth:g}")
    labels = ("mean |dL/dp| on a foreground pixel", "seed sd of test DSC", "mean test recall")
    for ax, label in zip(axes, labels):
        ax.set_xscale("log")
        ax.set_xlabel("object area (pixels, log scale)")
        ax.set_ylabel(label)
        ax.set_title(f"E4: {label} vs object size")
    axes[0].set_yscale("log")
    axes[0].legend(title="Dice smoothing")
    return save_figure(fig, out_dir, "e4_tiny")
