"""Static figures: tiles, frames and attention drawn with matplotlib.

Every function here is pure: it takes data (a ``TiledImage``, a ``VideoClip``, an
``AttentionMaps``) and returns a :class:`matplotlib.figure.Figure`. None calls ``plt.show()``
or ``display()``; the notebook shows what it gets back. Figures are built with the object API
(``Figure()``), never through pyplot's global state, so they are safe in loops and threads.
Each is a :class:`~matplotlib.figure.Figure` that also has ``_repr_png_``, so it shows itself
in any Jupyter notebook (no formatter to register, no pyplot) and is still the matplotlib
figure for whoever wants to save or edit it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vltools._optional import require

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from vltools.images import TiledImage
    from vltools.video import VideoClip


@functools.cache
def _self_showing_figure() -> type:
    """matplotlib's ``Figure`` with ``_repr_png_``: Jupyter shows it without pyplot."""
    figure_module = require("matplotlib.figure", purpose="Drawing figures")
    require("matplotlib.backends.backend_agg", purpose="Drawing figures")

    class ShownFigure(figure_module.Figure):
        """A matplotlib figure that displays itself in Jupyter as a PNG."""

        def _repr_png_(self) -> bytes:
            return figure_to_png(self)

    return ShownFigure


def new_figure(width: float, height: float) -> Figure:
    """A detached matplotlib figure (no pyplot state) of the given size in inches, which shows
    itself in a notebook."""
    return _self_showing_figure()(figsize=(width, height), layout="constrained")


def figure_to_png(fig: Figure, *, dpi: int = 100) -> bytes:
    """Render ``fig`` to PNG bytes (for ``_repr_png_`` and the widgets' static pictures)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


# --- tiles (tiling issue) -------------------------------------------------------------------


def show_tiles(tiled: TiledImage, *, preview: int = 160) -> Figure:
    """The tiling of one image: the original with its grid, the tiles in order, the thumbnail.

    Top: the original image with the chosen grid drawn on it in original-image coordinates
    (each tile's ``TileBox.original``) and every tile's index. Bottom left: the tiles as the
    model receives them, in ``pixel_values`` order (row-major), each labelled with its index;
    bottom right: the thumbnail, the last tile. The title gives the grid, the tile count and
    the image-token cost against the 8,192-token context. ``preview`` is the side in pixels
    each tile is drawn at (drawing full 448-pixel tiles is slow and shows nothing more).
    """
    import numpy as np

    grid = tiled.grid
    cols, rows = grid.cols, grid.rows
    thumbs = [b for b in grid.boxes if b.is_thumbnail]
    width_in = 10.0
    top_h = min(6.0, max(1.6, width_in * 0.9 * grid.height / grid.width))
    p = max(24, min(preview, int(1400 / max(cols, rows))))
    gap = max(2, p // 16)
    mosaic = np.full((rows * (p + gap) - gap, cols * (p + gap) - gap, 3), 255, dtype=np.uint8)
    for box in grid.boxes:
        if box.is_thumbnail:
            continue
        y0, x0 = box.row * (p + gap), box.col * (p + gap)
        small = tiled.tiles[box.index].resize((p, p), reducing_gap=2.0)
        mosaic[y0 : y0 + p, x0 : x0 + p] = np.asarray(small.convert("RGB"))
    thumb_ratio = 1 if thumbs else 0.01
    if grid.height > grid.width:  # portrait: original | tiles | thumbnail side by side
        mosaic_ratio = mosaic.shape[1] / mosaic.shape[0]
        fig = new_figure(width_in, 6.0)
        spec = fig.add_gridspec(
            1, 3, width_ratios=[grid.width / grid.height, mosaic_ratio, mosaic_ratio * thumb_ratio]
        )
        ax, tiles_ax, thumb_ax = (fig.add_subplot(spec[0, k]) for k in range(3))
    else:  # landscape: the original on top, tiles and thumbnail below
        bottom_h = min(4.5, max(1.4, 0.8 * width_in * mosaic.shape[0] / mosaic.shape[1]))
        fig = new_figure(width_in, top_h + bottom_h + 0.6)
        spec = fig.add_gridspec(
            2, 2, height_ratios=[top_h, bottom_h], width_ratios=[4, thumb_ratio]
        )
        ax = fig.add_subplot(spec[0, :])
        tiles_ax = fig.add_subplot(spec[1, 0])
        thumb_ax = fig.add_subplot(spec[1, 1])

    shown = tiled.image.copy()
    shown.thumbnail((900, 900))
    ax.imshow(shown, extent=(0, grid.width, grid.height, 0))
    for box in grid.boxes:
        if box.is_thumbnail:
            continue
        left, top, right, bottom = box.original
        ax.add_patch(
            _rectangle((left, top), right - left, bottom - top, edgecolor="#ff2d2d", lw=1.4)
        )
        ax.text(
            (left + right) / 2,
            (top + bottom) / 2,
            str(box.index),
            ha="center",
            va="center",
            fontsize=9 if cols * rows <= 24 else 6,
            color="white",
            bbox={"boxstyle": "round,pad=0.2", "fc": "#ff2d2d", "ec": "none", "alpha": 0.8},
        )
    ax.set_xlim(0, grid.width)
    ax.set_ylim(grid.height, 0)
    ax.set_axis_off()
    ax.set_title(
        f"original {grid.width}x{grid.height}, resized to {grid.canvas_size[0]}x"
        f"{grid.canvas_size[1]},\ncut into a {cols}x{rows} grid",
        fontsize=8,
    )

    tiles_ax.imshow(mosaic)
    for box in grid.boxes:
        if not box.is_thumbnail:
            tiles_ax.text(
                box.col * (p + gap) + 3,
                box.row * (p + gap) + 3,
                str(box.index),
                ha="left",
                va="top",
                fontsize=7,
                color="white",
                bbox={"boxstyle": "square,pad=0.15", "fc": "black", "ec": "none", "alpha": 0.6},
            )
    tiles_ax.set_axis_off()
    tiles_ax.set_title(
        f"tiles 0-{cols * rows - 1} ({grid.image_size}x{grid.image_size} each),\n"
        "in pixel_values order",
        fontsize=8,
    )
    thumb_ax.set_axis_off()
    if thumbs:
        thumb_ax.imshow(tiled.tiles[thumbs[0].index].resize((p, p), reducing_gap=2.0))
        thumb_ax.set_title(f"thumbnail (tile {thumbs[0].index})", fontsize=8)
    name = f"{Path(tiled.source).name}: " if tiled.source else ""
    _suptitle(fig, name + grid.summary(), fontsize=9)
    return fig


def _rectangle(xy: tuple[float, float], width: float, height: float, **style: Any) -> Any:
    patches = require("matplotlib.patches", purpose="Drawing figures")
    return patches.Rectangle(xy, width, height, fill=False, **style)


# --- frames (video issue) -------------------------------------------------------------------


def show_frames(clip: VideoClip, *, columns: int | None = None, thumb_width: float = 1.7) -> Figure:
    """The video's timeline with the sampled frames marked, and the frames as labelled thumbnails.

    Top: every frame of the video on a frame-number axis (seconds on top at ``fps``), the span
    the segments cover (the ``bound``) shaded, the segment edges as thin lines and each sampled
    frame as a numbered marker at the centre of its segment. Below: one thumbnail per sampled
    frame, labelled ``FrameK`` (the prompt's name), its frame number and its time. The title
    gives the token cost against the model's 8,192-token context.
    """
    from vltools.constants import CONTEXT_LENGTH

    if clip.span is None:
        raise ValueError("This VideoClip carries no span; make clips with vltools.load_video.")
    n = clip.num_segments
    columns = min(n, columns or 8)
    rows = -(-n // columns)  # ceil
    aspect = clip.frames[0].height / max(clip.frames[0].width, 1)
    width = max(6.0, columns * thumb_width)
    thumb_height = width / columns * aspect + 0.45
    fig = new_figure(width, 1.5 + rows * thumb_height)
    grid = fig.add_gridspec(1 + rows, columns, height_ratios=[1.5] + [thumb_height] * rows)

    timeline = fig.add_subplot(grid[0, :])
    last = clip.num_frames - 1
    start_idx, end_idx = clip.span  # computed once, by load_video
    seg = (end_idx - start_idx) / n
    timeline.axvspan(start_idx, max(end_idx, start_idx + 0.5), color="#cfe3ff", zorder=0)
    for k in range(n + 1):
        timeline.axvline(start_idx + k * seg, color="#7a9cc6", lw=0.6, zorder=1)
    if clip.num_frames <= 1000:  # one tick per frame of the video
        timeline.vlines(range(clip.num_frames), 0, 0.25, color="0.6", lw=0.5, zorder=2)
    timeline.scatter(clip.frame_indices, [0.5] * n, s=36, color="#d62728", zorder=3)
    for k, index in enumerate(clip.frame_indices.tolist()):
        timeline.annotate(
            str(k + 1),
            (index, 0.5),
            xytext=(0, 6),
            textcoords="offset points",
            ha="center",
            fontsize=7,
            color="#d62728",
        )
    timeline.set_xlim(-0.5, last + 0.5)
    timeline.set_ylim(0, 1)
    timeline.set_yticks([])
    timeline.set_xlabel("frame number", fontsize=8)
    timeline.tick_params(labelsize=7)
    fps = clip.fps
    seconds = timeline.secondary_xaxis("top", functions=(lambda x: x / fps, lambda t: t * fps))
    seconds.set_xlabel("seconds", fontsize=8)
    seconds.tick_params(labelsize=7)

    tiles = sum(clip.num_tiles)
    tokens = clip.num_image_tokens
    bound = "whole video" if clip.bound is None else f"bound {clip.bound[0]:g}-{clip.bound[1]:g} s"
    _suptitle(
        fig,
        f"{Path(clip.source).name}: {n} of {clip.num_frames} frames ({bound}), {tiles} tiles, "
        f"{tokens:,} image tokens = {tokens / CONTEXT_LENGTH:.0%} of the {CONTEXT_LENGTH:,} context",
        fontsize=9,
    )
    for k, (image, index, time) in enumerate(
        zip(clip.frames, clip.frame_indices.tolist(), clip.timestamps.tolist(), strict=True)
    ):
        ax = fig.add_subplot(grid[1 + k // columns, k % columns])
        small = image.copy()
        small.thumbnail((240, 240))  # drawing full frames is slow and shows nothing more
        ax.imshow(small)
        ax.set_axis_off()
        ax.set_title(f"Frame{k + 1}: #{index}\n{time:.2f} s", fontsize=7)
    return fig


# --- attention (attention issue) ------------------------------------------------------------

_ATTENTION_CAVEAT = "attention is not an explanation"


def _suptitle(fig: Figure, text: str, *, fontsize: float) -> None:
    """``fig``'s title, wrapped to the figure's width (a narrow strip of a few frames or one
    tile would cut a long title off at both edges) and with unsupported characters escaped."""
    import textwrap

    chars_per_line = int(fig.get_figwidth() * 72 / (fontsize * 0.6))  # ~0.6 em per character
    fig.suptitle(textwrap.fill(_safe_text(text), max(chars_per_line, 20)), fontsize=fontsize)


def _safe_text(text: str) -> str:
    """``text`` with characters the default font lacks (CJK, emoji) written as escapes."""
    return "".join(c if ord(c) < 0x2500 or c == "\ufffd" else ascii(c)[1:-1] for c in text)


def _attention_map(maps: Any, image: int | str, selection: dict[str, Any]) -> Any:
    """An ImageMap from ``maps`` (an AttentionMaps with a selection, or an ImageMap as is)."""
    if hasattr(maps, "per_tile"):
        if selection:
            raise TypeError(
                f"{sorted(selection)} only apply to an AttentionMaps; this is an ImageMap "
                "whose selection is already made."
            )
        return maps
    return maps.map(image, **selection)


def _thumbnail_size(width: int, height: int, longest: int = 480) -> tuple[int, int]:
    scale = min(1.0, longest / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _draw_attention(
    ax: Any,
    imap: Any,
    *,
    source: str = "tiles",
    blend: float | None = None,
    alpha: float = 0.55,
    cmap: str = "inferno",
    show_grid: bool = True,
) -> Any:
    """Draw ``imap`` over its original image on ``ax``; returns the heatmap artist."""
    import numpy as np

    grid = imap.grid
    width, height = int(grid.width), int(grid.height)
    size = _thumbnail_size(width, height)
    values = imap.pixels(source=source, size=size, blend=blend)  # [h, w] at reduced size
    extent = (0, width, height, 0)
    if imap.image is not None:
        ax.imshow(imap.image.resize(size), extent=extent, interpolation="bilinear")
    else:
        ax.imshow(np.full((*size[::-1], 3), 0.5), extent=extent)
    art = ax.imshow(values, extent=extent, cmap=cmap, alpha=alpha, interpolation="nearest")
    if show_grid and source == "tiles":
        patches = require("matplotlib.patches", purpose="Drawing attention maps")
        for box in grid.boxes:
            if box.is_thumbnail:
                continue
            left, top, right, bottom = box.original
            ax.add_patch(
                patches.Rectangle(
                    (left, top), right - left, bottom - top, fill=False, lw=1.0, ec="white"
                )
            )
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    return art


def overlay(
    maps: Any,
    *,
    image: int | str = 0,
    source: str = "tiles",
    blend: float | None = None,
    alpha: float = 0.55,
    cmap: str = "inferno",
    show_grid: bool = True,
    width: float = 6.0,
    box: tuple[int, int, int, int] | None = None,
    **selection: Any,
) -> Figure:
    """The attention heatmap over the ORIGINAL image, with the tile grid drawn.

    ``maps``: an :class:`~vltools.attention.AttentionMaps` (``selection`` = ``tokens``,
    ``layers``, ``heads``, ``reduce``, ``sinks`` as in ``AttentionMaps.map``) or an
    :class:`~vltools.attention.ImageMap`. ``source="thumbnail"`` shows the thumbnail's map
    instead of the tiles'; ``blend=w`` mixes both as densities. ``box``: a region to outline
    in cyan, ``(left, top, right, bottom)`` in the original image's pixels (e.g. a toy scene's
    asked-about shape, ``scene.box``). Attention is not an explanation: the title says so.
    """
    imap = _attention_map(maps, image, selection)
    grid = imap.grid
    if box is not None:
        if len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
            raise TypeError(
                f"box={box!r}; expected (left, top, right, bottom) in the original image's pixels."
            )
        left, top, right, bottom = box
        if not (0 <= left < right <= grid.width and 0 <= top < bottom <= grid.height):
            raise ValueError(
                f"box={box!r} is not inside the {grid.width} x {grid.height} image; expected "
                "0 <= left < right <= width and 0 <= top < bottom <= height."
            )
    aspect = grid.height / max(grid.width, 1)
    fig = new_figure(width, width * aspect + 0.8)
    ax = fig.add_subplot(1, 1, 1)
    art = _draw_attention(
        ax, imap, source=source, blend=blend, alpha=alpha, cmap=cmap, show_grid=show_grid
    )
    if box is not None:
        patches = require("matplotlib.patches", purpose="Drawing attention maps")
        left, top, right, bottom = box
        ax.add_patch(
            patches.Rectangle(
                (left, top), right - left, bottom - top, fill=False, lw=2.0, ec="cyan", ls="--"
            )
        )
    fig.colorbar(art, ax=ax, shrink=0.8, label="density" if blend is not None else "attention")
    shown = "blend" if blend is not None else source
    ax.set_title(
        _safe_text(
            f"{imap.label} ({grid.cols}x{grid.rows} tiles, {shown})\n{imap.what}\n"
            f"({_ATTENTION_CAVEAT})"
        ),
        fontsize=8,
    )
    return fig


def tile_maps(
    maps: Any,
    *,
    image: int | str = 0,
    cmap: str = "inferno",
    alpha: float = 0.6,
    tile_width: float = 1.8,
    **selection: Any,
) -> Figure:
    """Each tile's token map over its crop, at its grid position, and the thumbnail's map.

    The grid tiles are laid out as cut (rows x cols, the original crop under each map); the
    thumbnail, when there is one, sits in an extra column on the right. Colours share one scale.
    """
    imap = _attention_map(maps, image, selection)
    grid = imap.grid
    extra = 1 if grid.has_thumbnail else 0
    fig = new_figure(tile_width * (grid.cols + extra) + 0.8, tile_width * grid.rows + 0.9)
    spec = fig.add_gridspec(grid.rows, grid.cols + extra)
    vmax = float(imap.per_tile.max()) or 1.0
    art = None
    for box in grid.boxes:
        if box.is_thumbnail:
            ax = fig.add_subplot(spec[0, grid.cols])
            title = "thumbnail"
        else:
            ax = fig.add_subplot(spec[box.row, box.col])
            title = f"tile {box.index} (r{box.row} c{box.col})"
        side = imap.side
        if imap.image is not None:
            crop = imap.image.crop(tuple(round(v) for v in box.original)).resize((224, 224))
            ax.imshow(crop, extent=(0, side, side, 0))
        art = ax.imshow(
            imap.per_tile[box.index],
            extent=(0, side, side, 0),
            cmap=cmap,
            alpha=alpha,
            vmin=0.0,
            vmax=vmax,
            interpolation="nearest",
        )
        ax.set_title(title, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    if art is not None:
        fig.colorbar(art, ax=fig.axes, shrink=0.8, label="attention")
    _suptitle(fig, f"{imap.label}: {imap.what} ({_ATTENTION_CAVEAT})", fontsize=8)
    return fig


def compare_layers(
    maps: Any,
    layers: Any,
    *,
    image: int | str = 0,
    panel_width: float = 3.2,
    **selection: Any,
) -> Figure:
    """One overlay per layer (e.g. early, middle, late), side by side, each on its own scale.

    ``layers``: language-model layer indices, each drawn once (early, middle and late of a
    two-layer model are two panels); ``selection`` as in ``AttentionMaps.map`` (``tokens``,
    ``heads``, ``reduce``, ``sinks``).
    """
    chosen = list(dict.fromkeys(maps.selected_layers(layers)))
    first = maps.map(image, layers=chosen[0], **selection)
    aspect = first.grid.height / max(first.grid.width, 1)
    fig = new_figure(panel_width * len(chosen), panel_width * aspect + 0.9)
    for k, layer in enumerate(chosen):
        imap = first if k == 0 else maps.map(image, layers=layer, **selection)
        ax = fig.add_subplot(1, len(chosen), k + 1)
        _draw_attention(ax, imap)
        ax.set_title(f"layer {layer}", fontsize=8)
    what = first.what.replace(f"layers {chosen[0]}", "per layer")
    _suptitle(fig, f"{first.label}: {what} ({_ATTENTION_CAVEAT})", fontsize=8)
    return fig


def attention_view(
    maps: Any, imap: Any, *, selection: dict[str, Any], source: str = "tiles"
) -> Figure:
    """One view of ``imap`` (an ``ImageMap`` taken from ``maps`` with ``selection``): the overlay
    on the original image, the thumbnail's own map, and the per-token share of attention that
    went to the image, with the selected tokens shaded. ``source`` is ``"tiles"``,
    ``"thumbnail"`` or ``"blend"`` (half tiles, half thumbnail). The picture behind
    :class:`vltools.widgets.AttentionExplorer`.
    """
    if source not in ("tiles", "thumbnail", "blend"):
        raise ValueError(f"source must be 'tiles', 'thumbnail' or 'blend', got {source!r}.")
    grid = imap.grid
    aspect = grid.height / max(grid.width, 1)
    fig = new_figure(9.0, max(3.0, 5.5 * aspect) + 2.6)
    spec = fig.add_gridspec(2, 3, height_ratios=[max(3.0, 5.5 * aspect), 2.4])
    ax = fig.add_subplot(spec[0, :2])
    blend = 0.5 if source == "blend" else None
    art = _draw_attention(ax, imap, source="tiles" if source == "blend" else source, blend=blend)
    fig.colorbar(art, ax=ax, shrink=0.8)
    ax.set_title(_safe_text(f"{imap.label} ({source}): {imap.what}"), fontsize=8)
    thumb_ax = fig.add_subplot(spec[0, 2])
    if imap.thumbnail is not None:
        _draw_attention(thumb_ax, imap, source="thumbnail", show_grid=False)
        thumb_ax.set_title("thumbnail's 16x16 map", fontsize=8)
    else:
        thumb_ax.set_axis_off()
        thumb_ax.set_title("(no thumbnail: one tile)", fontsize=8)
    share_ax = fig.add_subplot(spec[1, :])
    layers = selection.get("layers")
    share = maps.image_share(layers=layers, sinks=selection.get("sinks", False))
    _draw_share(share_ax, maps, share, layers=layers, highlight=selection.get("tokens"))
    share_ax.set_title("share of each token's attention that went to the image", fontsize=8)
    return fig


def image_share(
    maps: Any,
    *,
    layers: Any = None,
    heads: Any = None,
    sinks: Any = False,
    highlight: Any = None,
    width: float = 7.0,
) -> Figure:
    """How much of each generated token's attention went to the image(s), per layer.

    One thin line per selected layer and a thick line for their mean; ``highlight`` (token
    indices) shades the tokens currently shown elsewhere.
    """
    share = maps.image_share(layers=layers, heads=heads, sinks=sinks)  # [tokens, layers]
    fig = new_figure(width, 2.6)
    ax = fig.add_subplot(1, 1, 1)
    _draw_share(ax, maps, share, layers=layers, highlight=highlight)
    return fig


def _draw_share(ax: Any, maps: Any, share: Any, *, layers: Any, highlight: Any) -> None:
    import numpy as np

    x = np.arange(share.shape[0])
    chosen = maps.layers if layers is None else maps.selected_layers(layers)
    for j, layer in enumerate(chosen):
        ax.plot(x, share[:, j], lw=0.7, alpha=0.5, label=f"layer {layer}" if j < 6 else None)
    ax.plot(x, share.mean(axis=1), lw=2.2, color="black", label="mean")
    if highlight is not None:
        idx = np.atleast_1d(np.asarray(highlight))
        ax.axvspan(idx.min() - 0.5, idx.max() + 0.5, color="tab:orange", alpha=0.25)
    ax.set_xticks(x)
    ax.set_xticklabels(
        [_safe_text(repr(t)[1:-1])[:10] for t in maps.tokens], rotation=60, fontsize=6
    )
    ax.set_xlim(-0.5, share.shape[0] - 0.5)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share to image")
    ax.legend(fontsize=6, ncols=4, loc="upper right")
