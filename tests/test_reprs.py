"""Records print short: ImageSlot, ImageMap and a chat Turn show shapes, names and counts."""

from __future__ import annotations

import pytest

import vltools
from vltools.data import sample


@pytest.fixture(scope="module")
def photo():
    return vltools.load_image(sample("photo_coffee.jpg"), max_num=2)  # 2 x 1 grid + thumbnail


@pytest.fixture(scope="module")
def maps(tiny_model, photo):
    with vltools.capture(tiny_model, photo) as cap:
        cap.generate("Describe the picture.", max_new_tokens=3, min_new_tokens=3)
    return cap.maps


def test_an_image_slot_prints_its_grid_tiles_and_token_positions(maps):
    slot = maps.images[0]
    text = repr(slot)
    first, last = int(slot.positions.min()), int(slot.positions.max())
    assert text == (
        f"ImageSlot(0, 'Image-1', 2x1 grid, 3 tiles from tile 0, 768 tokens at positions "
        f"{first}..{last}, image 600x400)"
    )
    assert "array" not in text and len(text) < 160


def test_an_image_map_prints_its_shape_grid_and_range_not_its_values(maps):
    imap = maps.map(0)
    text = repr(imap)
    assert text.startswith("ImageMap('Image-1', per_tile=(3, 16, 16) float64, 2x1 grid + thumbnail")
    assert f"values {imap.per_tile.min():.3g}..{imap.per_tile.max():.3g}" in text
    assert repr(imap.what) in text and "array" not in text and len(text) < 240


def test_a_chat_turn_prints_its_question_answer_and_visuals_not_their_pixels(tiny_model, photo):
    chat = vltools.Chat(tiny_model, max_new_tokens=4, do_sample=False)
    chat.ask("What is in this picture? " * 5, images=[photo])
    turn = chat.history[-1]
    text = repr(turn)
    assert text.startswith("Turn('What is in this picture? What is in this picture? What")
    assert "...'" in text  # a long question is cut
    assert "visuals [image 1 (photo_coffee.jpg): 3 tiles]" in text
    assert text.endswith(f", {turn.finish_reason})")
    assert "tensor" not in text and len(text) < 240
