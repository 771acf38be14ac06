"""The Memory-V2V video memory bank: every finished turn, persisted as one versioned file.

A turn holds what later turns need to be conditioned on it:

- ``latent`` ``[C, F, H, W]``: the turn's output in the Wan VAE's latent space (normalised as
  the DiT sees it), stored as float16;
- ``cameras``: its camera trajectory (one camera per output frame, the pack's OpenCV
  :class:`~consistent_video.nodes.cameras.CameraBatch`), for VideoFOV retrieval and for the
  per-video camera embedding;
- ``descriptor`` (optional) ``[D]``: the mean DINOv2 embedding of its *source* segment, for
  editing-task retrieval;
- ``prompt`` and ``task`` (``"camera"`` / ``"edit"``) as plain text.

The bank changes only through :meth:`VideoMemoryBank.add` (after a turn completed) and
:meth:`VideoMemoryBank.remove_last`; :meth:`save` replaces the file atomically, so a failed
or cancelled turn leaves both the bank and its file as they were. A turn with a NaN or
infinite value (as stored: float16 overflows to inf) is refused with :class:`NonFiniteTurn`:
every later turn that retrieved it would be poisoned.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..nodes.cameras import CameraBatch
from ..nodes.tensor_files import read_versioned, read_versioned_metadata, write_atomic

FORMAT = "consistent_video.video_memory"
FORMAT_VERSION = 1
TASKS = ("camera", "edit")


class BankFileError(ValueError):
    """A video memory file that cannot be read (the message names the file and the problem)."""


class NonFiniteTurn(ValueError):
    """A turn that :meth:`VideoMemoryBank.add` refused because it holds NaN or infinite values."""


@dataclass
class Turn:
    """One finished turn (module doc)."""

    latent: torch.Tensor
    cameras: CameraBatch
    descriptor: Optional[torch.Tensor] = None
    prompt: str = ""
    task: str = "camera"

    def __post_init__(self):
        if self.latent.ndim != 4:
            raise ValueError(f"a turn's latent must be [C, F, H, W]; got {list(self.latent.shape)}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}; got {self.task!r}")
        if self.descriptor is not None and self.descriptor.ndim != 1:
            raise ValueError(f"a descriptor must be [D]; got {list(self.descriptor.shape)}")


class VideoMemoryBank:
    """An ordered list of :class:`Turn` (oldest first) with atomic persistence."""

    def __init__(self) -> None:
        self.turns: list[Turn] = []

    def __len__(self) -> int:
        return len(self.turns)

    def add(self, turn: Turn) -> int:
        """Append a finished turn; returns its index. Latents are kept as float16 on the CPU.

        Raises :class:`NonFiniteTurn` (the bank unchanged) when the latent as stored, the
        descriptor or the cameras hold a NaN or infinite value."""
        stored = Turn(turn.latent.detach().to("cpu", torch.float16).contiguous(), turn.cameras,
                      None if turn.descriptor is None else turn.descriptor.detach().float().cpu(),
                      turn.prompt, turn.task)
        parts = {"latent (as float16)": stored.latent, "descriptor": stored.descriptor,
                 "camera poses": stored.cameras.c2w, "camera intrinsics": stored.cameras.K}
        for what, value in parts.items():
            bad = 0 if value is None else int((~torch.isfinite(value)).sum())
            if bad:
                raise NonFiniteTurn(f"the turn's {what} has {bad} NaN or infinite value(s); it was not stored")
        self.turns.append(stored)
        return len(self.turns) - 1

    def remove_last(self) -> Turn:
        if not self.turns:
            raise IndexError("the video memory is empty")
        return self.turns.pop()

    def save(self, path: Path, writer=None) -> Path:
        """Write every turn to ``path`` atomically (safetensors + JSON metadata)."""
        tensors, info = {}, []
        for i, turn in enumerate(self.turns):
            tensors[f"turn.{i}.latent"] = turn.latent
            tensors[f"turn.{i}.c2w"] = turn.cameras.c2w.float()
            tensors[f"turn.{i}.K"] = turn.cameras.K.float()
            if turn.descriptor is not None:
                tensors[f"turn.{i}.descriptor"] = turn.descriptor
            info.append({"width": turn.cameras.width, "height": turn.cameras.height, "prompt": turn.prompt,
                         "task": turn.task})
        metadata = {"format": FORMAT, "version": str(FORMAT_VERSION), "turns": json.dumps(info)}
        return write_atomic(path, tensors, metadata, writer=writer)

    @staticmethod
    def stored_turns(path: Path) -> int:
        """How many turns the file at ``path`` holds, read from its header alone (:class:`BankFileError`
        if it is unreadable)."""
        metadata = read_versioned_metadata(path, FORMAT, FORMAT_VERSION, "video memory file", BankFileError)
        try:
            return len(json.loads(metadata["turns"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise BankFileError(f"{path} is an inconsistent video memory file ({type(exc).__name__}: {exc})") from None

    @classmethod
    def load(cls, path: Path) -> "VideoMemoryBank":
        """Read a file written by :meth:`save`; problems raise :class:`BankFileError`."""
        tensors, metadata = read_versioned(path, FORMAT, FORMAT_VERSION, "video memory file", BankFileError)
        bank = cls()
        try:
            for i, entry in enumerate(json.loads(metadata["turns"])):
                cameras = CameraBatch(tensors[f"turn.{i}.c2w"], tensors[f"turn.{i}.K"], int(entry["width"]),
                                      int(entry["height"]))
                bank.turns.append(Turn(tensors[f"turn.{i}.latent"], cameras, tensors.get(f"turn.{i}.descriptor"),
                                       str(entry["prompt"]), str(entry["task"])))
            extra = set(tensors) - {k for i in range(len(bank)) for k in
                                    (f"turn.{i}.latent", f"turn.{i}.c2w", f"turn.{i}.K", f"turn.{i}.descriptor")}
            if extra:
                raise ValueError(f"tensors of no listed turn: {sorted(extra)[:3]}")
        except (KeyError, TypeError, ValueError) as exc:
            raise BankFileError(f"{path} is an inconsistent video memory file ({type(exc).__name__}: {exc})") from None
        return bank
