"""Building transformers' native model around weights vltools reads itself: the one place that
relies on transformers internals.

Why internals at all: an original InternVL2 checkpoint is converted while it loads, tensor by
tensor (:mod:`vltools.conversion`), so that the weights exist once (copy-on-write views of the
memory-mapped file on the CPU). transformers' public ``from_pretrained`` reads only its own
format and ``from_config`` allocates and randomly initialises every weight first, a second copy.
So the loader

- builds the model on the meta device with ``PreTrainedModel._from_config`` (the dtype and
  attention implementation set as ``from_pretrained`` sets them): :func:`empty_model`;
- marks every parameter it places with transformers' ``_is_hf_initialized`` flag, so that
  ``initialize_weights`` leaves it alone: :func:`set_parameter`;
- materialises the buffers that are not in any checkpoint (rotary ``inv_freq``) with
  ``empty_like`` and lets ``initialize_weights`` compute them from the config:
  :func:`finish_model`;
- marks a generation config read from JSON as ``from_pretrained`` marks it
  (``_original_object_hash``): :func:`mark_generation_config`;
- hands a key/value cache to ``forward``/``generate`` under the name the installed version
  reads (``cache``; ``past_key_values`` before transformers renamed it, which the newer
  versions still accept with a deprecation warning, and an older one silently ignores a
  misnamed cache): :func:`cache_kwargs`.

These names are private to transformers and may change in any release, so every load ends
with :func:`check_computed_buffers`: each non-persistent buffer must equal the one a fresh
module computes from the same config, or loading fails with an error saying so. The loader
tests run against the oldest transformers ``pyproject.toml`` allows and the newest
(``make test-oldest``).
"""

from __future__ import annotations

import functools
import inspect
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from vltools._optional import require

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "empty_model",
    "set_parameter",
    "finish_model",
    "check_computed_buffers",
    "mark_generation_config",
    "cache_kwargs",
]


def empty_model(config: Any, *, dtype: torch.dtype, attn_implementation: str) -> Any:
    """``InternVLForConditionalGeneration`` for ``config`` with every tensor on the meta device
    (nothing allocated), in ``dtype`` with ``attn_implementation``."""
    torch = require("torch", purpose="Loading a model")
    transformers = require("transformers", purpose="Loading a model")
    with torch.device("meta"):
        return transformers.InternVLForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation=attn_implementation
        )


def set_parameter(model: Any, name: str, tensor: torch.Tensor) -> None:
    """Make ``tensor`` (used as it is, no copy) the parameter ``name`` of ``model``, marked as
    initialised so that ``initialize_weights`` keeps it. KeyError if there is no such one."""
    torch = require("torch", purpose="Loading a model")
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    old = dict(module.named_parameters(recurse=False)).get(attr)
    if old is None:
        raise KeyError(name)
    param = torch.nn.Parameter(tensor, requires_grad=old.requires_grad)
    param._is_hf_initialized = True
    setattr(module, attr, param)


def finish_model(model: Any, device: torch.device) -> None:
    """After every parameter is set: compute the buffers from the config, check them (see
    :func:`check_computed_buffers`) and that nothing is left on the meta device; eval mode."""
    torch = require("torch", purpose="Loading a model")
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            module_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(module_name), attr, torch.empty_like(buf, device=device))
    # transformers' own initialisation recomputes the buffers (e.g. the RoPE frequencies from
    # the config); every parameter is marked as initialised, so none is touched.
    model.initialize_weights()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # pragma: no cover - would be a bug in the plan
        raise RuntimeError(f"these tensors were not loaded: {left[:5]}")
    check_computed_buffers(model)
    model.eval()


def check_computed_buffers(model: Any) -> None:
    """Check every non-persistent buffer of ``model`` (the rotary ``inv_freq``, ...) against a
    fresh module built on the CPU from the same config; RuntimeError naming the first that
    differs, or that cannot be rebuilt to be checked."""
    torch = require("torch", purpose="Loading a model")
    transformers = require("transformers", purpose="Loading a model")
    saved = set(model.state_dict(keep_vars=True))
    owners: dict[str, list[str]] = defaultdict(list)
    for name, _ in model.named_buffers():
        if name not in saved:
            module_name, _, attr = name.rpartition(".")
            owners[module_name].append(attr)
    version = transformers.__version__
    for module_name, attrs in owners.items():
        module = model.get_submodule(module_name)
        config = getattr(module, "config", None)
        where = f"{module_name} ({type(module).__name__})"
        try:
            if config is None:
                raise TypeError("it keeps no config")
            with torch.device("cpu"):
                fresh = type(module)(config)
        except (TypeError, ValueError, RuntimeError) as e:
            raise RuntimeError(
                f"{where} holds computed buffers {attrs} that vltools cannot check after "
                f"loading: a fresh module could not be built from its config ({e}). transformers "
                f"{version} builds this model differently from the versions vltools is tested "
                "with; install a transformers version that pyproject.toml allows."
            ) from e
        for attr in attrs:
            loaded, expected = getattr(module, attr), getattr(fresh, attr, None)
            ok = (
                expected is not None
                and loaded.shape == expected.shape
                and torch.equal(loaded.detach().cpu(), expected.to(loaded.dtype))
            )
            if not ok:
                raise RuntimeError(
                    f"{module_name}.{attr} after loading differs from the value transformers "
                    f"{version} computes from the config (loaded {_summary(loaded)}, fresh "
                    f"{_summary(expected)}); the model would compute wrong positions. The "
                    "loader's use of transformers internals (vltools.model_building) does not "
                    "match this transformers version; install one that pyproject.toml allows."
                )


def mark_generation_config(generation: Any) -> Any:
    """Mark a ``GenerationConfig`` read with ``from_dict`` as ``from_pretrained`` marks one it
    read (so transformers treats it as the checkpoint's own, not as a user's change)."""
    generation._original_object_hash = hash(generation)
    return generation


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for ``model(...)``/``model.generate(...)``, ``name`` being what the
    installed transformers calls the key/value cache (``cache``, or ``past_key_values`` in
    versions before the rename)."""
    return {_cache_name(): cache}


@functools.cache
def _cache_name() -> str:
    transformers = require("transformers", purpose="Generation")
    forward = transformers.InternVLForConditionalGeneration.forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def _summary(tensor: Any) -> str:
    if tensor is None:
        return "none"
    flat = tensor.detach().float().reshape(-1)[:3].tolist()
    return f"{tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')} {flat}..."
