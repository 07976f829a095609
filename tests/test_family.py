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
from vltools.generation import embed, image_features, tokenize
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
    ids = tokenize(model, expand_compact(entry["prompt_compact"]))[0].tolist()
    assert ids == _flat(case["ids_compact"])


def test_the_converted_model_gives_the_original_logits(family):
    name, model, expected = family
    prompt = render_prompt(
        expected["prompt"]["question"],
        num_patches_list=expected["prompt"]["num_patches_list"],
        template=model.prompt_template,
    )
    ids = tokenize(model, prompt.text)
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


# ------------------------------------------------------------------ tiny family checkpoints

TINY = ["qwen2.5", "internlm2", "phi3"]


@pytest.fixture(scope="module", params=TINY)
def tiny_member(request):
    from vltools.testing import tiny_checkpoint

    folder = tiny_checkpoint(language_model=request.param)
    return request.param, folder, load_model(str(folder), device="cpu", dtype="float32")


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def reference_text_logits(folder, ids: list[int]) -> torch.Tensor:
    """Logits ``[L, vocab]`` of the ORIGINAL language model, computed here from its own keys.

    Written from the InternLM2 and Phi-3 architectures (not from transformers): RMSNorm,
    rotary embeddings (Phi-3's ``su``: short factors below the original context, scaled by
    sqrt(1 + ln(scale) / ln(original))), grouped-query causal attention, SwiGLU.
    """
    from safetensors.torch import load_file

    t = json.loads((folder / "config.json").read_text())["llm_config"]
    w = {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}
    kind, eps = t["model_type"], t["rms_norm_eps"]
    heads = t["num_attention_heads"]
    kv = t["num_key_value_heads"]
    d = t["hidden_size"] // heads
    group = heads // kv
    n = len(ids)
    lm = "language_model.model."
    embed = w[lm + ("tok_embeddings.weight" if kind == "internlm2" else "embed_tokens.weight")]
    head = w["language_model." + ("output.weight" if kind == "internlm2" else "lm_head.weight")]
    inv = 1.0 / (t["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    scale = 1.0
    if kind == "phi3":
        inv = inv / torch.tensor(t["rope_scaling"]["short_factor"], dtype=torch.float64)
        ratio = t["max_position_embeddings"] / t["original_max_position_embeddings"]
        scale = float(np.sqrt(1 + np.log(ratio) / np.log(t["original_max_position_embeddings"])))
    angles = torch.outer(torch.arange(n, dtype=torch.float64), inv)  # [L, d/2]
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = (angles.cos() * scale).float(), (angles.sin() * scale).float()  # [L, d]
    mask = torch.full((n, n), float("-inf")).triu(1)
    x = embed[torch.tensor(ids)]  # [L, hidden]
    for i in range(t["num_hidden_layers"]):
        p = f"{lm}layers.{i}."
        if kind == "internlm2":
            h = _rms(x, w[p + "attention_norm.weight"], eps)
            qkv = (h @ w[p + "attention.wqkv.weight"].T).view(n, kv, group + 2, d)
            q = qkv[:, :, :group].reshape(n, heads, d)
            k, v = qkv[:, :, group], qkv[:, :, group + 1]  # [L, kv, d]
            wo = w[p + "attention.wo.weight"]
        else:
            h = _rms(x, w[p + "input_layernorm.weight"], eps)
            qkv = h @ w[p + "self_attn.qkv_proj.weight"].T
            q = qkv[:, : heads * d].view(n, heads, d)
            k = qkv[:, heads * d : (heads + kv) * d].view(n, kv, d)
            v = qkv[:, (heads + kv) * d :].view(n, kv, d)
            wo = w[p + "self_attn.o_proj.weight"]
        q = q * cos[:, None] + _rotate_half(q) * sin[:, None]
        k = k * cos[:, None] + _rotate_half(k) * sin[:, None]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # [L, H, d]
        scores = torch.einsum("qhd,khd->hqk", q, k) / d**0.5 + mask
        out = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(n, heads * d)
        x = x + out @ wo.T
        if kind == "internlm2":
            h = _rms(x, w[p + "ffn_norm.weight"], eps)
            gate, up = h @ w[p + "feed_forward.w1.weight"].T, h @ w[p + "feed_forward.w3.weight"].T
            x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "feed_forward.w2.weight"].T
        else:
            h = _rms(x, w[p + "post_attention_layernorm.weight"], eps)
            gate, up = (h @ w[p + "mlp.gate_up_proj.weight"].T).chunk(2, dim=-1)
            x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    return _rms(x, w[lm + "norm.weight"], eps) @ head.T


def test_each_tiny_member_has_its_own_cache_folder_and_original_files(tiny_member):
    name, folder, _ = tiny_member
    assert folder.name.startswith(f"tiny-internvl2-{name}-")
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= files
    if name != "qwen2.5":
        assert "tokenizer.model" in files and not any(f.endswith(".py") for f in files)
    assert ("tokenizer.json" in files) == (name != "internlm2")  # InternLM2 ships spm only
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "internvl_chat"
    assert config["llm_config"]["model_type"] == {"qwen2.5": "qwen2"}.get(name, name)


def test_each_tiny_member_takes_its_template_stop_token_and_image_token(tiny_member):
    name, folder, model = tiny_member
    template = {"qwen2.5": "internvl2_5", "internlm2": "internlm2-chat", "phi3": "phi3-chat"}
    assert model.template == template[name]
    assert model.stop_token == {"phi3": "<|end|>"}.get(name, "<|im_end|>")
    added = json.loads((folder / "added_tokens.json").read_text())
    assert model.image_token_id == added["<IMG_CONTEXT>"] == model.config.image_token_id
    assert model.im_end_id == added[model.stop_token]


@pytest.mark.parametrize("name", ["internlm2", "phi3"])
def test_the_converted_language_model_matches_an_independent_computation(name):
    from vltools.testing import tiny_checkpoint

    folder = tiny_checkpoint(language_model=name)
    model = load_model(str(folder), device="cpu", dtype="float32")
    ids = tokenize(model, render_prompt("Hello, who are you?", template=model.template).text)
    with torch.no_grad():
        logits = model.model(input_ids=ids).logits[0]  # [L, vocab]
    expected = reference_text_logits(folder, ids[0].tolist())
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    assert logits.std() > 0.1  # random weights give a spread the comparison can see


def test_the_tiny_members_are_byte_identical_on_every_build(tmp_path):
    from vltools.testing import tiny_checkpoint

    for name in ("internlm2", "phi3"):
        a = tiny_checkpoint(tmp_path / f"{name}-a", language_model=name)
        b = tiny_checkpoint(tmp_path / f"{name}-b", language_model=name)
        for f in ("model.safetensors", "tokenizer.model", "config.json"):
            assert (a / f).read_bytes() == (b / f).read_bytes(), (name, f)


def test_an_unknown_language_model_is_named_with_the_known_ones():
    from vltools.testing import tiny_checkpoint

    with pytest.raises(ValueError, match=r"language_model='llama9'.*qwen2, qwen2\.5, internlm2"):
        tiny_checkpoint(language_model="llama9")


def test_a_streamed_answer_reads_as_the_final_one_for_sentencepiece_bytes(reference_dir):
    from vltools.chat import Chat

    model = load_model(str(reference_dir / "family" / "internlm2"), device="cpu", dtype="float32")
    chat = Chat(model, max_new_tokens=8)
    pieces = list(chat.stream("Hello, who are you?"))
    assert "".join(pieces).strip() == chat.last.text == "� 实��英好s"


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 2), (8, 8), (48, 8), (32, 8)])
def test_the_wqkv_blocks_split_as_internlm2_reshapes_its_fused_projection(heads, kv_heads):
    """InternLM2 views ``wqkv`` output as ``[kv_heads, groups + 2, head_dim]`` (query group,
    key, value per key/value head); the row blocks must pick the same rows, in head order."""
    from vltools.conversion import HeadLayout, wqkv_blocks

    d, groups = 3, heads // kv_heads
    rows = torch.arange((heads + 2 * kv_heads) * d)
    view = rows.view(kv_heads, groups + 2, d)
    expected = {
        "q": view[:, :groups].reshape(-1),
        "k": view[:, groups].reshape(-1),
        "v": view[:, groups + 1].reshape(-1),
    }
    for name, blocks in wqkv_blocks(HeadLayout(heads, kv_heads, d)).items():
        assert torch.equal(torch.cat([rows[a:b] for a, b in blocks]), expected[name]), name
