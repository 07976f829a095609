"""Prompt experiments at dataset scale: labelled samples x prompts x settings, scored and resumable.

:class:`Experiment` is the one implementation; :func:`prompt_grid` (images x questions x
settings, no labels, no store) is a small case of it.

>>> exp = Experiment("data/charts", prompts={"short": "{question} Answer briefly.",
...                  "plain": "{question}"}, settings={"t1": {"max_num": 1}, "t6": {"max_num": 6}},
...                  metric="relaxed_accuracy", output="runs/charts")   # doctest: +SKIP
>>> exp.plan()          # one row per cell, before any model work          # doctest: +SKIP
>>> res = exp.run(model)                                                     # doctest: +SKIP
>>> res.summary(); res.compare("short", "plain"); res.plot(); res.browse()  # doctest: +SKIP

- **Samples** are read and checked by :func:`vltools.dataset.read_samples` (folders, files,
  DataFrames, datasets, lists of dicts; ``columns`` maps the names).
- **Prompts** are ``str.format`` templates over ``{question}``, ``{choices}`` (the ``choices``
  column as lettered options, ``A. ...``) and any other column.
- **Settings** hold ``max_num`` (default 12), ``system_message`` (default: the model's),
  ``seed`` and generate options (``max_new_tokens``, ``do_sample``, ``temperature``, ...).
- **Ids and the store**: each cell's id hashes the sample's content, the rendered prompt, the
  normalised setting and the model's fingerprint (:mod:`vltools.store`); finished batches are
  appended to ``output`` as Parquet files, and ``run`` computes only the ids not stored yet.
- **Engines**: ``run(model)`` batches in this process (cells grouped by setting and tile count,
  tiling on background threads while the model works); ``run(source, engine="ray")`` runs the
  same batched code on Ray Data (:mod:`vltools.cluster`).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import string
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vltools._optional import require
from vltools.cells import Cell, Prepared, answer_batch, prepare
from vltools.constants import DEFAULT_MAX_NUM, TOKENS_PER_TILE
from vltools.dataset import Sample, read_samples
from vltools.store import ForeignStoreError, Store, cell_id, model_fingerprint, source_fingerprint

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from vltools.models import VLModel
    from vltools.results import ExperimentResult

__all__ = [
    "Experiment",
    "ForeignStoreError",
    "normalise_setting",
    "render_question",
    "template_fields",
    "prompt_grid",
    "GridResult",
    "COLUMNS",
]

logger = logging.getLogger(__name__)

# Setting keys that are not generate options.
SETTING_KEYS = ("max_num", "system_message", "seed")
DEFAULT_BATCH_SIZE = 8


# --------------------------------------------------------------------------- pure pieces


def template_fields(template: str) -> list[str]:
    """The field names a ``str.format`` template uses (``"{question} {choices}"`` -> both)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(
            f"The prompt template {template!r} is not a valid format string ({e}); write fields "
            "as {question} and literal braces as {{ and }}."
        ) from e
    names = [name for _, name, _, _ in parsed if name is not None]
    for name in names:
        if not name.isidentifier():
            raise ValueError(
                f"The prompt template {template!r} has the field {{{name}}}; expected plain "
                "column names such as {question} or {choices} (no positions, attributes or "
                "indexes). Write literal braces as {{ and }}."
            )
    return names


def choices_text(choices: Any) -> str:
    """Multiple-choice options as lettered lines, ``A. red\nB. blue`` (a dict keeps its keys):
    :func:`vltools.metrics.render_choices`, so ``mc_choice`` reads the letters the prompt shows."""
    if choices is None:
        return ""
    from vltools.metrics import render_choices

    if isinstance(choices, str):
        try:
            choices = json.loads(choices)
        except json.JSONDecodeError:
            return choices
    if hasattr(choices, "tolist"):
        choices = choices.tolist()
    return render_choices(choices)


def render_question(template: str, fields: Mapping[str, Any]) -> str:
    """``template`` filled with a sample's fields (``{choices}`` lettered)."""
    values = dict(fields)
    values["choices"] = choices_text(values.get("choices"))
    return template.format_map(values)


def normalise_setting(name: str, setting: Any) -> dict[str, Any]:
    """A setting with its defaults filled in, so that ``{}`` and ``{"max_num": 12}`` are one id.

    Returns ``{"max_num", "system_message", "seed", "generation"}``; the generate options are
    checked against ``transformers.GenerationConfig``.
    """
    if not isinstance(setting, Mapping):
        raise TypeError(
            f"setting {name!r} is {setting!r}; expected a dict of Chat options such as "
            "{'max_num': 6, 'max_new_tokens': 32}."
        )
    from vltools.generation import DEFAULT_GENERATION

    options = dict(setting)
    max_num = options.pop("max_num", DEFAULT_MAX_NUM)
    if not isinstance(max_num, int) or isinstance(max_num, bool) or max_num < 1:
        raise ValueError(f"setting {name!r} has max_num={max_num!r}; expected an int >= 1.")
    system = options.pop("system_message", None)
    if system is not None and not isinstance(system, str):
        raise TypeError(
            f"setting {name!r} has system_message={system!r}; expected a str (or leave it out "
            "for the model's own)."
        )
    seed = options.pop("seed", None)
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise TypeError(f"setting {name!r} has seed={seed!r}; expected an int (or None).")
    generation = {**DEFAULT_GENERATION, **options}
    transformers = require("transformers", purpose="Experiments")
    known = transformers.GenerationConfig()
    unknown = sorted(k for k in generation if not hasattr(known, k))
    if unknown:
        raise ValueError(
            f"setting {name!r} has unknown option(s) {unknown}; expected max_num, "
            "system_message, seed or generate options (max_new_tokens, do_sample, temperature, "
            "top_p, ...)."
        )
    from vltools.generation import check_generation_options

    try:
        check_generation_options(generation)
    except (TypeError, ValueError) as e:
        raise type(e)(f"setting {name!r}: {e}") from e
    return {"max_num": max_num, "system_message": system, "seed": seed, "generation": generation}


def _named(items: Any, kind: str) -> dict[str, Any]:
    if isinstance(items, Mapping):
        named = {str(k): v for k, v in items.items()}
    elif isinstance(items, str):
        named = {f"{kind[:-1]} 1": items}
    elif isinstance(items, Sequence):
        named = {f"{kind[:-1]} {i + 1}": v for i, v in enumerate(items)}
    else:
        raise TypeError(f"{kind} is {items!r}; expected a dict of name -> value or a list.")
    if not named:
        raise ValueError(f"{kind} is empty; expected at least one entry.")
    return named


def _metric(metric: Any) -> tuple[Callable[[str, list[str]], float] | None, str | None]:
    if metric is None:
        return None, None
    if callable(metric):
        return metric, getattr(metric, "__name__", type(metric).__name__)
    if not isinstance(metric, str):
        raise TypeError(
            f"metric is {metric!r}; expected a name from vltools.metrics or a callable."
        )
    try:
        from vltools import metrics
    except ImportError as e:  # pragma: no cover - metrics ship with vltools
        raise ValueError(f"metric={metric!r} needs vltools.metrics, which is missing: {e}") from e
    try:
        return metrics.get(metric), metric
    except (KeyError, ValueError) as e:
        raise ValueError(str(e).strip("'\"")) from e


# --------------------------------------------------------------------------- the experiment


class Experiment:
    """Labelled samples x prompt templates x settings, scored by a metric, stored in ``output``.

    Args:
        samples: a folder of images, a CSV/JSONL/Parquet file, a pandas DataFrame, a
            ``datasets.Dataset`` or a list of dicts (see :mod:`vltools.dataset`).
        prompts: name -> template (or a list of templates), filled with ``{question}``,
            ``{choices}`` and any column.
        settings: name -> dict of ``max_num``, ``system_message``, ``seed`` and generate
            options (or a list of dicts); default one setting with the defaults.
        metric: a name from :mod:`vltools.metrics` or a callable ``(prediction, references) ->
            float``; None for no score.
        output: the store's folder (created on the first run); None keeps rows in memory.
        columns: maps ``image``, ``question``, ``answers``, ``video``, ``num_segments``, ``name``
            to the samples' own column names.

    Everything is checked here, before any model work: samples, columns, templates, settings,
    the metric and whether ``output`` holds another experiment's store.
    """

    def __init__(
        self,
        samples: Any,
        *,
        prompts: Any,
        settings: Any = None,
        metric: Any = None,
        output: str | Path | None = None,
        columns: Mapping[str, str] | None = None,
    ):
        self.metric_fn, self.metric_name = _metric(metric)
        self.columns = dict(columns or {})
        self.samples: tuple[Sample, ...] = (
            read_samples(samples, columns=columns, need_references=self.metric_fn is not None)
            if samples is not None
            else ()
        )
        self.prompts: dict[str, str] = _named(prompts, "prompts")
        self.settings: dict[str, dict[str, Any]] = {
            name: normalise_setting(name, s)
            for name, s in _named([{}] if settings is None else settings, "settings").items()
        }
        self._check_templates()
        self._questions = self._render()
        self._check_duplicates()
        self._check_metric()
        self.store = Store(output)
        self.store.check_folder()
        self.store.check_manifest(self._manifest(None), keys=("prompts", "settings"))

    # -- checks and identity -----------------------------------------------------------------

    def _check_templates(self) -> None:
        for name, template in self.prompts.items():
            if not isinstance(template, str) or not template.strip():
                raise ValueError(f"prompt {name!r} is {template!r}; expected a non-empty template.")
            for fieldname in template_fields(template):
                missing = [
                    s.name
                    for s in self.samples
                    if fieldname not in s.fields and fieldname != "choices"
                ]
                if fieldname == "choices":
                    missing = [s.name for s in self.samples if s.fields.get("choices") is None]
                if missing:
                    available = sorted(set(self.samples[0].fields) | {"question", "choices"})
                    raise ValueError(
                        f"prompt {name!r} uses the field {{{fieldname}}}, which sample(s) "
                        f"{missing[:3]} do not have. Available fields: {available}. Fix the "
                        "template, or add the column (map it with columns=...)."
                    )

    def _render(self) -> dict[tuple[int, str], str]:
        questions = {}
        for i, sample in enumerate(self.samples):
            for p, template in self.prompts.items():
                try:
                    questions[(i, p)] = render_question(template, sample.fields)
                except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
                    raise ValueError(
                        f"prompt {p!r} cannot be filled with sample {sample.name!r}: "
                        f"{type(e).__name__}: {e}. Fix the template (plain {{field}}s; a format "
                        "spec such as {question:>10} must suit the column's values) or the sample."
                    ) from e
        return questions

    def _check_duplicates(self) -> None:
        """Two samples with the same content asked the same question would share cell ids."""
        seen: dict[tuple[str, str], int] = {}
        for (i, p), question in self._questions.items():
            key = (self.samples[i].hash, question)
            if key in seen and seen[key] != i:
                first = self.samples[seen[key]]
                raise ValueError(
                    f"Samples {seen[key]} ({first.name!r}) and {i} ({self.samples[i].name!r}) "
                    f"hold the same image/video content and, under prompt {p!r}, the same "
                    f"question {question[:60]!r}: their cells would be one cell (ids hash the "
                    "content, not the name). Drop the duplicate sample, or give it a question "
                    "of its own."
                )
            seen.setdefault(key, i)

    def _check_metric(self) -> None:
        """Score each sample's first reference against its references: a metric that cannot
        (a wrong signature, a missing column, references it does not understand) fails here,
        before any model work, instead of after the run."""
        if self.metric_fn is None:
            return
        from vltools.metrics import score

        for sample in self.samples:
            references = list(sample.references or ())
            try:
                score(self.metric_fn, references[0], references, sample=sample.fields)
            except Exception as e:
                raise ValueError(
                    f"The metric {self.metric_name!r} fails on sample {sample.name!r} (its own "
                    f"reference {references[0]!r} against references {references}): "
                    f"{type(e).__name__}: {e}. A metric is called as metric(prediction: str, "
                    "references: list[str]) -> float; fix the metric or the sample's answers."
                ) from e

    def _manifest(self, model: str | None) -> dict[str, Any]:
        records = [s.record() for s in self.samples]
        return {
            "version": 1,
            "prompts": self.prompts,
            "settings": self.settings,
            "metric": self.metric_name,
            "columns": self.columns,
            "model": model,
            "samples": None if any(r is None for r in records) else records,
        }

    def cells(self, fingerprint: str) -> list[Cell]:
        """Every cell, sample-major then prompt then setting, with ids for ``fingerprint``."""
        from vltools.tiling import plan_tiles

        out = []
        sizes: dict[int, list[tuple[int, int] | int | None]] = {}
        for i, sample in enumerate(self.samples):
            sizes[i] = [_size(item) for item in sample.images]
            for p in self.prompts:
                question = self._questions[(i, p)]
                for s, options in self.settings.items():
                    tiles: int | None = sample.num_segments if sample.video else 0
                    for size in sizes[i]:
                        if tiles is None or size is None:
                            tiles = None
                        elif isinstance(size, int):
                            tiles += size
                        else:
                            tiles += plan_tiles(*size, max_num=options["max_num"]).num_tiles
                    out.append(
                        Cell(
                            id=cell_id(sample.hash, question, options, fingerprint),
                            sample=sample.name,
                            prompt=p,
                            setting=s,
                            question=question,
                            references=sample.references or (),
                            options=options,
                            images=sample.images,
                            video=sample.video,
                            num_segments=sample.num_segments,
                            tiles=tiles,
                        )
                    )
        return out

    # -- plan --------------------------------------------------------------------------------

    def plan(self, model: Any = None, *, dtype: str | None = None) -> pd.DataFrame:
        """One row per cell, before any model work: id, sample, prompt, setting, question,
        tiles, image_tokens, prompt_tokens, stored.

        ``model``: a VLModel or a source string (its fingerprint makes the ids; a VLModel's
        tokenizer also counts ``prompt_tokens``); None takes the model of the store's last run,
        or leaves ``id`` empty. ``dtype`` is the source's dtype (default float32).
        """
        pd = require("pandas", purpose="Experiment tables")
        fingerprint = self._fingerprint(model, dtype=dtype)
        cells = self.cells(fingerprint or "")
        stored = self.store.ids() if fingerprint else set()
        tokenizer = getattr(model, "tokenizer", None)
        rows = []
        for c in cells:
            image_tokens = None if c.tiles is None else c.tiles * TOKENS_PER_TILE
            rows.append(
                {
                    "id": c.id if fingerprint else None,
                    "sample": c.sample,
                    "prompt": c.prompt,
                    "setting": c.setting,
                    "question": c.question,
                    "tiles": c.tiles,
                    "image_tokens": image_tokens,
                    "prompt_tokens": _prompt_tokens(model, c) if tokenizer is not None else None,
                    "stored": c.id in stored,
                }
            )
        return pd.DataFrame(rows)

    def _fingerprint(self, model: Any, *, dtype: str | None = None) -> str | None:
        _check_model(model, engine="local", optional=True)
        if model is None:
            manifest = self.store.read_manifest()
            return None if manifest is None else manifest.get("model")
        if isinstance(model, (str, Path)):
            return source_fingerprint(model, dtype=dtype or "float32")
        return model_fingerprint(model)

    # -- run ---------------------------------------------------------------------------------

    def run(
        self,
        model: Any,
        *,
        engine: str = "local",
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool = True,
        address: str | None = None,
        num_workers: int = 2,
        gpus_per_worker: float = 0,
        dtype: str | None = None,
    ) -> ExperimentResult:
        """Answer every cell not stored yet, store the rows, and return all of them scored.

        ``engine="local"``: in this process (``model`` a VLModel or a source string for
        :func:`vltools.load_model`). ``engine="ray"``: on Ray Data (``model`` a source string;
        ``address`` None starts a local Ray, ``"auto"`` or ``"ray://host:10001"`` joins a
        cluster; ``num_workers`` model actors with ``gpus_per_worker`` GPUs each; ``dtype``
        default bfloat16 on GPUs, float32 otherwise); see :mod:`vltools.cluster`.

        An interrupt or a crash loses at most the batch in flight; run again to finish.
        """
        if not self.samples:
            raise ValueError(
                "This experiment was reopened without its samples (they were not files); pass "
                "them again: Experiment.load(folder, samples=...)."
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}; expected an int >= 1.")
        _check_model(model, engine=engine)
        self.store.check_writable()
        if engine == "ray":
            from vltools.cluster import run_on_ray

            run_on_ray(
                self,
                model,
                address=address,
                num_workers=num_workers,
                gpus_per_worker=gpus_per_worker,
                batch_size=batch_size,
                dtype=dtype,
                progress=progress,
            )
            return self.result()
        if engine != "local":
            raise ValueError(f"engine={engine!r}; expected 'local' (this process) or 'ray'.")
        if isinstance(model, (str, Path)):
            from vltools.models import load_model

            model = load_model(str(model), dtype=dtype)
        fingerprint = model_fingerprint(model)
        self.begin(fingerprint)
        todo = self.missing(fingerprint)
        self._run_local(model, todo, batch_size=batch_size, progress=progress)
        return self.result()

    def begin(self, fingerprint: str) -> None:
        """Check the store against this experiment and model, then write the manifest."""
        manifest = self._manifest(fingerprint)
        self.store.check_manifest(manifest, keys=("prompts", "settings", "model"))
        self.store.write_manifest(manifest)

    def missing(self, fingerprint: str) -> list[Cell]:
        """The cells whose ids the store does not hold yet."""
        stored = self.store.ids()
        return [c for c in self.cells(fingerprint) if c.id not in stored]

    def _run_local(
        self, vlm: VLModel, todo: Sequence[Cell], *, batch_size: int, progress: bool
    ) -> None:
        batches = batch_cells(todo, batch_size)
        bar = None
        if progress and todo:
            tqdm = require("tqdm.auto", purpose="The experiment's progress bar")
            bar = tqdm.tqdm(total=len(todo), desc="experiment", unit="row", leave=True)
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vltools-tiling")
        try:
            for rows in _answer_batches(vlm, batches, pool):
                self.store.append(rows)
                if bar is not None:
                    bar.update(len(rows))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            if bar is not None:
                bar.close()

    # -- results -----------------------------------------------------------------------------

    def result(self) -> ExperimentResult:
        """The stored rows of this experiment's cells (for the store's model), scored."""
        from vltools.results import ExperimentResult

        fingerprint = self._fingerprint(None)
        rows = self.store.rows()
        if fingerprint and self.samples:
            order = {c.id: n for n, c in enumerate(self.cells(fingerprint))}
            rows = sorted((r for r in rows if r["id"] in order), key=lambda r: order[r["id"]])
        visuals = {s.name: (s.images, s.video) for s in self.samples}
        fields = {s.name: s.fields for s in self.samples}
        return ExperimentResult.from_rows(
            rows, metric=self.metric_fn, metric_name=self.metric_name, visuals=visuals,
            fields=fields,
        )  # fmt: skip

    @classmethod
    def load(cls, folder: str | Path, *, samples: Any = None, metric: Any = None) -> Experiment:
        """Reopen the experiment stored in ``folder`` (finished or interrupted).

        Its samples come back from the manifest when they were files; otherwise pass them.
        ``metric`` overrides the stored metric name (needed when it was a callable).
        """
        store = Store(folder)
        manifest = store.read_manifest()
        if manifest is None:
            raise FileNotFoundError(
                f"{folder} holds no experiment (no manifest.json); give the folder an "
                "Experiment(..., output=...) wrote, or start a new Experiment."
            )
        if metric is None and manifest.get("metric"):
            try:
                metric, _ = _metric(manifest["metric"])
            except ValueError:
                metric = None  # a callable's name: scores need metric=...
        settings = {
            name: {
                k: v
                for k, v in {**{x: s[x] for x in SETTING_KEYS}, **s["generation"]}.items()
                if not (k in ("system_message", "seed") and v is None)
            }
            for name, s in manifest["settings"].items()
        }
        if samples is None:
            samples = manifest.get("samples")
            columns = None
        else:
            columns = manifest.get("columns") or None
        exp = cls(
            samples,
            prompts=manifest["prompts"],
            settings=settings,
            metric=metric,
            output=folder,
            columns=columns,
        )
        exp.columns = manifest.get("columns") or {}
        return exp

    def __repr__(self) -> str:
        where = self.store.folder or "memory"
        return (
            f"Experiment({len(self.samples)} samples x {len(self.prompts)} prompts x "
            f"{len(self.settings)} settings = {len(self.samples) * len(self.prompts) * len(self.settings)}"
            f" cells, metric={self.metric_name}, output={str(where)!r})"
        )


def _check_model(model: Any, *, engine: str, optional: bool = False) -> None:
    """TypeError unless ``model`` is a source string (or path), a loaded VLModel, or None
    where that is allowed."""
    if model is None and optional:
        return
    if isinstance(model, (str, Path)) or (
        engine != "ray" and hasattr(model, "batch_chat") and hasattr(model, "tokenizer")
    ):
        return
    raise TypeError(
        f"model is {type(model).__name__} {str(model)[:60]!r}; expected a loaded VLModel "
        "(vltools.load_model(...)) or its source: 'tiny', a Hub id such as "
        "'OpenGVLab/InternVL2-1B' or a checkpoint folder."
    )


def batch_cells(cells: Sequence[Cell], batch_size: int) -> list[list[Cell]]:
    """Cells grouped by setting and tile count (in order of first appearance), in batches."""
    groups: dict[tuple[str, int], list[Cell]] = {}
    for c in cells:
        groups.setdefault(c.group(), []).append(c)
    return [
        group[i : i + batch_size]
        for group in groups.values()
        for i in range(0, len(group), batch_size)
    ]


def _answer_batches(
    vlm: VLModel, batches: Sequence[Sequence[Cell]], pool: ThreadPoolExecutor
) -> Iterator[list[dict[str, Any]]]:
    """Answer ``batches`` in order while the next batch is tiled on ``pool``."""
    pending = [pool.submit(prepare, c) for c in batches[0]] if batches else []
    for i in range(len(batches)):
        prepared: list[Prepared] = [f.result() for f in pending]
        pending = [pool.submit(prepare, c) for c in batches[i + 1]] if i + 1 < len(batches) else []
        yield answer_batch(vlm, prepared)


def _size(item: Any) -> tuple[int, int] | int | None:
    """(width, height) of an image to plan its tiles, or its tile count when already tiled."""
    shape = getattr(item, "shape", None)
    if shape is not None and len(shape) == 4:
        return int(shape[0])  # a tensor of tiles
    if isinstance(getattr(item, "num_tiles", None), int):  # a TiledImage
        return int(item.num_tiles)
    pixels = getattr(item, "pixel_values", None)
    if pixels is not None:
        return int(pixels.shape[0])
    size = getattr(item, "size", None)
    if isinstance(size, tuple) and len(size) == 2:
        return size  # PIL
    from PIL import Image

    try:
        with Image.open(item if isinstance(item, (str, Path)) else io.BytesIO(item)) as image:
            return image.size
    except Exception:  # unreadable: the cell records its error when tiled
        return None


def _prompt_tokens(vlm: Any, cell: Cell) -> int | None:
    if cell.tiles is None or cell.video is not None:
        return None
    from vltools.generation import batch_prompts

    patches = [p for p in (_size(i) for i in cell.images)]
    if any(not isinstance(p, int) for p in patches):
        from vltools.tiling import plan_tiles

        patches = [
            p if isinstance(p, int) else plan_tiles(*p, max_num=cell.options["max_num"]).num_tiles
            for p in patches
        ]
    (prompt,) = batch_prompts(vlm, [cell.question], [patches])
    return len(vlm.tokenizer(prompt.text, add_special_tokens=False)["input_ids"])


# --------------------------------------------------------------------------- prompt_grid

# Columns of every prompt_grid row, in table order.
COLUMNS: tuple[str, ...] = (
    "image",
    "prompt",
    "setting",
    "question",
    "answer",
    "tiles",
    "prompt_tokens",
    "new_tokens",
    "ttft_s",
    "tokens_per_s",
    "total_s",
    "finish_reason",
    "error",
)


@dataclass(frozen=True)
class GridResult:
    """The answers of a prompt grid.

    Attributes:
        rows: one dict per cell with the keys of :data:`COLUMNS` (``error`` is empty unless the
            cell failed, for example on the context budget), plus ``settings`` (the dict used).
        thumbnails: image name -> a small PIL thumbnail (None for text-only or tensor input).
    """

    rows: tuple[dict[str, Any], ...]
    thumbnails: Mapping[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def records(self) -> list[dict[str, Any]]:
        """The rows as plain JSON-ready dicts (``settings`` serialised as JSON text)."""
        return [
            {**{c: r.get(c) for c in COLUMNS}, "settings": json.dumps(r["settings"], default=str)}
            for r in self.rows
        ]

    def to_csv(self, path: str | Path) -> Path:
        """Write the rows as CSV (UTF-8, header row); returns the path."""
        path = Path(path)
        records = self.records()
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=[*COLUMNS, "settings"])
            writer.writeheader()
            writer.writerows(records)
        return path

    def to_json(self, path: str | Path | None = None) -> str:
        """The rows as a JSON list; also written to ``path`` when given."""
        text = json.dumps(self.records(), ensure_ascii=False, indent=1, default=str)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def __repr__(self) -> str:
        lines = [f"GridResult({len(self.rows)} cells)"]
        for r in self.rows:
            what = r["error"] or repr(r["answer"][:60])
            lines.append(f"  {r['image']} | {r['prompt']} | {r['setting']}: {what}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        shown = ("image", "prompt", "setting", "answer", "tiles", "prompt_tokens", "new_tokens",
                 "ttft_s", "tokens_per_s")  # fmt: skip
        head = "".join(f"<th>{c}</th>" for c in shown)
        body = []
        for r in self.rows:
            cells = []
            for c in shown:
                value = r.get(c)
                if c == "image":
                    cells.append(
                        f"<td>{_thumb(self.thumbnails.get(value))}<br>{html.escape(str(value))}</td>"
                    )
                elif c == "answer":
                    text = (
                        r["error"]
                        and f"<span style='color:#dc2626'>{html.escape(r['error'])}</span>"
                    )
                    text = text or html.escape(str(value))
                    cells.append(
                        f"<td style='text-align:left;white-space:pre-wrap;max-width:420px'>{text}</td>"
                    )
                elif isinstance(value, float):
                    cells.append(f"<td>{value:.3g}</td>")
                else:
                    cells.append(f"<td>{html.escape(str(value if value is not None else ''))}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _thumb(image: Any, size: int = 72) -> str:
    if image is None:
        return ""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f"<img src='data:image/png;base64,{data}' style='height:{size}px'/>"


def _grid_images(images: Any) -> dict[str, Any]:
    if isinstance(images, Mapping):
        named = {str(k): v for k, v in images.items()}
    else:
        if isinstance(images, (str, Path)) or not isinstance(images, Sequence):
            images = [images]
        named = {}
        for i, item in enumerate(images):
            name = _image_name(item, i)
            named[name if name not in named else f"{name}#{i + 1}"] = item
    if not named:
        raise ValueError("images is empty; expected at least one entry.")
    return named


def _image_name(item: Any, index: int) -> str:
    if item is None:
        return "(no image)"
    if isinstance(item, (str, Path)):
        return Path(item).name
    source = getattr(item, "source", None)
    return Path(str(source)).name if source else f"image {index + 1}"


def _thumbnail(item: Any, size: int = 96) -> Any:
    from PIL import Image

    pil = getattr(item, "image", None)
    if pil is None and isinstance(item, (str, Path)):
        try:
            pil = Image.open(item)
            pil.load()
        except Exception:
            return None
    if pil is None and isinstance(item, Image.Image):
        pil = item
    if pil is None:
        return None
    thumb = pil.copy()
    thumb.thumbnail((size, size))
    return thumb


def prompt_grid(
    model: VLModel,
    *,
    images: Any,
    prompts: Any,
    settings: Any = None,
    progress: bool = True,
) -> GridResult:
    """Ask every prompt about every image under every setting: an unlabelled, unstored
    :class:`Experiment` whose prompts are the questions themselves.

    ``images``: a list (or name -> item dict) of paths, PIL images, TiledImages, tensors or None
    (text only). ``prompts``: a list (or dict) of questions. ``settings``: a list (or dict) of
    option dicts, e.g. ``[{"max_num": 1}, {"max_num": 6}, {"do_sample": True, "temperature": 0.7,
    "seed": 0}]``; default one setting with the model's defaults. A cell that fails on input
    (e.g. the context budget) records its error and the grid goes on.
    """
    named_images = _grid_images(images)
    named_prompts = _named(prompts, "prompts")
    for name, text in named_prompts.items():
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"prompt {name!r} is {text!r}; expected a non-empty question.")
    named_settings = _named([{}] if settings is None else settings, "settings")
    for name, s in named_settings.items():
        if not isinstance(s, Mapping):
            raise TypeError(f"setting {name!r} is {s!r}; expected a dict of Chat options.")
    samples = [
        {"name": name, "image": [] if item is None else [item], "question": ""}
        for name, item in named_images.items()
    ]
    exp = Experiment(
        samples,
        prompts={k: v.replace("{", "{{").replace("}", "}}") for k, v in named_prompts.items()},
        settings={k: {"max_num": model.max_num, **s} for k, s in named_settings.items()},
    )
    results = exp.run(model, progress=progress).results
    rows = []
    for r in results.to_dict(orient="records"):
        error = r["error"] or ""
        seconds = float(r["seconds"] or 0.0)
        tokens = None if error else int(r["tokens"])
        max_new = exp.settings[r["setting"]]["generation"].get("max_new_tokens")
        row = {
            "image": r["sample"],
            "prompt": r["prompt"],
            "setting": r["setting"],
            "question": named_prompts[r["prompt"]],
            "settings": dict(named_settings[r["setting"]]),
            "answer": r["answer"] or "",
            "error": error,
        }
        if not error:
            row.update(
                tiles=int(r["tiles"]),
                prompt_tokens=int(r["prompt_tokens"]),
                new_tokens=tokens,
                ttft_s=round(seconds, 4),
                tokens_per_s=round(tokens / seconds, 2) if seconds else 0.0,
                total_s=round(seconds, 4),
                finish_reason="length" if max_new is not None and tokens >= max_new else "stop",
            )
        rows.append(row)
    thumbnails = {n: t for n, item in named_images.items() if (t := _thumbnail(item)) is not None}
    return GridResult(tuple(rows), thumbnails)
