"""Converting an original InternVL2 checkpoint's weights into transformers' native model.

Follows sections 1 and 3 of the format notes (``docs/FORMAT.md``):

- reading and checking ``.safetensors`` headers (every dtype, shape and byte range) before
  anything large is allocated (:func:`read_weight_index`, :class:`TensorEntry`);
- mapping every original key onto the native model's tensors, the fused vision ``attn.qkv``
  split by rows (``docs/FORMAT.md``, section 3), checked as a :class:`ConversionPlan`; an InternLM2
  language model (InternVL2-2B/8B/26B) becomes transformers' native Llama: ``tok_embeddings``
  -> ``embed_tokens``, ``output`` -> ``lm_head``, ``attention_norm``/``ffn_norm`` ->
  ``input_layernorm``/``post_attention_layernorm``, ``feed_forward.w1/w3/w2`` ->
  ``mlp.gate/up/down_proj``, ``attention.wo`` -> ``o_proj``, and the fused ``attention.wqkv``,
  whose rows hold, per key/value head, its group of query heads then its key then its value,
  split into ``q/k/v_proj`` by row blocks; Phi-3 (InternVL2-4B) keys are native already;
- building the native model on the meta device and filling it tensor by tensor, one copy of
  the weights in all (copy-on-write views of the memory-mapped file where the dtype matches on
  the CPU, otherwise one cast per tensor): :func:`convert_original`. The transformers
  internals this needs are all in :mod:`vltools.model_building`, which also checks the
  computed buffers (rotary frequencies) after every load.

The configuration side (finding the checkpoint, ``config.json``, the native config) is in
:mod:`vltools.checkpoints`.
"""

from __future__ import annotations

import itertools
import json
import logging
import mmap
import re
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vltools._optional import require
from vltools.checkpoints import native_config_from_original
from vltools.model_building import empty_model, finish_model, set_parameter

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "ConversionPlan",
    "HeadLayout",
    "KeyMapping",
    "wqkv_blocks",
    "TensorEntry",
    "convert_original",
    "plan_conversion",
    "read_weight_index",
    "read_weights",
]

logger = logging.getLogger(__name__)

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
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path} is not a regular file (a FIFO, socket or device?); refused.")
    size = info.st_size
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
    if not isinstance(header, dict):
        raise ValueError(
            f"{path}: a safetensors header must be a JSON object of tensors, not "
            f"{type(header).__name__}. The file is damaged or not safetensors; download it again."
        )
    data_start = 8 + n
    entries: dict[str, TensorEntry] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        entries[key] = _header_entry(path, key, info, data_start, size)
    # byte ranges must not overlap: sorted by start, each begins where the previous ended or later
    ranges = sorted(
        ((k, e) for k, e in entries.items() if e.end > e.start), key=lambda item: item[1].start
    )
    for (k1, e1), (k2, e2) in itertools.pairwise(ranges):
        if e2.start < e1.end:
            raise ValueError(
                f"{path}: tensors {k1!r} (bytes {e1.start}-{e1.end}) and {k2!r} (bytes "
                f"{e2.start}-{e2.end}) overlap. The file is damaged or crafted; download it again."
            )
    return entries


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _header_entry(path: Path, key: str, info: Any, data_start: int, size: int) -> TensorEntry:
    """One header entry checked: dtype known, shape of non-negative ints, offsets in the data."""
    ok = (
        isinstance(info, dict)
        and info.get("dtype") in _ST_DTYPES
        and isinstance(info.get("shape"), list)
        and all(_is_int(d) and d >= 0 for d in info["shape"])
        and isinstance(info.get("data_offsets"), list)
        and len(info["data_offsets"]) == 2
        and all(_is_int(x) for x in info["data_offsets"])
    )
    if not ok:
        raise ValueError(
            f"{path}: tensor {key!r} has an unsupported header entry {info!r}; each entry needs "
            f"a dtype in {sorted(_ST_DTYPES)}, a shape of non-negative integers and two integer "
            "data_offsets. The file is damaged; download it again."
        )
    name, itemsize = _ST_DTYPES[info["dtype"]]
    shape = tuple(info["shape"])
    begin, end = info["data_offsets"]
    if begin < 0 or end < begin:
        raise ValueError(
            f"{path}: tensor {key!r} has data_offsets [{begin}, {end}]; offsets are counted from "
            "the end of the header and must satisfy 0 <= begin <= end (a negative one would read "
            "the header's own bytes). The file is damaged or crafted; download it again."
        )
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
    return TensorEntry(path, name, shape, data_start + begin, data_start + end)


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
        files = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else [None]
        bad = [f for f in files if not isinstance(f, str) or Path(f).name != f or f in ("", "..")]
        if bad:
            raise ValueError(
                f"{index}: weight_map must map tensor names to file names inside {folder}; "
                f"{bad[0]!r} is not one. The index is damaged or crafted; download it again."
            )
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


def read_weights(folder: Path, *, allow_pickle: bool = False) -> dict[str, Any]:
    """The checkpoint's tensors as :func:`convert_original` takes them.

    Safetensors: their checked headers (:func:`read_weight_index`, nothing read yet). Pickle
    weights only with ``allow_pickle=True`` and no safetensors beside them: the tensors
    themselves, loaded with ``weights_only=True``.
    """
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


# ---------------------------------------------------------------------------------------------
# Key mapping (``docs/FORMAT.md``, section 3)
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
    """One original tensor and where it goes: ``rows`` slices dim 0 (the fused qkv split);
    ``blocks``, when given, are several row ranges concatenated in order (InternLM2's
    ``wqkv``, whose query, key and value rows interleave per key/value head)."""

    source: str
    target: str
    rows: tuple[int, int] | None = None
    blocks: tuple[tuple[int, int], ...] | None = None

    @property
    def num_rows(self) -> int | None:
        """Rows taken from dim 0 of the source, or None for the whole tensor."""
        if self.blocks is not None:
            return sum(b - a for a, b in self.blocks)
        return None if self.rows is None else self.rows[1] - self.rows[0]


@dataclass(frozen=True)
class HeadLayout:
    """Attention heads of a language model, to split a fused ``wqkv`` (InternLM2)."""

    num_heads: int
    num_kv_heads: int
    head_dim: int


# InternLM2 -> Llama (inside language_model.model.layers.{i}.)
_INTERNLM2_LAYER_RENAMES = (
    ("attention.wo.", "self_attn.o_proj."),
    ("feed_forward.w1.", "mlp.gate_proj."),
    ("feed_forward.w3.", "mlp.up_proj."),
    ("feed_forward.w2.", "mlp.down_proj."),
    ("attention_norm.", "input_layernorm."),
    ("ffn_norm.", "post_attention_layernorm."),
)
_INTERNLM2_FIXED = {
    "language_model.model.tok_embeddings.weight": "model.language_model.embed_tokens.weight",
    "language_model.output.weight": "lm_head.weight",
}
_LLM_LAYER = re.compile(r"^language_model\.model\.layers\.(\d+)\.(.+)$")


def wqkv_blocks(heads: HeadLayout) -> dict[str, tuple[tuple[int, int], ...]]:
    """Row blocks of InternLM2's fused ``wqkv`` for ``q``, ``k`` and ``v``.

    The rows are ``[kv_heads, groups + 2, head_dim]``: for each key/value head, its
    ``groups = heads / kv_heads`` query heads, then its key head, then its value head.
    """
    groups = heads.num_heads // heads.num_kv_heads
    d = heads.head_dim
    per = (groups + 2) * d  # rows per key/value head
    return {
        "q": tuple((g * per, g * per + groups * d) for g in range(heads.num_kv_heads)),
        "k": tuple(
            (g * per + groups * d, g * per + (groups + 1) * d) for g in range(heads.num_kv_heads)
        ),
        "v": tuple((g * per + (groups + 1) * d, (g + 1) * per) for g in range(heads.num_kv_heads)),
    }


def _map_internlm2(key: str, shape: Sequence[int], heads: HeadLayout) -> list[KeyMapping] | None:
    if key in _INTERNLM2_FIXED:
        return [KeyMapping(key, _INTERNLM2_FIXED[key])]
    if key == "language_model.model.norm.weight":
        return [KeyMapping(key, "model.language_model.norm.weight")]
    m = _LLM_LAYER.match(key)
    if m is None:
        return None
    layer, rest = m.groups()
    prefix = f"model.language_model.layers.{layer}."
    if rest in ("attention.wqkv.weight", "attention.wqkv.bias"):
        expected = (heads.num_heads + 2 * heads.num_kv_heads) * heads.head_dim
        if not shape or shape[0] != expected or heads.num_heads % heads.num_kv_heads:
            return None
        kind = rest.rsplit(".", 1)[-1]
        return [
            KeyMapping(key, f"{prefix}self_attn.{name}_proj.{kind}", blocks=blocks)
            for name, blocks in wqkv_blocks(heads).items()
        ]
    for old, new in _INTERNLM2_LAYER_RENAMES:
        if rest.startswith(old):
            return [KeyMapping(key, prefix + new + rest.removeprefix(old))]
    return None


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


def _map_key(
    key: str, shape: Sequence[int], heads: HeadLayout | None = None
) -> list[KeyMapping] | None:
    if heads is not None and key.startswith("language_model."):
        return _map_internlm2(key, shape, heads)
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
    internlm2_heads: HeadLayout | None = None,
) -> ConversionPlan:
    """Map every original key onto the native model's tensors and check every shape.

    ``internlm2_heads`` is given for an InternLM2 language model (its keys become Llama's).

    Raises a ValueError naming ``source_name`` that lists keys it cannot place, native
    tensors left unfilled, and shape mismatches (at most a few of each).
    """
    mappings: list[KeyMapping] = []
    unknown: list[str] = []
    mismatched: list[str] = []
    for key in sorted(source_shapes):
        shape = tuple(source_shapes[key])
        mapped = _map_key(key, shape, internlm2_heads)
        if mapped is None or any(m.target not in target_shapes for m in mapped):
            unknown.append(key)
            continue
        for m in mapped:
            want = tuple(target_shapes[m.target])
            have = shape if m.num_rows is None else (m.num_rows, *shape[1:])
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
# Building and filling the model
# ---------------------------------------------------------------------------------------------


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
        if m.blocks is not None:  # interleaved rows: read the whole tensor, gather the blocks
            full = _read_entry(maps[entry.file], entry)  # [rows, ...]
            rows = torch.cat([full[a:b] for a, b in m.blocks])  # [sum of blocks, ...]
            set_parameter(model, m.target, rows.to(device=device, dtype=dtype, copy=True))
            continue
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
        set_parameter(model, m.target, tensor)


def _read_entry(buffer: Any, entry: TensorEntry):
    """A view of one whole tensor of a memory-mapped file."""
    torch = require("torch", purpose="Loading a model")
    count = _numel(entry.shape)
    view = torch.frombuffer(
        buffer, dtype=getattr(torch, entry.dtype), count=count, offset=entry.start
    )
    return view.view(entry.shape)


def _fill_from_tensors(model, plan, tensors, device, dtype) -> None:
    torch = require("torch", purpose="Loading a model")
    for m in plan.mappings:
        t = tensors[m.source]
        if m.blocks is not None:
            t = torch.cat([t[a:b] for a, b in m.blocks])
        elif m.rows:
            t = t[m.rows[0] : m.rows[1]]
        set_parameter(model, m.target, t.to(device=device, dtype=dtype).contiguous().clone())


def convert_original(
    folder: Path,
    config: dict[str, Any],
    entries: dict[str, Any],
    *,
    image_token_id: int,
    device: torch.device,
    dtype: torch.dtype,
    attn_implementation: str,
):
    """The native model, in eval mode, filled from an original checkpoint's weights.

    ``config`` is the original config.json (already checked), ``entries`` what
    :func:`read_weights` read from ``folder`` (safetensors headers, or the tensors of opted-in
    pickle weights), ``image_token_id`` the tokenizer's ``<IMG_CONTEXT>`` id. Every key and shape
    is planned against the model on the meta device before a single weight is read.
    """
    config_path = folder / "config.json"
    native_config = native_config_from_original(
        config, image_token_id=image_token_id, path=config_path
    )
    model = empty_model(native_config, dtype=dtype, attn_implementation=attn_implementation)
    target_shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    names = sorted({e.file.name for e in entries.values() if isinstance(e, TensorEntry)}) or sorted(
        p.name for p in folder.glob("*.bin")
    )
    heads = None
    if config["llm_config"]["model_type"] == "internlm2":
        text = native_config.text_config
        heads = HeadLayout(
            text.num_attention_heads,
            text.num_key_value_heads,
            text.head_dim or text.hidden_size // text.num_attention_heads,
        )
    plan = plan_conversion(
        {k: e.shape for k, e in entries.items()},
        target_shapes,
        source_name=f"The weights in {folder} ({', '.join(names[:3])})",
        internlm2_heads=heads,
    )
    if isinstance(next(iter(entries.values())), TensorEntry):
        _fill(model, plan, entries, device, dtype)
    else:  # pragma: no cover - pickle opt-in
        _fill_from_tensors(model, plan, entries, device, dtype)
    finish_model(model, device)
    return model
