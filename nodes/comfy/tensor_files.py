"""Versioned tensor files (safetensors + JSON metadata) written atomically.

Memories that users build over many runs (a VMem walk, a Memory-V2V video bank) are one
file each. :func:`write_atomic` writes to a temporary file next to the target, syncs it and
renames it over the target, so a crash, Cancel or full disk leaves the previous file intact;
:func:`read_versioned` reads one back, checking its format name and version.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Optional, Type

import torch
from safetensors import safe_open
from safetensors.torch import save_file

Writer = Callable[..., None]


def write_atomic(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                 writer: Optional[Writer] = None) -> Path:
    """Write ``tensors`` with string ``metadata`` to ``path`` (safetensors) atomically; returns ``path``.

    ``writer(tensors, filename, metadata=...)`` defaults to safetensors' ``save_file`` (tests
    pass one that fails half-way). The folder is created; the rename is made durable where
    the platform allows (POSIX directory fsync).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        (writer or save_file)({k: v.contiguous() for k, v in tensors.items()}, temporary, metadata=dict(metadata))
        with open(temporary, "r+b") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    return path


def _check_header(path: Path, metadata: Mapping[str, str], fmt: str, version: int, what: str,
                  error: Type[Exception]) -> None:
    if metadata.get("format") != fmt:
        raise error(f"{path} is not a {what} (format {metadata.get('format')!r})")
    found = metadata.get("version", "?")
    if not found.isdigit() or int(found) > version:
        raise error(f"{path} has format version {found}; this version of the pack reads up to version {version}. "
                    "Update the pack to load it.")


def _open(path: Path, what: str, error: Type[Exception], tensors: bool):
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}, ({k: f.get_tensor(k) for k in f.keys()} if tensors else {})
    except Exception as exc:
        raise error(f"{path} is not a readable {what} (truncated or corrupt? {type(exc).__name__}: {exc})") from None


def read_versioned(path: Path, fmt: str, version: int, what: str,
                   error: Type[Exception]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a file written by :func:`write_atomic` whose metadata has ``format == fmt`` and a
    ``version`` not newer than ``version``. Problems raise ``error`` naming ``what`` and the path."""
    metadata, tensors = _open(path, what, error, tensors=True)
    _check_header(Path(path), metadata, fmt, version, what, error)
    return tensors, metadata


def read_versioned_metadata(path: Path, fmt: str, version: int, what: str, error: Type[Exception]) -> dict[str, str]:
    """The metadata of such a file, checked like :func:`read_versioned`, without reading any tensor."""
    metadata, _ = _open(path, what, error, tensors=False)
    _check_header(Path(path), metadata, fmt, version, what, error)
    return metadata
