"""Shared fixtures: the tiny checkpoint and the model loaded from it, built once per run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The project's own copy of the test vectors (tests/reference/README.md says where they came from).
REFERENCE = REPO / "tests" / "reference"

# Tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``tests/reference``: the test vectors computed with the original code."""
    return REFERENCE


@pytest.fixture(scope="session")
def tiny_path() -> Path:
    """The offline tiny checkpoint (original InternVL2 format), built or taken from the cache."""
    from vltools.testing import tiny_checkpoint

    return tiny_checkpoint()


@pytest.fixture(scope="session")
def tiny_model(tiny_path):
    """``load_model("tiny")`` in fp32 on the CPU, shared by the tests that only read it."""
    from vltools.models import load_model

    return load_model(str(tiny_path), device="cpu", dtype="float32")
