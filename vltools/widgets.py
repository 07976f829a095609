"""ipywidgets views: the tiling explorer, the frame strip and the attention explorer.

Widgets are thin views. Their state is traitlets; their callbacks call the pure functions of
``vltools.tiling``, ``vltools.video``, ``vltools.attention`` and draw with ``vltools.viz``.
Every ``observe`` names its traits, and errors raised in a callback are shown in the widget's
``Output`` area instead of being lost.

Every widget also knows how to draw its current state as a static figure (``figure()``), and
offers that picture as ``image/png`` next to the live view, so that an executed notebook
exported to HTML still shows something useful without a running kernel.
"""

from __future__ import annotations

from typing import Any

from vltools._optional import require

widgets = require("ipywidgets", purpose="vltools.widgets")
traitlets = require("traitlets", purpose="vltools.widgets")


class StaticFallback:
    """Mixin for a ``widgets.DOMWidget`` subclass with a ``figure()`` method.

    Adds the current state as ``image/png`` to the widget's mime bundle: JupyterLab shows the
    live widget, and an HTML export (or any frontend without the widget manager) shows the
    picture.
    """

    def figure(self) -> Any:  # pragma: no cover - implemented by each widget
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        from vltools.viz import figure_to_png

        bundle = super()._repr_mimebundle_(**kwargs)  # type: ignore[misc]
        data = dict(bundle)
        try:
            data["image/png"] = figure_to_png(self.figure(), dpi=72)
        except Exception as e:  # a picture is a courtesy; never break the live view for it
            data["text/plain"] = f"{type(self).__name__} (no static picture: {e})"
        return data


# --- TileExplorer (tiling issue) -------------------------------------------------------------

# --- FrameStrip (video issue) ----------------------------------------------------------------

# --- AttentionExplorer (attention issue) -----------------------------------------------------
