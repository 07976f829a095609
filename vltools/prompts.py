"""The exact prompt text an InternVL2 model sees: its conversation template and the images.

Follows section 2 of the format notes (``docs/FORMAT.md``), the original
``conversation.py`` and the model card's ``chat()``/``batch_chat()``:

- :data:`TEMPLATES` is the one table of the family's templates, all with MPT separators:
  ``{system}{sep}`` then, per message, ``{role}{text}{sep}``, and a bare assistant role to
  answer. ``Hermes-2`` (InternVL2-1B) and ``internlm2-chat`` (InternVL2-2B/8B/26B) write
  ``<|im_start|>system\\n…<|im_end|>`` with no newlines between turns; ``internvl2_5``
  (InternVL2.5/3) puts a newline after every ``<|im_end|>`` and has its own system message;
  ``phi3-chat`` (InternVL2-4B) writes ``<|system|>\\n``, ``<|user|>\\n``, ``<|assistant|>\\n``
  and ``<|end|>``. Each stops on its separator (``stop_token``). A native checkpoint's own Jinja
  chat template becomes a :class:`Template` too (:meth:`Template.from_chat_template`).
- :func:`place_images` is the one place that decides where ``<image>`` goes in a question:
  ``<image>\\n`` for one image, ``Image-k: <image>\\n`` labels for several, ``Frame{i}:
  <image>\\n`` for video frames; :func:`build_prompt` renders a conversation with a template
  and expands the images. Every prompt vltools builds (``chat``, ``batch_chat``, ``Chat``, the
  attention capture) goes through these two.
- ``chat()`` prepends ``<image>\\n`` to the question only on the first turn (``history is
  None``), when there are pixels, and when the question holds no ``<image>`` of its own.
- Each entry of ``num_patches_list`` (the card's name; :class:`Prompt` calls it ``num_tiles``)
  replaces the next ``<image>`` of the whole rendered conversation with ``<img>`` +
  ``<IMG_CONTEXT>`` x (256 * tiles) + ``</img>``. :func:`chat_query` and :func:`render_prompt`
  take the card's ``chat()`` arguments, so they keep its ``num_patches_list``.

Everything here is pure string work; :func:`render_prompt` returns a :class:`Prompt` whose
``compact`` form writes each run of ``<IMG_CONTEXT>`` as ``<IMG_CONTEXT>×N`` (the notation of
``tests/reference/prompts.json``).
"""

from __future__ import annotations

import hashlib
import html
import re
import warnings
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
    "Template",
    "TEMPLATES",
    "DEFAULT_TEMPLATE",
    "get_template",
    "render_prompt",
    "render_template",
    "build_prompt",
    "place_images",
    "video_prefix",
    "expand_images",
    "chat_query",
    "label_images",
    "compact",
    "expand_compact",
    "check_history",
    "ROLES",
]

INTERNVL2_5_SYSTEM_MESSAGE = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位"
    "联合开发的多模态大语言模型。"
)


@dataclass(frozen=True)
class Template:
    """One conversation template (MPT separators, as in the original ``conversation.py``).

    Attributes:
        name: the name ``config.json`` gives it (``"Hermes-2"``, ``"phi3-chat"``, ...).
        system_template: the system block, with ``{system_message}`` where the message goes.
        system_message: the default system message.
        roles: the ``(user, assistant)`` headers, each with its opening token and newline.
        sep: written after the system block and after every finished message.
        models: which checkpoints use it (for display).
        chat_template: a native checkpoint's Jinja chat template, when this template is one
            (then ``system_template``, ``roles`` and ``sep`` are not used).
        source: where the template came from (``"vltools table"``, ``"tokenizer_config.json"``).
    """

    name: str
    system_template: str
    system_message: str
    roles: tuple[str, str]
    sep: str
    models: str = ""
    chat_template: str | None = None
    source: str = "vltools table"

    @property
    def stop_token(self) -> str:
        """The token generation stops on: the separator without whitespace (as ``chat()``)."""
        return self.sep.strip()

    @classmethod
    def from_chat_template(
        cls, chat_template: str, *, source: str, stop_token: str = IM_END
    ) -> Template:
        """A native checkpoint's Jinja chat template as a :class:`Template`."""
        if not isinstance(chat_template, str) or not chat_template.strip():
            raise ValueError(f"chat_template from {source} is empty or not a string.")
        return cls(
            name="chat_template",
            system_template="",
            system_message="",
            roles=("user", "assistant"),
            sep=stop_token,
            models="a native checkpoint",
            chat_template=chat_template,
            source=source,
        )

    def __repr__(self) -> str:
        return f"Template({self.name!r}, stop={self.stop_token!r}, from {self.source})"


# The templates of the InternVL2 family (original conversation.py), by config.json name.
TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template(
            "Hermes-2",
            f"{IM_START}system\n{{system_message}}",
            HERMES2_SYSTEM_MESSAGE,
            (f"{IM_START}user\n", f"{IM_START}assistant\n"),
            IM_END,
            "InternVL2-1B (Qwen2-0.5B)",
        ),
        Template(
            "internlm2-chat",
            f"{IM_START}system\n{{system_message}}",
            HERMES2_SYSTEM_MESSAGE,
            (f"{IM_START}user\n", f"{IM_START}assistant\n"),
            IM_END,
            "InternVL2-2B/8B/26B (InternLM2)",
        ),
        Template(
            "phi3-chat",
            "<|system|>\n{system_message}",
            HERMES2_SYSTEM_MESSAGE,
            ("<|user|>\n", "<|assistant|>\n"),
            "<|end|>",
            "InternVL2-4B (Phi-3-mini)",
        ),
        Template(
            "internvl2_5",
            f"{IM_START}system\n{{system_message}}",
            INTERNVL2_5_SYSTEM_MESSAGE,
            (f"{IM_START}user\n", f"{IM_START}assistant\n"),
            f"{IM_END}\n",
            "InternVL2.5 / InternVL3 (Qwen2.5, InternLM2.5)",
        ),
    )
}
DEFAULT_TEMPLATE = "Hermes-2"
# Hermes-2 roles (``docs/FORMAT.md``, section 2): the role strings include their opening token and newline.
ROLES: dict[str, str] = dict(zip(("user", "assistant"), TEMPLATES["Hermes-2"].roles, strict=True))
_COMPACT_RUN = re.compile(f"(?:{re.escape(IMG_CONTEXT_TOKEN)})+")
_EXPANDED_RUN = re.compile(re.escape(IMG_CONTEXT_TOKEN) + r"×(\d+)")


def get_template(template: str | Template | None) -> Template:
    """The :class:`Template` named ``template`` (a Template passes through; None: Hermes-2)."""
    if template is None:
        return TEMPLATES[DEFAULT_TEMPLATE]
    if isinstance(template, Template):
        return template
    if not isinstance(template, str):
        raise TypeError(
            f"template must be a template name or a Template, got {type(template).__name__}."
        )
    if template not in TEMPLATES:
        raise ValueError(
            f"Unknown template {template!r}; known templates: {', '.join(TEMPLATES)}. "
            "Pass one of these names (InternVL2-1B uses 'Hermes-2')."
        )
    return TEMPLATES[template]


History = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class Prompt:
    """The exact prompt of one model call, with a compact form for display.

    Attributes:
        text: the exact string that is tokenized (``len(text)`` characters).
        num_tiles: tiles per image block, in the order the blocks appear in ``text`` (what the
            card's ``chat`` takes as ``num_patches_list``).
        tokens_per_tile: ``<IMG_CONTEXT>`` tokens per tile (256 for InternVL2).
    """

    text: str
    num_tiles: tuple[int, ...] = ()
    tokens_per_tile: int = TOKENS_PER_TILE

    @property
    def num_patches_list(self) -> tuple[int, ...]:
        """Deprecated name of :attr:`num_tiles` (tiles per image block)."""
        warnings.warn(
            "Prompt.num_patches_list is deprecated; use Prompt.num_tiles (the same tiles per "
            "image block).",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.num_tiles

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
        """Number of ``<IMG_CONTEXT>`` tokens (``tokens_per_tile * sum(num_tiles)``)."""
        return self.tokens_per_tile * sum(self.num_tiles)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Prompt({self.chars} chars, images={list(self.num_tiles)}):\n{self.compact}"

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
    messages: Sequence[tuple[str, str | None]],
    *,
    system_message: str | None = None,
    template: str | Template | None = None,
) -> str:
    """Render ``(role, text)`` messages with a conversation template (default Hermes-2).

    ``role`` is ``"user"`` or ``"assistant"``; a ``None`` text renders only the role header
    (the open assistant turn the model completes). ``system_message=None`` uses the
    template's default. A Jinja chat template gets the system message as a system message
    only when one is given (its own default applies otherwise).
    """
    tpl = get_template(template)
    for role, _ in messages:
        if role not in ROLES:
            raise ValueError(f"Unknown role {role!r}; the {tpl.name} template knows {list(ROLES)}.")
    if tpl.chat_template is not None:
        return _render_jinja(tpl, messages, system_message)
    system = tpl.system_message if system_message is None else system_message
    user, assistant = tpl.roles
    headers = {"user": user, "assistant": assistant}
    out = [tpl.system_template.format(system_message=system) + tpl.sep]
    for role, text in messages:
        out.append(headers[role] if text is None else f"{headers[role]}{text}{tpl.sep}")
    return "".join(out)


def _render_jinja(
    tpl: Template, messages: Sequence[tuple[str, str | None]], system_message: str | None
) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(f"The checkpoint's chat template refused the messages: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    chat = [{"role": "system", "content": system_message}] if system_message else []
    open_turn = bool(messages) and messages[-1] == ("assistant", None)
    body = messages[:-1] if open_turn else messages
    chat += [{"role": role, "content": text or ""} for role, text in body]
    return env.from_string(tpl.chat_template).render(messages=chat, add_generation_prompt=open_turn)


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


def video_prefix(num_frames: int) -> str:
    """The card's video prefix: ``Frame1: <image>\\nFrame2: <image>\\n…`` (one per frame)."""
    return "".join(f"Frame{i + 1}: {IMAGE_PLACEHOLDER}\n" for i in range(int(num_frames)))


def place_images(text: str, num_images: int, *, first_index: int = 1, video: bool = False) -> str:
    """Where the ``<image>`` placeholders of ``num_images`` new images go in ``text``.

    The one rule every prompt follows (the model card's forms): ``text`` that already holds
    ``<image>`` is left as it is (the caller placed them), except for video, whose frames are
    always labelled; video frames come first as ``Frame{i}: <image>\\n``; one image first
    in a conversation is ``<image>\\n{text}``; otherwise ``Image-k: <image>\\n`` labels,
    numbered from ``first_index`` (images earlier in a conversation keep their numbers).
    """
    if video:
        if IMAGE_PLACEHOLDER in text:
            raise ValueError(
                "A question about a video must not hold '<image>' itself; the frames are "
                "placed as 'Frame1: <image>\\n…' before it. Remove '<image>' from the question."
            )
        return video_prefix(num_images) + text
    if num_images == 0 or IMAGE_PLACEHOLDER in text:
        return text
    if num_images == 1 and first_index == 1:
        return f"{IMAGE_PLACEHOLDER}\n{text}"
    labels = "".join(f"Image-{first_index + i}: {IMAGE_PLACEHOLDER}\n" for i in range(num_images))
    return labels + text


def label_images(text: str, num_images: int) -> str:
    """The card's way to place images in a question that has no ``<image>`` of its own.

    One image: ``<image>\\n{text}``; several: ``Image-1: <image>\\nImage-2: <image>\\n…{text}``;
    none, or ``text`` already holding ``<image>``: ``text`` unchanged (:func:`place_images`).
    """
    return place_images(text, num_images)


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


def build_prompt(
    history: Sequence[tuple[str, str]],
    question: str,
    num_tiles: Sequence[int] = (),
    *,
    template: str | Template | None = None,
    system_message: str | None = None,
    tokens_per_tile: int = TOKENS_PER_TILE,
) -> Prompt:
    """The prompt of a conversation: ``history`` pairs, then ``question`` and an open answer.

    The questions already hold their ``<image>`` placeholders (:func:`place_images`); the
    ``num_tiles`` entries (tiles per image) fill them in order across the whole conversation.
    """
    messages: list[tuple[str, str | None]] = []
    for old_q, old_a in history:
        messages += [("user", old_q), ("assistant", old_a)]
    messages += [("user", question), ("assistant", None)]
    text = render_template(messages, system_message=system_message, template=template)
    patches = [int(n) for n in num_tiles]
    text = expand_images(text, patches, tokens_per_tile=tokens_per_tile)
    return Prompt(text, tuple(patches), tokens_per_tile)


def chat_query(
    question: str,
    *,
    history: History | None = None,
    num_patches_list: Sequence[int] = (),
    system_message: str | None = None,
    tokens_per_tile: int = TOKENS_PER_TILE,
    template: str | Template | None = None,
) -> Prompt:
    """The prompt the card's ``chat()`` builds for ``question`` after ``history``.

    ``num_patches_list`` empty means no pixels. On the first turn (``history is None``) with
    pixels, ``<image>\\n`` is prepended unless ``question`` holds ``<image>`` itself.
    """
    if not isinstance(question, str):
        raise TypeError(f"question must be a str, got {type(question).__name__}.")
    if history is None and num_patches_list and IMAGE_PLACEHOLDER not in question:
        question = place_images(question, 1)
    return build_prompt(
        check_history(history),
        question,
        num_patches_list,
        template=template,
        system_message=system_message,
        tokens_per_tile=tokens_per_tile,
    )


def render_prompt(
    question: str,
    *,
    history: History | None = None,
    num_patches_list: Sequence[int] | None = None,
    pixel_values: Any = None,
    system_message: str | None = None,
    tokens_per_tile: int = TOKENS_PER_TILE,
    template: str | Template | None = None,
) -> Prompt:
    """The exact prompt ``VLModel.chat`` (and the card's ``chat()``) builds, for inspection.

    Give either ``num_patches_list`` (tiles per image) or ``pixel_values`` (anything with a
    ``shape[0]`` = number of tiles, all one image block, as the card's default), or neither for
    text only. ``history`` is a list of ``(question, answer)`` pairs as ``chat`` returns it.
    ``template`` names any of :data:`TEMPLATES` (default ``"Hermes-2"``, InternVL2-1B's);
    ``VLModel.chat`` uses the model's own.

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
        template=template,
    )
