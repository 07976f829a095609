"""The conversion is exact: checked against independent computations from the ORIGINAL weights.

Without the original InternVL code, the proof is assembled from parts (``docs/FORMAT.md``, sections
1, 3 and 4): every original key consumed and every native tensor filled (tiny, and full size on
the meta device); one vision attention layer recomputed from the fused ``attn.qkv``; the whole
vision tower, pixel shuffle (v2, by its definition) and ``mlp1`` recomputed in plain torch; the
language model checked against transformers' Qwen2 (which the original wraps unchanged) fed
the way the original ``generate`` feeds it; and greedy generation stable across save/load.
"""

from __future__ import annotations

import json
import math

import pytest

from vltools import model_building, models, testing

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.fixture(scope="module")
def original(tiny_path):
    """The tiny checkpoint's original state dict (fp32) and config."""
    from safetensors.torch import load_file

    weights = {k: v.float() for k, v in load_file(str(tiny_path / "model.safetensors")).items()}
    config = json.loads((tiny_path / "config.json").read_text())
    return weights, config


def reference_vision(weights, config, pixel_values, *, layer=-1):
    """InternViT from the original weights, written from ``docs/FORMAT.md``, section 3."""
    v = config["vision_config"]
    dim, patch = v["hidden_size"], v["patch_size"]
    eps = v["layer_norm_eps"]
    w = lambda name: weights[f"vision_model.{name}"]  # noqa: E731
    x = F.conv2d(
        pixel_values,
        w("embeddings.patch_embedding.weight"),
        w("embeddings.patch_embedding.bias"),
        stride=patch,
    )
    x = x.flatten(2).transpose(1, 2)  # (B, 1024, D), patches row-major
    batch = x.shape[0]
    x = torch.cat([w("embeddings.class_embedding").expand(batch, 1, dim), x], dim=1)
    x = x + w("embeddings.position_embedding")  # the 32x32 grid at 448: interpolation is identity
    hidden = [x]
    for i in range(v["num_hidden_layers"]):
        p = f"encoder.layers.{i}."
        h = F.layer_norm(x, (dim,), w(p + "norm1.weight"), w(p + "norm1.bias"), eps)
        x = x + w(p + "ls1") * reference_attention(weights, config, i, h)
        h = F.layer_norm(x, (dim,), w(p + "norm2.weight"), w(p + "norm2.bias"), eps)
        h = F.linear(
            F.gelu(F.linear(h, w(p + "mlp.fc1.weight"), w(p + "mlp.fc1.bias"))),
            w(p + "mlp.fc2.weight"),
            w(p + "mlp.fc2.bias"),
        )
        x = x + w(p + "ls2") * h
        hidden.append(x)
    return hidden[layer]


def reference_attention(weights, config, i, h):
    """One original attention layer: fused qkv reshaped to (B, N, 3, H, Dh), rows q | k | v."""
    v = config["vision_config"]
    dim, heads = v["hidden_size"], v["num_attention_heads"]
    p = f"vision_model.encoder.layers.{i}.attn."
    batch, n, _ = h.shape
    qkv = F.linear(h, weights[p + "qkv.weight"], weights[p + "qkv.bias"])  # (B, N, 3D)
    qkv = qkv.reshape(batch, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)  # (3, B, H, N, Dh)
    q, k, val = qkv[0], qkv[1], qkv[2]
    attn = (q * (dim // heads) ** -0.5) @ k.transpose(-2, -1)  # (B, H, N, N)
    out = (attn.softmax(dim=-1) @ val).transpose(1, 2).reshape(batch, n, dim)
    return F.linear(out, weights[p + "proj.weight"], weights[p + "proj.bias"])


def reference_pixel_shuffle_v2(x):
    """Section 2: Y[i, j] = concat(X[2i,2j], X[2i,2j+1], X[2i+1,2j], X[2i+1,2j+1]), row-major."""
    batch, n, dim = x.shape
    side = math.isqrt(n)
    grid = x.reshape(batch, side, side, dim)  # [b, row, col, c]
    out = torch.empty(batch, side // 2, side // 2, 4 * dim)
    for i in range(side // 2):
        for j in range(side // 2):
            out[:, i, j] = torch.cat(
                [
                    grid[:, 2 * i, 2 * j],
                    grid[:, 2 * i, 2 * j + 1],
                    grid[:, 2 * i + 1, 2 * j],
                    grid[:, 2 * i + 1, 2 * j + 1],
                ],
                dim=-1,
            )
    return out.reshape(batch, (side // 2) ** 2, 4 * dim)  # token = i * 16 + j


def reference_features(weights, config, pixel_values, *, layer=-1):
    """extract_feature: ViT, drop CLS, pixel shuffle v2, mlp1 = LN, Linear, GELU, Linear."""
    x = reference_vision(weights, config, pixel_values, layer=layer)[:, 1:, :]
    x = reference_pixel_shuffle_v2(x)
    x = F.layer_norm(x, (x.shape[-1],), weights["mlp1.0.weight"], weights["mlp1.0.bias"], 1e-5)
    x = F.linear(x, weights["mlp1.1.weight"], weights["mlp1.1.bias"])
    return F.linear(F.gelu(x), weights["mlp1.3.weight"], weights["mlp1.3.bias"])


def reference_language(weights, config):
    """The original's language model: transformers' Qwen2ForCausalLM with its own weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    llm = {
        k: v
        for k, v in config["llm_config"].items()
        if k not in ("_name_or_path", "architectures", "torch_dtype")
    }
    cfg = AutoConfig.for_model(llm.pop("model_type"), **llm)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    state = {
        k.removeprefix("language_model."): v
        for k, v in weights.items()
        if k.startswith("language_model.")
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in k for k in missing)
    return model.eval()


def image_prompt(model, tiles):
    tok = model.tokenizer
    text = (
        f"<|im_start|>system\n{model.system_message}<|im_end|><|im_start|>user\n<img>"
        + "<IMG_CONTEXT>" * (256 * tiles)
        + "</img>\nPlease describe the image.<|im_end|><|im_start|>assistant\n"
    )
    return tok(text, return_tensors="pt")


# --- every key consumed, every tensor filled -------------------------------------------------


def test_every_tiny_key_is_consumed_and_every_native_tensor_filled(tiny_model, original):
    weights, config = original
    target = {n: tuple(p.shape) for n, p in tiny_model.model.named_parameters()}
    plan = models.plan_conversion({k: tuple(v.shape) for k, v in weights.items()}, target)
    assert set(plan.source_keys) == set(weights)
    assert plan.targets() == set(target)
    assert (
        len(plan.mappings)
        == len(target)
        == len(weights) + 2 * config["vision_config"]["num_hidden_layers"] * 2
    )
    moved = sum(math.prod(v.shape) for v in weights.values())
    assert moved == sum(p.numel() for p in tiny_model.model.parameters())


def test_the_full_size_conversion_is_complete_on_the_meta_device():
    config = testing.full_size_config()
    shapes = testing.original_key_shapes(config)
    native = models.native_config_from_original(config, image_token_id=151648)
    model = model_building.empty_model(native, dtype=torch.bfloat16, attn_implementation="sdpa")
    assert all(p.is_meta for p in model.parameters())
    target = {n: tuple(p.shape) for n, p in model.named_parameters()}
    plan = models.plan_conversion(shapes, target)
    assert len(plan.source_keys) == 637 and len(plan.mappings) == len(target) == 733
    assert sum(p.numel() for p in model.parameters()) == 938_158_976
    assert model.config.image_token_id == 151648 and model.config.tie_word_embeddings is False


def test_every_tensor_equals_its_original_source(tiny_model, original):
    weights, _ = original
    params = dict(tiny_model.model.named_parameters())
    target = {n: tuple(p.shape) for n, p in params.items()}
    for m in models.plan_conversion(
        {k: tuple(v.shape) for k, v in weights.items()}, target
    ).mappings:
        source = weights[m.source]
        if m.rows:
            source = source[m.rows[0] : m.rows[1]]
        assert params[m.target].equal(source), m.target


# --- vision: one layer, the tower, the shuffle and the projector ------------------------------


def test_one_vision_attention_layer_matches_the_fused_qkv_computation(tiny_model, original):
    weights, config = original
    torch.manual_seed(1)
    h = torch.randn(2, 1025, config["vision_config"]["hidden_size"])
    attention = tiny_model.vision_tower.encoder.layer[1].attention
    with torch.no_grad():
        ours, _ = attention(h)
    torch.testing.assert_close(
        ours, reference_attention(weights, config, 1, h), rtol=1e-5, atol=1e-5
    )


def test_the_native_pixel_shuffle_is_the_v2_definition():
    from transformers import InternVLConfig, InternVLModel

    x = torch.arange(2 * 1024 * 3, dtype=torch.float32).reshape(2, 1024, 3)  # coded grid
    ours = InternVLModel.pixel_shuffle(None, x.reshape(2, 32, 32, 3), scale_factor=0.5).reshape(
        2, 256, 12
    )
    assert ours.equal(reference_pixel_shuffle_v2(x))
    assert InternVLConfig().downsample_ratio == 0.5


@pytest.mark.parametrize("layer", [-1, -2])
def test_image_features_match_vision_shuffle_and_projector_from_the_original_weights(
    tiny_path, original, layer, tmp_path
):
    weights, config = original
    if layer == -1:
        model = models.load_model(str(tiny_path), device="cpu", dtype="float32")
    else:
        folder = tmp_path / "v"
        folder.mkdir()
        for path in testing.checkpoint_files(tiny_path):
            (folder / path.name).write_bytes(path.read_bytes())
        config = {**config, "select_layer": layer}
        (folder / "config.json").write_text(json.dumps(config))
        model = models.load_model(str(folder), device="cpu", dtype="float32")
    torch.manual_seed(2)
    pixels = torch.randn(2, 3, 448, 448)
    with torch.no_grad():
        expected = reference_features(weights, config, pixels, layer=layer)
    torch.testing.assert_close(model.image_features(pixels), expected, rtol=1e-4, atol=1e-5)


# --- the whole model --------------------------------------------------------------------------


def test_logits_equal_the_original_generate_path(tiny_model, original):
    """Original generate: embed, overwrite the <IMG_CONTEXT> rows with the features, run the LM."""
    weights, config = original
    torch.manual_seed(3)
    pixels = torch.randn(2, 3, 448, 448)
    inputs = image_prompt(tiny_model, tiles=2)
    ids = inputs.input_ids
    language = reference_language(weights, config)
    with torch.no_grad():
        embeds = language.get_input_embeddings()(ids)  # (B, N, C)
        flat = embeds.reshape(-1, embeds.shape[-1])
        selected = ids.flatten() == tiny_model.image_token_id
        flat[selected] = reference_features(weights, config, pixels).reshape(-1, flat.shape[-1])
        expected = language(
            inputs_embeds=flat.reshape(embeds.shape), attention_mask=inputs.attention_mask
        ).logits
        ours = tiny_model.model(**inputs, pixel_values=pixels).logits
    assert int(selected.sum()) == 512
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_different_images_give_different_logits(tiny_model):
    inputs = image_prompt(tiny_model, tiles=1)
    torch.manual_seed(4)
    with torch.no_grad():
        a = tiny_model.model(**inputs, pixel_values=torch.randn(1, 3, 448, 448)).logits[0, -1]
        b = tiny_model.model(**inputs, pixel_values=torch.randn(1, 3, 448, 448)).logits[0, -1]
    assert (a - b).abs().max() > 1e-2


def greedy(model, pixels, steps=12):
    inputs = image_prompt(model, tiles=pixels.shape[0])
    with torch.no_grad():
        out = model.model.generate(
            **inputs, pixel_values=pixels, max_new_tokens=steps, do_sample=False, eos_token_id=None
        )
    return out[0, inputs.input_ids.shape[1] :].tolist()


@pytest.mark.slow
def test_greedy_generation_is_stable_across_save_and_load(tiny_model, tmp_path):
    from transformers import InternVLForConditionalGeneration

    torch.manual_seed(5)
    pixels = torch.randn(1, 3, 448, 448)
    first = greedy(tiny_model, pixels)
    assert len(set(first)) > 3

    again = models.load_model(str(tiny_model.path), device="cpu", dtype="float32")
    assert greedy(again, pixels) == first
    saved = again.save_pretrained(tmp_path / "native")
    assert json.loads((saved / "config.json").read_text())["model_type"] == "internvl"
    reloaded = models.load_model(str(saved), device="cpu", dtype="float32")
    assert reloaded.checkpoint_format == "internvl"
    assert greedy(reloaded, pixels) == first
    for name in (
        "template",
        "system_message",
        "image_token_id",
        "im_end_id",
        "tokens_per_tile",
        "tile_size",
        "max_num",
    ):
        assert getattr(reloaded, name) == getattr(tiny_model, name), name
    plain = InternVLForConditionalGeneration.from_pretrained(str(saved), dtype=torch.float32).eval()
    inputs = image_prompt(tiny_model, tiles=1)
    with torch.no_grad():
        expected = tiny_model.model(**inputs, pixel_values=pixels).logits
        assert plain(**inputs, pixel_values=pixels).logits.equal(expected)


def test_a_bf16_load_maps_the_file_copy_on_write_and_saves(tiny_path, original, tmp_path):
    """Same dtype on the CPU: parameters are private views of the file, which stays untouched."""
    weights, _ = original
    before = (tiny_path / "model.safetensors").read_bytes()
    m = models.load_model(str(tiny_path), device="cpu", dtype="bfloat16")
    q = m.model.model.vision_tower.encoder.layer[0].attention.q_proj.weight
    assert q.float().equal(weights["vision_model.encoder.layers.0.attn.qkv.weight"][: q.shape[0]])
    with torch.no_grad():
        q.add_(1.0)  # a write lands in private memory, never in the file
    assert (tiny_path / "model.safetensors").read_bytes() == before
    saved = m.save_pretrained(tmp_path / "native")
    again = models.load_model(str(saved), device="cpu", dtype="bfloat16")
    assert again.model.model.vision_tower.encoder.layer[0].attention.q_proj.weight.equal(q)
    assert again.model.lm_head.weight.equal(m.model.lm_head.weight)
