"""P1, precision: relative error of each implementation in bf16 / fp16 against the float64 oracle
as the voxel count grows.

Random logits (``2 N(0, 1)``, C = 2, softmax, batch Dice) and labels over ``2^k`` voxels are rounded
to the half dtype; the oracle is ``reference`` in float64 on the same rounded logits (summed over
chunks, which is exact in float64 to ~1e-16 and keeps memory flat). A plain fp16 sum (``naive``,
``vectorized``: the sums keep the input dtype) overflows past 65504, so one class sum over
2^17 voxels is already inf; ``mixed`` (and ``fused`` where registered) accumulate in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import pandas as pd
import torch

from dice_impls import IMPLEMENTATIONS, DiceSpec, DiceStatistics, get_implementation, loss_from_statistics

from ..synthetic import generator_for
from . import Claim, verification

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
PLAIN, ACCUMULATING = ("naive", "vectorized"), ("mixed", "fused")
FP16_MAX = 65504.0


@dataclass(frozen=True)
class Config:
    seed: int = 0
    impl: str = "vectorized"  # every registered implementation is measured; recorded for the manifest
    log2_voxels: Tuple[int, ...] = (10, 13, 16, 17, 19, 21, 23, 25, 27)
    channels: int = 2
    dtypes: Tuple[str, ...] = tuple(DTYPES)
    chunk_log2: int = 22


SCALES = {"small": Config(log2_voxels=(10, 14, 18)), "paper": Config()}
SPEC = DiceSpec(activation="softmax", batch=True)


def oracle(logits: torch.Tensor, target: torch.Tensor, chunk: int) -> DiceStatistics:
    """float64 ``reference`` statistics, summed over spatial chunks."""
    reference = get_implementation("reference")
    parts = [reference.compute_statistics(logits[..., a:a + chunk].double(), target[..., a:a + chunk], SPEC)
             for a in range(0, logits.shape[-1], chunk)]
    return DiceStatistics(*(torch.stack([p[i].double() for p in parts]).sum(0) for i in range(3)))


def tasks(config: Config) -> List[dict]:
    return [dict(log2_voxels=k, dtype=dtype) for k in config.log2_voxels for dtype in config.dtypes]


def run_task(config: Config, task: dict) -> pd.DataFrame:
    impls = [name for name in PLAIN + ACCUMULATING if name in IMPLEMENTATIONS]
    k, dtype = task["log2_voxels"], task["dtype"]
    gen = generator_for(config.seed, k)
    voxels = 2**k
    logits = (2 * torch.randn((1, config.channels, voxels), generator=gen)).to(DTYPES[dtype])
    target = torch.randint(0, config.channels, (1, voxels), generator=gen, dtype=torch.uint8)
    truth = oracle(logits, target, 2**config.chunk_log2)
    truth_loss = float(loss_from_statistics(truth, SPEC))
    rows = []
    for name in impls:
        with torch.no_grad():
            stats = get_implementation(name).compute_statistics(logits, target, SPEC)
        loss = float(loss_from_statistics(DiceStatistics(*(s.double() for s in stats)), SPEC))
        stat_error = max(float(((s.double() - t) / t).abs().max()) for s, t in zip(stats, truth))
        rows.append(dict(
            log2_voxels=k, voxels=voxels, dtype=dtype, impl=name, loss=loss, reference_loss=truth_loss,
            rel_error=abs(loss - truth_loss) / abs(truth_loss), stat_rel_error=stat_error,
            finite=bool(math.isfinite(loss) and all(bool(torch.isfinite(s).all()) for s in stats)),
            max_class_sum=float(truth.pred_sum.max()),
        ))
    return pd.DataFrame(rows)


def claims(df: pd.DataFrame, config: Config) -> List[Claim]:
    overflowing = df[(df["dtype"] == "float16") & df["impl"].isin(PLAIN) & (df["max_class_sum"] > 2 * FP16_MAX)]
    accumulating = df[df["impl"].isin(ACCUMULATING)]
    largest = df["log2_voxels"].max()
    return [
        verification("p1.plain_fp16_sum_overflows", "share of fp16 naive/vectorized runs whose class sums exceed 2 * 65504 "
              "and that give non-finite statistics", (~overflowing["finite"]).mean() if len(overflowing) else math.nan,
              ">=", 1.0),
        verification("p1.accumulating_within_1e-3", f"max relative loss error of {'/'.join(sorted(set(accumulating['impl'])))} "
              f"in bf16 and fp16 up to 2^{largest} voxels", accumulating["rel_error"].max(), "<=", 1e-3),
        verification("p1.accumulating_stays_finite", "share of mixed/fused runs with finite statistics",
              accumulating["finite"].mean(), ">=", 1.0),
    ]


def figures(df: pd.DataFrame, out_dir) -> list:
    from ..plotting import legend_outside, plt, save_figure, style

    dtypes = list(dict.fromkeys(df["dtype"]))
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6.5 * len(dtypes), 4.5), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        part = df[df["dtype"] == dtype]
        ceiling = part.loc[part["finite"], "rel_error"].max() * 10 if part["finite"].any() else 1.0
        for impl, group in part.groupby("impl", sort=False):
            line, = ax.plot(group["voxels"], group["rel_error"].where(group["finite"]).clip(lower=1e-12), label=impl, **style(impl))
            bad = group[~group["finite"]]
            ax.scatter(bad["voxels"], [ceiling] * len(bad), marker="x", s=80, color=line.get_color())
        ax.axhline(1e-3, color="grey", ls="--", lw=1, label="1e-3")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("voxels per class sum (log2 scale)")
        ax.set_ylabel("relative error of the loss vs float64")
        ax.set_title(f"P1: {dtype} inputs (x at the top: statistics inf/NaN)")
    legend_outside(axes[0][-1], title="implementation")  # one legend, beside the data it would cover
    return save_figure(fig, out_dir, "p1_precision")
