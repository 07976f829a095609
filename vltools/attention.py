"""Attention maps: where the language model looked in the image while it answered.

Covers the "Attention maps" issue. :func:`capture` is a context manager around a generation or
a teacher-forced pass over a given answer; it records, for each generated token and each
selected language-model layer, the attention of the query that *produced* that token, per
head, on each image token plus the total on every other position, and optionally the
vision tower's CLS attention over the 32 x 32 patches of every tile. The result is an
:class:`AttentionMaps`, which aggregates (tokens, word spans, layers, heads, sinks) and lays
the image tokens back onto the ORIGINAL image through the :class:`~vltools.tiling.TileGrid`.
This module is the recording side (:func:`capture`, :class:`AttentionCapture`, the hooks);
the maps and their geometry live in :mod:`vltools.attention_maps` and are re-exported here.

Geometry follows the format notes (``docs/FORMAT.md``), section 1:
after pixel shuffle (v2) each tile's 256 tokens are a 16 x 16 grid in row-major order, tiles
come in ``pixel_values`` order (grid tiles row-major, then the thumbnail), and the images of a
prompt take their ``<IMG_CONTEXT>`` runs in prompt order.

How the capture stays small: the language model normally runs SDPA, which returns no weights.
Only inside the context its text config is switched to a registered implementation
(:data:`CAPTURE_ATTENTION`; restored afterwards, also on error): SDPA computes the layer's
output as usual, and :func:`scored_rows` computes scores and softmax in float32 for just the
query rows the capture keeps (the last row of each decoding step; the answer rows of a
teacher-forced pass), so no ``[heads, q, keys]`` matrix of the prompt is formed. A forward
hook on each selected ``self_attn`` then keeps of each row only what :class:`AttentionMaps`
needs, :func:`image_columns`: the image-token columns and the total on everything else,
``[heads, image tokens + 1]`` per layer and token whatever the prompt's length, stored as
float32 numpy (or float16, ``store_dtype``). The vision tower keeps SDPA: hooks on its
``q_norm``/``k_norm`` reuse the queries and keys the layer computes anyway and form the CLS
row's softmax themselves (one ``[heads, 1, 1025]`` product per tile).

Kept rows are written in place into stores allocated once, before the layers they come from
run: one ``[tiles, layers, heads, 32, 32]`` array per vision-tower pass, one ``[n, layers,
heads, image tokens + 1]`` array per language-model forward. Arrays allocated layer by layer
instead would sit in the holes the layers' large transient tensors leave in glibc's heap, so
that each next transient no longer fits and the heap grows (issue 14: +28 MiB per vision layer).

.. warning:: **Attention is not an explanation.** An attention weight says how much one
   position's value vector was mixed into one query at one layer and head; it does not say the
   answer *depends* on that region (values differ in size, later layers re-mix everything,
   residual paths bypass attention). Heavily attended "sink" tokens collect attention without
   carrying content. Read these maps as a hint of where information could have flowed, and
   test claims with interventions (masking or editing the region, comparing answers).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vltools.attention_maps import (
    AttentionMaps,
    ImageMap,
    ImageSlot,
    VisionAttention,
    pixel_map,
    stitch_tiles,
    token_cell,
)
from vltools.constants import TOKENS_PER_TILE

if TYPE_CHECKING:  # pragma: no cover
    from vltools.models import VLModel

__all__ = [
    "AttentionCapture",
    "AttentionMaps",
    "ImageMap",
    "ImageSlot",
    "VisionAttention",
    "CAPTURE_ATTENTION",
    "STORE_DTYPES",
    "capture",
    "eager_language_model",
    "image_columns",
    "scored_rows",
    "scoring_language_model",
    "pixel_map",
    "stitch_tiles",
    "token_cell",
]


# --- capture --------------------------------------------------------------------------------


@contextlib.contextmanager
def eager_language_model(model: Any) -> Iterator[None]:
    """Switch the language model of ``model`` (a VLModel or native model) to eager attention.

    Eager attention returns its weights (SDPA does not). The previous implementation is
    restored on exit, also when the body raises. The vision tower is left as it is.
    """
    native = model.model if hasattr(model, "tokenizer") else model  # VLModel or native
    configs = [native.config.text_config, native.model.language_model.config]
    saved = [(cfg, cfg._attn_implementation_internal) for cfg in configs]
    try:
        for cfg in configs:
            cfg._attn_implementation_internal = "eager"
        yield
    finally:
        for cfg, value in saved:
            cfg._attn_implementation_internal = value


STORE_DTYPES = ("float32", "float16")  # how capture() may store the kept weights
CAPTURE_ATTENTION = "vltools_capture"  # the attention implementation used inside capture()

# Which query rows the running pass wants scored: a function of (query length) -> slice, set by
# the capture before each forward; None scores nothing.
_ROWS: contextvars.ContextVar[Any] = contextvars.ContextVar("vltools_capture_rows", default=None)


def scored_rows(
    module: Any,
    query: Any,
    key: Any,
    attention_mask: Any,
    scaling: float,
    rows: slice,
) -> Any:
    """Softmax attention rows ``[batch, heads, n, keys]`` in float32 for the query ``rows``.

    ``query`` ``[b, heads, q, d]`` and ``key`` ``[b, kv_heads, keys, d]`` as the attention
    layer holds them (after the rotary embedding, the cache already appended); scores and
    softmax are computed in float32 whatever the model's dtype, for the selected rows only, so
    no ``[heads, q, keys]`` matrix of the whole prompt is ever formed, and the keys are not
    repeated per head (each group of query heads meets its shared key head in one product).
    Causal: query ``i`` of ``q`` sees keys ``0 .. keys - q + i``; a boolean or additive
    ``attention_mask`` is applied on top.
    """
    torch = _torch()
    b, heads, q_len, d = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    q = query[:, :, rows].float()  # [b, heads, n, d]
    n = q.shape[2]
    q = q.reshape(b, kv_heads, groups * n, d)  # head kv * groups + g shares key head kv
    scores = torch.matmul(q, key.float().transpose(2, 3)) * scaling  # [b, kv, groups * n, keys]
    scores = scores.reshape(b, heads, n, k_len)  # [b, heads, n, keys], float32
    index = torch.arange(q_len, device=query.device)[rows]  # the rows' query indices
    visible = torch.arange(k_len, device=query.device)[None, :] <= (k_len - q_len + index)[:, None]
    scores = scores.masked_fill(~visible, float("-inf"))  # [n, keys] broadcast
    if attention_mask is not None:
        mask = attention_mask[:, :, rows, :k_len]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    return torch.softmax(scores, dim=-1)


def image_columns(rows: Any, positions: Any) -> Any:
    """``[..., image tokens + 1]``: attention ``rows`` ``[..., keys]`` reduced to what maps need.

    The columns of the image-token ``positions`` (a ``[image tokens]`` index tensor, in prompt
    order), then the total on every other position. Sums are kept: each output row sums to
    what its input row did (1 for a softmax row).
    """
    torch = _torch()
    image = rows.index_select(-1, positions)  # [..., image tokens]
    others = torch.ones(rows.shape[-1], dtype=torch.bool, device=rows.device)
    others[positions] = False
    rest = (rows * others).sum(dim=-1, keepdim=True)  # [..., 1]
    return torch.cat([image, rest], dim=-1)


def _capture_attention_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """SDPA for the layer's output, plus :func:`scored_rows` for the rows a capture wants."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    out, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, **kwargs
    )
    want = _ROWS.get()
    if want is None:
        return out, None
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return out, scored_rows(module, query, key, attention_mask, scale, want(query.shape[2]))


@functools.cache
def _register_capture_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CAPTURE_ATTENTION, _capture_attention_forward)
    AttentionMaskInterface.register(CAPTURE_ATTENTION, sdpa_mask)


@contextlib.contextmanager
def scoring_language_model(model: Any) -> Iterator[None]:
    """Switch the language model to SDPA plus float32 scoring of the rows a capture asks for.

    Like :func:`eager_language_model`, restored on exit (also on error); unlike eager
    attention it never forms the ``[heads, seq, seq]`` matrix of the prompt.
    """
    _register_capture_attention()
    native = model.model if hasattr(model, "tokenizer") else model  # VLModel or native
    configs = [native.config.text_config, native.model.language_model.config]
    saved = [(cfg, cfg._attn_implementation_internal) for cfg in configs]
    try:
        for cfg in configs:
            cfg._attn_implementation_internal = CAPTURE_ATTENTION
        yield
    finally:
        for cfg, value in saved:
            cfg._attn_implementation_internal = value


def _image_entries(images: Any) -> list[tuple[str, Any, Any, Any]]:
    """``(label, grid, original PIL image, pixel_values)`` per image or frame."""
    if images is None:
        return []
    if hasattr(images, "tiled") and hasattr(images, "prompt_prefix"):  # a VideoClip
        return [
            (f"Frame{i + 1}", t.grid, t.image, t.pixel_values) for i, t in enumerate(images.tiled)
        ]
    if hasattr(images, "grid") and hasattr(images, "pixel_values"):  # one TiledImage
        return [("Image-1", images.grid, images.image, images.pixel_values)]
    if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        out = []
        for i, item in enumerate(images):
            if not (hasattr(item, "grid") and hasattr(item, "pixel_values")):
                raise TypeError(
                    f"images[{i}] is a {type(item).__name__}; expected a TiledImage from "
                    "vltools.load_image (or pass one VideoClip)."
                )
            out.append((f"Image-{i + 1}", item.grid, item.image, item.pixel_values))
        return out
    raise TypeError(
        f"images must be a TiledImage, a sequence of TiledImage, a VideoClip or None; got "
        f"{type(images).__name__}. Load pictures with vltools.load_image and videos with "
        "vltools.load_video."
    )


def _slots(input_ids: Any, image_token_id: int, entries: list) -> tuple[ImageSlot, ...]:
    """Match the prompt's ``<IMG_CONTEXT>`` runs to the given images, in order."""
    ids = np.asarray(input_ids).reshape(-1)
    pos = np.flatnonzero(ids == image_token_id)
    runs = np.split(pos, np.flatnonzero(np.diff(pos) != 1) + 1) if pos.size else []
    if not entries:
        if pos.size:
            raise ValueError(
                f"The prompt holds {len(runs)} image block(s) ({pos.size} image tokens) but "
                "capture() was given no images; pass images=... so maps can be placed."
            )
        return ()
    if len(runs) != len(entries):
        raise ValueError(
            f"The prompt holds {len(runs)} image block(s) but capture() was given "
            f"{len(entries)} image(s) ({', '.join(e[0] for e in entries)}); give the same "
            "images, in the same order, as the prompt."
        )
    slots, first_tile = [], 0
    for i, (run, (label, grid, image, _)) in enumerate(zip(runs, entries, strict=True)):
        if len(run) != grid.num_image_tokens:
            raise ValueError(
                f"Image block {i + 1} of the prompt has {len(run)} tokens but {label} has "
                f"{grid.num_tiles} tiles = {grid.num_image_tokens} tokens; the prompt was built "
                "for other images or another max_num."
            )
        slots.append(ImageSlot(i, label, grid, run.astype(np.int64), first_tile, image))
        first_tile += grid.num_tiles
    return tuple(slots)


class _Pass:
    """Buffers of one generation or teacher-forced pass."""

    def __init__(self, mode: str, num_layers: int) -> None:
        self.mode = mode
        self.num_layers = num_layers
        self.prompt_ids: np.ndarray | None = None
        self.answer_length = 0  # teacher mode: number of answer tokens appended to the prompt
        # one store per forward, allocated before the forward's layers run (so the kept rows
        # never sit between the layers' transient tensors in the heap): [n, layers, heads,
        # image tokens + 1], filled layer by layer; filled[i] counts the layers written
        self.blocks: list[np.ndarray] = []
        self.filled: list[int] = []
        self.generated: np.ndarray | None = None
        self._columns: Any = None  # image-token positions of the prompt, a torch index

    def columns(self, image_token_id: int, device: Any) -> Any:
        """The prompt's image-token positions as a ``[image tokens]`` index on ``device``."""
        if self._columns is None or self._columns.device != device:
            torch = _torch()
            pos = np.flatnonzero(np.asarray(self.prompt_ids).reshape(-1) == image_token_id)
            self._columns = torch.as_tensor(pos, dtype=torch.long, device=device)
        return self._columns


class AttentionCapture:
    """The object :func:`capture` yields: runs passes and turns what they recorded into maps.

    Any ``model.model.generate(...)`` inside the context (for example through ``Chat`` or
    ``VLModel.chat``) is recorded; :meth:`generate` and :meth:`teacher_force` build the prompt
    themselves. After a pass, :attr:`maps` is its :class:`AttentionMaps`.
    """

    def __init__(
        self,
        model: VLModel,
        images: Any,
        *,
        layers: Sequence[int],
        vision_layers: Sequence[int],
        store_dtype: str = "float32",
    ) -> None:
        self.model = model
        self.store_dtype = np.dtype(store_dtype)
        self.entries = _image_entries(images)
        self._images = images
        self.layers = tuple(layers)
        self.vision_layers = tuple(vision_layers)
        self._pass: _Pass | None = None
        self._results: list[AttentionMaps] = []
        # only calls made by the thread that opened the block are recorded
        self._thread = threading.get_ident()
        # the latest vision-tower pass inside the block: [tiles, vision layers, heads, 32, 32],
        # allocated when the pass reaches its first chosen layer; _vision_filled counts layers
        self._vision: np.ndarray | None = None
        self._vision_filled = 0

    # results

    @property
    def maps(self) -> AttentionMaps:
        """The :class:`AttentionMaps` of the latest pass."""
        if not self._results:
            raise RuntimeError(
                "Nothing was captured yet: run a generation (cap.generate(...), Chat, or "
                "model.model.generate) or cap.teacher_force(...) inside the capture block."
            )
        return self._results[-1]

    @property
    def results(self) -> tuple[AttentionMaps, ...]:
        """Every pass of this capture, in order."""
        return tuple(self._results)

    # prompt building

    def prompt(self, question: str) -> str:
        """The prompt for ``question`` with this capture's images, in the model's template."""
        from vltools.prompts import build_prompt, place_images

        if "<image>" not in question:  # else the question placed its images itself
            video = hasattr(self._images, "prompt_prefix")
            question = place_images(question, len(self.entries), video=video)
        tpt = int(getattr(self.model, "tokens_per_tile", TOKENS_PER_TILE))
        patches = [int(e[1].num_tiles) for e in self.entries]
        return build_prompt(
            [],
            question,
            patches,
            template=getattr(self.model, "prompt_template", None),
            system_message=getattr(self.model, "system_message", None),
            tokens_per_tile=tpt,
        ).text

    def _pixel_values(self) -> Any:
        if not self.entries:
            return None
        torch = _torch()
        pv = torch.cat([e[3] for e in self.entries], dim=0)  # [tiles, 3, 448, 448]
        return pv.to(device=self.model.device, dtype=self.model.dtype)

    def _pixel_kwargs(self) -> dict[str, Any]:
        """``pixel_values`` for the model, or nothing for a text-only capture (transformers
        tries to encode an explicit ``pixel_values=None``)."""
        pv = self._pixel_values()
        return {} if pv is None else {"pixel_values": pv}

    def _encode(self, text: str) -> Any:
        enc = self.model.tokenizer(text, return_tensors="pt")  # as the card: its own BOS, if any
        return enc["input_ids"].to(self.model.device), enc["attention_mask"].to(self.model.device)

    # passes

    def generate(self, question: str, *, max_new_tokens: int = 16, **generate_kwargs: Any) -> str:
        """Answer ``question`` about the images (greedy unless told otherwise); returns text.

        Generates as ``VLModel.chat`` does: from embeddings alone, stopping on the template's
        stop token, options checked before the vision pass.
        """
        from vltools.generation import check_generation_options, decode_answer, generate_ids

        options = {"do_sample": False, "max_new_tokens": max_new_tokens, **generate_kwargs}
        options = check_generation_options(options)
        ids = generate_ids(self.model, self.prompt(question), self._pixel_values(), options)
        return decode_answer(self.model, ids)

    def teacher_force(self, question: str, answer: str | Sequence[int]) -> AttentionMaps:
        """One forward pass over the prompt with ``answer`` appended; returns its maps.

        ``answer``: text (tokenized as is, no end token added) or token ids.
        """
        torch = _torch()
        prompt_ids, _ = self._encode(self.prompt(question))
        if isinstance(answer, str):
            tok = self.model.tokenizer
            answer_ids = tok(answer, return_tensors="pt", add_special_tokens=False)["input_ids"]
        else:
            answer_ids = torch.as_tensor([int(i) for i in answer], dtype=torch.long)[None]
        answer_ids = answer_ids.to(prompt_ids.device)  # [1, answer]
        if answer_ids.shape[1] == 0:
            raise ValueError("answer is empty; give the text whose tokens should be scored.")
        ids = torch.cat([prompt_ids, answer_ids], dim=1)  # [1, prompt + answer]
        self._pass = _Pass("teacher", len(self.layers))
        self._pass.prompt_ids = prompt_ids[0].cpu().numpy()
        self._pass.answer_length = int(answer_ids.shape[1])
        try:
            with torch.no_grad():
                self.model.model(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    use_cache=False,
                    logits_to_keep=1,
                    **self._pixel_kwargs(),
                )
            self._pass.generated = answer_ids[0].cpu().numpy()
            self._finish()
        finally:
            self._pass = None
        return self.maps

    # hooks

    def _mine(self) -> bool:
        """Whether the running call belongs to this capture (made by the thread that opened it)."""
        return threading.get_ident() == self._thread

    def _wrap_generate(self, original: Any) -> Any:
        @functools.wraps(original)
        def generate(*args: Any, **kwargs: Any) -> Any:
            if not self._mine():  # another thread's generation: not ours to record
                return original(*args, **kwargs)
            self._pass = _Pass("generate", len(self.layers))
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:  # vltools generates from inputs_embeds alone; it names the prompt
                from vltools.generation import prompt_ids_in_flight

                ids = prompt_ids_in_flight()
            if ids is not None and ids.ndim == 2 and ids.shape[0] == 1:
                self._pass.prompt_ids = ids[0].detach().cpu().numpy()
            try:
                out = original(*args, **kwargs)
                seq = out.sequences if hasattr(out, "sequences") else out
                seq = seq.detach().cpu().numpy()
                prompt = self._pass.prompt_ids
                if (
                    prompt is not None
                    and seq.shape[1] >= len(prompt)
                    and np.array_equal(seq[0, : len(prompt)], prompt)
                ):
                    seq = seq[:, len(prompt) :]  # native generate returns prompt + new tokens
                self._pass.generated = seq[0]
                self._finish()
                return out
            finally:
                self._pass = None

        return generate

    def _before_forward(self, module: Any, args: Any, kwargs: dict) -> None:
        p = self._pass
        if p is None or not self._mine():
            _ROWS.set(None)  # outside a pass, or another thread's forward: score nothing
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            if p.prompt_ids is None:
                raise ValueError(
                    "capture() needs input_ids to locate the image tokens, but the model was "
                    "called with inputs_embeds only. Pass input_ids (and pixel_values)."
                )
            _ROWS.set(self._rows_now)  # generating from embeddings: the prompt is known
            embeds = kwargs.get("inputs_embeds")
            self._new_block(None if embeds is None else int(embeds.shape[1]))
            return
        if ids.shape[0] != 1:
            raise ValueError(
                f"capture() records one sequence at a time, got a batch of {ids.shape[0]}. "
                "Run the prompts one by one inside the capture block."
            )
        if p.prompt_ids is None:
            p.prompt_ids = ids[0].detach().cpu().numpy()
        _ROWS.set(self._rows_now)
        self._new_block(int(ids.shape[1]))

    def _new_block(self, q_len: int | None) -> None:
        """Allocate this forward's store ``[n, layers, heads, image tokens + 1]`` up front."""
        p = self._pass
        if p is None or p.prompt_ids is None or p.num_layers == 0:
            return
        n = p.answer_length if p.mode == "teacher" else 1
        if q_len is not None:
            rows = self._rows_now(q_len)
            n = len(range(*rows.indices(q_len)))
        p.blocks.append(np.empty((n, p.num_layers, *self._row_shape()), dtype=self.store_dtype))
        p.filled.append(0)

    def _row_shape(self) -> tuple[int, int]:
        """``(heads, image tokens + 1)``: what each kept language-model row holds."""
        heads = int(self.model.model.config.text_config.num_attention_heads)
        width = int(np.count_nonzero(self._pass.prompt_ids == self.model.image_token_id)) + 1
        return heads, width

    def _rows_now(self, q_len: int) -> slice:
        p = self._pass
        if p is not None and p.mode == "teacher":
            start = len(p.prompt_ids) - 1
            return slice(start, start + p.answer_length)
        return slice(q_len - 1, q_len)  # the last query: the one that produces the next token

    def _attention_hook(self, slot: int) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            p = self._pass
            if p is None or not self._mine():
                return
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise RuntimeError(
                    "The language model's attention returned no weights during capture; its "
                    "attention implementation is not eager."
                )
            if weights.dtype != _torch().float32:  # eager weights: select the rows here
                weights = weights[:, :, self._rows_now(weights.shape[2]), :].float()
            if p.prompt_ids is None:
                return
            columns = p.columns(self.model.image_token_id, weights.device)
            kept = image_columns(weights[0], columns)  # [heads, n, image tokens + 1] float32
            kept = kept.detach().transpose(0, 1)  # [n, heads, image tokens + 1]
            if not p.blocks or p.blocks[-1][:, slot].shape != tuple(kept.shape):
                raise RuntimeError(
                    f"Layer {self.layers[slot]} scored {tuple(kept.shape)} rows, but the capture "
                    "prepared none or another shape for this forward; capture supports one "
                    "sequence per forward, called through the model (not a layer alone)."
                )
            # written in place (converted to the store's dtype on the way): no extra copy
            _torch().from_numpy(p.blocks[-1])[:, slot].copy_(kept)
            p.filled[-1] += 1

        return hook

    def _vision_hooks(self, layer: int, attention: Any) -> list[Any]:
        """Hooks that form the CLS softmax row from the queries and keys the layer computed.

        ``q_norm``/``k_norm`` (identities when the model has no QK norm) hand over the exact
        tensors the layer attends with, so nothing is recomputed; the CLS row's scores are one
        ``[heads, 1025]`` product per tile, in float32, written straight into the pass's store.
        """
        held: dict[str, Any] = {}
        first = layer == self.vision_layers[0]
        j = self.vision_layers.index(layer)

        def keep_q(module: Any, args: Any, output: Any) -> None:
            if self._mine():
                held["q"] = output  # [tiles, 1025, dim], normalized
                if first:  # a new vision-tower pass starts: its store, before any transient
                    n, s, _ = output.shape
                    side = math.isqrt(s - 1)
                    heads = int(attention.num_heads)
                    shape = (n, len(self.vision_layers), heads, side, side)
                    self._vision = np.empty(shape, dtype=self.store_dtype)
                    self._vision_filled = 0

        def keep_k(module: Any, args: Any, output: Any) -> None:
            if self._mine():
                held["k"] = output  # [tiles, 1025, dim], normalized

        def attend(module: Any, args: Any, output: Any) -> None:
            if "k" not in held or "q" not in held or not self._mine():
                return
            torch = _torch()
            q, k = held.pop("q"), held.pop("k")
            store = self._vision
            n, s, _ = k.shape
            heads, d = module.num_heads, module.head_dim
            if store is None or store.shape[0] != n or store.shape[3] ** 2 != s - 1:
                return  # a pass the store was not made for (the first layer was skipped)
            out = torch.from_numpy(store)[:, j].flatten(2)  # [tiles, heads, patches]
            with torch.no_grad():
                for t in range(n):  # one tile at a time: no full-size float32 copy of the keys
                    q_cls = q[t, :1].float().reshape(1, heads, d).transpose(0, 1)  # [heads, 1, d]
                    keys = k[t].float().reshape(s, heads, d).permute(1, 2, 0)  # [heads, d, s]
                    logits = torch.matmul(q_cls, keys) * module.scale  # [heads, 1, s] float32
                    out[t].copy_(torch.softmax(logits, dim=-1)[:, 0, 1:])  # CLS key left out
            self._vision_filled += 1

        return [
            attention.q_norm.register_forward_hook(keep_q),
            attention.k_norm.register_forward_hook(keep_k),
            attention.register_forward_hook(attend),
        ]

    # assembling the result

    def _vision_result(self, tiles: int) -> VisionAttention | None:
        return _vision_of(self, tiles)

    def _finish(self) -> None:
        p = self._pass
        if p is None or p.prompt_ids is None or p.generated is None:
            return
        gen = np.asarray(p.generated, dtype=np.int64)
        t = len(gen)
        L = len(p.prompt_ids)
        complete = [b for b, f in zip(p.blocks, p.filled, strict=True) if f == p.num_layers]
        if p.num_layers == 0:  # no language-model layer chosen
            weights = np.empty((t, 0, *self._row_shape()), dtype=self.store_dtype)
        elif p.mode == "teacher":
            if len(complete) != 1:
                raise RuntimeError(f"Expected one forward pass, recorded {len(complete)}.")
            weights = complete[0]  # [t, layers, heads, image tokens + 1], no copy
        elif len(complete) != t:
            raise RuntimeError(
                f"Recorded {len(complete)} decoding steps for {t} generated tokens; capture "
                "supports plain greedy or sampled decoding (no beams, no assistants)."
            )
        else:
            weights = np.concatenate(complete, axis=0)  # [t, layers, heads, image tokens + 1]
        p.blocks, p.filled = [], []
        tok = self.model.tokenizer
        pieces = tuple(tok.decode([int(i)]) for i in gen)
        text = tok.decode(gen.tolist())
        offsets = tuple(len(tok.decode(gen[:i].tolist())) for i in range(t)) + (len(text),)
        slots = _slots(p.prompt_ids, self.model.image_token_id, self.entries)
        vision = self._vision_result(sum(s.num_tiles for s in slots))
        self._results.append(
            AttentionMaps(
                weights=weights,
                layers=self.layers,
                token_ids=gen,
                tokens=pieces,
                text=text,
                offsets=offsets,
                prompt_length=L,
                images=slots,
                vision=vision,
                mode=p.mode,
            )
        )


def _vision_of(cap: AttentionCapture, tiles: int) -> VisionAttention | None:
    """The latest vision-tower pass of ``cap`` if it covered exactly this prompt's tiles."""
    if not cap.vision_layers or tiles == 0:  # nothing asked, or a text-only prompt
        return None
    if cap._vision is None or cap._vision_filled != len(cap.vision_layers):
        warnings.warn(
            "The vision tower did not run inside the capture block (cached image features?); "
            "the maps carry no vision-tower attention.",
            stacklevel=4,
        )
        return None
    cls = cap._vision  # [tiles, layers, heads, 32, 32]
    if cls.shape[0] != tiles:
        warnings.warn(
            f"The vision tower's latest pass saw {cls.shape[0]} tiles but the prompt has "
            f"{tiles}; the maps carry no vision-tower attention.",
            stacklevel=4,
        )
        return None
    return VisionAttention(cls, cap.vision_layers)


def _torch() -> Any:
    from vltools._optional import require

    return require("torch", purpose="Capturing attention")


def _check_indices(what: str, wanted: Any, count: int) -> tuple[int, ...]:
    if wanted is None:
        return tuple(range(count))
    items = [int(wanted)] if isinstance(wanted, (int, np.integer)) else [int(x) for x in wanted]
    bad = [x for x in items if not 0 <= x < count]
    if bad:
        raise ValueError(f"{what} {bad[0]} does not exist: the model has {what}s 0..{count - 1}.")
    return tuple(sorted(set(items)))


# ids of the native models a capture block is open on (captures do not nest)
_ACTIVE: set[int] = set()
_ACTIVE_LOCK = threading.Lock()


@contextlib.contextmanager
def capture(
    model: VLModel,
    images: Any = None,
    *,
    layers: Sequence[int] | int | None = None,
    vision: bool = True,
    vision_layers: Sequence[int] | int | None = None,
    store_dtype: str = "float32",
) -> Iterator[AttentionCapture]:
    """Record each generated token's attention to the image, per layer and head.

    ``model``: a :class:`~vltools.models.VLModel`. ``images``: what the prompt shows, in
    prompt order: a ``TiledImage``, a sequence of them, or a ``VideoClip`` (one map per
    frame). ``layers``: language-model layers to record (default all); ``vision``: also record
    the vision tower's CLS attention (``vision_layers``, default all). ``store_dtype``: how the
    kept weights are stored, ``"float32"`` (default) or ``"float16"`` (half the memory, about
    3 significant digits); scores and softmax are computed in float32 either way.

    Inside the block the language model runs SDPA plus float32 scoring of the query rows
    each generated token needs, and hooks keep of each row only the image-token columns and
    the total on everything else (``[image tokens + 1]`` values, whatever the prompt's length). Everything (attention implementation, hooks, ``generate``) is
    restored on exit, exactly as it was, also on error. Only calls made by the thread that
    opened the block are recorded (another thread's ``Chat`` on the same model runs
    unrecorded, though with eager attention while the block is open). Blocks do not nest on
    one model: a second ``capture`` of the same model while one is open raises
    ``RuntimeError``. ``images=None`` captures a text-only prompt. Example::

        with vltools.attention.capture(vlm, tiled) as cap:
            answer = cap.generate("What is in the picture?", max_new_tokens=16)
        maps = cap.maps                  # AttentionMaps
        vltools.viz.overlay(maps, tokens=maps.find("cat"))

    Attention is not an explanation (see the module docstring).
    """
    native = model.model
    text_cfg = native.config.text_config
    lm_layers = native.model.language_model.layers
    vt_layers = native.model.vision_tower.encoder.layer
    chosen = _check_indices("layer", layers, int(text_cfg.num_hidden_layers))
    chosen_vision = _check_indices("vision layer", vision_layers, len(vt_layers)) if vision else ()
    if store_dtype not in STORE_DTYPES:
        raise ValueError(
            f"store_dtype={store_dtype!r} is not supported; use one of {list(STORE_DTYPES)} "
            "(numpy has no bfloat16; the weights are computed in float32 either way)."
        )
    cap = AttentionCapture(
        model, images, layers=chosen, vision_layers=chosen_vision, store_dtype=store_dtype
    )
    with _ACTIVE_LOCK:
        if id(native) in _ACTIVE:
            raise RuntimeError(
                "capture() is already active on this model (a capture block inside another, "
                "or one open in another thread). Captures do not nest: finish the outer block "
                "first, or record several passes in one block (cap.results keeps them all)."
            )
        _ACTIVE.add(id(native))
    handles: list[Any] = []
    patched = False
    had_generate = "generate" in vars(native)  # restore exactly what was there
    old_generate = vars(native).get("generate")
    try:
        with scoring_language_model(native):
            handles.append(native.register_forward_pre_hook(cap._before_forward, with_kwargs=True))
            for slot, index in enumerate(chosen):
                attn = lm_layers[index].self_attn
                handles.append(attn.register_forward_hook(cap._attention_hook(slot)))
            for index in chosen_vision:
                handles += cap._vision_hooks(index, vt_layers[index].attention)
            native.generate = cap._wrap_generate(native.generate)
            patched = True
            yield cap
    finally:
        try:
            if patched:
                if had_generate:
                    native.generate = old_generate
                else:
                    vars(native).pop("generate", None)
            for handle in handles:
                handle.remove()
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE.discard(id(native))
    if cap._results:
        return
    warnings.warn(
        "capture() recorded nothing: no generation or teacher-forced pass ran inside the block.",
        stacklevel=3,
    )
