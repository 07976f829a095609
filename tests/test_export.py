"""The native export: stock transformers alone (no vltools in the loading path) serves it.

The reference prompts (tests/reference/prompts.json for the card's scenarios, templates.json for
the four templates of the family) are parsed back into chat messages (system, user and
assistant turns; image blocks become ``{"type": "image"}`` items, ``Frame1: ...`` runs a
``{"type": "video"}`` item), rendered with the exported ``chat_template.jinja`` through stock
``AutoProcessor.apply_chat_template``, and compared with the reference byte for byte after the
processor's own placeholder expansion (``<IMG_CONTEXT>`` -> ``<img>`` + 256 x tiles + ``</img>``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vltools.export import CHAT_LAYOUTS, VIDEO_TOKEN, export_native
from vltools.prompts import compact, render_prompt

transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parent.parent


def image_run(tiles: int) -> str:
    return "<img>" + "<IMG_CONTEXT>" * (256 * tiles) + "</img>"


# Role markers, written out here independently of vltools.export.
MARKERS = {
    "Hermes-2": (
        "<|im_start|>system\n",
        "<|im_start|>user\n",
        "<|im_start|>assistant\n",
        "<|im_end|>",
    ),
    "internlm2-chat": (
        "<|im_start|>system\n",
        "<|im_start|>user\n",
        "<|im_start|>assistant\n",
        "<|im_end|>",
    ),
    "phi3-chat": ("<|system|>\n", "<|user|>\n", "<|assistant|>\n", "<|end|>"),
    "internvl2_5": (
        "<|im_start|>system\n",
        "<|im_start|>user\n",
        "<|im_start|>assistant\n",
        "<|im_end|>\n",
    ),
}


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory) -> Path:
    return export_native(tiny_model, tmp_path_factory.mktemp("native") / "tiny").path


@pytest.fixture(scope="module")
def processor(exported):
    return transformers.AutoProcessor.from_pretrained(str(exported))


def content_items(text: str) -> tuple[list[dict], list[int]]:
    """A user text of a reference prompt as chat items, and tiles per image placeholder."""
    items: list[dict] = []
    tiles: list[int] = []
    frames = re.match(r"(?:Frame\d+: <img><IMG_CONTEXT>×256</img>\n)+", text)
    labelled = re.match(r"(?:Image-\d+: <img><IMG_CONTEXT>×\d+</img>\n){2,}", text)
    single = re.match(r"<img><IMG_CONTEXT>×(\d+)</img>\n", text)
    if frames:
        items.append({"type": "video"})
        tiles.append(-frames.group(0).count("Frame"))  # negative: a video of that many frames
        text = text[frames.end() :]
    elif labelled:
        for n in re.findall(r"×(\d+)</img>", labelled.group(0)):
            items.append({"type": "image"})
            tiles.append(int(n) // 256)
        text = text[labelled.end() :]
    elif single:
        items.append({"type": "image"})
        tiles.append(int(single.group(1)) // 256)
        text = text[single.end() :]
    assert "<img>" not in text, f"unparsed image block in {text[:80]!r}"
    if not items:
        return text, tiles  # type: ignore[return-value]
    return [*items, {"type": "text", "text": text}], tiles


def messages_from_reference(prompt: str, template: str, default_system: str):
    """Parse a rendered reference prompt back into chat messages (+ tiles per placeholder)."""
    system_open, user_open, assistant_open, close = MARKERS[template]
    assert prompt.startswith(system_open) and prompt.endswith(assistant_open)
    body = prompt[len(system_open) : -len(assistant_open)]
    system, _, rest = body.partition(close)
    messages, tiles = [], []
    if system != default_system:
        messages.append({"role": "system", "content": system})
    for turn in filter(None, rest.split(close)):
        role, opener = (
            ("user", user_open) if turn.startswith(user_open) else ("assistant", assistant_open)
        )
        assert turn.startswith(opener), turn[:40]
        content, n = content_items(turn[len(opener) :])
        messages.append({"role": role, "content": content})
        tiles += n
    return messages, tiles


def expand_like_the_processor(text: str, tiles: list[int]) -> str:
    """The stock InternVLProcessor's placeholder expansion, written compactly."""
    out, parts = [], re.split(f"({re.escape('<IMG_CONTEXT>')}|{re.escape(VIDEO_TOKEN)})", text)
    queue = list(tiles)
    for part in parts:
        if part == "<IMG_CONTEXT>":
            out.append(image_run(queue.pop(0)))
        elif part == VIDEO_TOKEN:
            frames = -queue.pop(0)
            out.append("\n".join(f"Frame{i + 1}: {image_run(1)}" for i in range(frames)))
        else:
            out.append(part)
    assert not queue
    return "".join(out)


def reference_entries(reference_dir: Path):
    prompts = json.loads((reference_dir / "prompts.json").read_text(encoding="utf-8"))
    templates = json.loads((reference_dir / "templates.json").read_text(encoding="utf-8"))
    for e in prompts:
        yield "Hermes-2", f"card:{e['scenario']}:{e['call']}:{e['item']}", e["prompt_compact"]
    for e in templates:
        yield e["template"], f"{e['template']}:{e['scenario']}", e["prompt_compact"]


@pytest.fixture(scope="module")
def processors(tiny_model, tmp_path_factory):
    """One stock processor per template, each from an export of the tiny model."""
    out = {}
    for name, layout in CHAT_LAYOUTS.items():
        vlm = tiny_model.with_facts(template=name, system_message=layout.system_message)
        folder = tmp_path_factory.mktemp("templates") / name
        export_native(vlm, folder)
        out[name] = transformers.AutoProcessor.from_pretrained(str(folder))
    return out


def test_the_stock_chat_template_renders_every_reference_prompt_byte_for_byte(
    processors, reference_dir
):
    checked = 0
    for template, label, expected in reference_entries(reference_dir):
        messages, tiles = messages_from_reference(
            expected, template, CHAT_LAYOUTS[template].system_message
        )
        rendered = processors[template].apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        assert compact(expand_like_the_processor(rendered, tiles)) == expected, label
        checked += 1
    assert checked == 13 + 20  # prompts.json + templates.json


def test_the_default_system_message_is_added_only_when_the_messages_bring_none(processor):
    user = [{"role": "user", "content": "Hi"}]
    default = processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    assert default == render_prompt("Hi").text
    own = processor.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, *user],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert own == render_prompt("Hi", system_message="Be brief.").text


def test_a_literal_image_placeholder_in_text_stays_text(processor):
    text = processor.apply_chat_template(
        [{"role": "user", "content": "<image>\nWhat?"}], add_generation_prompt=True, tokenize=False
    )
    assert "<image>\nWhat?" in text and "<IMG_CONTEXT>" not in text


def test_the_stock_processor_expands_images_and_videos_into_the_card_prompt(
    processor, reference_dir
):
    """Real images through the stock processor: tokens decoded back equal the reference."""
    templates = json.loads((reference_dir / "templates.json").read_text(encoding="utf-8"))
    wanted = {e["scenario"]: e["prompt_compact"] for e in templates if e["template"] == "Hermes-2"}
    rng = np.random.default_rng(0)

    def image(w, h):
        return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)

    cases = {
        # 3 x 2 grid + thumbnail = 7 tiles; 2 x 2 + thumbnail = 5 (max_patches=6, as the card)
        "single_image_first_turn": ([image(1344, 896)], None),
        "multi_image_separate": ([image(1344, 896), image(896, 896)], None),
        "video_four_frames": (None, [rng.integers(0, 255, (4, 300, 400, 3), dtype=np.uint8)]),
    }
    for scenario, (images, videos) in cases.items():
        messages, _ = messages_from_reference(
            wanted[scenario], "Hermes-2", CHAT_LAYOUTS["Hermes-2"].system_message
        )
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        enc = processor(text=text, images=images, videos=videos, max_patches=6, return_tensors="pt")
        decoded = processor.tokenizer.decode(enc["input_ids"][0], skip_special_tokens=False)
        assert compact(decoded) == wanted[scenario], scenario
        assert enc["pixel_values"].shape[1:] == (3, 448, 448)


def test_stock_transformers_loads_the_export_and_gives_the_same_logits(
    tiny_model, exported, processor
):
    model = transformers.AutoModelForImageTextToText.from_pretrained(
        str(exported), dtype=torch.float32
    ).eval()
    assert type(model).__name__ == "InternVLForConditionalGeneration"
    assert model.generation_config.eos_token_id[0] == tiny_model.im_end_id
    torch.manual_seed(0)
    pixels = torch.randn(7, 3, 448, 448)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    stock = processor(text=text, images=[np.zeros((896, 1344, 3), np.uint8)], max_patches=6)
    ours = render_prompt("Hi.", num_patches_list=[7]).text
    ids = tiny_model.tokenizer(ours, return_tensors="pt").input_ids
    assert stock["input_ids"][0] == ids[0].tolist()
    with torch.no_grad():
        expected = tiny_model.model(input_ids=ids, pixel_values=pixels).logits
        got = model(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_the_export_writes_every_file_engines_read(exported, tiny_model):
    names = {p.name for p in exported.iterdir()}
    for required in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "processor_config.json",
        "preprocessor_config.json",
        "video_preprocessor_config.json",
    ):
        assert required in names, required
    pre = json.loads((exported / "preprocessor_config.json").read_text())
    assert (pre["max_patches"], pre["min_patches"]) == (tiny_model.max_num, tiny_model.min_num)
    assert pre["crop_to_patches"] is True and pre["size"] == {"height": 448, "width": 448}
    gen = json.loads((exported / "generation_config.json").read_text())
    assert gen["eos_token_id"][0] == tiny_model.im_end_id


def test_export_refuses_a_folder_that_is_not_empty(tiny_model, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty.*overwrite=True"):
        export_native(tiny_model, tmp_path)


def test_the_export_loads_back_into_the_same_vlmodel(exported, tiny_model):
    from vltools.models import load_model

    again = load_model(str(exported), device="cpu", dtype="float32")
    for name in ("template", "system_message", "image_token_id", "im_end_id", "max_num"):
        assert getattr(again, name) == getattr(tiny_model, name), name


def test_the_command_line_converts_and_explains_its_errors(tmp_path, tiny_path):
    env_cmd = [sys.executable, "-m", "vltools"]
    done = subprocess.run(
        [*env_cmd, "convert", str(tiny_path), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "chat_template.jinja").is_file()
    again = subprocess.run(
        [*env_cmd, "convert", str(tiny_path), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert again.returncode == 1 and "--overwrite" in again.stderr
    usage = subprocess.run(
        [*env_cmd, "convert", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert usage.returncode == 0 and "SOURCE" in usage.stdout and "DEST" in usage.stdout


def test_the_stock_pil_image_processor_gives_the_card_pixels_and_torchvision_nearly(exported):
    """PIL backend: bit for bit; torchvision (the default): a few 8-bit levels (see README)."""
    from PIL import Image

    from vltools.data import sample
    from vltools.images import load_image

    image = Image.open(sample("photo_coffee.jpg")).convert("RGB")
    card = load_image(image, max_num=12, exif_transpose=False).pixel_values
    pil = transformers.AutoImageProcessor.from_pretrained(str(exported), backend="pil")
    assert type(pil).__name__ == "GotOcr2ImageProcessorPil"
    got = torch.as_tensor(np.asarray(pil(images=[image], return_tensors="np")["pixel_values"]))
    assert got.equal(card)
    fast = transformers.AutoImageProcessor.from_pretrained(str(exported), backend="torchvision")
    near = fast(images=[image], return_tensors="pt")["pixel_values"]
    assert near.shape == card.shape
    levels = (near - card).abs().max().item() * 255 * 0.229  # worst channel's std
    assert 0 < levels <= 3


def test_saving_leaves_the_loaded_models_config_as_it_was(tiny_model, tmp_path):
    before = tiny_model.model.config.to_dict()
    tiny_model.save_pretrained(tmp_path / "export")
    assert tiny_model.model.config.to_dict() == before
    assert not hasattr(tiny_model.model.config, "template")
