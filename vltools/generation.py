"""Generation for InternVL2: the model card's ``chat()``/``batch_chat()`` and their plumbing.

Follows the model card's quick start and section 2 of the format notes (``docs/FORMAT.md``):

- :func:`model_chat` and :func:`model_batch_chat` are ``VLModel.chat``/``VLModel.batch_chat``:
  the card's calls with the tokenizer inside the model. The prompt is built by
  :mod:`vltools.prompts` byte for byte as the original builds it; generation stops on
  ``<|im_end|>`` and only the new text is returned (decoded, cut at ``<|im_end|>``, stripped).
  ``batch_chat`` goes beyond the card: a sample may hold several images or none, the model's
  system message is used (the original drops it), and the tokenizer is left as it was.
  :func:`batch_prompts` builds each batch sample's prompt.
- The plumbing both these calls and the :class:`~vltools.chat.Chat` session use: input checks,
  generation-config validation (:func:`make_generation_config`, the card's greedy defaults),
  projected image features, input embeddings with the features scattered into the
  ``<IMG_CONTEXT>`` positions, and native ``generate`` with a streamer and a stop event.
- Budget: before any compute the prompt is tokenized and counted; if it plus ``max_new_tokens``
  exceeds the context (8,192), :class:`ContextBudgetError` says what each image and frame costs
  and what to lower (:class:`Budget` is the table).

This module never imports :mod:`vltools.chat`; the session builds on it.
"""

from __future__ import annotations

import contextvars
import copy
import difflib
import html
import numbers
import re
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vltools._optional import require
from vltools.constants import CONTEXT_LENGTH, IMAGE_PLACEHOLDER
from vltools.model_building import cache_kwargs
from vltools.prompts import (
    Prompt,
    build_prompt,
    chat_query,
    check_history,
    place_images,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from vltools.models import VLModel

__all__ = [
    "model_chat",
    "model_batch_chat",
    "batch_prompts",
    "make_generation_config",
    "check_generation_options",
    "generate_ids",
    "prompt_ids_in_flight",
    "image_features",
    "embed",
    "decode_answer",
    "decode_text",
    "check_question",
    "check_pixel_values",
    "tokenize",
    "cut_at_stop",
    "TokenStreamer",
    "generate_from_embeds",
    "model_context_length",
    "count_budget",
    "raise_if_over",
    "Budget",
    "ContextBudgetError",
    "DEFAULT_GENERATION",
]

# The card's generation defaults (quick start): greedy, one beam, up to 1024 new tokens.
DEFAULT_GENERATION: dict[str, Any] = {"num_beams": 1, "max_new_tokens": 1024, "do_sample": False}
# generate() keyword arguments that are not GenerationConfig fields
_GENERATE_KWARGS = ("streamer", "stopping_criteria", "logits_processor")
# the prompt ids of the generate() call in progress in this thread (generation runs from
# inputs_embeds alone, so hooks that need to locate image tokens read them here)
_PROMPT_IDS: contextvars.ContextVar[Any] = contextvars.ContextVar("prompt_ids", default=None)


def _torch():
    return require("torch", purpose="Chatting with the model")


# ----------------------------------------------------------------------------- checks


def check_question(question: Any, *, name: str = "question") -> str:
    """``question`` if it is a non-blank str; TypeError/ValueError naming ``name`` otherwise."""
    if not isinstance(question, str):
        raise TypeError(f"{name} must be a str, got {type(question).__name__}: {question!r}.")
    if not question.strip():
        raise ValueError(
            f"{name} is empty ({question!r}); expected some text to ask. "
            "Images alone still need a question such as 'Describe the image.'"
        )
    return question


def check_pixel_values(vlm: VLModel, pixel_values: Any) -> torch.Tensor | None:
    """Validate ``[tiles, 3, S, S]`` floating pixels and move them to the model."""
    if pixel_values is None:
        return None
    torch = _torch()
    if not isinstance(pixel_values, torch.Tensor):
        tiled = getattr(pixel_values, "pixel_values", None)  # a TiledImage or VideoClip
        if isinstance(tiled, torch.Tensor):
            pixel_values = tiled
        else:
            raise TypeError(
                f"pixel_values must be a torch.Tensor [tiles, 3, {vlm.tile_size}, "
                f"{vlm.tile_size}], got {type(pixel_values).__name__}. Use "
                "vltools.load_image(path).pixel_values."
            )
    size = vlm.tile_size
    if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
        raise ValueError(
            f"pixel_values has shape {tuple(pixel_values.shape)}; expected [tiles, 3, {size}, "
            f"{size}] (ImageNet-normalised tiles, as vltools.load_image(...).pixel_values)."
        )
    if pixel_values.shape[0] == 0:
        raise ValueError("pixel_values has 0 tiles; pass None for a text-only question.")
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"pixel_values has dtype {pixel_values.dtype}; expected a floating dtype "
            "(float32, bfloat16 or float16) of normalised pixels, not raw uint8 values. Use "
            "vltools.load_image(...).pixel_values."
        )
    return pixel_values.to(device=vlm.device, dtype=vlm.dtype)


def _check_patches(num_patches_list: Any, total: int) -> list[int]:
    try:
        patches = [int(n) for n in num_patches_list]
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"num_patches_list must be a list of ints (tiles per image), got {num_patches_list!r}."
        ) from e
    if any(n < 1 for n in patches) or sum(patches) != total:
        raise ValueError(
            f"num_patches_list={patches} sums to {sum(patches)} but pixel_values has {total} "
            "tiles; expected positive tile counts, one per image, summing to "
            "pixel_values.shape[0]."
        )
    return patches


def _bad_option(name: str, value: Any, allowed: str, fix: str) -> ValueError:
    return ValueError(f"{name}={value!r} is not allowed; expected {allowed}. {fix}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_generation_options(options: Any, *, streaming: bool = False) -> dict[str, Any]:
    """Validate generate options before any compute; returns them as a new dict.

    Checks what transformers would only find mid-generation (or never): ``num_beams`` >= 1,
    ``temperature`` > 0 with sampling, ``top_p`` in (0, 1], ``top_k`` >= 0,
    ``repetition_penalty`` > 0, ``no_repeat_ngram_size`` >= 0, ``max_new_tokens`` >= 1,
    ``bad_words_ids`` a list of lists of token ids, and no beam search while streaming (a
    streamer, or a :class:`~vltools.chat.Chat`, which always streams). Errors name the value,
    what is allowed and the fix.
    """
    if options is None:
        return dict(DEFAULT_GENERATION)
    if not isinstance(options, Mapping):
        raise TypeError(
            f"generation_config must be a dict of generate options, got "
            f"{type(options).__name__} {options!r}. Pass e.g. "
            "dict(max_new_tokens=64, do_sample=False)."
        )
    opts = dict(options)
    for name in ("num_beams", "max_new_tokens", "top_k", "no_repeat_ngram_size", "min_new_tokens"):
        if name in opts and opts[name] is not None and not _is_int(opts[name]):
            raise TypeError(f"{name}={opts[name]!r} must be an int. Pass a whole number.")
    for name in ("temperature", "top_p", "repetition_penalty"):
        if name in opts and opts[name] is not None and not _is_number(opts[name]):
            raise TypeError(f"{name}={opts[name]!r} must be a number. Pass a float.")
    if "do_sample" in opts and not isinstance(opts["do_sample"], bool):
        raise TypeError(f"do_sample={opts['do_sample']!r} must be True or False.")
    beams = opts.get("num_beams")
    if beams is not None and beams < 1:
        raise _bad_option(
            "num_beams", beams, "an int >= 1", "Use num_beams=1 for greedy or sampling."
        )
    if opts.get("max_new_tokens") is not None and opts["max_new_tokens"] < 1:
        raise _bad_option(
            "max_new_tokens", opts["max_new_tokens"], "an int >= 1", "Ask for at least one token."
        )
    temperature = opts.get("temperature")
    if temperature is not None and temperature < 0:
        raise _bad_option(
            "temperature", temperature, "a number > 0", "Use do_sample=False for greedy."
        )
    if temperature == 0 and opts.get("do_sample"):
        raise _bad_option(
            "temperature",
            temperature,
            "a number > 0 with do_sample=True",
            "For deterministic answers use do_sample=False (greedy) instead of temperature 0.",
        )
    top_p = opts.get("top_p")
    if top_p is not None and not 0 < top_p <= 1:
        raise _bad_option(
            "top_p", top_p, "a number in (0, 1]", "Use top_p=1.0 to keep every token."
        )
    if opts.get("top_k") is not None and opts["top_k"] < 0:
        raise _bad_option("top_k", opts["top_k"], "an int >= 0", "Use top_k=0 to switch it off.")
    penalty = opts.get("repetition_penalty")
    if penalty is not None and penalty <= 0:
        raise _bad_option(
            "repetition_penalty",
            penalty,
            "a number > 0 (1.0 = no penalty, > 1 discourages repeats)",
            "Use e.g. repetition_penalty=1.1.",
        )
    ngram = opts.get("no_repeat_ngram_size")
    if ngram is not None and ngram < 0:
        raise _bad_option(
            "no_repeat_ngram_size", ngram, "an int >= 0", "Use 0 to switch the n-gram ban off."
        )
    bad = opts.get("bad_words_ids")
    if bad is not None and (
        isinstance(bad, (str, bytes))
        or not isinstance(bad, Sequence)
        or not all(
            isinstance(w, Sequence)
            and not isinstance(w, (str, bytes))
            and w
            and all(map(_is_int, w))
            for w in bad
        )
    ):
        raise TypeError(
            f"bad_words_ids={bad!r} must be a list of token-id lists, e.g. [[123], [45, 67]]. "
            "Get the ids with model.tokenizer(word, add_special_tokens=False).input_ids."
        )
    if (streaming or opts.get("streamer") is not None) and (beams or 1) > 1:
        raise _bad_option(
            "num_beams",
            beams,
            "1 while streaming (beam search cannot stream: its best sequence is known only at "
            "the end)",
            "Use num_beams=1, or call model.chat without a streamer for beam search.",
        )
    return opts


def make_generation_config(vlm: VLModel, options: Mapping[str, Any] | None) -> tuple[Any, dict]:
    """The ``GenerationConfig`` for ``options`` (a dict of generate kwargs, as in the card).

    Returns ``(config, extra)`` where ``extra`` holds the non-config generate kwargs
    (``streamer``, ``stopping_criteria``, ``logits_processor``). Always stops on the template's
    stop token (``<|im_end|>`` for Hermes-2, ``<|end|>`` for phi3-chat).
    Unknown or invalid options raise ValueError naming them.
    """
    transformers = require("transformers", purpose="Generation")
    options = check_generation_options(options)
    extra = {k: options.pop(k) for k in _GENERATE_KWARGS if k in options}
    known = transformers.GenerationConfig()
    unknown = [k for k in options if not hasattr(known, k)]
    if unknown:
        hints = {k: difflib.get_close_matches(k, list(known.to_dict()), n=2) for k in unknown}
        raise ValueError(
            f"Unknown generation option(s) {unknown} (close matches: {hints}); expected fields of "
            "transformers.GenerationConfig such as max_new_tokens, do_sample, temperature, top_p, "
            "top_k, num_beams, repetition_penalty, min_new_tokens."
        )
    base = getattr(vlm.model, "generation_config", None)
    config = copy.deepcopy(base) if base is not None else transformers.GenerationConfig()
    try:
        for key, value in options.items():
            setattr(config, key, value)
        config.eos_token_id = vlm.im_end_id
        pad = vlm.tokenizer.pad_token_id
        config.pad_token_id = vlm.im_end_id if pad is None else pad
        config.validate(strict=True)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"transformers rejected the generation options {options}: {e}. Fix or drop the "
            "option named there (for example temperature/top_p need do_sample=True)."
        ) from e
    if config.max_new_tokens is None:
        config.max_new_tokens = DEFAULT_GENERATION["max_new_tokens"]
    return config, extra


# ----------------------------------------------------------------------------- model plumbing


def image_features(vlm: VLModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected vision features ``[tiles, 256, hidden]`` of ``[tiles, 3, S, S]`` pixels."""
    torch = _torch()
    with torch.no_grad():
        if hasattr(vlm, "image_features"):
            return vlm.image_features(pixel_values)
        out = vlm.model.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        return out.pooler_output


def embed(vlm: VLModel, input_ids: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
    """``inputs_embeds [B, L, hidden]``: token embeddings with ``features`` scattered, in
    batch-then-sequence order, into the ``<IMG_CONTEXT>`` positions (as the original)."""
    torch = _torch()
    with torch.no_grad():
        embeds = vlm.model.get_input_embeddings()(input_ids)  # [B, L, hidden]
        mask = input_ids == vlm.image_token_id  # [B, L]
        n_tokens = int(mask.sum())
        n_features = 0 if features is None else features.shape[0] * features.shape[1]
        if n_tokens != n_features:
            raise ValueError(
                f"The prompt holds {n_tokens} <IMG_CONTEXT> tokens but the images give "
                f"{n_features} feature vectors; expected one per token "
                f"({vlm.tokens_per_tile} per tile). Check num_patches_list against the '<image>' "
                "placeholders."
            )
        if n_tokens:
            flat = features.reshape(-1, features.shape[-1]).to(embeds.dtype)  # [tokens, hidden]
            embeds = embeds.masked_scatter(mask.unsqueeze(-1), flat)
    return embeds


def tokenize(vlm: VLModel, text: str, *, special: bool = True) -> torch.Tensor:
    """Token ids ``[1, L]`` as the card's ``tokenizer(query)``: with the tokenizer's own
    special tokens (InternLM2 prepends ``<s>``; Qwen2 and Phi-3's add none to a prompt)."""
    ids = vlm.tokenizer(text, return_tensors="pt", add_special_tokens=special)["input_ids"]
    return ids.to(vlm.device)  # [1, L]


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def decode_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """Decode ``ids`` without special tokens, as the card's (slow) tokenizer does.

    SentencePiece vocabularies (InternLM2, Phi-3) spell bytes as ``<0xNN>`` pieces; the card's
    SentencePiece decoding turns each byte that is not valid UTF-8 into one U+FFFD and keeps the
    valid ones, where the fast tokenizer's byte fallback would replace the whole run. Other
    vocabularies (Qwen2's byte-level BPE) decode as the tokenizer does.
    """
    ids = [int(i) for i in ids]
    if tokenizer.convert_tokens_to_ids("<0x00>") in (None, tokenizer.unk_token_id):
        return tokenizer.decode(ids, skip_special_tokens=True)
    special = set(tokenizer.all_special_ids)
    out = bytearray()
    for piece in tokenizer.convert_ids_to_tokens([i for i in ids if i not in special]):
        byte = _BYTE_PIECE.fullmatch(piece)
        out += bytes([int(byte.group(1), 16)]) if byte else piece.replace("▁", " ").encode()
    return out.decode("utf-8", errors="replace").removeprefix(" ")


def decode_answer(vlm: VLModel, ids: Sequence[int]) -> str:
    """The card's answer: decode without special tokens, cut at the stop token, strip."""
    return decode_text(vlm.tokenizer, ids).split(vlm.stop_token)[0].strip()


def cut_at_stop(ids: Sequence[int], eos: int) -> list[int]:
    """``ids`` as ints up to and including the first ``eos`` (the whole list without one)."""
    out = []
    for t in ids:
        out.append(int(t))
        if int(t) == eos:
            break
    return out


class TokenStreamer:
    """A generate() streamer: collects new ids, times the first, and passes text on.

    ``ids`` holds the new token ids so far, ``first_time`` the ``perf_counter`` of the first;
    ``on_text(piece)`` gets each newly decoded piece of text (held back while a UTF-8 sequence
    is incomplete). ``skip_first`` drops generate()'s first ``put`` (the prompt).
    """

    def __init__(self, vlm: VLModel, on_text=None, *, skip_first: bool = True):
        self.vlm, self.on_text, self.skip_first = vlm, on_text, skip_first
        self.ids: list[int] = []
        self.first_time: float | None = None
        self.emitted = ""

    def put(self, value) -> None:
        if self.skip_first:  # generate() first puts the prompt
            self.skip_first = False
            return
        ids = [int(t) for t in value.reshape(-1).tolist()]
        if not ids:
            return
        if self.first_time is None:
            self.first_time = time.perf_counter()
        self.ids += ids
        if self.on_text is not None:
            text = decode_text(self.vlm.tokenizer, self.ids)
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for more
                return
            piece, self.emitted = text[len(self.emitted) :], text
            if piece:
                self.on_text(piece)

    def end(self) -> None:
        if self.on_text is not None and self.ids:  # flush what was held back
            text = decode_text(self.vlm.tokenizer, self.ids)
            piece, self.emitted = text[len(self.emitted) :], text
            if piece:
                self.on_text(piece)


class _StopWhenSet:
    """A stopping criterion that ends generation once ``event`` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        torch = _torch()
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


def generate_from_embeds(
    vlm: VLModel,
    input_ids: torch.Tensor,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    config: Any,
    extra: dict,
    *,
    cache: Any = None,
    streamer: Any = None,
    stop_event: threading.Event | None = None,
) -> torch.Tensor:
    """Run native generate from ``inputs_embeds`` alone; returns the new ids ``[B, new]``.

    As the card's ``generate()``: no ``input_ids``, so processors that look at earlier tokens
    (``repetition_penalty``, ``no_repeat_ngram_size``, ``bad_words_ids``) see only the new
    tokens, never the prompt's ``<IMG_CONTEXT>`` runs or system message. ``input_ids`` is kept
    for hooks (:func:`prompt_ids_in_flight`).
    """
    torch = _torch()
    transformers = require("transformers", purpose="Generation")
    kwargs = dict(extra)
    criteria = transformers.StoppingCriteriaList(kwargs.pop("stopping_criteria", None) or [])
    if stop_event is not None:
        criteria.append(_StopWhenSet(stop_event))
    user_streamer = kwargs.pop("streamer", None)
    if streamer is not None and user_streamer is not None:
        streamer = _Tee(streamer, user_streamer)
    else:
        streamer = streamer or user_streamer
    token = _PROMPT_IDS.set(input_ids)
    with torch.no_grad(), warnings.catch_warnings():
        # transformers warns that these options then skip the prompt: that is the card's way
        warnings.filterwarnings("ignore", message=".*with `inputs_embeds` and without `input_ids`")
        try:
            out = vlm.model.generate(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                generation_config=config,
                stopping_criteria=criteria,
                streamer=streamer,
                **cache_kwargs(cache),
                **kwargs,
            )
        except (ValueError, TypeError) as e:
            if "generat" in str(e).lower() or "logits" in str(e).lower():
                raise ValueError(f"transformers rejected the generation options: {e}") from e
            raise
        finally:
            _PROMPT_IDS.reset(token)
    return out  # [B, new]: from embeddings alone, generate returns only the new tokens


def prompt_ids_in_flight() -> Any:
    """The prompt ids ``[B, L]`` of the generation running in this thread, or None."""
    return _PROMPT_IDS.get()


def generate_ids(
    vlm: VLModel, prompt: Prompt | str, pixel_values: Any, options: Mapping[str, Any] | None
) -> list[int]:
    """Answer ids of one prompt (cut after the stop token), as ``chat`` generates them.

    Options are checked first, then the prompt is tokenized and counted, then the vision pass.
    """
    config, extra = make_generation_config(vlm, options)
    pixels = check_pixel_values(vlm, pixel_values)
    input_ids = tokenize(vlm, str(prompt))
    patches = prompt.num_tiles if isinstance(prompt, Prompt) else ()
    _check_context(vlm, input_ids.shape[1], config.max_new_tokens, patches)
    features = image_features(vlm, pixels) if pixels is not None else None
    embeds = embed(vlm, input_ids, features)
    torch = _torch()
    new = generate_from_embeds(vlm, input_ids, embeds, torch.ones_like(input_ids), config, extra)
    return cut_at_stop(new[0].tolist(), vlm.im_end_id)


class _Tee:
    def __init__(self, *streamers):
        self.streamers = streamers

    def put(self, value):
        for s in self.streamers:
            s.put(value)

    def end(self):
        for s in self.streamers:
            s.end()


# ----------------------------------------------------------------------------- budget


class ContextBudgetError(ValueError):
    """The prompt plus ``max_new_tokens`` does not fit the model's context; see ``.budget``."""

    def __init__(self, message: str, budget: Budget | None = None):
        super().__init__(message)
        self.budget = budget


@dataclass(frozen=True)
class Budget:
    """Token usage of a prompt against the context.

    Attributes:
        rows: ``(what, tiles, tokens)`` per image or frame, then the text and the answer.
        prompt_tokens: tokens of the prompt (images and text).
        max_new_tokens: tokens reserved for the answer.
        context_length: the model's context (8,192 for InternVL2).
    """

    rows: tuple[tuple[str, int, int], ...]
    prompt_tokens: int
    max_new_tokens: int
    context_length: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.max_new_tokens

    @property
    def fits(self) -> bool:
        return self.total <= self.context_length

    def __str__(self) -> str:
        lines = [
            f"{what:<40} {f'{tiles} tiles' if tiles else '':>11} {tokens:>6} tokens"
            for what, tiles, tokens in self.rows
        ]
        lines.append(
            f"{'total (prompt + max_new_tokens)':<40} {'':>11} {self.total:>6} tokens of "
            f"{self.context_length}" + ("" if self.fits else "  -> TOO LONG")
        )
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(w)}</td><td>{t or ''}</td><td>{n}</td></tr>"
            for w, t, n in self.rows
        )
        colour = "#16a34a" if self.fits else "#dc2626"
        pct = 100 * self.total / self.context_length
        return (
            "<table><tr><th>what</th><th>tiles</th><th>tokens</th></tr>"
            f"{rows}<tr><td><b>total</b></td><td></td><td style='color:{colour}'><b>{self.total}"
            f" / {self.context_length}</b> ({pct:.0f}%)</td></tr></table>"
        )


def count_budget(
    prompt_tokens: int,
    max_new_tokens: int,
    context: int,
    visuals: Sequence[tuple[str, int]],
    tokens_per_tile: int,
) -> Budget:
    """The :class:`Budget` of a prompt: one row per ``(label, tiles)`` visual, then the text
    (the prompt's other tokens) and the answer (``max_new_tokens``)."""
    rows = [(label, tiles, tiles * tokens_per_tile) for label, tiles in visuals]
    image_tokens = sum(r[2] for r in rows)
    rows.append(("text (template, history, question)", 0, prompt_tokens - image_tokens))
    rows.append(("answer (max_new_tokens)", 0, max_new_tokens))
    return Budget(tuple(rows), prompt_tokens, max_new_tokens, context)


def raise_if_over(budget: Budget, *, has_frames: bool = False) -> None:
    """Raise :class:`ContextBudgetError` (the table and what to lower) if ``budget`` does not
    fit; ``has_frames`` adds the hint to sample fewer video frames."""
    if budget.fits:
        return
    over = budget.total - budget.context_length
    hints = ["lower max_num (fewer tiles per image)"]
    if has_frames:
        hints.append("sample fewer frames (num_segments)")
    hints += ["lower max_new_tokens", "start a new conversation (reset/undo)"]
    raise ContextBudgetError(
        f"The prompt needs {budget.prompt_tokens} tokens and max_new_tokens={budget.max_new_tokens}"
        f": {budget.total} tokens, {over} over the model's context of {budget.context_length}.\n"
        f"{budget}\nTo fit, " + ", or ".join(hints) + ".",
        budget,
    )


def model_context_length(vlm: VLModel) -> int:
    """The token budget prompts are checked against: ``vlm.context_length`` (default 8,192)."""
    return int(getattr(vlm, "context_length", CONTEXT_LENGTH) or CONTEXT_LENGTH)


def _check_context(vlm: VLModel, prompt_tokens: int, max_new: int, patches: Sequence[int]) -> None:
    visuals = [(f"image {i + 1}", n) for i, n in enumerate(patches)]
    budget = count_budget(
        prompt_tokens, max_new, model_context_length(vlm), visuals, vlm.tokens_per_tile
    )
    raise_if_over(budget)


# ----------------------------------------------------------------------------- the card's calls


def model_chat(
    vlm: VLModel,
    pixel_values: Any,
    question: str,
    generation_config: Mapping[str, Any] | None = None,
    history: Sequence[tuple[str, str]] | None = None,
    return_history: bool = False,
    num_patches_list: Sequence[int] | None = None,
) -> str | tuple[str, list[tuple[str, str]]]:
    """``VLModel.chat``: the card's ``model.chat(tokenizer, ...)`` without the tokenizer.

    ``pixel_values`` ``[tiles, 3, 448, 448]`` or None; ``num_patches_list`` splits the tiles into
    images (default: all tiles one image). Everything is recomputed on every call, as in the
    card; :class:`Chat` is the cached session. Returns the answer, or ``(answer, history)``.
    """
    _torch()
    check_question(question)
    options = check_generation_options(generation_config)  # before any compute
    history = check_history(history) if history is not None else None
    pixels = check_pixel_values(vlm, pixel_values)
    if pixels is None:
        if num_patches_list:
            raise ValueError(
                f"num_patches_list={list(num_patches_list)} was given without pixel_values; "
                "pass the images' pixel_values too."
            )
        patches: list[int] = []
    elif num_patches_list is None:
        patches = [int(pixels.shape[0])]
    else:
        patches = _check_patches(num_patches_list, int(pixels.shape[0]))
    prompt = chat_query(
        question,
        history=history,
        num_patches_list=patches,
        system_message=vlm.system_message,
        tokens_per_tile=vlm.tokens_per_tile,
        template=vlm.prompt_template,
    )
    answer = decode_answer(vlm, generate_ids(vlm, prompt, pixels, options))
    if not return_history:
        return answer
    stored_q = question
    if history is None and patches and IMAGE_PLACEHOLDER not in question:
        stored_q = place_images(question, 1)  # the card stores the prepended form
    return answer, [*(history or []), (stored_q, answer)]


def _batch_patches(num_patches_list: Any, n_questions: int, total: int) -> list[list[int]]:
    if num_patches_list is None:
        if total == 0:
            return [[] for _ in range(n_questions)]
        if n_questions == 1:
            return [[total]]
        raise ValueError(
            f"{n_questions} questions and {total} tiles but no num_patches_list; expected "
            "num_patches_list with one entry per question (tiles of its image, a list of tile "
            "counts for several images, or 0 for none)."
        )
    if isinstance(num_patches_list, (str, bytes)) or not isinstance(num_patches_list, Sequence):
        raise TypeError(f"num_patches_list must be a list, got {num_patches_list!r}.")
    if len(num_patches_list) != n_questions:
        raise ValueError(
            f"num_patches_list has {len(num_patches_list)} entries for {n_questions} questions; "
            "expected one entry per question."
        )
    per_sample = []
    for entry in num_patches_list:
        items = list(entry) if isinstance(entry, (list, tuple)) else [entry]
        per_sample.append([int(n) for n in items if int(n) != 0])
    flat = [n for s in per_sample for n in s]
    if any(n < 0 for n in flat) or sum(flat) != total:
        raise ValueError(
            f"num_patches_list={list(num_patches_list)} sums to {sum(flat)} but pixel_values has "
            f"{total} tiles; expected the entries to sum to pixel_values.shape[0]."
        )
    return per_sample


def batch_prompts(
    vlm: VLModel, questions: Sequence[str], num_patches: Sequence[Sequence[int]]
) -> list[Prompt]:
    """The prompt of each batch sample: its images placed as the card does
    (:func:`~vltools.prompts.place_images`), the model's template and system message, a fresh
    single-turn conversation."""
    return [
        build_prompt(
            [],
            place_images(q, len(patches)),
            patches,
            template=vlm.prompt_template,
            system_message=vlm.system_message,
            tokens_per_tile=vlm.tokens_per_tile,
        )
        for q, patches in zip(questions, num_patches, strict=True)
    ]


def model_batch_chat(
    vlm: VLModel,
    pixel_values: Any,
    questions: Sequence[str],
    generation_config: Mapping[str, Any] | None = None,
    num_patches_list: Sequence[Any] | None = None,
) -> list[str]:
    """``VLModel.batch_chat``: several independent questions generated as one left-padded batch.

    ``num_patches_list[i]`` is the tile count of sample i's image (the card), or a list of tile
    counts for several images (labelled ``Image-1:`` … unless the question places ``<image>``),
    or 0/``[]`` for none. The model's system message is used; the tokenizer is not changed.
    """
    _torch()
    if isinstance(questions, str) or not isinstance(questions, Sequence) or not questions:
        raise TypeError(f"questions must be a non-empty list of str, got {questions!r}.")
    for i, q in enumerate(questions):
        check_question(q, name=f"questions[{i}]")
    check_generation_options(generation_config)  # before any compute
    pixels = check_pixel_values(vlm, pixel_values)
    total = 0 if pixels is None else int(pixels.shape[0])
    per_sample = _batch_patches(num_patches_list, len(questions), total)
    prompts = [p.text for p in batch_prompts(vlm, questions, per_sample)]
    config, extra = make_generation_config(vlm, generation_config)
    enc = vlm.tokenizer(
        prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=True
    )
    input_ids = enc["input_ids"].to(vlm.device)  # [B, L]
    mask = enc["attention_mask"].to(vlm.device)  # [B, L]
    for i, patches in enumerate(per_sample):
        _check_context(vlm, int(mask[i].sum()), config.max_new_tokens, patches)
    features = image_features(vlm, pixels) if pixels is not None else None
    embeds = embed(vlm, input_ids, features)
    new = generate_from_embeds(vlm, input_ids, embeds, mask, config, extra)
    return [decode_answer(vlm, cut_at_stop(row.tolist(), vlm.im_end_id)) for row in new]
