"""Figures: matplotlib's non-interactive backend set once for the package, and one atomic PNG writer.

Every module that draws imports ``plt`` from here (so no display is ever needed and the backend is chosen in one
place) and writes with ``save_figure`` (a temporary name, then a rename: never a half-written picture).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import EngFormatter, NullFormatter  # noqa: E402

from qwave import atomic  # noqa: E402

__all__ = ["EngFormatter", "NullFormatter", "plt", "save_figure"]


def save_figure(fig, path: str | Path, dpi: int = 100, **savefig_options) -> None:
    """Write ``fig`` as a PNG at ``path`` atomically and release it."""
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", **savefig_options), suffix=".png")
    plt.close(fig)
