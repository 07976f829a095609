"""Labelled samples for experiments: read from files, tables, datasets or dicts, checked up front.

:func:`read_samples` turns what a researcher has into a tuple of :class:`Sample`:

- a folder of images (one sample per image; a ``labels.jsonl``/``labels.csv`` in the folder,
  when present, gives the questions and answers, with image paths relative to the folder);
- a CSV, JSONL/JSON or Parquet file (image paths relative to the file's folder);
- a pandas DataFrame, a Hugging Face ``datasets.Dataset`` (anything with ``column_names`` that
  iterates as dicts; no dependency), or a list of dicts.

The columns ``image``, ``question`` and ``answers`` are used unless ``columns`` maps them to
other names (``{"image": "img_path", "answers": "gt"}``). A sample may carry several images (a
list in ``image``) or a video (``video`` plus an optional ``num_segments``, default 8).
``answers`` is a list of reference answers (a single string or number is one reference; a JSON
list in a CSV cell is read as a list). Every other column is kept for prompt templates.

Everything is checked here, before any model work: missing columns, image files that do not
exist, references of the wrong shape.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vltools._optional import require

__all__ = ["Sample", "read_samples", "CANONICAL_COLUMNS", "IMAGE_SUFFIXES"]

CANONICAL_COLUMNS: tuple[str, ...] = (
    "image",
    "question",
    "answers",
    "video",
    "num_segments",
    "name",
)
IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".webp",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
)
LABEL_FILES: tuple[str, ...] = ("labels.jsonl", "labels.csv", "labels.parquet")
DEFAULT_NUM_SEGMENTS = 8


@dataclass(frozen=True, eq=False)
class Sample:
    """One labelled sample.

    Attributes:
        name: a short name (the image's file name, or ``#index``), unique in the set.
        images: the images: paths, bytes, PIL images, tensors ``[tiles, 3, 448, 448]`` or
            TiledImages (empty for a text-only or video sample).
        video: a video path, or None; ``num_segments`` frames are sampled from it.
        question: the question (``""`` when the set has none).
        references: the reference answers, or None when the set has none.
        fields: every column of the sample, for prompt templates.
        hash: a hash of the images' (or video's) content, the sample's part of a cell id.
    """

    name: str
    images: tuple[Any, ...]
    video: str | None
    num_segments: int
    question: str
    references: tuple[str, ...] | None
    fields: Mapping[str, Any] = field(repr=False)
    hash: str = ""

    def __repr__(self) -> str:
        what = f"video={Path(self.video).name!r}" if self.video else f"{len(self.images)} image(s)"
        return f"Sample({self.name!r}, {what}, question={self.question[:40]!r}, references={self.references})"

    def record(self) -> dict[str, Any] | None:
        """The sample as a JSON-ready dict in canonical columns, or None if an image is not a file."""
        if not all(isinstance(i, (str, os.PathLike)) for i in self.images):
            return None
        fields = {k: v for k, v in self.fields.items() if k not in CANONICAL_COLUMNS}
        return json.loads(
            json.dumps(
                {
                    "name": self.name,
                    "image": [str(Path(i).resolve()) for i in self.images],
                    "video": None if self.video is None else str(Path(self.video).resolve()),
                    "num_segments": self.num_segments,
                    "question": self.question,
                    "answers": None if self.references is None else list(self.references),
                    **fields,
                },
                default=str,
            )
        )


def read_samples(
    samples: Any,
    *,
    columns: Mapping[str, str] | None = None,
    need_references: bool = False,
) -> tuple[Sample, ...]:
    """Read and check ``samples`` (see the module docstring); returns one :class:`Sample` each.

    ``need_references``: every sample must carry ``answers`` (an experiment with a metric).
    """
    from vltools.store import content_hash

    records, base = _records(samples)
    if not records:
        raise ValueError(f"samples is empty ({_describe(samples)}); expected at least one sample.")
    mapping = _check_columns(columns, records)
    visual = any(
        not _missing(r.get(mapping.get(c, c))) for r in records for c in ("image", "video")
    )
    out: list[Sample] = []
    names: set[str] = set()
    for index, record in enumerate(records):
        get = {c: record.get(mapping.get(c, c)) for c in CANONICAL_COLUMNS}
        images = _images(get["image"], base, index)
        video = _video(get["video"], base, index)
        if not images and video is None and visual and not _explicitly_none(get["image"]):
            raise ValueError(
                f"Sample {index} has no image (column {mapping.get('image', 'image')!r} is "
                f"{get['image']!r}) and no video, while the other samples have them. Give it "
                "its image file, drop the sample, or mark it text-only with image=[]."
            )
        question = "" if _missing(get["question"]) else str(get["question"])
        references = _references(get["answers"], index, column=mapping.get("answers", "answers"))
        if need_references and references is None:
            raise ValueError(
                f"Sample {index} has no reference answers (column "
                f"{mapping.get('answers', 'answers')!r} is missing or empty), but the experiment "
                "scores answers with a metric. Give every sample its answers, map the column "
                "with columns={'answers': ...}, or pass metric=None."
            )
        name = str(get["name"]) if not _missing(get["name"]) else _name(images, video, index)
        if name in names:
            name = f"{name}#{index}"
        names.add(name)
        segments = _num_segments(get["num_segments"], index, video)
        fields = {k: v for k, v in record.items()}
        fields.update(question=question, answers=list(references or []))
        if "choices" in fields:
            fields["choices"] = _choices(fields["choices"], index)
        parts = [_hash(i, index) for i in images] + ([content_hash(video)] if video else [])
        out.append(
            Sample(
                name=name,
                images=tuple(images),
                video=video,
                num_segments=segments,
                question=question,
                references=references,
                fields=fields,
                hash="/".join(parts) if len(parts) != 1 else parts[0],
            )
        )
    return tuple(out)


# --------------------------------------------------------------------------- sources


def _describe(samples: Any) -> str:
    return f"{type(samples).__name__} {str(samples)[:80]!r}"


def _records(samples: Any) -> tuple[list[dict[str, Any]], Path | None]:
    """The samples as a list of dicts, and the folder relative image paths are read against."""
    if isinstance(samples, (str, os.PathLike)):
        path = Path(samples)
        if path.is_dir():
            return _folder(path)
        if not path.exists():
            raise FileNotFoundError(
                f"samples={os.fspath(samples)!r} does not exist; expected a folder of images or "
                "a CSV, JSONL or Parquet file."
            )
        return _table_file(path), path.parent
    if hasattr(samples, "to_dict") and hasattr(samples, "columns"):  # a pandas DataFrame
        return [dict(r) for r in samples.to_dict(orient="records")], None
    if hasattr(samples, "column_names") and hasattr(samples, "__iter__"):  # datasets.Dataset
        return [dict(r) for r in samples], None
    if isinstance(samples, Sequence) and not isinstance(samples, (str, bytes)):
        bad = [i for i, r in enumerate(samples) if not isinstance(r, Mapping)]
        if bad:
            raise TypeError(
                f"samples[{bad[0]}] is {type(samples[bad[0]]).__name__}; a list of samples must "
                "hold dicts such as {'image': 'a.png', 'question': ..., 'answers': [...]}."
            )
        return [dict(r) for r in samples], None
    raise TypeError(
        f"samples is {_describe(samples)}; expected a folder of images, a CSV/JSONL/Parquet "
        "file, a pandas DataFrame, a datasets.Dataset or a list of dicts."
    )


def _folder(path: Path) -> tuple[list[dict[str, Any]], Path]:
    for name in LABEL_FILES:
        if (path / name).is_file():
            return _table_file(path / name), path
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(
            f"The folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}) and no "
            f"{' or '.join(LABEL_FILES)}; point samples at a folder of images or a labels file."
        )
    return [{"image": p.name} for p in images], path


def _table_file(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(
                f"{path} holds a JSON {type(data).__name__}; expected a list of dicts."
            )
        return data
    if suffix in (".csv", ".tsv"):
        import csv

        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    if suffix in (".parquet", ".pq"):
        pq = require("pyarrow.parquet", purpose="Reading samples from Parquet")
        return pq.read_table(path).to_pylist()
    raise ValueError(
        f"samples={str(path)!r} has the suffix {suffix!r}; expected .csv, .tsv, .jsonl, .json or "
        ".parquet (or a folder of images)."
    )


def _check_columns(columns: Mapping[str, str] | None, records: list[dict]) -> dict[str, str]:
    mapping = dict(columns or {})
    unknown = [k for k in mapping if k not in CANONICAL_COLUMNS]
    if unknown:
        raise ValueError(
            f"columns maps {unknown}, which vltools does not use; the keys must be among "
            f"{list(CANONICAL_COLUMNS)} (for example columns={{'image': 'img_path'}})."
        )
    shared = sorted({v for v in mapping.values() if list(mapping.values()).count(v) > 1})
    if shared:
        keys = [k for k, v in mapping.items() if v in shared]
        raise ValueError(
            f"columns={mapping} maps {keys} onto the same column {shared[0]!r}; each of "
            f"{list(CANONICAL_COLUMNS)} reads its own column. Map one of them elsewhere or drop it."
        )
    available = sorted({k for r in records for k in r})
    missing = {k: v for k, v in mapping.items() if all(v not in r for r in records)}
    if missing:
        raise ValueError(
            f"columns={mapping} names {sorted(missing.values())}, which the samples do not have. "
            f"Available columns: {available}. Fix the mapping to name one of those."
        )
    hasvisual = any(mapping.get(c, c) in r for r in records for c in ("image", "video"))
    if not hasvisual and not any(mapping.get("question", "question") in r for r in records):
        raise ValueError(
            f"The samples have neither an image, a video nor a question column (columns: "
            f"{available}). Name them with columns={{'image': ..., 'question': ...}}."
        )
    return mapping


def _explicitly_none(value: Any) -> bool:
    """An empty list (or "[]" text) marks a text-only sample on purpose."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # numpy arrays from Parquet list columns
    return (isinstance(value, (list, tuple)) and not value) or (
        isinstance(value, str) and value == "[]"
    )


def _num_segments(value: Any, index: int, video: str | None) -> int:
    if _missing(value):
        return DEFAULT_NUM_SEGMENTS
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if hasattr(number, "item"):
        number = number.item()  # numpy scalars from pandas
    if (
        isinstance(number, bool)
        or not isinstance(number, (int, float))
        or number != int(number)
        or int(number) < 1
    ):
        raise ValueError(
            f"Sample {index}: num_segments is {value!r}; expected a whole number of frames "
            f">= 1 to sample from {'its video' if video else 'a video'} (default "
            f"{DEFAULT_NUM_SEGMENTS}). Fix the value or leave it empty."
        )
    return int(number)


def _choices(value: Any, index: int) -> Any:
    """Multiple-choice options as a list or a letter -> text dict (JSON text is parsed)."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"Sample {index}: choices is {value[:80]!r}, which looks like JSON but does not "
                f'parse ({e}); write a JSON list of options, e.g. ["cat", "dog"].'
            ) from e
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    return value


def _hash(item: Any, index: int) -> str:
    from vltools.store import content_hash

    try:
        return content_hash(item)
    except TypeError as e:
        raise TypeError(f"Sample {index}: {e}") from e


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN from pandas
    except (TypeError, ValueError):
        return False


def _images(value: Any, base: Path | None, index: int) -> list[Any]:
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) == 1:
        value = value.tolist()  # a Parquet/Arrow list column arrives as a 1-D numpy array
    if _missing(value) if not isinstance(value, (list, tuple)) else False:
        return []
    if isinstance(value, str) and value.startswith("["):
        value = json.loads(value)
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    return [_image(item, base, index) for item in items]


def _image(item: Any, base: Path | None, index: int) -> Any:
    if isinstance(item, Mapping):  # Hugging Face Image feature in arrow form
        if item.get("bytes"):
            return item["bytes"]
        item = item.get("path")
    if isinstance(item, (str, os.PathLike)):
        return _existing_file(item, base, index, kind="image")
    if item is None:
        raise ValueError(f"Sample {index} lists an image that is None; drop it or give a path.")
    return item  # bytes, PIL, tensor, TiledImage: checked when tiled


def _video(value: Any, base: Path | None, index: int) -> str | None:
    if _missing(value):
        return None
    return _existing_file(value, base, index, kind="video")


def _existing_file(value: Any, base: Path | None, index: int, *, kind: str) -> str:
    """``value`` as an existing file's path, relative paths read against ``base``."""
    path = Path(value)
    if not path.is_absolute() and base is not None:
        path = base / path
    if not path.is_file():
        raise FileNotFoundError(
            f"Sample {index}: the {kind} file {os.fspath(value)!r} does not exist (looked at "
            f"{path}). Fix the path (relative paths are read against "
            f"{base or 'the working directory'}) or drop the sample."
        )
    return str(path)


def _references(value: Any, index: int, *, column: str) -> tuple[str, ...] | None:
    if not isinstance(value, (list, tuple)) and _missing(value):
        return None
    if isinstance(value, str) and value.startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # numpy arrays from pandas/parquet
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return (str(value),)
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value)
        and not any(isinstance(v, float) and v != v for v in value)
    ):
        return tuple(str(v) for v in value)
    raise ValueError(
        f"Sample {index}: the references in column {column!r} are {value!r}; expected a list of "
        "reference answers (strings or numbers), e.g. ['42', 'forty-two'], or one string."
    )


def _name(images: list[Any], video: str | None, index: int) -> str:
    if video:
        return Path(video).name
    if len(images) == 1:
        item = images[0]
        if isinstance(item, str):
            return Path(item).name
        source = getattr(item, "source", None)
        if source:
            return Path(str(source)).name
    return f"#{index}"
