"""Static figures: tiles, frames and attention drawn with matplotlib.

Every function here is pure: it takes data (a ``TiledImage``, a ``VideoClip``, an
``AttentionMaps``) and returns a :class:`matplotlib.figure.Figure`. None calls ``plt.show()``
or ``display()``; the notebook shows what it gets back. Figures are built with the object API
(``Figure()``), never through pyplot's global state, so they are safe in loops and threads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vltools._optional import require

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def _new_figure(width: float, height: float) -> Figure:
    """A detached matplotlib figure (no pyplot state) of the given size in inches."""
    figure_module = require("matplotlib.figure", purpose="Drawing figures")
    require("matplotlib.backends.backend_agg", purpose="Drawing figures")
    return figure_module.Figure(figsize=(width, height), layout="constrained")


def figure_to_png(fig: Figure, *, dpi: int = 100) -> bytes:
    """Render ``fig`` to PNG bytes (for ``_repr_png_`` and the widgets' static pictures)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


# --- tiles (tiling issue) -------------------------------------------------------------------

# --- frames (video issue) -------------------------------------------------------------------

# --- attention (attention issue) ------------------------------------------------------------
