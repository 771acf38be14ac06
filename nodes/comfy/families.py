"""Registry of model families and the typed handle the shared loader produces.

Each capability folder registers one :class:`Family` describing its official file
layout, where its weights come from, their licence, how to load them and how to write
smoke weights in the same layout. The shared loader node, the CLI (``smoke-weights``)
and the demo read this registry; nothing in ``nodes/`` imports a capability folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

SMOKE_MARKER = "SMOKE_WEIGHTS.txt"
"""File written next to smoke weights; outputs made from such a folder say so."""


def mark_smoke(folder: Path, what: str) -> None:
    """Write :data:`SMOKE_MARKER` into ``folder``, naming ``what`` the weights are."""
    (Path(folder) / SMOKE_MARKER).write_text(
        f"Tiny random {what} weights written by `python -m consistent_video smoke-weights`.\n"
        "They prove the plumbing, not quality: outputs made with them are noise.\n", encoding="utf-8")


@dataclass
class ModelHandle:
    """What the shared loader outputs (ComfyUI type ``CVS_MODEL``).

    ``modules``: the networks by role (e.g. ``{"unet": ..., "vae": ...}``), resting on
    the offload device until a node calls ``runtime.load_to_device``;
    ``extra``: non-module parts (scheduler config, ...); ``is_smoke``: random smoke weights.
    """

    family: str
    source: Path
    modules: dict[str, torch.nn.Module]
    device: torch.device
    dtype: torch.dtype
    extra: dict = field(default_factory=dict)
    is_smoke: bool = False

    def __repr__(self) -> str:  # shown in ComfyUI debug output; keep it short
        smoke = ", SMOKE weights" if self.is_smoke else ""
        return f"<CVS {self.family} model from {self.source} on {self.device} {self.dtype}{smoke}>"


@dataclass(frozen=True)
class Family:
    """A supported model family.

    ``files``: paths (relative to the weights folder) that the official release has and
    the loader needs; ``load(folder, device, dtype) -> ModelHandle``;
    ``write_smoke(folder)`` writes tiny random weights in the same layout;
    ``smoke_overrides``: ``{node class id: {input: value}}`` applied (and announced) by the
    demo and the integration test when they fall back to smoke weights, to keep a CPU run
    short, e.g. a lower working resolution. Never applied to real weights.
    ``optional_files``: ``{path in the folder: "repo_id:path in that repo"}`` for parts that
    come from other releases (e.g. a shared VAE) and that nodes may take from elsewhere
    (a ComfyUI VAE input). They are not needed for a folder to count as complete; when the
    loader downloads, it fetches the missing ones too.
    ``models_folder``: the folder under ``models/`` (default: ``name``); families whose
    release is one download for several of them share one (e.g. VideoMV's text and image
    modes, both in one zip), so the files are not stored twice.
    ``manual_download``: for releases that are not on Hugging Face (``default_repo`` empty),
    where and how to get the files (a sentence, shown in "weights not found" errors), and
    ``default_entry`` the folder name that download unpacks to under ``models/<models_folder>/``.
    A ``repo_id`` given by the user is still downloaded from Hugging Face.
    ``download_patterns``: extra glob patterns fetched with ``files`` when the loader downloads
    the release (parts whose file names vary, e.g. a sharded or single-file transformer); the
    loader itself checks them and names what is missing.
    """

    name: str
    display_name: str
    default_repo: str
    files: tuple[str, ...]
    licence: str
    load: Callable[[Path, torch.device, torch.dtype], ModelHandle]
    write_smoke: Callable[[Path], None]
    smoke_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    optional_files: Mapping[str, str] = field(default_factory=dict)
    models_folder: str = ""
    manual_download: str = ""
    default_entry: str = ""
    download_patterns: tuple[str, ...] = ()

    @property
    def folder_name(self) -> str:
        """The folder under ``models/`` that holds this family's weights."""
        return self.models_folder or self.name


def check_model(node: str, name: str, value, family: str | tuple[str, ...], hint: str = "") -> ModelHandle:
    """Return ``value`` if it is a :class:`ModelHandle` of ``family`` (one name, or a tuple of the
    names accepted), else raise a ``NodeInputError`` naming the node, the input and the families
    expected. ``hint`` is added after what was got when the value is a model of another family."""
    from .errors import NodeInputError, describe
    accepted = (family,) if isinstance(family, str) else tuple(family)
    if isinstance(value, ModelHandle) and value.family in accepted:
        return value
    if isinstance(value, ModelHandle):
        got = f"a '{value.family}' model" + (f" ({hint})" if hint else "")
    else:
        got = describe(value)
    names = " or ".join(f"'{f}'" for f in accepted)
    raise NodeInputError(node, name, f"got {got}", f"a model from 'CVS Model Loader' with family {names}")


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    _FAMILIES[family.name] = family
    return family


def get(name: str) -> Family:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family '{name}'; known: {', '.join(sorted(_FAMILIES)) or 'none'}") from None


def names() -> list[str]:
    return sorted(_FAMILIES)
