"""A tiny experiment module with the experiments' interface, for the runner and storage tests.

Each task draws seeded torch numbers and reduces them with a matrix product (so a change of
thread count or of process could show in the last bits); the columns mix the dtypes a real
experiment stores. Its claims' thresholds come from the config, so tests can make either kind fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np
import pandas as pd
import torch

from analysis.experiments import Claim, hypothesis, verification
from analysis.stats import bootstrap_ci

SOURCE = "test fixture (no paper)"


@dataclass(frozen=True)
class Config:
    seed: int = 0
    impl: str = "vectorized"
    seeds: int = 3
    settings: tuple = (0.5, 2.0)
    size: int = 64
    verification_threshold: float = 1.0  # rows per task is 4: ">= 1" passes, ">= 10" fails
    hypothesis_threshold: float = -10.0  # values are ~N(0, 1) sums: "> -10" is supported, "> 10" FAILED
    fail_task: int = -1  # the index of a task that raises, for the error tests


SCALES = {"small": Config(), "paper": Config(seeds=4)}


def tasks(config: Config) -> List[dict]:
    return [dict(index=i, seed=config.seed + s, scale=scale)
            for i, (s, scale) in enumerate((s, scale) for s in range(config.seeds) for scale in config.settings)]


def run_task(config: Config, task: dict) -> pd.DataFrame:
    if task["index"] == config.fail_task:
        raise RuntimeError("this task was told to fail")
    gen = torch.Generator().manual_seed(1000 * task["seed"] + task["index"])
    a = torch.randn(config.size, config.size, generator=gen, dtype=torch.float32) * task["scale"]
    product = (a @ a.T).sum(1)[:4]
    return pd.DataFrame(dict(seed=task["seed"], scale=task["scale"], row=np.arange(4, dtype=np.int64),
                             value=product.numpy(), positive=(product > 0).numpy(),
                             label=[f"t{task['index']}r{r}" for r in range(4)]))


def claims(df: pd.DataFrame, config: Config) -> List[Claim]:
    per_seed = df.groupby("seed")["value"].mean().to_numpy() / 1000
    return [
        verification("fake.rows_per_task", "stored rows per task", len(df) / df.groupby(["seed", "scale"]).ngroups,
                     ">=", config.verification_threshold),
        hypothesis("fake.mean_above", "mean value per seed / 1000", SOURCE, per_seed.mean(), bootstrap_ci(per_seed),
                   ">", config.hypothesis_threshold, stage="budget"),
    ]


def figures(df: pd.DataFrame, out_dir) -> list:
    from analysis.plotting import plt, save_figure

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(df["value"].to_numpy(), marker="o")
    ax.set_title("fake experiment")
    return save_figure(fig, out_dir, "fake_experiment")
