"""load_video on the sample video: the card's frames and bit-identical pixels, the clip's fields.

The reference pipeline is the model card's ``load_video``, in ``vltools.card``, rewritten from the card's
text: decord ``vr[i]`` for each frame, PIL, ``dynamic_preprocess`` and ``build_transform``.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from vltools.card import card_load_video
from vltools.data import sample
from vltools.video import load_video, sample_frame_indices

SAMPLE = sample("sample_video.mp4")


@functools.lru_cache(maxsize=4)
def card_clip(path, *, num_segments, max_num):
    """The card's load_video (``vltools.card``), cached: it decodes and tiles frame by frame."""
    pytest.importorskip("decord")
    return card_load_video(path, num_segments=num_segments, max_num=max_num)


@pytest.fixture(scope="module")
def clip():
    return load_video(SAMPLE, num_segments=8)


@pytest.mark.parametrize(("num_segments", "max_num"), [(8, 1), (2, 6)])
@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_pixel_values_are_bit_identical_to_the_card_on_the_sample_video(
    num_segments, max_num, backend
):
    pytest.importorskip(backend if backend == "decord" else "av")
    expected, expected_patches = card_clip(SAMPLE, num_segments=num_segments, max_num=max_num)
    clip = load_video(SAMPLE, num_segments=num_segments, max_num=max_num, backend=backend)
    assert list(clip.num_tiles) == expected_patches
    assert clip.pixel_values.dtype == expected.dtype
    assert clip.pixel_values.shape == expected.shape
    assert clip.pixel_values.equal(expected)


def test_max_num_above_one_tiles_each_frame_with_a_thumbnail():
    clip = load_video(SAMPLE, num_segments=2, max_num=6)
    assert clip.num_tiles == (7, 7)  # 448x336 -> a 3x2 grid + the thumbnail
    assert all(t.grid.num_tiles == 7 for t in clip.tiled)
    assert clip.pixel_values.shape == (14, 3, 448, 448)
    assert clip.num_image_tokens == 14 * 256


def test_the_clip_carries_the_cards_frames_times_and_geometry(clip):
    assert clip.num_frames == 96 and clip.fps == 24.0 and clip.duration == 4.0
    assert clip.frame_indices.tolist() == sample_frame_indices(96, 24.0).tolist()
    assert np.allclose(clip.timestamps, clip.frame_indices / 24.0, atol=1e-9, rtol=0)
    assert clip.num_tiles == (1,) * 8
    assert clip.pixel_values.shape == (8, 3, 448, 448)
    with pytest.deprecated_call(match="use VideoClip.num_tiles"):
        assert clip.num_patches_list == clip.num_tiles  # the old name, for a while
    assert len(clip.frames) == 8 and clip.frames[0].size == (448, 336)
    assert clip.frames[0].mode == "RGB"
    assert len(clip.tiled) == 8 and clip.num_segments == 8
    assert clip.bound is None and not clip.variable_frame_rate


def test_each_sampled_frame_is_the_frame_it_claims_to_be(clip):
    # the sample video's progress bar is filled round((i + 1) / 96 * 446) pixels for frame i
    for index, frame in zip(clip.frame_indices.tolist(), clip.frames, strict=True):
        row = np.asarray(frame)[330].astype(int)  # inside the bar, [448, 3]
        blue = int(((row[:, 2] > 150) & (row[:, 0] < 120)).sum())
        assert abs(blue - round((index + 1) / 96 * 446)) <= 2, index


def test_the_prompt_prefix_names_every_frame_like_the_card(clip):
    assert clip.prompt_prefix() == "".join(f"Frame{i}: <image>\n" for i in range(1, 9))


def test_a_bound_samples_inside_it_and_is_kept_on_the_clip():
    clip = load_video(SAMPLE, num_segments=4, bound=(1, 2))
    assert clip.bound == (1.0, 2.0)
    assert (
        clip.frame_indices.tolist()
        == sample_frame_indices(96, 24.0, num_segments=4, bound=(1, 2)).tolist()
    )
    assert clip.timestamps.min() >= 1.0 and clip.timestamps.max() <= 2.0


def test_to_casts_the_pixels_and_keeps_the_per_frame_views(clip):
    import torch

    assert clip.to(dtype="bfloat16").pixel_values.dtype == torch.bfloat16
    half = clip.to(dtype=torch.bfloat16)
    assert half.pixel_values.dtype == torch.bfloat16
    assert clip.pixel_values.dtype == torch.float32  # the original is untouched
    for k, tiled in enumerate(half.tiled):
        assert tiled.pixel_values.dtype == torch.bfloat16
        assert tiled.pixel_values.data_ptr() == half.pixel_values[k].data_ptr()


def test_per_frame_tiles_are_views_into_the_clips_pixels(clip):
    assert clip.tiled[3].pixel_values.data_ptr() == clip.pixel_values[3].data_ptr()
    assert clip.tiled[3].pixel_values.equal(clip.pixel_values[3:4])


def test_frames_of_another_size_are_tiled_on_their_own_and_concatenated():
    # decord's batches always share one size; a stream that changes resolution (PyAV) must
    # still give each frame the load_image tiling, in order, with views into one tensor.
    import torch

    from vltools.images import load_image
    from vltools.video import _FrameTiler

    rng = np.random.default_rng(0)
    arrays = [
        rng.integers(0, 256, shape, dtype=np.uint8)
        for shape in [(360, 640, 3), (480, 480, 3), (360, 640, 3), (200, 900, 3)]
    ]
    tiler = _FrameTiler(len(arrays), max_num=4)
    for k in [2, 0, 3, 1]:  # in any order, as two decord readers deliver them
        tiler.add(k, arrays[k])
    frames, tiled, pixel_values = tiler.finish()
    expected = [load_image(a, max_num=4, exif_transpose=False) for a in arrays]
    assert torch.equal(pixel_values, torch.cat([e.pixel_values for e in expected]))
    assert [t.num_tiles for t in tiled] == [e.num_tiles for e in expected]
    offset = 0
    for t in tiled:
        assert t.pixel_values.data_ptr() == pixel_values[offset].data_ptr()  # a view
        offset += t.num_tiles
    assert [f.size for f in frames] == [(640, 360), (480, 480), (640, 360), (900, 200)]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"num_segments": 0}, ValueError),
        ({"max_num": 0}, ValueError),
        ({"bound": (3, 1)}, ValueError),
    ],
)
def test_load_video_refuses_bad_knobs(kwargs, error):
    with pytest.raises(error):
        load_video(SAMPLE, **kwargs)


def test_repr_says_what_was_sampled(clip):
    text = repr(clip)
    assert "sample_video.mp4" in text and "8 frames" in text and "2048 image tokens" in text


# --- the sample video itself ------------------------------------------------------------------


def test_the_sample_video_is_small_h264_at_24_fps():
    av = pytest.importorskip("av")
    assert SAMPLE.stat().st_size < 1_000_000
    with av.open(str(SAMPLE)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == 24
        assert (stream.width, stream.height) == (448, 336)


def test_the_sample_video_script_writes_the_same_bytes_twice(tmp_path):
    pytest.importorskip("av")
    spec = importlib.util.spec_from_file_location(
        "make_sample_video",
        Path(__file__).resolve().parent.parent / "data" / "make_sample_video.py",
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    a = module.write_video(tmp_path / "a.mp4", seconds=0.5).read_bytes()
    b = module.write_video(tmp_path / "b.mp4", seconds=0.5).read_bytes()
    assert len(a) == len(b), (len(a), len(b))
    assert a == b, [i for i in range(len(a)) if a[i] != b[i]][:20]


# --- what the chat needs from a clip ----------------------------------------------------------


@pytest.mark.slow
def test_a_clip_drives_a_multi_round_video_chat_with_the_cards_prompt(tiny_model):
    chat_module = pytest.importorskip("vltools.chat")
    clip = load_video(SAMPLE, num_segments=2)
    chat = chat_module.Chat(tiny_model, max_new_tokens=2)
    first = chat.ask("What happens in this video?", video=clip)
    assert chat.as_card_history()[0][0] == clip.prompt_prefix() + "What happens in this video?"
    assert first.prompt_tokens > clip.num_image_tokens  # 2 frames x 256 image tokens + text
    second = chat.ask("And then?")
    assert second.cached_tokens >= first.prompt_tokens  # the frames are not encoded again


def test_the_clip_carries_the_span_its_segments_cover_computed_once():
    from vltools.video import frame_range

    whole = load_video(SAMPLE, num_segments=4)
    assert whole.span == frame_range(whole.num_frames, whole.fps)
    part = load_video(SAMPLE, num_segments=4, bound=(0.5, 1.5))
    assert part.span == frame_range(part.num_frames, part.fps, bound=(0.5, 1.5))
    assert part.span[0] <= part.frame_indices.min() <= part.frame_indices.max() <= part.span[1]


def test_clips_loaded_inside_every_shared_pool_job_at_once_neither_hang_nor_change(clip):
    # Each pool worker loads a clip (a caller's job on the shared pool): the frames are then
    # tiled inline and decord reads alone, since a pool job never waits for another.
    from vltools.threads import pool_size, shared_pool

    pool = shared_pool()
    futures = [pool.submit(load_video, SAMPLE, num_segments=8) for _ in range(pool_size() + 1)]
    for future in futures:
        again = future.result(timeout=300)
        assert again.pixel_values.equal(clip.pixel_values)
        assert again.frame_indices.tolist() == clip.frame_indices.tolist()
