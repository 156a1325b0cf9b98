"""Shared figure plumbing: the Agg backend and a deterministic PNG + SVG writer."""

from __future__ import annotations

from pathlib import Path
from typing import List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

plt.rcParams.update({"svg.hashsalt": "dicebench", "figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3})


def save_figure(fig, out_dir: Path, stem: str) -> List[Path]:
    """Write ``<out_dir>/<stem>.png`` and ``.svg`` (no date metadata) and close the figure."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=120, metadata={"Software": None})
    fig.savefig(paths[1], metadata={"Date": None})
    plt.close(fig)
    return paths
