"""ipywidgets views: the tiling explorer, the frame strip and the attention explorer.

Widgets are thin views. Their state is traitlets; their callbacks call the pure functions of
``vltools.tiling``, ``vltools.images``, ``vltools.video``, ``vltools.attention`` and draw with ``vltools.viz``.
Every ``observe`` names its traits, and errors raised in a callback are shown in the widget's
``Output`` area instead of being lost.

Every widget also knows how to draw its current state as a static figure (``figure()``), and
offers that picture as ``image/png`` next to the live view, so that an executed notebook
exported to HTML still shows something useful without a running kernel.
"""

from __future__ import annotations

import dataclasses
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


class TileExplorer(StaticFallback, widgets.VBox):
    """InternVL's dynamic tiling, live: sliders for ``max_num`` (1 to 40) and ``min_num``.

    Every change (on the slider's release) plans the grid with :func:`vltools.tiling.plan_tiles`
    and redraws :func:`vltools.viz.show_tiles` (the grid on the original, the tiles in order,
    the thumbnail), the table of candidate grids nearest the image's aspect ratio with the
    winner highlighted and the reason it won, and the running cost: image tokens and their
    share of the 8,192-token context. A step computes only what it draws: the grid and the PIL
    tiles (the card's resize and crops, the same pixels ``load_image`` cuts), not the float
    ``pixel_values``. State is traitlets: ``max_num``, ``min_num``; the result is ``grid``
    (the shown ``TileGrid``), the cost line ``cost``, and ``tiled``, the shown tiling as a
    :class:`~vltools.images.TiledImage` from :func:`vltools.images.load_image` (made when
    first read, then kept until the view changes). An impossible choice
    (``min_num > max_num``) goes to ``error`` and the output area and leaves the last good
    view in place.
    """

    max_num = traitlets.Int(12)
    min_num = traitlets.Int(1)
    grid = traitlets.Any(None)
    error = traitlets.Unicode("")
    cost = traitlets.Unicode("")

    def __init__(
        self,
        image: Any,
        *,
        max_num: int = 12,
        min_num: int = 1,
        exif_transpose: bool = True,
        slider_max: int = 40,
        table_rows: int = 8,
    ) -> None:
        from vltools.images import open_image

        self.image, self.source = open_image(image, exif_transpose=exif_transpose)
        self._table_rows = table_rows
        self._shown: _TilePicture | None = None  # what the picture shows (the last good view)
        self._tiled: tuple[Any, Any] | None = None  # (grid, TiledImage) once ``tiled`` is read
        self._max_slider = widgets.IntSlider(
            value=max_num,
            min=1,
            max=max(slider_max, max_num),
            description="max_num",
            continuous_update=False,
        )
        self._min_slider = widgets.IntSlider(
            value=min_num,
            min=1,
            max=max(slider_max, max_num),
            description="min_num",
            continuous_update=False,
        )
        self._summary = widgets.HTML()
        self._summary.add_class("vltools-summary")
        self._table = widgets.HTML()
        self._picture = widgets.Image(format="png")
        self._output = widgets.Output()
        super().__init__(
            children=[
                widgets.HBox([self._max_slider, self._min_slider]),
                self._summary,
                self._picture,
                self._table,
                self._output,
            ]
        )
        self.add_class("vltools-tile-explorer")
        with self.hold_trait_notifications():
            self.max_num = max_num
            self.min_num = min_num
        widgets.link((self._max_slider, "value"), (self, "max_num"))
        widgets.link((self._min_slider, "value"), (self, "min_num"))
        self.observe(self._update, names=["max_num", "min_num"])
        self._update()

    @property
    def tiled(self) -> Any:
        """The shown tiling as a :class:`~vltools.images.TiledImage` (``None`` before any).

        :func:`vltools.images.load_image` with the shown ``max_num``/``min_num``, float
        ``pixel_values`` included; computed on first read and kept until the view changes.
        """
        if self._shown is None:
            return None
        grid = self._shown.grid
        if self._tiled is None or self._tiled[0] is not grid:
            from vltools.images import load_image

            tiled = load_image(self.image, max_num=grid.max_num, min_num=grid.min_num)
            self._tiled = (grid, dataclasses.replace(tiled, source=self.source))
        return self._tiled[1]

    def _update(self, change: Any = None) -> None:
        from vltools.tiling import plan_tiles

        self._output.outputs = ()
        try:
            grid = plan_tiles(
                self.image.width, self.image.height, max_num=self.max_num, min_num=self.min_num
            )
        except (ValueError, TypeError) as e:
            self.error = str(e)
            self._output.append_stderr(f"{type(e).__name__}: {e}\n")
            self._summary.value = f"<span style='color:#b00'>{_escape(str(e))}</span>"
            return
        self.error = ""
        self._shown = _TilePicture(self.image, grid, _pil_tiles(self.image, grid), self.source)
        self.grid = grid
        self.cost = grid.summary()
        over = " <b>exceeds the context</b>" if grid.context_share > 1 else ""
        self._summary.value = f"<b>{_escape(self.cost)}</b>{over}"
        self._table.value = _candidate_table(grid, rows=self._table_rows)
        self._picture.value = _png(self.figure())

    def figure(self) -> Any:
        """The current tiling drawn by :func:`vltools.viz.show_tiles`."""
        from vltools.viz import show_tiles

        if self._shown is None:
            raise ValueError(f"Nothing to draw: {self.error}")
        return show_tiles(self._shown)


@dataclasses.dataclass(frozen=True, eq=False)
class _TilePicture:
    """What :func:`vltools.viz.show_tiles` reads of a ``TiledImage`` (``image``, ``grid``,
    ``tiles``, ``source``), without the float ``pixel_values`` it does not draw."""

    image: Any  # PIL RGB, the original
    grid: Any  # TileGrid
    tiles: tuple[Any, ...]  # PIL tiles in pixel_values order, the thumbnail last
    source: str | None


def _pil_tiles(image: Any, grid: Any) -> tuple[Any, ...]:
    """The PIL tiles of ``image`` cut by ``grid``: the card's resize and crops, no floats.

    The same pixels as :func:`vltools.images.load_image`'s ``tiles`` (a test holds them equal):
    the canvas and the thumbnail are bicubic resizes of the original, the tiles crops of the
    canvas, in ``pixel_values`` order.
    """
    from PIL import Image

    bicubic = Image.Resampling.BICUBIC  # PIL's default for RGB, as in the card
    size = grid.image_size
    canvas = image if image.size == grid.canvas_size else image.resize(grid.canvas_size, bicubic)
    tiles = [canvas.crop(box.canvas) for box in grid.boxes if not box.is_thumbnail]
    if grid.has_thumbnail:
        tiles.append(image if image.size == (size, size) else image.resize((size, size), bicubic))
    return tuple(tiles)


def _escape(text: str) -> str:
    import html

    return html.escape(text)


def _png(fig: Any) -> bytes:
    """The live view's PNG: the same pixels as ``figure_to_png(fig, dpi=72)``, encoded with
    zlib level 1 (PNG encoding at the default level was a third of a step's time)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72, pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def _candidate_table(grid: Any, *, rows: int) -> str:
    """The candidates nearest the image's aspect ratio, the winner highlighted, and why."""
    nearest = sorted(grid.candidates, key=lambda c: (c.error, c.order))[:rows]
    body = []
    for c in nearest:
        style = " style='background:#d8f0d8;font-weight:bold'" if c.is_winner else ""
        mark = " &larr; chosen" if c.is_winner else ""
        body.append(
            f"<tr{style}><td>{c.cols}x{c.rows}</td><td>{c.num_tiles}</td>"
            f"<td>{c.aspect_ratio:.4f}</td><td>{c.error:.4f}</td><td>{c.order}</td>"
            f"<td>{c.decision}{mark}</td></tr>"
        )
    return (
        f"<div><p>{_escape(grid.explain())}</p>"
        f"<table class='vltools-candidates'><tr><th>grid</th><th>tiles</th><th>cols/rows</th>"
        f"<th>|error|</th><th>visit order</th><th>decision</th></tr>{''.join(body)}</table>"
        f"<p><i>{len(grid.candidates)} grids considered; the {len(nearest)} nearest shown. "
        f"The image's aspect ratio is {grid.aspect_ratio:.4f}.</i></p></div>"
    )


# --- FrameStrip (video issue) ----------------------------------------------------------------


class FrameStrip(StaticFallback, widgets.VBox):
    """Which frames the card's sampler picks, live: sliders for ``num_segments`` and ``bound``.

    Shows :func:`vltools.viz.show_frames` of the current choice (the timeline with the sampled
    frames marked and the frames as labelled thumbnails) and its token cost against the
    8,192-token context. State lives in traitlets (``num_segments``, ``bound`` in seconds,
    ``max_num``); every change (on the slider's release) resamples through
    :class:`vltools.video.VideoFrames`, which gives :func:`vltools.video.load_video`'s clip but
    decodes each frame of the video at most once for the widget's life. The current
    :class:`~vltools.video.VideoClip` is ``clip``; an error (an impossible bound) goes to
    ``error`` and the output area, and leaves the last good ``clip`` in place.
    """

    num_segments = traitlets.Int(8)
    bound = traitlets.Tuple(traitlets.Float(), traitlets.Float())
    max_num = traitlets.Int(1)
    clip = traitlets.Any(None)
    error = traitlets.Unicode("")
    cost = traitlets.Unicode("")

    def __init__(
        self,
        source: Any,
        *,
        num_segments: int = 8,
        bound: tuple[float, float] | None = None,
        max_num: int = 1,
        backend: str = "auto",
        max_segments: int = 64,
    ) -> None:
        from vltools.video import VideoFrames

        self._source = source
        self._frames = VideoFrames(source, backend=backend)  # decodes each frame at most once
        first_error = None
        try:
            first = self._frames.clip(num_segments=num_segments, max_num=max_num, bound=bound)
        except (ValueError, TypeError) as e:
            if bound is None:
                raise
            first_error = e  # shown below, over the whole video
            first = self._frames.clip(num_segments=num_segments, max_num=max_num)
        self.duration = first.duration
        step = 1.0 / first.fps
        self._segments_slider = widgets.IntSlider(
            value=num_segments,
            min=1,
            max=max_segments,
            description="segments",
            continuous_update=False,
        )
        self._bound_slider = widgets.FloatRangeSlider(
            value=(0.0, first.duration),
            min=0.0,
            max=first.duration,
            step=step,
            readout_format=".2f",
            description="bound (s)",
            continuous_update=False,
        )
        self._max_num_slider = widgets.IntSlider(
            value=max_num, min=1, max=12, description="max_num", continuous_update=False
        )
        self._cost_label = widgets.HTML()
        self._picture = widgets.Image(format="png")
        self._output = widgets.Output()
        super().__init__(
            children=[
                widgets.HBox([self._segments_slider, self._bound_slider, self._max_num_slider]),
                self._cost_label,
                self._picture,
                self._output,
            ]
        )
        self.add_class("vltools-frame-strip")  # stable hooks for the browser test and for CSS
        self._cost_label.add_class("vltools-summary")
        with self.hold_trait_notifications():
            self.num_segments = num_segments
            self.max_num = max_num
            self.bound = (0.0, first.duration) if bound is None else tuple(map(float, bound))
        # the traits lead: link() copies its source into its target once, at creation
        widgets.link((self, "num_segments"), (self._segments_slider, "value"))
        widgets.link((self, "bound"), (self._bound_slider, "value"))
        widgets.link((self, "max_num"), (self._max_num_slider, "value"))
        self.observe(self._resample, names=["num_segments", "bound", "max_num"])
        self._show(first)
        if first_error is not None:
            self.error = str(first_error)
            self._output.append_stderr(f"{type(first_error).__name__}: {first_error}\n")

    def _bound_or_none(self) -> tuple[float, float] | None:
        start, end = self.bound
        if start <= 0.0 and end >= self.duration:
            return None  # the whole video: the card's "no bound"
        return (start, end)

    def _resample(self, change: Any = None) -> None:
        self._output.outputs = ()
        try:
            clip = self._frames.clip(
                num_segments=self.num_segments, max_num=self.max_num, bound=self._bound_or_none()
            )
        except Exception as e:  # shown in the widget; an observer's exception would be lost
            self.error = str(e)
            self._output.append_stderr(f"{type(e).__name__}: {e}\n")
            return
        self._show(clip)

    def _show(self, clip: Any) -> None:
        from vltools.constants import CONTEXT_LENGTH

        self.error = ""
        self.clip = clip
        tokens = clip.num_image_tokens
        share = tokens / CONTEXT_LENGTH
        tiles = sum(clip.num_tiles)
        over = " <b>exceeds the context</b>" if tokens > CONTEXT_LENGTH else ""
        self.cost = (
            f"{clip.num_segments} frames, {tiles} tiles x 256 = {tokens:,} image tokens "
            f"= {share:.0%} of the {CONTEXT_LENGTH:,}-token context"
        )
        self._cost_label.value = self.cost + over
        self._picture.value = _png(self.figure())

    def figure(self) -> Any:
        """The current choice drawn by :func:`vltools.viz.show_frames`."""
        from vltools.viz import show_frames

        return show_frames(self.clip)


# --- AttentionExplorer (attention issue) -----------------------------------------------------


class AttentionExplorer(StaticFallback, widgets.VBox):
    """Step through the generated tokens and see where their attention went in the image.

    ``maps`` is an :class:`~vltools.attention.AttentionMaps`. Click a token (or slide), widen
    the span to cover a word made of several tokens, choose a range of layers, one head or the
    mean/max over heads, the image (or video frame), tiles / thumbnail / a blend of both, and
    whether to remove attention sinks. The view shows the overlay on the original image, the
    thumbnail's map, and a line of how much each token attended to the image at all.

    State is traitlets: ``token``, ``span``, ``layers`` (inclusive ``(first, last)`` layer
    index), ``head`` (``"mean"``, ``"max"`` or a head number as text), ``image`` (index),
    ``source`` (``"tiles"``, ``"thumbnail"``, ``"blend"``), ``sinks``; the shown
    :class:`~vltools.attention.ImageMap` is ``current`` and a bad choice lands in ``error``
    (and the output area) while the last good view stays. Attention is not an explanation.
    """

    token = traitlets.Int(0)
    span = traitlets.Int(1)
    layers = traitlets.Tuple(traitlets.Int(), traitlets.Int())
    head = traitlets.Unicode("mean")
    image = traitlets.Int(0)
    source = traitlets.Unicode("tiles")
    sinks = traitlets.Bool(False)
    current = traitlets.Any(None)
    error = traitlets.Unicode("")

    def __init__(self, maps: Any, *, token: int = 0, image: int = 0) -> None:
        self.maps = maps
        n = maps.num_tokens
        first, last = min(maps.layers), max(maps.layers)
        labels = [(f"{i}:{t!r}"[:14], i) for i, t in enumerate(maps.tokens)]
        self._token_buttons = widgets.ToggleButtons(
            options=labels, value=token, style={"button_width": "auto"}
        )
        self._token_slider = widgets.IntSlider(
            value=token, min=0, max=max(n - 1, 0), description="token"
        )
        self._span_slider = widgets.IntSlider(value=1, min=1, max=max(n, 1), description="span")
        self._layer_slider = widgets.IntRangeSlider(
            value=(first, last), min=first, max=last, description="layers"
        )
        heads = ["mean", "max", *(str(h) for h in range(maps.num_heads))]
        self._head_menu = widgets.Dropdown(options=heads, value="mean", description="head")
        self._image_menu = widgets.Dropdown(
            options=[(s.label, s.index) for s in maps.images] or [("none", 0)],
            value=image,
            description="image",
        )
        self._source_buttons = widgets.ToggleButtons(
            options=["tiles", "thumbnail", "blend"], value="tiles"
        )
        self._sinks_box = widgets.Checkbox(value=False, description="remove sinks")
        self._caption = widgets.HTML()
        self._picture = widgets.Image(format="png")
        self._output = widgets.Output()
        super().__init__(
            children=[
                self._token_buttons,
                widgets.HBox([self._token_slider, self._span_slider, self._layer_slider]),
                widgets.HBox(
                    [self._head_menu, self._image_menu, self._source_buttons, self._sinks_box]
                ),
                self._caption,
                self._picture,
                self._output,
            ]
        )
        self.add_class("vltools-attention-explorer")  # stable hooks for the browser test and CSS
        self._caption.add_class("vltools-summary")
        with self.hold_trait_notifications():
            self.token = token
            self.layers = (first, last)
            self.image = image
        for control, name in [
            (self._token_buttons, "token"),
            (self._token_slider, "token"),
            (self._span_slider, "span"),
            (self._layer_slider, "layers"),
            (self._head_menu, "head"),
            (self._image_menu, "image"),
            (self._source_buttons, "source"),
            (self._sinks_box, "sinks"),
        ]:
            widgets.link((control, "value"), (self, name))
        self.observe(self._update, names=list(self._STATE))
        self._update()

    _STATE = ("token", "span", "layers", "head", "image", "source", "sinks")

    def set(self, **state: Any) -> AttentionExplorer:
        """Change several of ``token``, ``span``, ``layers``, ``head``, ``image``, ``source``,
        ``sinks`` at once and redraw once; returns the widget."""
        unknown = sorted(set(state) - set(self._STATE))
        if unknown:
            raise ValueError(f"Unknown state {unknown}; AttentionExplorer has {list(self._STATE)}.")
        self._batch = True
        try:
            for name, value in state.items():
                setattr(self, name, value)
        finally:
            self._batch = False
        self._update()
        return self

    def selection(self) -> dict[str, Any]:
        """The current choice as keyword arguments of ``AttentionMaps.map``."""
        lo, hi = self.layers
        chosen = [layer for layer in self.maps.layers if lo <= layer <= hi]
        if not chosen:
            raise ValueError(
                f"No captured layer lies in {lo}..{hi}; captured layers: {list(self.maps.layers)}."
            )
        if self.head in ("mean", "max"):
            heads, reduce = None, self.head
        else:
            heads, reduce = int(self.head), "mean"
        return {
            "tokens": range(self.token, self.token + self.span),
            "layers": chosen,
            "heads": heads,
            "reduce": reduce,
            "sinks": self.sinks,
        }

    def _update(self, change: Any = None) -> None:
        if getattr(self, "_batch", False):
            return  # set() redraws once at the end
        self._output.outputs = ()
        try:
            if self.source not in ("tiles", "thumbnail", "blend"):
                raise ValueError(
                    f"source must be 'tiles', 'thumbnail' or 'blend', got {self.source!r}."
                )
            selection = self.selection()
            imap = self.maps.map(self.image, **selection)
            if self.source != "tiles" and imap.thumbnail is None:
                raise ValueError(
                    f"{imap.label} has no thumbnail (a single tile); choose source='tiles'."
                )
        except (ValueError, TypeError) as e:
            self.error = str(e)
            self._output.append_stderr(f"{type(e).__name__}: {e}\n")
            return
        self.error = ""
        self._shown = (selection, self.source)
        self.current = imap
        share = self.maps.image_share(layers=selection["layers"], sinks=self.sinks)
        span = share[self.token : self.token + self.span].mean()
        self._caption.value = (
            f"<b>{imap.label}</b>: {imap.what}. Share of attention to the image(s): "
            f"{span:.1%}. <i>Attention is not an explanation.</i>"
        )
        self._picture.value = _png(self.figure())

    def figure(self) -> Any:
        """The current view, drawn by :func:`vltools.viz.attention_view`."""
        from vltools.viz import attention_view

        if self.current is None:
            raise ValueError(f"Nothing to draw: {self.error}")
        selection, source = self._shown  # the last good choice, which ``current`` shows
        return attention_view(self.maps, self.current, selection=selection, source=source)
