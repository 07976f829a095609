"""Prompt experiments: every combination of images, prompt variants and generation settings.

:func:`prompt_grid` asks each prompt about each image under each setting (a fresh single-turn
:class:`~vltools.chat.Chat` per cell, so cells do not see each other) and returns a
:class:`GridResult`: a table with image thumbnails in notebooks, and CSV/JSON export. Settings
are dicts of ``Chat`` options: ``max_num`` (tiles per image), ``system_message``, any generate
option (``max_new_tokens``, ``do_sample``, ``temperature``, ...) and ``seed`` (set before the
cell runs, for reproducible sampling). Each image is tiled once per ``max_num``.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vltools._optional import require

if TYPE_CHECKING:  # pragma: no cover
    from vltools.models import VLModel

__all__ = ["prompt_grid", "GridResult", "COLUMNS"]

# Columns of every row, in table order.
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


def _named(items: Any, kind: str, prefix: str) -> dict[str, Any]:
    if isinstance(items, Mapping):
        named = {str(k): v for k, v in items.items()}
    elif isinstance(items, (str, Path)) or not isinstance(items, Sequence):
        named = {_name_of(items, 0, prefix): items}
    else:
        named = {}
        for i, item in enumerate(items):
            name = _name_of(item, i, prefix)
            named[name if name not in named else f"{name}#{i + 1}"] = item
    if not named:
        raise ValueError(f"{kind} is empty; expected at least one entry.")
    return named


def _name_of(item: Any, index: int, prefix: str) -> str:
    if item is None:
        return "(no image)" if prefix == "image" else f"{prefix} {index + 1}"
    if isinstance(item, (str, Path)) and prefix == "image":
        return Path(item).name
    source = getattr(item, "source", None)
    if prefix == "image" and source:
        return Path(str(source)).name
    return f"{prefix} {index + 1}"


def prompt_grid(
    model: VLModel,
    *,
    images: Any,
    prompts: Any,
    settings: Any = None,
    progress: bool = True,
) -> GridResult:
    """Ask every prompt about every image under every setting; one fresh chat per cell.

    ``images``: a list (or name -> item dict) of paths, PIL images, TiledImages or None (text
    only). ``prompts``: a list (or dict) of questions. ``settings``: a list (or dict) of option
    dicts, e.g. ``[{"max_num": 1}, {"max_num": 6}, {"do_sample": True, "temperature": 0.7,
    "seed": 0}]``; default one setting with the model's defaults. A cell that fails on input
    (e.g. the context budget) records its error and the grid goes on.
    """
    torch = require("torch", purpose="Prompt experiments")
    from vltools.chat import Chat, ContextBudgetError

    named_images = _named(images, "images", "image")
    named_prompts = _named(prompts, "prompts", "prompt")
    for name, text in named_prompts.items():
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"prompt {name!r} is {text!r}; expected a non-empty question.")
    named_settings = _named([{}] if settings is None else settings, "settings", "setting")
    for name, s in named_settings.items():
        if not isinstance(s, Mapping):
            raise TypeError(f"setting {name!r} is {s!r}; expected a dict of Chat options.")
    cells = [(i, p, s) for i in named_images for p in named_prompts for s in named_settings]
    tiled_cache: dict[tuple[str, int], Any] = {}
    thumbnails: dict[str, Any] = {}
    rows = []
    bar = None
    if progress:
        tqdm = require("tqdm.auto", purpose="The prompt grid's progress bar")
        bar = tqdm.tqdm(total=len(cells), desc="prompt grid", leave=True)
    try:
        for image_name, prompt_name, setting_name in cells:
            options = dict(named_settings[setting_name])
            seed = options.pop("seed", None)
            max_num = int(options.pop("max_num", model.max_num))
            system = options.pop("system_message", None)
            row: dict[str, Any] = {
                "image": image_name,
                "prompt": prompt_name,
                "setting": setting_name,
                "question": named_prompts[prompt_name],
                "settings": dict(named_settings[setting_name]),
                "answer": "",
                "error": "",
            }
            try:
                image = _tiled(named_images[image_name], max_num, tiled_cache, image_name)
                if image is not None and image_name not in thumbnails:
                    thumbnails[image_name] = _thumbnail(image)
                if seed is not None:
                    torch.manual_seed(int(seed))
                chat = Chat(model, system_message=system, max_num=max_num, **options)
                reply = chat.ask(
                    named_prompts[prompt_name], images=None if image is None else [image]
                )
                row.update(
                    answer=reply.text,
                    tiles=sum(reply.prompt.num_patches_list),
                    prompt_tokens=reply.prompt_tokens,
                    new_tokens=reply.new_tokens,
                    ttft_s=round(reply.ttft_s, 4),
                    tokens_per_s=round(reply.tokens_per_s, 2),
                    total_s=round(reply.total_s, 4),
                    finish_reason=reply.finish_reason,
                )
            except (ContextBudgetError, ValueError, TypeError, FileNotFoundError) as e:
                row["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
            rows.append(row)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return GridResult(tuple(rows), thumbnails)


def _tiled(item: Any, max_num: int, cache: dict, name: str) -> Any:
    """The item tiled at ``max_num`` (once per image and max_num); tensors pass through."""
    if item is None:
        return None
    if hasattr(item, "pixel_values") and hasattr(item, "grid"):
        return item  # a TiledImage keeps its own tiling
    torch = require("torch", purpose="Prompt experiments")
    if isinstance(item, torch.Tensor):
        return item
    key = (name, max_num)
    if key not in cache:
        from vltools.images import load_image

        cache[key] = load_image(item, max_num=max_num)
    return cache[key]


def _thumbnail(image: Any, size: int = 96) -> Any:
    pil = getattr(image, "image", None)
    if pil is None:
        return None
    thumb = pil.copy()
    thumb.thumbnail((size, size))
    return thumb
