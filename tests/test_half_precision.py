"""The chat, cache, batch and attention claims in bfloat16 on the CPU, as a GPU user runs them.

Which equalities hold only in float32, and the tolerances used here instead (README, "Half
precision"):

- cached against recomputed turns, batched against single answers: in float32 the logits agree
  to 1e-5 and the greedy answers are equal. In bfloat16 (8 significant bits) a different
  computation order (a cached prefix, left padding) may move a logit by a few units of the last
  place, so the tests compare the next-token logits within ``LOGIT_TOL`` of the logit scale
  (``max |logit|``) and the greedy answers on their first ``FIRST_K`` tokens.
- attention capture: scores and softmax are float32 whatever the model's dtype, so every row
  sums to 1 within 1e-5 in bfloat16 too; bfloat16 rows agree with float32 rows within
  ``ROW_TOL`` (absolute), the image maps within ``MAP_TOL`` (relative to their peak).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vltools.chat import Chat, model_batch_chat, model_chat
from vltools.model_building import cache_kwargs
from vltools.prompts import render_prompt

LOGIT_TOL = 0.05  # of max |logit|; measured on the tiny model: 0 (cache), 0.006 (padding)
FIRST_K = 4  # greedy answers compared on their first 4 tokens
ROW_TOL = 2e-3  # attention rows, bfloat16 against float32; measured 3.6e-4
MAP_TOL = 0.05  # image maps, relative to their peak; measured 0.007
GEN = {"max_new_tokens": 6, "do_sample": False}


@pytest.fixture(scope="module")
def bf16_model(tiny_path):
    from vltools.models import load_model

    return load_model(str(tiny_path), device="cpu", dtype="bfloat16", attn_implementation="sdpa")


def _pixels(tiles: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tiles, 3, 448, 448, generator=g)


def _first_tokens(model, text: str) -> list[int]:
    return model.tokenizer(text, add_special_tokens=False).input_ids[:FIRST_K]


def _close(got: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= LOGIT_TOL * scale


def test_the_bf16_model_runs_in_bf16_with_sdpa(bf16_model):
    assert bf16_model.dtype == torch.bfloat16
    assert bf16_model.model.config.text_config._attn_implementation == "sdpa"


def test_cached_and_recomputed_turns_agree_within_the_stated_tolerance_in_bf16(bf16_model):
    m = bf16_model
    pixels = _pixels(3, 1).to(torch.bfloat16)
    first = render_prompt("Describe.", num_patches_list=[3]).text
    second = render_prompt(
        "What else?", history=[("<image>\nDescribe.", "A cat on a mat.")], num_patches_list=[3]
    ).text
    ids1 = m.tokenizer(first, return_tensors="pt").input_ids
    ids2 = m.tokenizer(second, return_tensors="pt").input_ids
    differ = torch.nonzero(ids1[0] != ids2[0, : ids1.shape[1]])
    n = int(differ[0]) if len(differ) else ids1.shape[1]  # common prefix length
    assert n > 3 * 256
    with torch.no_grad():
        full = m.model(input_ids=ids2, pixel_values=pixels).logits[0, -1].float()
        prefix = m.model(input_ids=ids2[:, :n], pixel_values=pixels, use_cache=True)
        cached = m.model(input_ids=ids2[:, n:], **cache_kwargs(prefix.past_key_values)).logits[
            0, -1
        ]
    _close(cached.float(), full)
    # the Chat session: three turns with and without the cache
    a, b = _pixels(2, 1), _pixels(1, 2)
    on, off = Chat(m, **GEN), Chat(m, cache=False, **GEN)
    for chat in (on, off):
        chat.ask("Describe the images.", images=[a, b])
        chat.ask("What differs?")
        chat.ask("And this one?", images=[a[:1]])
    assert on.history[1].reply.cached_tokens > 3 * 256
    for x, y in zip(on.history, off.history, strict=True):
        assert _first_tokens(m, x.reply.text) == _first_tokens(m, y.reply.text)


def test_batched_and_single_answers_agree_within_the_stated_tolerance_in_bf16(bf16_model):
    m = bf16_model
    pixels = torch.cat([_pixels(2, 1), _pixels(1, 2), _pixels(1, 3)])
    questions = ["Compare them.", "What is it?", "Tell me a joke."]
    batch = model_batch_chat(m, pixels, questions, GEN, num_patches_list=[[2, 1], 1, 0])
    singles = [
        model_chat(m, pixels[:3], "Image-1: <image>\nImage-2: <image>\nCompare them.", GEN,
                   num_patches_list=[2, 1]),
        model_chat(m, pixels[3:], "What is it?", GEN),
        model_chat(m, None, "Tell me a joke.", GEN),
    ]  # fmt: skip
    for got, expected in zip(batch, singles, strict=True):
        assert _first_tokens(m, got) == _first_tokens(m, expected)
    # the logits of a left-padded row against the same prompt alone
    long = render_prompt("Describe.", num_patches_list=[3]).text
    short = render_prompt("Hi.").text
    tok, side = m.tokenizer, m.tokenizer.padding_side
    try:
        tok.padding_side = "left"
        enc = tok([long, short], return_tensors="pt", padding=True)
    finally:
        tok.padding_side = side
    with torch.no_grad():
        padded = m.model(
            input_ids=enc.input_ids,
            attention_mask=enc.attention_mask,
            pixel_values=_pixels(3, 1).to(torch.bfloat16),
        ).logits[1, -1]
        alone = m.model(input_ids=tok(short, return_tensors="pt").input_ids).logits[0, -1]
    _close(padded.float(), alone.float())


def test_attention_capture_scores_in_float32_in_a_bf16_model(bf16_model, tiny_model):
    from vltools.attention import capture
    from vltools.data import sample
    from vltools.images import load_image

    tiled = load_image(sample("photo_coffee.jpg"), max_num=2)
    answer = [11, 12, 13, 14]
    maps = {}
    for name, model in (("bf16", bf16_model), ("fp32", tiny_model)):
        with capture(model, tiled) as cap:
            maps[name] = cap.teacher_force("Describe.", answer)
    half, full = maps["bf16"], maps["fp32"]
    assert half.weights.dtype == np.float32 and half.vision.cls.dtype == np.float32
    # a bfloat16 softmax would miss 1 by ~1e-3; float32 scores and softmax keep 1e-5
    np.testing.assert_allclose(half.weights.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(half.weights, full.weights, atol=ROW_TOL, rtol=0)
    np.testing.assert_allclose(half.vision.cls, full.vision.cls, atol=ROW_TOL, rtol=0)
    peak = full.image_attention().max()
    assert np.abs(half.image_attention() - full.image_attention()).max() <= MAP_TOL * peak
    # a generation captured in bf16: the same float32 rows, one per generated token
    with capture(bf16_model, tiled, vision=False) as cap:
        cap.generate("Describe.", max_new_tokens=3, min_new_tokens=3)
    assert cap.maps.weights.shape[0] == 3 and cap.maps.weights.dtype == np.float32
    np.testing.assert_allclose(cap.maps.weights.sum(-1), 1.0, atol=1e-5)


def test_float16_overflow_is_reported_not_silent(tiny_path):
    import warnings

    from vltools.models import load_model
    from vltools.precision import Float16OverflowWarning, activation_peaks

    m = load_model(str(tiny_path), device="cpu", dtype="float16")
    ids = m.tokenizer(render_prompt("Hello there.").text, return_tensors="pt").input_ids
    with warnings.catch_warnings():
        warnings.simplefilter("error", Float16OverflowWarning)
        with torch.no_grad():
            m.model(input_ids=ids)  # the random tiny model stays far below 65,504
    peaks = activation_peaks(m, input_ids=ids)
    assert peaks.dtype == "float16" and peaks.float16_headroom > 10
    down = m.model.model.language_model.layers[0].mlp.down_proj
    with torch.no_grad():
        down.weight.mul_(1e5)  # an MLP output beyond float16's range
    try:
        with pytest.warns(Float16OverflowWarning, match="bfloat16"), torch.no_grad():
            m.model(input_ids=ids)
    finally:
        with torch.no_grad():
            down.weight.div_(1e5)


def test_the_gpu_check_says_there_is_no_cuda_and_exits_0():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu"], capture_output=True, text=True, cwd=repo, env=env
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["cuda"] is False and "No CUDA device" in report["message"]


def test_scored_rows_are_the_float32_softmax_of_the_selected_causal_rows_from_bf16_inputs():
    from types import SimpleNamespace

    from vltools.attention import scored_rows

    g = torch.Generator().manual_seed(0)
    q = (torch.randn(1, 4, 6, 8, generator=g) * 4).to(torch.bfloat16)  # 4 query heads
    k = (torch.randn(1, 2, 9, 8, generator=g) * 4).to(torch.bfloat16)  # 2 key/value heads, 9 keys
    rows = scored_rows(SimpleNamespace(), q, k, None, 8**-0.5, slice(3, 6))
    assert rows.dtype == torch.float32 and rows.shape == (1, 4, 3, 9)
    # reference in float64 from the same bf16 values: query i of 6 sees keys 0 .. 3 + i
    kk = k.double().repeat_interleave(2, dim=1)
    scores = q.double()[:, :, 3:6] @ kk.transpose(2, 3) * 8**-0.5
    visible = torch.arange(9)[None, :] <= (3 + torch.arange(3, 6))[:, None]
    expected = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    torch.testing.assert_close(rows.double(), expected, atol=1e-6, rtol=0)
    # a boolean mask (a padded key) is applied on top of causality
    mask = torch.ones(1, 1, 6, 9, dtype=torch.bool)
    mask[..., 0] = False
    masked = scored_rows(SimpleNamespace(), q, k, mask, 8**-0.5, slice(5, 6))
    assert float(masked[..., 0].abs().max()) == 0.0
    torch.testing.assert_close(masked.sum(-1), torch.ones(1, 4, 1))
