"""Video input: which frames the model card samples, decoding them, and the tiles they become.

Follows the InternVL2-1B model card's Quick Start (``get_index`` and ``load_video``): the
frames between the start and the end of the video (or of ``bound``, in seconds) are split into
``num_segments`` equal segments and the frame nearest the middle of each is taken; every frame
is tiled like an image (one 448-pixel tile at the card's ``max_num=1``); the prompt names them
``Frame1: <image>\\nFrame2: <image>\\n...``. transformers' own ``InternVLVideoProcessor``
samples different frames (``docs/FORMAT.md``, section 1 and trap 8); vltools follows the card.

- :func:`sample_frame_indices` is the card's ``get_index``, pure, with a ``ValueError`` where the
  card would read outside the video.
- :func:`load_video` decodes the chosen frames with decord (the card's choice; batched reads,
  two readers in parallel) or PyAV (the fallback where decord has no wheels), tiles each
  frame as :func:`vltools.images.load_image` would while the rest decode, straight into the
  clip's one tensor, and returns a :class:`VideoClip`.

Before decoding, the file is probed with PyAV (demuxing only, no decoding): that gives clear
errors for missing, empty and non-video files before a decoder sees them, and the presentation
time of every frame, so both backends report the same timestamps. The probing and both
decoders are in :mod:`vltools.decoding`; this module chooses the frames and the backend.

``backend="auto"`` takes decord, except for AVI and MPEG-TS files, where decord 0.6 returns
other frames than the ones asked for, and except where decord cannot read a file PyAV can (a
truncated MP4); both with a warning in the second case. On 8-bit video both decoders give
identical pixels; on 10-bit video their RGB conversions differ by a few levels.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vltools._optional import require
from vltools.constants import CONTEXT_LENGTH, TILE_SIZE, TOKENS_PER_TILE
from vltools.decoding import (
    DECORD_MISSEEKS,
    Backend,
    DecodedFrames,
    DecordFailed,
    available_backends,
    choose_backend,
    decode_pyav,
    probe_video,
    read_decord,
)
from vltools.threads import cancel_and_wait, on_pool_thread, shared_pool

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch
    from PIL import Image

    from vltools.images import TiledImage

__all__ = [
    "MAX_SEGMENTS",
    "VideoClip",
    "VideoFrames",
    "frame_costs",
    "frame_range",
    "load_video",
    "sample_frame_indices",
]

# The card's get_index stands in +-100000 seconds for "no bound".
_NO_BOUND: tuple[float, float] = (-100000.0, 100000.0)


# --- which frames ---------------------------------------------------------------------------


def frame_range(
    num_frames: int, fps: float, *, bound: Sequence[float] | None = None, first_idx: int = 0
) -> tuple[int, int]:
    """The first and last frame index the card's segments span: ``(start_idx, end_idx)``.

    ``start_idx = max(first_idx, round(start * fps))`` and
    ``end_idx = min(round(end * fps), num_frames - 1)``, as in the card's ``get_index``; without
    ``bound`` that is ``(first_idx, num_frames - 1)``. Raises ``ValueError`` where the range is
    empty or reversed, that is where the card's code would read outside the video.
    """
    _check_int("num_frames", num_frames, minimum=1, fix="The video has no frames to sample.")
    _check_int("first_idx", first_idx, minimum=0, fix="Pass 0 to start at the first frame.")
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not math.isfinite(fps):
        raise TypeError(f"fps must be a finite number of frames per second, got {fps!r}.")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}.")
    start, end = _check_bound(bound)
    max_frame = num_frames - 1
    if first_idx > max_frame:
        raise ValueError(
            f"first_idx={first_idx} is past the last frame ({max_frame}) of a {num_frames}-frame "
            "video; pass a first_idx below num_frames."
        )
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    if start_idx > end_idx:
        duration = num_frames / fps
        raise ValueError(
            f"bound={tuple(bound) if bound is not None else None} selects no frames of a "
            f"{duration:.3f}-second video ({num_frames} frames at {fps:g} fps, first_idx="
            f"{first_idx}): it maps to frames {start_idx}..{end_idx}. Pass a bound that "
            f"overlaps [0, {duration:.3f}) seconds, or bound=None for the whole video."
        )
    return start_idx, end_idx


# The most frames sample_frame_indices picks (an int64 array of this length is 8 MB).
MAX_SEGMENTS = 1_000_000


def sample_frame_indices(
    num_frames: int,
    fps: float,
    *,
    num_segments: int = 8,
    bound: Sequence[float] | None = None,
    first_idx: int = 0,
) -> np.ndarray:
    """The frame indices the model card's ``get_index`` picks: int64 array ``[num_segments]``.

    The span :func:`frame_range` gives is cut into ``num_segments`` equal segments of
    ``seg = (end_idx - start_idx) / num_segments`` frames, and segment ``k`` contributes
    ``int(start_idx + seg / 2 + round(seg * k))`` (numpy's round-half-to-even, as the card).
    Short videos repeat frames. The result is sorted and lies in ``[0, num_frames - 1]``.

    ``bound`` is ``(start, end)`` in seconds, converted to frames with ``fps``; ``first_idx``
    is the lowest frame allowed. Raises ``ValueError`` for ``num_segments < 1``, an empty
    video, a bound with ``start >= end``, and wherever the card's code would read outside the
    video (a bound past the end, ``first_idx`` past the last frame), and for ``num_segments``
    above :data:`MAX_SEGMENTS`.
    """
    _check_int("num_segments", num_segments, minimum=1, fix="Sample at least one frame.")
    if num_segments > MAX_SEGMENTS:
        raise ValueError(
            f"num_segments={num_segments:,} is above the {MAX_SEGMENTS:,} frames vltools "
            "samples from one video (the model card uses 8 to 32). Lower num_segments."
        )
    start_idx, end_idx = frame_range(num_frames, fps, bound=bound, first_idx=first_idx)
    seg_size = float(end_idx - start_idx) / num_segments
    steps = np.round(seg_size * np.arange(num_segments, dtype=np.float64))  # [num_segments]
    # same operation order as the card: (start_idx + seg_size / 2) + round(seg_size * k)
    indices = np.trunc((start_idx + seg_size / 2) + steps).astype(np.int64)
    return indices


def frame_costs(
    width: int,
    height: int,
    *,
    tokens_per_tile: int = TOKENS_PER_TILE,
    context_length: int = CONTEXT_LENGTH,
    max_nums: Sequence[int] = (1, 6),
    segments: Sequence[int] = (4, 8, 16, 32),
    image_size: int = TILE_SIZE,
) -> pd.DataFrame:
    """What more frames cost in the context: a table, no decoding.

    For frames of ``width x height`` tiled at each of ``max_nums`` (one tile at the card's 1;
    above 1 a grid and the thumbnail, :func:`vltools.tiling.plan_tiles`) and each number of
    ``segments``, the image tokens ``frames * tiles * tokens_per_tile`` and their share of
    ``context_length``. Pass the model's own facts (``tokens_per_tile=vlm.tokens_per_tile,
    context_length=vlm.context_length``); the defaults are InternVL2-1B's. Returns a pandas
    DataFrame with the columns ``max_num``, ``frames``, ``tiles_per_frame``, ``image_tokens``,
    ``context_share`` (the fraction of the context the frames take before any text).
    """
    from vltools.tiling import plan_tiles

    pd = require("pandas", purpose="vltools.video.frame_costs")
    _check_int("tokens_per_tile", tokens_per_tile, minimum=1, fix="InternVL2 uses 256.")
    _check_int("context_length", context_length, minimum=1, fix="InternVL2-1B has 8192.")
    rows = []
    for max_num in max_nums:
        _check_int("max_num", max_num, minimum=1, fix="Use max_num=1 for one tile per frame.")
        tiles = plan_tiles(width, height, max_num=max_num, image_size=image_size).num_tiles
        for frames in segments:
            _check_int("segments", frames, minimum=1, fix="Count at least one frame.")
            tokens = int(frames) * tiles * int(tokens_per_tile)
            rows.append(
                {
                    "max_num": int(max_num),
                    "frames": int(frames),
                    "tiles_per_frame": tiles,
                    "image_tokens": tokens,
                    "context_share": tokens / int(context_length),
                }
            )
    return pd.DataFrame(rows)


def _check_int(name: str, value: Any, *, minimum: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}. {fix}")


def _check_bound(bound: Sequence[float] | None) -> tuple[float, float]:
    if bound is None:
        return _NO_BOUND
    try:
        start, end = (float(x) for x in bound)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"bound must be None or (start, end) in seconds, got {bound!r}; "
            "for example bound=(1.0, 3.5)."
        ) from e
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ValueError(f"bound must be finite seconds, got {bound!r}.")
    if start >= end:
        raise ValueError(
            f"bound={tuple(bound)!r} starts at or after its end; pass (start, end) with "
            "start < end, in seconds."
        )
    return start, end


# --- the clip -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoClip:
    """Frames sampled from a video the model card's way, tiled and ready for the model.

    Attributes:
        source: the file name the frames came from.
        pixel_values: float32 ``[sum(num_tiles), 3, 448, 448]``, ImageNet-normalised,
            the tiles of frame 0, then of frame 1, ... (each frame's thumbnail last).
        num_tiles: tiles per frame, ``len == num_segments`` (pass ``list(clip.num_tiles)`` as
            the chat API's ``num_patches_list``).
        frame_indices: int64 ``[num_segments]``, the sampled frames, in presentation order.
        timestamps: float64 ``[num_segments]``, presentation time of each sampled frame in
            seconds from the first frame.
        fps: the stream's average frame rate (what the card's ``bound`` arithmetic uses).
        duration: ``num_frames / fps`` seconds; for a variable-frame-rate video, where that
            would be wrong, the real time from the first frame's start to the last frame's
            end.
        num_frames: frames in the video.
        frames: the sampled frames as RGB PIL images, one per segment.
        tiled: one :class:`~vltools.images.TiledImage` per frame, each with its ``TileGrid``;
            their ``pixel_values`` are views into ``pixel_values``.
        bound: the ``(start, end)`` seconds asked for, or None for the whole video.
        backend: the decoder used, ``"decord"`` or ``"pyav"``.
        variable_frame_rate: True where the frames are not evenly spaced in time.
        span: ``(start_idx, end_idx)``, the frames the segments cover (:func:`frame_range`),
            computed once when the clip is made.
    """

    source: str
    pixel_values: torch.Tensor
    num_tiles: tuple[int, ...]
    frame_indices: np.ndarray
    timestamps: np.ndarray
    fps: float
    duration: float
    num_frames: int
    frames: tuple[Image.Image, ...]
    tiled: tuple[TiledImage, ...]
    bound: tuple[float, float] | None = None
    backend: str = "decord"
    variable_frame_rate: bool = False
    span: tuple[int, int] | None = None

    @property
    def num_segments(self) -> int:
        """Number of sampled frames."""
        return len(self.num_tiles)

    @property
    def num_patches_list(self) -> tuple[int, ...]:
        """Deprecated name of :attr:`num_tiles` (tiles per frame)."""
        warnings.warn(
            "VideoClip.num_patches_list is deprecated; use VideoClip.num_tiles (the same tiles "
            "per frame; chat(..., num_patches_list=list(clip.num_tiles)) keeps the card's name).",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.num_tiles

    @property
    def num_image_tokens(self) -> int:
        """Image tokens the clip costs in the prompt (256 per tile, thumbnails included)."""
        return sum(t.grid.num_image_tokens for t in self.tiled)

    def prompt_prefix(self) -> str:
        """The card's video prompt prefix: ``"Frame1: <image>\\nFrame2: <image>\\n..."``
        (:func:`vltools.prompts.video_prefix`, the one place it is written)."""
        from vltools.prompts import video_prefix

        return video_prefix(self.num_segments)

    def to(self, device: Any = None, dtype: Any = None) -> VideoClip:
        """A copy with ``pixel_values`` (and the per-frame views) moved and/or cast.

        ``dtype`` may be a ``torch.dtype`` or its name (``"bfloat16"``).
        """
        if isinstance(dtype, str):  # a name such as "bfloat16": the loader's own resolution
            from vltools.dtypes import resolve_dtype

            dtype = resolve_dtype(dtype, None)
        pixel_values = self.pixel_values.to(device=device, dtype=dtype)
        return dataclasses.replace(
            self, pixel_values=pixel_values, tiled=_tiled_views(self.tiled, pixel_values)
        )

    def _repr_png_(self) -> bytes:
        """The frame strip (:func:`vltools.viz.show_frames`) for notebooks."""
        from vltools.viz import figure_to_png, show_frames

        return figure_to_png(show_frames(self), dpi=72)

    def __repr__(self) -> str:
        bound = "" if self.bound is None else f", bound={self.bound}"
        return (
            f"VideoClip({Path(self.source).name!r}, {self.num_segments} frames "
            f"{self.frame_indices.tolist()} of {self.num_frames} at {self.fps:g} fps{bound}, "
            f"{int(sum(self.num_tiles))} tiles, {self.num_image_tokens} image tokens, "
            f"backend={self.backend!r})"
        )


def _tiled_views(tiled: Sequence[TiledImage], pixel_values: torch.Tensor) -> tuple:
    """Each TiledImage with its pixel_values replaced by its slice of ``pixel_values``."""
    out, offset = [], 0
    for t in tiled:
        n = t.num_tiles
        out.append(dataclasses.replace(t, pixel_values=pixel_values[offset : offset + n]))
        offset += n
    return tuple(out)


# --- loading --------------------------------------------------------------------------------


def load_video(
    source: str | os.PathLike[str],
    *,
    num_segments: int = 8,
    max_num: int = 1,
    bound: Sequence[float] | None = None,
    backend: Backend = "auto",
) -> VideoClip:
    """Sample ``num_segments`` frames of the video at ``source`` and tile them, as the card does.

    ``max_num`` is the most tiles per frame (the card's default 1: one 448-pixel tile per
    frame; above 1 each frame is tiled like an image, thumbnail included). ``bound`` is
    ``(start, end)`` in seconds. ``backend`` is ``"decord"`` (the card's decoder), ``"pyav"``,
    or ``"auto"``: decord where it imports, PyAV otherwise, and PyAV for AVI and MPEG-TS files
    (where decord returns wrong frames) and for files decord fails on (with a warning).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not
    a video, has no video stream, has no decodable frames, or is damaged where a sampled
    frame lies.
    """
    _check_int("num_segments", num_segments, minimum=1, fix="Sample at least one frame.")
    _check_int("max_num", max_num, minimum=1, fix="Use max_num=1 for one tile per frame.")
    _check_bound(bound)
    path = _check_path(source)
    chosen = choose_backend(backend)
    probe = probe_video(path)
    if probe.width > 0 and probe.height > 0:  # before decoding: refuse what is too large
        from vltools.images import check_pixel_values_size
        from vltools.tiling import plan_tiles

        per_frame = plan_tiles(probe.width, probe.height, max_num=max_num).num_tiles
        check_pixel_values_size(
            per_frame,
            TILE_SIZE,
            frames=num_segments,
            what=f"{path.name} at num_segments={num_segments}, max_num={max_num}",
            lower=f"num_segments (now {num_segments}) or max_num (now {max_num})",
        )
    frames = None
    if chosen == "decord" and probe.container_format in DECORD_MISSEEKS:
        if backend == "auto" and "pyav" in available_backends():
            chosen = "pyav"  # decord returns other frames than asked for in these containers
        else:
            warnings.warn(
                f"decord seeks inaccurately in {probe.container_format} files and may return "
                f"other frames than {path.name}'s frames asked for; backend='pyav' is exact.",
                stacklevel=2,
            )
    tiler = _FrameTiler(num_segments, max_num=max_num)  # tiles frames as they arrive
    try:
        if chosen == "decord":
            try:
                pick = functools.partial(
                    sample_frame_indices, num_segments=num_segments, bound=bound
                )
                frames = read_decord(path, probe, pick=pick, on_frame=tiler.add)
            except DecordFailed as e:
                if backend == "decord":
                    raise ValueError(str(e)) from e
                warnings.warn(f"{e}; decoding with PyAV instead.", stacklevel=2)
                chosen = "pyav"
                tiler.close()
                tiler = _FrameTiler(num_segments, max_num=max_num)
        if frames is None:
            indices = sample_frame_indices(
                probe.num_frames, probe.fps, num_segments=num_segments, bound=bound
            )
            frames = DecodedFrames(
                arrays=decode_pyav(path, probe, indices),
                indices=indices,
                timestamps=probe.timestamps[indices],
                num_frames=probe.num_frames,
                fps=probe.fps,
            )
            for k, array in enumerate(frames.arrays):
                tiler.add(k, array)
        if probe.variable_frame_rate:
            covered = ""
            if bound is not None:
                first, last = frames.timestamps[0], frames.timestamps[-1]
                covered = (
                    f" bound={tuple(bound)} seconds, converted at that rate, selects frames "
                    f"whose real times are {first:.3f} to {last:.3f} s, not the seconds asked "
                    "for."
                )
            warnings.warn(
                f"{path.name} has a variable frame rate. Frames are sampled evenly in frame "
                f"numbers, as the model card does, not in time, and bound seconds are converted "
                f"with the average rate ({frames.fps:.3f} fps); timestamps are the frames' real "
                f"times and duration the real {probe.duration:.3f} s.{covered}",
                stacklevel=2,
            )
    except BaseException:
        tiler.close()
        raise
    return _make_clip(
        path,
        frames,
        tiler,
        bound=None if bound is None else (float(bound[0]), float(bound[1])),
        backend=chosen,
        variable_frame_rate=probe.variable_frame_rate,
        duration=probe.duration if probe.variable_frame_rate else None,
    )


class _FrameTiler:
    """Tiles a clip's frames on the shared pool (:mod:`vltools.threads`) while they are still
    being decoded.

    ``add(k, array)`` takes frame ``k`` (``[H, W, 3]`` uint8) as it arrives and tiles it on a
    worker thread; ``finish()`` waits and returns ``(frames, tiled, pixel_values)``. Frames of
    the first frame's size (every frame of a decord batch) are written straight into slices of
    one preallocated ``[num_frames * tiles_per_frame, 3, 448, 448]`` tensor, so there is no
    concatenation; a frame of another size (a stream that changes resolution) is tiled on its
    own and everything is concatenated at the end. Each frame is tiled exactly as
    :func:`vltools.images.load_image` tiles an image, the card's settings.
    """

    def __init__(self, count: int, *, max_num: int) -> None:
        self.count, self.max_num = count, max_num
        self._futures: list[Any] = [None] * count
        self._grid: Any = None
        self._pixel_values: Any = None
        self._mixed = False
        self._lock = threading.Lock()

    def add(self, k: int, array: np.ndarray) -> None:
        """Tile frame ``k`` on a worker thread; safe to call from several threads.

        Called on a pool thread itself (a clip loaded inside a pool job), the frame is tiled
        at once instead, since a pool job never waits for another.
        """
        with self._lock:
            if self._grid is None:
                self._start(array)
        if not on_pool_thread():
            self._futures[k] = shared_pool().submit(self._tile, k, array)
            return
        done: Future[TiledImage] = Future()
        try:
            done.set_result(self._tile(k, array))
        except Exception as e:  # raised by finish(), as a pool job's error would be
            done.set_exception(e)
        self._futures[k] = done

    def _start(self, array: np.ndarray) -> None:
        """The first frame fixes the grid and allocates the clip's tensor."""
        from vltools.tiling import plan_tiles

        torch = require("torch", purpose="vltools.load_video")
        height, width = array.shape[:2]
        self._grid = plan_tiles(width, height, max_num=self.max_num, image_size=TILE_SIZE)
        n = self._grid.num_tiles
        self._pixel_values = torch.empty((self.count * n, 3, TILE_SIZE, TILE_SIZE))

    def _tile(self, k: int, array: np.ndarray) -> TiledImage:
        from PIL import Image

        from vltools.images import TiledImage, cut_tiles

        image = Image.fromarray(array)  # [H, W, 3] uint8: RGB, as the card's convert("RGB")
        if image.mode != "RGB":
            image = image.convert("RGB")
        grid = self._grid
        if image.size != (grid.width, grid.height):
            self._mixed = True
            return _tile_frame(image, self.max_num)
        n = grid.num_tiles
        pixel_values = self._pixel_values[k * n : (k + 1) * n]  # [n, 3, 448, 448] view
        tiles = cut_tiles(image, grid, pixel_values.numpy(), fast=False)
        return TiledImage(image, grid, tuple(tiles), pixel_values, num_tiles=n)

    def finish(self) -> tuple[tuple[Image.Image, ...], tuple[TiledImage, ...], torch.Tensor]:
        try:
            tiled = tuple(future.result() for future in self._futures)
        finally:
            self.close()
        pixel_values = self._pixel_values
        if self._mixed:
            torch = require("torch", purpose="vltools.load_video")
            pixel_values = torch.cat([t.pixel_values for t in tiled])  # [sum(tiles), 3, S, S]
            tiled = _tiled_views(tiled, pixel_values)
        return tuple(t.image for t in tiled), tiled, pixel_values

    def close(self) -> None:
        """Stop: drop frames not started, wait for the running ones (they write our tensor)."""
        cancel_and_wait(self._futures)


def _tile_frame(frame: Image.Image, max_num: int) -> TiledImage:
    from vltools.images import load_image

    return load_image(
        frame,
        max_num=max_num,
        min_num=1,
        image_size=TILE_SIZE,
        use_thumbnail=True,
        exif_transpose=False,  # decoded frames carry no EXIF; the card ignores it anyway
    )


def _make_clip(
    path: Path,
    frames: DecodedFrames,
    tiler: _FrameTiler,
    *,
    bound: tuple[float, float] | None,
    backend: str,
    variable_frame_rate: bool,
    duration: float | None = None,
) -> VideoClip:
    images, tiled, pixel_values = tiler.finish()
    return VideoClip(
        source=str(path),
        pixel_values=pixel_values,
        num_tiles=tuple(int(t.num_tiles) for t in tiled),
        frame_indices=frames.indices,
        timestamps=np.asarray(frames.timestamps, dtype=np.float64),
        fps=float(frames.fps),
        duration=frames.num_frames / float(frames.fps) if duration is None else duration,
        num_frames=int(frames.num_frames),
        frames=images,
        tiled=tiled,
        bound=bound,
        backend=backend,
        variable_frame_rate=variable_frame_rate,
        span=frame_range(int(frames.num_frames), float(frames.fps), bound=bound),
    )


def _check_path(source: Any) -> Path:
    if isinstance(source, VideoClip):
        raise TypeError("load_video got a VideoClip; it is already loaded, use it directly.")
    if not isinstance(source, str | os.PathLike):
        raise TypeError(
            f"load_video needs a path to a video file (str or Path), got {type(source).__name__}."
        )
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"No video file at {str(path)!r}; check the path.")
    if not path.is_file():
        raise ValueError(
            f"{str(path)!r} is not a file but a folder, FIFO, socket or device; "
            "load_video reads only regular files. Pass the path of a video file."
        )
    if path.stat().st_size == 0:
        raise ValueError(f"{str(path)!r} is empty (0 bytes), not a video.")
    return path


# --- sampling one video many times (issue 16: the FrameStrip decodes each frame once) ---------
# A block of its own: it reuses load_video's steps (probe, decoders, frame tiler, clip) as they
# are, and keeps the frames it decoded, so that a viewer resampling the same file decodes only
# frames it has not seen yet.


class VideoFrames:
    """One video file, probed once and sampled many times; each frame is decoded at most once.

    ``frames.clip(num_segments=..., bound=..., max_num=...)`` returns the clip
    :func:`load_video` returns for the same arguments and backend (the same frames, pixels and
    timestamps: the card's sampler on the decoder's own frame count and rate), decoding only
    the sampled frames not decoded before. Up to ``max_cached`` decoded frames are kept (the
    least recently used are dropped first). ``decoded`` counts the frames decoded so far.
    ``backend`` is as in :func:`load_video`; the one in use is ``backend`` after the first
    clip (``"auto"`` may fall back to PyAV, with a warning, where decord fails).
    """

    def __init__(
        self, source: str | os.PathLike[str], *, backend: Backend = "auto", max_cached: int = 256
    ) -> None:
        _check_int("max_cached", max_cached, minimum=1, fix="Keep at least one frame.")
        self.path = _check_path(source)
        self._asked = backend
        self.backend = choose_backend(backend)
        self._probe = probe_video(self.path)
        if self.backend == "decord" and self._probe.container_format in DECORD_MISSEEKS:
            if backend == "auto" and "pyav" in available_backends():
                self.backend = "pyav"  # decord returns other frames than asked for here
            else:
                warnings.warn(
                    f"decord seeks inaccurately in {self._probe.container_format} files and may "
                    f"return other frames than {self.path.name}'s frames asked for; "
                    "backend='pyav' is exact.",
                    stacklevel=2,
                )
        # the decoder's own frame count and rate (decord's are known after its first read)
        self._count: tuple[int, float] | None = (
            None if self.backend == "decord" else (self._probe.num_frames, self._probe.fps)
        )
        self._cache: dict[int, tuple[np.ndarray, float]] = {}  # index -> (frame, seconds)
        self._max_cached = max_cached
        self.decoded = 0

    def clip(
        self, *, num_segments: int = 8, max_num: int = 1, bound: Sequence[float] | None = None
    ) -> VideoClip:
        """The frames :func:`load_video` samples for these arguments, as a :class:`VideoClip`."""
        _check_int("num_segments", num_segments, minimum=1, fix="Sample at least one frame.")
        _check_int("max_num", max_num, minimum=1, fix="Use max_num=1 for one tile per frame.")
        _check_bound(bound)
        pick = functools.partial(sample_frame_indices, num_segments=num_segments, bound=bound)
        if self._count is None:  # decord: sample from its own count, as load_video does
            indices = self._decode(pick=pick)
        else:
            indices = pick(*self._count)
            missing = sorted(set(indices.tolist()) - set(self._cache))
            if missing:
                self._decode(pick=lambda n, fps: np.asarray(missing, dtype=np.int64))
        chosen = [self._cache[i] for i in indices.tolist()]
        for i in dict.fromkeys(indices.tolist()):  # most recently used last
            self._cache[i] = self._cache.pop(i)
        while len(self._cache) > self._max_cached:
            del self._cache[next(iter(self._cache))]
        num_frames, fps = self._count
        tiler = _FrameTiler(len(chosen), max_num=max_num)
        try:
            for k, (array, _) in enumerate(chosen):
                tiler.add(k, array)
        except BaseException:
            tiler.close()
            raise
        frames = DecodedFrames(
            arrays=[array for array, _ in chosen],
            indices=indices,
            timestamps=np.asarray([seconds for _, seconds in chosen], dtype=np.float64),
            num_frames=num_frames,
            fps=fps,
        )
        return _make_clip(
            self.path,
            frames,
            tiler,
            bound=None if bound is None else (float(bound[0]), float(bound[1])),
            backend=self.backend,
            variable_frame_rate=self._probe.variable_frame_rate,
        )

    def _decode(self, *, pick: Any) -> np.ndarray:
        """Decode the frames ``pick(num_frames, fps)`` chooses into the cache; their indices."""
        if self.backend == "decord":
            try:
                frames = read_decord(self.path, self._probe, pick=pick)
            except DecordFailed as e:
                if self._asked == "decord":
                    raise ValueError(str(e)) from e
                warnings.warn(f"{e}; decoding with PyAV instead.", stacklevel=3)
                self.backend = "pyav"
            else:
                self._count = (frames.num_frames, frames.fps)
                self._store(frames.indices, frames.arrays, frames.timestamps)
                return frames.indices
        if self._count is None:
            self._count = (self._probe.num_frames, self._probe.fps)
        indices = pick(*self._count)
        wanted = np.asarray(sorted(set(indices.tolist()) - set(self._cache)), dtype=np.int64)
        if len(wanted):
            arrays = decode_pyav(self.path, self._probe, wanted)
            self._store(wanted, arrays, self._probe.timestamps[wanted])
        return indices

    def _store(self, indices: np.ndarray, arrays: Sequence[np.ndarray], seconds: Any) -> None:
        for i, array, t in zip(indices.tolist(), arrays, np.asarray(seconds).tolist(), strict=True):
            if i not in self._cache:
                self.decoded += 1
            self._cache[i] = (array, float(t))
