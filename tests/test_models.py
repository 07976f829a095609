"""load_model: sources, defaults, the conversion traps, and clear errors on bad input."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from vltools import checkpoints, conversion, models, testing
from vltools.constants import HERMES2_SYSTEM_MESSAGE


def variant(tiny_path: Path, folder: Path, edit: Callable[[dict], None] | None = None) -> Path:
    """A copy of the tiny checkpoint in ``folder`` with ``edit`` applied to its config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in testing.checkpoint_files(tiny_path):
        shutil.copy(path, folder / path.name)
    if edit is not None:
        config = json.loads((folder / "config.json").read_text())
        edit(config)
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def load(folder: Path, **kwargs) -> models.VLModel:
    return models.load_model(str(folder), device="cpu", dtype="float32", **kwargs)


def fail_if_filled(monkeypatch) -> None:
    """Make reading the weights fail the test: errors must come before any large allocation."""

    def _no_fill(*args, **kwargs):
        pytest.fail("the weights were read before the error was raised")

    monkeypatch.setattr(conversion, "_fill", _no_fill)


# --- the VLModel ----------------------------------------------------------------------------


def test_tiny_loads_with_the_internvl_facts(tiny_model):
    m = tiny_model
    tok = m.tokenizer
    assert type(m.model).__name__ == "InternVLForConditionalGeneration"
    assert m.template == "Hermes-2" and m.system_message == HERMES2_SYSTEM_MESSAGE
    assert m.image_token_id == tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert m.model.config.image_token_id == m.image_token_id
    assert m.img_start_id == tok.convert_tokens_to_ids("<img>")
    assert m.img_end_id == tok.convert_tokens_to_ids("</img>")
    assert m.im_end_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert (m.tokens_per_tile, m.tile_size, m.max_num, m.min_num) == (256, 448, 12, 1)
    assert m.use_thumbnail is True and m.context_length == 8192
    assert m.downsample_ratio == 0.5 and m.select_layer == m.vision_feature_layer == -1
    assert m.attn_implementation == "sdpa" and m.model.config._attn_implementation == "sdpa"
    assert not m.model.training
    assert str(m.dtype) == "torch.float32" and m.device.type == "cpu"


def test_the_repr_names_counts_dtype_device_and_attention(tiny_model):
    text = repr(tiny_model)
    counts = tiny_model.num_parameters()
    assert counts["total"] == sum(p.numel() for p in tiny_model.model.parameters())
    assert counts["vision"] + counts["projector"] + counts["language"] == counts["total"]
    for part in ("parameters", "float32", "cpu", "sdpa", "Hermes-2", "256"):
        assert part in text


def test_the_facts_are_one_frozen_record_that_the_model_reads_through(tiny_model):
    import dataclasses

    facts = tiny_model.facts
    assert isinstance(facts, models.ModelFacts)
    for name in (f.name for f in dataclasses.fields(models.ModelFacts)):
        assert getattr(tiny_model, name) == getattr(facts, name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        facts.max_num = 6
    with pytest.raises(AttributeError):
        tiny_model.max_num = 6  # a fact is read-only on the model too
    text = repr(facts)
    assert "Hermes-2" in text and "256 tokens per 448px tile" in text and len(text) < 200


def test_with_facts_changes_a_copy_and_shares_the_weights(tiny_model):
    other = tiny_model.with_facts(system_message="Answer in one word.")
    assert other.system_message == "Answer in one word."
    assert tiny_model.system_message == HERMES2_SYSTEM_MESSAGE
    assert other.model is tiny_model.model and other.tokenizer is tiny_model.tokenizer
    with pytest.raises(TypeError, match="max_tiles.*not model facts"):
        tiny_model.with_facts(max_tiles=3)


def test_the_three_parts_are_the_native_models_towers(tiny_model):
    inner = tiny_model.model.model
    assert tiny_model.vision_tower is inner.vision_tower
    assert tiny_model.projector is inner.multi_modal_projector
    assert tiny_model.language_model is inner.language_model
    counts = tiny_model.num_parameters()
    assert counts["projector"] == sum(p.numel() for p in tiny_model.projector.parameters())


def test_image_features_are_tiles_by_256_by_hidden_in_the_model_dtype(tiny_model):
    import torch

    pixels = torch.randn(3, 3, 448, 448)
    feats = tiny_model.image_features(pixels)
    hidden = tiny_model.model.config.text_config.hidden_size
    assert feats.shape == (3, 256, hidden) and feats.dtype == tiny_model.dtype
    with pytest.raises(ValueError, match="tiles, 3, 448, 448"):
        tiny_model.image_features(pixels[0])


def test_a_bfloat16_load_casts_every_tensor_and_keeps_rope_in_float32(tiny_path):
    import torch

    m = models.load_model(str(tiny_path), device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in m.model.parameters()} == {torch.bfloat16}
    buffers = dict(m.model.named_buffers())
    inv = buffers["model.language_model.rotary_emb.inv_freq"]
    assert inv.dtype == torch.float32 and not inv.is_meta
    config = m.model.config.text_config
    head_dim = config.hidden_size // config.num_attention_heads
    expected = 1.0 / (1e6 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    assert torch.allclose(inv, expected)


def test_loading_logs_its_choices_once_in_one_line(tiny_path, caplog):
    with caplog.at_level(logging.INFO, logger="vltools.models"):
        load(tiny_path)
    records = [r for r in caplog.records if r.name == "vltools.models"]
    assert len(records) == 1
    line = records[0].getMessage()
    assert "\n" not in line and "cpu" in line and "float32" in line and "sdpa" in line


def test_importing_vltools_models_imports_neither_torch_nor_transformers():
    code = (
        "import sys, vltools, vltools.models, vltools.testing;"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- defaults -------------------------------------------------------------------------------


def test_default_device_and_dtype_follow_the_issue(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert models.resolve_device(None).type == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert models.resolve_device(None).type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert models.resolve_device(None).type == "cuda"

    assert models.resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert models.resolve_dtype(None, torch.device("mps")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert models.resolve_dtype(None, torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert models.resolve_dtype(None, torch.device("cuda")) == torch.float16


def test_dtype_accepts_torch_dtypes_and_names_and_rejects_others():
    import torch

    cpu = torch.device("cpu")
    assert models.resolve_dtype("float32", cpu) == torch.float32
    assert models.resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert models.resolve_dtype("torch.float16", cpu) == torch.float16
    assert models.resolve_dtype(torch.bfloat16, cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="float64"):
        models.resolve_dtype("float64", cpu)
    with pytest.raises(TypeError, match="int64"):
        models.resolve_dtype(torch.int64, cpu)
    with pytest.raises(ValueError, match="device"):
        models.resolve_device("gpu-please")


def test_an_unknown_attention_implementation_is_refused(tiny_path):
    with pytest.raises(ValueError, match="'sdpa'.*'eager'"):
        load(tiny_path, attn_implementation="flash_attention_9")


def test_eager_attention_is_set_on_both_towers(tiny_path):
    m = load(tiny_path, attn_implementation="eager")
    assert m.attn_implementation == "eager"
    assert m.model.config.vision_config._attn_implementation == "eager"
    assert m.model.config.text_config._attn_implementation == "eager"


# --- traps (``docs/FORMAT.md``, section 4) ------------------------------------------------------


def test_lm_head_stays_separate_because_only_the_top_level_flag_counts(tiny_model, tiny_path):
    from safetensors.torch import load_file

    raw = load_file(str(tiny_path / "model.safetensors"))
    model = tiny_model.model
    assert model.config.tie_word_embeddings is False
    head, embed = model.lm_head.weight, model.model.language_model.embed_tokens.weight
    assert head.data_ptr() != embed.data_ptr()
    assert head.equal(raw["language_model.lm_head.weight"].float())
    assert embed.equal(raw["language_model.model.embed_tokens.weight"].float())
    assert not head.equal(embed)


def test_the_old_vision_flag_names_are_renamed_not_ignored(tiny_path):
    from transformers import InternVLVisionConfig

    # the trap itself: the native config accepts the old name silently and ignores it
    assert InternVLVisionConfig(qkv_bias=True).attention_bias is False
    config = json.loads((tiny_path / "config.json").read_text())
    native = models.native_config_from_original(config, image_token_id=645)
    assert native.vision_config.attention_bias is True
    assert native.vision_config.use_qk_norm is False
    config["vision_config"]["qk_normalization"] = True
    assert models.native_config_from_original(config, image_token_id=645).vision_config.use_qk_norm


def test_qk_normalization_checkpoints_load_their_norm_weights(tmp_path):
    from safetensors.torch import load_file

    config = testing.tiny_config()
    config["vision_config"].update({"qk_normalization": True, "norm_type": "rms_norm"})
    testing.write_checkpoint(tmp_path, config, base_vocab=640)
    m = load(tmp_path)
    raw = load_file(str(tmp_path / "model.safetensors"))
    attention = m.model.model.vision_tower.encoder.layer[1].attention
    assert attention.q_norm.weight.equal(
        raw["vision_model.encoder.layers.1.attn.q_norm.weight"].float()
    )
    assert attention.k_norm.weight.equal(
        raw["vision_model.encoder.layers.1.attn.k_norm.weight"].float()
    )


def test_the_image_context_id_comes_from_the_checkpoint_tokenizer(tiny_model, tiny_path):
    native_default = 151667
    ids = json.loads((tiny_path / "added_tokens.json").read_text())
    assert tiny_model.model.config.image_token_id == ids["<IMG_CONTEXT>"] != native_default


def test_select_layer_becomes_vision_feature_layer(tiny_path, tmp_path):
    folder = variant(tiny_path, tmp_path / "v", lambda c: c.update(select_layer=-2))
    m = load(folder)
    assert m.select_layer == -2 and m.model.config.vision_feature_layer == -2


@pytest.mark.parametrize("ps_version", ["v1", None])
def test_ps_version_v1_is_refused_never_silently_transposed(tiny_path, tmp_path, ps_version):
    def edit(c):
        if ps_version is None:
            del c["ps_version"]  # InternVLChatConfig's default is v1
        else:
            c["ps_version"] = ps_version

    folder = variant(tiny_path, tmp_path / "v", edit)
    with pytest.raises(ValueError, match=r"ps_version 'v1'.*transposed"):
        load(folder)


def test_the_tiling_facts_are_carried_onto_the_model(tiny_path, tmp_path):
    def edit(c):
        c.update(max_dynamic_patch=6, min_dynamic_patch=2, use_thumbnail=False)
        c.update(system_message="Be brief.")

    m = load(variant(tiny_path, tmp_path / "v", edit))
    assert (m.max_num, m.min_num, m.use_thumbnail) == (6, 2, False)
    assert m.system_message == "Be brief." and m.template == "Hermes-2"


def test_force_image_size_sets_the_tile_and_the_token_count(tiny_path):
    config = json.loads((tiny_path / "config.json").read_text())
    config["force_image_size"] = 224
    facts = checkpoints.check_original_config(config, Path("config.json"))
    assert (facts.tile_size, facts.tokens_per_tile) == (224, 64)
    config["force_image_size"] = 448
    config["downsample_ratio"] = 0.3  # 32 patches * 0.3 is not whole
    with pytest.raises(ValueError, match="downsample_ratio"):
        checkpoints.check_original_config(config, Path("config.json"))


# --- formats and language models ------------------------------------------------------------


def test_an_unknown_format_lists_what_is_supported(tiny_path, tmp_path):
    folder = variant(tiny_path, tmp_path / "v", lambda c: c.update(model_type="llava"))
    with pytest.raises(ValueError, match=r"'llava'.*internvl_chat.*'internvl'"):
        load(folder)


def test_an_internlm2_config_over_qwen2_weights_is_refused_before_filling(
    tiny_path, tmp_path, monkeypatch
):
    fail_if_filled(monkeypatch)
    folder = variant(
        tiny_path, tmp_path / "v", lambda c: c["llm_config"].update(model_type="internlm2")
    )
    with pytest.raises(ValueError, match=r"unexpected key\(s\): language_model\.lm_head"):
        load(folder)


def test_a_language_model_transformers_lacks_is_refused(tiny_path, tmp_path):
    folder = variant(
        tiny_path, tmp_path / "v", lambda c: c["llm_config"].update(model_type="gpt_rocket")
    )
    with pytest.raises(ValueError, match="gpt_rocket.*natively"):
        load(folder)


def test_a_phi3_language_model_is_converted(tiny_path, tmp_path):
    """InternVL2-4B pairs InternViT with Phi-3: any native language model goes through."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Phi3Config, Phi3ForCausalLM

    config = json.loads((tiny_path / "config.json").read_text())
    phi3 = Phi3Config(
        vocab_size=config["llm_config"]["vocab_size"],
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    language = Phi3ForCausalLM(phi3).eval()
    weights = load_file(str(tiny_path / "model.safetensors"))
    weights = {k: v for k, v in weights.items() if not k.startswith("language_model.")}
    weights |= {f"language_model.{k}": v for k, v in language.state_dict().items()}  # float32
    folder = variant(tiny_path, tmp_path / "phi3")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config["llm_config"] = {**phi3.to_dict(), "architectures": ["Phi3ForCausalLM"]}
    (folder / "config.json").write_text(json.dumps(config))

    m = load(folder)
    assert type(m.model.model.language_model).__name__ == "Phi3Model"
    ids = torch.tensor([[5, 17, 301, 42, 9]])
    with torch.no_grad():
        ours, theirs = m.model(input_ids=ids).logits, language(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


# --- sources: tiny, directories, the Hub ----------------------------------------------------


def test_tiny_is_accepted_as_a_model_name(tiny_path, monkeypatch):
    seen = []
    monkeypatch.setattr(testing, "tiny_checkpoint", lambda: seen.append(1) or tiny_path)
    m = models.load_model("tiny", device="cpu", dtype="float32")
    assert seen == [1] and m.source == "tiny" and m.path == tiny_path


def test_the_hub_download_asks_for_config_tokenizer_and_safetensors_only(tiny_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tiny_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    m = models.load_model("OpenGVLab/InternVL2-1B", device="cpu", dtype="float32", revision="main")
    ((repo, kwargs),) = calls
    assert repo == "OpenGVLab/InternVL2-1B" and kwargs["revision"] == "main"
    patterns = kwargs["allow_patterns"]
    assert "*.safetensors" in patterns and "config.json" in patterns and "tokenizer*" in patterns
    assert not any(p.endswith(".py") or p == "*" or ".bin" in p for p in patterns)
    assert m.source == "OpenGVLab/InternVL2-1B"
    calls.clear()
    models.load_model("OpenGVLab/InternVL2-1B", device="cpu", allow_pickle=True)
    assert "*.bin" in calls[0][1]["allow_patterns"]


def test_offline_without_a_cached_copy_names_the_three_ways_out(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(OSError) as info:
        models.load_model("OpenGVLab/InternVL2-1B", device="cpu")
    message = str(info.value)
    assert "local directory" in message and "HF_HUB_OFFLINE" in message and "'tiny'" in message


def test_a_missing_local_path_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No directory"):
        models.load_model(str(tmp_path / "nowhere" / "model"), device="cpu")


# --- bad input ------------------------------------------------------------------------------


def test_a_directory_without_config_json_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        load(tmp_path)


@pytest.mark.parametrize(
    ("section", "field"),
    [("llm_config", "hidden_size"), ("vision_config", "patch_size"), (None, "template")],
)
def test_a_config_with_a_missing_field_names_it(tiny_path, tmp_path, monkeypatch, section, field):
    fail_if_filled(monkeypatch)

    def edit(c):
        del (c[section] if section else c)[field]

    folder = variant(tiny_path, tmp_path / "v", edit)
    name = f"{section}.{field}" if section else field
    with pytest.raises(ValueError, match=rf"config\.json lacks required field\(s\) {name}"):
        load(folder)


def test_weights_that_do_not_match_the_config_are_named(tiny_path, tmp_path, monkeypatch):
    fail_if_filled(monkeypatch)
    folder = variant(
        tiny_path, tmp_path / "v", lambda c: c["vision_config"].update(intermediate_size=96)
    )
    with pytest.raises(ValueError, match=r"model\.safetensors.*mlp\.fc1\.weight \[128, 64\]"):
        load(folder)


def test_a_truncated_safetensors_file_is_named(tiny_path, tmp_path, monkeypatch):
    fail_if_filled(monkeypatch)
    folder = variant(tiny_path, tmp_path / "v")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match=r"model\.safetensors is truncated"):
        load(folder)
    weights.write_bytes(data[:100])
    with pytest.raises(ValueError, match=r"model\.safetensors is truncated"):
        load(folder)


def test_a_tokenizer_without_img_context_is_named(tiny_path, tmp_path, monkeypatch):
    fail_if_filled(monkeypatch)
    folder = variant(tiny_path, tmp_path / "v")
    for name in ("tokenizer.json", "tokenizer_config.json", "added_tokens.json"):
        path = folder / name
        path.write_text(path.read_text().replace("<IMG_CONTEXT>", "<IMG_CTX_GONE>"))
    with pytest.raises(ValueError, match=r"tokenizer in .* has no '<IMG_CONTEXT>' token"):
        load(folder)


def test_an_unknown_template_is_named(tiny_path, tmp_path, monkeypatch):
    fail_if_filled(monkeypatch)
    folder = variant(tiny_path, tmp_path / "v", lambda c: c.update(template="vicuna_v9"))
    with pytest.raises(ValueError, match=r"config\.json: template 'vicuna_v9'.*Hermes-2"):
        load(folder)


def test_pickle_weights_are_refused_unless_opted_in(tiny_path, tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = variant(tiny_path, tmp_path / "v")
    weights = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pickle.*arbitrary code.*allow_pickle=True"):
        load(folder)
    m = load(folder, allow_pickle=True)
    head = weights["language_model.lm_head.weight"].float()
    assert m.model.lm_head.weight.equal(head)


def test_an_image_context_id_outside_the_vocabulary_is_refused(tiny_path, tmp_path, monkeypatch):
    fail_if_filled(monkeypatch)
    folder = variant(tiny_path, tmp_path / "v", lambda c: c["llm_config"].update(vocab_size=600))
    with pytest.raises(ValueError, match=r"'<IMG_CONTEXT>' id 645, outside .* vocabulary of 600"):
        load(folder)


def test_a_directory_without_weights_says_what_to_copy(tiny_path, tmp_path):
    folder = variant(tiny_path, tmp_path / "v")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors weight files"):
        load(folder)


def test_absent_tiling_fields_take_the_original_config_class_defaults(tiny_path):
    config = json.loads((tiny_path / "config.json").read_text())
    for key in ("max_dynamic_patch", "min_dynamic_patch", "use_thumbnail", "dynamic_image_size"):
        del config[key]
    facts = checkpoints.check_original_config(config, Path("config.json"))
    assert (facts.max_num, facts.min_num, facts.use_thumbnail) == (6, 1, False)
    assert facts.dynamic_image_size is False


def test_sharded_safetensors_load_like_a_single_file(tiny_model, tmp_path):
    folder = tmp_path / "sharded"
    testing.write_checkpoint(folder, testing.tiny_config(), base_vocab=640, max_shard_bytes=150_000)
    assert len(list(folder.glob("model-*.safetensors"))) > 2
    m = load(folder)
    ours = dict(m.model.named_parameters())
    for name, param in tiny_model.model.named_parameters():
        assert ours[name].equal(param), name


def test_a_shard_missing_from_the_index_is_named(tmp_path):
    folder = tmp_path / "sharded"
    testing.write_checkpoint(folder, testing.tiny_config(), base_vocab=640, max_shard_bytes=150_000)
    victim = sorted(folder.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        load(folder)


def test_a_native_checkpoint_whose_image_token_disagrees_is_refused(tiny_model, tmp_path):
    folder = tmp_path / "native"
    tiny_model.model.save_pretrained(str(folder))
    tiny_model.tokenizer.save_pretrained(str(folder))
    config = json.loads((folder / "config.json").read_text())
    config["image_token_id"] = 151667  # the native default, wrong for this tokenizer
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="image_token_id 151667 is not the tokenizer's"):
        load(folder)
