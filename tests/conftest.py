"""Shared test fixtures: where the real data lives, and CPU-only settings for DeepSpeed and torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repo: real annotations, split lists and video clips (see its README)."""
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the tests need the shared data folder beside the repo")
    return SHARED


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
