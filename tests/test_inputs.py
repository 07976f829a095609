"""vltools.stack and the top-level names every notebook uses (capture, sample, charts)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vltools
from vltools.inputs import Stacked, stack


def _image(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8))


def test_stack_concatenates_the_tiles_in_order_with_their_counts():
    wide = vltools.load_image(_image(900, 300), max_num=6)
    small = vltools.load_image(_image(200, 200), max_num=6)
    stacked = vltools.stack([wide, small, wide])
    assert stacked.num_tiles == (wide.grid.num_tiles, 1, wide.grid.num_tiles) == (4, 1, 4)
    expected = torch.cat([wide.pixel_values, small.pixel_values, wide.pixel_values])
    assert stacked.pixel_values.equal(expected)
    assert stacked.pixel_values.shape == (9, 3, 448, 448)


def test_stack_gives_a_clip_one_count_per_frame():
    clip = vltools.load_video(vltools.sample("sample_video.mp4"), num_segments=3, max_num=2)
    photo = vltools.load_image(_image(300, 300), max_num=1)
    stacked = stack([photo, clip])
    assert stacked.num_tiles == (1, *clip.num_tiles)
    assert stacked.pixel_values.equal(torch.cat([photo.pixel_values, clip.pixel_values]))


def test_a_stacked_input_prints_shapes_and_counts_not_tensors():
    tiled = vltools.load_image(_image(900, 300), max_num=6)
    text = repr(stack([tiled, tiled]))
    assert text == (
        "Stacked(2 images, num_tiles=(4, 4), pixel_values=(8, 3, 448, 448) float32 on cpu)"
    )
    assert isinstance(stack([tiled]), Stacked) and len(text) < 120


def test_stack_names_what_it_takes_when_given_something_else():
    tiled = vltools.load_image(_image(100, 100), max_num=1)
    with pytest.raises(TypeError, match=r"pass \[item\]"):
        stack(tiled)
    with pytest.raises(TypeError, match="item 1 is a Tensor"):
        stack([tiled, tiled.pixel_values])
    with pytest.raises(ValueError, match="empty list"):
        stack([])
    with pytest.raises(ValueError, match="one device with one dtype"):
        stack([tiled, tiled.to(dtype=torch.bfloat16)])


def test_the_notebooks_names_are_at_the_top_level():
    from vltools.attention import capture
    from vltools.data import charts, sample

    assert vltools.capture is capture and vltools.sample is sample
    assert vltools.charts is charts and vltools.stack is stack
    assert {"capture", "sample", "charts", "stack", "Stacked"} <= set(vltools.__all__)
    assert vltools.sample("photo_cat.jpg").is_file() and len(vltools.charts()) == 30
