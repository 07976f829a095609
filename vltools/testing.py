"""Random-weight InternVL2 checkpoints in the ORIGINAL format, built offline and cached.

``tiny_checkpoint()`` writes, in about a second and byte for byte the same on every run, a
checkpoint laid out exactly as ``OpenGVLab/InternVL2-1B`` ships it (format notes,
``docs/FORMAT.md``, section 3): ``config.json`` with
``model_type: internvl_chat`` and the real field names, ``model.safetensors`` with the original
key names (``vision_model.*`` with the fused ``attn.qkv``, ``mlp1.*``, ``language_model.*`` and
a separate ``lm_head``), ``generation_config.json`` and Qwen2 tokenizer files (a small byte-level
BPE trained here, with ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` and the nine InternVL
tokens appended in the real order). Widths and depths shrink; the geometry stays real:
448-pixel tiles, 14-pixel patches, pixel shuffle 0.5, so 256 image tokens per tile.

``full_size_checkpoint()`` writes the same format at the real InternVL2-1B sizes (the real
config, random bf16 weights, special tokens at their real ids 151643..151654) for benchmarks.
Tensors are generated and written one at a time, so memory stays near the largest tensor.

Both are cached under ``$VLTOOLS_CACHE`` (or ``~/.cache/vltools``) in a folder whose name
carries a hash of the recipe, so a changed recipe builds a new folder. The weights come from
NumPy's PCG64 generator seeded per key, so they do not depend on the order of writing.

``toy_scenes`` (from :mod:`vltools.toy`) draws the synthetic scenes the trained ``toy``
checkpoint knows, for tests and examples that need answers that mean something.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from vltools.constants import (
    CACHE_ENV,
    CONTEXT_LENGTH,
    ENDOFTEXT,
    HERMES2_SYSTEM_MESSAGE,
    IM_END,
    IM_START,
    INTERNVL_SPECIAL_TOKENS,
)
from vltools.toy import toy_scenes  # re-exported: the trained toy checkpoint's held-out scenes

__all__ = [
    "tiny_checkpoint",
    "tiny_family_checkpoint",
    "tiny_family_config",
    "LANGUAGE_MODELS",
    "full_size_checkpoint",
    "cache_dir",
    "tiny_config",
    "full_size_config",
    "original_key_shapes",
    "write_checkpoint",
    "write_safetensors",
    "checkpoint_files",
    "SPECIAL_TOKENS",
    "REAL_BASE_VOCAB",
    "toy_scenes",
]

# Bump when anything that changes the written bytes changes (it is part of the recipe hash).
_RECIPE_VERSION = 1
_SEED = 20240719

# The Qwen2 pre-tokenizer split (the same regex transformers' Qwen2Tokenizer uses).
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# <|endoftext|>, <|im_start|>, <|im_end|>, then the nine InternVL tokens: 12 in all.
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END, *INTERNVL_SPECIAL_TOKENS)
# The real tokenizer's base vocabulary: <|endoftext|> is id 151643.
REAL_BASE_VOCAB = 151643

_TINY_BASE_VOCAB = 640  # 256 byte symbols + 384 merges learned from the corpus below

# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


def full_size_config() -> dict[str, Any]:
    """The real InternVL2-1B ``config.json`` (``tests/reference/internvl2_1b_config.json``), as a fresh dict."""
    return {
        "architectures": ["InternVLChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
            "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
        },
        "downsample_ratio": 0.5,
        "dynamic_image_size": True,
        "force_image_size": 448,
        "llm_config": {
            "_name_or_path": "Qwen/Qwen2-0.5B-Instruct",
            "architectures": ["Qwen2ForCausalLM"],
            "attention_dropout": 0.0,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "hidden_act": "silu",
            "hidden_size": 896,
            "initializer_range": 0.02,
            "intermediate_size": 4864,
            "max_position_embeddings": 32768,
            "max_window_layers": 24,
            "model_type": "qwen2",
            "num_attention_heads": 14,
            "num_hidden_layers": 24,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0,
            "sliding_window": 32768,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": 151655,
        },
        "max_dynamic_patch": 12,
        "min_dynamic_patch": 1,
        "model_type": "internvl_chat",
        "ps_version": "v2",
        "select_layer": -1,
        "template": "Hermes-2",
        "torch_dtype": "bfloat16",
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "use_thumbnail": True,
        "vision_config": {
            "architectures": ["InternVisionModel"],
            "attention_dropout": 0.0,
            "drop_path_rate": 0.0,
            "dropout": 0.0,
            "hidden_act": "gelu",
            "hidden_size": 1024,
            "image_size": 448,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": 4096,
            "layer_norm_eps": 1e-06,
            "model_type": "intern_vit_6b",
            "norm_type": "layer_norm",
            "num_attention_heads": 16,
            "num_channels": 3,
            "num_hidden_layers": 24,
            "patch_size": 14,
            "qk_normalization": False,
            "qkv_bias": True,
            "use_flash_attn": True,
        },
    }


def tiny_config() -> dict[str, Any]:
    """The tiny checkpoint's ``config.json``: the real one with small widths and depths.

    Vision: 2 layers of width 64 (4 heads of 16). Language: 2 Qwen2 layers of width 64 (4 query
    heads, 2 key/value heads), vocabulary ``640 + 12``. Geometry unchanged: 448-pixel tiles,
    14-pixel patches (1 + 32 * 32 positions), downsample 0.5, so 256 tokens per tile.
    """
    cfg = full_size_config()
    vocab = _TINY_BASE_VOCAB + len(SPECIAL_TOKENS)
    ids = {tok: _TINY_BASE_VOCAB + i for i, tok in enumerate(SPECIAL_TOKENS)}
    cfg["llm_config"].update(
        {
            "_name_or_path": "vltools/tiny-qwen2",
            "bos_token_id": ids[ENDOFTEXT],
            "eos_token_id": ids[IM_END],
            "hidden_size": 64,
            "intermediate_size": 128,
            "max_window_layers": 2,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "num_key_value_heads": 2,
            "vocab_size": vocab,
        }
    )
    cfg["vision_config"].update(
        {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
        }
    )
    return cfg


# ---------------------------------------------------------------------------------------------
# The original state dict (``docs/FORMAT.md``, section 3)
# ---------------------------------------------------------------------------------------------


def original_key_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every key of the original ``InternVLChatModel`` state dict and its shape, from a config.

    Follows ``docs/FORMAT.md``, section 3 (637 keys for InternVL2-1B). Only the layout of
    InternViT + a Qwen2-style, InternLM2 or Phi-3 language model is described (the checkpoints
    this module writes).
    """
    v, t = config["vision_config"], config["llm_config"]
    dv, dt = v["hidden_size"], t["hidden_size"]
    patch, channels = v["patch_size"], v.get("num_channels", 3)
    grid = v["image_size"] // patch
    shapes: dict[str, tuple[int, ...]] = {
        "vision_model.embeddings.class_embedding": (1, 1, dv),
        "vision_model.embeddings.position_embedding": (1, grid * grid + 1, dv),
        "vision_model.embeddings.patch_embedding.weight": (dv, channels, patch, patch),
        "vision_model.embeddings.patch_embedding.bias": (dv,),
    }
    for i in range(v["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        shapes |= {
            p + "ls1": (dv,),
            p + "ls2": (dv,),
            p + "attn.qkv.weight": (3 * dv, dv),
            p + "attn.proj.weight": (dv, dv),
            p + "attn.proj.bias": (dv,),
            p + "mlp.fc1.weight": (v["intermediate_size"], dv),
            p + "mlp.fc1.bias": (v["intermediate_size"],),
            p + "mlp.fc2.weight": (dv, v["intermediate_size"]),
            p + "mlp.fc2.bias": (dv,),
            p + "norm1.weight": (dv,),
            p + "norm2.weight": (dv,),
        }
        if v.get("norm_type", "layer_norm") == "layer_norm":  # InternRMSNorm has no bias
            shapes[p + "norm1.bias"] = (dv,)
            shapes[p + "norm2.bias"] = (dv,)
        if v.get("qkv_bias", False):
            shapes[p + "attn.qkv.bias"] = (3 * dv,)
        if v.get("qk_normalization", False):
            shapes[p + "attn.q_norm.weight"] = (dv,)
            shapes[p + "attn.k_norm.weight"] = (dv,)
    shuffled = dv * int(round(1 / config["downsample_ratio"])) ** 2
    shapes |= {
        "mlp1.0.weight": (shuffled,),
        "mlp1.0.bias": (shuffled,),
        "mlp1.1.weight": (dt, shuffled),
        "mlp1.1.bias": (dt,),
        "mlp1.3.weight": (dt, dt),
        "mlp1.3.bias": (dt,),
    }
    if t["model_type"] in _FAMILY_LLM_SHAPES:  # InternLM2 / Phi-3 layouts (family region below)
        return shapes | _FAMILY_LLM_SHAPES[t["model_type"]](t)
    head_dim = dt // t["num_attention_heads"]
    kv = t.get("num_key_value_heads", t["num_attention_heads"]) * head_dim
    vocab, inter = t["vocab_size"], t["intermediate_size"]
    shapes["language_model.model.embed_tokens.weight"] = (vocab, dt)
    for i in range(t["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (dt, dt),
            p + "self_attn.q_proj.bias": (dt,),
            p + "self_attn.k_proj.weight": (kv, dt),
            p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, dt),
            p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (dt, dt),
            p + "mlp.gate_proj.weight": (inter, dt),
            p + "mlp.up_proj.weight": (inter, dt),
            p + "mlp.down_proj.weight": (dt, inter),
            p + "input_layernorm.weight": (dt,),
            p + "post_attention_layernorm.weight": (dt,),
        }
    shapes["language_model.model.norm.weight"] = (dt,)
    shapes["language_model.lm_head.weight"] = (vocab, dt)
    return shapes


def _key_seed(seed: int, key: str) -> int:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _init_array(key: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A float32 array for ``key``: scaled so that activations stay O(1) at any width.

    Linear and conv weights ~ N(0, 1/fan_in); token embeddings ~ N(0, 1); norm weights and the
    layer scales ~ 1 + N(0, 0.1) (resp. 0.5 + ...); biases ~ N(0, 0.05). Nothing is all-ones or
    all-zeros, so a wrong mapping in a converter changes the outputs.
    """
    rng = np.random.default_rng(_key_seed(seed, key))
    name = key.rsplit(".", 1)[-1]
    if name in ("ls1", "ls2"):
        out = rng.standard_normal(shape, dtype=np.float32)
        out *= 0.1
        out += 0.5
        return out
    is_norm = any(s in key for s in ("norm", "mlp1.0."))
    if is_norm and name == "weight":
        out = rng.standard_normal(shape, dtype=np.float32)
        out *= 0.1
        out += 1.0
        return out
    out = rng.standard_normal(shape, dtype=np.float32)
    if name == "bias" or is_norm:
        out *= 0.05
    elif "embed_tokens" in key:
        pass  # N(0, 1): RMSNorm rescales anyway
    elif name in ("class_embedding", "position_embedding"):
        out *= 0.2
    elif len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        out *= 1.0 / np.sqrt(fan_in)
    return out


# ---------------------------------------------------------------------------------------------
# Safetensors, written tensor by tensor
# ---------------------------------------------------------------------------------------------

_ST_DTYPES = {"bfloat16": ("BF16", 2), "float16": ("F16", 2), "float32": ("F32", 4)}


def write_safetensors(
    path: Path,
    shapes: dict[str, tuple[int, ...]],
    fill: Callable[[str], Any],
    *,
    dtype: str = "bfloat16",
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a ``.safetensors`` file whose tensors come one at a time from ``fill(key)``.

    ``fill`` returns a float32 NumPy array of the key's shape; it is cast to ``dtype`` and
    written at once, so at most one tensor is held in memory. Keys are written sorted; the
    header is padded with spaces to 8 bytes, as the safetensors library does.
    """
    import torch

    code, size = _ST_DTYPES[dtype]
    torch_dtype = getattr(torch, dtype)
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    keys = sorted(shapes)
    for key in keys:
        nbytes = int(np.prod(shapes[key], dtype=np.int64)) * size
        header[key] = {
            "dtype": code,
            "shape": list(shapes[key]),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for key in keys:
            array = fill(key)
            if tuple(array.shape) != tuple(shapes[key]):
                raise ValueError(f"fill({key!r}) gave shape {array.shape}, expected {shapes[key]}")
            tensor = torch.from_numpy(np.ascontiguousarray(array)).to(torch_dtype)
            f.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
            del tensor, array


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

_CORPUS_EN = (
    "Please describe the image in detail.",
    "Please describe the image shortly.",
    "What is the red panda doing in this picture?",
    "Describe this video in detail. Don't repeat.",
    "Image-1: Image-2: What are the similarities and differences between these two images.",
    "Hello, who are you? Can you tell me a story?",
    "The chart shows sales by month; the highest bar is in July, the lowest in February.",
    "A photo of a cat sitting on a wooden table next to a cup of coffee.",
    "The document is a scanned receipt with a total of 42.50 dollars at the bottom.",
    "A wide panorama of mountains at sunset, with a lake in the foreground and trees.",
    "Frame1: Frame2: Frame3: Frame4: Frame5: Frame6: Frame7: Frame8:",
    "There are two dogs playing in the snow, one brown and one white.",
    "The quick brown fox jumps over the lazy dog 0123456789 times.",
    "user assistant system The answer is yes. The answer is no. I don't know.",
    "In the top left corner there is a sign; in the bottom right, a bicycle.",
)
_CORPUS_ZH = (
    HERMES2_SYSTEM_MESSAGE,
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。",
    "请详细描述这张图片。图片里有什么？这是一只小熊猫。",
)


def _corpus() -> list[str]:
    return [*_CORPUS_EN, *_CORPUS_ZH] * 4


def _train_tokenizer(base_vocab: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE (Qwen2 pre-tokenizer) on a fixed corpus: its vocab and merges.

    The vocabulary is padded with unreachable ``<|vltools_unused_N|>`` entries up to
    ``base_vocab`` when the corpus has fewer merges than that.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(base_vocab, _TINY_BASE_VOCAB),
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    data = json.loads(tok.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    merges = [
        tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in data["model"]["merges"]
    ]
    if len(vocab) > base_vocab:
        raise RuntimeError(f"trained {len(vocab)} tokens, more than the {base_vocab} asked for")
    for i in range(len(vocab), base_vocab):
        vocab[f"<|vltools_unused_{i}|>"] = i
    return vocab, merges  # type: ignore[return-value]


def _write_tokenizer(folder: Path, base_vocab: int) -> dict[str, int]:
    """Write the Qwen2 tokenizer files into ``folder``; return the special tokens' ids."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
    )

    vocab, merges = _train_tokenizer(base_vocab)
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False)
            for t in SPECIAL_TOKENS
        ]
    )
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    expected = {t: base_vocab + i for i, t in enumerate(SPECIAL_TOKENS)}
    if ids != expected:  # pragma: no cover - guards the tokenizers library's append order
        raise RuntimeError(f"special tokens got ids {ids}, expected {expected}")
    tok.save(str(folder / "tokenizer.json"), pretty=False)

    ordered = sorted(vocab.items(), key=lambda kv: kv[1])
    (folder / "vocab.json").write_text(
        json.dumps(dict(ordered), ensure_ascii=False, separators=(",", ":")), encoding="utf-8"
    )
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    (folder / "added_tokens.json").write_text(json.dumps(ids, indent=2) + "\n", encoding="utf-8")
    special_map = {
        "additional_special_tokens": [IM_START, IM_END, *INTERNVL_SPECIAL_TOKENS],
        "eos_token": {
            "content": IM_END,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
        },
        "pad_token": {
            "content": ENDOFTEXT,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
        },
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    tokenizer_config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for t, i in ids.items()
        },
        "additional_special_tokens": [IM_START, IM_END, *INTERNVL_SPECIAL_TOKENS],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": IM_END,
        "errors": "replace",
        "model_max_length": CONTEXT_LENGTH,
        "pad_token": ENDOFTEXT,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return ids


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$VLTOOLS_CACHE`` if set, else ``~/.cache/vltools``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vltools"


def _recipe(config: dict[str, Any], base_vocab: int, dtype: str) -> dict[str, Any]:
    return {
        "version": _RECIPE_VERSION,
        "seed": _SEED,
        "config": config,
        "base_vocab": base_vocab,
        "dtype": dtype,
        "corpus": hashlib.sha256("\n".join(_corpus()).encode()).hexdigest(),
    }


def _recipe_hash(recipe: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


_RECIPE_FILE = ".vltools-recipe.json"


def write_checkpoint(
    folder: Path,
    config: dict[str, Any],
    *,
    base_vocab: int,
    dtype: str = "bfloat16",
    seed: int = _SEED,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write an original-format checkpoint for ``config`` into ``folder`` (created if needed).

    With ``max_shard_bytes``, the weights are split into ``model-0000i-of-0000n.safetensors``
    files plus ``model.safetensors.index.json``, as ``save_pretrained`` shards them.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = _write_tokenizer(folder, base_vocab)
    vocab_size = config["llm_config"]["vocab_size"]
    if max(ids.values()) >= vocab_size:
        raise ValueError(f"special token ids {ids} do not fit vocab_size {vocab_size}")
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"eos_token_id": [ids[IM_START], ids[IM_END]]}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")

    shapes = original_key_shapes(config)
    fill = lambda key: _init_array(key, shapes[key], seed)  # noqa: E731
    if max_shard_bytes is None:
        write_safetensors(folder / "model.safetensors", shapes, fill, dtype=dtype)
    else:
        _write_shards(folder, shapes, fill, dtype=dtype, max_shard_bytes=max_shard_bytes)
    return folder


def _write_shards(
    folder: Path,
    shapes: dict[str, tuple[int, ...]],
    fill: Callable[[str], Any],
    *,
    dtype: str,
    max_shard_bytes: int,
) -> None:
    size = _ST_DTYPES[dtype][1]
    shards: list[dict[str, tuple[int, ...]]] = [{}]
    used = 0
    for key in sorted(shapes):
        nbytes = int(np.prod(shapes[key])) * size
        if shards[-1] and used + nbytes > max_shard_bytes:
            shards.append({})
            used = 0
        shards[-1][key] = shapes[key]
        used += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(folder / name, shard, fill, dtype=dtype)
        weight_map |= {key: name for key in shard}
    total = sum(int(np.prod(s)) * size for s in shapes.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _cached_build(
    name: str, path: Path | str | None, build: Callable[[Path], Any], recipe: dict
) -> Path:
    """Build into ``path`` (or the cache) unless a complete build of this recipe is there."""
    recipe_text = json.dumps(recipe, sort_keys=True)
    if path is not None:
        target = Path(path)
    else:
        target = cache_dir() / f"{name}-{_recipe_hash(recipe)}"
    marker = target / _RECIPE_FILE
    if marker.is_file() and marker.read_text() == recipe_text:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and move it into place, so a concurrent reader never sees half a
    # checkpoint; the recipe marker is written last.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; a cache is for everyone on the machine
        build(staging)
        (staging / _RECIPE_FILE).write_text(recipe_text)
        if path is None:
            try:
                os.rename(staging, target)
            except OSError:
                # Another process won the race; its build is the same recipe.
                if not (target / _RECIPE_FILE).is_file():
                    shutil.rmtree(target, ignore_errors=True)
                    os.rename(staging, target)
        else:
            target.mkdir(parents=True, exist_ok=True)
            for item in staging.iterdir():
                os.replace(item, target / item.name)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def tiny_checkpoint(path: Path | str | None = None, *, language_model: str = "qwen2") -> Path:
    """A tiny random-weight InternVL2 checkpoint in the original format; its folder.

    Built in about a second with the same bytes every time, then cached under
    ``$VLTOOLS_CACHE`` (or ``~/.cache/vltools``) as ``tiny-internvl2-<recipe hash>``. With
    ``path``, it is written there instead (and reused if that folder holds the same recipe).
    ``vltools.load_model("tiny")`` loads it.

    ``language_model`` picks the family member: ``"qwen2"`` (InternVL2-1B, the default),
    ``"qwen2.5"`` (InternVL2.5, template ``internvl2_5``), ``"internlm2"`` (InternVL2-2B/8B/26B:
    InternLM2 keys, a SentencePiece ``tokenizer.model``, the InternViT-6B vision traits) or
    ``"phi3"`` (InternVL2-4B: Phi-3 keys, ``su`` rope scaling, ``tokenizer.model`` and
    ``tokenizer.json``); each is cached in its own folder (``tiny-internvl2-<lm>-<hash>``).
    """
    if language_model != "qwen2":
        return tiny_family_checkpoint(path, language_model=language_model)
    config = tiny_config()
    recipe = _recipe(config, _TINY_BASE_VOCAB, "bfloat16")
    return _cached_build(
        "tiny-internvl2",
        path,
        lambda folder: write_checkpoint(folder, copy.deepcopy(config), base_vocab=_TINY_BASE_VOCAB),
        recipe,
    )


def full_size_checkpoint(path: Path | str | None = None) -> Path:
    """A random-weight checkpoint at the real InternVL2-1B sizes (bf16, ~1.9 GB); its folder.

    Same format as the real ``OpenGVLab/InternVL2-1B`` (its exact ``config.json``, 637 keys,
    938,158,976 parameters, one ``model.safetensors``), with a small trained tokenizer whose base
    vocabulary is padded so that the special tokens sit at their real ids 151643..151654.
    Written tensor by tensor (memory stays near the largest tensor, the 272 MB embedding);
    cached like :func:`tiny_checkpoint`. For benchmarks.
    """
    config = full_size_config()
    recipe = _recipe(config, REAL_BASE_VOCAB, "bfloat16")
    return _cached_build(
        "internvl2-1b-random",
        path,
        lambda folder: write_checkpoint(folder, copy.deepcopy(config), base_vocab=REAL_BASE_VOCAB),
        recipe,
    )


def checkpoint_files(folder: Path) -> Iterable[Path]:
    """The files of a checkpoint folder, without vltools' own recipe marker."""
    return sorted(p for p in Path(folder).iterdir() if p.name != _RECIPE_FILE)


# ---------------------------------------------------------------------------------------------
# Family variants: Qwen2.5 (InternVL2.5), InternLM2 (InternVL2-2B/8B/26B), Phi-3 (InternVL2-4B)
# ---------------------------------------------------------------------------------------------

LANGUAGE_MODELS: tuple[str, ...] = ("qwen2", "qwen2.5", "internlm2", "phi3")
# tokens the original tokenizers add after the SentencePiece vocabulary, in order
_INTERNLM2_ADDED = (
    IM_START,
    IM_END,
    "<|action_start|>",
    "<|action_end|>",
    "<|interpreter|>",
    "<|plugin|>",
    *INTERNVL_SPECIAL_TOKENS,
)
_PHI3_ADDED = (
    ENDOFTEXT,
    "<|assistant|>",
    "<|system|>",
    "<|end|>",
    "<|user|>",
    *INTERNVL_SPECIAL_TOKENS,
)
_SPM_VOCAB = 512  # asked of the SentencePiece trainer; the corpus may give fewer
_INTERNLM2_AUTO_MAP = {
    "AutoConfig": "configuration_internlm2.InternLM2Config",
    "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
    "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
}


def _internlm2_shapes(t: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """InternLM2's keys: fused ``wqkv`` (per kv head: its query group, key, value), w1/w3/w2."""
    dt, heads = t["hidden_size"], t["num_attention_heads"]
    d, kv = dt // heads, t.get("num_key_value_heads", heads)
    vocab, inter = t["vocab_size"], t["intermediate_size"]
    shapes = {"language_model.model.tok_embeddings.weight": (vocab, dt)}
    for i in range(t["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        shapes |= {
            p + "attention.wqkv.weight": ((heads + 2 * kv) * d, dt),
            p + "attention.wo.weight": (dt, heads * d),
            p + "feed_forward.w1.weight": (inter, dt),
            p + "feed_forward.w3.weight": (inter, dt),
            p + "feed_forward.w2.weight": (dt, inter),
            p + "attention_norm.weight": (dt,),
            p + "ffn_norm.weight": (dt,),
        }
    shapes["language_model.model.norm.weight"] = (dt,)
    shapes["language_model.output.weight"] = (vocab, dt)
    return shapes


def _phi3_shapes(t: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Phi-3's keys: fused ``qkv_proj`` and ``gate_up_proj``."""
    dt, heads = t["hidden_size"], t["num_attention_heads"]
    d, kv = dt // heads, t.get("num_key_value_heads", heads)
    vocab, inter = t["vocab_size"], t["intermediate_size"]
    shapes = {"language_model.model.embed_tokens.weight": (vocab, dt)}
    for i in range(t["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        shapes |= {
            p + "self_attn.qkv_proj.weight": ((heads + 2 * kv) * d, dt),
            p + "self_attn.o_proj.weight": (dt, heads * d),
            p + "mlp.gate_up_proj.weight": (2 * inter, dt),
            p + "mlp.down_proj.weight": (dt, inter),
            p + "input_layernorm.weight": (dt,),
            p + "post_attention_layernorm.weight": (dt,),
        }
    shapes["language_model.model.norm.weight"] = (dt,)
    shapes["language_model.lm_head.weight"] = (vocab, dt)
    return shapes


_FAMILY_LLM_SHAPES: dict[str, Callable[[dict[str, Any]], dict[str, tuple[int, ...]]]] = {
    "internlm2": _internlm2_shapes,
    "phi3": _phi3_shapes,
}


def _train_sentencepiece() -> bytes:
    """A small SentencePiece BPE model (byte fallback, identity normalisation) on the corpus."""
    import io

    spm = _require_sentencepiece()
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=buffer,
        vocab_size=_SPM_VOCAB,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return buffer.getvalue()


def _require_sentencepiece():
    from vltools._optional import require

    return require("sentencepiece", purpose="Writing an InternLM2 or Phi-3 tiny checkpoint")


def _added_token(content: str) -> dict[str, Any]:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
    }


def _write_sentencepiece_tokenizer(folder: Path, language_model: str) -> dict[str, int]:
    """``tokenizer.model`` and the JSON files as the original tokenizers save them."""
    spm = _require_sentencepiece()
    model = _train_sentencepiece()
    (folder / "tokenizer.model").write_bytes(model)
    base = spm.SentencePieceProcessor(model_proto=model).get_piece_size()
    added = _INTERNLM2_ADDED if language_model == "internlm2" else _PHI3_ADDED
    ids = {t: base + i for i, t in enumerate(added)}
    (folder / "added_tokens.json").write_text(json.dumps(ids, indent=2, sort_keys=True) + "\n")
    special = {"<unk>": 0, "<s>": 1, "</s>": 2, **ids}
    config: dict[str, Any] = {
        "added_tokens_decoder": {
            str(i): {**_added_token(t), "special": True} for t, i in special.items()
        },
        "additional_special_tokens": list(added),
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "unk_token": "<unk>",
    }
    if language_model == "internlm2":
        config |= {
            "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
            "pad_token": "</s>",
            "tokenizer_class": "InternLM2Tokenizer",
        }
    else:
        config |= {
            "add_bos_token": False,
            "add_eos_token": False,
            "add_prefix_space": True,
            "legacy": False,
            "pad_token": None,
            "tokenizer_class": "LlamaTokenizer",
        }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special_map = {
        "additional_special_tokens": list(added),
        "bos_token": _added_token("<s>"),
        "eos_token": _added_token("</s>"),
        "unk_token": _added_token("<unk>"),
    }
    if language_model == "internlm2":
        special_map["pad_token"] = _added_token("</s>")
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    if language_model == "phi3":  # Phi-3 ships the fast tokenizer's tokenizer.json beside it
        import transformers

        fast = transformers.LlamaTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        fast.backend_tokenizer.save(str(folder / "tokenizer.json"))
    return ids


def tiny_family_config(language_model: str) -> dict[str, Any]:
    """The tiny ``config.json`` of a family member (see :func:`tiny_checkpoint`).

    Vocabulary sizes are placeholders for the SentencePiece members (set when the tokenizer is
    written); the vision tower and geometry are the tiny InternVL2-1B's, except InternLM2's, which
    takes InternVL2-26B's InternViT-6B traits (``qk_normalization``, ``rms_norm``).
    """
    if language_model not in LANGUAGE_MODELS:
        raise ValueError(
            f"language_model={language_model!r} is not one vltools writes; expected one of "
            f"{', '.join(LANGUAGE_MODELS)}."
        )
    cfg = tiny_config()
    t = cfg["llm_config"]
    if language_model == "qwen2":
        return cfg
    if language_model == "qwen2.5":
        t["_name_or_path"] = "vltools/tiny-qwen2.5"
        cfg["template"] = "internvl2_5"
        return cfg
    small = {
        "hidden_act": "silu",
        "hidden_size": 64,
        "intermediate_size": 128,
        "initializer_range": 0.02,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "rms_norm_eps": 1e-05,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 0,
    }
    if language_model == "internlm2":
        cfg["llm_config"] = {
            "_name_or_path": "vltools/tiny-internlm2",
            "architectures": ["InternLM2ForCausalLM"],
            "attn_implementation": "eager",
            "auto_map": _INTERNLM2_AUTO_MAP,
            "bias": False,
            "max_position_embeddings": 32768,
            "model_type": "internlm2",
            "num_key_value_heads": 2,
            "rope_scaling": {"factor": 2.0, "type": "dynamic"},
            "rope_theta": 1000000,
            **small,
        }
        cfg["template"] = "internlm2-chat"
        cfg["vision_config"].update({"qk_normalization": True, "norm_type": "rms_norm"})
        return cfg
    head_dim = small["hidden_size"] // small["num_attention_heads"]
    cfg["llm_config"] = {
        "_name_or_path": "vltools/tiny-phi3",
        "architectures": ["Phi3ForCausalLM"],
        "attention_dropout": 0.0,
        "embd_pdrop": 0.0,
        "max_position_embeddings": 131072,
        "model_type": "phi3",
        "num_key_value_heads": 4,
        "original_max_position_embeddings": 4096,
        "resid_pdrop": 0.0,
        "rope_scaling": {
            "long_factor": [1.0 + 0.5 * i for i in range(head_dim // 2)],
            "short_factor": [1.0 + 0.05 * i for i in range(head_dim // 2)],
            "type": "su",
        },
        "rope_theta": 10000.0,
        "sliding_window": 262144,
        **small,
    }
    cfg["template"] = "phi3-chat"
    return cfg


def _write_family_checkpoint(folder: Path, config: dict[str, Any], language_model: str) -> Path:
    if language_model == "qwen2.5":
        return write_checkpoint(folder, config, base_vocab=_TINY_BASE_VOCAB)
    ids = _write_sentencepiece_tokenizer(folder, language_model)
    config["llm_config"]["vocab_size"] = max(ids.values()) + 1
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "generation_config.json").write_text(
        json.dumps({"_from_model_config": True}, indent=2) + "\n"
    )
    shapes = original_key_shapes(config)
    write_safetensors(
        folder / "model.safetensors", shapes, lambda key: _init_array(key, shapes[key], _SEED)
    )
    return folder


def tiny_family_checkpoint(path: Path | str | None = None, *, language_model: str) -> Path:
    """:func:`tiny_checkpoint` for ``language_model`` other than ``"qwen2"``; its folder."""
    config = tiny_family_config(language_model)
    recipe = {**_recipe(config, _TINY_BASE_VOCAB, "bfloat16"), "language_model": language_model}
    return _cached_build(
        f"tiny-internvl2-{language_model}",
        path,
        lambda folder: _write_family_checkpoint(folder, copy.deepcopy(config), language_model),
        recipe,
    )
