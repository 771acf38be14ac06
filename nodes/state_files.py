"""Named state files under the output folder: memories that live across queue runs.

A memory node takes a name from the user; the file is ``<output>/<folder>/<name>.safetensors``.
The name rule keeps it a plain file name (no folders), and ``<name>.previous`` is reserved
for the copy a reset keeps. Nodes whose result is the file's state re-run on every queue
(:func:`always_rerun` as their ``IS_CHANGED``).
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from . import runtime
from .errors import NodeInputError

EXTENSION = ".safetensors"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def check_name(node: str, name) -> str:
    """``name`` stripped, if it is a valid memory name; else a ``NodeInputError`` on input 'name'."""
    name = str(name).strip()
    if not NAME.match(name) or name.endswith(".previous"):
        raise NodeInputError(node, "name", f"is '{name}'", "1-128 letters, digits, '_', '-' or '.', starting "
                             "with a letter or digit (no folders)")
    return name


def state_path(folder: str, name: str) -> Path:
    """``<output>/<folder>/<name>.safetensors``."""
    return runtime.output_dir() / folder / f"{name}{EXTENSION}"


def previous_path(path: Path) -> Path:
    """``<name>.previous.safetensors`` beside ``path``: where a reset keeps the old memory."""
    return path.with_name(f"{path.name[:-len(EXTENSION)]}.previous{EXTENSION}")


def keep_previous(path: Path) -> None:
    """Before a reset replaces ``path``: copy it to :func:`previous_path` (one level of undo;
    the copy before it is overwritten). Nothing happens when ``path`` does not exist."""
    if path.is_file():
        shutil.copy2(path, previous_path(path))


def always_rerun(cls, **_) -> float:
    """``IS_CHANGED`` of nodes whose state is a file: never reuse a cached result."""
    return float("nan")
