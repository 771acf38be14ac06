"""Shared fixtures: per-test output folder, and smoke weights for every registered family."""
from pathlib import Path

import pytest

import consistent_video  # noqa: F401  (registers every node and model family)
from consistent_video.nodes import families, runtime


@pytest.fixture(autouse=True)
def output_dir(tmp_path: Path, monkeypatch) -> Path:
    """Point the standalone output folder at a per-test temporary folder (never the repo)."""
    out = tmp_path / "output"
    runtime.configure_standalone(output=out)
    monkeypatch.setenv("CVS_NO_PROGRESS", "1")
    yield out
    runtime.clear_interrupt()


@pytest.fixture(scope="session")
def smoke_weights_dir(tmp_path_factory) -> Path:
    """A folder holding ``<family>/`` smoke weights for every registered family."""
    root = tmp_path_factory.mktemp("smoke_weights")
    for name in families.names():
        families.get(name).write_smoke(root / name)
    return root
