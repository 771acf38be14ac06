"""VMem's view generator: context views + target cameras -> new views, on the SEVA UNet.

One network call sees ``T`` frames (VMem: 8), context frames first, then targets::

    frames    [context_0 .. context_{k-1}, target_0 .. target_{T-k-1}]
    cameras   OpenCV c2w, normalised together (:func:`normalised_cameras`)
    x         [T, 4, h, w]      latents (h, w = image size / 8)
    concat    [T, 1 + 6, h, w]  mask (1 on context frames; 0 in the unconditional pass)
                                and the Plücker map relative to frame 0
    dense     [T, 6, h, w]      the Plücker map (both passes)
    crossattn [T, 1, D]         the mean CLIP image embedding of the context views
                                (zeros in the unconditional pass)
    replace   [T, 4 + 1, h, w]  context latents and mask (zeros in the unconditional pass)

The network input is ``cat([x, concat])`` (11 channels). Sampling is
:mod:`.sampling`'s Euler sampler with per-frame guidance.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..nodes.comfy import runtime
from ..nodes.cameras.geometry import CameraBatch, normalize_cameras, plucker_rays
from .model import SevaUNet
from .sampling import GUIDERS, DDPMSchedule, EpsDenoiser, euler_sample, guidance_scales


class GenerationError(ValueError):
    """A setting or input the generator cannot use; ``argument`` names it."""

    def __init__(self, argument: str, problem: str, expected: str):
        super().__init__(f"{argument} {problem}; expected {expected}")
        self.argument, self.problem, self.expected = argument, problem, expected


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings (defaults: VMem's inference config).

    ``num_frames``: frames per network call (context + targets); ``camera_scale``: the
    distance of the first camera from the centre after normalisation; ``seed``: noise
    seed of a call (callers derive one per step).
    """

    steps: int = 50
    cfg: float = 2.0
    cfg_min: float = 1.2
    guider: str = "multiview"
    camera_scale: float = 2.0
    num_frames: int = 8

    def validate(self) -> None:
        """Raise :class:`GenerationError` naming the first unusable setting."""
        checks = [("steps", 1 <= self.steps <= 1000, "1..1000"),
                  ("cfg", self.cfg > 0, "a positive number"),
                  ("cfg_min", self.cfg_min > 0, "a positive number"),
                  ("guider", self.guider in GUIDERS, f"one of {', '.join(GUIDERS)}"),
                  ("camera_scale", self.camera_scale > 0, "a positive number"),
                  ("num_frames", self.num_frames >= 2, "at least 2")]
        for name, ok, expected in checks:
            if not ok:
                raise GenerationError(name, f"is {getattr(self, name)!r}", expected)


def normalised_cameras(cameras: CameraBatch, camera_scale: float) -> CameraBatch:
    """The cameras as the network sees them: centred on their (outlier-free) mean and
    scaled so the first is ``camera_scale`` from it (plus VMem's +0.01 on the factor)."""
    return normalize_cameras(cameras, target_scale=camera_scale, scale_by="first", scale_offset=0.01)[0]


@dataclass
class Conditioning:
    """Inputs of one call (see the module doc): normalised ``cameras`` (T), ``input_mask [T]``,
    and the conditional / unconditional dicts with keys concat, dense_vector, crossattn,
    replace."""

    cameras: CameraBatch
    input_mask: torch.Tensor
    cond: dict
    uncond: dict


def build_conditioning(cameras: CameraBatch, input_mask: torch.Tensor, context_latents: torch.Tensor,
                       context_embeddings: torch.Tensor, camera_scale: float = 2.0) -> Conditioning:
    """Conditioning of ``T = len(cameras)`` frames.

    Args:
        cameras: every frame's camera (context and targets) in world coordinates.
        input_mask: ``[T]`` bool, True for the context frames (their order in
            ``context_latents``).
        context_latents: ``[k, C, h, w]`` scaled VAE latents of the context frames.
        context_embeddings: ``[k, D]`` CLIP image embeddings of the context frames (averaged).
    """
    input_mask = input_mask.bool().cpu()
    T, k = len(cameras), int(input_mask.sum())
    if input_mask.shape != (T,) or k == 0:
        raise GenerationError("input_mask", f"has shape {list(input_mask.shape)} with {k} context frames",
                              f"[{T}] with at least one context frame")
    if context_latents.dim() != 4 or context_latents.shape[0] != k:
        raise GenerationError("context_latents", f"is {list(context_latents.shape)}", f"[{k}, C, h, w]")
    if context_embeddings.dim() != 2 or context_embeddings.shape[0] != k:
        raise GenerationError("context_embeddings", f"is {list(context_embeddings.shape)}", f"[{k}, D]")
    _, C, h, w = context_latents.shape
    cams = normalised_cameras(cameras.to("cpu"), camera_scale)
    plucker = plucker_rays(cams, h, w, reference=0)  # [T,6,h,w]
    mask = input_mask.float().view(T, 1, 1, 1).expand(T, 1, h, w)
    replace = torch.zeros(T, C + 1, h, w)
    replace[input_mask] = torch.cat([context_latents.float().cpu(), torch.ones(k, 1, h, w)], 1)
    embedding = context_embeddings.float().cpu().mean(0)
    crossattn = embedding.view(1, 1, -1).expand(T, 1, -1).contiguous()
    cond = {"concat": torch.cat([mask, plucker], 1), "dense_vector": plucker, "crossattn": crossattn,
            "replace": replace}
    uncond = {"concat": torch.cat([torch.zeros_like(mask), plucker], 1), "dense_vector": plucker,
              "crossattn": torch.zeros_like(crossattn), "replace": torch.zeros_like(replace)}
    return Conditioning(cams, input_mask, cond, uncond)


def sample_latents(unet: SevaUNet, conditioning: Conditioning, settings: GenerationSettings, seed: int,
                   device: torch.device, dtype: torch.dtype,
                   on_step: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Sample the latents ``[T, C, h, w]`` (float32, CPU) of every frame of one call.

    Both guidance branches run in one network call on a doubled batch (unconditional
    first). The noise is drawn on the CPU from ``seed``, so results do not depend on the
    device's random generator. Cancel stops the sampling inside a network call, before the
    next UNet block (:func:`~consistent_video.nodes.comfy.runtime.interruptible`).
    """
    settings.validate()
    T = len(conditioning.cameras)
    if T != settings.num_frames:
        raise GenerationError("cameras", f"are {T}", f"num_frames = {settings.num_frames} (pad the targets)")
    C, h, w = conditioning.cond["replace"].shape[1] - 1, *conditioning.cond["replace"].shape[2:]
    # the sampler state stays float32 (as under the original's autocast); the network runs in dtype
    both = {key: torch.cat([conditioning.uncond[key], conditioning.cond[key]]).to(
        device, torch.float32 if key == "replace" else dtype) for key in conditioning.cond}
    schedule = DDPMSchedule()
    denoiser = EpsDenoiser(schedule)
    sigmas = schedule.sampling_sigmas(settings.steps).to(device)

    def network(x, index, cond):
        return unet(torch.cat([x.to(dtype), cond["concat"]], 1), index, cond["crossattn"], cond["dense_vector"],
                    T).float()

    def denoise(x, sigma):
        out = denoiser(network, torch.cat([x, x]), torch.cat([sigma, sigma]), both)
        return out.chunk(2)

    scale = guidance_scales(settings.guider, settings.cfg, settings.cfg_min, conditioning.cameras.c2w,
                            conditioning.cameras.K, conditioning.input_mask)
    generator = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((T, C, h, w), generator=generator).to(device)
    with torch.inference_mode(), runtime.interruptible(unet):
        x = euler_sample(denoise, noise, sigmas, scale, on_step)
    return x.float().cpu()
