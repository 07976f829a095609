"""plan_tiles does bounded work for any max_num and still chooses exactly the card's grid."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vltools import tiling
from vltools.card import card_grid
from vltools.tiling import plan_tiles


def full_enumeration_grid(width, height, min_num, max_num, image_size=448):
    """The card's choice over every grid, in the card's exact order (the unbounded way)."""
    order = tiling._card_candidate_order(min_num, max_num)
    best, _ = tiling._choose(width, height, order, image_size)
    return order[best]


@settings(max_examples=25, deadline=None)
@given(
    width=st.integers(1, 20_000),
    height=st.integers(1, 20_000),
    min_num=st.integers(1, 6),
    max_num=st.integers(65, 90),
)
def test_the_bounded_search_matches_the_cards_brute_force(width, height, min_num, max_num):
    grid = plan_tiles(width, height, min_num=min_num, max_num=max_num)
    assert not grid.all_candidates
    assert (grid.cols, grid.rows) == card_grid(width, height, min_num=min_num, max_num=max_num)


@settings(max_examples=150, deadline=None)
@given(
    width=st.integers(1, 100_000),
    height=st.integers(1, 100_000),
    min_num=st.integers(1, 40),
    max_num=st.integers(65, 700),
)
def test_the_bounded_search_matches_every_grid_in_the_cards_order(width, height, min_num, max_num):
    max_num = max(max_num, min_num)
    grid = plan_tiles(width, height, min_num=min_num, max_num=max_num)
    assert (grid.cols, grid.rows) == full_enumeration_grid(width, height, min_num, max_num)
    assert [c.order for c in grid.candidates] == list(range(len(grid.candidates)))
    assert sum(c.is_winner for c in grid.candidates) == 1


def test_exact_ties_above_the_listing_limit_are_broken_like_the_card():
    # sizes exactly halfway between two neighbouring ratios: both branches of the area rule
    checked = 0
    for lo, hi in [(1, 80), (1, 200), (3, 150), (10, 300), (30, 500)]:
        ratios = tiling._card_candidate_order(lo, hi)
        by_ratio = sorted(set(Fraction(c, r) for c, r in ratios))
        for a, b in list(zip(by_ratio, by_ratio[1:], strict=False))[::7]:
            mid = (a + b) / 2
            for k in (1, 5, 300):
                w, h = mid.numerator * k, mid.denominator * k
                grid = plan_tiles(w, h, min_num=lo, max_num=hi)
                assert (grid.cols, grid.rows) == full_enumeration_grid(w, h, lo, hi), (w, h, lo)
                checked += 1
    assert checked > 300


@pytest.mark.parametrize(
    ("width", "height", "max_num"),
    [(100_000, 1, 10**6), (1, 100_000, 10**6), (4032, 3024, 10**6), (1, 1, 10**7), (7, 5, 10**7)],
)
def test_a_huge_max_num_returns_with_a_short_candidate_list(width, height, max_num):
    grid = plan_tiles(width, height, max_num=max_num)
    assert len(grid.candidates) < 20 * int(max_num**0.5)
    assert grid.winner.error == min(c.error for c in grid.candidates)
    assert Fraction(grid.cols, grid.rows) == Fraction(width, height)  # exact ratio fits


def test_max_num_above_the_stated_limit_is_refused_with_the_limit():
    with pytest.raises(ValueError, match=r"max_num=100,000,000 is above the limit of 10,000,000"):
        plan_tiles(448, 448, max_num=10**8)


def test_a_chosen_grid_above_the_tile_limit_is_refused_with_its_size():
    with pytest.raises(ValueError, match=r"4115x2263 grid of 9,312,245 tiles.*Lower max_num"):
        plan_tiles(12345, 6789, max_num=10**7)


@pytest.mark.parametrize("bad", [6.0, 6.5, "6", None, True])
def test_a_non_integer_max_num_is_refused_not_truncated(bad):
    with pytest.raises(TypeError, match="max_num must be an integer"):
        plan_tiles(448, 448, max_num=bad)
