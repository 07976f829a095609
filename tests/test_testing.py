"""The offline tiny checkpoint: original InternVL2 format, real geometry, deterministic, cached."""

from __future__ import annotations

import json
import math
from pathlib import Path

from vltools import testing
from vltools.constants import (
    ENDOFTEXT,
    HERMES2_SYSTEM_MESSAGE,
    IM_END,
    IM_START,
    INTERNVL_SPECIAL_TOKENS,
)

# The original state dict (``docs/FORMAT.md``, section 3), written with symbolic sizes: Dv/Iv vision width/MLP,
# Dt/It/KV/V language width/MLP/key-value width/vocabulary, G the patch grid, P the patch.
SECTION_1_3 = {
    "vision_model.embeddings.class_embedding": ("1", "1", "Dv"),
    "vision_model.embeddings.position_embedding": ("1", "G*G+1", "Dv"),
    "vision_model.embeddings.patch_embedding.weight": ("Dv", "3", "P", "P"),
    "vision_model.embeddings.patch_embedding.bias": ("Dv",),
    "vision_model.encoder.layers.{i}.ls1": ("Dv",),
    "vision_model.encoder.layers.{i}.ls2": ("Dv",),
    "vision_model.encoder.layers.{i}.attn.qkv.weight": ("3*Dv", "Dv"),
    "vision_model.encoder.layers.{i}.attn.qkv.bias": ("3*Dv",),
    "vision_model.encoder.layers.{i}.attn.proj.weight": ("Dv", "Dv"),
    "vision_model.encoder.layers.{i}.attn.proj.bias": ("Dv",),
    "vision_model.encoder.layers.{i}.mlp.fc1.weight": ("Iv", "Dv"),
    "vision_model.encoder.layers.{i}.mlp.fc1.bias": ("Iv",),
    "vision_model.encoder.layers.{i}.mlp.fc2.weight": ("Dv", "Iv"),
    "vision_model.encoder.layers.{i}.mlp.fc2.bias": ("Dv",),
    "vision_model.encoder.layers.{i}.norm1.weight": ("Dv",),
    "vision_model.encoder.layers.{i}.norm1.bias": ("Dv",),
    "vision_model.encoder.layers.{i}.norm2.weight": ("Dv",),
    "vision_model.encoder.layers.{i}.norm2.bias": ("Dv",),
    "mlp1.0.weight": ("4*Dv",),
    "mlp1.0.bias": ("4*Dv",),
    "mlp1.1.weight": ("Dt", "4*Dv"),
    "mlp1.1.bias": ("Dt",),
    "mlp1.3.weight": ("Dt", "Dt"),
    "mlp1.3.bias": ("Dt",),
    "language_model.model.embed_tokens.weight": ("V", "Dt"),
    "language_model.model.layers.{j}.self_attn.q_proj.weight": ("Dt", "Dt"),
    "language_model.model.layers.{j}.self_attn.q_proj.bias": ("Dt",),
    "language_model.model.layers.{j}.self_attn.k_proj.weight": ("KV", "Dt"),
    "language_model.model.layers.{j}.self_attn.k_proj.bias": ("KV",),
    "language_model.model.layers.{j}.self_attn.v_proj.weight": ("KV", "Dt"),
    "language_model.model.layers.{j}.self_attn.v_proj.bias": ("KV",),
    "language_model.model.layers.{j}.self_attn.o_proj.weight": ("Dt", "Dt"),
    "language_model.model.layers.{j}.mlp.gate_proj.weight": ("It", "Dt"),
    "language_model.model.layers.{j}.mlp.up_proj.weight": ("It", "Dt"),
    "language_model.model.layers.{j}.mlp.down_proj.weight": ("Dt", "It"),
    "language_model.model.layers.{j}.input_layernorm.weight": ("Dt",),
    "language_model.model.layers.{j}.post_attention_layernorm.weight": ("Dt",),
    "language_model.model.norm.weight": ("Dt",),
    "language_model.lm_head.weight": ("V", "Dt"),
}


def expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Expand SECTION_1_3 for a config: every layer index, every symbolic size."""
    v, t = config["vision_config"], config["llm_config"]
    sizes = {
        "Dv": v["hidden_size"],
        "Iv": v["intermediate_size"],
        "P": v["patch_size"],
        "G": v["image_size"] // v["patch_size"],
        "Dt": t["hidden_size"],
        "It": t["intermediate_size"],
        "KV": t["num_key_value_heads"] * t["hidden_size"] // t["num_attention_heads"],
        "V": t["vocab_size"],
    }
    out = {}
    for pattern, dims in SECTION_1_3.items():
        shape = tuple(int(eval(d, {}, sizes)) for d in dims)  # noqa: S307 - our own table
        if "{i}" in pattern:
            for i in range(v["num_hidden_layers"]):
                out[pattern.format(i=i)] = shape
        elif "{j}" in pattern:
            for j in range(t["num_hidden_layers"]):
                out[pattern.format(j=j)] = shape
        else:
            out[pattern] = shape
    return out


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def test_the_full_size_config_is_the_real_internvl2_1b_config(reference_dir):
    real = json.loads((reference_dir / "internvl2_1b_config.json").read_text())
    assert testing.full_size_config() == real


def test_the_full_size_layout_has_the_sheets_637_keys_and_938m_parameters():
    shapes = testing.original_key_shapes(testing.full_size_config())
    assert shapes == expected_shapes(testing.full_size_config())
    assert len(shapes) == 637
    assert sum(math.prod(s) for s in shapes.values()) == 938_158_976
    # a few shapes of the real checkpoint
    assert shapes["vision_model.encoder.layers.23.attn.qkv.weight"] == (3072, 1024)
    assert shapes["language_model.model.layers.0.self_attn.k_proj.weight"] == (128, 896)
    assert shapes["language_model.lm_head.weight"] == (151655, 896)
    assert shapes["mlp1.1.weight"] == (896, 4096)


def test_the_tiny_checkpoint_has_the_files_the_real_repository_ships(tiny_path):
    names = {p.name for p in testing.checkpoint_files(tiny_path)}
    assert names == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "added_tokens.json",
        "special_tokens_map.json",
    }
    assert not list(tiny_path.glob("*.py"))


def test_the_tiny_config_keeps_every_real_field_and_the_real_geometry(tiny_path, reference_dir):
    real = json.loads((reference_dir / "internvl2_1b_config.json").read_text())
    tiny = json.loads((tiny_path / "config.json").read_text())
    assert tiny.keys() == real.keys()
    assert tiny["vision_config"].keys() == real["vision_config"].keys()
    assert tiny["llm_config"].keys() == real["llm_config"].keys()
    shrunk = {"vision_config", "llm_config"}
    assert {k: v for k, v in tiny.items() if k not in shrunk} == {
        k: v for k, v in real.items() if k not in shrunk
    }
    assert tiny["model_type"] == "internvl_chat"
    assert tiny["template"] == "Hermes-2" and tiny["ps_version"] == "v2"
    v = tiny["vision_config"]
    assert (v["image_size"], v["patch_size"], tiny["force_image_size"]) == (448, 14, 448)
    assert tiny["downsample_ratio"] == 0.5
    assert (v["image_size"] // v["patch_size"]) ** 2 * tiny["downsample_ratio"] ** 2 == 256
    assert v["qkv_bias"] is True and v["qk_normalization"] is False
    assert v["hidden_size"] < real["vision_config"]["hidden_size"]
    assert tiny["llm_config"]["hidden_size"] < real["llm_config"]["hidden_size"]
    assert tiny["llm_config"]["tie_word_embeddings"] is False


def test_every_original_key_pattern_is_present_at_tiny_size(tiny_path):
    config = json.loads((tiny_path / "config.json").read_text())
    assert safetensors_shapes(tiny_path / "model.safetensors") == expected_shapes(config)


def test_the_weights_are_bf16_with_pt_metadata_like_the_real_file(tiny_path):
    from safetensors import safe_open

    with safe_open(str(tiny_path / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert {str(t.dtype) for t in tensors.values()} == {"torch.bfloat16"}
    for key, t in tensors.items():
        assert t.float().isfinite().all(), key
        assert t.float().std() > 0 or t.numel() == 1, f"{key} is constant"
    lm_head = tensors["language_model.lm_head.weight"]
    assert not lm_head.equal(tensors["language_model.model.embed_tokens.weight"])


def test_two_builds_in_different_folders_are_byte_identical(tmp_path):
    a = testing.tiny_checkpoint(tmp_path / "a")
    b = testing.tiny_checkpoint(tmp_path / "b")
    for path in testing.checkpoint_files(a):
        assert path.read_bytes() == (b / path.name).read_bytes(), path.name


def test_the_cache_is_keyed_by_the_recipe_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("VLTOOLS_CACHE", str(tmp_path))
    first = testing.tiny_checkpoint()
    assert first.parent == tmp_path and first.name.startswith("tiny-internvl2-")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert testing.tiny_checkpoint() == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    monkeypatch.setattr(testing, "_RECIPE_VERSION", testing._RECIPE_VERSION + 1)
    second = testing.tiny_checkpoint()
    assert second != first and second.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_the_tokenizer_loads_without_remote_code_as_qwen2(tiny_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_path), trust_remote_code=False)
    assert type(tok).__name__ == "Qwen2Tokenizer"
    config = json.loads((tiny_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "Qwen2Tokenizer"
    assert tok.eos_token == IM_END and tok.pad_token == ENDOFTEXT and tok.bos_token is None


def test_special_tokens_close_the_vocabulary_in_the_real_order(tiny_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_path), trust_remote_code=False)
    vocab_size = json.loads((tiny_path / "config.json").read_text())["llm_config"]["vocab_size"]
    order = [ENDOFTEXT, IM_START, IM_END, *INTERNVL_SPECIAL_TOKENS]
    assert INTERNVL_SPECIAL_TOKENS[2] == "<IMG_CONTEXT>"
    ids = tok.convert_tokens_to_ids(order)
    assert ids == list(range(vocab_size - 12, vocab_size))
    assert len(tok) == vocab_size
    added = json.loads((tiny_path / "added_tokens.json").read_text())
    assert added == dict(zip(order, ids, strict=True))
    # each is one token and special (dropped by skip_special_tokens)
    text = "".join(order)
    assert tok(text).input_ids == ids
    assert tok.decode(ids, skip_special_tokens=True) == ""


def test_chinese_system_message_round_trips_and_no_bos_is_added(tiny_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_path), trust_remote_code=False)
    prompt = f"{IM_START}system\n{HERMES2_SYSTEM_MESSAGE}{IM_END}{IM_START}user\nHello?{IM_END}"
    ids = tok(prompt).input_ids
    assert ids[0] == tok.convert_tokens_to_ids(IM_START)
    assert tok.decode(ids) == prompt
    assert tok.decode(tok(HERMES2_SYSTEM_MESSAGE).input_ids) == HERMES2_SYSTEM_MESSAGE


def test_the_full_size_tokenizer_puts_special_tokens_at_their_real_ids(tmp_path):
    from transformers import AutoTokenizer

    ids = testing._write_tokenizer(tmp_path, testing.REAL_BASE_VOCAB)
    assert ids["<|endoftext|>"] == 151643 and ids["<IMG_CONTEXT>"] == 151648
    assert ids["</box>"] == 151654 and max(ids.values()) < 151655
    tok = AutoTokenizer.from_pretrained(str(tmp_path), trust_remote_code=False)
    assert len(tok) == 151655
    assert tok.convert_tokens_to_ids("<IMG_CONTEXT>") == 151648
    assert tok.decode(tok(HERMES2_SYSTEM_MESSAGE).input_ids) == HERMES2_SYSTEM_MESSAGE


def test_sharded_writing_splits_the_weights_with_an_index(tmp_path):
    config = testing.tiny_config()
    testing.write_checkpoint(tmp_path, config, base_vocab=640, max_shard_bytes=200_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (tmp_path / "model.safetensors").exists()
    shapes = {}
    for name in shards:
        shapes |= safetensors_shapes(tmp_path / name)
    assert shapes == expected_shapes(config)
    assert set(index["weight_map"]) == set(shapes)


def test_random_init_gives_finite_varied_greedy_generation(tiny_model):
    import torch

    tok = tiny_model.tokenizer
    ids = tok(
        f"{IM_START}user\nPlease describe the image.{IM_END}{IM_START}assistant\n",
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = tiny_model.model(**ids).logits
        out = tiny_model.model.generate(
            **ids, max_new_tokens=16, do_sample=False, eos_token_id=None
        )
    assert logits.isfinite().all() and logits.std() > 0.1
    new = out[0, ids.input_ids.shape[1] :].tolist()
    assert len(new) == 16 and len(set(new)) >= 6
