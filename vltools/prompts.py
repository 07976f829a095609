"""The exact prompt text InternVL2-1B sees: the Hermes-2 template and the ``<image>`` expansion.

Follows section 2 of the format notes (``docs/FORMAT.md``) and the
model card's ``chat()``/``batch_chat()``:

- Hermes-2 with MPT separators: ``<|im_start|>system\\n{system}<|im_end|>`` then, per message,
  ``<|im_start|>{role}\\n{text}<|im_end|>``, and a bare ``<|im_start|>assistant\\n`` to answer.
  There are no newlines between turns.
- ``chat()`` prepends ``<image>\\n`` to the question only on the first turn (``history is
  None``), when there are pixels, and when the question holds no ``<image>`` of its own.
- Each entry of ``num_patches_list`` replaces the next ``<image>`` of the whole rendered
  conversation with ``<img>`` + ``<IMG_CONTEXT>`` x (256 * tiles) + ``</img>``.

Everything here is pure string work; :func:`render_prompt` returns a :class:`Prompt` whose
``compact`` form writes each run of ``<IMG_CONTEXT>`` as ``<IMG_CONTEXT>×N`` (the notation of
``tests/reference/prompts.json``).
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vltools.constants import (
    HERMES2_SYSTEM_MESSAGE,
    IM_END,
    IM_START,
    IMAGE_PLACEHOLDER,
    IMG_CONTEXT_TOKEN,
    IMG_END_TOKEN,
    IMG_START_TOKEN,
    TOKENS_PER_TILE,
)

__all__ = [
    "Prompt",
    "render_prompt",
    "render_template",
    "expand_images",
    "chat_query",
    "label_images",
    "compact",
    "expand_compact",
    "check_history",
    "ROLES",
]

# Hermes-2 roles (``docs/FORMAT.md``, section 2): the role strings include their opening token and newline.
ROLES: dict[str, str] = {"user": f"{IM_START}user\n", "assistant": f"{IM_START}assistant\n"}
_SEP = IM_END  # MPT separator: no trailing newline
_COMPACT_RUN = re.compile(f"(?:{re.escape(IMG_CONTEXT_TOKEN)})+")
_EXPANDED_RUN = re.compile(re.escape(IMG_CONTEXT_TOKEN) + r"×(\d+)")

History = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class Prompt:
    """The exact prompt of one model call, with a compact form for display.

    Attributes:
        text: the exact string that is tokenized (``len(text)`` characters).
        num_patches_list: tiles per image block, in the order the blocks appear in ``text``.
        tokens_per_tile: ``<IMG_CONTEXT>`` tokens per tile (256 for InternVL2).
    """

    text: str
    num_patches_list: tuple[int, ...] = ()
    tokens_per_tile: int = TOKENS_PER_TILE

    @property
    def compact(self) -> str:
        """``text`` with each run of ``<IMG_CONTEXT>`` written as ``<IMG_CONTEXT>×N``."""
        return compact(self.text)

    @property
    def sha256(self) -> str:
        """Hex sha256 of the UTF-8 ``text`` (as in ``prompts.json``)."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def chars(self) -> int:
        """Number of characters of ``text``."""
        return len(self.text)

    @property
    def num_image_tokens(self) -> int:
        """Number of ``<IMG_CONTEXT>`` tokens (``tokens_per_tile * sum(num_patches_list)``)."""
        return self.tokens_per_tile * sum(self.num_patches_list)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Prompt({self.chars} chars, images={list(self.num_patches_list)}):\n{self.compact}"

    def _repr_html_(self) -> str:
        return prompt_html(self.text)


def compact(text: str) -> str:
    """Write each run of ``<IMG_CONTEXT>`` in ``text`` as ``<IMG_CONTEXT>×N``."""
    return _COMPACT_RUN.sub(
        lambda m: f"{IMG_CONTEXT_TOKEN}×{len(m.group(0)) // len(IMG_CONTEXT_TOKEN)}", text
    )


def expand_compact(text: str) -> str:
    """Inverse of :func:`compact`: ``<IMG_CONTEXT>×N`` back to N ``<IMG_CONTEXT>`` tokens."""
    return _EXPANDED_RUN.sub(lambda m: IMG_CONTEXT_TOKEN * int(m.group(1)), text)


def prompt_html(text: str) -> str:
    """An HTML ``<pre>`` of a prompt: special tokens shaded, image runs as one badge each."""
    parts = []
    pattern = re.compile(
        f"({_COMPACT_RUN.pattern}|<\\|im_start\\|>|<\\|im_end\\|>|"
        f"{re.escape(IMG_START_TOKEN)}|{re.escape(IMG_END_TOKEN)})"
    )
    for piece in pattern.split(text):
        if not piece:
            continue
        if piece.startswith(IMG_CONTEXT_TOKEN):
            n = len(piece) // len(IMG_CONTEXT_TOKEN)
            parts.append(
                '<span style="background:#fde68a;color:#000;border-radius:3px;padding:0 3px">'
                f"&lt;IMG_CONTEXT&gt;×{n}</span>"
            )
        elif pattern.fullmatch(piece):
            parts.append(f'<span style="color:#888">{html.escape(piece)}</span>')
        else:
            parts.append(html.escape(piece))
    return (
        '<pre style="white-space:pre-wrap;word-break:break-word;font-size:12px">'
        + "".join(parts)
        + "</pre>"
    )


def render_template(
    messages: Sequence[tuple[str, str | None]], *, system_message: str | None = None
) -> str:
    """Render ``(role, text)`` messages with the Hermes-2 template (MPT separators).

    ``role`` is ``"user"`` or ``"assistant"``; a ``None`` text renders only the role header
    (the open assistant turn the model completes). ``system_message=None`` uses the
    template's default (:data:`~vltools.constants.HERMES2_SYSTEM_MESSAGE`).
    """
    system = HERMES2_SYSTEM_MESSAGE if system_message is None else system_message
    out = [f"{IM_START}system\n{system}{_SEP}"]
    for role, text in messages:
        if role not in ROLES:
            raise ValueError(f"Unknown role {role!r}; the Hermes-2 template knows {list(ROLES)}.")
        out.append(ROLES[role] if text is None else f"{ROLES[role]}{text}{_SEP}")
    return "".join(out)


def image_block(num_patches: int, *, tokens_per_tile: int = TOKENS_PER_TILE) -> str:
    """``<img>`` + ``<IMG_CONTEXT>`` x (tokens_per_tile * num_patches) + ``</img>``."""
    return IMG_START_TOKEN + IMG_CONTEXT_TOKEN * (tokens_per_tile * num_patches) + IMG_END_TOKEN


def expand_images(
    text: str, num_patches_list: Sequence[int], *, tokens_per_tile: int = TOKENS_PER_TILE
) -> str:
    """Replace the ``<image>`` placeholders of ``text``, in order, by image blocks.

    Raises ValueError when the number of placeholders differs from ``len(num_patches_list)``
    (the original code would leave a literal ``<image>`` or fail later inside ``generate``).
    """
    count = text.count(IMAGE_PLACEHOLDER)
    if count != len(num_patches_list):
        raise ValueError(
            f"The prompt has {count} '<image>' placeholder(s) but {len(num_patches_list)} "
            f"image(s) were given (num_patches_list={list(num_patches_list)}). Expected one "
            "'<image>' per image: put one '<image>' per image in the question, or pass "
            "num_patches_list with one entry per '<image>' (and the same pixel_values again on "
            "every turn, as the model card does)."
        )
    for n in num_patches_list:
        text = text.replace(IMAGE_PLACEHOLDER, image_block(n, tokens_per_tile=tokens_per_tile), 1)
    return text


def label_images(text: str, num_images: int) -> str:
    """The card's way to place images in a question that has no ``<image>`` of its own.

    One image: ``<image>\\n{text}``; several: ``Image-1: <image>\\nImage-2: <image>\\n…{text}``;
    none, or ``text`` already holding ``<image>``: ``text`` unchanged.
    """
    if num_images == 0 or IMAGE_PLACEHOLDER in text:
        return text
    if num_images == 1:
        return f"{IMAGE_PLACEHOLDER}\n{text}"
    labels = "".join(f"Image-{i + 1}: {IMAGE_PLACEHOLDER}\n" for i in range(num_images))
    return labels + text


def check_history(history: Any) -> list[tuple[str, str]]:
    """Validate a card-style history: a list of ``(question, answer)`` string pairs."""
    if history is None:
        return []
    if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
        raise TypeError(
            f"history must be a list of (question, answer) string pairs or None, got "
            f"{type(history).__name__}. Pass the history returned by chat(..., "
            "return_history=True)."
        )
    pairs = []
    for i, turn in enumerate(history):
        if (
            not isinstance(turn, (tuple, list))
            or len(turn) != 2
            or not all(isinstance(x, str) for x in turn)
        ):
            raise ValueError(
                f"history[{i}] is {turn!r}; expected a (question, answer) pair of two strings. "
                "Pass the history returned by chat(..., return_history=True)."
            )
        pairs.append((turn[0], turn[1]))
    return pairs


def chat_query(
    question: str,
    *,
    history: History | None = None,
    num_patches_list: Sequence[int] = (),
    system_message: str | None = None,
    tokens_per_tile: int = TOKENS_PER_TILE,
) -> Prompt:
    """The prompt the card's ``chat()`` builds for ``question`` after ``history``.

    ``num_patches_list`` empty means no pixels. On the first turn (``history is None``) with
    pixels, ``<image>\\n`` is prepended unless ``question`` holds ``<image>`` itself.
    """
    if not isinstance(question, str):
        raise TypeError(f"question must be a str, got {type(question).__name__}.")
    if history is None and num_patches_list and IMAGE_PLACEHOLDER not in question:
        question = f"{IMAGE_PLACEHOLDER}\n{question}"
    messages: list[tuple[str, str | None]] = []
    for old_q, old_a in check_history(history):
        messages += [("user", old_q), ("assistant", old_a)]
    messages += [("user", question), ("assistant", None)]
    template = render_template(messages, system_message=system_message)
    text = expand_images(template, list(num_patches_list), tokens_per_tile=tokens_per_tile)
    return Prompt(text, tuple(int(n) for n in num_patches_list), tokens_per_tile)


def render_prompt(
    question: str,
    *,
    history: History | None = None,
    num_patches_list: Sequence[int] | None = None,
    pixel_values: Any = None,
    system_message: str | None = None,
    tokens_per_tile: int = TOKENS_PER_TILE,
) -> Prompt:
    """The exact prompt ``VLModel.chat`` (and the card's ``chat()``) builds, for inspection.

    Give either ``num_patches_list`` (tiles per image) or ``pixel_values`` (anything with a
    ``shape[0]`` = number of tiles, all one image block, as the card's default), or neither for
    text only. ``history`` is a list of ``(question, answer)`` pairs as ``chat`` returns it.

    Example: ``render_prompt("Describe.", num_patches_list=[7]).compact`` ends in
    ``user\\n<img><IMG_CONTEXT>×1792</img>\\nDescribe.<|im_end|><|im_start|>assistant\\n``.
    """
    if num_patches_list is None:
        num_patches_list = [] if pixel_values is None else [int(pixel_values.shape[0])]
    elif pixel_values is not None and sum(num_patches_list) != int(pixel_values.shape[0]):
        raise ValueError(
            f"num_patches_list={list(num_patches_list)} sums to {sum(num_patches_list)} but "
            f"pixel_values has {int(pixel_values.shape[0])} tiles; they must agree."
        )
    return chat_query(
        question,
        history=history,
        num_patches_list=[int(n) for n in num_patches_list],
        system_message=system_message,
        tokens_per_tile=tokens_per_tile,
    )
