"""Hostile checkpoints: no code from a checkpoint ever runs, damaged weights are named.

A checkpoint folder can carry ``*.py`` files, ``auto_map`` entries and a ``tokenizer_class``
chosen to make transformers offer (or, without standard input, try) to run them. Loading must
refuse such folders with a clear message, never prompt, and never import the files, even when
someone would answer "y".
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vltools import conversion, models, testing

ROOT = Path(__file__).resolve().parents[1]


def copy_tiny(tiny_path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in testing.checkpoint_files(tiny_path):
        shutil.copy(path, folder / path.name)
    return folder


def plant_code(folder: Path, marker: Path, tokenizer_class: object) -> None:
    """``*.py`` files that would write ``marker`` if imported, ``auto_map``s pointing at them."""
    code = f"open({str(marker)!r}, 'w').write('code from the checkpoint ran')\n"
    for name in ("configuration_evil", "tokenization_evil", "modeling_evil", "processing_evil"):
        (folder / f"{name}.py").write_text(code)
    auto_map = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModel": "modeling_evil.EvilModel",
        "AutoTokenizer": ["tokenization_evil.EvilTokenizer", "tokenization_evil.EvilTokenizer"],
        "AutoProcessor": "processing_evil.EvilProcessor",
        "AutoImageProcessor": "processing_evil.EvilProcessor",
    }
    for name in ("config.json", "tokenizer_config.json"):
        settings = json.loads((folder / name).read_text())
        settings["auto_map"] = auto_map
        if name == "tokenizer_config.json":
            if tokenizer_class is None:
                settings.pop("tokenizer_class", None)
            else:
                settings["tokenizer_class"] = tokenizer_class
        (folder / name).write_text(json.dumps(settings))
    for name in ("preprocessor_config.json", "processor_config.json"):
        (folder / name).write_text(json.dumps({"auto_map": auto_map}))


REFUSED_CLASSES = [
    "AutoConfig",
    "AutoTokenizer",
    "AutoModel",
    "EvilTokenizer",
    "tokenization_evil.EvilTokenizer",
    "InternVLConfig",
    "PretrainedConfig",
    "os",
    "__class__",
    "",
    42,
    ["Qwen2Tokenizer"],
]
ACCEPTED_CLASSES = ["Qwen2Tokenizer", "Qwen2TokenizerFast", "PreTrainedTokenizerFast", None]

CHILD = textwrap.dedent(
    """
    import json, sys
    from vltools import models
    results = []
    for folder in sys.argv[1:]:
        try:
            models.load_model(folder, device="cpu", dtype="float32")
            results.append("loaded")
        except Exception as e:
            results.append(type(e).__name__ + ": " + str(e))
    print("RESULTS=" + json.dumps(results))
    """
)


def run_child(folders: list[Path], stdin: str | None) -> tuple[list[str], str]:
    """load_model on each folder in a fresh interpreter; stdin closed or answering ``stdin``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TRUST_REMOTE_CODE", None)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, folders)],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env,
    )
    out = proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS=")]
    assert lines, out
    return json.loads(lines[-1].removeprefix("RESULTS=")), out


@pytest.mark.parametrize("stdin", [None, "y\ny\ny\ny\n"], ids=["stdin-closed", "answering-yes"])
def test_checkpoint_code_never_runs_and_no_prompt_appears(tiny_path, tiny_model, tmp_path, stdin):
    marker = tmp_path / "MARKER"
    folders, expected = [], []
    for i, cls in enumerate(REFUSED_CLASSES + ACCEPTED_CLASSES):
        folder = copy_tiny(tiny_path, tmp_path / f"original{i}")
        plant_code(folder, marker, cls)
        folders.append(folder)
        expected.append(cls in ACCEPTED_CLASSES)
    # the native format too: a saved tiny model with the same planted code
    for cls in ("AutoConfig", "Qwen2Tokenizer"):
        folder = tmp_path / f"native-{cls}"
        tiny_model.save_pretrained(folder)
        plant_code(folder, marker, cls)
        folders.append(folder)
        expected.append(cls == "Qwen2Tokenizer")
    results, out = run_child(folders, stdin)
    assert not marker.exists(), out
    assert "[y/N]" not in out and "custom code" not in out, out
    for folder, ok, result in zip(folders, expected, results, strict=True):
        if ok:
            assert result == "loaded", (folder, result)
        else:
            assert result.startswith("ValueError: "), (folder, result)
            assert "not a tokenizer class that transformers" in result, result
            assert "never code from a checkpoint" in result, result


@pytest.mark.parametrize("name", REFUSED_CLASSES)
def test_only_tokenizer_classes_transformers_ships_are_accepted(name):
    with pytest.raises(ValueError, match=r"tokenizer_class .* not a tokenizer class"):
        models.tokenizer_class(name)


@pytest.mark.parametrize("name", ["Qwen2Tokenizer", "Qwen2TokenizerFast", "LlamaTokenizerFast"])
def test_the_tokenizer_classes_of_real_checkpoints_are_accepted(name):
    import transformers

    cls = models.tokenizer_class(name)
    assert issubclass(cls, transformers.PreTrainedTokenizerBase)
    assert cls.__module__.startswith("transformers.")


def test_every_from_pretrained_passes_trust_remote_code_false():
    """A static check: each from_pretrained call in the package says trust_remote_code=False."""
    import ast

    calls = []
    for path in (ROOT / "vltools").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "from_pretrained"
            ):
                kw = {k.arg: k.value for k in node.keywords}
                value = kw.get("trust_remote_code")
                calls.append((path.name, node.lineno))
                assert isinstance(value, ast.Constant) and value.value is False, (
                    f"{path.name}:{node.lineno} calls from_pretrained without "
                    "trust_remote_code=False"
                )
    assert calls, "no from_pretrained call found: the check would be vacuous"


# --- pickles --------------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_refused_pickle_is_wrapped_the_same_way_in_both_formats(tiny_path, tiny_model, tmp_path):
    import torch

    marker = tmp_path / "PICKLED"
    original = copy_tiny(tiny_path, tmp_path / "original")
    native = tiny_model.save_pretrained(tmp_path / "native")
    for folder in (original, native):
        for p in folder.glob("*.safetensors"):
            p.unlink()
        torch.save({"x": _Evil(marker)}, folder / "pytorch_model.bin")
        with pytest.raises(ValueError, match=r"pytorch_model\.bin could not be read as pickle"):
            models.load_model(str(folder), device="cpu", dtype="float32", allow_pickle=True)
        with pytest.raises(ValueError, match=r"pickle.*arbitrary code.*allow_pickle=True"):
            models.load_model(str(folder), device="cpu", dtype="float32")
    assert not marker.exists()


# --- safetensors headers --------------------------------------------------------------------


def write_raw(path: Path, header: object, data: bytes, *, pad_header: int = 0) -> Path:
    raw = json.dumps(header).encode() + b" " * pad_header
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


def test_a_well_formed_header_is_read(tmp_path):
    entries = conversion._read_header(write_raw(tmp_path / "w.safetensors", GOOD, bytes(8)))
    assert entries["a"].shape == (2,) and entries["a"].end - entries["a"].start == 8


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ([1, 2, 3], bytes(8), "must be a JSON object"),
        ("text", bytes(8), "must be a JSON object"),
        (42, bytes(8), "must be a JSON object"),
        (None, bytes(8), "must be a JSON object"),
        ({"a": "F32"}, bytes(8), "unsupported header entry"),
        ({"a": {"dtype": "F32", "shape": [2]}}, bytes(8), "unsupported header entry"),
        ({"a": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), "unsupported"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8), "unsupported"),
        ({"a": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}}, bytes(8), "unsupported"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, bytes(8), "unsupported"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}}, bytes(8), "unsupp"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": ["0", 8]}}, bytes(8), "unsupp"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, bytes(8), "negative"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [-4, 4]}}, bytes(8), "negative"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8), "begin <= end"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(4), "truncated"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, bytes(8), "truncated"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(12), "needs 12"),
        ({"a": {"dtype": "F16", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), "needs 4"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            bytes(12),
            "overlap",
        ),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            },
            bytes(8),
            "overlap",
        ),
    ],
)
def test_a_damaged_or_crafted_header_is_refused(tmp_path, header, data, message):
    path = write_raw(tmp_path / "w.safetensors", header, data)
    with pytest.raises(ValueError, match=message):
        conversion._read_header(path)


def test_a_header_length_past_the_end_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(ValueError, match="truncated or not a safetensors"):
        conversion._read_header(path)


def test_a_weight_file_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        conversion._read_header(fifo)


@pytest.mark.parametrize("name", ["../model.safetensors", "/etc/passwd", "a/b.safetensors", ""])
def test_an_index_naming_files_outside_the_folder_is_refused(tmp_path, name):
    index = {"weight_map": {"a": name}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="weight_map must map tensor names to file names"):
        conversion.read_weight_index(tmp_path)
