"""Shared figure plumbing: the Agg backend, one fixed style per implementation, readable log axes,
legends outside the data, and a deterministic PNG + SVG writer.

Every figure that shows implementations takes their colours from ``IMPLEMENTATION_STYLE`` (through
``style``), so an implementation has the same colour in every chart of the report, the benchmark
figures and the experiments' alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

plt.rcParams.update({"svg.hashsalt": "dicebench", "figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3})

# Colour-blind-safe (Okabe-Ito) colours, one per implementation; the baseline MONAI is dashed.
IMPLEMENTATION_STYLE = {
    "reference": dict(color="#000000", marker="."),
    "naive": dict(color="#999999", marker="v"),
    "vectorized": dict(color="#0072B2", marker="o"),
    "mixed": dict(color="#E69F00", marker="^"),
    "fused": dict(color="#009E73", marker="D"),
    "monai": dict(color="#D55E00", marker="s", ls="--"),
    "kornia": dict(color="#CC79A7", marker="P"),
    "vectorized_compiled": dict(color="#56B4E9", marker="X"),
}
_OTHER = dict(color="#666666", marker="o")


def style(implementation: str) -> dict:
    """Line/marker keyword arguments of an implementation (a fixed grey for unknown names)."""
    return dict(IMPLEMENTATION_STYLE.get(implementation, _OTHER))


def color(implementation: str) -> str:
    return style(implementation)["color"]


def _plain(value: float, _position=None) -> str:
    return f"{value:g}"


def readable_log_axis(ax, axis: str = "y") -> None:
    """Label a log axis with plain numbers (0.5, 1, 2 rather than 5×10⁻¹), with ticks at 1-2-5, or
    at every integer multiple when the axis spans less than a decade (so it never shows one tick)."""
    low, high = ax.get_ylim() if axis == "y" else ax.get_xlim()
    subs = (1.0, 2.0, 5.0) if high / max(low, 1e-300) >= 10 else tuple(float(s) for s in range(1, 10))
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    target.set_major_formatter(ticker.FuncFormatter(_plain))
    target.set_minor_formatter(ticker.NullFormatter())


def legend_outside(ax, **kwargs) -> None:
    """The legend to the right of the axes, where it cannot cover data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8, **kwargs)


def save_figure(fig, out_dir: Path, stem: str) -> List[Path]:
    """Write ``<out_dir>/<stem>.png`` and ``.svg`` (no date metadata) and close the figure."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    # bbox_inches="tight" keeps a legend placed outside the axes inside the image.
    fig.savefig(paths[0], dpi=120, metadata={"Software": None}, bbox_inches="tight")
    fig.savefig(paths[1], metadata={"Date": None}, bbox_inches="tight")
    plt.close(fig)
    return paths
