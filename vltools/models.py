"""Loading InternVL2 checkpoints into transformers' native ``InternVLForConditionalGeneration``.

The model card loads InternVL2-1B with ``trust_remote_code=True`` under transformers 4.37.2.
vltools instead converts the ORIGINAL checkpoint (``model_type: internvl_chat``) at load time
into the native model, following the key and config mapping of the format sheet
(``../shared/reference/INTERNVL2_FORMAT.md``, sections 1, 2 and 4), and loads native checkpoints
(``model_type: internvl``, the ``-hf`` repos) directly. No remote code is ever downloaded or run.

Loading holds one copy of the weights: the model is built on the meta device, then each
parameter is filled from the ``.safetensors`` file(s) tensor by tensor, the fused vision
``attn.qkv`` split by rows on the way. In the file's own dtype on the CPU every parameter is a
copy-on-write view of the memory-mapped file (as transformers' own loader does); otherwise each
tensor is read with positional reads into a temporary of its own size and cast at once.
Everything that can be checked before allocating is checked first: config fields, template,
tokenizer, and every key and shape of the weight files against the model the config describes.

The result is a :class:`VLModel`: the native model, its tokenizer, and the InternVL facts the
rest of vltools needs (template, image-context token id, tokens per tile, tile size, ...).
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vltools._optional import require
from vltools.constants import (
    CONTEXT_LENGTH,
    DEFAULT_MAX_NUM,
    DEFAULT_MIN_NUM,
    DEFAULT_MODEL,
    HERMES2_SYSTEM_MESSAGE,
    IM_END,
    IMG_CONTEXT_TOKEN,
    IMG_END_TOKEN,
    IMG_START_TOKEN,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "load_model",
    "VLModel",
    "ConversionPlan",
    "KeyMapping",
    "TEMPLATES",
    "plan_conversion",
    "native_config_from_original",
    "resolve_device",
    "resolve_dtype",
    "read_weight_index",
]

logger = logging.getLogger(__name__)

TINY = "tiny"
SUPPORTED_FORMATS = (
    "the original InternVL2 format (config.json model_type 'internvl_chat', e.g. "
    "OpenGVLab/InternVL2-1B), converted on the fly; and transformers' native format "
    "(model_type 'internvl', e.g. OpenGVLab/InternVL3-1B-hf), loaded directly"
)
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


@dataclass(frozen=True)
class Template:
    """A conversation template's facts: its default system message and its stop token."""

    name: str
    system_message: str
    stop_token: str


# Templates of the original checkpoints (InternVL's conversation.py), by config.json name.
TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("Hermes-2", HERMES2_SYSTEM_MESSAGE, IM_END),
        Template("phi3-chat", HERMES2_SYSTEM_MESSAGE, "<|end|>"),
        Template(
            "internvl2_5",
            "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位"
            "联合开发的多模态大语言模型。",
            IM_END,
        ),
    )
}
# The native -hf checkpoints (InternVL2.5/3) follow the internvl2_5 conventions.
NATIVE_TEMPLATE = "internvl2_5"

# ---------------------------------------------------------------------------------------------
# Device, dtype
# ---------------------------------------------------------------------------------------------


def resolve_device(device: Any = None) -> torch.device:
    """``device`` as a torch.device; ``None`` picks CUDA, then MPS, then CPU."""
    torch = require("torch", purpose="Loading a model")
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"device={device!r} is not a device torch knows; use 'cpu', 'cuda', 'cuda:0', 'mps' "
            "or None for the best available."
        ) from e


_DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    """``dtype`` as a torch floating dtype; ``None`` picks one for ``device``.

    bf16 on CUDA devices that support it, fp16 on older CUDA devices and on MPS, fp32 on CPU.
    """
    torch = require("torch", purpose="Loading a model")
    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    if isinstance(dtype, str):
        name = _DTYPE_NAMES.get(dtype.lower().removeprefix("torch."))
        if name is None:
            raise ValueError(
                f"dtype={dtype!r} is not supported; use one of 'float32', 'bfloat16', 'float16' "
                "(or a torch dtype), or None for the device's default."
            )
        return getattr(torch, name)
    if isinstance(dtype, torch.dtype) and dtype in (torch.float32, torch.bfloat16, torch.float16):
        return dtype
    raise TypeError(
        f"dtype={dtype!r} is not supported; pass torch.float32, torch.bfloat16, torch.float16, "
        "their names as strings, or None."
    )


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


def _resolve_source(source: str | os.PathLike, revision: str | None, allow_pickle: bool) -> Path:
    """The local folder of ``source``: 'tiny', a directory, or a Hub id (downloaded)."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"source must be a Hub id, a local directory or 'tiny', not {type(source).__name__}"
        )
    text = os.fspath(source)
    if text == TINY:
        from vltools.testing import tiny_checkpoint

        return tiny_checkpoint()
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
            f"{DEFAULT_MODEL!r}, or 'tiny'."
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
            "directory or 'tiny'."
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


def _read_config(folder: Path) -> dict[str, Any]:
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
# Weight files: headers, validation, reading
# ---------------------------------------------------------------------------------------------

_ST_DTYPES = {
    "BF16": ("bfloat16", 2),
    "F16": ("float16", 2),
    "F32": ("float32", 4),
    "F64": ("float64", 8),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in a ``.safetensors`` file (absolute byte range) and its layout."""

    file: Path
    dtype: str  # torch dtype name, e.g. "bfloat16"
    shape: tuple[int, ...]
    start: int  # absolute offset of the first byte in ``file``
    end: int


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _read_header(path: Path) -> dict[str, TensorEntry]:
    """Parse and check a safetensors header; raise a ValueError naming ``path`` on any damage."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is truncated or not a safetensors file ({size} bytes).")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise ValueError(
                f"{path} is truncated or not a safetensors file: its header claims {n} bytes but "
                f"the file has {size}. Download the file again."
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"{path} has a damaged safetensors header ({e}). Download it again."
        ) from e
    data_start = 8 + n
    entries: dict[str, TensorEntry] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            name, itemsize = _ST_DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"{path}: tensor {key!r} has an unsupported header entry {info!r}."
            ) from e
        if end - begin != _numel(shape) * itemsize:
            raise ValueError(
                f"{path}: tensor {key!r} spans {end - begin} bytes but shape {list(shape)} of "
                f"{info['dtype']} needs {_numel(shape) * itemsize}. The file is damaged."
            )
        if data_start + end > size:
            raise ValueError(
                f"{path} is truncated: tensor {key!r} ends at byte {data_start + end} but the file "
                f"has only {size} bytes. Download the file again."
            )
        entries[key] = TensorEntry(path, name, shape, data_start + begin, data_start + end)
    return entries


def read_weight_index(folder: Path) -> dict[str, TensorEntry]:
    """Every tensor of the checkpoint in ``folder`` (single or sharded safetensors), checked.

    Raises FileNotFoundError without weights, and refuses pickle weights (``*.bin``): loading
    them can run arbitrary code. ``allow_pickle=True`` is handled by the caller.
    """
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index} is not a valid safetensors index ({e}).") from e
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{index} names weight files that are not in {folder}: {', '.join(missing[:5])}. "
                "Download the missing shards."
            )
        paths = [folder / f for f in files]
    else:
        paths = sorted(folder.glob("*.safetensors"))
    if not paths:
        pickles = sorted(p.name for p in folder.glob("*.bin"))
        if pickles:
            raise ValueError(
                f"{folder} has only pickle weights ({', '.join(pickles[:3])}). vltools refuses "
                "them by default because unpickling can execute arbitrary code; convert them to "
                "safetensors, or pass allow_pickle=True to load_model if you trust the source."
            )
        raise FileNotFoundError(
            f"{folder} has no *.safetensors weight files. Copy the checkpoint's "
            "model*.safetensors (and model.safetensors.index.json if sharded) into it; a Hub "
            "repository with only pickle weights (*.bin) needs allow_pickle=True, which also "
            "downloads them."
        )
    entries: dict[str, TensorEntry] = {}
    for p in paths:
        for key, entry in _read_header(p).items():
            if key in entries:
                raise ValueError(f"tensor {key!r} appears in both {entries[key].file} and {p}.")
            entries[key] = entry
    return entries


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


def _check_original_config(config: dict[str, Any], path: Path) -> InternVLFacts:
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
            "(format sheet, section 2), and loading it as v2 would silently scramble every "
            "image. Use a checkpoint with ps_version 'v2' (all InternVL2 and later models)."
        )
    llm_type = t["model_type"]
    if llm_type in ("internlm2",) or "internlm" in str(llm_type).lower():
        raise ValueError(
            f"{path}: the language model is {llm_type!r} (InternVL2-2B, -8B, -26B). "
            "InternLM2-based checkpoints are not supported yet: transformers has no native "
            "InternLM2. Supported: language models transformers implements natively (Qwen2 as in "
            "InternVL2-1B, Phi-3 as in InternVL2-4B, Qwen2.5 as in InternVL2.5-1B, ...)."
        )
    transformers = require("transformers", purpose="Loading a model")
    if llm_type not in transformers.CONFIG_MAPPING:
        raise ValueError(
            f"{path}: llm_config.model_type {llm_type!r} is not a language model transformers "
            f"{transformers.__version__} implements natively, so it cannot be loaded without "
            "remote code. Supported: native architectures such as 'qwen2', 'phi3', 'llama'."
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

    Follows the format sheet's section 4.4, with its traps: ``qkv_bias`` -> ``attention_bias``
    and ``qk_normalization`` -> ``use_qk_norm`` (the native config ignores the old names), the
    top-level ``tie_word_embeddings=False`` (only the top-level flag counts), ``select_layer`` ->
    ``vision_feature_layer``, and the checkpoint's own ``<IMG_CONTEXT>`` id.
    """
    transformers = require("transformers", purpose="Loading a model")
    path = path or Path("config.json")
    facts = _check_original_config(config, path)
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
    text_kwargs = {k: val for k, val in t.items() if k not in _LLM_DROP and k != "model_type"}
    text_kwargs["tie_word_embeddings"] = False
    text = transformers.AutoConfig.for_model(t["model_type"], **text_kwargs)
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


# ---------------------------------------------------------------------------------------------
# Key mapping (format sheet 4.3)
# ---------------------------------------------------------------------------------------------

_VISION_LAYER_RENAMES = (
    ("ls1", "lambda_1"),
    ("ls2", "lambda_2"),
    ("attn.proj.", "attention.projection_layer."),
    ("attn.q_norm.", "attention.q_norm."),
    ("attn.k_norm.", "attention.k_norm."),
    ("norm1.", "layernorm_before."),
    ("norm2.", "layernorm_after."),
    ("mlp.", "mlp."),
)
_FIXED = {
    "vision_model.embeddings.class_embedding": "model.vision_tower.embeddings.cls_token",
    "vision_model.embeddings.position_embedding": "model.vision_tower.embeddings.position_embeddings",
    "vision_model.embeddings.patch_embedding.weight": "model.vision_tower.embeddings.patch_embeddings.projection.weight",
    "vision_model.embeddings.patch_embedding.bias": "model.vision_tower.embeddings.patch_embeddings.projection.bias",
    "mlp1.0.weight": "model.multi_modal_projector.layer_norm.weight",
    "mlp1.0.bias": "model.multi_modal_projector.layer_norm.bias",
    "mlp1.1.weight": "model.multi_modal_projector.linear_1.weight",
    "mlp1.1.bias": "model.multi_modal_projector.linear_1.bias",
    "mlp1.3.weight": "model.multi_modal_projector.linear_2.weight",
    "mlp1.3.bias": "model.multi_modal_projector.linear_2.bias",
    "language_model.lm_head.weight": "lm_head.weight",
}
_VISION_LAYER = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class KeyMapping:
    """One original tensor and where it goes: ``rows`` slices dim 0 (the fused qkv split)."""

    source: str
    target: str
    rows: tuple[int, int] | None = None


@dataclass(frozen=True)
class ConversionPlan:
    """How an original state dict fills a native model: every key consumed, every param filled.

    Attributes:
        mappings: one entry per native tensor, in file order of the sources.
        source_keys: the original keys consumed (all of them).
    """

    mappings: tuple[KeyMapping, ...]
    source_keys: tuple[str, ...]

    def targets(self) -> set[str]:
        return {m.target for m in self.mappings}


def _map_key(key: str, shape: Sequence[int]) -> list[KeyMapping] | None:
    if key in _FIXED:
        return [KeyMapping(key, _FIXED[key])]
    if key.startswith("language_model.model."):
        return [
            KeyMapping(key, "model.language_model." + key.removeprefix("language_model.model."))
        ]
    m = _VISION_LAYER.match(key)
    if m is None:
        return None
    layer, rest = m.groups()
    prefix = f"model.vision_tower.encoder.layer.{layer}."
    if rest in ("attn.qkv.weight", "attn.qkv.bias"):
        if not shape or shape[0] % 3:
            return None
        dim = shape[0] // 3
        kind = rest.rsplit(".", 1)[-1]
        return [
            KeyMapping(key, f"{prefix}attention.{name}_proj.{kind}", (i * dim, (i + 1) * dim))
            for i, name in enumerate("qkv")
        ]
    for old, new in _VISION_LAYER_RENAMES:
        if rest.startswith(old):
            return [KeyMapping(key, prefix + new + rest.removeprefix(old))]
    return None


def plan_conversion(
    source_shapes: dict[str, Sequence[int]],
    target_shapes: dict[str, Sequence[int]],
    *,
    source_name: str = "the weights",
) -> ConversionPlan:
    """Map every original key onto the native model's tensors and check every shape.

    Raises a ValueError naming ``source_name`` that lists keys it cannot place, native
    tensors left unfilled, and shape mismatches (at most a few of each).
    """
    mappings: list[KeyMapping] = []
    unknown: list[str] = []
    mismatched: list[str] = []
    for key in sorted(source_shapes):
        shape = tuple(source_shapes[key])
        mapped = _map_key(key, shape)
        if mapped is None or any(m.target not in target_shapes for m in mapped):
            unknown.append(key)
            continue
        for m in mapped:
            want = tuple(target_shapes[m.target])
            have = shape if m.rows is None else (m.rows[1] - m.rows[0], *shape[1:])
            if want != have:
                mismatched.append(f"{key} {list(shape)} -> {m.target} needs {list(want)}")
            mappings.append(m)
    filled = [m.target for m in mappings]
    missing = sorted(set(target_shapes) - set(filled))
    doubled = (
        sorted({t for t in filled if filled.count(t) > 1})
        if len(filled) != len(set(filled))
        else []
    )
    problems = []
    if mismatched:
        problems.append(
            f"{len(mismatched)} shape(s) do not match the config: " + "; ".join(mismatched[:4])
        )
    if unknown:
        problems.append(f"{len(unknown)} unexpected key(s): " + ", ".join(unknown[:4]))
    if missing:
        problems.append(
            f"{len(missing)} model tensor(s) with no weights: " + ", ".join(missing[:4])
        )
    if doubled:
        problems.append("tensors filled twice: " + ", ".join(doubled[:4]))
    if problems:
        raise ValueError(
            f"{source_name} do not match config.json: " + " | ".join(problems) + ". The weights "
            "and config.json must come from the same checkpoint."
        )
    return ConversionPlan(tuple(mappings), tuple(sorted(source_shapes)))


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


def _load_tokenizer(folder: Path):
    """The checkpoint's tokenizer, without remote code; prefer the class the config names."""
    transformers = require("transformers", purpose="Loading a tokenizer")
    files = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not any((folder / f).is_file() for f in files):
        raise FileNotFoundError(
            f"{folder} has no tokenizer files (tokenizer.json / tokenizer_config.json / "
            "vocab.json + merges.txt); copy them from the checkpoint's repository."
        )
    cls = None
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        try:
            name = json.loads(tc.read_text(encoding="utf-8")).get("tokenizer_class")
        except json.JSONDecodeError as e:
            raise ValueError(f"{tc} is not valid JSON: {e}") from e
        if isinstance(name, str):
            cls = getattr(transformers, name, None) or getattr(
                transformers, name.removesuffix("Fast"), None
            )
    try:
        if cls is not None:
            return cls.from_pretrained(str(folder))
        return transformers.AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"Could not load the tokenizer in {folder}: {e}") from e


def _token_id(tokenizer: Any, token: str, folder: Path, vocab_size: int) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token", None)
    if not isinstance(token_id, int) or (
        token != unk and tokenizer.convert_ids_to_tokens(token_id) != token
    ):
        raise ValueError(
            f"The tokenizer in {folder} has no {token!r} token, so images cannot be placed in "
            "the prompt. InternVL2 tokenizers add <img>, </img>, <IMG_CONTEXT>, ...; use the "
            "tokenizer files that came with the checkpoint."
        )
    if not 0 <= token_id < vocab_size:
        raise ValueError(
            f"The tokenizer in {folder} gives {token!r} id {token_id}, outside the model's "
            f"vocabulary of {vocab_size}; tokenizer and weights do not belong together."
        )
    return token_id


# ---------------------------------------------------------------------------------------------
# Building and filling the model
# ---------------------------------------------------------------------------------------------


def _empty_model(config: Any, dtype: torch.dtype, attn_implementation: str):
    """The native model with every parameter on the meta device (nothing allocated)."""
    torch = require("torch", purpose="Loading a model")
    transformers = require("transformers", purpose="Loading a model")
    with torch.device("meta"):
        model = transformers.InternVLForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation=attn_implementation
        )
    return model


def _set_tensor(model: Any, name: str, tensor: torch.Tensor) -> None:
    torch = require("torch", purpose="Loading a model")
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    old = module._parameters.get(attr)
    if old is None:
        raise KeyError(name)
    param = torch.nn.Parameter(tensor, requires_grad=old.requires_grad)
    param._is_hf_initialized = True
    module._parameters[attr] = param


def _fill(model: Any, plan: ConversionPlan, entries: dict[str, TensorEntry], device, dtype) -> None:
    """Put each planned tensor in its final place, one copy of the weights in all.

    Every file is memory-mapped privately (copy-on-write: nothing ever writes to it). A tensor
    already in the wanted dtype, for a model on the CPU, becomes a view of the mapping, read
    lazily by the OS, as transformers' own loader does; the fused qkv rows are views too. Any
    other tensor is cast (and moved to ``device``) at once, after which its pages are dropped
    from the mapping, so the file is never held in memory beside the converted weights.
    """
    torch = require("torch", purpose="Loading a model")
    targets = dict(model.named_parameters())
    maps: dict[Path, mmap.mmap] = {}
    for path in sorted({e.file for e in entries.values()}):
        with open(path, "rb") as f:
            maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    views_in = {
        e.file
        for e in entries.values()
        if device.type == "cpu" and getattr(torch, e.dtype) == dtype
    }
    for m in plan.mappings:
        entry = entries[m.source]
        shape = tuple(targets[m.target].shape)
        count = _numel(shape)
        offset = entry.start
        if m.rows:  # the rows of a fused qkv tensor are contiguous bytes
            offset += m.rows[0] * (entry.end - entry.start) // entry.shape[0]
        file_dtype = getattr(torch, entry.dtype)
        if count == 0:
            tensor = torch.empty(shape, dtype=dtype, device=device)
        else:
            view = torch.frombuffer(maps[entry.file], dtype=file_dtype, count=count, offset=offset)
            view = view.view(shape)
            if device.type == "cpu" and file_dtype == dtype:
                tensor = view
            else:
                tensor = view.to(device=device, dtype=dtype, copy=True)
                del view
                if entry.file not in views_in and hasattr(mmap, "MADV_DONTNEED"):
                    # no parameter lives in these pages: let the OS drop them now
                    start = offset - offset % mmap.PAGESIZE
                    end = offset + count * file_dtype.itemsize
                    maps[entry.file].madvise(mmap.MADV_DONTNEED, start, end - start)
        _set_tensor(model, m.target, tensor)


def _finish(model: Any, device: torch.device) -> None:
    """Materialise the non-persistent buffers (rotary inv_freq, ...) and check nothing is left."""
    torch = require("torch", purpose="Loading a model")
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            module._buffers[attr] = torch.empty_like(buf, device=device)
    # transformers' own initialisation recomputes the buffers (e.g. the RoPE frequencies from
    # the config); every parameter is marked as initialised, so none is touched.
    model.initialize_weights()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # pragma: no cover - would be a bug in the plan
        raise RuntimeError(f"these tensors were not loaded: {left[:5]}")
    model.eval()


def _load_original(
    folder: Path, config: dict[str, Any], device, dtype, attn_implementation, allow_pickle
):
    config_path = folder / "config.json"
    facts = _check_original_config(config, config_path)
    # weights: headers only, checked before anything large is allocated
    entries = _weight_entries(folder, allow_pickle)
    tokenizer = _load_tokenizer(folder)
    vocab_size = int(config["llm_config"]["vocab_size"])
    image_token_id = _token_id(tokenizer, IMG_CONTEXT_TOKEN, folder, vocab_size)
    native_config = native_config_from_original(
        config, image_token_id=image_token_id, path=config_path
    )
    model = _empty_model(native_config, dtype, attn_implementation)
    target_shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    names = sorted({e.file.name for e in entries.values() if isinstance(e, TensorEntry)}) or sorted(
        p.name for p in folder.glob("*.bin")
    )
    plan = plan_conversion(
        {k: e.shape for k, e in entries.items()},
        target_shapes,
        source_name=f"The weights in {folder} ({', '.join(names[:3])})",
    )
    if isinstance(next(iter(entries.values())), TensorEntry):
        _fill(model, plan, entries, device, dtype)
    else:  # pragma: no cover - pickle opt-in
        _fill_from_tensors(model, plan, entries, device, dtype)
    _finish(model, device)
    _set_generation_config(model, folder, tokenizer)
    return model, tokenizer, facts


def _set_generation_config(model: Any, folder: Path, tokenizer: Any) -> None:
    """Take the checkpoint's generation_config.json (its eos ids) and the tokenizer's pad id."""
    transformers = require("transformers", purpose="Loading a model")
    if (folder / "generation_config.json").is_file():
        try:
            model.generation_config = transformers.GenerationConfig.from_pretrained(str(folder))
        except (OSError, ValueError) as e:
            raise ValueError(f"{folder / 'generation_config.json'} is not valid: {e}") from e
    if model.generation_config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def _weight_entries(folder: Path, allow_pickle: bool) -> dict[str, Any]:
    try:
        return read_weight_index(folder)
    except ValueError as e:
        if not allow_pickle or not list(folder.glob("*.bin")) or list(folder.glob("*.safetensors")):
            raise
        torch = require("torch", purpose="Loading pickle weights")
        logger.warning("Loading pickle weights from %s because allow_pickle=True.", folder)
        tensors: dict[str, Any] = {}
        for p in sorted(folder.glob("*.bin")):
            try:
                tensors |= torch.load(p, map_location="cpu", mmap=True, weights_only=True)
            except Exception as err:
                raise ValueError(f"{p} could not be read as pickle weights: {err}") from e
        return tensors


def _fill_from_tensors(model, plan, tensors, device, dtype) -> None:
    for m in plan.mappings:
        t = tensors[m.source]
        if m.rows:
            t = t[m.rows[0] : m.rows[1]]
        _set_tensor(model, m.target, t.to(device=device, dtype=dtype).contiguous().clone())


def _load_native(
    folder: Path, config: dict[str, Any], device, dtype, attn_implementation, allow_pickle
):
    transformers = require("transformers", purpose="Loading a model")
    if not allow_pickle:
        read_weight_index(folder)  # refuses *.bin, checks headers before allocating
    tokenizer = _load_tokenizer(folder)
    text_cfg = config.get("text_config") or {}
    vocab_size = int(text_cfg.get("vocab_size", 151936))
    image_token_id = _token_id(tokenizer, IMG_CONTEXT_TOKEN, folder, vocab_size)
    declared = config.get("image_token_id", 151667)
    if declared != image_token_id:
        raise ValueError(
            f"{folder / 'config.json'}: image_token_id {declared} is not the tokenizer's "
            f"{IMG_CONTEXT_TOKEN} ({image_token_id}); the config and tokenizer disagree."
        )
    try:
        model = transformers.InternVLForConditionalGeneration.from_pretrained(
            str(folder),
            dtype=dtype,
            attn_implementation=attn_implementation,
            device_map=str(device) if device.type != "cpu" else None,
            trust_remote_code=False,
            use_safetensors=not allow_pickle,
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"Could not load the native checkpoint in {folder}: {e}") from e
    model.eval()
    _set_generation_config(model, folder, tokenizer)
    vcfg = model.config.vision_config
    image = vcfg.image_size[0] if isinstance(vcfg.image_size, (list, tuple)) else vcfg.image_size
    preprocess = _read_json(folder / "preprocessor_config.json")
    # A native checkpoint saved by VLModel.save_pretrained carries the original facts.
    name = config.get("template", NATIVE_TEMPLATE)
    if name not in TEMPLATES:
        raise ValueError(
            f"{folder / 'config.json'}: template {name!r} is not one vltools knows. Known "
            f"templates: {', '.join(sorted(TEMPLATES))}."
        )
    template = TEMPLATES[name]
    facts = InternVLFacts(
        template=template.name,
        system_message=config.get("system_message") or template.system_message,
        tile_size=int(image),
        tokens_per_tile=int(model.config.image_seq_length),
        downsample_ratio=float(model.config.downsample_ratio),
        select_layer=int(model.config.vision_feature_layer),
        max_num=int(
            config.get("max_dynamic_patch", preprocess.get("max_patches", DEFAULT_MAX_NUM))
        ),
        min_num=int(
            config.get("min_dynamic_patch", preprocess.get("min_patches", DEFAULT_MIN_NUM))
        ),
        use_thumbnail=bool(config.get("use_thumbnail", True)),
        dynamic_image_size=bool(
            config.get("dynamic_image_size", preprocess.get("crop_to_patches", True))
        ),
        ps_version="v2",
    )
    return model, tokenizer, facts


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------------------------------
# VLModel
# ---------------------------------------------------------------------------------------------


@dataclass(repr=False, eq=False)
class VLModel:
    """A loaded InternVL model: the native transformers model, its tokenizer, and its facts.

    Attributes:
        model: ``transformers.InternVLForConditionalGeneration`` in eval mode.
        tokenizer: the checkpoint's tokenizer.
        source: what was asked for ("tiny", a Hub id or a directory); ``path`` is the folder.
        template, system_message: the conversation template name and its system message.
        image_token_id, img_start_id, img_end_id: ``<IMG_CONTEXT>``, ``<img>``, ``</img>``.
        im_end_id: the stop token of the template (``<|im_end|>`` for Hermes-2).
        tokens_per_tile: image tokens per tile (256), ``tile_size``: tile pixels (448).
        max_num, min_num, use_thumbnail: the checkpoint's tiling defaults.
        context_length: the token budget vltools checks prompts against.
        downsample_ratio, select_layer (= ``vision_feature_layer``), attn_implementation.
    """

    model: Any
    tokenizer: Any
    source: str
    template: str
    system_message: str
    image_token_id: int
    img_start_id: int
    img_end_id: int
    im_end_id: int
    tokens_per_tile: int
    tile_size: int
    max_num: int
    min_num: int
    use_thumbnail: bool
    context_length: int
    downsample_ratio: float
    select_layer: int
    attn_implementation: str
    path: Path | None = None
    checkpoint_format: str = "internvl_chat"
    dynamic_image_size: bool = True
    ps_version: str = "v2"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def vision_feature_layer(self) -> int:
        """The native name of ``select_layer``."""
        return self.select_layer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def config(self) -> Any:
        return self.model.config

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts: ``vision``, ``projector``, ``language`` (with lm_head), ``total``."""
        inner = self.model.model
        vision = sum(p.numel() for p in inner.vision_tower.parameters())
        projector = sum(p.numel() for p in inner.multi_modal_projector.parameters())
        total = sum(p.numel() for p in self.model.parameters())
        return {
            "vision": vision,
            "projector": projector,
            "language": total - vision - projector,
            "total": total,
        }

    def __repr__(self) -> str:
        n = self.num_parameters()
        return (
            f"VLModel({self.source!r}: {_count(n['total'])} parameters "
            f"[vision {_count(n['vision'])}, projector {_count(n['projector'])}, "
            f"language {_count(n['language'])}], dtype={str(self.dtype).removeprefix('torch.')}, "
            f"device={self.device}, attn={self.attn_implementation}, template={self.template!r}, "
            f"{self.tokens_per_tile} tokens per {self.tile_size}px tile, max_num={self.max_num})"
        )

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Save in transformers' native format (loadable by ``load_model`` and ``from_pretrained``).

        Besides the native files, config.json keeps the original InternVL facts under their
        original names (``template``, ``system_message``, ``max_dynamic_patch``,
        ``min_dynamic_patch``, ``use_thumbnail``, ``dynamic_image_size``), so a round trip
        through ``load_model`` gives back the same VLModel.
        """
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        config = self.model.config
        facts = {
            "template": self.template,
            "system_message": self.system_message,
            "max_dynamic_patch": self.max_num,
            "min_dynamic_patch": self.min_num,
            "use_thumbnail": self.use_thumbnail,
            "dynamic_image_size": self.dynamic_image_size,
        }
        for key, value in facts.items():
            setattr(config, key, value)
        self.model.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        return folder

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected image features ``[tiles, tokens_per_tile, hidden]`` in the model's dtype.

        ``pixel_values`` is ``[tiles, 3, tile_size, tile_size]`` (ImageNet-normalised). This is
        what replaces the ``<IMG_CONTEXT>`` tokens: vision tower, pixel shuffle, projector.
        """
        torch = require("torch", purpose="Computing image features")
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be [tiles, 3, {self.tile_size}, {self.tile_size}], got "
                f"shape {list(pixel_values.shape)}"
            )
        with torch.no_grad():
            out = self.model.get_image_features(
                pixel_values=pixel_values.to(device=self.device, dtype=self.dtype),
                vision_feature_layer=self.select_layer,
                vision_feature_select_strategy="default",
                return_dict=True,
            )
        return out.pooler_output

    def chat(
        self,
        pixel_values: Any,
        question: str,
        generation_config: dict[str, Any] | None = None,
        history: Any = None,
        return_history: bool = False,
        num_patches_list: Sequence[int] | None = None,
    ) -> Any:
        """The model card's ``chat()``; see :func:`vltools.chat.model_chat`."""
        from vltools.chat import model_chat

        return model_chat(
            self,
            pixel_values,
            question,
            generation_config=generation_config,
            history=history,
            return_history=return_history,
            num_patches_list=num_patches_list,
        )

    def batch_chat(
        self,
        pixel_values: Any,
        questions: Sequence[str],
        generation_config: dict[str, Any] | None = None,
        num_patches_list: Sequence[int] | None = None,
    ) -> list[str]:
        """The model card's ``batch_chat()``; see :func:`vltools.chat.model_batch_chat`."""
        from vltools.chat import model_batch_chat

        return model_batch_chat(
            self,
            pixel_values,
            questions,
            generation_config=generation_config,
            num_patches_list=num_patches_list,
        )


def _count(n: int) -> str:
    """A parameter count for people: 938.2M, 1.2B, 54.3K."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


# ---------------------------------------------------------------------------------------------
# load_model
# ---------------------------------------------------------------------------------------------

_ATTN = ("sdpa", "eager")


def load_model(
    source: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: Any = None,
    dtype: Any = None,
    attn_implementation: str | None = None,
    revision: str | None = None,
    allow_pickle: bool = False,
) -> VLModel:
    """Load an InternVL checkpoint into transformers' native model; see the module docstring.

    Args:
        source: a Hub id (``"OpenGVLab/InternVL2-1B"``), a local directory, or ``"tiny"``.
        device: a torch device; default CUDA, then MPS, then CPU.
        dtype: torch dtype or its name; default bf16 on CUDA (fp16 where bf16 is unsupported and
            on MPS), fp32 on CPU.
        attn_implementation: ``"sdpa"`` (default) or ``"eager"`` (needed for attention maps).
        revision: a Hub revision (branch, tag or commit).
        allow_pickle: accept ``*.bin`` pickle weights (which can execute code) when there are no
            safetensors. Off by default.
    """
    require("torch", purpose="Loading a model")
    attn = attn_implementation or "sdpa"
    if attn not in _ATTN:
        raise ValueError(
            f"attn_implementation={attn_implementation!r} is not supported; use 'sdpa' (default) "
            "or 'eager' (which returns attention weights)."
        )
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    folder = _resolve_source(source, revision, allow_pickle)
    config = _read_config(folder)
    model_type = config.get("model_type")
    if model_type == "internvl_chat":
        model, tokenizer, facts = _load_original(folder, config, dev, dt, attn, allow_pickle)
        checkpoint_format = "internvl_chat"
        vocab_size = int(config["llm_config"]["vocab_size"])
        max_positions = int(config["llm_config"].get("max_position_embeddings", CONTEXT_LENGTH))
    elif model_type == "internvl":
        model, tokenizer, facts = _load_native(folder, config, dev, dt, attn, allow_pickle)
        checkpoint_format = "internvl"
        vocab_size = int(model.config.text_config.vocab_size)
        max_positions = int(
            getattr(model.config.text_config, "max_position_embeddings", CONTEXT_LENGTH)
        )
    else:
        raise ValueError(
            f"{folder / 'config.json'} has model_type {model_type!r}, which vltools cannot load. "
            f"Supported: {SUPPORTED_FORMATS}."
        )
    stop = TEMPLATES[facts.template].stop_token
    max_len = getattr(tokenizer, "model_max_length", None)
    context = (
        int(max_len)
        if isinstance(max_len, int) and 0 < max_len <= max_positions
        else min(CONTEXT_LENGTH, max_positions)
    )
    vl = VLModel(
        model=model,
        tokenizer=tokenizer,
        source=os.fspath(source),
        template=facts.template,
        system_message=facts.system_message,
        image_token_id=_token_id(tokenizer, IMG_CONTEXT_TOKEN, folder, vocab_size),
        img_start_id=_token_id(tokenizer, IMG_START_TOKEN, folder, vocab_size),
        img_end_id=_token_id(tokenizer, IMG_END_TOKEN, folder, vocab_size),
        im_end_id=_token_id(tokenizer, stop, folder, vocab_size),
        tokens_per_tile=facts.tokens_per_tile,
        tile_size=facts.tile_size,
        max_num=facts.max_num,
        min_num=facts.min_num,
        use_thumbnail=facts.use_thumbnail,
        context_length=context,
        downsample_ratio=facts.downsample_ratio,
        select_layer=facts.select_layer,
        attn_implementation=attn,
        path=folder,
        checkpoint_format=checkpoint_format,
        dynamic_image_size=facts.dynamic_image_size,
        ps_version=facts.ps_version,
    )
    logger.info(
        "Loaded %s (%s format) on %s as %s with %s attention.",
        vl.source,
        checkpoint_format,
        dev,
        str(dt).removeprefix("torch."),
        attn,
    )
    return vl
