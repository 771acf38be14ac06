"""Named state files under the output folder: memories that live across queue runs.

A memory node takes a name from the user; the file is ``<output>/<folder>/<name>.safetensors``.
The name rule keeps it a plain file name (no folders), and ``<name>.previous`` is reserved
for the copy a reset (or an undo) keeps. Nodes whose result is the file's state re-run on
every queue (:func:`always_rerun` as their ``IS_CHANGED``).

A reset changes nothing when it is asked for: the memory node hands on a
:class:`PendingReset`, nodes that read see an empty memory, and the first node that stores
into the memory applies it in :func:`save_memory` (old file kept as ``<name>.previous``,
then the new memory written). A run that fails before storing loses nothing, however often
it is queued, and an empty memory never overwrites a backup.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

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
    """``<name>.previous.safetensors`` beside ``path``: where a reset or an undo keeps the old memory."""
    return path.with_name(f"{path.name[:-len(EXTENSION)]}.previous{EXTENSION}")


def identity(path: Path) -> Optional[tuple]:
    """``(inode, mtime_ns, size)`` of the file at ``path``, or None when there is none; every
    atomic save makes a new inode, so a changed file has a new identity."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _stage_backup(path: Path, empty: Callable[[Path], bool]) -> Optional[Path]:
    """A temporary copy of ``path`` beside it, to become :func:`previous_path`; None when
    there is no file or ``empty(path)`` says the memory in it holds nothing (a file ``empty``
    cannot read, raising ``ValueError``, is copied)."""
    if not path.is_file():
        return None
    try:
        if empty(path):
            return None
    except ValueError:
        pass
    fd, temporary = tempfile.mkstemp(prefix=f".{previous_path(path).name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        shutil.copy2(path, temporary)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Path(temporary)


def save_memory(path: Path, write: Callable[[Path], Any], *, keep_old: bool, empty: Callable[[Path], bool]) -> None:
    """Store a memory: ``write(path)`` (an atomic save).

    With ``keep_old`` (a reset being applied, an undo), the file it replaces becomes
    ``<name>.previous`` (one level of undo; the copy before it is replaced) once the new file
    is written, so a failed or cancelled write leaves both files as they were. Nothing is
    kept when there was no file or ``empty(path)`` says its memory holds nothing: an empty
    memory never overwrites a backup.
    """
    backup = _stage_backup(path, empty) if keep_old else None
    try:
        write(path)
    except BaseException:
        if backup is not None:
            backup.unlink(missing_ok=True)
        raise
    if backup is not None:
        os.replace(backup, previous_path(path))


@dataclass(frozen=True)
class PendingReset:
    """A reset asked for by a memory node and not applied yet (module doc).

    ``identity`` is the file's :func:`identity` when the reset was asked for; the reset holds
    (:func:`resetting`) while the file is unchanged. The node that stores first applies it,
    which gives the file a new identity, so later nodes of the run read the new file.
    """

    identity: Optional[tuple]


def ask_reset(path: Path) -> PendingReset:
    """A :class:`PendingReset` of the memory file at ``path`` as it is now."""
    return PendingReset(identity(path))


def resetting(reset: Optional[PendingReset], path: Path) -> bool:
    """Whether ``reset`` (None: none asked for) still holds for the file at ``path``: nodes
    then read an empty memory and the next store keeps the old file (:func:`save_memory`)."""
    return reset is not None and identity(path) == reset.identity


def always_rerun(cls, **_) -> float:
    """``IS_CHANGED`` of nodes whose state is a file: never reuse a cached result."""
    return float("nan")
