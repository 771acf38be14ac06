"""The Memory-V2V video memory bank: every finished turn, persisted as one versioned file.

A turn holds what later turns need to be conditioned on it:

- ``latent`` ``[C, F, H, W]``: the turn's output in the VAE's latent space (normalised as the
  DiT sees it; ``C`` = 16 for the Wan 2.1 VAE of ReCamMaster, 48 for the Wan 2.2 VAE of
  LucyEdit), stored as float16;
- ``cameras``: its camera trajectory (one camera per output frame, the pack's OpenCV
  :class:`~consistent_video.nodes.cameras.CameraBatch`), for VideoFOV retrieval and for the
  per-video camera embedding. Required for ``task == "camera"``; edit turns have none;
- ``descriptor`` (optional) ``[D]`` float32: the mean DINOv2 embedding of its *source*
  segment, for editing-task retrieval;
- ``prompt`` and ``task`` (``"camera"`` / ``"edit"``) as plain text;
- for an edit turn that is one segment of a long video (:mod:`.segments`): ``source``
  ``[C, F, H, W]`` (the latent of the source segment it edited, same shape as ``latent``,
  float16), ``video`` (the :class:`~.segments.SegmentPlan` fingerprint: which source video and
  segmentation it belongs to) and ``segment`` (its 0-based index in that plan). Such a turn
  needs all three and a ``descriptor``. ``video`` / ``segment`` / ``source`` are refused on
  camera turns. (An ``"edit"`` turn without ``video`` is accepted, as version-1 files may hold
  one; it belongs to no segmented video.)

The bank changes only through :meth:`VideoMemoryBank.add` (after a turn completed) and
:meth:`VideoMemoryBank.remove_last`; :meth:`save` replaces the file atomically, so a failed
or cancelled turn leaves both the bank and its file as they were. A turn with a NaN or
infinite value (as stored: float16 overflows to inf) in its latent, source, descriptor or
cameras is refused with :class:`NonFiniteTurn`: every later turn that retrieved it would be
poisoned.

File format (safetensors, metadata ``format`` = ``consistent_video.video_memory``):

- **version 2** (written): tensors ``turn.<i>.latent`` (float16), ``turn.<i>.c2w`` /
  ``turn.<i>.K`` (float32, only for turns with cameras), ``turn.<i>.descriptor`` (if any),
  ``turn.<i>.source`` (float16, if any); metadata ``turns`` = a JSON list with, per turn,
  ``prompt``, ``task``, ``video`` (string or null), ``segment`` (int or null) and, for turns
  with cameras, ``width`` / ``height``;
- **version 1** (still read): every turn has cameras, no ``source`` / ``video`` / ``segment``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..nodes.cameras.geometry import CameraBatch
from ..nodes.comfy.tensor_files import read_versioned, read_versioned_metadata, write_atomic

FORMAT = "consistent_video.video_memory"
FORMAT_VERSION = 2  # 2: edit turns (source latent, video fingerprint, segment index; no cameras)
TASKS = ("camera", "edit")
_TENSORS = ("latent", "c2w", "K", "descriptor", "source")


class BankFileError(ValueError):
    """A video memory file that cannot be read (the message names the file and the problem)."""


class NonFiniteTurn(ValueError):
    """A turn that :meth:`VideoMemoryBank.add` refused because it holds NaN or infinite values."""


@dataclass
class Turn:
    """One finished turn (module doc). The first five fields keep their version-1 order."""

    latent: torch.Tensor
    cameras: Optional[CameraBatch] = None
    descriptor: Optional[torch.Tensor] = None
    prompt: str = ""
    task: str = "camera"
    source: Optional[torch.Tensor] = None
    video: Optional[str] = None
    segment: Optional[int] = None

    def __post_init__(self):
        if self.latent.ndim != 4:
            raise ValueError(f"a turn's latent must be [C, F, H, W]; got {list(self.latent.shape)}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}; got {self.task!r}")
        if self.descriptor is not None and self.descriptor.ndim != 1:
            raise ValueError(f"a descriptor must be [D]; got {list(self.descriptor.shape)}")
        if self.task == "camera":
            if self.cameras is None:
                raise ValueError("a camera turn needs its cameras (one per output frame)")
            given = [name for name in ("source", "video", "segment") if getattr(self, name) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} belong to edit turns (segments of a long video); "
                                 "a camera turn has none")
        if self.source is not None and tuple(self.source.shape) != tuple(self.latent.shape):
            raise ValueError(f"a turn's source latent must have its latent's shape {list(self.latent.shape)}; "
                             f"got {list(self.source.shape)}")
        if (self.video is None) != (self.segment is None):
            raise ValueError("an edit turn's video fingerprint and segment index go together; got "
                             f"video={self.video!r}, segment={self.segment!r}")
        if self.video is not None:
            if not isinstance(self.video, str) or not self.video:
                raise ValueError(f"video must be a non-empty fingerprint string; got {self.video!r}")
            if isinstance(self.segment, bool) or not isinstance(self.segment, int) or self.segment < 0:
                raise ValueError(f"segment must be an int index >= 0; got {self.segment!r}")
            missing = [name for name in ("source", "descriptor") if getattr(self, name) is None]
            if missing:
                raise ValueError(f"an edit turn of segment {self.segment} needs its {' and '.join(missing)} "
                                 "(the source segment's latent and its mean DINOv2 descriptor)")

    @property
    def frames(self) -> int:
        """Output frames: one per camera for a camera turn, else the latent frames (Wan VAE: 4k + 1)."""
        if self.cameras is not None:
            return len(self.cameras)
        return (self.latent.shape[1] - 1) * 4 + 1


class VideoMemoryBank:
    """An ordered list of :class:`Turn` (oldest first) with atomic persistence."""

    def __init__(self) -> None:
        self.turns: list[Turn] = []

    def __len__(self) -> int:
        return len(self.turns)

    def add(self, turn: Turn) -> int:
        """Append a finished turn; returns its index. Latents (and source latents) are kept as
        float16 on the CPU, descriptors as float32, always as the bank's own copies.

        Raises :class:`NonFiniteTurn` (the bank unchanged) when the latent or source as
        stored, the descriptor or the cameras hold a NaN or infinite value."""
        def own(x, dtype):  # a copy: callers may reuse theirs; tensors saved together must not share memory
            return None if x is None else x.detach().to("cpu", dtype, copy=True).contiguous()
        stored = Turn(own(turn.latent, torch.float16), turn.cameras, own(turn.descriptor, torch.float32),
                      turn.prompt, turn.task, own(turn.source, torch.float16), turn.video, turn.segment)
        parts = {"latent (as float16)": stored.latent, "source latent (as float16)": stored.source,
                 "descriptor": stored.descriptor,
                 "camera poses": None if stored.cameras is None else stored.cameras.c2w,
                 "camera intrinsics": None if stored.cameras is None else stored.cameras.K}
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
        """Write every turn to ``path`` atomically (safetensors + JSON metadata, format version 2)."""
        tensors, info = {}, []
        for i, turn in enumerate(self.turns):
            tensors[f"turn.{i}.latent"] = turn.latent
            entry = {"prompt": turn.prompt, "task": turn.task, "video": turn.video, "segment": turn.segment}
            if turn.cameras is not None:
                tensors[f"turn.{i}.c2w"] = turn.cameras.c2w.float()
                tensors[f"turn.{i}.K"] = turn.cameras.K.float()
                entry.update(width=turn.cameras.width, height=turn.cameras.height)
            if turn.descriptor is not None:
                tensors[f"turn.{i}.descriptor"] = turn.descriptor
            if turn.source is not None:
                tensors[f"turn.{i}.source"] = turn.source
            info.append(entry)
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
        """Read a file written by :meth:`save` (format version 1 or 2); problems raise :class:`BankFileError`."""
        tensors, metadata = read_versioned(path, FORMAT, FORMAT_VERSION, "video memory file", BankFileError)
        bank = cls()
        try:
            for i, entry in enumerate(json.loads(metadata["turns"])):
                cameras = None
                if f"turn.{i}.c2w" in tensors or f"turn.{i}.K" in tensors:
                    cameras = CameraBatch(tensors[f"turn.{i}.c2w"], tensors[f"turn.{i}.K"], int(entry["width"]),
                                          int(entry["height"]))
                # version 1 has no video / segment: None; Turn checks their types
                bank.turns.append(Turn(tensors[f"turn.{i}.latent"], cameras, tensors.get(f"turn.{i}.descriptor"),
                                       str(entry["prompt"]), str(entry["task"]), tensors.get(f"turn.{i}.source"),
                                       entry.get("video"), entry.get("segment")))
            extra = set(tensors) - {f"turn.{i}.{name}" for i in range(len(bank)) for name in _TENSORS}
            if extra:
                raise ValueError(f"tensors of no listed turn: {sorted(extra)[:3]}")
        except (KeyError, TypeError, ValueError) as exc:
            raise BankFileError(f"{path} is an inconsistent video memory file ({type(exc).__name__}: {exc})") from None
        return bank
