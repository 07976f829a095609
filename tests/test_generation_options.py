"""Generation options act as the card applies them: on the new tokens only, checked up front.

The card generates from ``inputs_embeds`` alone, so ``repetition_penalty``,
``no_repeat_ngram_size`` and ``bad_words_ids`` see only the answer so far. The reference here is
an independent greedy loop over the language model that applies each rule to the new tokens.
"""

from __future__ import annotations

import pytest
import torch

from vltools.chat import Chat, model_batch_chat, model_chat
from vltools.generation import (
    check_generation_options,
    embed,
    generate_ids,
    image_features,
    tokenize,
)
from vltools.prompts import chat_query

STEPS = 12


def _banned_by_ngram(seen: list[int], n: int) -> set[int]:
    if n <= 0 or len(seen) < n:
        return set()
    prefix = tuple(seen[len(seen) - n + 1 :])
    return {
        seen[i + n - 1] for i in range(len(seen) - n + 1) if tuple(seen[i : i + n - 1]) == prefix
    }


def reference_answer(vlm, prompt, pixels, *, penalty=1.0, ngram=0, bad=(), history=()):
    """Greedy decoding from embeddings alone, each rule applied to ``history + new`` tokens.

    ``history`` stands for earlier tokens the rules would also see (the prompt, when a caller
    wrongly passes input_ids): empty is the card's behaviour.
    """
    ids = tokenize(vlm, prompt.text)
    features = image_features(vlm, pixels) if pixels is not None else None
    embeds = embed(vlm, ids, features)  # [1, L, hidden]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(STEPS):
            logits = vlm.model(inputs_embeds=embeds).logits[0, -1].double()  # [vocab]
            seen = [*history, *new]
            for t in set(seen):
                logits[t] = logits[t] / penalty if logits[t] > 0 else logits[t] * penalty
            for t in _banned_by_ngram(seen, ngram):
                logits[t] = -float("inf")
            for word in bad:
                if len(word) == 1 or seen[-(len(word) - 1) :] == list(word[:-1]):
                    logits[word[-1]] = -float("inf")
            token = int(torch.argmax(logits))
            new.append(token)
            if token == vlm.im_end_id:
                break
            step = vlm.model.get_input_embeddings()(torch.tensor([[token]]))
            embeds = torch.cat([embeds, step.to(embeds.dtype)], dim=1)
    return new


@pytest.fixture(scope="module")
def pixels():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 448, 448, generator=g)


OPTIONS = {
    "penalty": ({"repetition_penalty": 2.0}, {"penalty": 2.0}),
    "ngram": ({"no_repeat_ngram_size": 2}, {"ngram": 2}),
    "bad_words": (None, None),  # filled from the greedy answer below
}


def _options(vlm, pixels, kind):
    if kind != "bad_words":
        return OPTIONS[kind]
    prompt = chat_query("Describe the image.", num_patches_list=[2])
    greedy = reference_answer(vlm, prompt, pixels)
    words = [[greedy[0]], [greedy[2], greedy[3]]]  # a single-token and a two-token word
    return {"bad_words_ids": words}, {"bad": words}


@pytest.mark.parametrize("kind", ["penalty", "ngram", "bad_words"])
def test_chat_applies_the_option_to_the_new_tokens_only(tiny_model, pixels, kind):
    options, rules = _options(tiny_model, pixels, kind)
    prompt = chat_query(
        "Describe the image.", num_patches_list=[2], template=tiny_model.prompt_template
    )
    expected = reference_answer(tiny_model, prompt, pixels, **rules)
    got = generate_ids(tiny_model, prompt, pixels, {"max_new_tokens": STEPS, **options})
    assert got == expected
    answer = model_chat(
        tiny_model, pixels, "Describe the image.", {"max_new_tokens": STEPS, **options}
    )
    assert answer == tiny_model.tokenizer.decode(expected, skip_special_tokens=True).strip()


def test_the_penalty_over_the_prompt_would_give_another_answer(tiny_model, pixels):
    """The test above can fail: counting the prompt's tokens changes the tiny model's answer."""
    prompt = chat_query("Describe the image.", num_patches_list=[2])
    ids = tokenize(tiny_model, prompt.text)[0].tolist()
    card = reference_answer(tiny_model, prompt, pixels, penalty=2.0)
    over_prompt = reference_answer(tiny_model, prompt, pixels, penalty=2.0, history=ids)
    assert card != over_prompt


@pytest.mark.parametrize("kind", ["penalty", "ngram", "bad_words"])
def test_every_generation_path_applies_the_options_as_the_card(tiny_model, pixels, kind):
    options, rules = _options(tiny_model, pixels, kind)
    gen = {"max_new_tokens": STEPS, **options}

    def expected_text(prompt):
        ids = reference_answer(tiny_model, prompt, pixels if prompt.num_tiles else None, **rules)
        return tiny_model.tokenizer.decode(ids, skip_special_tokens=True).strip()

    first = chat_query("Describe the image.", num_patches_list=[2])
    (batch,) = model_batch_chat(tiny_model, pixels, ["Describe the image."], gen, [2])
    assert batch == expected_text(first)

    chat = Chat(tiny_model, **gen)
    assert chat.ask("Describe the image.", images=[pixels]).text == expected_text(first)
    second = chat_query("And again?", history=chat.as_card_history(), num_patches_list=[2])
    streamed = "".join(chat.stream("And again?"))  # the key/value-cache path, streamed
    assert chat.last.cached_tokens > 0
    assert chat.last.text == expected_text(second)
    assert streamed.strip() == chat.last.text


def test_the_attention_capture_generates_like_chat(tiny_model):
    import numpy as np
    from PIL import Image

    from vltools import load_image
    from vltools.attention import capture

    rng = np.random.default_rng(0)
    photo = load_image(Image.fromarray(rng.integers(0, 255, (448, 448, 3), dtype=np.uint8)))
    options, rules = OPTIONS["penalty"]
    with capture(tiny_model, [photo]) as cap:
        text = cap.generate("Describe the image.", max_new_tokens=STEPS, **options)
    prompt = chat_query("Describe the image.", num_patches_list=[photo.num_tiles])
    assert cap.prompt("Describe the image.") == prompt.text
    pixels = photo.pixel_values.to(tiny_model.dtype)
    expected = reference_answer(tiny_model, prompt, pixels, **rules)
    assert text == tiny_model.tokenizer.decode(expected, skip_special_tokens=True).strip()
    assert [int(t) for t in cap.maps.token_ids] == expected
    assert cap.maps.prompt_length == len(tokenize(tiny_model, prompt.text)[0])


BAD = [
    ({"num_beams": 0}, ValueError, r"num_beams=0 is not allowed; expected an int >= 1"),
    (
        {"do_sample": True, "temperature": 0},
        ValueError,
        r"temperature=0 is not allowed; expected a number > 0 with do_sample=True.*do_sample=False",
    ),
    ({"top_p": 0.0}, ValueError, r"top_p=0.0 is not allowed; expected a number in \(0, 1\]"),
    ({"top_p": 1.5}, ValueError, r"top_p=1.5 is not allowed"),
    (
        {"repetition_penalty": -1.0},
        ValueError,
        r"repetition_penalty=-1.0 is not allowed; expected a number > 0",
    ),
    ({"bad_words_ids": "bad"}, TypeError, r"bad_words_ids='bad' must be a list of token-id lists"),
    ({"num_beams": "2"}, TypeError, r"num_beams='2' must be an int"),
]


@pytest.mark.parametrize(("options", "error", "match"), BAD)
def test_bad_option_values_are_refused_with_the_range_and_the_fix(options, error, match):
    with pytest.raises(error, match=match):
        check_generation_options(options)


def test_a_string_where_the_options_dict_belongs_is_refused():
    with pytest.raises(TypeError, match=r"generation_config must be a dict.*str 'greedy'"):
        check_generation_options("greedy")


def test_beam_search_is_refused_with_streaming_and_in_a_chat(tiny_model):
    with pytest.raises(ValueError, match=r"num_beams=2 is not allowed; expected 1 while streaming"):
        check_generation_options({"num_beams": 2, "streamer": object()})
    with pytest.raises(ValueError, match=r"num_beams=2 .*streaming"):
        Chat(tiny_model, num_beams=2)


@pytest.mark.parametrize(("options", "error", "match"), BAD)
def test_no_vision_pass_runs_before_a_bad_option_is_refused(
    tiny_model, pixels, monkeypatch, options, error, match
):
    calls = []
    tower = tiny_model.vision_tower
    handle = tower.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(error, match=match):
            model_chat(tiny_model, pixels, "Describe.", options)
        with pytest.raises(error, match=match):
            model_batch_chat(tiny_model, pixels, ["Describe."], options, [2])
        with pytest.raises(error, match=match):
            Chat(tiny_model).ask("Describe.", images=[pixels], **options)
        assert calls == []
        model_chat(tiny_model, pixels, "Describe.", {"max_new_tokens": 1})
        assert calls  # the spy does see a vision pass
    finally:
        handle.remove()
