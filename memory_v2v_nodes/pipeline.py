"""A Memory-V2V turn: re-render the user's video along new cameras, conditioned on retrieved earlier turns.

Steps (ReCamMaster's sampler with Memory-V2V's memory):

1. **Video**: the first ``frames`` frames (4k + 1, ReCamMaster: 81) of the user video, resized
   to ``width x height`` by aspect-preserving resize and centre crop, encoded by the Wan VAE
   (posterior mean, normalised per channel with the VAE's ``latents_mean`` / ``latents_std``)
   into ``[16, (frames - 1) / 4 + 1, height / 8, width / 8]``.
2. **Cameras** (:func:`camera_rows`): per latent frame ``k`` the camera of output frame ``4k``,
   as a pose *relative to the target path's first camera* (ReCamMaster's inference: that
   camera is the user video's camera, the identity), 12 numbers per camera. The memory
   videos' cameras are made relative to the same camera, as VideoFOV retrieval does.
3. **Retrieval**: the bank's camera turns ranked by VideoFOV against the target cameras
   (:mod:`.retrieval`), top ``k``; the best 3 are tokenised at 1x4x4, the rest at 1x8x8.
4. **Sampling**: flow matching with ReCamMaster's schedule (``sigma_i = linspace(1, 0, steps + 1)``
   without the last, shifted by ``shift * s / (1 + (shift - 1) * s)``, shift 5; Euler steps
   through diffusers' ``FlowMatchEulerDiscreteScheduler``), classifier-free guidance
   ``u + cfg (c - u)`` with both branches in one batch, every call through
   :func:`.memory_forward.denoise`.
5. **Decode** with the Wan VAE.

A turn changes nothing until it is complete; the caller adds it to the bank afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..nodes.comfy import runtime
from ..nodes.cameras.geometry import CameraBatch, relative_to
from ..nodes.comfy.runtime import module_place
from .bank import Turn, VideoMemoryBank
from .memory_forward import (DEFAULT_MERGE_BLOCKS, DEFAULT_MERGE_RATIO, CallReport, MemoryVideo, denoise,
                             tokenizer_for_rank)
from .retrieval import rank_by_fov, rank_turns_by_appearance

TEMPORAL_STRIDE = 4  # Wan VAE: 4 frames per latent frame after the first
SPATIAL_STRIDE = 8

Progress = Optional[Callable[[int], None]]


@dataclass(frozen=True)
class TurnSettings:
    """One turn. Defaults: ReCamMaster's sampler (50 steps, CFG 5, shift 5) at 832x480, 81 frames."""

    steps: int = 50
    cfg: float = 5.0
    shift: float = 5.0
    seed: int = 0
    frames: int = 81
    width: int = 832
    height: int = 480
    top_k: int = 6
    merge_ratio: float = DEFAULT_MERGE_RATIO
    merge_blocks: tuple = DEFAULT_MERGE_BLOCKS
    fov_radius: float = 1.0

    def __post_init__(self):
        if self.frames < 1 or (self.frames - 1) % TEMPORAL_STRIDE:
            raise ValueError(f"frames must be 4k + 1 (the Wan VAE's temporal stride), e.g. 81; got {self.frames}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value < 16 or value % 16:
                raise ValueError(f"{name} must be a positive multiple of 16 (VAE x8, patch x2); got {value}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1; got {self.steps}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be 0 or more; got {self.top_k}")


def latent_frames(frames: int) -> int:
    return (frames - 1) // TEMPORAL_STRIDE + 1


def fit_video(video: torch.Tensor, settings: TurnSettings) -> torch.Tensor:
    """``[N,H,W,3]`` -> the first ``settings.frames`` frames at ``width x height`` (aspect-preserving
    resize, antialiased bilinear, then centre crop). Raises ``ValueError`` for too few frames."""
    if video.shape[0] < settings.frames:
        raise ValueError(f"the video has {video.shape[0]} frames; expected at least the {settings.frames} a turn "
                         "re-renders (or set 'frames' to 4k + 1 not above the video's length)")
    return fit_size(video[:settings.frames], settings.width, settings.height)


def fit_size(video: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``[N,H,W,3]`` -> ``[N,height,width,3]`` float32 0..1: aspect-preserving resize (antialiased
    bilinear) so the frame covers ``width x height``, then centre crop (never stretched)."""
    x = video.float().permute(0, 3, 1, 2)
    scale = max(width / x.shape[-1], height / x.shape[-2])
    size = (max(height, round(x.shape[-2] * scale)), max(width, round(x.shape[-1] * scale)))
    if size != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    x = x[..., top:top + height, left:left + width]
    return x.permute(0, 2, 3, 1).clamp(0, 1).contiguous()


class WanCodec:
    """The Wan VAE on ``[F,H,W,3]`` 0..1 videos <-> normalised latents ``[16, F', H/8, W/8]``."""

    def __init__(self, vae) -> None:
        self.vae = vae
        self.mean = torch.tensor(vae.config.latents_mean).view(-1, 1, 1, 1)
        self.std = torch.tensor(vae.config.latents_std).view(-1, 1, 1, 1)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        device, dtype = module_place(self.vae)
        x = video.permute(3, 0, 1, 2)[None].to(device=device, dtype=dtype) * 2 - 1
        z = self.vae.encode(x).latent_dist.mode()[0].float().cpu()
        return (z - self.mean) / self.std

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        device, dtype = module_place(self.vae)
        z = (latent.float() * self.std + self.mean)[None].to(device=device, dtype=dtype)
        video = self.vae.decode(z).sample[0].float().cpu()
        return ((video + 1) / 2).clamp(0, 1).permute(1, 2, 3, 0).contiguous()


def camera_rows(cameras: CameraBatch, frames: int, reference: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The camera embedding input of the DiT: ``[latent frames, 12]`` float32, one row per latent
    frame ``k`` for output frame ``4k`` (frames 0, 4, ..., ``frames - 1``: 21 rows for 81 frames).

    Convention (ReCamMaster's ``get_relative_pose``, which ``cam_encoder`` was trained on):

    - **Frame**: every pose is relative to ``reference``, a camera-to-world ``[4,4]``; default
      (``None``) the first camera of ``cameras``, as ReCamMaster's inference script does for the
      target path. So row 0 of a target path is always the identity ``[1 0 0 0 0 1 0 0 0 0 1 0]``:
      the path starts at the user video's camera. (ReCamMaster trains relative to the source
      video's first camera; its target paths start there.) Memory videos pass the *target's*
      first camera as ``reference`` (:func:`memory_videos`), so all cameras share one frame.
    - **Axes**: the relative pose ``rel = inv(reference) @ c2w_i`` is a camera-to-reference
      transform in OpenCV axes (x right, y down, z forward), the axes ReCamMaster's loader
      produces from its Unreal Engine files (see
      :func:`~consistent_video.nodes.cameras.formats.load_recammaster`).
    - **12 numbers**: the top three rows of ``rel`` flattened row-major,
      ``[r00 r01 r02 tx  r10 r11 r12 ty  r20 r21 r22 tz]``.
    - **Scale**: translations in the batch's units, unscaled. ReCamMaster only divides its
      Unreal centimetres by 100 (so its network saw metres) and normalises nothing else;
      paths from CVS camera nodes should use metre-like units too.

    Raises ``ValueError`` unless there is exactly one camera per output frame.
    """
    if len(cameras) != frames:
        raise ValueError(f"there are {len(cameras)} cameras for {frames} frames; give one camera per output frame")
    picked = cameras.c2w[::TEMPORAL_STRIDE][:latent_frames(frames)]
    rel = relative_to(picked, cameras.c2w[0] if reference is None else reference)
    return rel[:, :3, :4].reshape(-1, 12).float()


def retrieve(bank: VideoMemoryBank, target: CameraBatch, settings: TurnSettings) -> list[tuple[int, float]]:
    """Top-k camera turns of ``bank`` by VideoFOV against ``target`` (``[(turn index, score)]``, best first)."""
    candidates = [i for i, t in enumerate(bank.turns) if t.task == "camera"]
    if not candidates or settings.top_k == 0:
        return []
    ranked = rank_by_fov(target, [bank.turns[i].cameras for i in candidates], settings.top_k,
                         radius=settings.fov_radius)
    return [(candidates[i], score) for i, score in ranked]


def retrieve_by_appearance(bank: VideoMemoryBank, descriptor: torch.Tensor, top_k: int) -> list[tuple[int, float]]:
    """Top-k re-render (camera) turns by DINOv2 similarity of their source videos to ``descriptor``
    (``[D]``), the most recent such turn always first (``[(turn index, cosine)]``). Edit turns
    (segments of a long video) are left to :func:`.segments.retrieve_segments`."""
    candidates = [i for i, t in enumerate(bank.turns) if t.task == "camera" and t.descriptor is not None
                  and t.descriptor.shape == descriptor.shape]
    return rank_turns_by_appearance(bank, candidates, descriptor, top_k)


def memory_videos(bank: VideoMemoryBank, picked: Sequence[tuple[int, float]], latent_shape,
                  target: CameraBatch) -> list[MemoryVideo]:
    """The retrieved turns as conditioning videos (best 3 at 1x4x4, the rest at 1x8x8), each with
    its own trajectory's camera rows relative to the first camera of ``target`` (this turn's
    path; :func:`camera_rows`), the frame VideoFOV retrieval ranks them in."""
    out = []
    for rank, (index, _) in enumerate(picked):
        turn = bank.turns[index]
        if tuple(turn.latent.shape[2:]) != tuple(latent_shape[2:]) or turn.latent.shape[0] != latent_shape[0]:
            raise ValueError(f"memory turn {index} has latents {list(turn.latent.shape)}; this turn's are "
                             f"{list(latent_shape)} (a memory holds one video size: reset it for another)")
        frames = (len(turn.cameras) - 1) // TEMPORAL_STRIDE * TEMPORAL_STRIDE + 1
        out.append(MemoryVideo(turn.latent.float(), camera_rows(turn.cameras[:frames], frames, target.c2w[0]),
                               tokenizer_for_rank(rank)))
    return out


def schedule(steps: int, shift: float):
    """diffusers' flow-matching Euler scheduler on ReCamMaster's sigmas (module doc)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(sigmas=list(np.linspace(1.0, 0.0, steps + 1)[:-1]))
    return scheduler


@torch.no_grad()
def sample(model, user_latent: torch.Tensor, target_rows: torch.Tensor, text: torch.Tensor,
           memory: Sequence[MemoryVideo], settings: TurnSettings, progress: Progress = None,
           report: Optional[CallReport] = None, adapters: Optional[tuple] = None) -> torch.Tensor:
    """The target latent ``[16, F', h, w]`` (float32, CPU). ``text`` ``[2, L, D]``: conditional then
    unconditional tokens. ``report`` gets the first call's token counts and merges. ``adapters``:
    ``(embedders, mergers)`` from :func:`.adapters.load_adapters` (default: parameter-free).
    ``progress(1)`` after every step; Cancel also stops a step before the next part of a
    transformer block (:func:`~consistent_video.nodes.comfy.runtime.interruptible`)."""
    embedders, mergers = adapters or ({}, {})
    device, dtype = module_place(model)
    generator = torch.Generator().manual_seed(int(settings.seed))
    x = torch.randn((1,) + tuple(user_latent.shape), generator=generator).to(device)
    user = user_latent[None].to(device=device, dtype=dtype)
    mem = [MemoryVideo(v.latent.to(device=device, dtype=dtype), v.cams.to(device), v.tokenizer) for v in memory]
    text = text.to(device=device, dtype=dtype)
    rows = target_rows.to(device)
    scheduler = schedule(settings.steps, settings.shift)
    with runtime.interruptible(model):
        for i, t in enumerate(scheduler.timesteps):
            out = denoise(model, torch.cat([x, x]).to(dtype), t.expand(2).to(device), text, rows, user, mem,
                          merge_blocks=settings.merge_blocks, merge_ratio=settings.merge_ratio,
                          embedders=embedders, mergers=mergers, report=report if i == 0 else None).float()
            cond, uncond = out.chunk(2)
            x = scheduler.step(uncond + settings.cfg * (cond - uncond), t, x).prev_sample
            if progress is not None:
                progress(1)
    return x[0].cpu()


def make_turn(latent: torch.Tensor, cameras: CameraBatch, prompt: str,
              descriptor: Optional[torch.Tensor] = None) -> Turn:
    """The bank entry of a finished turn (``descriptor``: its source segment's DINOv2 mean, if computed)."""
    return Turn(latent, cameras, descriptor, prompt, "camera")
