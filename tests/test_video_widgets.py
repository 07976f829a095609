"""show_frames and FrameStrip: the frame strip figure and the live widget, without a browser."""

from __future__ import annotations

import pytest

from vltools.data import sample
from vltools.video import load_video, sample_frame_indices

SAMPLE = sample("sample_video.mp4")


@pytest.fixture(scope="module")
def strip():
    pytest.importorskip("ipywidgets")
    from vltools.widgets import FrameStrip

    return FrameStrip(SAMPLE, num_segments=4)


def test_show_frames_draws_the_timeline_and_one_thumbnail_per_frame():
    from vltools.viz import show_frames

    clip = load_video(SAMPLE, num_segments=6, bound=(1.0, 3.0))  # 6 tiles
    fig = show_frames(clip)
    timeline, *thumbs = fig.axes[:7]
    assert len(thumbs) == 6
    titles = [ax.get_title() for ax in thumbs]
    assert titles[0].startswith(f"Frame1: #{clip.frame_indices[0]}")
    assert f"{clip.timestamps[-1]:.2f} s" in titles[-1]
    markers = timeline.collections[-1].get_offsets()[:, 0]  # the sampled frames on the timeline
    assert markers.tolist() == clip.frame_indices.tolist()
    assert "1,536 image tokens" in " ".join(fig._suptitle.get_text().split())


def test_a_narrow_strip_wraps_its_title_inside_the_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from vltools.viz import show_frames

    fig = show_frames(load_video(SAMPLE, num_segments=4, bound=(0.5, 2.5), max_num=1))
    title = fig._suptitle
    assert "\n" in title.get_text()  # too long for one line at 6 inches
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    box, page = title.get_window_extent(renderer), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1, (box, page)


def test_show_frames_wraps_many_frames_into_rows():
    from vltools.viz import show_frames

    fig = show_frames(load_video(SAMPLE, num_segments=10), columns=4)
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 10
    fig.canvas.draw()  # lay out
    assert len({round(ax.get_position().y0, 3) for ax in image_axes}) == 3  # 4 + 4 + 2


def test_the_strip_starts_on_the_whole_video(strip):
    assert strip.clip.num_segments == 4
    assert strip.clip.bound is None
    assert strip.bound == (0.0, 4.0)
    assert "1,024 image tokens" in strip.cost and "8,192" in strip.cost
    assert strip._picture.value[:4] == b"\x89PNG"


def test_changing_num_segments_resamples_live(strip):
    strip.num_segments = 3
    expected = sample_frame_indices(96, 24.0, num_segments=3)
    assert strip.clip.frame_indices.tolist() == expected.tolist()
    assert "768 image tokens" in strip.cost
    strip._segments_slider.value = 5  # the slider drives the trait
    assert strip.num_segments == 5 and strip.clip.num_segments == 5
    strip.num_segments = 4


def test_a_bound_resamples_inside_it_and_an_impossible_one_shows_an_error(strip):
    strip.bound = (1.0, 2.0)
    assert strip.clip.bound == (1.0, 2.0)
    expected = sample_frame_indices(96, 24.0, num_segments=4, bound=(1.0, 2.0))
    assert strip.clip.frame_indices.tolist() == expected.tolist()
    assert strip.error == ""
    before = strip.clip
    strip.bound = (2.0, 2.0)
    assert "starts at or after its end" in strip.error
    assert strip.clip is before  # the last good choice stays
    assert "ValueError" in strip._output.outputs[0]["text"]
    strip.bound = (0.0, 4.0)
    assert strip.error == "" and strip.clip.bound is None


@pytest.mark.slow
def test_max_num_changes_the_token_cost(strip):
    with strip.hold_trait_notifications():
        strip.num_segments, strip.max_num = 5, 6
    assert strip.clip.num_tiles == (7,) * 5
    assert "8,960 image tokens" in strip.cost and "exceeds" in strip._cost_label.value
    strip.max_num = 1
    assert "exceeds" not in strip._cost_label.value
    strip.num_segments = 4


def test_the_strip_offers_a_static_picture(strip):
    bundle = strip._repr_mimebundle_()
    assert bundle["image/png"][:4] == b"\x89PNG"


def test_a_clip_shows_itself_as_its_frame_strip_in_notebooks():
    clip = load_video(SAMPLE, num_segments=2)
    assert clip._repr_png_()[:4] == b"\x89PNG"


def test_a_strip_can_start_on_a_bound():
    from vltools.widgets import FrameStrip

    strip = FrameStrip(SAMPLE, num_segments=3, bound=(1.0, 2.0))
    assert strip.bound == (1.0, 2.0) and strip._bound_slider.value == (1.0, 2.0)
    assert strip.clip.bound == (1.0, 2.0)
    expected = sample_frame_indices(96, 24.0, num_segments=3, bound=(1.0, 2.0))
    assert strip.clip.frame_indices.tolist() == expected.tolist()


def test_a_frame_strip_decodes_each_frame_at_most_once_across_its_steps(monkeypatch):
    pytest.importorskip("ipywidgets")
    from vltools.widgets import FrameStrip

    strip = FrameStrip(SAMPLE, num_segments=4, bound=(0.5, 3.5))  # one clip at construction
    decoded: list[int] = []
    store = strip._frames._store
    monkeypatch.setattr(
        strip._frames, "_store", lambda idx, *a: decoded.extend(idx.tolist()) or store(idx, *a)
    )
    shown: set[int] = set(strip.clip.frame_indices.tolist())
    for n in (5, 4, 8, 3, 5, 8):
        strip.num_segments = n
        expected = sample_frame_indices(96, 24.0, num_segments=n, bound=(0.5, 3.5))
        assert strip.clip.frame_indices.tolist() == expected.tolist()
        shown |= set(expected.tolist())
    strip.bound = (0.0, 4.0)  # the whole video: new frames again, the old ones not
    shown |= set(strip.clip.frame_indices.tolist())
    assert len(decoded) == len(set(decoded))  # no frame twice
    assert not set(decoded) & set(
        sample_frame_indices(96, 24.0, num_segments=4, bound=(0.5, 3.5)).tolist()
    )
    assert strip._frames.decoded == len(shown)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_video_frames_gives_load_videos_clip_for_every_choice(backend):
    from vltools.video import VideoFrames, available_backends

    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed")
    frames = VideoFrames(SAMPLE, backend=backend)
    for n, bound, max_num in [(4, None, 1), (6, (1.0, 3.0), 2), (3, None, 1), (200, None, 1)]:
        ours = frames.clip(num_segments=n, bound=bound, max_num=max_num)
        theirs = load_video(SAMPLE, num_segments=n, bound=bound, max_num=max_num, backend=backend)
        assert ours.pixel_values.equal(theirs.pixel_values)
        assert ours.frame_indices.tolist() == theirs.frame_indices.tolist()
        assert ours.timestamps.tolist() == theirs.timestamps.tolist()
        assert repr(ours) == repr(theirs)
    assert frames.decoded == 96  # 200 segments of a 96-frame video: every frame, once


def test_video_frames_keeps_at_most_max_cached_frames():
    from vltools.video import VideoFrames

    frames = VideoFrames(SAMPLE, max_cached=5)
    frames.clip(num_segments=8)
    assert frames.decoded == 8 and len(frames._cache) == 5
    with pytest.raises(ValueError, match="max_cached must be >= 1"):
        VideoFrames(SAMPLE, max_cached=0)


def test_frame_strip_sliders_update_on_release(strip):
    sliders = (strip._segments_slider, strip._bound_slider, strip._max_num_slider)
    assert [s.continuous_update for s in sliders] == [False, False, False]


def test_a_strip_started_on_an_impossible_bound_shows_the_error_over_the_whole_video():
    from vltools.widgets import FrameStrip

    strip = FrameStrip(SAMPLE, num_segments=3, bound=(10.0, 20.0))  # past the 4 s video
    assert "selects no frames" in strip.error
    assert strip.clip.bound is None and strip.clip.num_segments == 3
    assert strip._picture.value[:4] == b"\x89PNG"
    strip.bound = (1.0, 2.0)  # a good bound clears it
    assert strip.error == "" and strip.clip.bound == (1.0, 2.0)
