"""vltools: a Jupyter-centric research toolkit around InternVL2-1B.

The dozen names a notebook needs are re-exported here; everything else is reachable by
module (``vltools.tiling``, ``vltools.images``, ``vltools.video``, ``vltools.models``, ``vltools.prompts``,
``vltools.chat``, ``vltools.attention``, ``vltools.viz``, ``vltools.widgets``,
``vltools.testing``).

``import vltools`` is cheap: nothing heavy (torch, transformers, decord, av, ipywidgets,
matplotlib) is imported until a name that needs it is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "plan_tiles": "tiling",
    "TileGrid": "tiling",
    "load_image": "images",
    "TiledImage": "images",
    "sample_frame_indices": "video",
    "load_video": "video",
    "VideoClip": "video",
    "load_model": "models",
    "VLModel": "models",
    "render_prompt": "prompts",
    "Chat": "chat",
    "Reply": "chat",
    "prompt_grid": "experiments",
    "GridResult": "experiments",
    "Experiment": "experiments",
    "ExperimentResult": "results",
    "AttentionMaps": "attention",
    "tiny_checkpoint": "testing",
}
# what every notebook reaches for (issue 16): attention capture, the samples, stacking inputs
_EXPORTS.update(capture="attention", sample="data", charts="data", stack="inputs", Stacked="inputs")
_SUBMODULES = (
    "attention",
    "attention_maps",
    "card",
    "chat",
    "checkpoints",
    "constants",
    "conversion",
    "data",
    "decoding",
    "dtypes",
    "experiments",
    "generation",
    "metrics",
    "images",
    "models",
    "prompts",
    "results",
    "dataset",
    "cluster",
    "store",
    "cells",
    "testing",
    "tiling",
    "video",
    "viz",
    "widgets",
)
_SUBMODULES += ("inputs", "timing")

__all__ = [*_EXPORTS, *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"vltools.{_EXPORTS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"vltools.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'vltools' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # pragma: no cover - for editors and type checkers only
    from vltools.attention import AttentionMaps  # noqa: F401
    from vltools.chat import Chat, Reply  # noqa: F401
    from vltools.experiments import Experiment, GridResult, prompt_grid  # noqa: F401
    from vltools.images import TiledImage, load_image  # noqa: F401
    from vltools.models import VLModel, load_model  # noqa: F401
    from vltools.prompts import render_prompt  # noqa: F401
    from vltools.results import ExperimentResult  # noqa: F401
    from vltools.testing import tiny_checkpoint  # noqa: F401
    from vltools.tiling import TileGrid, plan_tiles  # noqa: F401
    from vltools.video import VideoClip, load_video, sample_frame_indices  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover - issue 16's top-level names
    from vltools.attention import capture  # noqa: F401
    from vltools.data import charts, sample  # noqa: F401
    from vltools.inputs import Stacked, stack  # noqa: F401
