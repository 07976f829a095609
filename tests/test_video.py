"""Frame sampling (the card's get_index) and load_video on the sample video.

The reference for pixels is the model card's pipeline (``vltools.card``), rewritten from the
card's text: decord ``vr[i]`` per frame, PIL, ``dynamic_preprocess`` and the torchvision
transforms.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vltools.card import card_get_index
from vltools.video import frame_range, sample_frame_indices


def reference_rows(reference_dir):
    with open(reference_dir / "frame_indices.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_indices_match_the_card_for_every_reference_row(reference_dir):
    rows = reference_rows(reference_dir)
    assert len(rows) == 186
    for row in rows:
        bound = (float(row["bound_start"]), float(row["bound_end"])) if row["bound_start"] else None
        got = sample_frame_indices(
            int(row["num_frames"]),
            float(row["fps"]),
            num_segments=int(row["num_segments"]),
            bound=bound,
            first_idx=int(row["first_idx"]),
        )
        expected = [int(x) for x in row["indices"].split(",")]
        assert got.tolist() == expected, row


def test_indices_are_an_int_array_of_num_segments():
    got = sample_frame_indices(96, 24.0, num_segments=8)
    assert got.dtype.kind == "i" and got.shape == (8,)
    assert got.tolist() == [5, 17, 29, 41, 53, 64, 76, 88]


_fps = st.sampled_from([1.0, 7.5, 23.976, 24.0, 25.0, 29.97, 30.0, 59.94, 60.0, 120.0])
_bound = st.none() | st.tuples(
    st.floats(-5, 200, allow_nan=False), st.floats(-5, 200, allow_nan=False)
)


@settings(max_examples=400, deadline=None)
@given(
    num_frames=st.integers(1, 6000),
    fps=_fps,
    num_segments=st.integers(1, 64),
    bound=_bound,
    first_idx=st.integers(0, 7000),
)
def test_indices_equal_the_card_or_raise_where_the_card_reads_outside_the_video(
    num_frames, fps, num_segments, bound, first_idx
):
    card_reads_inside = True
    if bound is not None and bound[0] >= bound[1]:
        card_reads_inside = False  # vltools refuses reversed or empty bounds outright
    else:
        expected = card_get_index(bound, fps, num_frames - 1, first_idx, num_segments)
        card_reads_inside = bool(((expected >= 0) & (expected <= num_frames - 1)).all())
        start_idx = max(first_idx, round((bound or (-100000, 100000))[0] * fps))
        end_idx = min(round((bound or (-100000, 100000))[1] * fps), num_frames - 1)
        card_reads_inside = card_reads_inside and start_idx <= end_idx
    if card_reads_inside:
        got = sample_frame_indices(
            num_frames, fps, num_segments=num_segments, bound=bound, first_idx=first_idx
        )
        assert got.tolist() == expected.tolist()
    else:
        with pytest.raises(ValueError):
            sample_frame_indices(
                num_frames, fps, num_segments=num_segments, bound=bound, first_idx=first_idx
            )


@settings(max_examples=300, deadline=None)
@given(num_frames=st.integers(1, 100_000), fps=_fps, num_segments=st.integers(1, 256))
def test_indices_are_sorted_in_range_and_inside_the_bound(num_frames, fps, num_segments):
    got = sample_frame_indices(num_frames, fps, num_segments=num_segments)
    assert len(got) == num_segments
    assert (np.diff(got) >= 0).all()
    assert got.min() >= 0 and got.max() <= num_frames - 1
    if num_frames >= 2 * num_segments:  # long enough: every segment gets its own frame
        assert len(set(got.tolist())) == num_segments


def test_a_bound_picks_frames_between_its_seconds():
    got = sample_frame_indices(240, 24.0, num_segments=4, bound=(2.0, 4.0))
    assert got.min() >= 48 and got.max() <= 96
    assert frame_range(240, 24.0, bound=(2.0, 4.0)) == (48, 96)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_frames": 0}, "num_frames must be >= 1"),
        ({"num_segments": 0}, "num_segments must be >= 1"),
        ({"bound": (2.0, 2.0)}, "starts at or after its end"),
        ({"bound": (3.0, 1.0)}, "starts at or after its end"),
        ({"bound": (10.0, 12.0)}, "selects no frames"),
        ({"bound": (-3.0, -1.0)}, "selects no frames"),
        ({"first_idx": 96}, "past the last frame"),
        ({"first_idx": -1}, "first_idx must be >= 0"),
        ({"fps": 0.0}, "fps must be positive"),
    ],
)
def test_impossible_requests_raise_a_clear_value_error(kwargs, message):
    args = {"num_frames": 96, "fps": 24.0, "num_segments": 8} | kwargs
    num_frames, fps = args.pop("num_frames"), args.pop("fps")
    with pytest.raises(ValueError, match=message):
        sample_frame_indices(num_frames, fps, **args)


def test_wrong_types_raise_type_errors():
    with pytest.raises(TypeError, match="num_segments must be an int"):
        sample_frame_indices(96, 24.0, num_segments=8.0)
    with pytest.raises(TypeError, match="bound must be None or"):
        sample_frame_indices(96, 24.0, bound=(1.0,))


# --- the cost table -------------------------------------------------------------------------


def test_frame_costs_multiply_frames_tiles_and_the_models_tokens_per_tile():
    from vltools.tiling import plan_tiles
    from vltools.video import frame_costs

    table = frame_costs(448, 336, tokens_per_tile=64, context_length=2048, segments=(4, 32))
    assert list(table.columns) == [
        "max_num",
        "frames",
        "tiles_per_frame",
        "image_tokens",
        "context_share",
    ]
    assert table["max_num"].tolist() == [1, 1, 6, 6]
    assert table["frames"].tolist() == [4, 32, 4, 32]
    six = plan_tiles(448, 336, max_num=6).num_tiles
    assert table["tiles_per_frame"].tolist() == [1, 1, six, six]
    assert table["image_tokens"].tolist() == [4 * 64, 32 * 64, 4 * six * 64, 32 * six * 64]
    assert table["context_share"].tolist() == pytest.approx(
        [t / 2048 for t in table["image_tokens"]]
    )
    default = frame_costs(448, 336, max_nums=(1,), segments=(32,))
    assert default["context_share"].tolist() == [1.0]  # 32 frames fill InternVL2-1B's 8192


@pytest.mark.parametrize(
    "bad", [{"tokens_per_tile": 0}, {"context_length": -1}, {"segments": (0,)}, {"max_nums": (0,)}]
)
def test_frame_costs_refuse_counts_below_one(bad):
    from vltools.video import frame_costs

    with pytest.raises(ValueError, match=">= 1"):
        frame_costs(448, 336, **bad)
