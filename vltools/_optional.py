"""Lazy imports of optional or heavy dependencies, with an ImportError that says what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

# module name -> the pip requirement that provides it
_PROVIDERS: dict[str, str] = {
    "torch": "torch",
    "torchvision": "torchvision",
    "transformers": "transformers>=5.20",
    "decord": "decord",
    "av": "av",
    "matplotlib": "matplotlib",
    "ipywidgets": "ipywidgets",
    "safetensors": "safetensors",
    "huggingface_hub": "huggingface_hub",
    "tokenizers": "tokenizers",
    "tqdm": "tqdm",
}


def require(module: str, *, purpose: str) -> ModuleType:
    """Import ``module`` or raise an ImportError naming the package to install and why."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        package = _PROVIDERS.get(top, top)
        raise ImportError(
            f"{purpose} needs the '{top}' package, which is not installed. "
            f"Install it with: pip install '{package}' (or pip install -e . in a vltools checkout)."
        ) from e
