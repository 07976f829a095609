"""Attention maps, the pure side: placing image-token attention back onto the original image.

Covers the "Attention maps" issue together with :mod:`vltools.attention`, which records the
attention (:func:`~vltools.attention.capture`); this module holds what was recorded and does the
arithmetic on it, with no model and no torch. :class:`AttentionMaps` aggregates (tokens, word
spans, layers, heads, sinks) and :class:`ImageMap` lays the image tokens back onto the ORIGINAL
image through the :class:`~vltools.tiling.TileGrid`; :func:`token_cell`, :func:`stitch_tiles` and
:func:`pixel_map` are the token -> tile -> cell -> pixel mapping underneath.

Geometry follows the format notes (``docs/FORMAT.md``), section 1:
after pixel shuffle (v2) each tile's 256 tokens are a 16 x 16 grid in row-major order, tiles
come in ``pixel_values`` order (grid tiles row-major, then the thumbnail), and the images of a
prompt take their ``<IMG_CONTEXT>`` runs in prompt order.

.. warning:: **Attention is not an explanation.** An attention weight says how much one
   position's value vector was mixed into one query at one layer and head; it does not say the
   answer *depends* on that region (values differ in size, later layers re-mix everything,
   residual paths bypass attention). Heavily attended "sink" tokens collect attention without
   carrying content. Read these maps as a hint of where information could have flowed, and
   test claims with interventions (masking or editing the region, comparing answers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from vltools.constants import TOKENS_PER_TILE

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from vltools.tiling import TileGrid

__all__ = [
    "AttentionMaps",
    "ImageMap",
    "ImageSlot",
    "REDUCES",
    "VisionAttention",
    "check_reduce",
    "head_positions",
    "layer_positions",
    "pixel_map",
    "reduce_heads",
    "stitch_tiles",
    "token_cell",
]

Reduce = Literal["mean", "max"]
Source = Literal["tiles", "thumbnail"]
# How heads can be reduced, for every method that takes ``reduce``.
REDUCES: tuple[str, ...] = ("mean", "max")


# --- geometry: token index -> tile -> cell -> original-image pixels (pure) ------------------


def _grid_side(tokens_per_tile: int) -> int:
    side = math.isqrt(tokens_per_tile)
    if side * side != tokens_per_tile:
        raise ValueError(
            f"tokens_per_tile={tokens_per_tile} is not a square number; a tile's tokens must "
            "form a square grid (256 = 16 x 16 for InternVL2)."
        )
    return side


def token_cell(index: int, *, tokens_per_tile: int = TOKENS_PER_TILE) -> tuple[int, int, int]:
    """``(tile, row, col)`` of an image's token ``index`` (tiles in ``pixel_values`` order).

    Each tile's tokens are a ``side x side`` grid in row-major order (``docs/FORMAT.md``, section 1:
    token ``i * 16 + j`` holds patches ``2i..2i+1`` x ``2j..2j+1`` of the 32 x 32 grid).
    """
    side = _grid_side(tokens_per_tile)
    if index < 0:
        raise ValueError(f"token index must be >= 0, got {index}.")
    tile, cell = divmod(int(index), tokens_per_tile)
    row, col = divmod(cell, side)
    return tile, row, col


def _per_tile(values: Any, grid: TileGrid) -> np.ndarray:
    """``values`` as ``[num_tiles, side, side]`` (from a flat ``[num_tiles * side**2]`` too)."""
    arr = np.asarray(values, dtype=np.float64)
    n = int(grid.num_tiles)
    if arr.ndim == 3 and arr.shape[0] == n and arr.shape[1] == arr.shape[2]:
        return arr
    if arr.ndim == 1 and arr.size % n == 0:
        side = _grid_side(arr.size // n)
        return arr.reshape(n, side, side)  # [tiles, side, side], row-major cells
    raise ValueError(
        f"Expected one value per image token for a grid of {n} tiles, i.e. an array of "
        f"[{n} * side**2] or [{n}, side, side]; got shape {arr.shape}."
    )


def stitch_tiles(values: Any, grid: TileGrid) -> tuple[np.ndarray, np.ndarray | None]:
    """Lay per-tile maps out like the tiles: ``(stitched, thumbnail)``.

    ``values``: ``[num_tiles * side**2]`` (an image's tokens in prompt order) or
    ``[num_tiles, side, side]``. Returns ``stitched`` ``[side * rows, side * cols]`` (the grid
    tiles at their row and column; a 1 x 1 grid is its only tile) and ``thumbnail``
    ``[side, side]`` or ``None`` when the grid has none.
    """
    per_tile = _per_tile(values, grid)
    side = per_tile.shape[1]
    stitched = np.zeros((side * grid.rows, side * grid.cols), dtype=per_tile.dtype)
    thumbnail = None
    for box in grid.boxes:
        if box.is_thumbnail:
            thumbnail = per_tile[box.index]
            continue
        r0, c0 = box.row * side, box.col * side
        stitched[r0 : r0 + side, c0 : c0 + side] = per_tile[box.index]
    return stitched, thumbnail


def _cells_along(centres: np.ndarray, edges: list[tuple[float, float]], side: int) -> np.ndarray:
    """Index into the stitched axis for each pixel centre, given the tiles' (lo, hi) edges."""
    los = np.array([lo for lo, _ in edges])
    his = np.array([hi for _, hi in edges])
    tile = np.clip(np.searchsorted(los, centres, side="right") - 1, 0, len(edges) - 1)
    frac = (centres - los[tile]) / (his[tile] - los[tile])
    # a centre exactly on a cell edge belongs to the cell on its right (the epsilon absorbs the
    # rounding of the float box edges)
    cell = np.clip(np.floor(frac * side + 1e-9).astype(np.int64), 0, side - 1)
    return tile * side + cell


def pixel_map(
    values: Any,
    grid: TileGrid,
    *,
    source: Source = "tiles",
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Per-token values painted onto the ORIGINAL image: ``[height, width]``.

    Each output pixel takes the value of the token whose cell covers the pixel's centre. The
    cell is found through the grid's ``TileBox.original`` rectangles, so the different scale
    factors of width and height (the image is resized to ``cols*448 x rows*448`` before it is
    cut) are respected. ``source="thumbnail"`` paints the thumbnail's grid over the whole image
    instead. ``size=(width, height)`` renders at another resolution (default: the original's).
    """
    per_tile = _per_tile(values, grid)
    side = per_tile.shape[1]
    width, height = (int(grid.width), int(grid.height)) if size is None else size
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive (width, height), got {size}.")
    xs = (np.arange(width) + 0.5) * (grid.width / width)  # pixel centres, original coordinates
    ys = (np.arange(height) + 0.5) * (grid.height / height)
    if source == "thumbnail":
        thumbs = [b for b in grid.boxes if b.is_thumbnail]
        if not thumbs:
            raise ValueError(
                f"This {grid.cols}x{grid.rows} grid has no thumbnail (a single tile, or "
                "use_thumbnail=False); use source='tiles'."
            )
        box = thumbs[0]
        left, top, right, bottom = box.original
        cx = _cells_along(xs, [(left, right)], side)
        cy = _cells_along(ys, [(top, bottom)], side)
        return per_tile[box.index][cy[:, None], cx[None, :]]
    if source != "tiles":
        raise ValueError(f"source must be 'tiles' or 'thumbnail', got {source!r}.")
    stitched, _ = stitch_tiles(per_tile, grid)
    grid_boxes = [b for b in grid.boxes if not b.is_thumbnail]
    col_edges = [(b.original[0], b.original[2]) for b in sorted(grid_boxes, key=lambda b: b.col)]
    row_edges = [(b.original[1], b.original[3]) for b in sorted(grid_boxes, key=lambda b: b.row)]
    col_edges = list(dict.fromkeys(col_edges))  # one entry per column / row, in order
    row_edges = list(dict.fromkeys(row_edges))
    cx = _cells_along(xs, col_edges, side)
    cy = _cells_along(ys, row_edges, side)
    return stitched[cy[:, None], cx[None, :]]


@dataclass(frozen=True, eq=False)
class ImageSlot:
    """One image (or video frame) of a prompt and the sequence positions of its tokens.

    Attributes:
        index: order of the image in the prompt (0-based).
        label: ``"Image-1"``, ``"Frame3"``, ...
        grid: the image's :class:`~vltools.tiling.TileGrid`.
        positions: ``[grid.num_image_tokens]`` sequence positions of its tokens, tile-major
            (``pixel_values`` order) and row-major inside each tile.
        first_tile: index of its first tile among all tiles of the prompt's ``pixel_values``.
        image: the original PIL image (for overlays), or ``None``.
    """

    index: int
    label: str
    grid: TileGrid
    positions: np.ndarray
    first_tile: int = 0
    image: Image.Image | None = field(default=None, repr=False, compare=False)

    @property
    def num_tiles(self) -> int:
        return int(self.grid.num_tiles)

    def __repr__(self) -> str:
        span = (
            f"positions {int(self.positions.min())}..{int(self.positions.max())}"
            if len(self.positions)
            else "no positions"
        )
        image = "" if self.image is None else f", image {self.image.width}x{self.image.height}"
        return (
            f"ImageSlot({self.index}, {self.label!r}, {self.grid.cols}x{self.grid.rows} grid, "
            f"{self.num_tiles} tiles from tile {self.first_tile}, {len(self.positions)} tokens "
            f"at {span}{image})"
        )

    def describe(self) -> str:
        return (
            f"{self.index} {self.label!r} ({self.grid.cols}x{self.grid.rows} grid, "
            f"{self.num_tiles} tiles, {len(self.positions)} tokens)"
        )


@dataclass(frozen=True, eq=False)
class ImageMap:
    """Attention over one image's tokens, laid out in image space.

    Attributes:
        per_tile: ``[num_tiles, side, side]`` values per tile in ``pixel_values`` order
            (``side`` is 16 for the language model's tokens, 32 for the vision tower's patches).
        grid: the image's TileGrid; label: the image's label; image: the original PIL image.
        what: a short description of the selection (for titles).
    """

    per_tile: np.ndarray
    grid: TileGrid
    label: str = ""
    image: Image.Image | None = field(default=None, repr=False, compare=False)
    what: str = ""

    @property
    def side(self) -> int:
        return int(self.per_tile.shape[1])

    def __repr__(self) -> str:
        values = self.per_tile
        span = f", values {values.min():.3g}..{values.max():.3g}" if values.size else ""
        thumb = " + thumbnail" if self.grid.has_thumbnail else ""
        what = f", {self.what!r}" if self.what else ""
        return (
            f"ImageMap({self.label!r}, per_tile={tuple(values.shape)} {values.dtype}, "
            f"{self.grid.cols}x{self.grid.rows} grid{thumb}{span}{what})"
        )

    @property
    def tiles(self) -> np.ndarray:
        """``[side * rows, side * cols]``: the grid tiles stitched (the single tile for 1 x 1)."""
        return stitch_tiles(self.per_tile, self.grid)[0]

    @property
    def thumbnail(self) -> np.ndarray | None:
        """``[side, side]``: the thumbnail's map (covers the whole image), or ``None``."""
        return stitch_tiles(self.per_tile, self.grid)[1]

    def pixels(
        self,
        *,
        source: Source = "tiles",
        size: tuple[int, int] | None = None,
        blend: float | None = None,
    ) -> np.ndarray:
        """``[height, width]`` map on the original image (see :func:`pixel_map`).

        ``blend=w`` (0..1, needs a thumbnail) mixes the tiles' and the thumbnail's maps as
        densities: each is divided by its total so it sums to 1 over the pixels, then
        ``(1 - w) * tiles + w * thumbnail``. Without ``blend`` the values are the raw
        per-token attention of ``source``.
        """
        if blend is None:
            return pixel_map(self.per_tile, self.grid, source=source, size=size)
        if not 0.0 <= blend <= 1.0:
            raise ValueError(
                f"blend must be between 0 and 1 (the thumbnail's weight), got {blend}."
            )
        tiles = pixel_map(self.per_tile, self.grid, source="tiles", size=size)
        thumb = pixel_map(self.per_tile, self.grid, source="thumbnail", size=size)
        return (1.0 - blend) * _density(tiles) + blend * _density(thumb)


def _density(values: np.ndarray) -> np.ndarray:
    total = float(values.sum())
    return values / total if total > 0 else np.zeros_like(values)


# --- selecting layers and heads (one path for the language model and the vision tower) -----


def _as_indices(selection: Any, name: str) -> list[int]:
    """An int or a sequence of ints as a list; anything else is a ``TypeError``."""
    if isinstance(selection, (int, np.integer)) and not isinstance(selection, bool):
        return [int(selection)]
    if isinstance(selection, (str, bytes, bool)) or not hasattr(selection, "__iter__"):
        raise TypeError(
            f"{name} must be None (all), an int or a sequence of ints, got {selection!r}."
        )
    items = list(selection)
    bad = [x for x in items if isinstance(x, bool) or not isinstance(x, (int, np.integer))]
    if bad:
        raise TypeError(f"{name} must hold ints, got {bad[0]!r} in {selection!r}.")
    return [int(x) for x in items]


def layer_positions(captured: Sequence[int], layers: Any, *, tower: str = "") -> np.ndarray:
    """Positions in ``captured`` (the recorded layer indices) of the ``layers`` selected.

    ``layers``: None (all captured), a layer index, or several. ``tower`` is ``""`` for the
    language model, ``"vision"`` for the vision tower (it names the layers in errors and the
    ``capture`` argument that records them). Raises ``ValueError`` naming the bad layer and the
    captured ones, ``TypeError`` for a selection that is not ints.
    """
    if layers is None:
        return np.arange(len(captured))
    label = f"{tower} layer" if tower else "layer"
    argument = f"{tower}_layers" if tower else "layers"
    captured = list(captured)
    wanted = _as_indices(layers, argument)
    if not wanted:
        raise ValueError(
            f"Empty {label} selection; captured {label}s: {captured}. Pass None for all of them."
        )
    for layer in wanted:
        if layer not in captured:
            raise ValueError(
                f"{label.capitalize()} {layer} was not captured; captured {label}s: {captured}. "
                f"Pick one of them, or capture it with capture(..., {argument}=[...])."
            )
    return np.array([captured.index(layer) for layer in wanted])


def head_positions(num_heads: int, heads: Any, *, tower: str = "") -> np.ndarray:
    """The head indices ``heads`` selects among ``num_heads`` (None: all), validated.

    Raises ``ValueError`` naming the bad head and the range ``0..num_heads - 1``, ``TypeError``
    for a selection that is not ints. Negative heads are refused (not counted from the end).
    """
    if heads is None:
        return np.arange(num_heads)
    owner = "the vision tower" if tower == "vision" else "the language model"
    wanted = _as_indices(heads, "heads")
    bad = [x for x in wanted if not 0 <= x < num_heads]
    if bad or not wanted:
        raise ValueError(
            f"Head {bad[0] if bad else wanted} does not exist: {owner} has {num_heads} heads "
            f"per layer (0..{num_heads - 1})."
        )
    return np.array(wanted)


def reduce_heads(values: np.ndarray, reduce: str, *, axis: int) -> np.ndarray:
    """``values`` with the heads axis reduced by ``reduce`` (one of :data:`REDUCES`)."""
    check_reduce(reduce)
    return values.mean(axis=axis) if reduce == "mean" else values.max(axis=axis)


def check_reduce(reduce: Any) -> None:
    """Raise ``ValueError`` unless ``reduce`` is one of :data:`REDUCES`."""
    if not isinstance(reduce, str) or reduce not in REDUCES:
        raise ValueError(
            f"reduce must be one of {REDUCES} (how the selected heads are combined), got "
            f"{reduce!r}. Pick one head with heads=k instead of reducing."
        )


# --- the captured result --------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class VisionAttention:
    """The vision tower's CLS attention over the patches of every tile.

    Attributes:
        cls: ``[tiles, layers, heads, 32, 32]`` float32: the CLS query's softmax over the
            1024 patch keys (the CLS key itself left out, so a row sums to 1 minus CLS's own
            share), tiles in ``pixel_values`` order over all images of the prompt.
        layers: vision-tower layer index of each entry on axis 1.
    """

    cls: np.ndarray
    layers: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class AttentionMaps:
    """What :func:`capture` recorded: each generated token's attention, per layer and head.

    Only what the maps need is kept: per generated token, layer and head, the attention on
    each image token and the total on every other position (text, special tokens, earlier
    generated tokens), so the size grows with the image tokens, not with the prompt's length.

    Attributes:
        weights: ``[tokens, layers, heads, image tokens + 1]``. ``weights[t]`` is the attention
            of the query that produced generated token ``t`` (the position just before it):
            columns ``0 .. image tokens - 1`` on the image tokens (:attr:`image_positions`, all
            images in prompt order), the last column the total on all other positions ("rest").
            Each row sums to 1. Stored in float32 by default (``capture(..., store_dtype=)``
            may choose float16); scores and softmax were computed in float32 either way, and
            every aggregate is computed in float32.
        layers: language-model layer index of each entry on axis 1.
        token_ids: ``[tokens]`` the generated (or teacher-forced) token ids.
        tokens: the text of each token, decoded alone.
        text: the whole answer decoded; offsets: ``tokens + 1`` character offsets of each
            token's start in ``text`` (last = ``len(text)``).
        prompt_length: number of prompt positions.
        images: one :class:`ImageSlot` per image or frame, in prompt order.
        vision: the vision tower's CLS attention, or ``None`` if not captured.
        mode: ``"generate"`` or ``"teacher"``.

    Attention on a single text position is not kept (only the rest's total): sinks are found
    and removed among the image tokens, see :meth:`sinks`.

    Attention is not an explanation: see the module docstring.
    """

    weights: np.ndarray
    layers: tuple[int, ...]
    token_ids: np.ndarray
    tokens: tuple[str, ...]
    text: str
    offsets: tuple[int, ...]
    prompt_length: int
    images: tuple[ImageSlot, ...]
    vision: VisionAttention | None = None
    mode: str = "generate"

    def __post_init__(self) -> None:
        shape = getattr(self.weights, "shape", ())
        columns = len(self.image_positions) + 1
        if len(shape) != 4 or shape[3] != columns or shape[1] != len(self.layers):
            raise ValueError(
                f"weights must be [tokens, layers={len(self.layers)}, heads, image tokens + 1 = "
                f"{columns}] (the image columns, then the rest's total); got shape {shape}."
            )

    # sizes and positions

    @property
    def num_tokens(self) -> int:
        return int(self.weights.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.weights.shape[2])

    @property
    def num_image_tokens(self) -> int:
        return int(self.weights.shape[3]) - 1

    @property
    def image_weights(self) -> np.ndarray:
        """``[tokens, layers, heads, image tokens]``: the attention on each image token."""
        return self.weights[..., :-1]

    @property
    def rest(self) -> np.ndarray:
        """``[tokens, layers, heads]``: the attention on every position that is not an image token."""
        return self.weights[..., -1]

    @property
    def image_positions(self) -> np.ndarray:
        """``[image tokens]`` sequence positions of all images' tokens, in prompt order."""
        if not self.images:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([s.positions for s in self.images])

    def __repr__(self) -> str:
        imgs = ", ".join(f"{s.label} {s.grid.cols}x{s.grid.rows}" for s in self.images)
        return (
            f"AttentionMaps({self.num_tokens} tokens x {len(self.layers)} layers x "
            f"{self.num_heads} heads, {self.num_image_tokens} image tokens + rest of "
            f"{self.prompt_length} prompt positions, {self.weights.dtype} "
            f"{self.weights.nbytes / 2**20:.1f} MiB, images=[{imgs}], "
            f"vision={'yes' if self.vision is not None else 'no'}, mode={self.mode!r}, "
            f"text={self.text!r})"
        )

    # selection

    def find(self, text: str, *, occurrence: int = 0) -> range:
        """The generated tokens that spell ``text`` (a word may be several tokens)."""
        start = -1
        for _ in range(occurrence + 1):
            start = self.text.find(text, start + 1)
            if start < 0:
                raise ValueError(
                    f"{text!r} (occurrence {occurrence}) is not in the generated text "
                    f"{self.text!r}. Pick a word from it, or pass token indices "
                    f"0..{self.num_tokens - 1}."
                )
        end = start + len(text)
        hit = [
            t
            for t in range(self.num_tokens)
            if self.offsets[t] < end and self.offsets[t + 1] > start
        ]
        return range(hit[0], hit[-1] + 1)

    def _token_index(self, tokens: Any) -> np.ndarray:
        n = self.num_tokens
        if tokens is None:
            return np.arange(n)
        if isinstance(tokens, str):
            return np.array(self.find(tokens))
        idx = (
            np.arange(n)[tokens] if isinstance(tokens, slice) else np.atleast_1d(np.asarray(tokens))
        )
        if idx.size == 0:
            raise ValueError(
                f"The token selection {tokens!r} is empty; this capture has {n} generated "
                f"tokens (0..{n - 1})."
            )
        if idx.dtype.kind not in "iu":
            raise TypeError(
                f"tokens must be an int, a range/slice, a sequence of ints or a word, got "
                f"{tokens!r}."
            )
        bad = [int(i) for i in idx if not -n <= i < n]
        if bad:
            shown = ", ".join(f"{i}:{t!r}" for i, t in enumerate(self.tokens[:40]))
            raise ValueError(
                f"Token index {bad[0]} is out of range: this capture has {n} generated tokens "
                f"(0..{n - 1}): {shown}{' ...' if n > 40 else ''}."
            )
        return idx % n

    def selected_layers(self, layers: Any = None) -> tuple[int, ...]:
        """The captured layer indices a ``layers`` selection names (validated)."""
        return tuple(self.layers[i] for i in layer_positions(self.layers, layers))

    def _image_slot(self, image: int | str) -> ImageSlot:
        for slot in self.images:
            if image == slot.index or image == slot.label:
                return slot
        listing = "; ".join(s.describe() for s in self.images) or "none"
        raise ValueError(
            f"No image {image!r} in this prompt. Its images: {listing}. Pass image= one of "
            "those indices or labels."
        )

    # sinks

    def sinks(self, *, factor: float = 20.0) -> tuple[int, ...]:
        """Image-token sequence positions that act as attention sinks.

        An image token is a sink when, averaged over the captured tokens, layers and heads, it
        receives more than ``factor`` times the attention of the median image token (a few
        high-norm image tokens typically do). Text positions are kept only as the rest's
        total, so a text sink (often the prompt's first token) is never listed: it lies in
        the rest, outside every image map.
        """
        if self.num_image_tokens == 0:
            return ()
        mean = self.image_weights.mean(axis=(0, 1, 2), dtype=np.float64)  # [image tokens]
        median = float(np.median(mean))
        hit = np.flatnonzero(mean > factor * max(median, 1e-12))
        return tuple(int(p) for p in self.image_positions[hit])

    def _sink_columns(self, sinks: bool | Sequence[int] | None) -> np.ndarray:
        """Column indices (into the image columns) of the sink positions to remove."""
        if sinks is False or sinks is None:
            return np.zeros(0, dtype=np.int64)
        wanted = self.sinks() if sinks is True else [int(p) for p in sinks]
        positions = self.image_positions
        column = {int(p): i for i, p in enumerate(positions)}
        missing = [p for p in wanted if p not in column]
        if missing:
            span = (
                f"image tokens lie at {int(positions.min())}..{int(positions.max())}"
                if positions.size
                else "this prompt has no image tokens"
            )
            raise ValueError(
                f"Sink position {missing[0]} is not an image token ({span}); the capture keeps "
                "text positions only as one total (the rest), so only image tokens can be "
                "removed as sinks. Pass image-token positions, or sinks=True."
            )
        return np.array([column[p] for p in wanted], dtype=np.int64)

    def select(
        self,
        *,
        tokens: Any = None,
        layers: Any = None,
        heads: Any = None,
        sinks: bool | Sequence[int] = False,
    ) -> np.ndarray:
        """``[tokens, layers, heads, image tokens + 1]`` float32 weights for the selection.

        Columns as in :attr:`weights` (the image tokens, then the rest). ``tokens``: None
        (all), an int, a range/slice, a sequence of ints, or a word of the answer (its
        tokens). ``layers``: None (all captured), a layer index, or several. ``heads``: None
        (all), an int or several. ``sinks``: ``True`` removes the detected :meth:`sinks`, a
        sequence removes those image-token positions; removed columns are set to 0 and each
        row is renormalised over the remaining positions (``row / (1 - sink share)``).
        """
        t = self._token_index(tokens)
        ly = layer_positions(self.layers, layers)
        h = head_positions(self.num_heads, heads)
        rows = self.weights[np.ix_(t, ly, h)].astype(np.float32, copy=False)  # [t, l, h, cols]
        drop = self._sink_columns(sinks)
        if drop.size:
            rows = rows.copy()
            share = rows[..., drop].sum(axis=-1, keepdims=True)
            rows[..., drop] = 0.0
            rest = 1.0 - share
            rows = np.divide(rows, rest, out=np.zeros_like(rows), where=rest > 1e-12)
        return rows

    # aggregation

    def image_attention(
        self,
        *,
        tokens: Any = None,
        layers: Any = None,
        heads: Any = None,
        reduce: Reduce = "mean",
        sinks: bool | Sequence[int] = False,
    ) -> np.ndarray:
        """``[image tokens]`` attention to each image token, all images in prompt order.

        Heads are reduced with ``reduce`` (``"mean"`` or ``"max"``; pick one head with
        ``heads=k``), then layers and tokens are averaged. Selection as in :meth:`select`.
        """
        check_reduce(reduce)
        rows = self.select(tokens=tokens, layers=layers, heads=heads, sinks=sinks)
        img = rows[..., :-1]  # [t, l, h, image tokens]
        return reduce_heads(img, reduce, axis=2).mean(axis=(0, 1))  # [image tokens]

    def image_share(
        self,
        *,
        layers: Any = None,
        heads: Any = None,
        sinks: bool | Sequence[int] = False,
    ) -> np.ndarray:
        """``[tokens, layers]`` share of each token's attention that went to any image token.

        Averaged over the selected heads; with ``sinks`` the sink positions are removed from
        both the image and the total first (so the share is among non-sink positions).
        """
        rows = self.select(layers=layers, heads=heads, sinks=sinks)
        return rows[..., :-1].sum(axis=-1).mean(axis=2)

    def map(
        self,
        image: int | str = 0,
        *,
        tokens: Any = None,
        layers: Any = None,
        heads: Any = None,
        reduce: Reduce = "mean",
        sinks: bool | Sequence[int] = False,
    ) -> ImageMap:
        """One image's (or frame's) map for the selection (see :meth:`image_attention`)."""
        slot = self._image_slot(image)
        values = self.image_attention(
            tokens=tokens, layers=layers, heads=heads, reduce=reduce, sinks=sinks
        )
        offset = sum(len(s.positions) for s in self.images[: slot.index])
        mine = values[offset : offset + len(slot.positions)]
        what = self._describe(tokens, layers, heads, reduce, sinks)
        return ImageMap(_per_tile(mine, slot.grid), slot.grid, slot.label, slot.image, what)

    def maps(self, **selection: Any) -> tuple[ImageMap, ...]:
        """One :class:`ImageMap` per image or video frame, same selection for all."""
        return tuple(self.map(s.index, **selection) for s in self.images)

    def vision_map(
        self,
        image: int | str = 0,
        *,
        layers: Any = None,
        heads: Any = None,
        reduce: Reduce = "mean",
    ) -> ImageMap:
        """The vision tower's CLS attention over one image's tiles (32 x 32 per tile).

        ``layers`` are vision-tower layer indices (averaged); heads reduced by ``reduce``.
        Selection and its errors as in :meth:`select` (:func:`layer_positions`,
        :func:`head_positions`, :func:`reduce_heads`).
        """
        check_reduce(reduce)
        if self.vision is None:
            raise ValueError(
                "The vision tower's attention was not captured: use capture(..., vision=True) "
                "and run the pass with pixel_values (not cached image features)."
            )
        slot = self._image_slot(image)
        v = self.vision
        ly = layer_positions(v.layers, layers, tower="vision")
        h = head_positions(v.cls.shape[2], heads, tower="vision")
        mine = v.cls[slot.first_tile : slot.first_tile + slot.num_tiles]  # [tiles, L, H, 32, 32]
        tiles = mine[np.ix_(np.arange(slot.num_tiles), ly, h)]  # [tiles, l, h, 32, 32]
        per_head = reduce_heads(tiles, reduce, axis=2)  # [tiles, l, 32, 32]
        what = f"vision CLS, layers {_span(layers)}, heads {_span(heads)} ({reduce})"
        return ImageMap(per_head.mean(axis=1), slot.grid, slot.label, slot.image, what)

    def _describe(self, tokens: Any, layers: Any, heads: Any, reduce: str, sinks: Any) -> str:
        if tokens is None:
            tok = "all tokens"
        elif isinstance(tokens, str):
            tok = f"{tokens!r}"
        else:
            idx = self._token_index(tokens)
            tok = "+".join(repr(self.tokens[i]) for i in idx[:6]) + ("…" if len(idx) > 6 else "")
        parts = [tok, f"layers {_span(layers)}", f"heads {_span(heads)} ({reduce})"]
        if sinks is not False and sinks is not None:
            parts.append("sinks removed")
        return ", ".join(parts)


def _span(sel: Any) -> str:
    if sel is None:
        return "all"
    if isinstance(sel, (int, np.integer)):
        return str(int(sel))
    items = list(sel)
    if len(items) > 2 and items == list(range(items[0], items[-1] + 1)):
        return f"{items[0]}-{items[-1]}"
    return ",".join(str(x) for x in items)
