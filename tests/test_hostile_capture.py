"""attention.capture misused: nested, from other threads, text-only, failing; the model is
left exactly as it was on every exit."""

from __future__ import annotations

import threading
import warnings

import pytest

from vltools.attention import capture
from vltools.chat import Chat
from vltools.data import sample
from vltools.images import load_image


@pytest.fixture(scope="module")
def photo():
    return load_image(sample("photo_coffee.jpg"), max_num=1)


def model_state(vm) -> tuple:
    """Everything capture touches: attention implementations, every hook, instance attributes."""
    native = vm.model
    # hooks other than transformers' own (it installs output-capturing hooks on first use)
    hooks = tuple(
        (name, h)
        for name, m in native.named_modules()
        for h in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]
        if not getattr(h, "__module__", "").startswith("transformers")
    )
    return (
        native.config.text_config._attn_implementation,
        native.model.language_model.config._attn_implementation,
        native.config.vision_config._attn_implementation,
        hooks,
        sorted(vars(native)),
        vars(native).get("generate"),
        type(native).generate,
    )


def test_a_nested_capture_on_the_same_model_is_refused_and_the_outer_keeps_working(
    tiny_model, photo
):
    before = model_state(tiny_model)
    with capture(tiny_model, photo) as outer:
        inside = model_state(tiny_model)
        with pytest.raises(RuntimeError, match="already active on this model.*do not nest"):
            with capture(tiny_model, photo):
                pass
        assert model_state(tiny_model) == inside  # the refused inner one changed nothing
        outer.generate("What is this?", max_new_tokens=2)
    assert len(outer.results) == 1
    assert model_state(tiny_model) == before


def test_a_capture_can_be_opened_again_after_one_closed(tiny_model, photo):
    before = model_state(tiny_model)
    for _ in range(3):
        with capture(tiny_model, photo) as cap:
            cap.generate("Again?", max_new_tokens=1)
        assert model_state(tiny_model) == before


class Boom(Exception):
    pass


@pytest.mark.parametrize("where", ["body", "generate", "teacher", "finish"])
def test_the_model_is_left_exactly_as_it_was_after_any_failure(
    tiny_model, photo, where, monkeypatch
):
    import vltools.attention as attention

    before = model_state(tiny_model)
    if where == "finish":

        def broken(self):
            raise Boom

        monkeypatch.setattr(attention.AttentionCapture, "_finish", broken)
    with pytest.raises(Exception):  # noqa: B017 - any failure; the state is what is checked
        with capture(tiny_model, photo) as cap:
            if where == "body":
                raise Boom
            if where == "generate":
                cap.generate("x", max_new_tokens=1, num_beams=0)  # transformers refuses
            if where == "teacher":
                cap.teacher_force("x", [])  # empty answer
            cap.generate("x", max_new_tokens=1)
    assert model_state(tiny_model) == before
    monkeypatch.undo()
    with capture(tiny_model, photo) as cap:  # and usable again
        cap.generate("x", max_new_tokens=1)


def test_a_failure_while_installing_hooks_leaves_nothing_behind(tiny_model, photo, monkeypatch):
    import vltools.attention as attention

    before = model_state(tiny_model)

    def broken(self, layer, attention_module):
        raise Boom

    monkeypatch.setattr(attention.AttentionCapture, "_vision_hooks", broken)
    with pytest.raises(Boom):
        with capture(tiny_model, photo):
            pass
    assert model_state(tiny_model) == before


def test_another_threads_chat_on_the_same_model_is_not_captured(tiny_model, photo):
    other = Chat(tiny_model, max_new_tokens=3)
    errors: list[BaseException] = []
    started, go = threading.Event(), threading.Event()

    def chat_elsewhere():
        try:
            started.set()
            go.wait(30)
            other.ask("A question from another thread.")
        except BaseException as e:  # noqa: BLE001 - handed to the test
            errors.append(e)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "recorded nothing" is what this test expects
        with capture(tiny_model, photo) as cap:
            t = threading.Thread(target=chat_elsewhere)
            t.start()
            started.wait(30)
            go.set()
            t.join(120)
    assert not errors, errors
    assert other.last is not None and other.last.new_tokens >= 1
    assert cap.results == ()  # nothing of the other thread was recorded


def test_another_threads_capture_of_the_same_model_is_refused_while_one_is_open(tiny_model, photo):
    outcome: list[BaseException | None] = []

    def try_capture():
        try:
            with capture(tiny_model, photo):
                pass
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome.append(e)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with capture(tiny_model, photo):
            t = threading.Thread(target=try_capture)
            t.start()
            t.join(60)
    assert isinstance(outcome[0], RuntimeError)


@pytest.mark.parametrize("mode", ["generate", "teacher", "chat"])
def test_a_text_only_capture_records_without_images_or_warnings(tiny_model, mode):
    before = model_state(tiny_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with capture(tiny_model, None) as cap:
            if mode == "generate":
                cap.generate("Hello there", max_new_tokens=3)
            elif mode == "teacher":
                cap.teacher_force("Hello", "hi there")
            else:
                Chat(tiny_model, max_new_tokens=2).ask("Hello")
    maps = cap.maps
    assert maps.images == () and maps.vision is None
    assert maps.weights.shape[0] >= 1
    assert model_state(tiny_model) == before
