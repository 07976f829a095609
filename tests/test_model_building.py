"""The loader's transformers seams: buffers computed at load are checked against fresh ones.

These tests (with test_models.py and test_models_exactness.py) also run against the oldest
transformers pyproject.toml allows: ``make test-oldest``.
"""

from __future__ import annotations

import pytest
import torch

from vltools import model_building
from vltools.models import load_model


def test_every_computed_buffer_of_a_loaded_model_equals_a_fresh_one(tiny_model):
    rotary = tiny_model.language_model.rotary_emb
    fresh = type(rotary)(rotary.config)
    assert torch.equal(rotary.inv_freq, fresh.inv_freq)
    model_building.check_computed_buffers(tiny_model.model)  # raises on any difference


def test_the_check_names_a_corrupted_rotary_buffer(tiny_path):
    vlm = load_model(str(tiny_path), device="cpu", dtype="float32")  # its own copy to corrupt
    vlm.language_model.rotary_emb.inv_freq[1] += 1e-6
    with pytest.raises(RuntimeError, match=r"rotary_emb\.inv_freq after loading differs"):
        model_building.check_computed_buffers(vlm.model)


def test_a_load_whose_buffers_were_never_computed_fails(tiny_path, monkeypatch):
    def skip(model):  # as if transformers stopped computing buffers in initialize_weights
        with torch.no_grad():
            for _, buf in model.named_buffers():
                buf.fill_(0.5)

    monkeypatch.setattr("transformers.InternVLForConditionalGeneration.initialize_weights", skip)
    with pytest.raises(RuntimeError, match="differs from the value transformers"):
        load_model(str(tiny_path), device="cpu", dtype="float32")


def test_a_computed_buffer_that_cannot_be_rebuilt_is_refused_not_skipped():
    module = torch.nn.Module()
    module.register_buffer("table", torch.arange(3.0), persistent=False)
    with pytest.raises(RuntimeError, match=r"table.*cannot check.*keeps no config"):
        model_building.check_computed_buffers(module)


def test_a_bfloat16_load_passes_the_check_with_rope_in_float32(tiny_path):
    vlm = load_model(str(tiny_path), device="cpu", dtype="bfloat16")
    assert vlm.language_model.rotary_emb.inv_freq.dtype == torch.float32
    model_building.check_computed_buffers(vlm.model)


def test_set_parameter_refuses_a_name_the_model_does_not_have(tiny_model):
    with pytest.raises(KeyError, match="no_such"):
        model_building.set_parameter(tiny_model.model, "lm_head.no_such", torch.zeros(1))


def test_the_cache_goes_under_the_name_the_installed_forward_reads():
    import inspect

    import transformers

    (name,) = model_building.cache_kwargs(None)
    forward = transformers.InternVLForConditionalGeneration.forward
    assert name in inspect.signature(forward).parameters
