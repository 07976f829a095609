"""InternVL checkpoints on disk or on the Hub: finding one and reading its configuration.

Covers the ORIGINAL InternVL2 checkpoint format (``model_type: internvl_chat``, e.g.
OpenGVLab/InternVL2-1B) and the file side of native checkpoints (``model_type: internvl``, the
``-hf`` repos), following section 3 of the format notes
(``docs/FORMAT.md``):

- finding the checkpoint: ``"tiny"``, a local directory, or a Hub id downloaded with allow
  patterns that fetch configuration, tokenizer and safetensors only (never ``*.py``); offline
  errors that name the ways out; pickle weights (``*.bin``) refused unless opted in;
- the chat templates the original configs name (:data:`TEMPLATES`, from :mod:`vltools.prompts`);
- reading and validating ``config.json`` (required fields, template, ``ps_version``, language
  model, LoRA, ``select_layer``, tile geometry) into :class:`InternVLFacts`;
- mapping the original config fields onto transformers' native ``InternVLConfig``
  (``docs/FORMAT.md``, sections 3 and 4).

:mod:`vltools.conversion` reads the weights and fills the native model;
:mod:`vltools.models` puts both together with the tokenizer into a ``VLModel``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vltools._optional import require
from vltools.constants import DEFAULT_MIN_NUM, DEFAULT_MODEL
from vltools.prompts import TEMPLATES, Template  # the one table of templates (re-exported)

__all__ = [
    "InternVLFacts",
    "check_original_config",
    "read_config",
    "resolve_source",
    "TEMPLATES",
    "Template",
    "native_config_from_original",
    "native_text_config",
    "TEXT_CONFIG_CONVERTERS",
]

TINY = "tiny"
TOY = "toy"
# Files fetched from the Hub: configuration, tokenizer and safetensors weights; never *.py.
HUB_PATTERNS = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer*",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "special_tokens_map.json",
    "chat_template.json",
    "chat_template.jinja",
    "*.safetensors",
    "*.safetensors.index.json",
)
PICKLE_PATTERNS = ("*.bin", "*.bin.index.json")


# The native -hf checkpoints (InternVL2.5/3) follow the internvl2_5 conventions.
NATIVE_TEMPLATE = "internvl2_5"


# ---------------------------------------------------------------------------------------------
# Finding the checkpoint
# ---------------------------------------------------------------------------------------------


def _offline_help(source: str) -> str:
    return (
        f"Could not get {source!r} from the Hugging Face Hub (offline, unreachable, or not in "
        "the local cache). Three ways out: (1) pass a local directory that holds the checkpoint "
        "(config.json, tokenizer files, *.safetensors); (2) set HF_HUB_OFFLINE=1 with a Hub "
        "cache that already holds it (download it once while online, e.g. `hf download "
        f"{source}`); (3) use load_model('tiny') for the offline random-weight test checkpoint."
    )


def resolve_source(
    source: str | os.PathLike, *, revision: str | None = None, allow_pickle: bool = False
) -> Path:
    """The local folder of ``source``: 'tiny', 'toy', a directory, or a Hub id (downloaded
    at ``revision``; pickle weights too only with ``allow_pickle``)."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"source must be a Hub id, a local directory, 'tiny' or 'toy', not {type(source).__name__}"
        )
    text = os.fspath(source)
    if text == TINY:
        from vltools.testing import tiny_checkpoint

        return tiny_checkpoint()
    if text == TOY:
        from vltools.toy import toy_checkpoint

        return toy_checkpoint()
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(
            f"{text!r} is a file; load_model needs the checkpoint's directory (with config.json)."
        )
    looks_local = (
        isinstance(source, os.PathLike)
        or text.startswith((".", "/", "~"))
        or "\\" in text
        or text.count("/") != 1
    )
    if looks_local:
        raise FileNotFoundError(
            f"No directory {text!r}. Pass an existing checkpoint directory, a Hub id like "
            f"{DEFAULT_MODEL!r}, 'tiny' or 'toy'."
        )
    return _download(text, revision, allow_pickle)


def _download(repo_id: str, revision: str | None, allow_pickle: bool) -> Path:
    hub = require("huggingface_hub", purpose="Downloading a model from the Hub")
    errors = require("huggingface_hub.errors", purpose="Downloading a model from the Hub")
    patterns = list(HUB_PATTERNS) + (list(PICKLE_PATTERNS) if allow_pickle else [])
    try:
        folder = hub.snapshot_download(repo_id, revision=revision, allow_patterns=patterns)
    except errors.GatedRepoError as e:
        raise PermissionError(
            f"{repo_id!r} is gated on the Hub; accept its terms and log in (`hf auth login`)."
        ) from e
    except errors.RepositoryNotFoundError as e:
        raise FileNotFoundError(
            f"No Hub repository {repo_id!r} (or it is private). Check the id, or pass a local "
            "directory, 'tiny' or 'toy'."
        ) from e
    except errors.RevisionNotFoundError as e:
        raise ValueError(f"{repo_id!r} has no revision {revision!r}.") from e
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, OSError) as e:
        raise OSError(_offline_help(repo_id)) from e
    except Exception as e:  # requests/httpx connection errors vary between versions
        if "connect" in type(e).__name__.lower() or "timeout" in type(e).__name__.lower():
            raise OSError(_offline_help(repo_id)) from e
        raise
    return Path(folder)


def read_config(folder: Path) -> dict[str, Any]:
    """``folder/config.json`` as a dict; FileNotFoundError/ValueError saying what is wrong."""
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no config.json, so it is not a model checkpoint directory. Pass the "
            "folder that holds config.json, the tokenizer files and the *.safetensors weights."
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object, not {type(config).__name__}.")
    return config


def _require_fields(path: Path, section: dict[str, Any], prefix: str, names: Sequence[str]) -> None:
    missing = [n for n in names if n not in section]
    if missing:
        where = f"{prefix}." if prefix else ""
        raise ValueError(
            f"{path} lacks required field(s) {', '.join(where + m for m in missing)}. The "
            "original InternVL2 config.json (see OpenGVLab/InternVL2-1B) has all of them; "
            "restore the file from the checkpoint's repository."
        )


# ---------------------------------------------------------------------------------------------
# Config conversion
# ---------------------------------------------------------------------------------------------

_VISION_REQUIRED = (
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_hidden_layers",
    "patch_size",
    "image_size",
)
_LLM_REQUIRED = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
)
# llm_config keys that describe the file, not the model
_LLM_DROP = {
    "_name_or_path",
    "architectures",
    "auto_map",
    "torch_dtype",
    "dtype",
    "_attn_implementation",
    "attn_implementation",
    "use_bfloat16",
    "transformers_version",
    "tie_word_embeddings",
}


def _rope_parameters(t: dict[str, Any]) -> dict[str, Any]:
    """``rope_theta`` and the old-style ``rope_scaling`` as transformers 5's ``rope_parameters``.

    ``su`` (Phi-3's name, InternVL2-4B) is ``longrope``, which needs the original context length
    beside the factors; ``dynamic``/``linear`` (InternLM2) keep their names.
    """
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": float(t.get("rope_theta", 1e4))}
    scaling = t.get("rope_scaling")
    if not scaling:
        return params
    kind = scaling.get("rope_type", scaling.get("type"))
    extra = {k: v for k, v in scaling.items() if k not in ("type", "rope_type")}
    if kind in ("su", "longrope"):
        kind = "longrope"
        extra.setdefault(
            "original_max_position_embeddings",
            int(t.get("original_max_position_embeddings", t["max_position_embeddings"])),
        )
    return {**params, "rope_type": kind, **extra}


def _llama_from_internlm2(t: dict[str, Any]) -> dict[str, Any]:
    """InternLM2's config as a native Llama config's fields (the weights map one to one)."""
    heads = int(t["num_attention_heads"])
    return {
        "model_type": "llama",
        "vocab_size": int(t["vocab_size"]),
        "hidden_size": int(t["hidden_size"]),
        "intermediate_size": int(t["intermediate_size"]),
        "num_hidden_layers": int(t["num_hidden_layers"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(t.get("num_key_value_heads") or heads),
        "head_dim": int(t["hidden_size"]) // heads,
        "hidden_act": t.get("hidden_act", "silu"),
        "max_position_embeddings": int(t.get("max_position_embeddings", 2048)),
        "rms_norm_eps": float(t.get("rms_norm_eps", 1e-6)),
        "attention_bias": bool(t.get("bias", False)),  # InternLM2's bias covers wqkv and wo
        "mlp_bias": False,
        "bos_token_id": t.get("bos_token_id"),
        "eos_token_id": t.get("eos_token_id"),
        "pad_token_id": t.get("pad_token_id"),
        "rope_parameters": _rope_parameters(t),
    }


def _phi3(t: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in t.items() if k not in ("rope_scaling", "rope_theta")}
    out["rope_parameters"] = _rope_parameters(t)
    return out


# language models whose original config needs more than a copy (the model_type they load as)
TEXT_CONFIG_CONVERTERS = {"internlm2": _llama_from_internlm2, "phi3": _phi3}


def native_text_config(llm_config: dict[str, Any]):
    """transformers' native config of an original ``llm_config`` (InternLM2 becomes Llama)."""
    transformers = require("transformers", purpose="Loading a model")
    convert = TEXT_CONFIG_CONVERTERS.get(llm_config["model_type"])
    fields = convert(llm_config) if convert else dict(llm_config)
    kwargs = {k: v for k, v in fields.items() if k not in _LLM_DROP and k != "model_type"}
    kwargs["tie_word_embeddings"] = False
    return transformers.AutoConfig.for_model(fields["model_type"], **kwargs)


@dataclass(frozen=True)
class InternVLFacts:
    """What the original config says beyond the native model (carried onto VLModel)."""

    template: str
    system_message: str
    tile_size: int
    tokens_per_tile: int
    downsample_ratio: float
    select_layer: int
    max_num: int
    min_num: int
    use_thumbnail: bool
    dynamic_image_size: bool
    ps_version: str


def check_original_config(config: dict[str, Any], path: Path) -> InternVLFacts:
    """Check an original ``internvl_chat`` config (read from ``path``) and return its facts.

    Refuses what cannot load exactly (unknown template, ``ps_version`` v1, LoRA adapters, a
    language model transformers lacks, inconsistent tile geometry), naming the field and fix.
    """
    _require_fields(path, config, "", ("vision_config", "llm_config", "template"))
    v, t = config["vision_config"], config["llm_config"]
    if not isinstance(v, dict) or not isinstance(t, dict):
        raise ValueError(f"{path}: vision_config and llm_config must be JSON objects.")
    _require_fields(path, v, "vision_config", _VISION_REQUIRED)
    _require_fields(path, t, "llm_config", _LLM_REQUIRED)

    template = config["template"]
    if template not in TEMPLATES:
        raise ValueError(
            f"{path}: template {template!r} is not one vltools knows. Known templates: "
            f"{', '.join(sorted(TEMPLATES))}. InternVL2-1B uses 'Hermes-2'."
        )
    # InternVLChatConfig's default is 'v1': a config without the field means v1.
    ps_version = config.get("ps_version", "v1")
    if ps_version != "v2":
        raise ValueError(
            f"{path}: ps_version {ps_version!r} is not supported. transformers' native pixel "
            "shuffle is the 'v2' layout only; a 'v1' checkpoint's image tokens are transposed "
            "(``docs/FORMAT.md``, section 1), and loading it as v2 would silently scramble every "
            "image. Use a checkpoint with ps_version 'v2' (all InternVL2 and later models)."
        )
    llm_type = t["model_type"]
    transformers = require("transformers", purpose="Loading a model")
    if llm_type not in transformers.CONFIG_MAPPING and llm_type not in TEXT_CONFIG_CONVERTERS:
        raise ValueError(
            f"{path}: llm_config.model_type {llm_type!r} is not a language model transformers "
            f"{transformers.__version__} implements natively, so it cannot be loaded without "
            "remote code. Supported: native architectures such as 'qwen2', 'phi3', 'llama', and "
            f"{', '.join(repr(k) for k in TEXT_CONFIG_CONVERTERS)} (converted)."
        )
    for flag in ("use_backbone_lora", "use_llm_lora"):
        if config.get(flag):
            raise ValueError(
                f"{path}: {flag}={config[flag]!r}; checkpoints with unmerged LoRA adapters are "
                "not supported. Merge the adapters and save the merged weights."
            )
    select_layer = int(config.get("select_layer", -1))
    depth = int(v["num_hidden_layers"])
    if not -(depth + 1) <= select_layer <= depth:
        raise ValueError(
            f"{path}: select_layer {select_layer} is outside the vision tower's hidden states "
            f"(-{depth + 1}..{depth})."
        )
    ratio = float(config.get("downsample_ratio", 0.5))
    tile = int(config.get("force_image_size") or v["image_size"])
    patch = int(v["patch_size"])
    grid = tile // patch
    if tile % patch or (grid * ratio) != int(grid * ratio):
        raise ValueError(
            f"{path}: a {tile}-pixel tile is not a whole number of {patch}-pixel patches that "
            f"downsample_ratio {ratio} divides evenly."
        )
    return InternVLFacts(
        template=template,
        system_message=config.get("system_message") or TEMPLATES[template].system_message,
        tile_size=tile,
        tokens_per_tile=int(grid * grid * ratio * ratio),
        downsample_ratio=ratio,
        select_layer=select_layer,
        # absent fields take InternVLChatConfig's own defaults, as the original code would
        max_num=int(config.get("max_dynamic_patch", 6)),
        min_num=int(config.get("min_dynamic_patch", DEFAULT_MIN_NUM)),
        use_thumbnail=bool(config.get("use_thumbnail", False)),
        dynamic_image_size=bool(config.get("dynamic_image_size", False)),
        ps_version=ps_version,
    )


def native_config_from_original(
    config: dict[str, Any], *, image_token_id: int, path: Path | None = None
):
    """transformers' ``InternVLConfig`` for an original ``internvl_chat`` config dict.

    Follows ``docs/FORMAT.md``, sections 3 and 4: ``qkv_bias`` -> ``attention_bias``
    and ``qk_normalization`` -> ``use_qk_norm`` (the native config ignores the old names), the
    top-level ``tie_word_embeddings=False`` (only the top-level flag counts), ``select_layer`` ->
    ``vision_feature_layer``, and the checkpoint's own ``<IMG_CONTEXT>`` id.
    """
    transformers = require("transformers", purpose="Loading a model")
    path = path or Path("config.json")
    facts = check_original_config(config, path)
    v, t = config["vision_config"], config["llm_config"]
    vision = transformers.InternVLVisionConfig(
        hidden_size=v["hidden_size"],
        intermediate_size=v["intermediate_size"],
        num_attention_heads=v["num_attention_heads"],
        num_hidden_layers=v["num_hidden_layers"],
        patch_size=v["patch_size"],
        # the position-embedding grid comes from the vision tower's own image_size; tiles of
        # force_image_size are interpolated at run time, as the original does
        image_size=v["image_size"],
        num_channels=v.get("num_channels", 3),
        hidden_act=v.get("hidden_act", "gelu"),
        layer_norm_eps=v.get("layer_norm_eps", 1e-6),
        norm_type=v.get("norm_type", "layer_norm"),
        initializer_range=v.get("initializer_range", 0.02),
        attention_bias=bool(v.get("qkv_bias", False)),
        use_qk_norm=bool(v.get("qk_normalization", False)),
        layer_scale_init_value=float(v.get("initializer_factor", 1.0)),
        attention_dropout=float(v.get("attention_dropout", 0.0)),
        projection_dropout=float(v.get("dropout", 0.0)),
        hidden_dropout_prob=0.0,
        use_absolute_position_embeddings=True,
        use_mean_pooling=True,
        use_mask_token=False,
    )
    text = native_text_config(t)
    return transformers.InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=int(image_token_id),
        image_seq_length=facts.tokens_per_tile,
        downsample_ratio=facts.downsample_ratio,
        projector_hidden_act="gelu",
        vision_feature_layer=facts.select_layer,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
