"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models' ops are too small to gain from intra-op threads; one thread avoids oversubscribing 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _private_score_cache(tmp_path_factory, monkeypatch):
    """Each test scores into its own cache, never the user's (~/.cache/videobench/score_cache)."""
    monkeypatch.setenv("VIDEOBENCH_SCORE_CACHE", str(tmp_path_factory.mktemp("score_cache")))


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """A temporary folder as the data root, with an empty weights folder (nothing found unless a test puts it)."""
    monkeypatch.setenv("VIDEOBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("VIDEOBENCH_WEIGHTS", str(tmp_path / "no-weights"))
    return tmp_path
