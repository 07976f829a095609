"""InternVL's dynamic tiling: which grid of 448-pixel tiles an image gets, and why.

Follows the model card's Quick Start (``find_closest_aspect_ratio`` and the geometry of
``dynamic_preprocess``) and section 1 of the format notes, ``docs/FORMAT.md``. The card is the behavioural specification; this
is an independent implementation of it.

:func:`plan_tiles` is the geometry. From the image's width and height alone it lists every
grid ``cols x rows`` with ``min_num <= cols * rows <= max_num``, picks the one whose aspect
ratio ``cols / rows`` is closest to the image's, and returns a :class:`TileGrid` that keeps
everything: the candidates with their errors (so the choice, and the tie-break, can be
shown), each tile's box in the resized canvas and in the original image, and the cost in
image tokens. No pixels are touched; :mod:`vltools.images` does the pixels.

Exactness. The grid is the card's for every input: the aspect-ratio error is the same
floating-point expression, ties are broken by the same rule (a later, larger grid replaces an
equally close one only when the image's area exceeds half of that grid's pixel area), and
candidates are visited in the card's order, including its order among grids with the same
tile count (which matters only when ``min_num > 1``; see :func:`_card_candidate_order`).
``tests/test_tiling.py`` matches all 4,500 rows of ``tests/reference/tiling_grids.tsv``.

Bounded work. The card enumerates ``max_num**2`` grids; beyond :data:`FULL_CANDIDATES_LIMIT`
this module visits only the grids nearest the image's ratio per row and per column count
(``O(sqrt(max_num))``), which always include the winner and every grid tied with it, so the
choice is unchanged (checked against the card in ``tests/test_tiling_bounded.py``).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vltools._optional import require
from vltools.constants import (
    CONTEXT_LENGTH,
    DEFAULT_MAX_NUM,
    DEFAULT_MIN_NUM,
    DOWNSAMPLE_RATIO,
    PATCH_SIZE,
    TILE_SIZE,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "Candidate",
    "TileBox",
    "TileGrid",
    "check_tile_settings",
    "plan_tiles",
    "token_costs",
]

# Pixel shuffle merges 2 x 2 patches into one token: a tile side must be an even number of
# 14-pixel patches.
_SIDE_MULTIPLE = int(round(PATCH_SIZE / DOWNSAMPLE_RATIO))


@dataclass(frozen=True)
class Candidate:
    """One grid the choice considered, in the order the card visits them.

    Attributes:
        order: position in the visiting order (0 first).
        cols, rows: the grid; ``num_tiles = cols * rows`` (without the thumbnail).
        aspect_ratio: ``cols / rows``.
        error: ``abs(width / height - cols / rows)``, the card's float expression.
        decision: what the running choice did on reaching this grid: ``"first"`` (the first
            candidate), ``"closer"`` (strictly smaller error: becomes the best so far),
            ``"tie-taken"`` (same error as the best so far, taken because the image's area
            exceeds half of this grid's pixel area), ``"tie-kept"`` (same error, not taken:
            the image is too small to fill more than half of this grid), or ``"farther"``.
        is_winner: whether this is the chosen grid.
    """

    order: int
    cols: int
    rows: int
    num_tiles: int
    aspect_ratio: float
    error: float
    decision: str
    is_winner: bool


@dataclass(frozen=True)
class TileBox:
    """Where one tile of ``pixel_values`` comes from.

    Attributes:
        index: the tile's position in ``pixel_values`` (grid tiles row-major, thumbnail last).
        row, col: the tile's place in the grid; ``None`` for the thumbnail.
        is_thumbnail: whether this is the whole-image thumbnail.
        canvas: ``(left, top, right, bottom)`` in pixels of the resized canvas
            (``cols * image_size`` by ``rows * image_size``); the thumbnail's is
            ``(0, 0, image_size, image_size)`` of its own canvas.
        original: the same box in original-image pixel coordinates (floats, right/bottom
            exclusive); the thumbnail's is the whole image.
    """

    index: int
    row: int | None
    col: int | None
    is_thumbnail: bool
    canvas: tuple[int, int, int, int]
    original: tuple[float, float, float, float]


@dataclass(frozen=True)
class TileGrid:
    """The tiling of one ``width x height`` image: the grid, every tile's box, and the cost.

    Attributes:
        width, height: the original image's size in pixels.
        cols, rows: the chosen grid.
        image_size: the tile side in pixels (448 for InternVL2).
        min_num, max_num, use_thumbnail: the settings it was planned with.
        has_thumbnail: a thumbnail is added when ``use_thumbnail`` and the grid has more than
            one tile (the card's rule).
        num_tiles: ``cols * rows`` plus one for the thumbnail: the first dimension of
            ``pixel_values`` and the tile count the chat API wants (its ``num_patches_list`` entry).
        boxes: ``num_tiles`` :class:`TileBox`, in ``pixel_values`` order.
        candidates: every grid considered, in the card's visiting order (:class:`Candidate`);
            see ``all_candidates``.
        tokens_per_tile: image tokens per tile, ``(image_size / 14) ** 2 / 4`` = 256.
        num_image_tokens: ``num_tiles * tokens_per_tile``.
        canvas_size: ``(cols * image_size, rows * image_size)``, what the image is resized to.
        all_candidates: whether ``candidates`` lists every grid (``max_num`` up to
            :data:`FULL_CANDIDATES_LIMIT`); beyond that only the grids nearest the image's ratio
            from each side, per row and per column count (about ``4 * sqrt(max_num)``), which
            include the winner and every grid tied with it, so the choice is the same.
    """

    width: int
    height: int
    cols: int
    rows: int
    image_size: int
    min_num: int
    max_num: int
    use_thumbnail: bool
    has_thumbnail: bool
    num_tiles: int
    boxes: tuple[TileBox, ...]
    candidates: tuple[Candidate, ...]
    tokens_per_tile: int
    num_image_tokens: int
    canvas_size: tuple[int, int]
    all_candidates: bool = True

    @property
    def aspect_ratio(self) -> float:
        """The image's aspect ratio ``width / height`` (the card's float)."""
        return self.width / self.height

    @property
    def winner(self) -> Candidate:
        """The chosen :class:`Candidate`."""
        return next(c for c in self.candidates if c.is_winner)

    @property
    def context_share(self) -> float:
        """``num_image_tokens`` as a share of InternVL2-1B's 8,192-token context."""
        return self.num_image_tokens / CONTEXT_LENGTH

    def explain(self) -> str:
        """Why this grid won, in a sentence or two (for captions and the explorer)."""
        return _explain(self)

    def summary(self) -> str:
        """One line: grid, tile count and image-token cost."""
        thumb = " + thumbnail" if self.has_thumbnail else ""
        tiles = "tile" if self.num_tiles == 1 else "tiles"
        return (
            f"{self.width}x{self.height} -> {self.cols}x{self.rows} grid{thumb} = "
            f"{self.num_tiles} {tiles} x {self.tokens_per_tile} = "
            f"{self.num_image_tokens:,} image tokens ({self.context_share:.1%} of "
            f"{CONTEXT_LENGTH:,})"
        )

    def __repr__(self) -> str:
        return (
            f"TileGrid({self.width}x{self.height}, grid {self.cols}x{self.rows}, "
            f"num_tiles={self.num_tiles}, has_thumbnail={self.has_thumbnail}, "
            f"num_image_tokens={self.num_image_tokens}, min_num={self.min_num}, "
            f"max_num={self.max_num}, {len(self.candidates)} candidates)"
        )

    def _repr_html_(self) -> str:
        return _grid_html(self)


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    return operator.index(value)


def check_tile_settings(min_num: Any, max_num: Any, image_size: Any) -> tuple[int, int, int]:
    """``(min_num, max_num, image_size)`` as ints, checked as :func:`plan_tiles` needs them.

    Raises ``TypeError`` for a non-integer and ``ValueError`` (saying the fix) for
    ``min_num < 1``, ``max_num`` above :data:`MAX_NUM_LIMIT` or below ``min_num``, and an
    ``image_size`` that is not a positive multiple of 28.
    """
    min_num = _as_int(min_num, "min_num")
    max_num = _as_int(max_num, "max_num")
    image_size = _as_int(image_size, "image_size")
    if min_num < 1:
        raise ValueError(
            f"min_num must be at least 1 (a grid has at least one tile), got {min_num}. "
            "Use min_num=1, the model's default."
        )
    if max_num > MAX_NUM_LIMIT:
        raise ValueError(
            f"max_num={max_num:,} is above the limit of {MAX_NUM_LIMIT:,} tiles plan_tiles "
            "accepts (each tile is a 448 x 448 crop; the model's context holds about 30). "
            "Lower max_num."
        )
    if max_num < min_num:
        raise ValueError(
            f"max_num ({max_num}) is smaller than min_num ({min_num}): no grid fits. "
            f"Raise max_num to at least {min_num} or lower min_num."
        )
    if image_size < _SIDE_MULTIPLE or image_size % _SIDE_MULTIPLE:
        lower = max(_SIDE_MULTIPLE, image_size // _SIDE_MULTIPLE * _SIDE_MULTIPLE)
        raise ValueError(
            f"image_size must be a positive multiple of {_SIDE_MULTIPLE} (InternViT's "
            f"{PATCH_SIZE}-pixel patches, merged 2 x 2 by the pixel shuffle), got {image_size}. "
            f"InternVL2 is trained at {TILE_SIZE}; nearest allowed sizes: {lower}, "
            f"{lower + _SIDE_MULTIPLE}."
        )
    return min_num, max_num, image_size


@functools.lru_cache(maxsize=16)
def _card_candidate_order(min_num: int, max_num: int) -> tuple[tuple[int, int], ...]:
    """All grids ``(cols, rows)`` with ``min_num <= cols * rows <= max_num``, in the card's order.

    The card collects the grids in a Python ``set`` and sorts them by tile count; ``sorted``
    is stable, so grids with the same tile count keep the set's iteration order. That order
    decides a tie between two equally close grids of the same tile count. With ``min_num == 1``
    such a tie never decides anything (a grid with fewer tiles always lies strictly between
    two equal-count grids and wins first), but with ``min_num > 1`` it can. A set's iteration
    order depends on the order in which its distinct elements were first added, so this adds
    the grids to a set in the card's first-insertion order (tile budget ``n`` rising, then
    ``cols``, then ``rows``; a grid first appears at ``n = max(min_num, cols, rows)``) and
    sorts the same way. Its work is proportional to the number of grids (about
    ``max_num * ln(max_num)``), so it is used only up to :data:`FULL_ORDER_LIMIT`.
    """
    grids: set[tuple[int, int]] = set()
    n0 = min_num
    for i in range(1, n0 + 1):  # every grid inside n0 x n0 appears for the first time here
        for j in range(1, min(n0, max_num // i) + 1):
            if i * j >= min_num:
                grids.add((i, j))
    for n in range(n0 + 1, max_num + 1):  # only grids with n as a side are new
        for i in range(max(1, -(-min_num // n)), min(n - 1, max_num // n) + 1):
            grids.add((i, n))
        for j in range(max(1, -(-min_num // n)), min(n, max_num // n) + 1):
            grids.add((n, j))
    return tuple(sorted(grids, key=lambda grid: grid[0] * grid[1]))


# plan_tiles lists every candidate grid up to this max_num (the explorer shows them); beyond it,
# only the grids nearest the image's ratio (which include the winner and all its ties).
FULL_CANDIDATES_LIMIT = 64
# Up to this max_num the card's exact set order among equal tile counts is reproduced; beyond
# it an exact tie between two grids of the same tile count (possible only with min_num > 1)
# is broken by the grid with fewer columns first (the card's set order is a hash artifact).
FULL_ORDER_LIMIT = 4096
# The largest max_num plan_tiles accepts: the work grows with sqrt(max_num).
MAX_NUM_LIMIT = 10**7
# The most tiles a chosen grid may have: plan_tiles describes every tile (a TileBox each).
MAX_GRID_TILES = 100_000


def _nearest_grids(width: int, height: int, min_num: int, max_num: int) -> set[tuple[int, int]]:
    """Grids that include every grid whose ratio error is the smallest, in O(sqrt(max_num)).

    Any grid has ``min(cols, rows) <= sqrt(max_num)``. For each row count ``r`` up to that
    bound, the column counts nearest ``r * width / height`` from below and from above (within
    the tile budget) are the only ones of that row count that can be closest on their side;
    likewise for each column count. Exact integer arithmetic; float ties (the card compares
    floats) are caught by :func:`_closest_grids`, which widens around the minimum.
    """
    root = math.isqrt(max_num)
    found: set[tuple[int, int]] = set()
    for r in range(1, root + 1):
        lo, hi = max(1, -(-min_num // r)), max_num // r
        if lo > hi:
            continue
        below = width * r // height  # largest c with c / r <= width / height
        for c in (below, below + 1):
            found.add((min(max(c, lo), hi), r))
    for c in range(1, root + 1):
        lo, hi = max(1, -(-min_num // c)), max_num // c
        if lo > hi:
            continue
        below = c * height // width  # largest r with c / r >= width / height (r >= 1 below)
        for r in (below, below + 1):
            found.add((c, min(max(r, lo), hi)))
    return found


def _closest_grids(width: int, height: int, min_num: int, max_num: int) -> set[tuple[int, int]]:
    """Every grid whose card error ``abs(width / height - cols / rows)`` is the smallest."""
    aspect = width / height
    near = _nearest_grids(width, height, min_num, max_num)
    best = min(abs(aspect - c / r) for c, r in near)
    tied = {g for g in near if abs(aspect - g[0] / g[1]) == best}
    # float rounding can make neighbouring grids compare equal: walk out from each tie
    todo = list(tied)
    while todo:
        c, r = todo.pop()
        for g in ((c - 1, r), (c + 1, r), (c, r - 1), (c, r + 1)):
            if (
                g not in tied
                and g[0] >= 1
                and g[1] >= 1
                and min_num <= g[0] * g[1] <= max_num
                and abs(aspect - g[0] / g[1]) == best
            ):
                tied.add(g)
                todo.append(g)
    return tied


def _visiting_order(grids: set[tuple[int, int]], min_num: int, max_num: int) -> list:
    """``grids`` in the card's visiting order (exact set order up to FULL_ORDER_LIMIT)."""
    if max_num <= FULL_ORDER_LIMIT:
        rank = {g: k for k, g in enumerate(_card_candidate_order(min_num, max_num))}
        return sorted(grids, key=rank.__getitem__)
    return sorted(grids, key=lambda g: (g[0] * g[1], g[0]))


def _candidate_grids(
    width: int, height: int, min_num: int, max_num: int
) -> tuple[tuple[tuple[int, int], ...], bool]:
    """The grids plan_tiles lists, in the card's order, and whether that is all of them."""
    if max_num <= FULL_CANDIDATES_LIMIT:
        return _card_candidate_order(min_num, max_num), True
    grids = _nearest_grids(width, height, min_num, max_num) | _closest_grids(
        width, height, min_num, max_num
    )
    return tuple(_visiting_order(grids, min_num, max_num)), False


def _choose(
    width: int, height: int, order: tuple[tuple[int, int], ...], image_size: int
) -> tuple[int, list[tuple[float, str]]]:
    """Index of the chosen grid in ``order`` and, per grid, its error and the decision."""
    aspect = width / height  # the card's float
    area = width * height
    best_error = float("inf")
    best = 0
    notes: list[tuple[float, str]] = []
    for k, (cols, rows) in enumerate(order):
        error = abs(aspect - cols / rows)
        if error < best_error:
            decision = "first" if k == 0 else "closer"
            best_error, best = error, k
        elif error == best_error:
            # The card: area > 0.5 * image_size**2 * cols * rows, exact here in integers.
            if 2 * area > image_size * image_size * cols * rows:
                decision, best = "tie-taken", k
            else:
                decision = "tie-kept"
        else:
            decision = "farther"
        notes.append((error, decision))
    return best, notes


def plan_tiles(
    width: int,
    height: int,
    *,
    min_num: int = DEFAULT_MIN_NUM,
    max_num: int = DEFAULT_MAX_NUM,
    image_size: int = TILE_SIZE,
    use_thumbnail: bool = True,
) -> TileGrid:
    """Choose the grid of tiles for a ``width x height`` image, the way the model card does.

    Pure arithmetic on the two sizes; no pixels. Every grid ``cols x rows`` with
    ``min_num <= cols * rows <= max_num`` is a candidate; the winner is the one whose aspect
    ratio ``cols / rows`` is closest to ``width / height``. On an exact tie the grid visited
    later (more or equally many tiles) wins only if the image has more pixels than half of
    that grid's canvas (``width * height > 0.5 * image_size**2 * cols * rows``), so a small
    image is not blown up to many tiles.

    Args:
        width, height: the image's size in pixels (at least 1 each).
        min_num, max_num: bounds on ``cols * rows`` (the thumbnail is not counted).
            ``max_num=12`` is InternVL2-1B's own ``max_dynamic_patch`` (its config); the model
            card's examples pass ``max_num=6``. Any ``max_num`` from ``min_num`` up to
            :data:`MAX_NUM_LIMIT` (10**7) works; the work grows with ``sqrt(max_num)``.
        image_size: the tile side, a multiple of 28 (448 for InternVL2).
        use_thumbnail: add a ``image_size`` square thumbnail of the whole image after the
            tiles when the grid has more than one tile (InternVL2's config: True).

    Returns:
        A :class:`TileGrid`; ``grid.num_tiles`` is the chat API's ``num_patches_list`` entry and
        ``grid.candidates`` shows the choice.

    Raises:
        ValueError: a size below 1, ``min_num < 1``, ``max_num < min_num``, ``max_num`` above
            :data:`MAX_NUM_LIMIT`, a chosen grid of more than :data:`MAX_GRID_TILES` tiles, or
            an ``image_size`` that is not a multiple of 28.
        TypeError: a non-integer argument.
    """
    width = _as_int(width, "width")
    height = _as_int(height, "height")
    if width < 1 or height < 1:
        raise ValueError(
            f"The image is {width}x{height} pixels; width and height must both be at least 1. "
            "Check that the image was decoded (an empty array or a zero-size crop has no tiles)."
        )
    min_num, max_num, image_size = check_tile_settings(min_num, max_num, image_size)
    use_thumbnail = bool(use_thumbnail)

    order, complete = _candidate_grids(width, height, min_num, max_num)
    best, notes = _choose(width, height, order, image_size)
    cols, rows = order[best]
    if cols * rows > MAX_GRID_TILES:
        raise ValueError(
            f"A {width}x{height} image with max_num={max_num:,} gets a {cols}x{rows} grid of "
            f"{cols * rows:,} tiles, above the {MAX_GRID_TILES:,} tiles plan_tiles describes "
            f"(each a {image_size}x{image_size} crop). Lower max_num (InternVL2 uses 6 to 12)."
        )
    candidates = tuple(
        Candidate(
            order=k,
            cols=c,
            rows=r,
            num_tiles=c * r,
            aspect_ratio=c / r,
            error=error,
            decision=decision,
            is_winner=k == best,
        )
        for k, ((c, r), (error, decision)) in enumerate(zip(order, notes, strict=True))
    )

    canvas_w, canvas_h = cols * image_size, rows * image_size
    sx, sy = width / canvas_w, height / canvas_h
    boxes = []
    for index in range(cols * rows):
        row, col = divmod(index, cols)
        left, top = col * image_size, row * image_size
        right, bottom = left + image_size, top + image_size
        boxes.append(
            TileBox(
                index=index,
                row=row,
                col=col,
                is_thumbnail=False,
                canvas=(left, top, right, bottom),
                # right/bottom of the last column/row are exactly width/height
                original=(
                    left * sx,
                    top * sy,
                    width if col == cols - 1 else right * sx,
                    height if row == rows - 1 else bottom * sy,
                ),
            )
        )
    has_thumbnail = use_thumbnail and cols * rows != 1
    if has_thumbnail:
        boxes.append(
            TileBox(
                index=cols * rows,
                row=None,
                col=None,
                is_thumbnail=True,
                canvas=(0, 0, image_size, image_size),
                original=(0.0, 0.0, float(width), float(height)),
            )
        )
    tokens_per_tile = int((image_size // PATCH_SIZE) ** 2 * DOWNSAMPLE_RATIO**2)
    num_tiles = len(boxes)
    return TileGrid(
        width=width,
        height=height,
        cols=cols,
        rows=rows,
        image_size=image_size,
        min_num=min_num,
        max_num=max_num,
        use_thumbnail=use_thumbnail,
        has_thumbnail=has_thumbnail,
        num_tiles=num_tiles,
        boxes=tuple(boxes),
        candidates=candidates,
        tokens_per_tile=tokens_per_tile,
        num_image_tokens=num_tiles * tokens_per_tile,
        canvas_size=(canvas_w, canvas_h),
        all_candidates=complete,
    )


def _explain(grid: TileGrid) -> str:
    win = grid.winner
    text = (
        f"The image's aspect ratio is {grid.width}/{grid.height} = {grid.aspect_ratio:.4g}. "
        f"Of {len(grid.candidates)} grids with {grid.min_num} to {grid.max_num} tiles"
        f"{'' if grid.all_candidates else ' (the nearest to this ratio)'}, "
        f"{win.cols}x{win.rows} (ratio {win.aspect_ratio:.4g}) is the closest, "
        f"error {win.error:.4g}."
    )
    ties = [c for c in grid.candidates if c.error == win.error and c is not win]
    if ties:
        names = ", ".join(f"{c.cols}x{c.rows}" for c in ties)
        half = f"0.5 x {grid.image_size}^2 x tiles"
        if win.decision == "tie-taken":
            text += (
                f" It ties with {names}; the card visits grids by tile count and takes a later "
                f"equally close grid only when the image's area ({grid.width * grid.height:,} "
                f"px) exceeds half of that grid's canvas ({half}), which holds for "
                f"{win.cols}x{win.rows}."
            )
        else:
            text += (
                f" It ties with {names}; it was reached first, and a later equally close grid "
                f"replaces it only when the image's area ({grid.width * grid.height:,} px) "
                f"exceeds half of that grid's canvas ({half}), which does not hold."
            )
    if grid.has_thumbnail:
        text += " A thumbnail of the whole image follows the tiles."
    elif grid.use_thumbnail:
        text += " One tile: no thumbnail (it would repeat the tile)."
    return text


def token_costs(
    sizes: Mapping[str, tuple[int, int]],
    *,
    max_nums: Sequence[int] = (1, 6, 12, 40),
    min_num: int = DEFAULT_MIN_NUM,
    image_size: int = TILE_SIZE,
    use_thumbnail: bool = True,
) -> pd.DataFrame:
    """What each image costs in image tokens at several ``max_num``: a table, no pixels.

    ``sizes`` maps a name to ``(width, height)`` (``{name: Image.open(path).size}``). Returns a
    pandas DataFrame with one row per image (index ``image``) and one column per ``max_num``
    (``"max_num=6"``), holding :attr:`TileGrid.num_image_tokens` of :func:`plan_tiles` for it
    (thumbnail included). Settings are checked as :func:`plan_tiles` checks them.
    """
    pd = require("pandas", purpose="vltools.tiling.token_costs")
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Mapping):
        raise TypeError(
            f"sizes must map a name to (width, height), got {type(sizes).__name__}; for "
            "example {'cat': (451, 300)}."
        )
    max_nums = [max_nums] if isinstance(max_nums, int) else list(max_nums)
    if not max_nums:
        raise ValueError("max_nums is empty; pass the max_num values to compare, e.g. (1, 6, 12).")
    rows = {}
    for name, size in sizes.items():
        try:
            width, height = size
        except (TypeError, ValueError) as e:
            raise TypeError(f"sizes[{name!r}] must be (width, height), got {size!r}.") from e
        rows[name] = [
            plan_tiles(
                width,
                height,
                min_num=min_num,
                max_num=m,
                image_size=image_size,
                use_thumbnail=use_thumbnail,
            ).num_image_tokens
            for m in max_nums
        ]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=[f"max_num={m}" for m in max_nums])
    table.index.name = "image"
    return table


def _grid_html(grid: TileGrid, *, max_rows: int = 12) -> str:
    from html import escape

    shown = sorted(grid.candidates, key=lambda c: (c.error, c.order))[:max_rows]
    rows = []
    for c in shown:
        style = ' style="background:#d8f0d8;font-weight:bold"' if c.is_winner else ""
        rows.append(
            f"<tr{style}><td>{c.order}</td><td>{c.cols}x{c.rows}</td><td>{c.num_tiles}</td>"
            f"<td>{c.aspect_ratio:.4f}</td><td>{c.error:.4f}</td><td>{c.decision}</td></tr>"
        )
    more = len(grid.candidates) - len(shown)
    tail = f"<p><i>{more} farther grids not shown.</i></p>" if more > 0 else ""
    return (
        f"<div class='vltools-tilegrid'><b>{escape(grid.summary())}</b>"
        f"<p>{escape(grid.explain())}</p>"
        "<table><tr><th>order</th><th>grid</th><th>tiles</th><th>ratio</th><th>error</th>"
        f"<th>decision</th></tr>{''.join(rows)}</table>{tail}</div>"
    )
