"""Charts as PNG bytes. matplotlib is set up here once: the Agg backend (workers have no display), imported on
first use so that a worker that never draws never pays its import."""

from __future__ import annotations

import io
from typing import Any


def subplots(*grid: int, **options: Any) -> tuple[Any, Any]:
    """``plt.subplots(*GRID, **OPTIONS)`` on the Agg backend: a figure and its axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*grid, **options)


def png(figure: Any) -> bytes:
    """FIGURE laid out and rendered at 100 dpi, then closed (pyplot keeps every open figure alive)."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
