"""Torch dtypes by name: the one place a dtype name ("bf16", "float32", ...) becomes a dtype.

Used by the loader (:func:`vltools.models.load_model`) and by the results that move their
pixels (``TiledImage.to``, ``VideoClip.to``), which need no model loader for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vltools._optional import require

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["resolve_dtype"]

_DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    """``dtype`` as a torch floating dtype; ``None`` picks one for ``device``.

    bf16 on CUDA devices that support it, fp16 on older CUDA devices and on MPS, fp32 on CPU.
    """
    torch = require("torch", purpose="Choosing a dtype")
    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    if isinstance(dtype, str):
        name = _DTYPE_NAMES.get(dtype.lower().removeprefix("torch."))
        if name is None:
            raise ValueError(
                f"dtype={dtype!r} is not a torch dtype name vltools supports; use one of 'float32', 'bfloat16', 'float16' "
                "(or a torch dtype), or None for the device's default."
            )
        return getattr(torch, name)
    if isinstance(dtype, torch.dtype) and dtype in (torch.float32, torch.bfloat16, torch.float16):
        return dtype
    raise TypeError(
        f"dtype={dtype!r} is not supported; pass torch.float32, torch.bfloat16, torch.float16, "
        "their names as strings, or None."
    )
