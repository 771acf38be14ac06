"""VideoMV sampling: the views of an orbit around an object, from a prompt (T2V) or one image (I2V).

What VideoMV's entrance scripts do (``tools/inferences/inference_text2video_entrance.py`` and
``inference_i2vgen_entrance.py``), for its first (plain) sampling loop:

- **Noise** ``[1, 4, F, H/8, W/8]`` standard normal (here from a CPU generator seeded with
  ``seed``, so a seed gives the same views on every device).
- **Cameras**: per view the 16 floats of :func:`~consistent_video.nodes.cameras.formats.to_videomv_cameras`,
  the same in both branches.
- **T2V**: conditional text = the prompt with ", 3d asset" appended
  (:func:`.schedules.t2v_prompt`); unconditional text = :data:`NEGATIVE_PROMPT`.
- **I2V**: conditional text = "" (VideoMV's caption), plus the image's CLIP embedding;
  unconditional text = :data:`NEGATIVE_PROMPT` with a **zero** image embedding; the image's
  VAE latent (``x 0.18215``) is the same in both branches. VideoMV samples that latent from
  the posterior; here it is the posterior mean (deterministic; the posterior's spread is
  tiny). Its CLIP image input is the square image resized to 224 with PIL-style bilinear.
- **DDIM** (eta 0) over the mode's scheduler (:mod:`.schedules`), classifier-free guidance
  ``u + s (c - u)`` on the model output (eps for T2V, v for I2V), both branches in one
  batch of 2. The network runs in its own dtype; the sampler state stays float32.
- **Decode** every view with the VAE (``/ 0.18215``), to 0..1.

VideoMV's second, 3D-aware loop (LGM reconstructions at steps 20/30/40) is
:mod:`.denoise_3d`; it runs this sampler with a step hook (:data:`StepHook`).

Shapes: images ``[N,H,W,3]`` float 0..1 (ComfyUI IMAGE); latents ``[F,4,H/8,W/8]`` in the
diffusion space (VAE mean x 0.18215); cameras a :class:`~consistent_video.nodes.cameras.CameraBatch`
in the pack's OpenCV convention (VideoMV's orbit is :func:`~consistent_video.nodes.cameras.trajectories.orbit`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..nodes.comfy import runtime
from ..nodes.cameras import trajectories
from ..nodes.cameras.formats import VIDEOMV_FOV_DEG, to_videomv_cameras
from ..nodes.cameras.geometry import CameraBatch
from ..nodes.encoders.clip import ImageEmbedder
from ..nodes.encoders.clip_text import TextEmbedder
from ..nodes.comfy.runtime import module_place
from ..nodes.encoders.vae import LatentCodec
from .schedules import NUM_STEPS, RESOLUTION, i2v_scheduler, t2v_prompt, t2v_scheduler

NEGATIVE_PROMPT = ("Distorted, discontinuous, Ugly, blurry, low resolution, disfigured, disconnected limbs, "
                   "Ugly faces, incomplete arms")
"""The text of the unconditional branch in both modes (VGen's ``cfg.negative_prompt``)."""

LATENT_DOWNSCALE = 8
SCHEDULERS = {"t2v": t2v_scheduler, "i2v": i2v_scheduler}

Progress = Optional[Callable[[int], None]]
StepHook = Optional[Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, object], Optional[torch.Tensor]]]
"""``hook(index, t, x, out, scheduler)`` called at every DDIM step with the loop index, the
timestep, the float32 sample ``x [1,4,F,h,w]``, the float32 model outputs ``out [2,4,F,h,w]``
(conditional, unconditional) and the scheduler; a tensor it returns replaces the guided model
output of that step (in the scheduler's prediction type), ``None`` keeps it (see
:mod:`.denoise_3d`)."""


@dataclass(frozen=True)
class ViewSettings:
    """One sampling run.

    Attributes:
        guidance: classifier-free guidance scale (VideoMV: 9.0 T2V, 6.0 I2V).
        steps: DDIM steps (VideoMV: 50; timesteps 981, 961, ..., 1 at 50).
        seed: noise seed.
        resolution: square image size in pixels, a multiple of 8 (VideoMV: 256, the trained size).
    """

    guidance: float
    steps: int = NUM_STEPS
    seed: int = 0
    resolution: int = RESOLUTION

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.resolution < LATENT_DOWNSCALE or self.resolution % LATENT_DOWNSCALE:
            raise ValueError(f"resolution is {self.resolution}; expected a positive multiple of {LATENT_DOWNSCALE}")


@dataclass
class Views:
    """A sampling result: ``images`` ``[F,H,W,3]`` 0..1, ``latents`` ``[F,4,H/8,W/8]`` (diffusion
    space), ``cameras`` (F views)."""

    images: torch.Tensor
    latents: torch.Tensor
    cameras: CameraBatch


def orbit_cameras(num_views: int, elevation_deg: float, distance: float, azimuth_start_deg: float = 0.0,
                  resolution: int = RESOLUTION) -> CameraBatch:
    """VideoMV's orbit: ``num_views`` cameras a full turn apart around the origin at one
    elevation, each looking at the origin, with VideoMV's LGM field of view (39.6 degrees) at
    ``resolution`` pixels square. Azimuths ``start + i * 360 / num_views``."""
    return trajectories.orbit(num_views, elevation_deg, distance, azimuth_start_deg, 360.0, width=resolution,
                              height=resolution, fov_deg=VIDEOMV_FOV_DEG)


def square_image(images: torch.Tensor, size: int) -> torch.Tensor:
    """VGen's ``CenterCropWide`` then resize: ``[N,H,W,3]`` -> ``[N,size,size,3]``.

    The centre square (side ``min(H, W)``) is cut out and resized to ``size`` with
    antialiased bilinear (PIL's BILINEAR); a square image of the right size is returned as is.
    """
    height, width = images.shape[1:3]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    x = images[:, top:top + side, left:left + side].float()
    if side == size:
        return x
    x = F.interpolate(x.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False,
                      antialias=True)
    return x.permute(0, 2, 3, 1).clamp(0.0, 1.0)


def text_branches(text: TextEmbedder, prompt: str, negative_prompt: str = NEGATIVE_PROMPT) -> torch.Tensor:
    """``[2, L, D]``: the conditional then the unconditional text tokens."""
    return text.embed([prompt, negative_prompt])


def t2v_conditioning(text: TextEmbedder, prompt: str, negative_prompt: str = NEGATIVE_PROMPT) -> dict:
    """UNet keyword inputs for the batch ``[conditional, unconditional]`` of the T2V network.

    ``prompt`` gets ", 3d asset" appended as in VideoMV; an empty prompt is refused (VideoMV
    skips it)."""
    if not prompt.strip():
        raise ValueError("the prompt is empty; VideoMV generates an object from a description")
    return {"encoder_hidden_states": text_branches(text, t2v_prompt(prompt.strip()), negative_prompt)}


def i2v_conditioning(text: TextEmbedder, images: ImageEmbedder, codec: LatentCodec, image: torch.Tensor,
                     negative_prompt: str = NEGATIVE_PROMPT) -> dict:
    """UNet keyword inputs for the batch ``[conditional, unconditional]`` of the I2V network.

    ``image`` ``[1,S,S,3]`` 0..1: the prepared object image at the working size. Conditional:
    caption "" and the image's CLIP embedding; unconditional: ``negative_prompt`` and a zero
    embedding; both: the image's VAE latent."""
    embedding = images.embed(image)  # [1, D]
    latent = codec.encode(image)  # [1, 4, h, w], x scaling factor
    return {
        "encoder_hidden_states": text_branches(text, "", negative_prompt),
        "image_embeddings": torch.cat([embedding, torch.zeros_like(embedding)]),
        "image_latents": latent.expand(2, -1, -1, -1),
    }


def initial_noise(num_views: int, resolution: int, seed: int) -> torch.Tensor:
    """``[1, 4, F, r/8, r/8]`` float32 standard normal from a CPU generator seeded with ``seed``."""
    side = resolution // LATENT_DOWNSCALE
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn((1, 4, num_views, side, side), generator=generator, dtype=torch.float32)


@torch.no_grad()
def sample_latents(unet: torch.nn.Module, mode: str, conditioning: dict, camera_data: torch.Tensor,
                   settings: ViewSettings, progress: Progress = None, step_hook: StepHook = None) -> torch.Tensor:
    """DDIM with classifier-free guidance: ``[1, 4, F, r/8, r/8]`` float32 on the CPU.

    ``conditioning``: the UNet inputs for the batch ``[conditional, unconditional]``
    (:func:`t2v_conditioning` / :func:`i2v_conditioning`); ``camera_data`` ``[F, 16]``
    (:func:`~consistent_video.nodes.cameras.formats.to_videomv_cameras`). ``progress(1)`` after
    every step (raising there, e.g. on Cancel, stops the loop); Cancel also stops a step
    before its next UNet block (:func:`~consistent_video.nodes.comfy.runtime.interruptible`).
    ``step_hook`` (:data:`StepHook`) may replace a step's guided output (VideoMV's 3D-aware steps).
    """
    device, dtype = module_place(unet)
    num_views = camera_data.shape[0]
    scheduler = SCHEDULERS[mode]()
    scheduler.set_timesteps(settings.steps)
    x = initial_noise(num_views, settings.resolution, settings.seed).to(device)
    inputs = {k: v.to(device=device, dtype=dtype) for k, v in conditioning.items()}
    camera = camera_data.to(device=device, dtype=dtype).unsqueeze(0).expand(2, -1, -1)
    with runtime.interruptible(unet):
        for index, t in enumerate(scheduler.timesteps):
            out = unet(torch.cat([x, x]).to(dtype), t.to(device), camera=camera, return_dict=False,
                       **inputs)[0].float()
            cond, uncond = out.chunk(2)
            guided = uncond + settings.guidance * (cond - uncond)
            if step_hook is not None:
                replaced = step_hook(index, t, x, out, scheduler)
                guided = guided if replaced is None else replaced.to(guided)
            x = scheduler.step(guided, t, x, eta=0.0).prev_sample
            if progress is not None:
                progress(1)
    return x.cpu()


def generate(unet: torch.nn.Module, mode: str, conditioning: dict, cameras: CameraBatch, codec: LatentCodec,
             settings: ViewSettings, progress: Progress = None) -> Views:
    """Sample and decode the views of ``cameras`` (one view per camera)."""
    latents = sample_latents(unet, mode, conditioning, to_videomv_cameras(cameras), settings, progress)
    latents = latents[0].permute(1, 0, 2, 3).contiguous()  # [F, 4, h, w]
    return Views(images=codec.decode(latents), latents=latents, cameras=cameras)
