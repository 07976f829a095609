"""An experiment's store: a folder of Parquet files that rows are appended to as they finish.

Layout of ``output/``::

    manifest.json          what the experiment is: prompts, settings, metric, columns, model
    rows/part-<hash>.parquet   one file per finished batch of cells

Each batch is written to a temporary name and renamed into place (``os.replace``, atomic on one
file system), so a crash leaves either the whole batch or nothing. The file name is a hash of
the batch's cell ids: a batch that is run again (a retried Ray task, a restarted actor) replaces
its own file instead of adding a second copy, so every id is stored exactly once. Readers also
drop any repeated id, keeping the first.

The ids themselves come from :func:`cell_id`: a hash of the sample's content (image bytes, not
the path), the rendered prompt, the settings and the model's fingerprint
(:func:`model_fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vltools._optional import require

__all__ = [
    "Store",
    "ForeignStoreError",
    "ROW_COLUMNS",
    "cell_id",
    "content_hash",
    "model_fingerprint",
    "source_fingerprint",
]

MANIFEST = "manifest.json"
ROWS = "rows"
# The columns of every stored row, in order (references and fields as JSON text).
ROW_COLUMNS: tuple[str, ...] = (
    "id",
    "sample",
    "prompt",
    "setting",
    "question",
    "answer",
    "references",
    "error",
    "tokens",
    "seconds",
    "tiles",
    "prompt_tokens",
)
# Manifest keys that must agree for a store to be reused.
IDENTITY_KEYS: tuple[str, ...] = ("prompts", "settings", "columns", "model")


class ForeignStoreError(ValueError):
    """The output folder holds another experiment's store."""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_hash(item: Any) -> str:
    """A hash of what an image or video item *is*: file bytes for a path, pixels otherwise.

    Paths are read (the same picture under two names has one hash); bytes are hashed as they
    are; PIL images by mode, size and pixels; tensors and arrays by dtype, shape and values;
    objects with ``pixel_values`` (a TiledImage, a VideoClip) by those; None is ``""``.
    """
    if item is None:
        return ""
    if isinstance(item, (str, os.PathLike)):
        h = hashlib.sha256()
        with open(item, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    if isinstance(item, (bytes, bytearray, memoryview)):
        return _sha(bytes(item))
    pixels = getattr(item, "pixel_values", None)
    if pixels is not None:
        return content_hash(pixels)
    if hasattr(item, "tobytes") and hasattr(item, "mode") and hasattr(item, "size"):  # PIL
        return _sha(f"{item.mode}{item.size}".encode() + item.tobytes())
    if hasattr(item, "detach") and hasattr(item, "numpy"):  # torch.Tensor
        item = item.detach().cpu().contiguous().float().numpy()
    if hasattr(item, "tobytes") and hasattr(item, "shape"):  # numpy
        return _sha(f"{item.dtype}{tuple(item.shape)}".encode() + item.tobytes())
    raise TypeError(
        f"Cannot hash an image of type {type(item).__name__}; expected a path, bytes, a PIL "
        "image, a tensor/array or a TiledImage."
    )


def cell_id(sample_hash: str, prompt: str, settings: Mapping[str, Any], model: str) -> str:
    """The stable id of one cell: 16 hex digits of a hash of its four parts."""
    text = json.dumps([sample_hash, prompt, dict(settings), model], sort_keys=True, default=str)
    return _sha(text.encode("utf-8"))[:16]


def _weights_digest(folder: Path) -> str:
    """Name, size, and the first and last MiB of each weight file and config (fast, not full)."""
    h = hashlib.sha256()
    names = sorted(
        p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json") and p.is_file()
    )
    for path in names:
        size = path.stat().st_size
        h.update(f"{path.name}:{size}".encode())
        with path.open("rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(size - (1 << 20))
                h.update(f.read())
    return h.hexdigest()[:16]


def source_fingerprint(
    source: str | os.PathLike, *, dtype: str, revision: str | None = None
) -> str:
    """The fingerprint of a model given by its source, before loading it.

    A local folder (or ``"tiny"``) is fingerprinted by its files (:func:`_weights_digest`); a
    Hub id by its name and revision. The dtype is part of it: bf16 and fp32 answer differently.
    """
    source = os.fspath(source)
    folder = Path(source)
    if source == "tiny":
        from vltools.testing import tiny_checkpoint

        folder = tiny_checkpoint()
    if folder.is_dir():
        return f"weights:{_weights_digest(folder)}/{dtype}"
    return f"hub:{source}@{revision or 'main'}/{dtype}"


def model_fingerprint(vlm: Any) -> str:
    """The fingerprint of a loaded :class:`~vltools.models.VLModel` (see :func:`source_fingerprint`)."""
    dtype = str(vlm.dtype).removeprefix("torch.")
    path = getattr(vlm, "path", None)
    if path is not None and Path(path).is_dir():
        return f"weights:{_weights_digest(Path(path))}/{dtype}"
    return f"hub:{vlm.source}@main/{dtype}"


class Store:
    """The rows of one experiment in ``folder`` (see the module docstring); None: in memory."""

    def __init__(self, folder: str | os.PathLike | None):
        self.folder = None if folder is None else Path(folder)
        self._memory: list[dict[str, Any]] = []
        self._memory_manifest: dict[str, Any] | None = None

    def check_folder(self) -> None:
        """Raise ValueError if ``folder`` exists and is not a folder (a file of that name)."""
        if self.folder is not None and self.folder.exists() and not self.folder.is_dir():
            raise ValueError(
                f"output={str(self.folder)!r} is a file, not a folder; the store is a folder of "
                "Parquet files. Give a folder path (it is created on the first run)."
            )

    def check_writable(self) -> None:
        """Raise PermissionError, before any model work, if the store cannot be written: the
        folder, or the nearest existing folder above it, does not let this user write."""
        if self.folder is None:
            return
        self.check_folder()
        probe = self.folder
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        for target in (probe, self.folder / ROWS):
            if not target.is_dir():
                continue
            try:  # a real write: permissions, read-only file systems and quotas all show here
                fd, name = tempfile.mkstemp(prefix=".vltools-probe-", dir=target)
                os.close(fd)
                os.unlink(name)
            except OSError as e:
                raise PermissionError(
                    f"The experiment cannot write its store in {self.folder}: writing in "
                    f"{target} fails ({e.strerror or e}). Choose an output folder you can write "
                    "to, or fix its permissions; a finished store can still be read with "
                    "vltools.Experiment.load."
                ) from e

    # -- manifest ----------------------------------------------------------------------------

    def read_manifest(self) -> dict[str, Any] | None:
        if self.folder is None:
            return self._memory_manifest
        if not (self.folder / MANIFEST).is_file():
            return None
        return json.loads((self.folder / MANIFEST).read_text(encoding="utf-8"))

    def check_manifest(self, manifest: Mapping[str, Any], *, keys: Sequence[str]) -> None:
        """Raise :class:`ForeignStoreError` if the stored manifest differs on ``keys``."""
        stored = self.read_manifest()
        if stored is None and self.folder is not None and self.has_rows():
            raise ForeignStoreError(
                f"{self.folder} holds result files but no {MANIFEST}; it is not a vltools "
                "experiment store. Choose an empty or new output folder."
            )
        if stored is None:
            return
        differ = [k for k in keys if k in manifest and stored.get(k) != _jsonable(manifest[k])]
        if differ:
            detail = "; ".join(
                f"{k}: stored {stored.get(k)!r}, now {_jsonable(manifest[k])!r}" for k in differ
            )
            raise ForeignStoreError(
                f"The output folder {self.folder} holds another experiment's store ({detail}). "
                "Its ids would not match, so it is not reused. Start a new experiment with a new "
                f"output folder (for example output='{self.folder}-2'), or reopen this one with "
                f"vltools.Experiment.load('{self.folder}')."
            )

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        if self.folder is None:
            self._memory_manifest = _jsonable(manifest)
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(_jsonable(manifest), indent=1)  # keeps the order of prompts and settings
        _atomic_write(self.folder / MANIFEST, text.encode("utf-8"))

    # -- rows --------------------------------------------------------------------------------

    def has_rows(self) -> bool:
        if self.folder is None:
            return bool(self._memory)
        return any((self.folder / ROWS).glob("part-*.parquet"))

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Store one batch of finished rows (one Parquet file, renamed into place)."""
        rows = [_row(r) for r in rows]
        if not rows:
            return
        if self.folder is None:
            known = {r["id"] for r in self._memory}
            self._memory += [r for r in rows if r["id"] not in known]
            return
        pa = require("pyarrow", purpose="The experiment store")
        pq = require("pyarrow.parquet", purpose="The experiment store")
        folder = self.folder / ROWS
        folder.mkdir(parents=True, exist_ok=True)
        name = _sha("".join(sorted(r["id"] for r in rows)).encode())[:20]
        table = pa.Table.from_pylist(rows, schema=row_schema())
        tmp = folder / f".tmp-{name}-{uuid.uuid4().hex}.parquet"
        pq.write_table(table, tmp)
        os.replace(tmp, folder / f"part-{name}.parquet")

    def rows(self) -> list[dict[str, Any]]:
        """Every stored row once (the first of any repeated id), in file then row order."""
        if self.folder is None:
            return [dict(r) for r in self._memory]
        pq = require("pyarrow.parquet", purpose="The experiment store")
        out, seen = [], set()
        for path in sorted((self.folder / ROWS).glob("part-*.parquet"), key=_mtime):
            for r in pq.read_table(path).to_pylist():
                if r["id"] not in seen:
                    seen.add(r["id"])
                    out.append(r)
        return out

    def ids(self) -> set[str]:
        return {r["id"] for r in self.rows()}

    def __repr__(self) -> str:
        return f"Store({str(self.folder) if self.folder else 'in memory'})"


def row_schema() -> Any:
    """The Parquet schema of a stored row (:data:`ROW_COLUMNS`)."""
    pa = require("pyarrow", purpose="The experiment store")
    types = {"tokens": pa.int64(), "seconds": pa.float64(), "tiles": pa.int64()}
    types["prompt_tokens"] = pa.int64()
    return pa.schema([(c, types.get(c, pa.string())) for c in ROW_COLUMNS])


_INTS = ("tokens", "tiles", "prompt_tokens")


def _plain(value: Any, column: str) -> Any:
    """A Python value for the schema: numpy scalars unwrapped, NaN as None, counts as int."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    if column in _INTS and value is not None:
        return int(value)
    return value


def _row(r: Mapping[str, Any]) -> dict[str, Any]:
    row = {c: _plain(r.get(c), c) for c in ROW_COLUMNS if c != "references"}
    row["references"] = r.get("references")
    if not isinstance(row["references"], str):
        row["references"] = json.dumps(list(row["references"] or []), ensure_ascii=False)
    return {c: row[c] for c in ROW_COLUMNS}


def _mtime(path: Path) -> tuple[float, str]:
    return (path.stat().st_mtime, path.name)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
