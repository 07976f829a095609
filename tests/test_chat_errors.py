"""Bad input to chat, batch_chat and Chat: each error names what was given and what was expected."""

from __future__ import annotations

import pytest
import torch

from vltools.chat import Chat, model_batch_chat, model_chat

GEN = {"max_new_tokens": 2}


def _pixels(tiles: int) -> torch.Tensor:
    return torch.zeros(tiles, 3, 448, 448)


def test_placeholder_count_must_match_the_images(tiny_model):
    with pytest.raises(ValueError, match=r"1 '<image>' placeholder.*2 image"):
        model_chat(tiny_model, _pixels(3), "<image>\nQ", GEN, num_patches_list=[2, 1])
    with pytest.raises(ValueError, match=r"2 '<image>' placeholder.*1 image"):
        Chat(tiny_model, **GEN).ask("<image> and <image>", images=[_pixels(1)])
    with pytest.raises(ValueError, match=r"1 '<image>' placeholder.*0 image"):
        model_chat(tiny_model, None, "What is <image>?", GEN)


def test_num_patches_list_must_sum_to_the_tiles(tiny_model):
    with pytest.raises(ValueError, match=r"sums to 5 but pixel_values has 4 tiles"):
        model_chat(tiny_model, _pixels(4), "Image-1: <image>\nImage-2: <image>\nQ", GEN,
                   num_patches_list=[3, 2])  # fmt: skip
    with pytest.raises(ValueError, match=r"sums to 3 but pixel_values has 4 tiles"):
        model_batch_chat(tiny_model, _pixels(4), ["a", "b"], GEN, num_patches_list=[1, 2])
    with pytest.raises(ValueError, match=r"2 entries for 3 questions"):
        model_batch_chat(tiny_model, _pixels(2), ["a", "b", "c"], GEN, num_patches_list=[1, 1])


@pytest.mark.parametrize(
    ("pixels", "error", "match"),
    [
        (
            torch.zeros(2, 3, 224, 224),
            ValueError,
            r"shape \(2, 3, 224, 224\); expected \[tiles, 3, 448, 448\]",
        ),
        (torch.zeros(3, 448, 448), ValueError, r"shape \(3, 448, 448\)"),
        (
            torch.zeros(1, 3, 448, 448, dtype=torch.uint8),
            TypeError,
            r"dtype torch.uint8; expected a floating",
        ),
        ([[0.0]], TypeError, r"got list"),
    ],
)
def test_pixel_values_of_the_wrong_shape_or_dtype_are_refused(tiny_model, pixels, error, match):
    with pytest.raises(error, match=match):
        model_chat(tiny_model, pixels, "Describe.", GEN)


@pytest.mark.parametrize("question", ["", "   \n"])
def test_an_empty_question_is_refused(tiny_model, question):
    with pytest.raises(ValueError, match="is empty"):
        model_chat(tiny_model, None, question, GEN)
    with pytest.raises(ValueError, match="is empty"):
        Chat(tiny_model).ask(question)
    with pytest.raises(ValueError, match=r"questions\[1\] is empty"):
        model_batch_chat(tiny_model, None, ["ok", question], GEN)


@pytest.mark.parametrize("history", ["Q A", [("Q",)], [("Q", 3)], {"Q": "A"}])
def test_a_malformed_history_is_refused(tiny_model, history):
    with pytest.raises((TypeError, ValueError), match=r"\(question, answer\)"):
        model_chat(tiny_model, None, "Hi", GEN, history=history)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_tokens": 5}, r"Unknown generation option\(s\) \['max_tokens'\].*max_new_tokens"),
        ({"max_new_tokens": -1}, r"max_new_tokens=-1 is not allowed; expected an int >= 1"),
        ({"temperature": 0.5}, r"(?s)rejected .*do_sample"),
    ],
)
def test_generation_options_transformers_rejects_are_named(tiny_model, options, match):
    with pytest.raises(ValueError, match=match):
        model_chat(tiny_model, None, "Hi", options)
    with pytest.raises(ValueError, match=match):
        Chat(tiny_model, **options)


def test_a_second_generation_on_the_same_chat_is_refused_while_one_runs(tiny_model):
    chat = Chat(tiny_model, max_new_tokens=2)
    chat._lock.acquire()
    try:
        with pytest.raises(RuntimeError, match="already generating"):
            chat.ask("Hi")
    finally:
        chat._lock.release()
    assert chat.ask("Hi").new_tokens >= 1


def test_images_and_video_in_one_turn_are_refused(tiny_model):
    with pytest.raises(ValueError, match="images or video"):
        Chat(tiny_model).ask("Hi", images=[_pixels(1)], video="clip.mp4")
