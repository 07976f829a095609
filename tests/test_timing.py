"""time_batch: the same questions one by one and batched, timed with the caller's clock."""

from __future__ import annotations

import itertools

import pytest
import torch

from vltools.timing import BatchTiming, time_batch


class FakeImage:
    def __init__(self, tiles: int) -> None:
        self.pixel_values = torch.zeros(tiles, 3, 4, 4)
        self.num_tiles = tiles


class FakeModel:
    """Records the card-style calls time_batch makes."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def chat(self, pixel_values, question, config):
        self.calls.append(("chat", tuple(pixel_values.shape), question, config))
        return "answer"

    def batch_chat(self, pixel_values, questions, config, num_patches_list=None):
        self.calls.append(("batch", tuple(pixel_values.shape), list(questions), config))
        self.calls.append(("tiles", list(num_patches_list)))
        return ["answer"] * len(questions)


def ticking_clock(steps):
    """A clock that advances by the next of ``steps`` on every second reading."""
    times = itertools.accumulate(itertools.chain.from_iterable((s, 0.0) for s in steps))
    readings = iter([0.0, *times])
    return lambda: next(readings)


def test_time_batch_asks_each_image_once_then_all_in_one_forced_greedy_batch():
    model = FakeModel()
    images = [FakeImage(1), FakeImage(3)]
    timing = time_batch(model, images, "Describe.", new_tokens=5, clock=ticking_clock([8.0, 2.0]))
    forced = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}
    assert model.calls == [
        ("chat", (1, 3, 4, 4), "Describe.", forced),
        ("chat", (3, 3, 4, 4), "Describe.", forced),
        ("batch", (4, 3, 4, 4), ["Describe.", "Describe."], forced),
        ("tiles", [1, 3]),
    ]
    assert timing == BatchTiming(samples=2, new_tokens=5, one_by_one_s=8.0, batched_s=2.0)
    assert timing.tokens == 10 and timing.speedup == 4.0
    assert timing.one_by_one_tokens_per_s == 1.25 and timing.batched_tokens_per_s == 5.0
    assert repr(timing) == (
        "BatchTiming(2 samples x 5 tokens: one by one 1.2 tokens/s, batched 5.0 tokens/s, "
        "4.00x; median of 1)"
    )


def test_repeats_keep_the_median_of_each_side():
    clock = ticking_clock([9.0, 1.0, 3.0, 2.0, 4.0, 6.0])  # one by one: 9, 1, 3; batch: 2, 4, 6
    timing = time_batch(FakeModel(), [FakeImage(1)], ["Q"], repeats=3, clock=clock)
    assert (timing.one_by_one_s, timing.batched_s, timing.repeats) == (3.0, 4.0, 3)


@pytest.mark.parametrize(
    ("images", "questions", "knobs", "message"),
    [
        ([], "Q", {}, "at least one image"),
        ([FakeImage(1)], ["a", "b"], {}, "2 questions for 1 images"),
        ([FakeImage(1)], "Q", {"new_tokens": 0}, "new_tokens must be an int >= 1"),
        ([FakeImage(1)], "Q", {"repeats": True}, "repeats must be an int >= 1"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(images, questions, knobs, message):
    model = FakeModel()
    with pytest.raises(ValueError, match=message):
        time_batch(model, images, questions, **knobs)
    assert model.calls == []
