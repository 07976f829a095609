"""A loaded model renders every prompt with its own template, and says which and from where."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vltools import testing
from vltools.chat import Chat, batch_prompts
from vltools.models import load_model

JINJA = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{{ message['content'] }}{{'<|im_end|>\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\\n' }}{% endif %}"
)


def _copy(tiny_path: Path, folder: Path, template: str) -> Path:
    folder.mkdir(parents=True)
    for path in testing.checkpoint_files(tiny_path):
        shutil.copy(path, folder / path.name)
    config = json.loads((folder / "config.json").read_text())
    config["template"] = template
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def internvl2_5_model(tiny_path, tmp_path_factory):
    folder = _copy(tiny_path, tmp_path_factory.mktemp("t") / "ckpt", "internvl2_5")
    return load_model(str(folder), device="cpu", dtype="float32")


def test_the_repr_names_the_template_and_where_it_came_from(tiny_model, internvl2_5_model):
    assert "template='Hermes-2' (from config.json)" in repr(tiny_model)
    assert "template='internvl2_5' (from config.json)" in repr(internvl2_5_model)
    assert internvl2_5_model.stop_token == "<|im_end|>"


def test_every_prompt_path_uses_the_models_own_template(internvl2_5_model):
    m = internvl2_5_model
    (batch,) = batch_prompts(m, ["Q"], [[1]])
    assert batch.text.startswith("<|im_start|>system\n你是书生·万象")
    assert batch.text.endswith("</img>\nQ<|im_end|>\n<|im_start|>assistant\n")
    chat = Chat(m, max_new_tokens=2)
    chat.ask("Hello")
    assert chat.last.prompt.text.endswith("user\nHello<|im_end|>\n<|im_start|>assistant\n")
    chat.ask("Again")
    assert "<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n" in chat.last.prompt.text


def test_a_native_checkpoint_with_its_own_chat_template_uses_it(tiny_model, tmp_path):
    folder = tmp_path / "native"
    tiny_model.model.save_pretrained(str(folder))
    tiny_model.tokenizer.save_pretrained(str(folder))
    (folder / "chat_template.jinja").write_text(JINJA, encoding="utf-8")
    native = load_model(str(folder), device="cpu", dtype="float32")
    assert "template='chat_template' (from chat_template.jinja)" in repr(native)
    (prompt,) = batch_prompts(native, ["Q"], [[1]])
    assert prompt.compact == (
        "<|im_start|>user\n<img><IMG_CONTEXT>×256</img>\nQ<|im_end|>\n<|im_start|>assistant\n"
    )
    again = native.save_pretrained(tmp_path / "again")
    assert (again / "chat_template.jinja").read_text(encoding="utf-8") == JINJA


def test_a_native_checkpoint_without_a_template_follows_internvl2_5(tiny_model, tmp_path):
    folder = tmp_path / "native"
    tiny_model.model.save_pretrained(str(folder))
    tiny_model.tokenizer.save_pretrained(str(folder))
    native = load_model(str(folder), device="cpu", dtype="float32")
    assert native.prompt_template.name == "internvl2_5"
    assert "(from default for native checkpoints)" in repr(native)
