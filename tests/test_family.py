"""The InternLM2 and Phi-3 members of the family, from checkpoints the original code saved.

``tests/reference/family/{internlm2,phi3}`` hold tiny random checkpoints in the original format
(bfloat16 safetensors, the original config with its auto_maps, no Python files) and what the
original code computed on them (``expected.json``): token ids of the five template scenarios,
the last five rows of float32 logits for one single-image prompt, and greedy answers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vltools import render_prompt
from vltools.generation import _tokenize, embed, image_features
from vltools.models import load_model
from vltools.prompts import expand_compact

FAMILIES = ["internlm2", "phi3"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, reference_dir):
    folder = reference_dir / "family" / request.param
    expected = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    model = load_model(str(folder), device="cpu", dtype="float32", attn_implementation="eager")
    return request.param, model, expected


def _flat(ids_compact: list) -> list[int]:
    out: list[int] = []
    for item in ids_compact:
        out += [item[0]] * item[1] if isinstance(item, list) else [item]
    return out


def _pixels() -> torch.Tensor:
    """The analytic pixel values of expected.json: sin(arange * 0.001) * 1.5."""
    x = np.arange(2 * 3 * 448 * 448, dtype=np.float64)
    return torch.from_numpy((np.sin(x * 0.001) * 1.5).astype(np.float32)).reshape(2, 3, 448, 448)


def test_the_template_stop_token_and_image_token_come_from_the_checkpoint(family):
    name, model, expected = family
    assert model.template == expected["template"]
    assert model.stop_token == expected["stop_token"]
    assert model.im_end_id == model.tokenizer.convert_tokens_to_ids(expected["stop_token"])
    assert model.image_token_id == expected["img_context_id"]
    assert model.config.image_token_id == expected["img_context_id"]


def test_the_language_model_is_native(family):
    name, model, _ = family
    text = model.config.text_config
    assert text.model_type == {"internlm2": "llama", "phi3": "phi3"}[name]
    if name == "phi3":
        assert text.rope_parameters["rope_type"] == "longrope"  # the original's "su"
    else:
        assert text.rope_parameters["rope_type"] == "dynamic"
        assert text.num_key_value_heads < text.num_attention_heads  # grouped-query heads


def test_the_internvit_6b_traits_reach_the_vision_tower(family):
    name, model, _ = family
    vision = model.config.vision_config
    traits = (vision.use_qk_norm, vision.norm_type)
    assert traits == ((True, "rms_norm") if name == "internlm2" else (False, "layer_norm"))


@pytest.mark.parametrize("index", range(5))
def test_the_template_prompts_tokenize_as_the_original_tokenizer(family, reference_dir, index):
    name, model, expected = family
    case = expected["tokenizer"][index]
    templates = json.loads((reference_dir / "templates.json").read_text(encoding="utf-8"))
    (entry,) = [
        e
        for e in templates
        if e["template"] == expected["template"] and e["scenario"] == case["scenario"]
    ]
    assert entry["sha256"] == case["prompt_sha256"]
    ids = _tokenize(model, expand_compact(entry["prompt_compact"]))[0].tolist()
    assert ids == _flat(case["ids_compact"])


def test_the_converted_model_gives_the_original_logits(family):
    name, model, expected = family
    prompt = render_prompt(
        expected["prompt"]["question"],
        num_patches_list=expected["prompt"]["num_patches_list"],
        template=model.prompt_template,
    )
    ids = _tokenize(model, prompt.text)
    assert ids[0].tolist() == _flat(expected["prompt"]["ids_compact"])
    with torch.no_grad():
        embeds = embed(model, ids, image_features(model, _pixels()))
        logits = model.model(inputs_embeds=embeds).logits[0, -5:]  # [5, vocab]
    reference = torch.tensor(expected["logits_last5"])
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=0)


def test_greedy_answers_are_the_originals(family):
    name, model, expected = family
    question = expected["prompt"]["question"]
    npl = expected["prompt"]["num_patches_list"]
    greedy = {"max_new_tokens": 8, "do_sample": False}
    assert (
        model.chat(_pixels(), question, greedy, num_patches_list=npl) == expected["chat_greedy_8"]
    )
    assert model.chat(None, "Hello, who are you?", greedy) == expected["chat_text_only_greedy_8"]
