"""VideoScene's one-step refinement of a coarse render (CogVideoX interpolation transformer).

One pass, as the released ``video_gen`` does it (without its fixed 720x480 read):

1. the coarse video ``[F, 3, H, W]`` in [-1, 1] at the model's size and frame count is encoded
   by the VAE (a latent sample, times the VAE's ``scaling_factor``): ``z0 [1, f, C, h, w]``;
2. it is noised to the fixed timestep ``t`` (default 459, the demo's for splat renders; 549 for
   MVSplat renders): ``z_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps`` (the scheduler's ``add_noise``);
3. the first and last frames are noise-augmented in pixel space with one
   ``sigma = exp(N(-3, 0.5))`` for both, encoded one frame each (times ``scaling_factor``), and
   laid out as ``[first, zeros x (f - 2), last]``;
4. one transformer call on ``[z_t | condition]`` (channels, 2C = 32) with the precomputed text
   embedding, CogVideoX's 3-D RoPE and no classifier-free guidance, giving a v-prediction ``v``;
5. ``x0 = sqrt(a_t) z_t - sqrt(1 - a_t) v``, divided by ``scaling_factor`` and decoded.

All noise comes from one seeded CPU generator, so a seed gives the same video on any device.
Latents are ``[B, frames, channels, h, w]`` (CogVideoX's layout) unless stated otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import get_resize_crop_region_for_grid

from ..nodes.comfy import runtime

DEFAULT_TIMESTEP = 459
"""The released demo's ``noise_timestep=460`` minus one (the code draws from ``[460 - 1, 460)``)."""
MVSPLAT_TIMESTEP = 549
CONDITION_NOISE_MEAN, CONDITION_NOISE_STD = -3.0, 0.5  # log-normal sigma of the first/last-frame augmentation

SCHEDULER_CONFIG = {  # CogVideoX-5B(-I2V) scheduler: v-prediction, zero-terminal-SNR scaled-linear betas
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "snr_shift_scale": 1.0,
    "timestep_spacing": "trailing", "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 0,
}


@dataclass(frozen=True)
class Geometry:
    """The one size the transformer was trained at: ``frames`` video frames of ``height x width``
    pixels (480 x 720, 49 frames for the release), ``latent_frames`` after the VAE."""

    frames: int
    height: int
    width: int
    latent_frames: int


def geometry(transformer: CogVideoXTransformer3DModel, vae: AutoencoderKLCogVideoX) -> Geometry:
    """Read the trained size from the transformer config (``sample_*`` are latent sizes)."""
    config = transformer.config
    spatial = 2 ** (len(vae.config.block_out_channels) - 1)
    temporal = int(vae.config.temporal_compression_ratio)
    frames = int(config.sample_frames)
    return Geometry(frames, int(config.sample_height) * spatial, int(config.sample_width) * spatial,
                    (frames - 1) // temporal + 1)


def rotary_embedding(transformer: CogVideoXTransformer3DModel, height: int, width: int, latent_frames: int,
                     device: torch.device) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """CogVideoX 1.0's 3-D RoPE for a ``latent_frames x height/16 x width/16`` token grid, the
    grid placed on the trained base grid as the diffusers I2V pipeline does (``None`` when the
    transformer has no rotary embeddings)."""
    config = transformer.config
    if not config.use_rotary_positional_embeddings:
        return None
    p = config.patch_size
    grid_h, grid_w = height // (8 * p), width // (8 * p)
    crops = get_resize_crop_region_for_grid((grid_h, grid_w), config.sample_width // p, config.sample_height // p)
    return get_3d_rotary_pos_embed(embed_dim=config.attention_head_dim, crops_coords=crops, grid_size=(grid_h, grid_w),
                                   temporal_size=latent_frames, device=device)


def encode(vae: AutoencoderKLCogVideoX, video: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``[F, 3, H, W]`` in [-1, 1] -> a latent sample times ``scaling_factor``, ``[1, f, C, h, w]``."""
    x = video.to(vae.device, vae.dtype).permute(1, 0, 2, 3)[None]  # [1, 3, F, H, W]
    latent = vae.encode(x).latent_dist.sample(generator) * vae.config.scaling_factor
    return latent.permute(0, 2, 1, 3, 4)


def decode(vae: AutoencoderKLCogVideoX, latent: torch.Tensor) -> torch.Tensor:
    """``[1, f, C, h, w]`` (scaled) -> ``[F, 3, H, W]`` float32 in about [-1, 1]."""
    z = (latent / vae.config.scaling_factor).permute(0, 2, 1, 3, 4).to(vae.dtype)
    return vae.decode(z).sample[0].permute(1, 0, 2, 3).float()


def condition_latents(vae: AutoencoderKLCogVideoX, first: torch.Tensor, last: torch.Tensor, latent_frames: int,
                      generator: torch.Generator) -> torch.Tensor:
    """``[1, latent_frames, C, h, w]``: the noise-augmented first and last frames (``[3, H, W]`` in
    [-1, 1]) encoded one frame each, with zero latents between them."""
    if latent_frames < 2:
        raise ValueError(f"the model has {latent_frames} latent frame(s); first/last conditioning needs at least 2")
    sigma = torch.exp(torch.randn(1, generator=generator) * CONDITION_NOISE_STD + CONDITION_NOISE_MEAN)
    ends = []
    for image in (first, last):
        noisy = image.float().cpu() + torch.randn(image.shape, generator=generator) * sigma
        ends.append(encode(vae, noisy[None], generator))
    middle = ends[0].new_zeros(1, latent_frames - 2, *ends[0].shape[2:])
    return torch.cat([ends[0], middle, ends[1]], dim=1)


def alpha_bar(scheduler: CogVideoXDDIMScheduler, timestep: int) -> float:
    return float(scheduler.alphas_cumprod[timestep])


def refine(transformer: CogVideoXTransformer3DModel, vae: AutoencoderKLCogVideoX, scheduler: CogVideoXDDIMScheduler,
           prompt_embeds: torch.Tensor, video: torch.Tensor, first: torch.Tensor, last: torch.Tensor,
           timestep: int = DEFAULT_TIMESTEP, seed: int = 0,
           progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Refine ``video`` ``[F, 3, H, W]`` in [-1, 1] (exactly the model's :class:`Geometry`)
    conditioned on ``first`` / ``last`` ``[3, H, W]``; returns ``[F, 3, H, W]`` float32 in about
    [-1, 1]. ``progress(1)`` is called after each of the four stages (encode, conditions,
    transformer, decode); it may raise to cancel. Cancel also stops a stage before the next
    block of the transformer or the VAE (:func:`~consistent_video.nodes.comfy.runtime.interruptible`).
    """
    shape = geometry(transformer, vae)
    if tuple(video.shape) != (shape.frames, 3, shape.height, shape.width):
        raise ValueError(f"the video must be [{shape.frames}, 3, {shape.height}, {shape.width}] (the model's size); "
                         f"got {list(video.shape)}")
    if not 0 <= timestep < scheduler.config.num_train_timesteps:
        raise ValueError(f"timestep must be in 0..{scheduler.config.num_train_timesteps - 1}; got {timestep}")
    tick = progress or (lambda n=1: None)
    generator = torch.Generator().manual_seed(int(seed))
    device, dtype = transformer.device, transformer.dtype
    with runtime.interruptible(transformer, vae):
        z0 = encode(vae, video, generator)
        tick(1)
        condition = condition_latents(vae, first, last, z0.shape[1], generator)
        tick(1)
        noise = torch.randn(z0.shape, generator=generator)
        t = torch.tensor([timestep], dtype=torch.long)
        z_t = scheduler.add_noise(z0.float().cpu(), noise, t).to(device)
        a = alpha_bar(scheduler, timestep)
        rotary = rotary_embedding(transformer, shape.height, shape.width, z0.shape[1], device)
        v = transformer(hidden_states=torch.cat([z_t, condition.to(device)], dim=2).to(dtype),
                        encoder_hidden_states=prompt_embeds.to(device, dtype), timestep=t.to(device),
                        image_rotary_emb=rotary, return_dict=False)[0]
        x0 = a ** 0.5 * z_t.float() - (1 - a) ** 0.5 * v.float()
        tick(1)
        out = decode(vae, x0)
        tick(1)
    return out


def make_scheduler(config: Optional[dict] = None) -> CogVideoXDDIMScheduler:
    """The scheduler (only its ``alphas_cumprod`` is used): the release's config, else
    :data:`SCHEDULER_CONFIG`."""
    return CogVideoXDDIMScheduler.from_config(config or SCHEDULER_CONFIG)
