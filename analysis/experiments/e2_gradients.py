"""E2, gradient anatomy: exact per-pixel gradients of Dice, squared Dice, CE and focal (no training).

For the binary soft Dice with a linear denominator, ``L = 1 - (2I + s) / (U + s)`` with
``I = sum p g``, ``U = sum p + sum g`` and ``D = (2I + s) / (U + s)``, the gradient w.r.t. a pixel's
probability is ``D / (U + s)`` on background and ``-(2 - D) / (U + s)`` on foreground, the same for
every pixel whatever its own p, so ``|fg| / |bg| = (2 - D) / D``. With the squared denominator
``V = sum p^2 + sum g^2`` it is ``(2 p D - 2 g) / (V + s)``: background pixels are pushed in
proportion to their p. Mean binary CE gives ``-1 / (N p)`` and ``1 / (N (1 - p))``; at p = 0.5 its
total foreground / background push is ``rho / (1 - rho)`` while Dice's is about 1 (exactly
``(1 + rho) / (1 - rho)`` without smoothing). Autograd through ``dice_impls`` (float64) is checked
against these formulas. References: Milletari 2016; Kervadec & de Bruijne 2023; Eelbode 2020.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import pandas as pd
import torch

from dice_impls import DiceSpec, dice_loss

from ..synthetic import generator_for, object_masks
from dice_impls.compound import focal_loss

from ..training import FOCAL_GAMMA
from . import Claim, verification

LOSSES = ("dice", "dice_squared", "ce", "focal")


@dataclass(frozen=True)
class Config:
    seed: int = 0
    impl: str = "vectorized"
    size: int = 32  # the identities hold at any size; 32^2 keeps the stored parquet under 1 MB
    fg_fractions: Tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)
    smooth: float = 1e-5


SCALES = {"small": Config(size=24, fg_fractions=(0.01, 0.1, 0.3)), "paper": Config()}


def gradients(loss: str, p: torch.Tensor, g: torch.Tensor, impl: str, smooth: float) -> torch.Tensor:
    """Autograd ``dL/dp`` in float64 for one image: Dice through ``dice_impls`` on probabilities;
    CE and focal written out on probabilities (``dice_impls``' focal term computes in float32)."""
    p = p.clone().requires_grad_(True)
    if loss.startswith("dice"):
        spec = DiceSpec(activation="none", smooth_nr=smooth, smooth_dr=smooth, squared=loss == "dice_squared")
        value = dice_loss(p.view(1, 1, *p.shape), g.view(1, *g.shape), spec, impl=impl)
    else:
        focal = loss == "focal"
        p_true = torch.where(g.bool(), p, 1 - p)
        value = (-(1 - p_true) ** (FOCAL_GAMMA if focal else 0.0) * torch.log(p_true)).mean()
    (grad,) = torch.autograd.grad(value, p)
    return grad


def analytic(loss: str, p: torch.Tensor, g: torch.Tensor, smooth: float) -> torch.Tensor:
    """The closed forms of the module docstring (NaN for focal, which has no such simple form)."""
    gf = g.double()
    if loss == "dice":
        u = p.sum() + gf.sum() + smooth
        d = (2 * (p * gf).sum() + smooth) / u
        return torch.where(g.bool(), -(2 - d), d) / u
    if loss == "dice_squared":
        v = (p**2).sum() + (gf**2).sum() + smooth
        d = (2 * (p * gf).sum() + smooth) / v
        return (2 * p * d - 2 * gf) / v
    if loss == "ce":
        return torch.where(g.bool(), -1 / p, 1 / (1 - p)) / p.numel()
    return torch.full_like(p, math.nan)


def logit_gradients(loss: str, z: torch.Tensor, g: torch.Tensor, impl: str, smooth: float) -> torch.Tensor:
    """Autograd ``dL/dz`` in float64 through ``dice_impls`` with the sigmoid inside the loss: Dice and
    squared Dice via ``dice_loss``, CE and focal via ``dice_impls.compound.focal_loss``."""
    z = z.clone().requires_grad_(True)
    spec = DiceSpec(activation="sigmoid", smooth_nr=smooth, smooth_dr=smooth, squared=loss == "dice_squared")
    logits, target = z.view(1, 1, *z.shape), g.view(1, *g.shape)
    if loss.startswith("dice"):
        value = dice_loss(logits, target, spec, impl=impl)
    else:
        value = focal_loss(logits, target, spec, gamma=FOCAL_GAMMA if loss == "focal" else 0.0)
    (grad,) = torch.autograd.grad(value, z)
    return grad


def logit_analytic(loss: str, p: torch.Tensor, g: torch.Tensor, smooth: float) -> torch.Tensor:
    """Chain rule through the sigmoid: Dice's ``dL/dz = dL/dp * p (1 - p)``; CE's ``(p - g) / N``, which
    has no such factor (NaN for focal)."""
    if loss.startswith("dice"):
        return analytic(loss, p, g, smooth) * p * (1 - p)
    if loss == "ce":
        return (p - g.double()) / p.numel()
    return torch.full_like(p, math.nan)


def tasks(config: Config) -> List[dict]:
    return [dict(index=i, fg_fraction=rho, probabilities=mode)
            for i, rho in enumerate(config.fg_fractions) for mode in ("random", "half", "logits")]


def run_task(config: Config, task: dict) -> pd.DataFrame:
    rho, mode = task["fg_fraction"], task["probabilities"]
    gen = generator_for(config.seed, task["index"])
    shape = (config.size, config.size)
    g = object_masks(1, shape, max(1, round(rho * config.size**2)), generator=gen)[0]
    if mode == "logits":  # logits N(0, 3^2): a spread of p that includes confidently wrong pixels
        z = 3 * torch.randn(shape, generator=gen, dtype=torch.float64)
        p = torch.sigmoid(z)
        grads = {loss: logit_gradients(loss, z, g, config.impl, config.smooth) for loss in LOSSES}
        closed = {loss: logit_analytic(loss, p, g, config.smooth) for loss in LOSSES}
    else:
        p = torch.rand(shape, generator=gen, dtype=torch.float64) * 0.98 + 0.01 if mode == "random" else \
            torch.full(shape, 0.5, dtype=torch.float64)
        grads = {loss: gradients(loss, p, g, config.impl, config.smooth) for loss in LOSSES}
        closed = {loss: analytic(loss, p, g, config.smooth) for loss in LOSSES}
    return pd.concat([pd.DataFrame(dict(
        fg_fraction=rho, actual_fg_fraction=float(g.double().mean()), smooth=config.smooth,
        probabilities=mode, space="logit" if mode == "logits" else "probability", loss=loss, p=p.flatten().numpy(),
        g=g.flatten().numpy(), grad=grads[loss].flatten().numpy(), analytic=closed[loss].flatten().numpy(),
    )) for loss in LOSSES], ignore_index=True)


def _pushes(group: pd.DataFrame) -> float:
    """Total foreground push / total background push: sum |dL/dp| over fg over the same over bg."""
    fg = group["g"] == 1
    return group.loc[fg, "grad"].abs().sum() / group.loc[~fg, "grad"].abs().sum()


def _max_rel_error(part: pd.DataFrame) -> float:
    scale = part.groupby(["loss", "fg_fraction", "probabilities"])["analytic"].transform(lambda a: a.abs().max())
    return float(((part["grad"] - part["analytic"]).abs() / scale).max())


def logit_claims(df: pd.DataFrame, config: Config) -> List[Claim]:
    logit = df[df["space"] == "logit"]
    dice = logit[logit["loss"].isin(["dice", "dice_squared"])]
    ce = logit[logit["loss"] == "ce"]
    wrong = ((ce["g"] == 1) & (ce["p"] < 0.01)) | ((ce["g"] == 0) & (ce["p"] > 0.99))
    pixels = config.size**2
    return [
        verification("e2.dice_logit_gradient_has_p1mp_factor", "Dice and squared Dice through the sigmoid: max |autograd "
                     "dL/dz - dL/dp * p (1 - p)| / max |.| (float64)", _max_rel_error(dice), "<=", 1e-8),
        verification("e2.ce_logit_gradient_is_p_minus_g", "CE through the sigmoid: max |autograd dL/dz - (p - g) / N| / "
                     "max |.| (float64)", _max_rel_error(ce), "<=", 1e-8),
        verification("e2.confidently_wrong_pixels_exist", "logits N(0, 3^2): fewest confidently wrong pixels (fg p < 0.01, "
                     "bg p > 0.99) in an image", float(wrong.groupby(ce["fg_fraction"]).sum().min()), ">=", 1),
        verification("e2.ce_keeps_pushing_confidently_wrong", "CE on confidently wrong pixels: min N |dL/dz| = |p - g| "
                     "(no p (1 - p) factor)", float(ce.loc[wrong, "grad"].abs().min() * pixels), ">", 0.99),
    ]


def claims(df: pd.DataFrame, config: Config) -> List[Claim]:
    everything, df = df, df[df["space"] == "probability"]
    exact = df[df["loss"] != "focal"]
    scale = exact.groupby(["loss", "fg_fraction", "probabilities"])["analytic"].transform(lambda a: a.abs().max())
    rel_error = ((exact["grad"] - exact["analytic"]).abs() / scale).max()
    dice = df[(df["loss"] == "dice") & (df["probabilities"] == "random")]
    spread = []
    for _, group in dice.groupby("fg_fraction"):
        for side in (0, 1):
            values = group.loc[group["g"] == side, "grad"]
            spread.append((values.max() - values.min()) / values.abs().mean())
    squared = df[(df["loss"] == "dice_squared") & (df["probabilities"] == "random") & (df["g"] == 0)]
    per_p_spread = []
    for _, group in squared.groupby("fg_fraction"):
        per_p = group["grad"] / group["p"]
        per_p_spread.append((per_p.max() - per_p.min()) / per_p.abs().mean())
    ratio_error = []
    for _, group in dice.groupby("fg_fraction"):
        fg = group["g"] == 1
        s = group["smooth"].iloc[0]
        d = (2 * (group["p"] * group["g"]).sum() + s) / (group["p"].sum() + group["g"].sum() + s)
        ratio = group.loc[fg, "grad"].abs().mean() / group.loc[~fg, "grad"].abs().mean()
        ratio_error.append(abs(ratio / ((2 - d) / d) - 1))
    half = df[df["probabilities"] == "half"]
    dice_balance = max(abs(math.log(_pushes(g))) for rho, g in half[half["loss"] == "dice"].groupby("fg_fraction") if rho <= 0.1)
    ce_ratio = max(abs(_pushes(g) / (g["actual_fg_fraction"].iloc[0] / (1 - g["actual_fg_fraction"].iloc[0])) - 1)
                   for _, g in half[half["loss"] == "ce"].groupby("fg_fraction"))
    return [
        verification("e2.autograd_matches_analytic", "max |autograd - analytic| / max |analytic| over Dice, squared Dice and CE (float64)",
              rel_error, "<=", 1e-8),
        verification("e2.dice_gradient_ignores_own_p", "linear Dice: relative spread (max - min) / mean |.| of dL/dp within fg and within bg, random p",
              max(spread), "<=", 1e-8),
        verification("e2.fg_bg_ratio_is_2_minus_D_over_D", "linear Dice: max relative error of |fg grad| / |bg grad| vs (2 - D) / D",
              max(ratio_error), "<=", 1e-8),
        verification("e2.squared_bg_proportional_to_p", "squared Dice: relative spread of (bg dL/dp) / p",
              max(per_p_spread), "<=", 1e-8),
        verification("e2.dice_pushes_balance", "at p = 0.5, rho <= 10 %: max |log(total fg push / total bg push)| for Dice "
              "(theory: log((1 + rho) / (1 - rho)) = 0.20 at 10 %)",
              dice_balance, "<", math.log(1.25)),
        verification("e2.ce_pushes_follow_prior", "at p = 0.5: max relative deviation of CE's total fg / bg push from rho / (1 - rho)",
              ce_ratio, "<=", 1e-8),
    ] + logit_claims(everything, config)


def figures(df: pd.DataFrame, out_dir) -> list:
    from ..plotting import plt, save_figure

    rhos = sorted(df["fg_fraction"].unique())
    rho = rhos[len(rhos) // 2]
    fig, grid = plt.subplots(2, len(LOSSES), figsize=(4.2 * len(LOSSES), 8))
    for axes, mode, wrt in ((grid[0], "random", "p"), (grid[1], "logits", "z")):
        for ax, loss in zip(axes, LOSSES):
            group = df[(df["probabilities"] == mode) & (df["loss"] == loss) & (df["fg_fraction"] == rho)]
            for side, colour, label in ((0, "tab:blue", "background pixel"), (1, "tab:red", "foreground pixel")):
                part = group[group["g"] == side]
                ax.scatter(part["p"], part["grad"].abs().clip(lower=1e-30), s=4, alpha=0.5, color=colour, label=label,
                           rasterized=True)
            ax.set_yscale("log")
            ax.set_xlabel("own predicted probability p")
            ax.set_ylabel(f"|dL/d{wrt}| (log)")
            ax.set_title(f"E2: {loss}, rho = {rho:.0%}, d/d{wrt}")
    grid[0][0].legend(markerscale=4)
    return save_figure(fig, out_dir, "e2_gradients")
