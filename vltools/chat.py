"""The notebook chat session with InternVL2: :class:`Chat`, its :class:`Reply` and :class:`Turn`.

Follows the model card's multi-turn ``chat()`` and section 2 of the format notes
(``docs/FORMAT.md``); the card's
calls themselves, :func:`model_chat`/:func:`model_batch_chat`, and the generation plumbing live
in :mod:`vltools.generation` and are re-exported here.

- :class:`Chat` is a notebook session. It keeps each image's projected vision features and the
  key/value cache of the conversation so far. Every turn re-renders the whole conversation as
  text and tokenizes it afresh (the card's semantics); the cache is reused for the longest
  common prefix of tokens (image tokens compared by which image they hold) and the rest is
  cropped, so a follow-up only processes its new tokens (:class:`~vltools.prefix_cache.PrefixCache`
  does the matching, cropping and extending). Greedy answers are the same with and without the
  cache.
- Stopping: :meth:`Chat.stop` (or ``break`` out of :meth:`Chat.stream`) ends generation after
  the current token; the partial answer is KEPT in the history and marked
  ``finish_reason="stopped"``. A KeyboardInterrupt ends it the same way, keeps the partial answer
  marked ``"interrupted"``, and is then re-raised. No thread outlives a call.
- Budget: before any compute :class:`Chat` counts the prompt (:meth:`Chat.budget`); when it plus
  ``max_new_tokens`` exceeds the context, :class:`ContextBudgetError` (from
  :mod:`vltools.generation`) says what each image and frame costs and what to lower.
- Display: an HTML transcript with image thumbnails, and a live output area for ``stream=True``.
"""

from __future__ import annotations

import base64
import copy
import html
import io
import itertools
import logging
import queue
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vltools._optional import require
from vltools.constants import IMAGE_PLACEHOLDER
from vltools.generation import (
    DEFAULT_GENERATION,
    Budget,
    ContextBudgetError,
    TokenStreamer,
    batch_prompts,
    check_generation_options,
    check_pixel_values,
    check_question,
    count_budget,
    cut_at_stop,
    decode_answer,
    embed,
    generate_from_embeds,
    image_features,
    make_generation_config,
    model_batch_chat,
    model_chat,
    model_context_length,
    raise_if_over,
    tokenize,
)
from vltools.prefix_cache import PrefixCache, match_keys
from vltools.prompts import (
    Prompt,
    build_prompt,
    expand_images,
    place_images,
    prompt_html,
    render_template,
)

if TYPE_CHECKING:  # pragma: no cover
    from vltools.models import VLModel

__all__ = [
    "model_chat",
    "model_batch_chat",
    "batch_prompts",
    "Chat",
    "Reply",
    "Turn",
    "Budget",
    "ContextBudgetError",
]

logger = logging.getLogger(__name__)

_uids = itertools.count(1)


def _torch() -> Any:
    return require("torch", purpose="Chatting with the model")


# ----------------------------------------------------------------------------- the session


@dataclass(frozen=True)
class Reply:
    """One answer of a :class:`Chat`.

    Attributes:
        text: the answer (decoded, cut at ``<|im_end|>``, stripped).
        prompt: the exact :class:`~vltools.prompts.Prompt` the model saw.
        prompt_tokens: tokens of the prompt; ``cached_tokens`` of them came from the cache.
        new_tokens: generated tokens (including the final ``<|im_end|>`` when there is one).
        ttft_s: seconds from the call to the first new token (vision, prefill, first step).
        total_s: seconds of the whole call.
        tokens_per_s: decoding speed, new tokens after the first per second after the first.
        finish_reason: ``"stop"`` (``<|im_end|>``), ``"length"`` (max_new_tokens),
            ``"stopped"`` (:meth:`Chat.stop`) or ``"interrupted"`` (KeyboardInterrupt).
    """

    text: str
    prompt: Prompt
    prompt_tokens: int
    cached_tokens: int
    new_tokens: int
    ttft_s: float
    total_s: float
    tokens_per_s: float
    finish_reason: str

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Reply({self.text!r}, {self._stats()})"

    def _stats(self) -> str:
        return (
            f"{self.prompt_tokens} prompt tokens ({self.cached_tokens} cached), "
            f"{self.new_tokens} new, first token {self.ttft_s:.2f} s, "
            f"{self.tokens_per_s:.1f} tok/s, {self.finish_reason}"
        )

    def _repr_html_(self) -> str:
        return (
            f"<div style='white-space:pre-wrap'>{html.escape(self.text)}</div>"
            f"<div style='color:#888;font-size:11px'>{html.escape(self._stats())}</div>"
        )


@dataclass(eq=False)
class _Visual:
    """One image block of the conversation (an image or a video frame) and its features."""

    label: str
    pixel_values: Any  # [tiles, 3, S, S]
    thumbnail: Any = None  # PIL image or None
    uid: int = field(default_factory=lambda: next(_uids))
    features: Any = None  # [tiles, 256, hidden], computed once

    @property
    def num_patches(self) -> int:
        return int(self.pixel_values.shape[0])


@dataclass(frozen=True)
class Turn:
    """One exchange of a :class:`Chat`.

    Attributes:
        question: the text as asked.
        user_text: the user message as rendered, with its ``<image>`` placeholders.
        answer: the stored answer (partial when ``finish_reason`` is stopped/interrupted).
        visuals: the images or frames added in this turn.
        reply: the :class:`Reply` with timings and the exact prompt.
    """

    question: str
    user_text: str
    answer: str
    visuals: tuple[_Visual, ...]
    reply: Reply

    @property
    def finish_reason(self) -> str:
        return self.reply.finish_reason

    @property
    def partial(self) -> bool:
        return self.reply.finish_reason in ("stopped", "interrupted")

    def __repr__(self) -> str:
        shown = []
        for visual in self.visuals:  # label and tile count, never the pixels or the features
            pixels = getattr(visual, "pixel_values", None)
            tiles = "" if pixels is None else f": {int(pixels.shape[0])} tiles"
            shown.append(f"{getattr(visual, 'label', type(visual).__name__)}{tiles}")
        question, answer = (
            t if len(t) <= 60 else t[:57] + "..." for t in (self.question, self.answer)
        )
        return (
            f"Turn({question!r}, answer={answer!r}, "
            f"visuals [{'; '.join(shown)}], "
            f"{self.reply.finish_reason})"
        )


@dataclass
class _Prepared:
    question: str
    user_text: str
    visuals: list[_Visual]
    prompt: Prompt
    input_ids: Any
    config: Any
    extra: dict


class Chat:
    """A notebook chat session with InternVL2 that reuses vision features and the KV cache.

    ``Chat(model, system_message=None, max_num=None, **generation)``: ``max_num`` tiles per image
    (default the model's 12); ``generation`` are generate options (default the card's greedy
    ``max_new_tokens=1024``). ``cache=False`` recomputes the whole conversation every turn.

    >>> chat = Chat(model, max_num=6, max_new_tokens=64)
    >>> chat.ask("Describe the image.", images=["photo.jpg"])
    >>> chat.ask("And the colours?")          # only the new tokens are processed
    """

    def __init__(
        self,
        model: VLModel,
        *,
        system_message: str | None = None,
        max_num: int | None = None,
        cache: bool = True,
        **generation: Any,
    ):
        self.model = model
        self.system_message = model.system_message if system_message is None else system_message
        if max_num is not None and (isinstance(max_num, bool) or not isinstance(max_num, int)):
            raise TypeError(
                f"max_num must be an integer number of tiles, got {max_num!r} "
                f"({type(max_num).__name__}); it is never rounded. Pass e.g. max_num=6."
            )
        self.max_num = int(model.max_num if max_num is None else max_num)
        if self.max_num < 1:
            raise ValueError(f"max_num={max_num}; expected a positive number of tiles.")
        self.generation = {**DEFAULT_GENERATION, **generation}
        # refuse bad options now, not at the first ask (a Chat always streams: no beams)
        check_generation_options(self.generation, streaming=True)
        make_generation_config(model, self.generation)
        self.use_cache = cache
        self._turns: list[Turn] = []
        self._prefix = PrefixCache(model.model.config.get_text_config())  # the key/value cache
        self._stop: threading.Event | None = None
        self._lock = threading.Lock()
        self._version = 0  # bumped whenever the history changes; a stream is tied to one
        self._active: Any = None  # weakref to the stream holding the session

    # -- state ---------------------------------------------------------------------------
    @property
    def history(self) -> tuple[Turn, ...]:
        """The turns so far (question, answer, images, reply)."""
        return tuple(self._turns)

    @property
    def last(self) -> Reply | None:
        """The last reply, or None."""
        return self._turns[-1].reply if self._turns else None

    @property
    def cached_tokens(self) -> int:
        """Tokens of the conversation held in the key/value cache."""
        return len(self._prefix)

    def as_card_history(self) -> list[tuple[str, str]]:
        """The history in the card's form, ``[(question with <image>, answer), ...]``."""
        return [(t.user_text, t.answer) for t in self._turns]

    def _check_idle(self, what: str) -> None:
        if self._lock.locked():
            raise RuntimeError(
                f"This Chat is generating; {what} would change the history under it. Call "
                "stop() first (or let the answer finish)."
            )

    def undo(self) -> Turn | None:
        """Remove the last turn (and its images); the cache is cut back to before it."""
        self._check_idle("undo()")
        if not self._turns:
            return None
        self._version += 1
        turn = self._turns.pop()
        keep = turn.reply.prompt_tokens - _user_turn_tokens(self, turn)
        self._prefix.crop(min(keep, len(self._prefix)))
        return turn

    def reset(self) -> None:
        """Forget every turn, image feature and cached key/value."""
        self._check_idle("reset()")
        self._version += 1
        self._turns.clear()
        self._prefix.clear()

    def fork(self) -> Chat:
        """An independent copy at this point: try two follow-ups from the same history."""
        other = copy.copy(self)
        other._turns = list(self._turns)
        other._prefix = self._prefix.copy()
        other._stop, other._lock, other._active = None, threading.Lock(), None
        other.generation = dict(self.generation)
        return other

    def stop(self) -> None:
        """End the generation in progress after the current token (partial answer kept).

        A :meth:`stream` left early (``break``) is closed here: its worker is ended and joined
        and the session is free again at once, without waiting for the stream to be
        garbage-collected. A stream being iterated in another thread ends at its next piece.
        """
        event = self._stop
        if event is not None:
            event.set()
        active = self._active() if self._active is not None else None
        if active is not None:
            active.close()

    # -- building a turn -----------------------------------------------------------------
    def _visuals_for(self, images: Any, video: Any) -> tuple[list[_Visual], bool]:
        """New visuals for this turn, and whether they are a video's frames."""
        if images is not None and video is not None:
            raise ValueError("Pass images or video in one turn, not both.")
        if video is not None:
            clip = video
            if isinstance(video, (str, Path)):
                from vltools.video import load_video

                clip = load_video(video)
            if not hasattr(clip, "num_tiles"):
                raise TypeError(f"video must be a path or a vltools VideoClip, got {video!r}.")
            pixels = check_pixel_values(self.model, clip.pixel_values)
            out, start = [], 0
            frames = list(getattr(clip, "frames", []) or [])
            for i, n in enumerate(clip.num_tiles):
                thumb = frames[i] if i < len(frames) else None
                out.append(_Visual(f"frame {i + 1}", pixels[start : start + n], thumb))
                start += n
            return out, True
        if images is None:
            return [], False
        if isinstance(images, (str, Path, bytes, bytearray, memoryview)) or not isinstance(
            images, Sequence
        ):
            images = [images]  # one image (raw bytes are one encoded file, not many images)
        out = []
        for i, src in enumerate(images):
            out.append(self._visual(src, i))
        return out, False

    def _visual(self, src: Any, index: int) -> _Visual:
        torch = _torch()
        if isinstance(src, torch.Tensor):
            return _Visual(f"image {index + 1}", check_pixel_values(self.model, src))
        if hasattr(src, "pixel_values") and hasattr(src, "grid"):
            tiled = src
        else:
            from vltools.images import load_image

            per_tile = self.model.tokens_per_tile
            tiled = load_image(
                src,
                max_num=self.max_num,
                max_tiles=max(1, model_context_length(self.model) // per_tile),
            )
        name = getattr(tiled, "source", None) or getattr(tiled, "name", None)
        if name is None and isinstance(src, (str, Path)):
            name = src
        name = Path(str(name)).name if name else None
        label = f"image {index + 1}" + (f" ({name})" if name else "")
        return _Visual(label, check_pixel_values(self.model, tiled.pixel_values), tiled.image)

    def _user_text(self, text: str, new: list[_Visual], video: bool) -> str:
        """The question with this turn's ``<image>`` placeholders (the one placement rule):
        frames first for a video, images numbered on from the images earlier in the chat
        (a video's frames are labelled ``Frame…``, not counted as images)."""
        before = sum(1 for t in self._turns for v in t.visuals if not v.label.startswith("frame"))
        return place_images(text, len(new), first_index=before + 1, video=video)

    def _prepare(self, text: str, images: Any, video: Any, generation: dict) -> _Prepared:
        check_question(text, name="text")
        options = check_generation_options({**self.generation, **generation}, streaming=True)
        config, extra = make_generation_config(self.model, options)
        new, is_video = self._visuals_for(images, video)
        user_text = self._user_text(text, new, is_video)
        if user_text.count(IMAGE_PLACEHOLDER) != len(new):
            raise ValueError(
                f"The question holds {user_text.count(IMAGE_PLACEHOLDER)} '<image>' "
                f"placeholder(s) but {len(new)} image(s) were given this turn; expected one "
                "'<image>' per image, or none to have them placed as the card does."
            )
        visuals = [v for t in self._turns for v in t.visuals] + new
        prompt = self._render([*self._turns], user_text, visuals)
        input_ids = tokenize(self.model, prompt.text)
        budget = self._budget_of(int(input_ids.shape[1]), config.max_new_tokens, visuals)
        raise_if_over(budget, has_frames=any(v.label.startswith("frame") for v in visuals))
        return _Prepared(text, user_text, new, prompt, input_ids, config, extra)

    def _render(self, turns: Sequence[Turn], user_text: str | None, visuals) -> Prompt:
        history = [(t.user_text, t.answer) for t in turns]
        patches = [v.num_patches for v in visuals]
        if user_text is not None:
            return build_prompt(
                history,
                user_text,
                patches,
                template=self.model.prompt_template,
                system_message=self.system_message,
                tokens_per_tile=self.model.tokens_per_tile,
            )
        # no planned question: the conversation so far, without an open answer
        messages: list[tuple[str, str | None]] = []
        for q, a in history:
            messages += [("user", q), ("assistant", a)]
        text = render_template(
            messages, system_message=self.system_message, template=self.model.prompt_template
        )
        text = expand_images(text, patches, tokens_per_tile=self.model.tokens_per_tile)
        return Prompt(text, tuple(patches), self.model.tokens_per_tile)

    def _budget_of(self, prompt_tokens: int, max_new: int, visuals) -> Budget:
        rows = [(v.label, v.num_patches) for v in visuals]
        return count_budget(
            prompt_tokens,
            max_new,
            model_context_length(self.model),
            rows,
            self.model.tokens_per_tile,
        )

    def budget(self, text: str | None = None, *, images: Any = None, video: Any = None) -> Budget:
        """Token usage of the conversation so far (plus a planned question, if given)."""
        visuals = [v for t in self._turns for v in t.visuals]
        max_new = int(self.generation.get("max_new_tokens") or DEFAULT_GENERATION["max_new_tokens"])
        if text is None:
            prompt = self._render(self._turns, None, visuals)
        else:
            new, is_video = self._visuals_for(images, video)
            visuals += new
            prompt = self._render(self._turns, self._user_text(text, new, is_video), visuals)
        n = int(tokenize(self.model, prompt.text).shape[1])
        return self._budget_of(n, max_new, visuals)

    # -- running a turn ------------------------------------------------------------------
    def _run(self, prep: _Prepared, on_text=None, stop: threading.Event | None = None) -> Reply:
        """Generate one answer in the calling thread and commit the turn."""
        torch = _torch()
        vlm = self.model
        start = time.perf_counter()
        visuals = [v for t in self._turns for v in t.visuals] + prep.visuals
        features = self._features(visuals)
        ids = prep.input_ids  # [1, L]
        keys = match_keys(
            ids[0].tolist(),
            [(v.uid, v.num_patches) for v in visuals],
            image_token_id=vlm.image_token_id,
            tokens_per_tile=vlm.tokens_per_tile,
        )
        if not self.use_cache:
            self._prefix.clear()
        kv = self._prefix.prepare(keys)  # cropped to the prefix it shares with this prompt
        cached = len(self._prefix)
        embeds = embed(vlm, ids, features)
        streamer = TokenStreamer(vlm, on_text)
        stop = stop or threading.Event()
        self._stop = stop
        interrupted = False
        try:
            new = generate_from_embeds(
                vlm,
                ids,
                embeds,
                torch.ones_like(ids),
                prep.config,
                prep.extra,
                cache=kv,
                streamer=streamer,
                stop_event=stop,
            )[0].tolist()
        except KeyboardInterrupt:
            interrupted = True
            new = list(streamer.ids)
            self._prefix.clear()  # half-written: drop it (features are kept)
        except BaseException:
            self._prefix.clear()
            raise
        finally:
            self._stop = None
        end = time.perf_counter()
        answer_ids = cut_at_stop(new, vlm.im_end_id)
        self._prefix.extend(keys + answer_ids)
        if not self.use_cache:
            self._prefix.clear()
        if interrupted:
            reason = "interrupted"
        elif answer_ids and answer_ids[-1] == vlm.im_end_id:
            reason = "stop"
        elif stop.is_set():
            reason = "stopped"
        else:
            reason = "length"
        first = streamer.first_time or end
        n_new = len(answer_ids)
        reply = Reply(
            text=decode_answer(vlm, answer_ids),
            prompt=prep.prompt,
            prompt_tokens=int(ids.shape[1]),
            cached_tokens=cached,
            new_tokens=n_new,
            ttft_s=first - start,
            total_s=end - start,
            tokens_per_s=(n_new - 1) / (end - first) if n_new > 1 and end > first else 0.0,
            finish_reason=reason,
        )
        self._turns.append(
            Turn(prep.question, prep.user_text, reply.text, tuple(prep.visuals), reply)
        )
        self._version += 1
        if interrupted:
            raise KeyboardInterrupt
        return reply

    def _features(self, visuals: Sequence[_Visual]) -> Any:
        """The projected features ``[tiles, 256, hidden]`` of ``visuals``, in order, or None;
        one vision pass for those not seen before (each image's features are kept on it)."""
        torch = _torch()
        missing = [v for v in visuals if v.features is None]
        if missing:
            feats = image_features(self.model, torch.cat([v.pixel_values for v in missing]))
            for v, f in zip(missing, feats.split([v.num_patches for v in missing]), strict=True):
                v.features = f
        return torch.cat([v.features for v in visuals]) if visuals else None

    def _begin(self) -> None:
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("This Chat is already generating; wait for it or call stop().")

    def ask(
        self,
        text: str,
        *,
        images: Any = None,
        video: Any = None,
        stream: bool = False,
        **generation: Any,
    ) -> Reply:
        """Ask ``text`` (with new ``images``: paths, PIL images, TiledImages, or a ``video``).

        Several images are labelled ``Image-1: <image>\\n…`` unless ``text`` places ``<image>``
        itself. ``stream=True`` updates one notebook output area as tokens arrive. ``generation``
        overrides this session's generate options for this turn.
        """
        self._begin()
        try:
            prep = self._prepare(text, images, video, generation)
            if not stream:
                return self._run(prep)
            live = _LiveOutput()
            try:
                reply = self._run(prep, on_text=live.add)
            except KeyboardInterrupt:
                live.finish(" [interrupted]")
                raise
            live.finish(" [stopped]" if reply.finish_reason == "stopped" else "", reply)
            return reply
        finally:
            self._lock.release()

    def stream(
        self, text: str, *, images: Any = None, video: Any = None, **generation: Any
    ) -> Iterator[str]:
        """Yield the answer in pieces as it is generated; the :class:`Reply` is then ``last``.

        Bad input raises here, at the call. Generation starts when iteration starts and runs in
        a worker thread that is always joined: leaving the loop early (``break``),
        :meth:`stop` or a KeyboardInterrupt end it after the current token, with the partial
        answer kept in the history (marked ``stopped`` or ``interrupted``); :meth:`stop` after
        a ``break`` also frees the session at once.

        The stream belongs to the history it was made from: if the history changes before it
        is consumed (an ``ask``, ``undo`` or ``reset`` in between), iterating it raises
        ``RuntimeError`` instead of storing an answer generated from a stale prompt.
        """
        prep = self._prepare(text, images, video, generation)
        return _StreamHandle(self, prep, self._version)

    def _stream(self, prep: _Prepared, version: int, handle: Any) -> Iterator[str]:
        if version != self._version:
            raise RuntimeError(
                "This stream was made before the chat's history changed (an ask, undo or reset "
                "since chat.stream() was called), so its prompt is stale; nothing was "
                "generated. Call chat.stream(...) again."
            )
        self._begin()
        pieces: queue.Queue = queue.Queue()
        stop = threading.Event()
        done = object()
        failure: list[BaseException] = []
        worker = None
        interrupted = False
        self._active = handle
        try:
            self._stop = stop

            def work() -> None:
                try:
                    self._run(prep, on_text=pieces.put, stop=stop)
                except BaseException as e:  # re-raised in the caller's thread
                    failure.append(e)
                finally:
                    pieces.put(done)

            worker = threading.Thread(target=work, name="vltools-chat-stream", daemon=True)
            worker.start()
            while True:
                try:
                    piece = pieces.get(timeout=0.05)
                except queue.Empty:
                    continue
                if piece is done:
                    break
                yield piece
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            stop.set()
            while worker is not None and worker.is_alive():
                worker.join(timeout=0.05)
            if interrupted and self._turns and self._turns[-1].reply.finish_reason == "stopped":
                last = self._turns[-1]
                reply = replace(last.reply, finish_reason="interrupted")
                self._turns[-1] = replace(last, reply=reply)
            if self._active is handle:
                self._active = None
            self._lock.release()
        if failure:
            raise failure[0]

    # -- display -------------------------------------------------------------------------
    def __repr__(self) -> str:
        lines = [f"Chat({len(self._turns)} turns, {self.cached_tokens} cached tokens)"]
        for t in self._turns:
            mark = f" [{t.finish_reason}]" if t.partial else ""
            imgs = f" [{len(t.visuals)} image(s)]" if t.visuals else ""
            lines += [f"User{imgs}: {t.question}", f"Assistant: {t.answer}{mark}"]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        parts = [
            "<div style='font-family:sans-serif;max-width:800px'>",
            f"<div style='color:#888;font-size:11px'>{len(self._turns)} turns, "
            f"{self.cached_tokens} tokens cached</div>",
        ]
        for t in self._turns:
            thumbs = "".join(_thumbnail_html(v) for v in t.visuals)
            mark = f" <span style='color:#dc2626'>[{t.finish_reason}]</span>" if t.partial else ""
            parts.append(
                "<div style='margin:6px 0;padding:6px;background:#eef2ff;border-radius:6px'>"
                f"<b>User</b> {thumbs}<div style='white-space:pre-wrap'>"
                f"{html.escape(t.question)}</div></div>"
                "<div style='margin:6px 0;padding:6px;background:#f3f4f6;border-radius:6px'>"
                f"<b>Assistant</b><div style='white-space:pre-wrap'>{html.escape(t.answer)}"
                f"{mark}</div><div style='color:#888;font-size:11px'>"
                f"{html.escape(t.reply._stats())}</div></div>"
            )
        parts.append("</div>")
        return "".join(parts)

    def prompt_html(self) -> str:
        """The last prompt, compact, as HTML."""
        return prompt_html(self.last.prompt.text) if self.last else ""


class _StreamHandle:
    """The iterator :meth:`Chat.stream` returns: the answer's pieces, closable from ``stop()``.

    It wraps the generator doing the work so that :meth:`Chat.stop` can close a stream that
    was left early (suspended in the caller's thread) at once, which ends and joins the worker
    and frees the session. A stream being iterated in another thread cannot be closed from
    here (Python forbids closing a running generator); the stop event ends it at its next piece.
    """

    def __init__(self, chat: Chat, prep: _Prepared, version: int) -> None:
        # the generator gets a weak reference only: a strong one would keep a stream left by
        # `break` alive (and the session locked) until the garbage collector finds the cycle
        self._gen = chat._stream(prep, version, weakref.ref(self))
        self._turn = threading.Lock()  # one of next() and close() at a time

    def __iter__(self) -> _StreamHandle:
        return self

    def __next__(self) -> str:
        with self._turn:
            return next(self._gen)

    def close(self) -> None:
        # busy: another thread is inside next(); the stop event ends that call instead
        if self._turn.acquire(blocking=False):
            try:
                self._gen.close()
            finally:
                self._turn.release()

    def __del__(self) -> None:
        self.close()


def _user_turn_tokens(chat: Chat, turn: Turn) -> int:
    """Tokens of ``turn``'s user message and the open assistant header, in its prompt."""
    vlm = chat.model
    patches = [v.num_patches for v in turn.visuals]
    tpl = vlm.prompt_template
    tail = render_template(
        [("user", turn.user_text), ("assistant", None)], system_message="", template=tpl
    )
    head = render_template([], system_message="", template=tpl)
    tail = expand_images(tail[len(head) :], patches, tokens_per_tile=vlm.tokens_per_tile)
    return int(tokenize(vlm, tail, special=False).shape[1])


def _thumbnail_html(visual: _Visual, size: int = 64) -> str:
    if visual.thumbnail is None:
        return (
            f"<span style='font-size:11px;color:#555'>[{html.escape(visual.label)}: "
            f"{visual.num_patches} tiles]</span> "
        )
    img = visual.thumbnail.copy()
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (
        f"<img src='data:image/png;base64,{data}' title='{html.escape(visual.label)}, "
        f"{visual.num_patches} tiles' style='height:{size}px;margin:2px;vertical-align:middle'/>"
    )


class _LiveOutput:
    """One notebook output area updated as text arrives (nothing outside IPython)."""

    def __init__(self) -> None:
        self.text = ""
        self.handle = None
        self.last_update = 0.0
        try:
            from IPython import get_ipython
            from IPython.display import HTML, display

            if get_ipython() is not None:
                self.HTML = HTML
                self.handle = display(HTML(self._html("…")), display_id=True)
        except ImportError:  # pragma: no cover - IPython comes with jupyter
            self.handle = None

    @staticmethod
    def _html(text: str, footer: str = "") -> str:
        return f"<div style='white-space:pre-wrap'>{html.escape(text)}</div>" + (
            f"<div style='color:#888;font-size:11px'>{html.escape(footer)}</div>" if footer else ""
        )

    def add(self, piece: str) -> None:
        self.text += piece
        now = time.perf_counter()
        if self.handle is not None and now - self.last_update > 0.05:
            self.handle.update(self.HTML(self._html(self.text + " ▌")))
            self.last_update = now

    def finish(self, mark: str = "", reply: Reply | None = None) -> None:
        if self.handle is not None:
            footer = reply._stats() if reply is not None else ""
            self.handle.update(self.HTML(self._html(self.text + mark, footer)))
