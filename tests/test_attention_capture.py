"""Attention capture on the tiny model: exact against output_attentions, restored afterwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vltools.attention import CAPTURE_ATTENTION, capture, eager_language_model
from vltools.data import sample
from vltools.images import load_image


@pytest.fixture(scope="module")
def photo():
    return load_image(sample("photo_coffee.jpg"), max_num=2)  # 2 x 1 grid + thumbnail


@pytest.fixture(scope="module")
def chart():
    return load_image(sample("chart.png"), max_num=1)  # one tile


def _state(model):
    native = model.model
    hooks = [  # ours; transformers installs output-capturing hooks of its own on first use
        h
        for m in native.modules()
        for h in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]
        if getattr(h, "__module__", "") == "vltools.attention"
    ]
    return (
        native.config.text_config._attn_implementation,
        native.model.language_model.config._attn_implementation,
        native.config.vision_config._attn_implementation,
        len(hooks),
        "generate" in native.__dict__,
    )


def _compact(rows, positions):
    """Full attention rows ``[..., keys]`` as the capture keeps them: image columns, then rest."""
    others = np.ones(rows.shape[-1], dtype=bool)
    others[positions] = False
    return np.concatenate([rows[..., positions], rows[..., others].sum(-1, keepdims=True)], -1)


def _reference_generate(model, cap, question, tokens):
    """Native generate(output_attentions=True) on the same prompt: the naive method."""
    ids, mask = cap._encode(cap.prompt(question))
    with eager_language_model(model), torch.no_grad():
        out = model.model.generate(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=cap._pixel_values(),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            eos_token_id=model.im_end_id,
            pad_token_id=model.im_end_id,
            output_attentions=True,
            return_dict_in_generate=True,
        )
    return ids.shape[1], out


def test_captured_generation_equals_output_attentions_for_every_layer_and_head(tiny_model, photo):
    before = _state(tiny_model)
    with capture(tiny_model, photo) as cap:
        cap.generate("Describe the picture.", max_new_tokens=5, min_new_tokens=5)
        assert tiny_model.model.config.text_config._attn_implementation == CAPTURE_ATTENTION
    maps = cap.maps
    assert _state(tiny_model) == before
    prompt_len, ref = _reference_generate(tiny_model, cap, "Describe the picture.", 5)
    assert maps.prompt_length == prompt_len
    np.testing.assert_array_equal(maps.token_ids, ref.sequences[0, prompt_len:].numpy())
    n_layers = tiny_model.model.config.text_config.num_hidden_layers
    assert maps.weights.shape == (5, n_layers, 4, photo.grid.num_image_tokens + 1)
    for step, per_layer in enumerate(ref.attentions):  # one tuple of layers per new token
        assert len(per_layer) == n_layers
        for layer, weights in enumerate(per_layer):
            row = weights[0, :, -1, :].numpy()  # [heads, keys]: the query producing the token
            want = _compact(row, maps.image_positions)  # [heads, image tokens + 1]
            np.testing.assert_allclose(maps.weights[step, layer], want, atol=1e-5, rtol=0)
    # so the maps are those of the full rows: the last token's mean over the last layer's heads
    full = ref.attentions[-1][-1][0, :, -1, :].numpy()  # [heads, keys]
    want = full[:, maps.image_positions].mean(0)
    got = maps.image_attention(tokens=-1, layers=n_layers - 1)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    # image tokens are where the prompt has <IMG_CONTEXT>, tiles in pixel_values order
    ids = cap._encode(cap.prompt("Describe the picture."))[0][0].numpy()
    np.testing.assert_array_equal(
        maps.image_positions, np.flatnonzero(ids == tiny_model.image_token_id)
    )
    assert maps.images[0].grid == photo.grid and maps.images[0].image is photo.image


def test_the_vision_towers_cls_attention_equals_its_output_attentions(tiny_model, photo):
    with capture(tiny_model, photo, layers=[1]) as cap:
        cap.teacher_force("What is it?", "A cup.")
    vision = cap.maps.vision
    assert vision.cls.shape == (3, 2, 4, 32, 32) and vision.layers == (0, 1)
    cfg = tiny_model.model.config.vision_config
    saved = cfg._attn_implementation_internal
    try:
        cfg._attn_implementation_internal = "eager"
        with torch.no_grad():
            out = tiny_model.model.model.vision_tower(
                pixel_values=photo.pixel_values, output_attentions=True
            )
    finally:
        cfg._attn_implementation_internal = saved
    for layer, weights in enumerate(out.attentions):  # [tiles, heads, 1025, 1025]
        cls = weights[:, :, 0, 1:].reshape(3, 4, 32, 32).numpy()
        np.testing.assert_allclose(vision.cls[:, layer], cls, atol=1e-5, rtol=0)


def test_a_teacher_forced_answer_equals_one_forward_with_output_attentions(tiny_model, photo):
    answer = [11, 12, 13, 14]
    with capture(tiny_model, photo, vision=False) as cap:
        maps = cap.teacher_force("Describe.", answer)
    assert maps.mode == "teacher" and maps.vision is None
    prompt, _ = cap._encode(cap.prompt("Describe."))
    ids = torch.cat([prompt, torch.tensor([answer])], dim=1)
    with eager_language_model(tiny_model), torch.no_grad():
        out = tiny_model.model(
            input_ids=ids, pixel_values=cap._pixel_values(), output_attentions=True
        )
    L, T = prompt.shape[1], len(answer)
    for layer, weights in enumerate(out.attentions):
        ref = weights[0, :, L - 1 : L - 1 + T, : L + T - 1].numpy().transpose(1, 0, 2)
        want = _compact(ref, maps.image_positions)  # [T, heads, image tokens + 1]
        np.testing.assert_allclose(maps.weights[:, layer], want, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(maps.token_ids, answer)


def test_everything_is_restored_when_the_block_raises(tiny_model, photo):
    before = _state(tiny_model)
    with pytest.raises(RuntimeError, match="boom"):
        with capture(tiny_model, photo):
            assert _state(tiny_model) != before
            raise RuntimeError("boom")
    assert _state(tiny_model) == before
    with pytest.raises(ValueError, match="one sequence at a time"):
        with capture(tiny_model, photo) as cap:
            ids, _ = cap._encode(cap.prompt("Hi"))
            pixels = cap._pixel_values()
            tiny_model.model.generate(
                input_ids=ids.repeat(2, 1),
                pixel_values=pixels.repeat(2, 1, 1, 1),
                max_new_tokens=1,
            )
    assert _state(tiny_model) == before


def test_several_images_get_one_map_each_in_prompt_order(tiny_model, photo, chart):
    with capture(tiny_model, [photo, chart], layers=[0], vision=False) as cap:
        cap.generate("Compare them.", max_new_tokens=3)
    maps = cap.maps
    assert "Image-1: <img>" in cap.prompt("Compare them.")
    assert [s.label for s in maps.images] == ["Image-1", "Image-2"]
    assert [len(s.positions) for s in maps.images] == [768, 256]
    assert maps.images[0].positions[-1] < maps.images[1].positions[0]
    assert [m.per_tile.shape for m in maps.maps(layers=0)] == [(3, 16, 16), (1, 16, 16)]
    with pytest.raises(ValueError, match=r"No image 2 .*'Image-1'.*'Image-2'"):
        maps.map(2)
    with pytest.raises(ValueError, match="captured layers: \\[0\\]"):
        maps.map(0, layers=1)


def test_a_video_gets_one_map_per_frame(tiny_model):
    from vltools.video import load_video

    clip = load_video(sample("sample_video.mp4"), num_segments=2)
    with capture(tiny_model, clip, vision=False) as cap:
        cap.generate("What happens?", max_new_tokens=2)
    maps = cap.maps
    assert cap.prompt("What happens?").count("Frame") == 2
    frames = maps.maps()
    assert [m.label for m in frames] == ["Frame1", "Frame2"]
    assert all(m.thumbnail is None and m.tiles.shape == (16, 16) for m in frames)


def test_a_chat_inside_the_block_is_recorded_with_its_vision_pass(tiny_model, photo):
    with capture(tiny_model, photo, layers=[0]) as cap:
        tiny_model.chat(photo.pixel_values, "Hello?", {"max_new_tokens": 3})
    maps = cap.maps
    assert maps.num_tokens >= 1 and maps.images[0].grid == photo.grid
    # chat encodes the image before generate; that vision pass is inside the block too
    assert maps.vision is not None and maps.vision.cls.shape[0] == photo.num_tiles
    np.testing.assert_allclose(maps.weights.sum(-1), 1.0, atol=1e-5)


def test_capture_rejects_images_that_do_not_match_the_prompt(tiny_model, photo, chart):
    from vltools.prompts import chat_query

    text = chat_query("Hi", num_patches_list=[photo.num_tiles]).text  # one image block
    ids = tiny_model.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match=r"holds 1 image block\(s\) but capture\(\) was given 2"):
        with capture(tiny_model, [photo, chart], layers=[0], vision=False):
            tiny_model.model.generate(
                input_ids=ids, pixel_values=photo.pixel_values, max_new_tokens=1
            )
    with pytest.raises(ValueError, match="layer 9 does not exist"):
        with capture(tiny_model, photo, layers=[9]):
            pass
    with pytest.raises(TypeError, match="TiledImage"):
        with capture(tiny_model, ["not an image"]):
            pass


def test_the_stored_width_follows_the_image_tokens_not_the_prompt_length(tiny_model, photo):
    widths, lengths = [], []
    for question in ("Describe.", "Describe. " + "Look at the table by the window. " * 40):
        with capture(tiny_model, photo, layers=[0], vision=False) as cap:
            cap.generate(question, max_new_tokens=2, min_new_tokens=2)
        widths.append(cap.maps.weights.shape[3])
        lengths.append(cap.maps.prompt_length)
        np.testing.assert_allclose(cap.maps.weights.sum(-1), 1.0, atol=1e-5)
    assert lengths[1] > lengths[0] + 200  # the second prompt is far longer ...
    assert widths == [photo.grid.num_image_tokens + 1] * 2  # ... and stores the same width


def test_a_text_only_capture_keeps_just_the_rest(tiny_model):
    with capture(tiny_model, None, vision=False) as cap:
        cap.generate("Hello?", max_new_tokens=2, min_new_tokens=2)
    maps = cap.maps
    assert maps.weights.shape[3] == 1 and maps.sinks() == ()
    np.testing.assert_allclose(maps.rest, 1.0, atol=1e-5)


def test_float16_storage_halves_the_weights_and_keeps_them_within_1e_3(tiny_model, photo):
    kept = {}
    for dtype in ("float32", "float16"):
        with capture(tiny_model, photo, store_dtype=dtype) as cap:
            kept[dtype] = cap.teacher_force("Describe.", [11, 12, 13])
    half, full = kept["float16"], kept["float32"]
    assert half.weights.dtype == np.float16 and half.vision.cls.dtype == np.float16
    assert half.weights.nbytes * 2 == full.weights.nbytes and "float16" in repr(half)
    np.testing.assert_allclose(half.weights, full.weights, atol=1e-3, rtol=0)
    assert half.image_attention().dtype == np.float32  # aggregates are computed in float32
    np.testing.assert_allclose(half.image_attention(), full.image_attention(), atol=1e-4)
    with pytest.raises(ValueError, match=r"store_dtype='bfloat16'.*\['float32', 'float16'\]"):
        with capture(tiny_model, photo, store_dtype="bfloat16"):
            pass


def test_a_pass_keeps_its_rows_in_stores_allocated_before_the_layers_run(tiny_model, photo):
    # issue 14: kept arrays allocated layer by layer, between the layers' large transient
    # tensors, fragment glibc's heap (each one splits the hole a transient left, so the next
    # layer's transient no longer fits): the count of live numpy blocks made by the capture
    # must not grow from one layer to the next, in the vision tower or the language model
    import tracemalloc

    import vltools.attention

    native = tiny_model.model.model
    counts = {"vision": [], "lm": []}
    numpy_blocks = [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)]
    made_here = [tracemalloc.Filter(True, vltools.attention.__file__)]  # made by the capture

    def counter(part):
        def hook(module, args, output):
            snap = tracemalloc.take_snapshot().filter_traces(numpy_blocks)
            counts[part].append(len(snap.filter_traces(made_here).traces))

        return hook

    tracemalloc.start()
    try:
        with capture(tiny_model, photo) as cap:
            handles = [
                layer.register_forward_hook(counter("vision"))
                for layer in native.vision_tower.encoder.layer
            ]
            handles += [
                layer.register_forward_hook(counter("lm")) for layer in native.language_model.layers
            ]
            try:
                maps = cap.teacher_force("Describe.", [11, 12, 13])
            finally:
                for h in handles:
                    h.remove()
    finally:
        tracemalloc.stop()
    assert len(counts["vision"]) >= 2 and len(counts["lm"]) >= 2
    assert min(counts["vision"]) >= 1 and min(counts["lm"]) >= 1  # the stores are traced
    assert len(set(counts["vision"])) == 1 and len(set(counts["lm"])) == 1, counts
    assert maps.weights.flags.c_contiguous and maps.vision.cls.flags.c_contiguous
