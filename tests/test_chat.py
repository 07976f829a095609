"""VLModel.chat / batch_chat and the Chat session on the tiny model: prompts, cache, errors."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from vltools.chat import Chat, ContextBudgetError, batch_prompts, model_chat
from vltools.prompts import render_prompt

GEN = {"max_new_tokens": 6, "do_sample": False}


def _pixels(tiles: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tiles, 3, 448, 448, generator=g)


class FakeClip:
    """What Chat needs of a VideoClip: pixels, tiles per frame and the prompt prefix."""

    def __init__(self, frames: int):
        self.pixel_values = _pixels(frames, seed=3)
        self.num_tiles = (1,) * frames
        self.frames = ()

    def prompt_prefix(self) -> str:
        return "".join(f"Frame{i + 1}: <image>\n" for i in range(len(self.num_tiles)))


@pytest.fixture
def seen_prompts(monkeypatch):
    """Record every prompt text that vltools.chat/vltools.generation tokenize for a single call."""
    import vltools.chat as chat_module
    import vltools.generation as generation_module

    seen: list[str] = []
    original = generation_module.tokenize

    def spy(vlm, text):
        seen.append(text)
        return original(vlm, text)

    monkeypatch.setattr(generation_module, "tokenize", spy)
    monkeypatch.setattr(chat_module, "tokenize", spy)
    return seen


def _reference(reference_dir, scenario: str, call: int = 0, item: int = 0) -> dict:
    entries = json.loads((reference_dir / "prompts.json").read_text(encoding="utf-8"))
    return next(
        e for e in entries if (e["scenario"], e["call"], e["item"]) == (scenario, call, item)
    )


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- the card's calls


def test_model_chat_sends_the_cards_prompts_for_a_two_turn_image_chat(
    tiny_model, reference_dir, seen_prompts
):
    pixels = _pixels(7)
    question = "<image>\nPlease describe the image in detail."
    answer, history = tiny_model.chat(pixels, question, GEN, history=None, return_history=True)
    assert isinstance(answer, str) and "<|im_end|>" not in answer
    assert history == [(question, answer)]
    assert _sha(seen_prompts[-1]) == _reference(reference_dir, "single_image_two_turns")["sha256"]
    # turn 2 with the reference's placeholder answer reproduces the reference's second prompt
    tiny_model.chat(pixels, "Please write a poem according to the image.", GEN,
                    history=[(question, "ANSWER1")])  # fmt: skip
    expected = _reference(reference_dir, "single_image_two_turns", call=1)
    assert _sha(seen_prompts[-1]) == expected["sha256"]


@pytest.mark.parametrize(
    ("scenario", "question", "tiles", "npl"),
    [
        ("pure_text_two_turns", "Hello, who are you?", 0, None),
        ("single_image_one_turn", "Please describe the image shortly.", 7, None),
        ("multi_image_combined", "<image>\nDescribe the two images in detail.", 14, None),
        (
            "multi_image_separate",
            "Image-1: <image>\nImage-2: <image>\nDescribe the two images in detail.",
            12,
            [7, 5],
        ),
        (
            "video_eight_frames",
            "".join(f"Frame{i + 1}: <image>\n" for i in range(8)) + "What is the red panda doing?",
            8,
            [1] * 8,
        ),
    ],
)
def test_model_chat_reproduces_each_first_turn_of_the_reference(
    tiny_model, reference_dir, seen_prompts, scenario, question, tiles, npl
):
    pixels = _pixels(tiles) if tiles else None
    tiny_model.chat(pixels, question, {"max_new_tokens": 1}, num_patches_list=npl)
    assert _sha(seen_prompts[-1]) == _reference(reference_dir, scenario)["sha256"]


def test_batch_chat_prompts_match_the_card_and_answers_match_single_calls(
    tiny_model, reference_dir
):
    from vltools.chat import model_batch_chat

    q = "<image>\nDescribe the image in detail."
    prompts = batch_prompts(tiny_model, [q, q], [[7], [5]])
    for item, prompt in enumerate(prompts):
        expected = _reference(reference_dir, "batch_one_image_each", item=item)
        assert prompt.sha256 == expected["sha256"]
    # beyond the card: two images in one sample, none in another, the tokenizer left as it was
    side = tiny_model.tokenizer.padding_side
    pixels = torch.cat([_pixels(2, 1), _pixels(1, 2), _pixels(1, 3)])
    questions = ["Compare them.", "What is it?", "Tell me a joke."]
    answers = model_batch_chat(tiny_model, pixels, questions, GEN, num_patches_list=[[2, 1], 1, 0])
    assert tiny_model.tokenizer.padding_side == side
    singles = [
        model_chat(tiny_model, pixels[:3], "Image-1: <image>\nImage-2: <image>\nCompare them.",
                   GEN, num_patches_list=[2, 1]),
        model_chat(tiny_model, pixels[3:], "What is it?", GEN),
        model_chat(tiny_model, None, "Tell me a joke.", GEN),
    ]  # fmt: skip
    assert answers == singles


def test_batch_chat_uses_the_models_system_message(tiny_model):

    custom = tiny_model.with_facts(system_message="Answer in one word.")
    (prompt,) = batch_prompts(custom, ["Q"], [[]])
    assert prompt.text.startswith("<|im_start|>system\nAnswer in one word.<|im_end|>")


def test_generation_stops_on_im_end_and_returns_only_the_new_text(tiny_model):
    from transformers import LogitsProcessor

    class EndAfter(LogitsProcessor):
        def __init__(self, n, eos):
            self.n, self.eos, self.calls = n, eos, 0

        def __call__(self, input_ids, scores):
            self.calls += 1
            if self.calls > self.n:
                scores[:] = -float("inf")
                scores[:, self.eos] = 0.0
            return scores

    chat = Chat(tiny_model, max_new_tokens=8)
    reply = chat.ask("Hello", logits_processor=[EndAfter(3, tiny_model.im_end_id)])
    assert reply.finish_reason == "stop"
    assert reply.new_tokens == 4  # three tokens, then <|im_end|>
    assert "<|im_end|>" not in reply.text
    assert reply.text == reply.text.strip()


# --------------------------------------------------------------------------- the session


def _three_turns(chat: Chat, a: torch.Tensor, b: torch.Tensor) -> list[str]:
    return [
        chat.ask("Describe the images.", images=[a, b]).text,
        chat.ask("What differs?").text,
        chat.ask("And this one?", images=[a[:1]]).text,
    ]


def test_greedy_answers_are_the_same_with_and_without_the_cache(tiny_model):
    a, b = _pixels(2, 1), _pixels(1, 2)
    cached, plain = Chat(tiny_model, **GEN), Chat(tiny_model, cache=False, **GEN)
    assert _three_turns(cached, a, b) == _three_turns(plain, a, b)
    turns = cached.history
    assert [t.reply.cached_tokens for t in plain.history] == [0, 0, 0]
    assert turns[1].reply.cached_tokens > 3 * 256  # the images were not recomputed
    # the answer did not re-tokenize to the generated ids, so the cache had to be cropped
    first = turns[0].reply
    assert turns[1].reply.cached_tokens < first.prompt_tokens + first.new_tokens - 1
    assert turns[2].user_text.startswith("Image-3: <image>\n")


def test_chat_builds_the_cards_single_and_multi_image_prompts(tiny_model, reference_dir):
    chat = Chat(tiny_model, max_new_tokens=2)
    reply = chat.ask("Please describe the image in detail.", images=[_pixels(7)])
    assert reply.prompt.sha256 == _reference(reference_dir, "single_image_two_turns")["sha256"]
    second = chat.ask("Please write a poem according to the image.")
    history = [("<image>\nPlease describe the image in detail.", reply.text)]
    expected = render_prompt(second.prompt.text and "Please write a poem according to the image.",
                             history=history, num_patches_list=[7])  # fmt: skip
    assert second.prompt.text == expected.text
    assert chat.as_card_history() == [
        *history,
        ("Please write a poem according to the image.", second.text),
    ]

    multi = Chat(tiny_model, max_new_tokens=2)
    reply = multi.ask("Describe the two images in detail.", images=[_pixels(7), _pixels(5, 1)])
    assert reply.prompt.sha256 == _reference(reference_dir, "multi_image_separate")["sha256"]

    video = Chat(tiny_model, max_new_tokens=2)
    reply = video.ask("What is the red panda doing?", video=FakeClip(8))
    assert reply.prompt.sha256 == _reference(reference_dir, "video_eight_frames")["sha256"]


def test_undo_reset_and_fork_drop_the_right_cache(tiny_model):
    a, b = _pixels(1, 5), _pixels(1, 6)
    chat = Chat(tiny_model, **GEN)
    chat.ask("Describe.", images=[a])
    chat.ask("More?")
    undone = chat.undo()
    assert undone.question == "More?" and len(chat.history) == 1
    # cut back to exactly the re-rendered conversation before the undone turn
    assert chat.cached_tokens == chat.budget().prompt_tokens
    # same length, different image: the cache must not serve image a's keys for image b
    chat.undo()
    assert chat.history == ()
    got = chat.ask("Describe.", images=[b]).text
    assert got == Chat(tiny_model, cache=False, **GEN).ask("Describe.", images=[b]).text

    branch = chat.fork()
    left = chat.ask("Left?").text
    right = branch.ask("Right?").text
    fresh = Chat(tiny_model, cache=False, **GEN)
    fresh.ask("Describe.", images=[b])
    twin = fresh.fork()
    assert left == fresh.ask("Left?").text and right == twin.ask("Right?").text
    assert len(chat.history) == len(branch.history) == 2
    assert chat.history[1].question == "Left?" and branch.history[1].question == "Right?"

    chat.reset()
    assert chat.history == () and chat.cached_tokens == 0
    assert (
        chat.ask("Describe.", images=[a]).text
        == Chat(tiny_model, **GEN).ask("Describe.", images=[a]).text
    )


def _no_stream_threads() -> bool:
    return not any(t.name == "vltools-chat-stream" for t in threading.enumerate())


def test_streaming_yields_the_answer_and_leaves_no_thread(tiny_model):
    chat = Chat(tiny_model, **GEN)
    pieces = list(chat.stream("Hello", images=[_pixels(1)]))
    assert "".join(pieces).strip() == chat.last.text
    assert chat.last.finish_reason in ("stop", "length")
    assert chat.last.ttft_s > 0 and chat.last.new_tokens >= 1
    assert _no_stream_threads()


def test_stop_and_break_keep_the_partial_answer_marked(tiny_model):
    chat = Chat(tiny_model, max_new_tokens=40, min_new_tokens=40)
    for _ in chat.stream("Tell me a long story."):
        chat.stop()
    turn = chat.history[-1]
    assert turn.finish_reason == "stopped" and turn.partial
    assert 1 <= turn.reply.new_tokens <= 3
    assert _no_stream_threads()
    for _ in chat.stream("Another one."):
        break
    assert chat.history[-1].finish_reason == "stopped"
    assert _no_stream_threads()
    # the history stays usable, and the cache still agrees with a fresh computation
    follow = chat.ask("Go on.", max_new_tokens=4, min_new_tokens=0)
    plain = Chat(tiny_model, cache=False, max_new_tokens=4)
    plain._turns = list(chat.history[:-1])
    assert plain.ask("Go on.").text == follow.text


def test_keyboard_interrupt_keeps_the_partial_answer_and_a_consistent_cache(tiny_model):
    class InterruptAt:
        def __init__(self, n):
            self.n, self.calls = n, 0

        def __call__(self, input_ids, scores, **kwargs):
            self.calls += 1
            if self.calls == self.n:
                raise KeyboardInterrupt
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    chat = Chat(tiny_model, max_new_tokens=20, min_new_tokens=20)
    chat.ask("Describe.", images=[_pixels(1)], max_new_tokens=3, min_new_tokens=0)
    with pytest.raises(KeyboardInterrupt):
        chat.ask("Again.", stopping_criteria=[InterruptAt(3)])
    turn = chat.history[-1]
    assert turn.finish_reason == "interrupted" and turn.reply.new_tokens >= 2
    assert chat.cached_tokens == 0  # a half-written cache is dropped; the features are kept
    assert chat.history[0].visuals[0].features is not None
    follow = chat.ask("Go on.", max_new_tokens=4, min_new_tokens=0)
    plain = Chat(tiny_model, cache=False, max_new_tokens=4)
    plain._turns = list(chat.history[:-1])
    assert plain.ask("Go on.").text == follow.text

    with pytest.raises(KeyboardInterrupt):  # Ctrl-C while iterating a stream
        for _ in chat.stream("And now?"):
            raise KeyboardInterrupt
    assert chat.history[-1].partial and _no_stream_threads()


def test_the_context_budget_is_checked_before_any_compute(tiny_model):
    chat = Chat(tiny_model, max_new_tokens=7000)
    image = _pixels(5)
    with pytest.raises(ContextBudgetError, match=r"(?s)image 1 .*5 tiles .*1280 tokens") as info:
        chat.ask("Describe.", images=[image])
    message = str(info.value)
    assert "8192" in message and "max_num" in message and "max_new_tokens" in message
    assert chat.history == () and info.value.budget.total > 8192
    video = Chat(tiny_model, max_new_tokens=7000)
    with pytest.raises(ContextBudgetError, match=r"(?s)frame 8 .*num_segments"):
        video.ask("What happens?", video=FakeClip(8))
    budget = Chat(tiny_model, max_new_tokens=100).budget("Describe.", images=[image])
    assert budget.fits and budget.rows[0][1:] == (5, 1280) and budget.max_new_tokens == 100
    assert "1280" in budget._repr_html_()
    with pytest.raises(ContextBudgetError):
        model_chat(tiny_model, _pixels(8), "Describe.", {"max_new_tokens": 7000})


def test_the_transcript_shows_turns_and_marks(tiny_model):
    from PIL import Image

    chat = Chat(tiny_model, max_new_tokens=3)
    chat.ask("Describe <b>this</b>.", images=[_pixels(1)])
    page = chat._repr_html_()
    assert "Describe &lt;b&gt;this&lt;/b&gt;." in page and "image 1: 1 tiles" in page
    assert "Chat(1 turns" in repr(chat)
    from vltools.chat import _thumbnail_html, _Visual

    thumb = _thumbnail_html(_Visual("image 1", _pixels(1), Image.new("RGB", (300, 200), "red")))
    assert thumb.startswith("<img src='data:image/png;base64,")


@pytest.mark.slow
def test_a_video_file_is_asked_about_frame_by_frame(tiny_model):
    from vltools.data import sample

    chat = Chat(tiny_model, max_new_tokens=2)
    reply = chat.ask("What is happening?", video=sample("sample_video.mp4"))
    assert reply.prompt.num_tiles == (1,) * 8
    assert chat.history[0].user_text.startswith("Frame1: <image>\nFrame2: <image>\n")
    assert chat.history[0].user_text.endswith("Frame8: <image>\nWhat is happening?")
    assert [v.label for v in chat.history[0].visuals][-1] == "frame 8"
    assert chat.ask("And then?").cached_tokens >= 8 * 256
