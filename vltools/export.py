"""A complete native checkpoint that stock transformers and serving engines load as is.

``export_native(vlm, dest)`` writes, for a loaded :class:`~vltools.models.VLModel`, the files
that ``AutoProcessor`` + ``AutoModelForImageTextToText`` (and engines that read native InternVL
checkpoints, such as vLLM and SGLang) need, without remote code:

- ``config.json`` + ``model.safetensors``: transformers' native ``InternVLForConditionalGeneration``
  (config.json also keeps the original facts, so ``load_model`` gives back the same VLModel);
- the tokenizer, with the named tokens InternVL's processor reads (``start_image_token``,
  ``end_image_token``, ``context_image_token``, ``video_token``);
- ``processor_config.json`` (``image_seq_length``: tokens per tile);
- ``preprocessor_config.json``: the stock tiler (``GotOcr2ImageProcessor``) with the model's
  ``max_num``/``min_num`` as ``max_patches``/``min_patches`` and ``crop_to_patches`` for dynamic
  tiling, 448-pixel tiles, ImageNet mean and std; ``video_preprocessor_config.json`` likewise
  (one tile per frame, as the card's ``load_video``);
- ``chat_template.jinja``: the model's own conversation template (:data:`CHAT_TEMPLATES`, by
  template name), its default system message included when the messages bring none, as
  ``chat()`` does;
- ``generation_config.json``: stops on the template's stop token (``<|im_end|>`` for Hermes-2)
  and on ``<|endoftext|>``.

The chat template renders an image item of a message as ``<IMG_CONTEXT>\\n`` (the processor
expands it to ``<img>`` + 256 ``<IMG_CONTEXT>`` per tile + ``</img>``); several images in one
message are labelled ``Image-1: ``, ``Image-2: ``, ... as vltools' ``label_images`` does; a
video item renders ``<video>\\n``, which the processor expands to ``Frame1: <img>…</img>\\n…``
as the card's video prompt. Text is copied verbatim: a literal ``<image>`` in text stays text.

What the stock processor does NOT reproduce: its grid choice breaks aspect-ratio ties its own
way, its resize is torchvision's bicubic rather than PIL's, and it always adds the thumbnail
when there is more than one tile. README.md ("Exporting for stock transformers and engines")
gives the measured differences.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vltools.constants import (
    ENDOFTEXT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    IMG_CONTEXT_TOKEN,
    IMG_END_TOKEN,
    IMG_START_TOKEN,
)
from vltools.prompts import TEMPLATES

if TYPE_CHECKING:  # pragma: no cover
    from vltools.models import VLModel

__all__ = [
    "CHAT_LAYOUTS",
    "CHAT_TEMPLATES",
    "VIDEO_TOKEN",
    "ChatLayout",
    "ExportReport",
    "chat_template",
    "config_facts",
    "convert",
    "export_native",
    "image_processor_config",
    "stop_token_ids",
    "video_processor_config",
]

logger = logging.getLogger(__name__)

VIDEO_TOKEN = "<video>"  # the stock processor's video placeholder (expanded, never tokenized)

INTERNVL2_5_SYSTEM_MESSAGE = TEMPLATES["internvl2_5"].system_message


@dataclass(frozen=True)
class ChatLayout:
    """How one conversation template lays out a chat (InternVL's ``conversation.py``).

    A conversation renders as ``system_open + system + close`` then, per message,
    ``role_open[role] + text + close``, and ``role_open['assistant']`` to answer.
    """

    name: str
    system_open: str
    user_open: str
    assistant_open: str
    close: str
    stop_token: str
    system_message: str


def _layout(template: Any) -> ChatLayout:
    """The Jinja-facing layout of one of :data:`vltools.prompts.TEMPLATES` (the one table)."""
    system_open, after = template.system_template.split("{system_message}")
    if after:
        raise ValueError(f"template {template.name!r}: text after the system message: {after!r}")
    user_open, assistant_open = template.roles
    return ChatLayout(
        template.name,
        system_open,
        user_open,
        assistant_open,
        template.sep,
        template.stop_token,
        template.system_message,
    )


# The four templates of the InternVL2 family, from the one table in vltools.prompts.
CHAT_LAYOUTS: dict[str, ChatLayout] = {name: _layout(t) for name, t in TEMPLATES.items()}


def _lit(text: str) -> str:
    """``text`` as a Jinja string literal (JSON escapes are Jinja escapes for these strings)."""
    return json.dumps(text, ensure_ascii=False)


_TEMPLATE = """\
{%- set default_system = @SYSTEM@ -%}
{%- macro render(content) -%}
{%- if content is string -%}{{ content }}
{%- elif content is none -%}
{%- else -%}
{%- set ns = namespace(images=0, seen=0) -%}
{%- for item in content -%}{%- if item['type'] == 'image' -%}{%- set ns.images = ns.images + 1 -%}\
{%- endif -%}{%- endfor -%}
{%- for item in content -%}
{%- if item['type'] == 'image' -%}
{%- set ns.seen = ns.seen + 1 -%}
{%- if ns.images > 1 -%}{{ 'Image-' ~ ns.seen ~ ': ' }}{%- endif -%}{{ @IMAGE@ }}
{%- elif item['type'] == 'video' -%}{{ @VIDEO@ }}
{%- elif item['type'] == 'text' -%}{{ item['text'] }}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- if messages and messages[0]['role'] == 'system' -%}
{%- set system = render(messages[0]['content']) -%}{%- set rest = messages[1:] -%}
{%- else -%}{%- set system = default_system -%}{%- set rest = messages -%}
{%- endif -%}
{{ @SYSTEM_OPEN@ ~ system ~ @CLOSE@ }}
{%- for message in rest -%}
{%- if message['role'] == 'user' -%}{{ @USER_OPEN@ ~ render(message['content']) ~ @CLOSE@ }}
{%- elif message['role'] == 'assistant' -%}\
{{ @ASSISTANT_OPEN@ ~ render(message['content']) ~ @CLOSE@ }}
{%- else -%}{{ raise_exception('Unknown role ' ~ message['role'] ~ \
'; this template knows system (first message only), user and assistant.') }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ @ASSISTANT_OPEN@ }}{%- endif -%}
"""


def chat_template(name: str, *, system_message: str | None = None) -> str:
    """The Jinja chat template of conversation template ``name`` (a key of :data:`CHAT_LAYOUTS`).

    ``system_message`` replaces the template's default system message (a checkpoint may carry
    its own); messages that start with a ``system`` message override both.
    """
    if name not in CHAT_LAYOUTS:
        raise ValueError(
            f"template={name!r} has no chat template for export; known templates: "
            f"{', '.join(sorted(CHAT_LAYOUTS))}."
        )
    layout = CHAT_LAYOUTS[name]
    system = layout.system_message if system_message is None else system_message
    parts = {
        "@SYSTEM@": _lit(system),
        "@IMAGE@": _lit(IMG_CONTEXT_TOKEN + "\n"),
        "@VIDEO@": _lit(VIDEO_TOKEN + "\n"),
        "@SYSTEM_OPEN@": _lit(layout.system_open),
        "@USER_OPEN@": _lit(layout.user_open),
        "@ASSISTANT_OPEN@": _lit(layout.assistant_open),
        "@CLOSE@": _lit(layout.close),
    }
    text = _TEMPLATE
    for key, value in parts.items():
        text = text.replace(key, value)
    return text


# Each template's Jinja with its default system message, by template name.
CHAT_TEMPLATES: dict[str, str] = {name: chat_template(name) for name in CHAT_LAYOUTS}


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_native` wrote.

    Attributes:
        path: the checkpoint folder.
        files: the file names written, sorted.
        template: the conversation template the chat template reproduces.
        eos_token_ids: the stop tokens of ``generation_config.json``.
        notes: what the stock processor will do differently from vltools (empty when nothing).
    """

    path: Path
    files: tuple[str, ...]
    template: str
    eos_token_ids: tuple[int, ...]
    notes: tuple[str, ...] = ()

    def __repr__(self) -> str:
        notes = f", {len(self.notes)} note(s)" if self.notes else ""
        return (
            f"ExportReport({str(self.path)!r}: {len(self.files)} files, template="
            f"{self.template!r}, eos={list(self.eos_token_ids)}{notes})"
        )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def image_processor_config(vlm: VLModel) -> dict[str, Any]:
    """``preprocessor_config.json`` for the stock tiler, with the model's tiling settings."""
    return {
        "image_processor_type": "GotOcr2ImageProcessor",
        "processor_class": "InternVLProcessor",
        "crop_to_patches": bool(vlm.dynamic_image_size),
        "min_patches": int(vlm.min_num),
        "max_patches": int(vlm.max_num),
        "size": {"height": int(vlm.tile_size), "width": int(vlm.tile_size)},
        "do_resize": True,
        "resample": 3,  # bicubic, as the card's T.Resize(..., InterpolationMode.BICUBIC)
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
        "do_convert_rgb": True,
    }


def video_processor_config(vlm: VLModel) -> dict[str, Any]:
    """``video_preprocessor_config.json``: one tile per frame, ImageNet-normalised."""
    return {
        "video_processor_type": "InternVLVideoProcessor",
        "processor_class": "InternVLProcessor",
        "size": {"height": int(vlm.tile_size), "width": int(vlm.tile_size)},
        "do_resize": True,
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
        "do_convert_rgb": True,
        "do_sample_frames": False,
    }


def stop_token_ids(vlm: VLModel) -> tuple[int, ...]:
    """The template's stop token (what ``chat()`` stops on), then ``<|endoftext|>`` if known."""
    ids = [int(vlm.im_end_id)]
    end = vlm.tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    if isinstance(end, int) and end != vlm.tokenizer.unk_token_id and end not in ids:
        if vlm.tokenizer.convert_ids_to_tokens(end) == ENDOFTEXT:
            ids.append(end)
    return tuple(ids)


@contextlib.contextmanager
def config_facts(config: Any, facts: dict[str, Any]) -> Iterator[None]:
    """``config`` with ``facts`` set as attributes (``None`` values skipped) for a save, then
    exactly as it was: the loaded model's config is not changed by saving it."""
    missing = object()
    saved = {key: getattr(config, key, missing) for key in facts}
    try:
        for key, value in facts.items():
            if value is not None:
                setattr(config, key, value)
        yield
    finally:
        for key, value in saved.items():
            if value is missing:
                if key in vars(config):
                    delattr(config, key)
            else:
                setattr(config, key, value)


def export_native(
    vlm: VLModel, dest: str | os.PathLike, *, overwrite: bool = False
) -> ExportReport:
    """Write ``vlm`` as a complete native checkpoint in ``dest``; see the module docstring.

    ``dest`` must be empty or absent unless ``overwrite=True`` (which replaces the files this
    function writes, and leaves others alone). Returns an :class:`ExportReport`.
    """
    transformers = _transformers()
    folder = Path(dest)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"dest={str(folder)!r} is a file; pass a folder to export into.")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise ValueError(
            f"dest={str(folder)!r} is not empty; pass an empty or new folder, or "
            "overwrite=True (--overwrite on the command line) to replace the checkpoint files."
        )
    if vlm.template not in CHAT_LAYOUTS:
        raise ValueError(
            f"The model's template {vlm.template!r} has no chat template for export; known "
            f"templates: {', '.join(sorted(CHAT_LAYOUTS))}."
        )
    folder.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    # Model and config: the native files plus the original facts under their original names.
    facts = {
        "template": vlm.template,
        "system_message": vlm.system_message,
        "max_dynamic_patch": vlm.max_num,
        "min_dynamic_patch": vlm.min_num,
        "use_thumbnail": vlm.use_thumbnail,
        "dynamic_image_size": vlm.dynamic_image_size,
    }
    eos = stop_token_ids(vlm)
    generation = transformers.GenerationConfig(
        eos_token_id=list(eos),
        pad_token_id=vlm.tokenizer.pad_token_id
        if vlm.tokenizer.pad_token_id is not None
        else eos[0],
    )
    with config_facts(vlm.model.config, facts):  # written, then the live config as it was
        vlm.model.save_pretrained(str(folder))
    generation.save_pretrained(str(folder))  # over the model's own, which stays as loaded

    # Tokenizer with the named tokens InternVLProcessor reads, and the chat template.
    template = chat_template(vlm.template, system_message=vlm.system_message)
    tokenizer = vlm.tokenizer
    tokenizer.save_pretrained(str(folder))
    tc_path = folder / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8"))
    tc.update(
        {
            "start_image_token": IMG_START_TOKEN,
            "end_image_token": IMG_END_TOKEN,
            "context_image_token": IMG_CONTEXT_TOKEN,
            "video_token": VIDEO_TOKEN,
            "padding_side": "left",
        }
    )
    tc.pop("chat_template", None)
    _write_json(tc_path, tc)
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    legacy = folder / "chat_template.json"
    if legacy.exists():
        legacy.unlink()

    _write_json(
        folder / "processor_config.json",
        {"processor_class": "InternVLProcessor", "image_seq_length": int(vlm.tokens_per_tile)},
    )
    _write_json(folder / "preprocessor_config.json", image_processor_config(vlm))
    _write_json(folder / "video_preprocessor_config.json", video_processor_config(vlm))

    if not vlm.use_thumbnail:
        notes.append(
            "The model tiles without a thumbnail (use_thumbnail=False), but the stock "
            "processor always adds one when an image has more than one tile."
        )
    for note in notes:
        logger.warning("%s", note)
    files = tuple(sorted(p.name for p in folder.iterdir() if p.is_file()))
    return ExportReport(folder, files, vlm.template, eos, tuple(notes))


def convert(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    dtype: Any = None,
    overwrite: bool = False,
    revision: str | None = None,
) -> ExportReport:
    """Load ``source`` (a Hub id, a folder or ``"tiny"``) on the CPU and export it to ``dest``.

    ``dtype=None`` keeps the weights' stored dtype (bfloat16 for InternVL2-1B); pass
    ``"float32"`` etc. to cast.
    """
    from vltools.models import load_model

    if Path(os.fspath(source)).exists() and Path(dest).resolve() == Path(source).resolve():
        raise ValueError(
            f"dest={os.fspath(dest)!r} is the source folder; export into a new folder."
        )
    # float32 first (lossless from bfloat16/float16), then the stored dtype unless told otherwise
    vlm = load_model(source, device="cpu", dtype=dtype or "float32", revision=revision)
    if dtype is None and vlm.path is not None:
        stored = _stored_dtype(_read_json(vlm.path / "config.json"))
        if stored != "float32":
            vlm.model.to(getattr(_torch(), stored))
    return export_native(vlm, dest, overwrite=overwrite)


def _stored_dtype(config: dict[str, Any]) -> str:
    """The dtype the checkpoint's config names (``torch_dtype``/``dtype``), float32 if none."""
    for section in (config, config.get("llm_config") or {}, config.get("text_config") or {}):
        for key in ("torch_dtype", "dtype"):
            name = section.get(key)
            if isinstance(name, str) and name.removeprefix("torch.") in (
                "float32",
                "bfloat16",
                "float16",
            ):
                return name.removeprefix("torch.")
    return "float32"


def _transformers() -> Any:
    from vltools._optional import require

    return require("transformers", purpose="Exporting a checkpoint")


def _torch() -> Any:
    from vltools._optional import require

    return require("torch", purpose="Exporting a checkpoint")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
