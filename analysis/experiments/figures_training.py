"""Figure panels shared by the training experiments: a metric against a setting variable, bars per
loss, and validation trajectories. Means over the seeds whose runs trained (collapsed and diverged
runs are a failure rate, ``common.failure_rates``) with 95 % bootstrap intervals (bands / error
bars); one fixed colour per loss (``common.LOSS_COLOURS``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np
import pandas as pd

from .common import colour, label, mean_ci, rows, trained

STAGE_TITLES = {"budget": "early: at the end of the warm-up", "convergence": "at convergence"}


def line_panel(ax, df: pd.DataFrame, x: str, metric: str, variants: Sequence[str], stage: str, *,
               reference: str = "", logx: bool = True) -> None:
    """``metric`` against ``x`` for each variant (mean and CI band); ``reference`` a per-setting column
    (e.g. ``bayes_dsc``) drawn as a dashed black line."""
    part = trained(df[df["stage"] == stage])
    for variant in variants:
        group = part[part["variant"] == variant]
        if group.empty:
            continue
        xs = sorted(group[x].unique())
        stats = np.array([mean_ci(group.loc[group[x] == v, metric]) for v in xs])
        ax.plot(xs, stats[:, 0], marker="o", color=colour(variant), label=label(variant))
        ax.fill_between(xs, stats[:, 1], stats[:, 2], color=colour(variant), alpha=0.2)
    if reference:
        ref = part.groupby(x)[reference].first().sort_index()
        ax.plot(ref.index, ref.to_numpy(), ls="--", color=colour("bayes"), label=label("bayes"))
    if logx:
        ax.set_xscale("log")
    if x == "fg_fraction":
        from matplotlib.ticker import FixedLocator, PercentFormatter

        ax.xaxis.set_major_locator(FixedLocator(sorted(part[x].unique())))
        ax.xaxis.set_minor_locator(FixedLocator([]))
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
        ax.set_xlabel("foreground fraction rho")
    else:
        ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(STAGE_TITLES.get(stage, stage))


def bar_panel(ax, df: pd.DataFrame, metric: str, variants: Sequence[str], stage: str, where: dict, *,
              reference: str = "") -> None:
    """One bar per variant (mean, 95 % CI error bar) of ``metric`` in the runs matching ``where`` that trained."""
    shown = [v for v in variants if not trained(rows(df, stage, variant=v, **where)).empty]
    stats = np.array([mean_ci(trained(rows(df, stage, variant=v, **where))[metric]) for v in shown]).reshape(-1, 3)
    xs = np.arange(len(shown))
    errors = np.vstack([stats[:, 0] - stats[:, 1], stats[:, 2] - stats[:, 0]])
    ax.bar(xs, stats[:, 0], yerr=errors, color=[colour(v) for v in shown], capsize=3)
    if reference and shown:
        ax.axhline(float(rows(df, stage, variant=shown[0], **where)[reference].iloc[0]), ls="--",
                   color=colour("bayes"), label=label("bayes"))
        ax.legend()
    ax.set_xticks(xs, [label(v) for v in shown], rotation=35, ha="right")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(STAGE_TITLES.get(stage, stage))


def trajectory_panel(ax, df: pd.DataFrame, metric: str, variants: Sequence[str], where: dict) -> None:
    """``metric`` over training steps (validation points), mean over seeds with a CI band."""
    part = rows(df, "trajectory", **where)
    for variant in variants:
        group = part[part["variant"] == variant]
        if group.empty:
            continue
        steps = sorted(group["step"].unique())
        stats = np.array([mean_ci(group.loc[group["step"] == s, metric]) for s in steps])
        ax.plot(steps, stats[:, 0], color=colour(variant), label=label(variant))
        ax.fill_between(steps, stats[:, 1], stats[:, 2], color=colour(variant), alpha=0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel(metric.replace("_", " "))


def present(df: pd.DataFrame, candidates: Sequence[str]) -> List[str]:
    return [v for v in candidates if v in set(df["variant"])]


def imbalance_figures(df: pd.DataFrame, out_dir) -> List[Path]:
    from ..plotting import plt, save_figure

    paths: List[Path] = []
    sweep = present(df, ["ce", "wce", "dice", "dice_ce"])
    for metric, reference, stem in (("dsc_tuned", "bayes_dsc", "s1_dsc_tuned_vs_rho"),
                                    ("recall_at_p50", "", "s1_recall_at_precision_half_vs_rho")):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for ax, stage in zip(axes, ("budget", "convergence")):
            line_panel(ax, df, "fg_fraction", metric, sweep, stage, reference=reference)
        axes[0].legend()
        fig.suptitle(f"S1: {METRIC_TITLES[metric]} against rho, 10-pixel objects (runs that trained"
                     + ("; dashed: Bayes posterior)" if reference else ")"))
        paths += save_figure(fig, out_dir, stem)
    family_rho = df.loc[df["variant"] == "tversky", "fg_fraction"]
    if len(family_rho):
        where = dict(fg_fraction=float(family_rho.iloc[0]))
        variants = present(df[df["fg_fraction"] == where["fg_fraction"]], list(_ORDER))
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        for ax, metric, reference in zip(axes, ("dsc", "recall_at_matched_precision", "ece"),
                                         ("bayes_dsc", "bayes_recall", "bayes_ece")):
            bar_panel(ax, df, metric, variants, "convergence", where, reference=reference)
        fig.suptitle(f"S1: the loss family at rho = {where['fg_fraction']:.0%}, converged (dashed: Bayes)")
        paths += save_figure(fig, out_dir, "s1_family")
    common = df[df["variant"] == "dice"]["fg_fraction"].unique()
    if len(common):
        where = dict(fg_fraction=float(sorted(common)[len(common) // 2]))
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        trajectory_panel(axes[0], df, "cw_grad_share", present(df, ["ce", "dice", "dice_ce"]), where)
        axes[0].set_title(f"saturation (a), rho = {where['fg_fraction']:.0%}")
        axes[0].legend()
        trajectory_panel(axes[1], df, "val_dsc_best", present(df, ["ce", "dice", "dice_ce"]), where)
        axes[1].set_title("validation DSC at its best threshold (the stopping criterion)")
        fig.suptitle("S1: share of logit-gradient mass on confidently wrong pixels, over training")
        paths += save_figure(fig, out_dir, "s1_saturation")
    return paths


METRIC_TITLES = {"dsc_tuned": "DSC at the validation-tuned threshold", "recall_at_p50": "recall at precision 0.5"}
_ORDER = ("ce", "wce", "focal", "dice", "log_dice", "gen_dice", "tversky", "focal_tversky", "dice_ce", "dice_focal")
