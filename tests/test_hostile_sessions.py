"""Hostile use of a Chat: streams left early, stale streams, odd image arguments, labels."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from vltools.chat import Chat

LONG = {"max_new_tokens": 60, "min_new_tokens": 60, "do_sample": False}


def stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "vltools-chat-stream"]


def png(color=(200, 30, 30), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


class FakeClip:
    def __init__(self, frames: int):
        self.pixel_values = torch.randn(
            frames, 3, 448, 448, generator=torch.Generator().manual_seed(3)
        )
        self.num_tiles = (1,) * frames
        self.frames = ()

    def prompt_prefix(self) -> str:
        return "".join(f"Frame{i + 1}: <image>\n" for i in range(len(self.num_tiles)))


# --- stop() after leaving a stream ----------------------------------------------------------


@pytest.mark.parametrize("pieces_read", [1, 2])
def test_stop_after_leaving_a_stream_frees_the_session_at_once(tiny_model, pieces_read):
    chat = Chat(tiny_model, **LONG)
    g = chat.stream("Tell me a long story.")
    kept = g  # the caller still holds the stream: garbage collection cannot free it
    for k, _ in enumerate(g):
        if k + 1 == pieces_read:
            break
    chat.stop()
    assert stream_threads() == []  # the worker ended and was joined
    assert chat.history[-1].finish_reason == "stopped"
    assert chat.history[-1].reply.new_tokens < 60
    reply = chat.ask(
        "Short answer.", max_new_tokens=2, min_new_tokens=0
    )  # not "already generating"
    assert reply.new_tokens >= 1
    assert list(kept) == []  # the closed stream yields nothing more
    assert len(chat.history) == 2


def test_stop_with_a_stream_left_unstarted_does_not_block_the_session(tiny_model):
    chat = Chat(tiny_model, max_new_tokens=2)
    g = chat.stream("Hello")
    chat.stop()
    assert chat.ask("Hi", max_new_tokens=2).new_tokens >= 1
    del g


def test_stop_from_another_thread_ends_a_stream_being_iterated(tiny_model):
    chat = Chat(tiny_model, **LONG)
    pieces = []
    for piece in chat.stream("Tell me a long story."):
        pieces.append(piece)
        if len(pieces) == 2:
            threading.Thread(target=chat.stop).start()
    assert chat.history[-1].finish_reason == "stopped"
    assert stream_threads() == []


# --- a stream belongs to the history it was made from ----------------------------------------


def make_history(tiny_model) -> Chat:
    chat = Chat(tiny_model, max_new_tokens=3)
    chat.ask("First question.")
    return chat


@pytest.mark.parametrize(
    "change",
    [
        lambda c: (c.undo(), c.ask("A different question.")),
        lambda c: c.ask("Another question."),
        lambda c: c.undo(),
        lambda c: c.reset(),
        lambda c: (c.reset(), c.ask("Fresh start.")),
    ],
    ids=["undo-and-ask", "ask", "undo", "reset", "reset-and-ask"],
)
def test_a_stream_made_before_the_history_changed_is_refused(tiny_model, change):
    chat = make_history(tiny_model)
    stale = chat.stream("Follow-up from the old history.")
    change(chat)
    history = chat.history
    with pytest.raises(RuntimeError, match="history changed.*stale"):
        next(iter(stale))
    assert chat.history == history  # nothing stored
    assert chat.ask("Still usable?", max_new_tokens=2).new_tokens >= 1


def test_a_stream_consumed_without_changes_still_works(tiny_model):
    chat = make_history(tiny_model)
    g = chat.stream("Follow-up.")
    text = "".join(g)
    assert chat.history[-1].answer == text.strip()


def test_undo_or_reset_during_a_stream_is_refused(tiny_model):
    chat = Chat(tiny_model, **LONG)
    g = chat.stream("Tell me a long story.")
    next(g)
    for action in (chat.undo, chat.reset):
        with pytest.raises(RuntimeError, match="is generating"):
            action()
    chat.stop()
    assert chat.undo() is not None


# --- images= ------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=["bytes", "bytearray", "mv"])
def test_raw_image_bytes_are_one_image(tiny_model, wrap):
    chat = Chat(tiny_model, max_new_tokens=1, max_num=2)
    chat.ask("What colour?", images=wrap(png()))
    assert len(chat.history[-1].visuals) == 1


def test_a_list_of_raw_image_bytes_is_several_images(tiny_model):
    chat = Chat(tiny_model, max_new_tokens=1, max_num=1)
    chat.ask("Compare.", images=[png(), png((0, 0, 255))])
    assert len(chat.history[-1].visuals) == 2


def test_bytes_that_are_not_an_image_are_refused_clearly(tiny_model):
    chat = Chat(tiny_model, max_new_tokens=1)
    with pytest.raises(ValueError, match="not an image Pillow can read"):
        chat.ask("What?", images=b"\x00\x01\x02 not an image")
    assert chat.history == ()


@pytest.mark.parametrize("bad", [6.0, 6.9, "6", True])
def test_a_float_or_text_max_num_is_refused_not_truncated(tiny_model, bad):
    with pytest.raises(TypeError, match="max_num must be an integer"):
        Chat(tiny_model, max_num=bad)


def test_an_image_beyond_the_models_context_is_refused_before_decoding(tiny_model, monkeypatch):
    chat = Chat(tiny_model, max_new_tokens=1, max_num=200)
    wide = np.zeros((2, 40_000, 3), np.uint8)

    def no_resize(*args, **kwargs):
        pytest.fail("the image was resized before the request was refused")

    monkeypatch.setattr(Image.Image, "resize", no_resize)
    with pytest.raises(ValueError, match=r"needs \d+ tiles .*model's context.*Lower max_num"):
        chat.ask("What?", images=wide)


# --- labels after a video ----------------------------------------------------------------------


@pytest.mark.parametrize("frames", [1, 3, 8])
def test_the_first_image_after_a_video_is_not_numbered_after_the_frames(tiny_model, frames):
    chat = Chat(tiny_model, max_new_tokens=1, max_num=1)
    chat.ask("What happens?", video=FakeClip(frames))
    chat.ask("And this picture?", images=[png()])
    text = chat.history[-1].user_text
    assert "Image-" not in text.split("\n")[0] or text.startswith("Image-1:")
    assert f"Image-{frames + 1}" not in text
    chat.ask("And these two?", images=[png(), png((0, 255, 0))])
    text = chat.history[-1].user_text
    assert text.startswith("Image-2: <image>\nImage-3: <image>\n"), text
