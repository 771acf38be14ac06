"""Memory-V2V long-video editing on LucyEdit: one segment's edit, conditioned on earlier edited segments.

Steps for segment ``i`` of a :class:`~.segments.SegmentPlan` (the nodes run them in order):

1. **Frames**: the segment's ``length`` frames (4k + 1) at ``width x height`` (aspect-preserving
   resize and centre crop, :func:`.pipeline.fit_size`; multiples of 32: the Wan2.2 VAE's x16
   times the DiT's 2x2 patch), encoded by the Wan2.2 VAE (posterior mode, normalised with
   ``latents_mean`` / ``latents_std``, as ``LucyEditPipeline`` does) into the source latent
   ``[48, k + 1, height / 16, width / 16]``.
2. **Retrieval** (:func:`.segments.retrieve_segments`): this video's earlier edited segments,
   the most recent always first, then by cosine similarity of the mean DINOv2 embeddings of
   their *source* frames to this segment's; top ``k``. The best 3 are tokenised 1x4x4, the rest
   1x8x8 (:func:`memory_segments`); the first is the ``"prev"`` segment (RoPE range ``T..``)
   when it is segment ``i - 1``.
3. **Sampling**: LucyEdit's sampler: the scheduler of the release's
   ``scheduler/scheduler_config.json`` (UniPC, flow prediction, shift 5) over ``steps``
   steps, classifier-free guidance ``u + cfg (c - u)`` with both branches in one batch, the
   timestep given per token as ``LucyEditPipeline`` does when ``expand_timesteps`` is set,
   every call through :func:`.memory_forward.denoise_edit` (without memory exactly LucyEdit's
   transformer call).
4. **Decode** with the Wan2.2 VAE.

Noise comes from a CPU generator seeded with ``seed + i`` (segment ``i``), so a seed gives the
same segment on every device and a re-run of one segment repeats it. Nothing here touches the
bank; the caller stores a segment only after it completed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ..nodes.comfy import runtime
from ..nodes.comfy.runtime import module_place
from .bank import Turn, VideoMemoryBank
from .memory_forward import (DEFAULT_MERGE_BLOCKS, DEFAULT_MERGE_RATIO, CallReport, MemorySegment, denoise_edit,
                             tokenizer_for_rank)

SIZE_MULTIPLE = 32  # Wan2.2 VAE x16, DiT patch 2x2

Progress = Optional[Callable[[int], None]]


@dataclass(frozen=True)
class EditSettings:
    """One segment edit. Defaults: LucyEditPipeline's (50 steps, CFG 5) at 832x480."""

    steps: int = 50
    cfg: float = 5.0
    seed: int = 0
    width: int = 832
    height: int = 480
    top_k: int = 6
    merge_ratio: float = DEFAULT_MERGE_RATIO
    merge_blocks: tuple = DEFAULT_MERGE_BLOCKS

    def __post_init__(self):
        for name in ("width", "height"):
            value = getattr(self, name)
            if value < SIZE_MULTIPLE or value % SIZE_MULTIPLE:
                raise ValueError(f"{name} must be a positive multiple of {SIZE_MULTIPLE} (Wan2.2 VAE x16, patch x2); "
                                 f"got {value}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1; got {self.steps}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be 0 or more; got {self.top_k}")
        if not 0.0 <= self.merge_ratio <= 1.0:
            raise ValueError(f"merge_ratio must be in [0, 1]; got {self.merge_ratio}")


def memory_segments(bank: VideoMemoryBank, picked: Sequence[tuple[int, float]], segment: int) -> list[MemorySegment]:
    """The retrieved bank turns (``[(turn index, score)]``, retrieval order) as :class:`MemorySegment`:
    the best 3 at 1x4x4, the rest at 1x8x8; the first is ``"prev"`` when it is segment
    ``segment - 1`` (the retrieval always ranks the most recent one first)."""
    out = []
    for rank, (index, _) in enumerate(picked):
        turn = bank.turns[index]
        role = "prev" if rank == 0 and turn.segment == segment - 1 else "memory"
        out.append(MemorySegment(turn.latent.float(), turn.source.float(),
                                 tokenizer_for_rank(rank), role))
    return out


def per_token_timestep(t: torch.Tensor, batch: int, latent_shape, patch=(1, 2, 2)) -> torch.Tensor:
    """``LucyEditPipeline``'s ``expand_timesteps`` form: ``t`` for every target token, ``[batch, N]``
    with ``N = F/pt * H/ph * W/pw`` of ``latent_shape`` ``[C, F, H, W]``."""
    _, frames, height, width = latent_shape
    n = (frames // patch[0]) * (height // patch[1]) * (width // patch[2])
    return t.float().reshape(1, 1).expand(batch, n)


@torch.no_grad()
def sample_edit(model, scheduler, source: torch.Tensor, text: torch.Tensor, memory: Sequence[MemorySegment],
                settings: EditSettings, seed: int, expand_timesteps: bool = True, progress: Progress = None,
                report: Optional[CallReport] = None, adapters: Optional[tuple] = None) -> torch.Tensor:
    """The edited latent ``[48, F, h, w]`` (float32, CPU) of one segment.

    ``scheduler`` a fresh flow-matching scheduler (:func:`.lucy_family.make_scheduler`);
    ``source`` ``[48, F, h, w]`` the source segment's latent; ``text`` ``[2, L, D]``: conditional
    then unconditional tokens; ``memory`` from :func:`memory_segments`; ``seed`` the noise seed;
    ``report`` gets the first call's token counts and merges; ``adapters`` ``(embedders,
    mergers)`` from :func:`.adapters.load_adapters`. ``progress(1)`` after every step; Cancel
    also stops a step inside the transformer (:func:`~consistent_video.nodes.comfy.runtime.interruptible`).
    """
    embedders, mergers = adapters or ({}, {})
    device, dtype = module_place(model)
    generator = torch.Generator().manual_seed(int(seed))
    x = torch.randn((1,) + tuple(source.shape), generator=generator).to(device)
    src = source[None].to(device=device, dtype=dtype)
    mem = [MemorySegment(m.latent.to(device=device, dtype=dtype), m.source.to(device=device, dtype=dtype),
                         m.tokenizer, m.role) for m in memory]
    text = text.to(device=device, dtype=dtype)
    scheduler.set_timesteps(settings.steps, device=device)
    patch = tuple(model.config.patch_size)
    with runtime.interruptible(model):
        for i, t in enumerate(scheduler.timesteps):
            timestep = per_token_timestep(t, 2, source.shape, patch) if expand_timesteps else t.expand(2)
            out = denoise_edit(model, torch.cat([x, x]).to(dtype), timestep.to(device), text, src, mem,
                               merge_blocks=settings.merge_blocks, merge_ratio=settings.merge_ratio,
                               embedders=embedders, mergers=mergers, report=report if i == 0 else None).float()
            cond, uncond = out.chunk(2)
            x = scheduler.step(uncond + settings.cfg * (cond - uncond), t, x, return_dict=False)[0]
            if progress is not None:
                progress(1)
    return x[0].float().cpu()


def make_edit_turn(latent: torch.Tensor, source: torch.Tensor, descriptor: torch.Tensor, prompt: str,
                   video: str, segment: int) -> Turn:
    """The bank entry of an edited segment (its source latent and DINOv2 descriptor with it)."""
    return Turn(latent, None, descriptor, prompt, "edit", source=source, video=video, segment=segment)
