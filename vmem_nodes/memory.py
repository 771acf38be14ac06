"""The surfel-indexed view memory: add frames, retrieve context views, undo, save, load.

A :class:`SurfelMemory` holds, for F memorised frames numbered ``0..F-1`` in the order
they were added: their cameras (one image size for the whole memory), optionally their
images (uint8) and latents, and the surfels with the frames that observed them
(:mod:`.surfel_index`). Frames are added in *steps* (VMem adds 4 generated views at a
time); :meth:`SurfelMemory.undo` removes the last step.

Guarantees:

- **Transactional adds.** Inputs are validated first; if anything fails later (including
  a cancel), the memory is exactly as before the call.
- **Exact undo.** Everything is append-only, so undoing a step restores the previous state
  bit for bit (and later adds and retrievals behave as if the step never happened).
- **Atomic saves** to one versioned safetensors file: tensors plus JSON metadata in its
  header, written to a temporary file in the same folder, flushed to disk, then renamed
  over the old file. A crash or an error during a save leaves the previous file intact.
  A loaded memory retrieves and merges exactly like the one that was saved.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors.torch import save_file

from ..nodes.cameras.geometry import CameraBatch
from ..nodes.comfy.tensor_files import read_versioned, read_versioned_metadata, write_atomic
from .retrieval import Retrieval, RetrievalSettings, SurfelRender, render_surfels, retrieve
from .surfel_index import MergeSettings, Rows, SurfelIndex
from .surfels import Pointmaps, SurfelInputError, SurfelSettings, check_pointmaps, surfels_from_pointmaps

FORMAT = "consistent_video.surfel_memory"
FORMAT_VERSION = 1

# Colour ramp of the preview, from few observations (dark blue) to many (red).
_RAMP = torch.tensor([[0.19, 0.07, 0.23], [0.16, 0.47, 0.93], [0.15, 0.85, 0.55],
                      [0.95, 0.80, 0.10], [0.80, 0.10, 0.05]])

_serialise = save_file  # the writer of :meth:`SurfelMemory.save` (tests replace it to simulate crashes)


class MemoryFileError(ValueError):
    """A memory file that cannot be read: missing, corrupt, another format or a newer version."""


@dataclass
class StepReport:
    """What one :meth:`SurfelMemory.add_frames` did: ``frames [n]`` (indices given to the new
    frames), surfels ``added``, new surfels ``merged`` into existing ones, and the
    ``observations`` recorded (added + distinct existing surfels merged into, per frame)."""

    frames: torch.Tensor
    added: int
    merged: int
    observations: int


@dataclass
class ContextViews:
    """Views selected for a query: memory frame ``indices [k]`` (selection order), their
    ``cameras``, ``images [k,H,W,3]`` float 0..1 and ``latents [k,...]`` (None where the
    memory stores none), and the :class:`~.retrieval.Retrieval` details."""

    indices: torch.Tensor
    cameras: CameraBatch
    images: Optional[torch.Tensor]
    latents: Optional[torch.Tensor]
    retrieval: Retrieval


class SurfelMemory:
    """Surfel-indexed view memory (see the module doc)."""

    def __init__(self, surfel_settings: SurfelSettings = SurfelSettings(),
                 merge_settings: MergeSettings = MergeSettings()):
        surfel_settings.validate()
        merge_settings.validate()
        self.surfel_settings, self.merge_settings = surfel_settings, merge_settings
        self._index = SurfelIndex(merge_settings)
        self._c2w = Rows((4, 4), torch.float32)
        self._K = Rows((3, 3), torch.float32)
        self._images: list[torch.Tensor] = []
        self._latents: list[torch.Tensor] = []
        self._steps: list[tuple[int, int, int]] = []  # (frames, surfels, observations) before each step
        self.camera_size: Optional[tuple[int, int]] = None  # (width, height) of every memorised camera

    # ---- inspection -----------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return len(self._c2w)

    @property
    def num_surfels(self) -> int:
        return self._index.num_surfels

    @property
    def num_steps(self) -> int:
        return len(self._steps)

    @property
    def stores_latents(self) -> bool:
        """Whether every frame has a stored latent (a VMem walk's memory); every later step must bring them."""
        return bool(self._latents)

    @property
    def merge_distance(self) -> Optional[float]:
        return self._index.merge_distance

    @property
    def index(self) -> SurfelIndex:
        """The surfels and their observations (read only)."""
        return self._index

    def cameras(self, indices: Optional[torch.Tensor] = None) -> CameraBatch:
        """Cameras of the memorised frames ``indices`` (default: all)."""
        if self.num_frames == 0:
            raise SurfelInputError("memory", "holds no frames", "at least one memorised frame")
        pick = slice(None) if indices is None else torch.as_tensor(indices, dtype=torch.int64)
        return CameraBatch(self._c2w.data[pick].clone(), self._K.data[pick].clone(), *self.camera_size)

    def images(self, indices: torch.Tensor) -> Optional[torch.Tensor]:
        """Stored images of frames ``indices`` as ``[k,H,W,3]`` float 0..1, or None."""
        if not self._images:
            return None
        return torch.stack([self._images[i] for i in indices.tolist()]).float() / 255.0

    def latents(self, indices: torch.Tensor) -> Optional[torch.Tensor]:
        """Stored latents of frames ``indices`` as ``[k,...]``, or None."""
        if not self._latents:
            return None
        return torch.stack([self._latents[i] for i in indices.tolist()])

    # ---- adding -----------------------------------------------------------------------------
    def _check_add(self, pointmaps, cameras, images, latents) -> None:
        if not isinstance(pointmaps, Pointmaps):
            raise SurfelInputError("pointmaps", f"is a {type(pointmaps).__name__}", "a Pointmaps")
        if not isinstance(cameras, CameraBatch):
            raise SurfelInputError("cameras", f"is a {type(cameras).__name__}", "a CameraBatch")
        points = pointmaps.points
        n = points.shape[0] if isinstance(points, torch.Tensor) and points.dim() == 4 else None
        if n is not None and len(cameras) != n:
            raise SurfelInputError("cameras", f"has {len(cameras)} cameras for {n} pointmaps",
                                   f"one camera per frame: {n} (points {list(pointmaps.points.shape)})")
        check_pointmaps(pointmaps.points, pointmaps.confidence, cameras.c2w, cameras.K)
        if self.camera_size is not None and (cameras.width, cameras.height) != self.camera_size:
            raise SurfelInputError("cameras", f"refer to {cameras.width}x{cameras.height} images",
                                   f"the memory's camera size {self.camera_size[0]}x{self.camera_size[1]}")
        if images is None:
            if self._images:
                raise SurfelInputError("images", "is missing", "images for every frame (this memory stores images)")
        else:
            stored = list(self._images[0].shape) if self._images else None
            shape = f"[{n},H,W,3] float 0..1" + (f" with H,W = {stored[:2]}" if stored else "")
            if (not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] != n
                    or images.shape[-1] != 3 or 0 in images.shape or not torch.is_floating_point(images)
                    or (stored is not None and list(images.shape[1:]) != stored)):
                got = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
                raise SurfelInputError("images", f"is {got}", shape)
            if self.num_frames and not self._images:
                raise SurfelInputError("images", "were given", "none: this memory was started without images")
            if not torch.isfinite(images).all():
                raise SurfelInputError("images", "has NaN or infinite values", shape)
        if latents is None:
            if self._latents:
                raise SurfelInputError("latents", "is missing", "latents for every frame (this memory stores latents)")
        else:
            stored = self._latents[0] if self._latents else None
            want = (f"[{n},...] with per-frame shape {list(stored.shape)} ({stored.dtype})" if stored is not None
                    else f"[{n},...] (one latent per frame)")
            if (not isinstance(latents, torch.Tensor) or latents.dim() < 2 or latents.shape[0] != n
                    or (stored is not None and (latents.shape[1:] != stored.shape or latents.dtype != stored.dtype))):
                got = list(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
                raise SurfelInputError("latents", f"is {got}", want)
            if self.num_frames and not self._latents:
                raise SurfelInputError("latents", "were given", "none: this memory was started without latents")
            if not torch.isfinite(latents).all():  # a NaN latent would poison every step that retrieves it
                raise SurfelInputError("latents", f"has {int((~torch.isfinite(latents)).sum())} NaN or infinite "
                                       "value(s)", f"finite latents {want}")

    def add_frames(self, pointmaps: Pointmaps, cameras: CameraBatch, images: Optional[torch.Tensor] = None,
                   latents: Optional[torch.Tensor] = None) -> StepReport:
        """Memorise N frames as one step.

        Args:
            pointmaps: world points, depth and confidence ``[N,H,W,...]`` (any resolution).
            cameras: N cameras (one image size for the whole memory).
            images: optional ``[N,H,W,3]`` float 0..1 (stored as uint8); required for every
                step once the memory stores images, refused otherwise; same for
            latents: optional ``[N,...]`` (stored as given, on the CPU).
        Raises:
            SurfelInputError: a malformed input (the memory is unchanged).
        """
        self._check_add(pointmaps, cameras, images, latents)
        surfels = surfels_from_pointmaps(pointmaps.points, pointmaps.confidence, cameras.c2w, cameras.K,
                                         self.surfel_settings)
        marker = (self.num_frames, self._index.num_surfels, self._index.num_pairs)
        first, n = self.num_frames, len(cameras)
        try:
            added, merged = self._index.add_frames(surfels, first)
            self._c2w.append(cameras.c2w.detach().cpu())
            self._K.append(cameras.K.detach().cpu())
            if images is not None:
                as_bytes = (images.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8)
                self._images.extend(as_bytes.unbind(0))
            if latents is not None:
                self._latents.extend(latents.detach().cpu().clone().unbind(0))
            self._steps.append(marker)
            self.camera_size = (cameras.width, cameras.height)
        except BaseException:
            self._truncate(*marker)
            raise
        return StepReport(torch.arange(first, first + n), added, merged, self._index.num_pairs - marker[2])

    def _truncate(self, frames: int, surfels: int, pairs: int) -> None:
        """Back to the state with the first ``frames``, ``surfels`` and ``pairs``."""
        self._index.truncate(surfels, pairs)
        self._c2w.truncate(frames)
        self._K.truncate(frames)
        del self._images[frames:]
        del self._latents[frames:]
        while self._steps and self._steps[-1][0] >= frames:
            self._steps.pop()
        if frames == 0:
            self.camera_size = None

    def undo(self) -> int:
        """Remove the last step exactly; returns the number of frames removed (0 if empty)."""
        if not self._steps:
            return 0
        frames = self._steps[-1][0]
        removed = self.num_frames - frames
        self._truncate(*self._steps[-1])
        return removed

    # ---- reading ----------------------------------------------------------------------------
    def retrieve(self, cameras: CameraBatch, settings: RetrievalSettings = RetrievalSettings()) -> ContextViews:
        """Context views for the target ``cameras`` (:func:`.retrieval.retrieve`)."""
        if not isinstance(cameras, CameraBatch):
            raise SurfelInputError("cameras", f"is a {type(cameras).__name__}", "a CameraBatch")
        if self.num_frames == 0:
            raise SurfelInputError("memory", "holds no frames", "at least one memorised frame to retrieve from")
        cameras = cameras.to("cpu")
        found = retrieve(self._index, self._c2w.data, cameras.c2w, cameras.K, settings)
        return ContextViews(found.indices, self.cameras(found.indices), self.images(found.indices),
                            self.latents(found.indices), found)

    def render(self, camera: CameraBatch, width: int, height: int) -> SurfelRender:
        """The surfels as seen by ``camera`` (a batch of one) at ``width x height`` with its
        own intrinsics (used to align depth predictions to the memory)."""
        camera = camera.to("cpu")
        return render_surfels(self._index.position, self._index.normal, self._index.radius, camera.c2w[0],
                              camera.K[0], width, height)

    def preview(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(points [M,3], colours [M,3] 0..1, counts [M])``: surfel centres coloured by how
        many frames observed them (log scale, dark blue = once, red = most)."""
        counts = self._index.observation_counts()
        top = float(counts.max()) if counts.numel() else 1.0
        t = torch.log(counts.double()) / max(torch.log(torch.tensor(top)).item(), 1e-12)
        x = t.float().clamp(0, 1) * (_RAMP.shape[0] - 1)
        low = x.floor().long().clamp(max=_RAMP.shape[0] - 2)
        frac = (x - low).unsqueeze(-1)
        colours = _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac
        return self._index.position.clone(), colours, counts

    # ---- persistence ------------------------------------------------------------------------
    def save(self, path: Union[str, Path]) -> Path:
        """Write the whole memory to ``path`` atomically (see the module doc); returns the path."""
        tensors = self._index.tensors()
        tensors["frame.c2w"] = self._c2w.data.clone()
        tensors["frame.K"] = self._K.data.clone()
        if self._images:
            tensors["frame.images"] = torch.stack(self._images)
        if self._latents:
            tensors["frame.latents"] = torch.stack(self._latents)
        state = {"surfel_settings": dataclasses.asdict(self.surfel_settings),
                 "merge_settings": dataclasses.asdict(self.merge_settings),
                 "merge_distance": self._index.merge_distance, "camera_size": self.camera_size,
                 "steps": self._steps}
        metadata = {"format": FORMAT, "version": str(FORMAT_VERSION), "state": json.dumps(state)}
        return write_atomic(path, tensors, metadata, writer=_serialise)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "SurfelMemory":
        """Read a file written by :meth:`save`. Raises :class:`MemoryFileError` saying what is wrong."""
        tensors, metadata = read_versioned(path, FORMAT, FORMAT_VERSION, "surfel memory file", MemoryFileError)
        try:
            state = json.loads(metadata["state"])
            memory = cls(SurfelSettings(**state["surfel_settings"]), MergeSettings(**state["merge_settings"]))
            memory._restore(tensors, state)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            raise MemoryFileError(f"{path} is an inconsistent surfel memory file "
                                  f"({type(exc).__name__}: {exc})") from None
        return memory

    @staticmethod
    def stored_steps(path: Union[str, Path]) -> int:
        """How many steps the file at ``path`` (written by :meth:`save`) holds, read from its
        header alone. Raises :class:`MemoryFileError` if it is unreadable."""
        metadata = read_versioned_metadata(path, FORMAT, FORMAT_VERSION, "surfel memory file", MemoryFileError)
        try:
            return len(json.loads(metadata["state"])["steps"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MemoryFileError(f"{path} is an inconsistent surfel memory file ({type(exc).__name__}: {exc})") \
                from None

    def _restore(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        """Fill an empty memory from saved tensors and state, checking their consistency."""
        c2w, K = tensors["frame.c2w"], tensors["frame.K"]
        frames, surfels = c2w.shape[0], tensors["surfel.position"].shape[0]
        pairs = tensors["observation.surfel"].shape[0]
        shapes = {"frame.K": (frames, 3, 3), "surfel.normal": (surfels, 3), "surfel.radius": (surfels,),
                  "observation.frame": (pairs,), "frame.c2w": (frames, 4, 4), "surfel.position": (surfels, 3)}
        for key, shape in shapes.items():
            if tuple(tensors[key].shape) != shape:
                raise ValueError(f"{key} has shape {list(tensors[key].shape)}, expected {list(shape)}")
        for key, limit in (("observation.surfel", surfels), ("observation.frame", frames)):
            values = tensors[key]
            if values.numel() and (int(values.min()) < 0 or int(values.max()) >= limit):
                raise ValueError(f"{key} refers to entries outside 0..{limit - 1}")
        for key in ("frame.images", "frame.latents"):
            if key in tensors and tensors[key].shape[0] != frames:
                raise ValueError(f"{key} holds {tensors[key].shape[0]} frames, expected {frames}")
        steps = [tuple(int(v) for v in step) for step in state["steps"]]
        if any(a >= b for a, b in zip(steps, steps[1:])) or (steps and steps[-1][0] >= frames):
            raise ValueError("the step list does not match the frames")
        self._index = SurfelIndex.from_tensors(tensors, self.merge_settings, state["merge_distance"])
        self._c2w.append(c2w.to(torch.float32))
        self._K.append(K.to(torch.float32))
        if "frame.images" in tensors:
            self._images = list(tensors["frame.images"].to(torch.uint8).unbind(0))
        if "frame.latents" in tensors:
            self._latents = list(tensors["frame.latents"].unbind(0))
        self._steps = steps
        self.camera_size = tuple(state["camera_size"]) if state["camera_size"] else None
