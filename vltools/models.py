"""Loading InternVL2 checkpoints into transformers' native ``InternVLForConditionalGeneration``.

The model card loads InternVL2-1B with ``trust_remote_code=True`` under transformers 4.37.2.
vltools instead converts the ORIGINAL checkpoint (``model_type: internvl_chat``) at load time
into the native model, following the key and config mapping of the format notes
(``docs/FORMAT.md``, sections 1 and 3), and loads native checkpoints
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

The family beyond InternVL2-1B loads the same way: InternLM2 language models (InternVL2-2B/8B/26B)
become native Llama, Phi-3 (InternVL2-4B) native Phi3; a tokenizer that exists only as remote
code (InternLM2's) is read from its ``tokenizer.model`` by a stock class
(:data:`SENTENCEPIECE_STAND_INS`). Each model renders prompts with its own template
(``VLModel.prompt_template``: config.json's, or a native checkpoint's own chat template).

The result is a :class:`VLModel`: the native model, its tokenizer, and the InternVL facts the
rest of vltools needs (template, image-context token id, tokens per tile, tile size, ...).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vltools._optional import require
from vltools.checkpoints import (
    NATIVE_TEMPLATE,
    TEMPLATES,
    InternVLFacts,
    Template,
    check_original_config,
    native_config_from_original,
    read_config,
    resolve_source,
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
    convert_original,
    plan_conversion,
    read_weight_index,
    read_weights,
)
from vltools.dtypes import resolve_dtype
from vltools.model_building import check_computed_buffers, mark_generation_config

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "load_model",
    "VLModel",
    "ModelFacts",
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


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


def tokenizer_class(name: Any, *, where: str = "tokenizer_config.json") -> Any:
    """The tokenizer class transformers itself ships under ``name``; refuse anything else.

    A checkpoint's ``tokenizer_config.json`` names its tokenizer class. Only a class defined
    inside transformers that derives from ``PreTrainedTokenizerBase`` is accepted (``Qwen2Tokenizer``,
    ``PreTrainedTokenizerFast``, ...; the historical ``...Fast`` names resolve as transformers
    resolves them). ``Auto*`` classes, non-tokenizers such as ``AutoConfig`` and names of classes
    in the checkpoint's own ``*.py`` files are refused: they are the doors through which
    transformers would offer to run code from the checkpoint.
    """
    transformers = require("transformers", purpose="Loading a tokenizer")
    cls = None
    if isinstance(name, str) and name.isidentifier() and not name.startswith("_"):
        if not name.startswith("Auto"):
            cls = getattr(transformers, name, None) or getattr(
                transformers, name.removesuffix("Fast"), None
            )
    ok = (
        isinstance(cls, type)
        and issubclass(cls, transformers.PreTrainedTokenizerBase)
        and cls.__module__.startswith("transformers.")
    )
    if not ok:
        raise ValueError(
            f"{where} names tokenizer_class {name!r}, which is not a tokenizer class that "
            f"transformers {transformers.__version__} ships. vltools loads only transformers' own "
            "tokenizer classes and never code from a checkpoint (auto_map and *.py files are "
            "ignored). Set tokenizer_class to the tokenizer the model uses, e.g. "
            "'Qwen2Tokenizer' for InternVL2-1B, or 'PreTrainedTokenizerFast' for a plain "
            "tokenizer.json."
        )
    return cls


def _load_tokenizer(folder: Path):
    """The checkpoint's tokenizer, without remote code: only classes transformers ships."""
    transformers = require("transformers", purpose="Loading a tokenizer")
    files = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not any((folder / f).is_file() for f in files):
        raise FileNotFoundError(
            f"{folder} has no tokenizer files (tokenizer.json / tokenizer_config.json / "
            "vocab.json + merges.txt); copy them from the checkpoint's repository."
        )
    tc = folder / "tokenizer_config.json"
    settings = _read_json(tc, strict=True)
    name = settings.get("tokenizer_class")
    if isinstance(name, str) and name.removesuffix("Fast") in SENTENCEPIECE_STAND_INS:
        return _sentencepiece_tokenizer(folder, name)
    if "tokenizer_class" in settings:
        cls = tokenizer_class(settings["tokenizer_class"], where=str(tc))
    elif (folder / "tokenizer.json").is_file():
        cls = transformers.PreTrainedTokenizerFast
    else:
        raise ValueError(
            f"{folder} has no tokenizer.json and its tokenizer_config.json names no "
            "tokenizer_class, so vltools cannot tell which of transformers' tokenizers to use "
            '(it never guesses through auto_map). Add "tokenizer_class" to '
            "tokenizer_config.json, e.g. 'Qwen2Tokenizer'."
        )
    try:
        return cls.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ValueError(f"Could not load the tokenizer in {folder}: {e}") from e


# Tokenizer classes that exist only as remote code, and the stock class and settings that
# tokenize exactly as they do: InternLM2's (InternVL2-2B/8B/26B) is SentencePiece with BOS
# prepended and SentencePiece's dummy prefix on every piece of text between special tokens.
SENTENCEPIECE_STAND_INS: dict[str, tuple[str, dict[str, Any]]] = {
    "InternLM2Tokenizer": (
        "LlamaTokenizer",
        {"legacy": True, "add_prefix_space": True, "add_bos_token": True, "add_eos_token": False},
    ),
}


def _sentencepiece_tokenizer(folder: Path, name: str):
    """A remote-code SentencePiece tokenizer (``tokenizer.model``) as a stock transformers
    class; its special tokens come from ``tokenizer_config.json``/``added_tokens.json``."""
    transformers = require("transformers", purpose="Loading a tokenizer")
    require("sentencepiece", purpose=f"Reading {name}'s tokenizer.model")
    if not (folder / "tokenizer.model").is_file():
        raise FileNotFoundError(
            f"{folder} names {name} but has no tokenizer.model; copy it from the checkpoint's "
            "repository."
        )
    cls_name, settings = SENTENCEPIECE_STAND_INS[name.removesuffix("Fast")]
    try:
        return getattr(transformers, cls_name).from_pretrained(
            str(folder), trust_remote_code=False, **settings
        )
    except (OSError, ValueError) as e:
        raise ValueError(f"Could not load {name}'s tokenizer.model in {folder}: {e}") from e


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
    facts = check_original_config(config, config_path)
    # weights: headers only, checked before anything large is allocated
    entries = read_weights(folder, allow_pickle=allow_pickle)
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
    template = replace(TEMPLATES[facts.template], source="config.json")
    return model, tokenizer, facts, template


def _set_generation_config(model: Any, folder: Path, tokenizer: Any) -> None:
    """Take the checkpoint's generation_config.json (its eos ids) and the tokenizer's pad id."""
    transformers = require("transformers", purpose="Loading a model")
    path = folder / "generation_config.json"
    if path.is_file():
        # read as data (GenerationConfig.from_pretrained would store a trust_remote_code kwarg
        # as a generation setting); a generation config has no code path of its own
        try:
            generation = transformers.GenerationConfig.from_dict(_read_json(path, strict=True))
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"{path} is not valid: {e}") from e
        model.generation_config = mark_generation_config(generation)
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
    except pickle.UnpicklingError as e:
        # as the original-format path says it (conversion.read_weights)
        names = ", ".join(sorted(p.name for p in folder.glob("*.bin"))[:3])
        raise ValueError(f"{folder}/{names} could not be read as pickle weights: {e}") from e
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"Could not load the native checkpoint in {folder}: {e}") from e
    model.eval()
    check_computed_buffers(model)  # as after a conversion: rotary frequencies as computed
    _set_generation_config(model, folder, tokenizer)
    vcfg = model.config.vision_config
    image = vcfg.image_size[0] if isinstance(vcfg.image_size, (list, tuple)) else vcfg.image_size
    preprocess = _read_json(folder / "preprocessor_config.json")
    template = _native_template(folder, config, tokenizer)
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
    return model, tokenizer, facts, template


def _native_template(folder: Path, config: dict[str, Any], tokenizer: Any) -> Template:
    """The template of a native checkpoint, and where it came from.

    In order: the ``template`` a ``VLModel.save_pretrained`` wrote into config.json (the
    original facts); the checkpoint's own Jinja chat template (``chat_template.jinja``,
    ``chat_template.json`` of the processor, or the tokenizer's ``chat_template``); else the
    ``internvl2_5`` conventions the -hf conversions of InternVL2.5/3 follow.
    """
    name = config.get("template")
    if name is not None:
        if name not in TEMPLATES:
            raise ValueError(
                f"{folder / 'config.json'}: template {name!r} is not one vltools knows. Known "
                f"templates: {', '.join(sorted(TEMPLATES))}."
            )
        return replace(TEMPLATES[name], source="config.json")
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return Template.from_chat_template(jinja.read_text(encoding="utf-8"), source=jinja.name)
    processor = _read_json(folder / "chat_template.json").get("chat_template")
    if isinstance(processor, str) and processor.strip():
        return Template.from_chat_template(processor, source="chat_template.json")
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, str) and own.strip():
        return Template.from_chat_template(own, source="the tokenizer's chat_template")
    return replace(TEMPLATES[NATIVE_TEMPLATE], source="default for native checkpoints")


def _read_json(path: Path, *, strict: bool = False) -> dict[str, Any]:
    """``path`` as a JSON object; ``{}`` if absent (and, unless ``strict``, if unreadable)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        if strict:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        return {}
    if not isinstance(data, dict):
        if strict:
            raise ValueError(f"{path} must hold a JSON object, not {type(data).__name__}.")
        return {}
    return data


# ---------------------------------------------------------------------------------------------
# VLModel
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFacts:
    """What vltools knows about a loaded model beyond its weights, fixed at load time.

    Attributes:
        source: what was asked for ("tiny", a Hub id or a directory); ``path`` is the folder.
        checkpoint_format: ``"internvl_chat"`` (original, converted) or ``"internvl"`` (native).
        template, system_message: the conversation template name and its system message.
        prompt_template: the :class:`~vltools.prompts.Template` every prompt is rendered with,
            with ``source`` saying where it came from (config.json, the checkpoint's own chat
            template, or the default for native checkpoints).
        image_token_id, img_start_id, img_end_id: ``<IMG_CONTEXT>``, ``<img>``, ``</img>``.
        im_end_id: the stop token of the template (``<|im_end|>`` for Hermes-2).
        tokens_per_tile: image tokens per tile (256), ``tile_size``: tile pixels (448).
        max_num, min_num, use_thumbnail, dynamic_image_size: the checkpoint's tiling defaults.
        context_length: the token budget vltools checks prompts against.
        downsample_ratio, select_layer (= ``vision_feature_layer``), ps_version,
        attn_implementation: how the vision features are made and attention is computed.
    """

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
    prompt_template: Template | None = None

    def __post_init__(self) -> None:
        if self.prompt_template is None:  # facts written by hand: the template by name
            object.__setattr__(self, "prompt_template", TEMPLATES[self.template])

    def __repr__(self) -> str:
        return (
            f"ModelFacts({self.source!r}, {self.checkpoint_format}, template={self.template!r} "
            f"(from {self.prompt_template.source}), {self.tokens_per_tile} tokens per "
            f"{self.tile_size}px tile, max_num={self.max_num}, context {self.context_length}, "
            f"attn={self.attn_implementation})"
        )


# Every fact reads through the model as before (``vlm.tile_size`` is ``vlm.facts.tile_size``),
# read-only: a changed fact is a new VLModel (:meth:`VLModel.with_facts`).
_FACT_NAMES = tuple(f.name for f in fields(ModelFacts))


@dataclass(repr=False, eq=False)
class VLModel:
    """A loaded InternVL model: the native transformers model, its tokenizer, and its facts.

    Attributes:
        model: ``transformers.InternVLForConditionalGeneration`` in eval mode.
        tokenizer: the checkpoint's tokenizer.
        facts: the :class:`ModelFacts` (template, token ids, tile geometry, context, ...); each
            fact also reads as an attribute of the model (``vlm.tokens_per_tile``).

    Its parts: :attr:`vision_tower` (InternViT), :attr:`projector` (the card's ``mlp1``) and
    :attr:`language_model` (the decoder; its ``lm_head`` is ``vlm.model.lm_head``).
    """

    model: Any
    tokenizer: Any
    facts: ModelFacts

    def with_facts(self, **changes: Any) -> VLModel:
        """The same weights and tokenizer with some facts changed, e.g.
        ``vlm.with_facts(system_message="Answer in one word.")``; ``self`` is untouched."""
        unknown = sorted(set(changes) - set(_FACT_NAMES))
        if unknown:
            raise TypeError(
                f"with_facts got {unknown}, which are not model facts; expected some of "
                f"{', '.join(_FACT_NAMES)}."
            )
        return VLModel(self.model, self.tokenizer, replace(self.facts, **changes))

    @property
    def vision_tower(self) -> Any:
        """The vision encoder (InternViT): ``[tiles, 3, S, S]`` pixels to patch features."""
        return self.model.model.vision_tower

    @property
    def projector(self) -> Any:
        """The projector (the card's ``mlp1``: LayerNorm, Linear, GELU, Linear) that maps the
        pixel-shuffled vision features into the language model's embedding space."""
        return self.model.model.multi_modal_projector

    @property
    def language_model(self) -> Any:
        """The language model's decoder (Qwen2 for InternVL2-1B), without ``lm_head``."""
        return self.model.model.language_model

    @property
    def stop_token(self) -> str:
        """The token generation stops on (the template's separator; ``im_end_id`` is its id)."""
        return self.prompt_template.stop_token

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
        vision = sum(p.numel() for p in self.vision_tower.parameters())
        projector = sum(p.numel() for p in self.projector.parameters())
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
            f"device={self.device}, attn={self.attn_implementation}, template={self.template!r} "
            f"(from {self.prompt_template.source}), "
            f"{self.tokens_per_tile} tokens per {self.tile_size}px tile, max_num={self.max_num})"
        )

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Save a complete native checkpoint; see :func:`vltools.export.export_native`.

        Loadable by ``load_model`` (config.json keeps the original InternVL facts under their
        original names: ``template``, ``system_message``, ``max_dynamic_patch``, ...) and by
        stock ``AutoProcessor`` + ``AutoModelForImageTextToText`` (processor, image-processor
        and generation configs, and the model's chat template). Existing files are replaced.
        A native checkpoint that brought its own Jinja chat template is saved with that
        template, its weights, config and tokenizer only.
        """
        if self.prompt_template.chat_template is None:
            from vltools.export import export_native

            return export_native(self, path, overwrite=True).path
        # A native checkpoint that brought its own Jinja chat template keeps it as it came
        # (weights, config and tokenizer; no processor files are written for it).
        from vltools.export import config_facts

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        facts = {
            "system_message": self.system_message,
            "max_dynamic_patch": self.max_num,
            "min_dynamic_patch": self.min_num,
            "use_thumbnail": self.use_thumbnail,
            "dynamic_image_size": self.dynamic_image_size,
        }
        (folder / "chat_template.jinja").write_text(
            self.prompt_template.chat_template, encoding="utf-8"
        )
        with config_facts(self.model.config, facts):
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


def _fact(name: str) -> property:
    return property(
        lambda self: getattr(self.facts, name),
        doc=f"``facts.{name}``, read-only (see :class:`ModelFacts`).",
    )


for _name in _FACT_NAMES:
    setattr(VLModel, _name, _fact(_name))


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
    folder = resolve_source(source, revision=revision, allow_pickle=allow_pickle)
    config = read_config(folder)
    model_type = config.get("model_type")
    if model_type == "internvl_chat":
        model, tokenizer, known, template = _load_original(
            folder, config, dev, dt, attn, allow_pickle
        )
        checkpoint_format = "internvl_chat"
        vocab_size = int(config["llm_config"]["vocab_size"])
        max_positions = int(config["llm_config"].get("max_position_embeddings", CONTEXT_LENGTH))
    elif model_type == "internvl":
        model, tokenizer, known, template = _load_native(
            folder, config, dev, dt, attn, allow_pickle
        )
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
    stop = template.stop_token
    max_len = getattr(tokenizer, "model_max_length", None)
    context = (
        int(max_len)
        if isinstance(max_len, int) and 0 < max_len <= max_positions
        else min(CONTEXT_LENGTH, max_positions)
    )
    facts = ModelFacts(
        source=os.fspath(source),
        template=known.template,
        system_message=known.system_message,
        image_token_id=_token_id(tokenizer, IMG_CONTEXT_TOKEN, folder, vocab_size),
        img_start_id=_token_id(tokenizer, IMG_START_TOKEN, folder, vocab_size),
        img_end_id=_token_id(tokenizer, IMG_END_TOKEN, folder, vocab_size),
        im_end_id=_token_id(tokenizer, stop, folder, vocab_size),
        tokens_per_tile=known.tokens_per_tile,
        tile_size=known.tile_size,
        max_num=known.max_num,
        min_num=known.min_num,
        use_thumbnail=known.use_thumbnail,
        context_length=context,
        downsample_ratio=known.downsample_ratio,
        select_layer=known.select_layer,
        attn_implementation=attn,
        path=folder,
        checkpoint_format=checkpoint_format,
        dynamic_image_size=known.dynamic_image_size,
        ps_version=known.ps_version,
        prompt_template=template,
    )
    vl = VLModel(model=model, tokenizer=tokenizer, facts=facts)
    if str(dt) == "torch.float16":  # float16 overflows silently in Qwen2: warn when it does
        from vltools.precision import install_float16_guard

        install_float16_guard(model)
    logger.info(
        "Loaded %s (%s format) on %s as %s with %s attention.",
        vl.source,
        checkpoint_format,
        dev,
        str(dt).removeprefix("torch."),
        attn,
    )
    return vl
