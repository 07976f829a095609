"""Loading InternVL2 checkpoints into transformers' native ``InternVLForConditionalGeneration``.

The model card loads InternVL2-1B with ``trust_remote_code=True`` under transformers 4.37.2.
vltools instead converts the ORIGINAL checkpoint (``model_type: internvl_chat``) at load time
into the native model, following the key and config mapping of the format sheet
(``../shared/reference/INTERNVL2_FORMAT.md``, sections 1, 2 and 4), and loads native checkpoints
(``model_type: internvl``, the ``-hf`` repos) directly. No remote code is ever downloaded or run.
The checkpoint side lives in :mod:`vltools.checkpoints` (finding and downloading files,
config.json, the config mapping) and :mod:`vltools.conversion` (safetensors headers, the key
mapping, filling the model); this module picks
the device, dtype and attention, loads the tokenizer, and assembles the :class:`VLModel`.

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
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vltools._optional import require
from vltools.checkpoints import (
    NATIVE_TEMPLATE,
    TEMPLATES,
    InternVLFacts,
    _check_original_config,
    _read_config,
    _resolve_source,
    native_config_from_original,
)
from vltools.constants import (
    CONTEXT_LENGTH,
    DEFAULT_MAX_NUM,
    DEFAULT_MIN_NUM,
    DEFAULT_MODEL,
    IMG_CONTEXT_TOKEN,
    IMG_END_TOKEN,
    IMG_START_TOKEN,
)
from vltools.conversion import (
    ConversionPlan,
    KeyMapping,
    _weight_entries,
    convert_original,
    plan_conversion,
    read_weight_index,
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

SUPPORTED_FORMATS = (
    "the original InternVL2 format (config.json model_type 'internvl_chat', e.g. "
    "OpenGVLab/InternVL2-1B), converted on the fly; and transformers' native format "
    "(model_type 'internvl', e.g. OpenGVLab/InternVL3-1B-hf), loaded directly"
)

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
                f"dtype={dtype!r} is not a torch dtype name vltools supports; use one of 'float32', 'bfloat16', 'float16' "
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
# The two checkpoint formats: model, tokenizer and facts
# ---------------------------------------------------------------------------------------------


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
    model = convert_original(
        folder,
        config,
        entries,
        image_token_id=image_token_id,
        device=device,
        dtype=dtype,
        attn_implementation=attn_implementation,
    )
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
        """The model card's ``chat()``; see :func:`vltools.generation.model_chat`."""
        from vltools.generation import model_chat

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
        """The model card's ``batch_chat()``; see :func:`vltools.generation.model_batch_chat`."""
        from vltools.generation import model_batch_chat

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
        source: a Hub id (``"OpenGVLab/InternVL2-1B"``), a local directory, ``"tiny"`` (random
            weights) or ``"toy"`` (trained on synthetic shapes, shipped with vltools).
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
