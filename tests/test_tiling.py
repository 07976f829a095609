"""The tiling geometry: plan_tiles against the model card's algorithm and the reference table.

The reference here is the card's grid choice (``vltools.card``) written out as the card specifies it (a set of
grids sorted by tile count, a running minimum of the aspect-ratio error with the area
tie-break), plus ``tests/reference/tiling_grids.tsv`` computed with the card's own code.
"""

from __future__ import annotations

import csv
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vltools.card import card_grid, card_target_ratios
from vltools.tiling import TileGrid, plan_tiles


def test_grid_matches_the_card_for_every_reference_row(reference_dir):
    with open(reference_dir / "tiling_grids.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 4500
    wrong = []
    for row in rows:
        w, h, lo, hi = (int(row[k]) for k in ("width", "height", "min_num", "max_num"))
        grid = plan_tiles(w, h, min_num=lo, max_num=hi)
        if (grid.cols, grid.rows) != (int(row["cols"]), int(row["rows"])):
            wrong.append((w, h, lo, hi, (grid.cols, grid.rows), (row["cols"], row["rows"])))
    assert not wrong, f"{len(wrong)} rows differ, first: {wrong[:5]}"


def test_candidates_are_visited_in_the_cards_order_for_large_budgets():
    # The order among grids with the same tile count is the card's set order: it decides ties.
    for lo, hi in [(1, 12), (1, 40), (2, 6), (6, 6), (12, 12), (7, 33), (24, 24), (1, 64)]:
        ratios = list(card_target_ratios(lo, hi))
        grid = plan_tiles(1, 1, min_num=lo, max_num=hi)
        assert [(c.cols, c.rows) for c in grid.candidates] == ratios, (lo, hi)


def test_exact_ties_are_broken_like_the_card_including_large_max_num():
    # Sizes exactly halfway between two grids' ratios, small and large images, so that both
    # branches of the area rule are taken; min_num > 1 makes the order among equal tile
    # counts matter.
    checked = taken = kept = 0
    for lo, hi in [(6, 6), (12, 12), (24, 24), (2, 16), (5, 20), (1, 48), (36, 40)]:
        ratios = list(card_target_ratios(lo, hi))
        by_ratio = sorted(ratios, key=lambda r: Fraction(*r))
        neighbours = list(zip(by_ratio, by_ratio[1:], strict=False))
        same_count = [
            (a, b) for a in ratios for b in ratios if a[0] * a[1] == b[0] * b[1] and lo > 1
        ]
        for a, b in neighbours + same_count:
            if a != b:
                mid = (Fraction(*a) + Fraction(*b)) / 2
                for k in (1, 3, 40, 400):
                    w, h = mid.numerator * k, mid.denominator * k
                    if w > 60_000 or h > 60_000:
                        continue
                    grid = plan_tiles(w, h, min_num=lo, max_num=hi)
                    assert (grid.cols, grid.rows) == card_grid(w, h, min_num=lo, max_num=hi), (
                        w,
                        h,
                        lo,
                        hi,
                    )
                    checked += 1
                    taken += grid.winner.decision == "tie-taken"
                    kept += any(c.decision == "tie-kept" for c in grid.candidates)
    assert checked > 1000 and taken > 10 and kept > 10, (checked, taken, kept)


@settings(max_examples=300, deadline=None)
@given(
    width=st.integers(1, 20_000),
    height=st.integers(1, 20_000),
    min_num=st.integers(1, 8),
    extra=st.integers(0, 60),
)
def test_grid_matches_the_card_for_random_sizes_and_budgets(width, height, min_num, extra):
    max_num = min_num + extra
    grid = plan_tiles(width, height, min_num=min_num, max_num=max_num)
    assert (grid.cols, grid.rows) == card_grid(width, height, min_num=min_num, max_num=max_num)


@settings(max_examples=200, deadline=None)
@given(
    width=st.integers(1, 30_000),
    height=st.integers(1, 30_000),
    min_num=st.integers(1, 12),
    extra=st.integers(0, 40),
    size=st.sampled_from([28, 224, 448]),
    thumb=st.booleans(),
)
def test_tiles_cover_the_canvas_exactly_and_map_back_inside_the_image(
    width, height, min_num, extra, size, thumb
):
    max_num = min_num + extra
    grid = plan_tiles(
        width, height, min_num=min_num, max_num=max_num, image_size=size, use_thumbnail=thumb
    )
    n = grid.cols * grid.rows
    assert min_num <= n <= max_num
    assert grid.has_thumbnail == (thumb and n > 1)
    assert grid.num_tiles == n + grid.has_thumbnail == len(grid.boxes)
    assert grid.num_image_tokens == grid.num_tiles * grid.tokens_per_tile
    assert grid.canvas_size == (grid.cols * size, grid.rows * size)
    assert [b.index for b in grid.boxes] == list(range(grid.num_tiles))

    cw, ch = grid.canvas_size
    covered = 0
    seen = set()
    for b in grid.boxes[:n]:
        left, top, right, bottom = b.canvas
        assert (right - left, bottom - top) == (size, size)
        assert 0 <= left < right <= cw and 0 <= top < bottom <= ch
        assert (left, top) == (b.col * size, b.row * size)
        seen.add((b.row, b.col))
        covered += (right - left) * (bottom - top)
        ol, ot, orr, ob = b.original
        assert 0 <= ol < orr <= width and 0 <= ot < ob <= height
        assert orr - ol == pytest.approx(size * width / cw)
        assert ob - ot == pytest.approx(size * height / ch)
    assert covered == cw * ch and len(seen) == n  # no gaps, no overlaps
    assert [(b.row, b.col) for b in grid.boxes[:n]] == sorted(seen)  # row-major
    assert grid.boxes[-1].original[2:] == (width, height)
    if grid.has_thumbnail:
        thumb_box = grid.boxes[-1]
        assert thumb_box.is_thumbnail and thumb_box.row is None and thumb_box.col is None
        assert thumb_box.canvas == (0, 0, size, size)
        assert thumb_box.original == (0.0, 0.0, float(width), float(height))


def test_candidates_record_every_grid_with_its_error_and_exactly_one_winner():
    grid = plan_tiles(4032, 3024, max_num=12)
    assert (grid.cols, grid.rows) == (4, 3)
    assert len(grid.candidates) == sum(1 for i in range(1, 13) for j in range(1, 13) if i * j <= 12)
    winners = [c for c in grid.candidates if c.is_winner]
    assert winners == [grid.winner] and winners[0].error == 0.0
    for c in grid.candidates:
        assert c.num_tiles == c.cols * c.rows
        assert c.error == abs(4032 / 3024 - c.cols / c.rows)
    assert grid.candidates[0].decision == "first"
    assert "4x3" in grid.explain()


def test_the_tie_break_takes_the_larger_grid_only_for_a_large_enough_image():
    # 5:2 lies exactly between 2x1 and 3x1, visited in that order (2 tiles before 3).
    small = plan_tiles(500, 200, max_num=6)  # 100,000 px < half of 3 tiles (301,056)
    large = plan_tiles(2500, 1000, max_num=6)
    assert (small.cols, small.rows) == (2, 1)
    assert (large.cols, large.rows) == (3, 1)
    assert large.winner.decision == "tie-taken"
    assert any(c.decision == "tie-kept" and (c.cols, c.rows) == (3, 1) for c in small.candidates)
    assert "half" in small.explain() and "half" in large.explain()


def test_a_single_tile_gets_no_thumbnail_and_costs_256_tokens():
    grid = plan_tiles(448, 448)
    assert (grid.cols, grid.rows, grid.num_tiles, grid.has_thumbnail) == (1, 1, 1, False)
    assert grid.num_image_tokens == 256
    assert plan_tiles(4032, 3024, max_num=12).num_image_tokens == 13 * 256


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"max_num": 2, "min_num": 3}, ValueError, ["max_num (2)", "min_num (3)"]),
        ({"min_num": 0}, ValueError, ["min_num", "at least 1", "0"]),
        ({"image_size": 450}, ValueError, ["image_size", "450", "multiple of 28", "448"]),
        ({"image_size": 14}, ValueError, ["image_size", "14", "multiple of 28"]),
        ({"max_num": 6.0}, TypeError, ["max_num", "integer", "6.0"]),
        ({"min_num": True}, TypeError, ["min_num", "integer"]),
    ],
)
def test_bad_settings_raise_an_error_naming_the_value_and_the_fix(kwargs, error, words):
    with pytest.raises(error) as info:
        plan_tiles(800, 600, **kwargs)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(("w", "h"), [(0, 10), (10, 0), (-5, 10)])
def test_a_zero_size_image_is_refused_with_its_size(w, h):
    with pytest.raises(ValueError, match=rf"{w}x{h}"):
        plan_tiles(w, h)


def test_a_tile_grid_has_a_readable_repr_and_an_html_table():
    grid = plan_tiles(3200, 480, max_num=12)
    assert isinstance(grid, TileGrid)
    assert "7x1" in repr(grid) and "num_tiles=8" in repr(grid)
    html = grid._repr_html_()
    assert "<table>" in html and "7x1" in html and "background" in html
    assert "2,048 image tokens" in grid.summary()


# --- the cost table -------------------------------------------------------------------------


def test_token_costs_tabulate_plan_tiles_image_tokens_per_image_and_max_num():
    from vltools.tiling import token_costs

    sizes = {"panorama": (3200, 480), "cat": (451, 300)}
    table = token_costs(sizes, max_nums=(1, 6, 12))
    assert list(table.index) == ["panorama", "cat"] and table.index.name == "image"
    assert list(table.columns) == ["max_num=1", "max_num=6", "max_num=12"]
    for name, (w, h) in sizes.items():
        for m in (1, 6, 12):
            expected = plan_tiles(w, h, max_num=m).num_image_tokens
            assert table.loc[name, f"max_num={m}"] == expected
    assert table.loc["panorama", "max_num=12"] == 8 * 256  # 7 x 1 grid + the thumbnail


def test_token_costs_refuse_sizes_that_are_not_a_mapping_of_pairs():
    from vltools.tiling import token_costs

    with pytest.raises(TypeError, match="map a name to"):
        token_costs([(100, 100)])
    with pytest.raises(TypeError, match=r"sizes\['a'\] must be \(width, height\)"):
        token_costs({"a": 100})
    with pytest.raises(ValueError, match="max_num"):
        token_costs({"a": (100, 100)}, max_nums=(0,))
