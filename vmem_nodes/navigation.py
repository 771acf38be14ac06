"""Navigating a scene with VMem: retrieve context views through the surfel memory,
generate the next views, memorise them.

A walk lives in a :class:`~.memory.SurfelMemory` that stores, per frame, the camera, the
square image (uint8) and its latent. :meth:`Navigator.start` memorises the starting image
(frame 0, usually the identity camera); each :meth:`Navigator.step` then

1. retrieves up to ``K`` context views for the target cameras (:mod:`.retrieval`);
2. generates the targets in one call of ``T`` frames (``K`` context + ``T - K`` targets;
   fewer targets are padded by repeating the last camera, as VMem pads its first step
   from a single image to 1 + 7 frames), see :mod:`.pipeline`;
3. decodes them, estimates their geometry with the pointmap provider (aligned to the
   memory) and adds them to the memory as one step.

The memory is changed only at the very end of a step, so a failure or a cancel in the
middle (the ``progress`` callback may raise) leaves it exactly as it was. The noise seed
of a step is ``seed + frames in memory``, so a walk saved and reloaded continues exactly
like one that never stopped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..nodes.cameras.geometry import CameraBatch
from ..nodes.encoders.clip import ImageEmbedder
from ..nodes.encoders.vae import LatentCodec
from .memory import StepReport, SurfelMemory
from .model import SevaUNet
from .pipeline import GenerationError, GenerationSettings, build_conditioning, sample_latents
from .pointmaps import PointmapProvider
from .retrieval import RetrievalSettings

FIT_MODES = ("crop", "pad")


def fit_square(images: torch.Tensor, size: int, mode: str) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Make ``images [N,H,W,3]`` square ``[N,size,size,3]`` for the network.

    ``crop``: the centred square of the short side (VMem's choice), resized. ``pad``: the
    whole image resized so its long side is ``size``, centred, and padded by repeating the
    edge pixels. Returns the images and the ``(top, left, height, width)`` of the original
    picture inside the square (the whole square for ``crop``).
    """
    if mode not in FIT_MODES:
        raise GenerationError("fit", f"is {mode!r}", f"one of {', '.join(FIT_MODES)}")
    n, H, W, _ = images.shape
    x = images.permute(0, 3, 1, 2).float()
    if mode == "crop":
        side = min(H, W)
        top, left = (H - side) // 2, (W - side) // 2
        x = x[:, :, top:top + side, left:left + side]
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        return x.clamp(0, 1).permute(0, 2, 3, 1).contiguous(), (0, 0, size, size)
    scale = size / max(H, W)
    h, w = max(1, round(H * scale)), max(1, round(W * scale))
    x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (size - h) // 2, (size - w) // 2
    x = F.pad(x, (left, size - w - left, top, size - h - top), mode="replicate")
    return x.permute(0, 2, 3, 1).contiguous(), (top, left, h, w)


def square_cameras(cameras: CameraBatch, size: int, mode: str) -> CameraBatch:
    """The same cameras for the square frames :func:`fit_square` makes of their images:
    the normalised intrinsics are moved into the square (crop: the centred square of the
    short side; pad: the long side's square with the picture centred); poses unchanged."""
    if mode not in FIT_MODES:
        raise GenerationError("fit", f"is {mode!r}", f"one of {', '.join(FIT_MODES)}")
    W, H = float(cameras.width), float(cameras.height)
    side = min(W, H) if mode == "crop" else max(W, H)
    K = cameras.K.clone()
    K[:, 0, :] = K[:, 0, :] * W  # to pixels of the original image
    K[:, 1, :] = K[:, 1, :] * H
    K[:, 0, 2] += (side - W) / 2
    K[:, 1, 2] += (side - H) / 2
    K[:, :2, :] = K[:, :2, :] / side
    K[:, 2, :] = cameras.K[:, 2, :]
    return CameraBatch(cameras.c2w.clone(), K, size, size)


def crop_region(images: torch.Tensor, region: tuple[int, int, int, int]) -> torch.Tensor:
    """``images [N,S,S,3]`` cut to ``region`` from :func:`fit_square`."""
    top, left, h, w = region
    return images[:, top:top + h, left:left + w]


@dataclass(frozen=True)
class NavigationSettings:
    """Generation and retrieval settings of a walk, and its seed.

    ``retrieval.num_views`` is ``K``, the most context views per call; it must leave room
    for at least one target in ``generation.num_frames``.
    """

    generation: GenerationSettings = field(default_factory=GenerationSettings)
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    seed: int = 42

    def validate(self) -> None:
        self.generation.validate()
        self.retrieval.validate()
        if self.retrieval.num_views >= self.generation.num_frames:
            raise GenerationError("context_views", f"is {self.retrieval.num_views}",
                                  f"fewer than the frames per call ({self.generation.num_frames})")


@dataclass(frozen=True)
class WalkSettings:
    """Everything a run of the VMem generation nodes sets besides its moves and models.

    ``navigation``: sampling, retrieval (``retrieval.num_views`` is the node's
    ``context_views``) and seed of every step (:class:`NavigationSettings`).
    ``resolution``: side in pixels of the square frames (a multiple of 64; fixed for a walk
    once it has started). ``fit``: how a non-square starting image becomes square, one of
    :data:`FIT_MODES` (:func:`fit_square`). ``fov``: field of view in degrees of the starting
    camera when the walk starts without a planned path. ``start_depth``: median depth of the
    starting image in scene units (what a move of 1 means). ``poses_per_action``: new views
    generated along each action.
    """

    navigation: NavigationSettings = field(default_factory=NavigationSettings)
    resolution: int = 576
    fit: str = "crop"
    fov: float = 54.0
    start_depth: float = 2.0
    poses_per_action: int = 4


@dataclass
class StepResult:
    """One step: the new ``images [n,S,S,3]`` 0..1, their ``cameras`` and ``latents``, the
    memory frames used as ``context`` (selection order), and the memory's report."""

    images: torch.Tensor
    cameras: CameraBatch
    latents: torch.Tensor
    context: torch.Tensor
    report: StepReport


class Navigator:
    """Runs VMem steps on a memory (see the module doc).

    Args:
        unet: the SEVA UNet (on ``device`` in ``dtype`` when called).
        codec / embedder: the VAE and CLIP image encoder adapters (:mod:`..nodes.encoders.vae`, :mod:`..nodes.encoders.clip`).
        provider: geometry of new frames (:mod:`.pointmaps`).
        progress: ``progress(n)`` after each unit of work (:meth:`units_per_step` per
            step); it may raise to cancel.
    """

    def __init__(self, unet: SevaUNet, codec: LatentCodec, embedder: ImageEmbedder, provider: PointmapProvider,
                 device: torch.device, dtype: torch.dtype, settings: NavigationSettings = NavigationSettings(),
                 progress: Optional[Callable[[int], None]] = None):
        settings.validate()
        self.unet, self.codec, self.embedder, self.provider = unet, codec, embedder, provider
        self.device, self.dtype, self.settings = device, dtype, settings
        self.progress = progress or (lambda n: None)

    def units_per_step(self) -> int:
        """Progress units of one step: the sampling steps plus embed, decode and geometry."""
        return self.settings.generation.steps + 3

    def targets_per_call(self, memory: SurfelMemory) -> int:
        """How many targets the next call can generate: ``T - min(K, frames in memory)``."""
        return self._room(memory.num_frames)

    def _room(self, frames: int) -> int:
        """Targets per call when the memory holds ``frames`` frames (at least the start view)."""
        return self.settings.generation.num_frames - min(self.settings.retrieval.num_views, max(frames, 1))

    def start(self, memory: SurfelMemory, image: torch.Tensor, camera: CameraBatch) -> StepResult:
        """Memorise the starting view ``image [1,S,S,3]`` 0..1 with ``camera`` (one camera of
        an ``S x S`` image) in an empty memory."""
        if memory.num_frames:
            raise GenerationError("memory", f"already holds {memory.num_frames} frames", "an empty memory to start")
        latents = self.codec.encode(image).float().cpu()
        self.progress(1)
        pointmaps = self.provider(image, camera, memory)
        self.progress(1)
        report = memory.add_frames(pointmaps, camera, images=image, latents=latents)
        return StepResult(image, camera, latents, torch.zeros(0, dtype=torch.int64), report)

    def step(self, memory: SurfelMemory, targets: CameraBatch,
             retrieval: Optional[RetrievalSettings] = None) -> StepResult:
        """Generate and memorise the views of ``targets`` (at most :meth:`targets_per_call`)."""
        settings = self.settings
        retrieval = retrieval or settings.retrieval
        T = settings.generation.num_frames
        if memory.num_frames == 0:
            raise GenerationError("memory", "is empty", "a started walk (memorise the first image first)")
        if (targets.width, targets.height) != memory.camera_size:
            raise GenerationError("cameras", f"are for {targets.width}x{targets.height} images",
                                  f"the walk's size {memory.camera_size[0]}x{memory.camera_size[1]}")
        context = memory.retrieve(targets, retrieval)
        if context.latents is None or context.images is None:
            raise GenerationError("memory", "stores no latents or images",
                                  "a memory filled by the VMem nodes (start a new one)")
        k, n = len(context.indices), len(targets)
        if not 1 <= n <= T - k:
            raise GenerationError("cameras", f"are {n} targets with {k} context views",
                                  f"1..{T - k} targets per call of {T} frames")
        padded = CameraBatch.cat([targets] + [targets[n - 1:]] * (T - k - n))
        cameras = CameraBatch.cat([context.cameras.to("cpu"), padded.to("cpu")])
        embeddings = self.embedder.embed(context.images).float().cpu()
        self.progress(1)
        mask = torch.arange(T) < k
        conditioning = build_conditioning(cameras, mask, context.latents, embeddings,
                                          settings.generation.camera_scale)
        latents = sample_latents(self.unet, conditioning, settings.generation, settings.seed + memory.num_frames,
                                 self.device, self.dtype, on_step=lambda i: self.progress(1))
        new_latents = latents[k:k + n].contiguous()
        if not torch.isfinite(new_latents).all():  # never memorised: every later step would retrieve them
            raise GenerationError("model", "generated NaN or infinite latents",
                                  "finite latents (check the weights and the guidance; the memory is unchanged)")
        images = self.codec.decode(new_latents).float().cpu()
        self.progress(1)
        pointmaps = self.provider(images, targets, memory)
        self.progress(1)
        report = memory.add_frames(pointmaps, targets, images=images, latents=new_latents)
        return StepResult(images, targets, new_latents, context.indices, report)

    def plan(self, memory: SurfelMemory, segments: list[CameraBatch]) -> list[tuple[int, CameraBatch]]:
        """Split target segments (e.g. one per action) into calls ``(segment index, targets)``:
        a segment longer than a call's capacity is cut into consecutive pieces (the first call
        of a new walk takes up to ``T - 1`` targets, later ones ``T - K``)."""
        frames, calls = memory.num_frames, []
        for number, segment in enumerate(segments):
            start = 0
            while start < len(segment):
                piece = segment[start:start + self._room(frames)]
                calls.append((number, piece))
                frames += len(piece)
                start += len(piece)
        return calls
