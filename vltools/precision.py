"""Half precision: what runs in which dtype, and a guard against silent float16 overflow.

A GPU user runs bfloat16 (``load_model`` picks it on CUDA devices that support it); older CUDA
devices and Apple's MPS fall back to float16, whose largest finite value is 65,504 (bfloat16
keeps float32's range). In the Qwen2 language model the parts at risk are the ones whose values
are not normalised:

- the residual stream between layers (summed over 24 layers; large language models grow a few
  "massive activation" channels of hundreds to thousands, and an overflow there turns into
  ``inf`` and then ``NaN`` after the next RMSNorm);
- the MLP's ``act(gate) * up`` product and ``down_proj`` output (4,864 wide);
- the attention scores ``q . k / 8`` (Qwen2 has biases on q/k/v, which can make ``|q|`` large).

RMSNorm already computes its variance in float32 (transformers' ``Qwen2RMSNorm``), SDPA kernels
accumulate in float32, and vltools' attention capture scores in float32
(:mod:`vltools.attention`). What is left is the residual stream and the MLP, stored in float16.
Rather than slow every layer down with checks (each one a device synchronisation),
:func:`install_float16_guard` checks the logits once per forward (generation synchronises per
step anyway): an overflow anywhere upstream reaches the logits as ``inf``/``NaN``, and the guard
warns once, naming the fix (bfloat16 or float32). :func:`activation_peaks` measures how close a
model comes to the limit on a given input, per layer.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FLOAT16_MAX",
    "ActivationPeaks",
    "Float16OverflowWarning",
    "activation_peaks",
    "install_float16_guard",
]

FLOAT16_MAX = 65504.0


class Float16OverflowWarning(RuntimeWarning):
    """The model produced non-finite logits in float16."""


def install_float16_guard(model: Any) -> Any:
    """Warn (once per model) when a float16 forward produces non-finite logits.

    ``model``: a VLModel or the native model. Returns the hook handle (``.remove()`` undoes it).
    """
    native = model.model if hasattr(model, "tokenizer") else model
    state = {"warned": False}

    def check(module: Any, args: Any, output: Any) -> None:
        if state["warned"] or output.dtype.is_floating_point is False:
            return
        if not bool(output.isfinite().all()):
            state["warned"] = True
            warnings.warn(
                "float16 overflow: the model produced inf/NaN logits, so its answer is garbage. "
                "float16's largest value is 65,504 and Qwen2's residual stream or MLP exceeded "
                "it. Load with dtype='bfloat16' (any GPU with bf16, or the CPU) or "
                "dtype='float32'.",
                Float16OverflowWarning,
                stacklevel=2,
            )

    return native.lm_head.register_forward_hook(check)


@dataclass(frozen=True)
class ActivationPeaks:
    """Largest absolute values seen in one forward pass, per language-model layer.

    Attributes:
        residual: ``[layers]`` max ``|hidden state|`` after each decoder layer.
        mlp: ``[layers]`` max ``|down_proj output|`` of each layer's MLP.
        dtype: the model's dtype during the pass.
    """

    residual: tuple[float, ...]
    mlp: tuple[float, ...]
    dtype: str

    @property
    def peak(self) -> float:
        return max(max(self.residual), max(self.mlp))

    @property
    def float16_headroom(self) -> float:
        """``FLOAT16_MAX / peak``: how many times larger the values could grow in float16."""
        return FLOAT16_MAX / self.peak if self.peak > 0 else float("inf")

    def __repr__(self) -> str:
        worst = max(range(len(self.residual)), key=lambda i: self.residual[i])
        return (
            f"ActivationPeaks({len(self.residual)} layers, {self.dtype}: peak {self.peak:.4g} "
            f"(residual max at layer {worst}), float16 headroom {self.float16_headroom:.3g}x)"
        )


def activation_peaks(model: Any, **inputs: Any) -> ActivationPeaks:
    """Run one forward pass of ``model`` (VLModel or native) on ``inputs``; see the class."""
    from vltools._optional import require

    torch = require("torch", purpose="Measuring activations")
    native = model.model if hasattr(model, "tokenizer") else model
    layers = native.model.language_model.layers
    residual = [0.0] * len(layers)
    mlp = [0.0] * len(layers)
    handles = []

    def keep(store: list[float], i: int) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            store[i] = max(store[i], float(out.detach().abs().float().max()))

        return hook

    try:
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(keep(residual, i)))
            handles.append(layer.mlp.down_proj.register_forward_hook(keep(mlp, i)))
        with torch.no_grad():
            native(**inputs)
    finally:
        for h in handles:
            h.remove()
    dtype = str(next(native.parameters()).dtype).removeprefix("torch.")
    return ActivationPeaks(tuple(residual), tuple(mlp), dtype)
