"""SEVA / VMem sampling: the DDPM epsilon discretisation with a log-SNR shift, the
denoiser with context-latent replacement, multiview classifier-free guidance and the
deterministic Euler sampler.

Noise levels are EDM-style sigmas ``x_t = x_0 + sigma * eps`` (the network sees
``x_t / sqrt(1 + sigma^2)``, a variance-preserving input):

- :class:`DDPMSchedule`: "sqrt-linear" betas ``linspace(sqrt(5e-6), sqrt(0.012), 1000)^2``,
  ``sigma_i = sqrt((1 - abar_i) / abar_i) * exp(log_snr_shift)`` (shift 2.4), one sigma
  per training index ``i = 0..999``. ``n`` sampling steps use the indices
  ``floor(linspace(999, 0, n, endpoint=False))`` reversed (19, 39, ..., 999 for 50), from
  the largest sigma down, with 0 appended.
- :class:`EpsDenoiser`: snaps sigma to the nearest of the 1000 discrete sigmas, replaces the
  context frames' latents (``replace``: latent + mask channel) **before every call**, and
  returns ``x - sigma * eps(x / sqrt(1 + sigma^2), index)``; the network is given the
  integer index as its timestep.
- Guidance: ``uncond + scale * (cond - uncond)`` with a scale per frame
  (:func:`guidance_scales`): ``multiview`` uses ``cfg_min`` for frames whose camera nearly
  duplicates a context camera, ``multiview_temporal`` also ramps the scale from ``cfg_min``
  next to a context frame (in frame order) up to ``cfg`` for the farthest one.
- :func:`euler_sample`: ``x <- x + (sigma_next - sigma) * (x - denoised) / sigma`` from noise
  scaled by ``sqrt(1 + sigma_0^2)``. Deterministic: the original's ``s_churn = 0`` path
  still adds noise of size ``sqrt((sigma + 1e-6)^2 - sigma^2)`` each step (a side effect of
  its ``+ 1e-6``); here the step uses sigma exactly and adds nothing, so a seed fixes the
  whole result.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .retrieval import pose_distance

GUIDERS = ("vanilla", "multiview", "multiview_temporal")


@dataclass(frozen=True)
class DDPMSchedule:
    """The discretisation of :mod:`this module <.sampling>` (defaults: SEVA / VMem)."""

    linear_start: float = 5e-6
    linear_end: float = 0.012
    num_timesteps: int = 1000
    log_snr_shift: Optional[float] = 2.4

    def training_sigmas(self) -> torch.Tensor:
        """``[num_timesteps]`` float64 sigma of every training index, ascending."""
        betas = torch.linspace(self.linear_start ** 0.5, self.linear_end ** 0.5, self.num_timesteps,
                               dtype=torch.float64) ** 2
        abar = torch.cumprod(1.0 - betas, 0)
        sigmas = ((1 - abar) / abar).sqrt()
        if self.log_snr_shift is not None:
            sigmas = sigmas * torch.exp(torch.tensor(self.log_snr_shift, dtype=torch.float64))
        return sigmas

    def step_indices(self, steps: int) -> torch.Tensor:
        """Training indices ``[steps]`` of ``steps`` sampling steps, ascending."""
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"steps must be 1..{self.num_timesteps}, got {steps}")
        if steps == self.num_timesteps:
            return torch.arange(steps)
        last = self.num_timesteps - 1
        # linspace(last, 0, steps, endpoint=False) truncated to integers, then ascending
        values = last - torch.arange(steps, dtype=torch.float64) * (last / steps)
        return values.floor().long().flip(0)

    def sampling_sigmas(self, steps: int) -> torch.Tensor:
        """``[steps + 1]`` float32 sigmas from the largest down, ending with 0."""
        sigmas = self.training_sigmas()[self.step_indices(steps)].float().flip(0)
        return torch.cat([sigmas, sigmas.new_zeros(1)])


class EpsDenoiser:
    """``denoised = x' - sigma * network(x' / sqrt(sigma^2 + 1), index, cond)`` where ``x'`` is
    ``x`` with the context frames replaced (see the module doc).

    ``network(x, index [N], cond) -> eps`` gets the conditioning dict ``cond`` without
    ``replace``; the denoiser handles ``cond["replace"]`` ``[N, C + 1, h, w]`` (latents and
    a 0/1 mask channel).
    """

    def __init__(self, schedule: DDPMSchedule = DDPMSchedule()):
        self.sigmas = schedule.training_sigmas().float()

    def index(self, sigma: torch.Tensor) -> torch.Tensor:
        """Nearest training index ``[N]`` of each sigma ``[N]``."""
        return (sigma.float().cpu()[None, :] - self.sigmas[:, None]).abs().argmin(0)

    def __call__(self, network: Callable, x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        index = self.index(sigma)
        s = self.sigmas[index].to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))
        cond = dict(cond)
        replace = cond.pop("replace", None)
        if replace is not None:
            latents, mask = replace.split((x.shape[1], 1), dim=1)
            x = x * (1 - mask) + latents * mask
        eps = network(x / (s ** 2 + 1.0).sqrt(), index.to(x.device), cond)
        return x - s * eps


def guidance_scales(guider: str, cfg: float, cfg_min: float, c2w: torch.Tensor, K: torch.Tensor,
                    input_mask: torch.Tensor, max_angle_deg: float = 10.0,
                    max_translation: float = 1e-5) -> torch.Tensor:
    """Guidance scale per frame ``[T]`` for one sample of ``T`` frames.

    ``c2w [T,4,4]``, ``K [T,3,3]`` (the cameras the network is conditioned on) and
    ``input_mask [T]`` (True for context frames).

    - ``vanilla``: ``cfg`` everywhere.
    - ``multiview``: ``cfg_min`` for frames within ``max_angle_deg`` degrees of rotation and
      ``max_translation`` of position of some context camera with exactly its K.
    - ``multiview_temporal``: first ``cfg_min + (cfg - cfg_min) * d / max(d)`` with ``d`` the
      distance in frame order to the nearest context frame (``max(d)`` at least 1), then the
      ``multiview`` rule.
    """
    if guider not in GUIDERS:
        raise ValueError(f"unknown guider '{guider}'; expected one of {', '.join(GUIDERS)}")
    T = c2w.shape[0]
    input_mask = input_mask.bool().cpu()
    scale = torch.full((T,), float(cfg))
    if guider == "vanilla" or not input_mask.any():
        return scale
    if guider == "multiview_temporal":
        order = torch.arange(T)
        gap = (order[:, None] - order[None, input_mask]).abs().min(1).values.float()
        scale = cfg_min + (cfg - cfg_min) * gap / gap.max().clamp_min(1)
    c2w, K = c2w.detach().cpu().float(), K.detach().cpu().float()
    angle = torch.rad2deg(pose_distance(c2w[:, None], c2w[None, input_mask], translation_weight=0.0)).min(1).values
    shift = (c2w[:, None, :3, 3] - c2w[None, input_mask, :3, 3]).norm(dim=-1).min(1).values
    same_K = (K[:, None] == K[None, input_mask]).flatten(-2).all(-1).any(-1)
    close = (angle < max_angle_deg) & (shift < max_translation) & same_K
    return torch.where(close, torch.full_like(scale, float(cfg_min)), scale)


def euler_sample(denoise: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                 noise: torch.Tensor, sigmas: torch.Tensor, scale: torch.Tensor,
                 on_step: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Deterministic Euler sampling with classifier-free guidance.

    Args:
        denoise: ``(x [N,...], sigma [N]) -> (denoised_uncond, denoised_cond)``, each ``[N,...]``
            (one network call on the doubled batch, typically).
        noise: standard normal ``[N,...]``; scaled by ``sqrt(1 + sigmas[0]^2)`` here.
        sigmas: ``[steps + 1]`` from :meth:`DDPMSchedule.sampling_sigmas`.
        scale: guidance scale per sample ``[N]`` (:func:`guidance_scales`).
        on_step: called with the step number after each step (progress, cancel).
    Returns the final ``[N,...]`` (the last denoised estimate, since the last sigma is 0).
    """
    x = noise * torch.sqrt(1.0 + sigmas[0] ** 2)
    w = scale.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        uncond, cond = denoise(x, sigma.expand(x.shape[0]))
        denoised = uncond + w * (cond - uncond)
        x = x + (sigmas[i + 1] - sigma).to(x.dtype) * (x - denoised) / sigma.to(x.dtype)
        if on_step is not None:
            on_step(i + 1)
    return x
