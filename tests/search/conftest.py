"""Fixtures for the search tests (the helpers they use live in search_helpers.py)."""

from __future__ import annotations

import pytest
from search_helpers import make_model_dir, write_task


@pytest.fixture(scope="session")
def search_tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny")
    return {
        "model": str(make_model_dir(root / "model")),
        "data": str(write_task(root / "task.jsonl")),
        "other_model": str(make_model_dir(root / "model2", seed=1)),
    }


@pytest.fixture()
def tiny_loaded(search_tiny):
    from tensorllm.models.io import load_model

    return load_model(search_tiny["model"], device="cpu")
