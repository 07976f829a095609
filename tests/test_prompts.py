"""The prompt text: every scenario of tests/reference/prompts.json, byte for byte."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vltools.constants import HERMES2_SYSTEM_MESSAGE, IMG_CONTEXT_TOKEN
from vltools.prompts import (
    Prompt,
    chat_query,
    check_history,
    compact,
    expand_compact,
    expand_images,
    label_images,
    render_prompt,
    render_template,
)

VIDEO_PREFIX = "".join(f"Frame{i + 1}: <image>\n" for i in range(8))

# scenario -> list of calls; each call: (question, num_patches_list) and the history is built
# from the previous calls' questions with placeholder answers ANSWER1, ANSWER2, ...
SCENARIOS: dict[str, list[tuple[str, list[int]]]] = {
    "pure_text_two_turns": [("Hello, who are you?", []), ("Can you tell me a story?", [])],
    "single_image_one_turn": [("<image>\nPlease describe the image shortly.", [7])],
    "single_image_two_turns": [
        ("<image>\nPlease describe the image in detail.", [7]),
        ("Please write a poem according to the image.", [7]),
    ],
    "multi_image_combined": [
        ("<image>\nDescribe the two images in detail.", [14]),
        ("What are the similarities and differences between these two images.", [14]),
    ],
    "multi_image_separate": [
        ("Image-1: <image>\nImage-2: <image>\nDescribe the two images in detail.", [7, 5]),
        ("What are the similarities and differences between these two images.", [7, 5]),
    ],
    "video_eight_frames": [
        (VIDEO_PREFIX + "What is the red panda doing?", [1] * 8),
        ("Describe this video in detail. Don't repeat.", [1] * 8),
    ],
}
BATCH = {"batch_one_image_each": ("<image>\nDescribe the image in detail.", [7, 5])}


def _reference(reference_dir) -> list[dict]:
    return json.loads((reference_dir / "prompts.json").read_text(encoding="utf-8"))


def _build(entry: dict) -> Prompt:
    if entry["scenario"] in BATCH:
        question, per_item = BATCH[entry["scenario"]]
        return chat_query(question, num_patches_list=[per_item[entry["item"]]])
    calls = SCENARIOS[entry["scenario"]]
    history = None
    for k, (question, npl) in enumerate(calls[: entry["call"] + 1]):
        prompt = render_prompt(question, history=history, num_patches_list=npl)
        history = [*(history or []), (question, f"ANSWER{k + 1}")]
    return prompt


def test_every_reference_scenario_is_covered(reference_dir):
    names = {e["scenario"] for e in _reference(reference_dir)}
    assert names == set(SCENARIOS) | set(BATCH)


@pytest.mark.parametrize("index", range(13))
def test_each_reference_prompt_is_reproduced_exactly(reference_dir, index):
    entry = _reference(reference_dir)[index]
    prompt = _build(entry)
    assert prompt.compact == entry["prompt_compact"]
    assert prompt.chars == entry["chars"]
    assert prompt.sha256 == entry["sha256"], entry["scenario"]


def test_the_first_image_is_prepended_only_on_the_first_turn_with_pixels():
    first = render_prompt("Please describe the image shortly.", num_patches_list=[7])
    assert "user\n<img>" in first.text
    assert first.text.endswith(
        "</img>\nPlease describe the image shortly.<|im_end|><|im_start|>assistant\n"
    )
    # with a history (even an empty one) the card does not prepend
    later = chat_query("Q", history=[], num_patches_list=[])
    assert "<img>" not in later.text


def test_pixel_values_default_to_one_block_of_all_tiles():
    class FakeTensor:
        shape = (14, 3, 448, 448)

    prompt = render_prompt("Describe.", pixel_values=FakeTensor())
    assert prompt.num_tiles == (14,)
    with pytest.deprecated_call(match="use Prompt.num_tiles"):
        assert prompt.num_patches_list == (14,)  # the old name, for a while
    assert prompt.num_image_tokens == 14 * 256
    assert prompt.text.count(IMG_CONTEXT_TOKEN) == 14 * 256


def test_num_patches_list_must_sum_to_the_tiles_of_pixel_values():
    class FakeTensor:
        shape = (12, 3, 448, 448)

    with pytest.raises(ValueError, match="sums to 13 but pixel_values has 12"):
        render_prompt(
            "Image-1: <image>\nImage-2: <image>\nQ",
            num_patches_list=[7, 6],
            pixel_values=FakeTensor(),
        )


def test_placeholder_count_must_match_the_images():
    with pytest.raises(ValueError, match="1 '<image>' placeholder.*2 image"):
        render_prompt("<image>\nQ", num_patches_list=[7, 5])
    with pytest.raises(ValueError, match="2 '<image>' placeholder.*0 image"):
        render_prompt("<image><image> hello")


def test_template_has_no_newlines_between_turns_and_a_default_system_message():
    text = render_template([("user", "Q"), ("assistant", "A"), ("user", "Q2"), ("assistant", None)])
    assert text == (
        f"<|im_start|>system\n{HERMES2_SYSTEM_MESSAGE}<|im_end|><|im_start|>user\nQ<|im_end|>"
        "<|im_start|>assistant\nA<|im_end|><|im_start|>user\nQ2<|im_end|><|im_start|>assistant\n"
    )
    assert len(HERMES2_SYSTEM_MESSAGE) == 59
    custom = render_template([("user", "Q"), ("assistant", None)], system_message="Be brief.")
    assert custom.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    with pytest.raises(ValueError, match="Unknown role 'system'"):
        render_template([("system", "x")])


def test_images_are_labelled_like_the_card():
    assert label_images("Q", 0) == "Q"
    assert label_images("Q", 1) == "<image>\nQ"
    assert label_images("Q", 3) == "Image-1: <image>\nImage-2: <image>\nImage-3: <image>\nQ"
    assert label_images("Look <image> here", 2) == "Look <image> here"


@pytest.mark.parametrize("bad", ["text", [("q",)], [("q", 1)], [["q", "a", "b"]], 5, [None]])
def test_a_malformed_history_is_refused_with_the_expected_form(bad):
    with pytest.raises((TypeError, ValueError), match="question, answer"):
        check_history(bad)


def test_the_compact_form_is_shown_in_repr_and_html():
    prompt = render_prompt("Q", num_patches_list=[2])
    assert "<IMG_CONTEXT>×512" in repr(prompt)
    assert "&lt;IMG_CONTEXT&gt;×512" in prompt._repr_html_()
    assert str(prompt) == prompt.text


@given(st.lists(st.integers(min_value=1, max_value=13), max_size=5), st.text(max_size=30))
def test_compact_and_expand_are_inverse_and_count_the_tokens(npl, question):
    question = question.replace("<image>", "").replace("×", "")
    labelled = label_images(question, len(npl))
    text = expand_images(labelled, npl)
    assert text.count(IMG_CONTEXT_TOKEN) == 256 * sum(npl)
    assert expand_compact(compact(text)) == text
    for n in npl:
        assert f"{IMG_CONTEXT_TOKEN}×{256 * n}</img>" in compact(text)
