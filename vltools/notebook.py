"""The notebooks' shared setup cell: versions, device, the model from ``VLTOOLS_MODEL``.

Every notebook opens with::

    import vltools
    from vltools.notebook import setup
    env = setup(default="toy")
    env

``setup(default=...)`` loads the model named by the ``VLTOOLS_MODEL`` environment variable or,
when it is unset, the notebook's own ``default``: ``"toy"`` (the offline checkpoint trained on
synthetic shapes) where a trained model teaches something, ``"tiny"`` (offline, random weights)
where the mechanics are the point. Without ``default`` it is ``OpenGVLab/InternVL2-1B``. It
returns a :class:`Setup` whose notebook display lists the versions, the device and dtype, and a
visible banner saying what the offline model in use can and cannot do.
"""

from __future__ import annotations

import html
import logging
import os
import platform
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vltools.constants import DEFAULT_MODEL, MODEL_ENV

if TYPE_CHECKING:  # pragma: no cover
    from vltools.models import VLModel

TINY_WARNING = (
    "This notebook runs on the TINY offline model: random weights at the real geometry. "
    "Tiles, frames, prompts, token counts and timings are real; every answer is random text. "
    f"Set {MODEL_ENV}=OpenGVLab/InternVL2-1B (or a local directory) for the real model."
)


TOY_NOTE = (
    "This notebook runs on the TOY offline model: a small InternVL2 at the real geometry, trained "
    "on this project's synthetic scenes (one to four coloured circles, squares, triangles and "
    "stars on textured backgrounds) to answer one-word questions about them (colour, shape, how "
    "many, left/right/above/below, is there a ...). How often it is right, and where its "
    "attention lands, is measured in its model card (vltools/checkpoints_data/toy/MODEL_CARD.md). "
    "It knows nothing else: about a real photo its answers are meaningless. "
    f"Set {MODEL_ENV}=OpenGVLab/InternVL2-1B (or a local directory) for the real model."
)


@dataclass(frozen=True)
class Setup:
    """What a notebook runs with. ``model`` is ``None`` for notebooks that need none."""

    model_name: str | None
    model: VLModel | None
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def is_tiny(self) -> bool:
        """True when the model is the offline tiny checkpoint (its answers are random text)."""
        return self.model_name is not None and _is_tiny(self.model_name)

    @property
    def is_toy(self) -> bool:
        """True when the model is the offline toy checkpoint (it knows synthetic shapes only)."""
        return self.model_name == "toy"

    @property
    def note(self) -> str | None:
        """What the offline model in use can and cannot do, or None for a real checkpoint."""
        if self.is_tiny:
            return TINY_WARNING
        if self.is_toy:
            return TOY_NOTE
        return None

    def _rows(self) -> list[tuple[str, str]]:
        rows = list(self.versions.items())
        if self.model is not None:
            rows += [
                ("model", str(self.model_name)),
                ("device", str(self.model.device)),
                ("dtype", str(self.model.dtype).replace("torch.", "")),
                ("attention", str(self.model.attn_implementation)),
            ]
        return rows

    def __repr__(self) -> str:
        lines = [f"{k}: {v}" for k, v in self._rows()]
        if self.is_tiny:
            lines.append("WARNING: " + TINY_WARNING)
        elif self.is_toy:
            lines.append("NOTE: " + TOY_NOTE)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        cells = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
            f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
            for k, v in self._rows()
        )
        warning = ""
        if self.is_tiny:
            warning = (
                "<div style='background:#fff3cd;border:1px solid #e0b100;padding:6px 10px;"
                f"margin-top:6px'><b>⚠ Tiny random model.</b> {html.escape(TINY_WARNING)}</div>"
            )
        elif self.is_toy:
            warning = (
                "<div style='background:#e8f4fd;border:1px solid #3b8ed0;padding:6px 10px;"
                f"margin-top:6px'><b>Toy model.</b> {html.escape(TOY_NOTE)}</div>"
            )
        return f"<table>{cells}</table>{warning}"


def _is_tiny(name: str) -> bool:
    return name == "tiny"


def versions() -> dict[str, str]:
    """Versions of Python and of the packages the notebooks depend on (those installed)."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for package in ("vltools", "torch", "transformers", "pillow", "ipywidgets"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def chosen_model(*, name: str | None = None, default: str = DEFAULT_MODEL) -> str:
    """The model a notebook loads: ``name``, else ``VLTOOLS_MODEL``, else ``default``.

    An empty ``VLTOOLS_MODEL`` counts as unset.

    >>> chosen_model(name="tiny", default="toy")
    'tiny'
    """
    if not isinstance(default, str) or not default:
        raise ValueError(
            f"default={default!r} is not a model name; use 'toy', 'tiny', a Hub id or a "
            "local directory."
        )
    return name or os.environ.get(MODEL_ENV) or default


def setup(*, model: bool = True, name: str | None = None, default: str = DEFAULT_MODEL) -> Setup:
    """Load the notebook's model (unless ``model=False``) and collect versions and device.

    The model is ``name`` if given, else the one ``VLTOOLS_MODEL`` names, else ``default``
    (see :func:`chosen_model`): a notebook states its own default (``setup(default="toy")``) and
    the environment variable still chooses. Displaying the result shows the versions, the
    device and, for the offline models, what they can do (``tiny``: random text; ``toy``:
    synthetic shapes only).
    """
    if not model:
        return Setup(model_name=None, model=None, versions=versions())
    from vltools.models import load_model

    chosen = chosen_model(name=name, default=default)
    loaded = load_model(chosen)
    env = Setup(model_name=chosen, model=loaded, versions=versions())
    if env.note is not None:
        logging.getLogger(__name__).info(env.note)
    return env
