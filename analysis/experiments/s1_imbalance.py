"""S1, imbalance at a fixed difficulty: a learned U-Net trained with CE, Dice and Dice+CE, each at
its own learning rate (chosen on seeds disjoint from the evaluation seeds), stopped by the shared
plateau rule, and measured against the exact Bayes reference.

Data: one disc of 10 pixels, intensity ``label + N(0, 0.7^2)``, in square images of 24, 32 and 48
pixels, so the foreground fraction rho is 1.7 %, 1.0 % and 0.43 % while the object and the noise
stay the same: the Bayes DSC stays between 0.78 and 0.83 (in the informative range; a sweep of
the object's area instead would move the difficulty with rho). Dice+CE is trained at the most
imbalanced size only.

Measured at threshold-free or tuned operating points, so no loss wins by where it happens to put
threshold 1/2: the recall at precision 0.5 (an operating point every trained model reaches) and
the DSC at the threshold tuned on the validation split. Runs that collapsed or diverged are a
failure rate beside the means and are left out of every paired difference.

Primary hypotheses (fixed before the paper-scale run): at rho = 0.43 %, Dice finds more of the
object than CE at the same precision (Milletari 2016, Sudre 2017); and CE, once its threshold is
tuned, ranks pixels as well as Dice (CE is a proper scoring rule; Bertels 2019). Exploratory: the
same at the other sizes, whether Dice's recall advantage grows with imbalance, DSC at 1/2,
calibration (Mehrtash 2020) and temperature scaling, Dice's soft-versus-hard gap, the share of
gradient mass on confidently wrong pixels, and Dice+CE against Dice and the Bayes reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import pandas as pd

from . import Claim
from . import figures_training
from .common import SMALL, TrainingConfig, run_task, seeded, series_claim, setting, task, within_claim

SOURCES = dict(
    milletari="Milletari et al. 2016 (V-Net); Sudre et al. 2017",
    bertels="Bertels et al. 2019; Eelbode et al. 2020",
    proper="theory: CE is a proper scoring rule, minimised by the posterior, so a tuned threshold recovers "
           "Dice's operating point; Bertels et al. 2019",
    mehrtash="Mehrtash et al. 2020; Yeung et al. 2022",
    saturation="theory: Dice's logit gradient carries p(1 - p) (E2), CE's is p - g",
    soft="theory: a loss minimised on the soft score drives p to 0 or 1, so its soft DSC meets its hard DSC",
    bayes="Bayes reference: a converged model approaches the Bayes DSC",
    compound="Ma et al. 2021 (compound losses); theory: the CE term keeps a gradient where Dice's saturates",
)


@dataclass(frozen=True)
class Config(TrainingConfig):
    area: int = 10
    sigma: float = 0.7
    sizes: Tuple[int, ...] = (24, 32, 48)  # rho = area / size^2; the last is the primaries' setting
    losses: Tuple[str, ...] = ("ce", "dice")
    compound: str = "dice_ce"  # trained at the last size only
    lrs: Tuple[float, ...] = (1e-3, 3e-3, 1e-2)


__all__ = ["Config", "SCALES", "tasks", "run_task", "claims", "figures"]
SCALES = {
    "small": Config(**SMALL, lrs=(1e-2,), sizes=(16, 24), area=6),
    "paper": Config(),
}


def fg_fraction(config: Config, size: int) -> float:
    return config.area / size ** 2


def tasks(config: Config) -> List[dict]:
    out = []
    for size in config.sizes:
        losses = list(config.losses) + ([config.compound] if size == config.sizes[-1] else [])
        for loss in losses:
            out.append(task(loss, setting((size, size), area=config.area, sigma=config.sigma, lrs=config.lrs,
                                          fg_fraction=fg_fraction(config, size))))
    return out


def claims(df: pd.DataFrame, config: Config) -> List[Claim]:
    stage = "convergence"
    rhos = [fg_fraction(config, size) for size in config.sizes]
    imbalanced, balanced = rhos[-1], rhos[0]

    def where(rho):
        return dict(fg_fraction=rho)

    def tag(rho):
        return f"rho = {rho:.2%} ({config.area} px in {round((config.area / rho) ** 0.5)}^2)"

    def cmp(name, statement, source, metric, a, b, rho, op, threshold, primary=False):
        return series_claim(f"s1.{name}", f"{tag(rho)}: {statement}", SOURCES[source], stage,
                            _metric(df, a, rho, metric), _metric(df, b, rho, metric), op, threshold, primary=primary)

    out: List[Claim] = [
        cmp("dice_higher_recall_at_precision_half", "recall at precision 0.5, Dice - CE (runs that trained)",
            "milletari", "recall_at_p50", "dice", "ce", imbalanced, ">", 0.0, primary=True),
        cmp("ce_tuned_threshold_ranks_as_well", "DSC at the validation-tuned threshold, CE - Dice (runs that trained)",
            "proper", "dsc_tuned", "ce", "dice", imbalanced, ">", -0.02, primary=True),
    ]
    for rho in rhos[:-1]:
        suffix = f"rho{rho * 100:.2g}".replace(".", "_")
        out += [cmp(f"dice_higher_recall_at_precision_half.{suffix}", "recall at precision 0.5, Dice - CE",
                    "milletari", "recall_at_p50", "dice", "ce", rho, ">", 0.0),
                cmp(f"ce_tuned_threshold_ranks_as_well.{suffix}", "DSC at the validation-tuned threshold, CE - Dice",
                    "proper", "dsc_tuned", "ce", "dice", rho, ">", -0.02)]
    # per seed, where both runs of the setting trained (the subtraction leaves NaN where one did not)
    gap = {rho: (_metric(df, "dice", rho, "recall_at_p50") - _metric(df, "ce", rho, "recall_at_p50")).dropna()
           for rho in rhos}
    out.append(series_claim("s1.dice_recall_advantage_grows_with_imbalance",
                            f"recall at precision 0.5, Dice - CE, at {tag(imbalanced)} minus at {tag(balanced)}",
                            SOURCES["milletari"], stage, gap[imbalanced], gap[balanced], ">", 0.0))
    for rho in (imbalanced, balanced):
        suffix = "" if rho == imbalanced else f".rho{rho * 100:.2g}".replace(".", "_")
        out += [
            cmp(f"dice_higher_dsc_at_half{suffix}", "DSC at threshold 1/2, Dice - CE", "bertels", "dsc", "dice", "ce",
                rho, ">", 0.0),
            cmp(f"dice_worse_ece{suffix}", "ECE, Dice - CE", "mehrtash", "ece", "dice", "ce", rho, ">", 0.0),
            cmp(f"dice_less_confidently_wrong_gradient{suffix}", "share of the validation logit-gradient mass on "
                "confidently wrong pixels, Dice - CE", "saturation", "cw_grad_share", "dice", "ce", rho, "<", 0.0),
        ]
    out += [
        within_claim(df, "s1.temperature_scaling_helps_dice", f"{tag(imbalanced)}: Dice's ECE before minus after "
                     "temperature scaling (T fitted on the validation split)", SOURCES["mehrtash"], stage,
                     dict(variant="dice", **where(imbalanced)), "ece", "ece_ts", ">", 0.0),
        series_claim("s1.dice_soft_matches_hard", f"{tag(imbalanced)}: hard minus soft DSC, CE - Dice", SOURCES["soft"],
                     stage, _soft_gap(df, "ce", imbalanced), _soft_gap(df, "dice", imbalanced), ">", 0.0),
        cmp("dice_ce_no_worse_than_dice", "DSC at the validation-tuned threshold, Dice+CE - Dice", "compound",
            "dsc_tuned", "dice_ce", "dice", imbalanced, ">", -0.02),
        within_claim(df, "s1.dice_ce_near_bayes", f"{tag(imbalanced)}: Bayes DSC - tuned-threshold DSC(Dice+CE)",
                     SOURCES["bayes"], stage, dict(variant="dice_ce", **where(imbalanced)), "bayes_dsc", "dsc_tuned",
                     "<", 0.05),
    ]
    return out


def _metric(df: pd.DataFrame, variant: str, rho: float, metric: str) -> pd.Series:
    return seeded(df, "convergence", dict(variant=variant, fg_fraction=rho), metric)


def _soft_gap(df: pd.DataFrame, variant: str, rho: float) -> pd.Series:
    return _metric(df, variant, rho, "dsc") - _metric(df, variant, rho, "soft_dsc")


def figures(df: pd.DataFrame, out_dir) -> list:
    return figures_training.imbalance_figures(df, out_dir)
