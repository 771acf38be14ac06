"""VideoMV's 3D-aware denoising: at a few DDIM steps, replace x0 by re-encoded renders of Gaussians.

Pure torch, importable without ComfyUI. The reconstruction network (LGM) is any callable
``reconstruct(views [B,4,9,256,256]) -> sequence of B GaussianScene`` (see :data:`Reconstruct`),
so a stub stands in for it in tests.

The procedure, as VideoMV's second ("``_gs``") sampling loop runs it (``alibaba/VideoMV`` at
c434922; paths relative to the repository):

1. **Which steps.** ``DiffusionDDIM.ddim_sample_loop``
   (``tools/modules/diffusions/diffusion_ddim.py`` l.253-259) passes the autoencoder to the
   model only when the loop index is in ``[20, 30, 40]`` (l.256) of the 50 DDIM steps, i.e. at
   timesteps 581, 381, 181 (timesteps ``1 + {0, 20, ..., 980}`` reversed, l.253).
2. **Per branch.** ``p_mean_variance`` (l.149-156) calls the model once with the conditional
   and once with the unconditional kwargs, both with ``autoencoder``; with it set, each call
   returns a latent that is used **as x0** (l.180-182). The entrance scripts share one
   ``gs_data`` dict between both kwargs (``tools/inferences/inference_text2video_entrance.py``
   l.265-269) and the UNet overwrites ``gs_data['input']`` in place
   (``tools/modules/unet/unet_t2v.py`` l.421); here each branch gets its own, fresh input.
3. **x0 of the branch** (``unet_t2v.py`` l.405; ``unet_i2vgen.py`` l.441-442): the branch's own
   unguided x0 from its output: eps form ``sqrt(1/a) x_t - sqrt(1/a - 1) eps`` (T2V), v form
   ``sqrt(a) x_t - sqrt(1 - a) v`` (I2V).
4. **Views** ``[0, 6, 12, 18]`` (``unet_t2v.py`` l.407) are decoded with the VAE
   (``latent / 0.18215``, l.411-412), mapped ``x 0.5 + 0.5`` and clamped to [0,1] (l.415-416),
   normalised with the ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225)
   (l.417-419).
5. **LGM input** ``[B,4,9,256,256]``: those 3 channels then the views' 6 Plücker channels
   (l.421). The rays come from the entrance script (``inference_text2video_entrance.py``
   l.198-224): the 16-float camera data (rows already flipped for the UNet, l.187-189) gets
   row 1 negated and rows 1, 2 swapped (l.202-203), rotation columns 1, 2 negated (l.204),
   then every pose is left-multiplied by ``[I | (0,0,d)] @ inverse(pose_0)`` with ``d`` the
   distance of camera 0 from the origin (l.207-212), so view 0 sits at ``(0, 0, d)`` with the
   identity rotation; rays are LGM's ``get_rays(pose, 256, 256, fovy)`` (``core/utils.py``
   l.10-43: pixel centres ``(x + 0.5 - w/2) / f``, ``-(y + 0.5 - h/2) / f``, ``z = -1`` -- the
   OpenGL camera --, ``f = h / 2 / tan(fovy / 2)``, directions unit length), fovy 39.6
   (``core/options.py`` l.26), Plücker ``[o x d, d]`` (moment first, l.219).
6. **Reconstruct and render.** ``self.lgm_big.infer(gs_data)`` (``unet_t2v.py`` l.423;
   ``unet_i2vgen.py`` l.458 with ``bg_color_factor=0.7``, encoding l.466; default 0.5, ``core/models.py``
   l.118-126) renders all 24 views with the renderer cameras of the entrance script: the same
   normalised poses with the "OpenGL to COLMAP" flip (columns 1, 2 negated, l.226), view
   matrix their inverse (l.229), projection from fovy 39.6, znear 0.5, zfar 2.5 (l.163-168),
   at 512 px (``core/options.py`` l.98, ``output_size`` of 'big'; znear/zfar l.28-30), colours
   precomputed (SH degree 0), then clamped to [0,1] (``core/gs.py`` l.55-85).
7. **Back to latents.** Renders are nearest-resized 512 -> 256 (``unet_t2v.py`` l.427), mapped
   to [-1,1] (l.428) and encoded with ``encode_firsr_stage(x, 0.18215)`` (l.430), i.e. a
   **sample** of the VAE posterior times 0.18215 (``tools/modules/autoencoder.py`` l.20, l.86-91).
8. **Guidance and update.** ``p_mean_variance`` guides the two returned latents
   ``x0 = L_u + s (L_c - L_u)`` (l.158-160, s = 9 T2V / 6 I2V); ``ddim_sample`` re-derives
   ``eps = (sqrt(1/a) x_t - x0) / sqrt(1/a - 1)`` (l.233-234) and takes the usual eta-0 DDIM
   step (l.235-243) for all 24 views.

Here the sampler is :func:`~.pipeline.sample_latents` with a step hook (:func:`make_step_hook`):
at the chosen loop indices it returns the guided x0 converted to the scheduler's prediction type
(eps ``(x_t - sqrt(a) x0) / sqrt(1 - a)``; v ``(sqrt(a) x_t - x0) / sqrt(1 - a)``), from which
diffusers' DDIM step recovers exactly that x0 and the eps of step 8.

Cameras (:func:`lgm_poses`): with ``C_i`` our OpenCV camera-to-world poses, VideoMV's data is
``M_i = W C_i G`` (:func:`~consistent_video.nodes.cameras.formats.to_videomv_cameras`,
``G = diag(1,-1,-1,1)``); the row operations are one more world rotation and the column
negation is a right-multiplication by ``G``, so the normalised pose is
``P_i = [I | (0,0,d)] C_0^-1 C_i`` (``G G = I``; world rotations cancel in ``pose_0^-1 pose_i``).
LGM reads ``P_i`` as an OpenGL pose (x right, y up, z backward); our renderer gets
``P_i G`` (OpenCV, the COLMAP flip). As in the original (reproduced, not corrected): the
orbit's look-at point lands at ``(0,0,2d)``, the cameras look *at* it only when ``P_i`` is read
as OpenCV; read as OpenGL (what LGM's rays and the renders do) view 0 looks at the origin and the
others look away from ``(0,0,2d)``. Rays and render cameras agree with each other, which is what
a network trained on them needs.

Renderer near plane: the 3DGS rasteriser (``diff-gaussian-rasterization``,
``cuda_rasterizer/auxiliary.h`` ``in_frustum``) culls Gaussians whose view-space depth is ``<= 0.2``
and does not clip at znear/zfar (the projection only places them), so the default renderer
uses ``near = 0.2``; :data:`ZNEAR`/:data:`ZFAR` are recorded for reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..nodes.cameras.formats import VIDEOMV_FOV_DEG, to_videomv_cameras
from ..nodes.cameras.geometry import CameraBatch, intrinsics_from_fov, plucker_rays
from ..nodes.splats.gaussians import GaussianScene
from ..nodes.splats.render import render
from ..nodes.encoders.vae import LatentCodec
from . import pipeline

REFINE_STEPS = (20, 30, 40)
"""DDIM loop indices of the 3D-aware steps (of 50: timesteps 581, 381, 181)."""
LGM_VIEWS = (0, 6, 12, 18)
"""The views (azimuth 0/90/180/270 of the 24) given to LGM."""
LGM_INPUT_SIZE = 256
LGM_RENDER_SIZE = 512
ZNEAR, ZFAR = 0.5, 2.5
RASTER_NEAR = 0.2  # the 3DGS rasteriser's frustum cull
BACKGROUND = {"t2v": 0.5, "i2v": 0.7}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_GL_FLIP = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))

Reconstruct = Callable[[torch.Tensor], Sequence[GaussianScene]]
"""``reconstruct(views [B,4,9,256,256]) -> B GaussianScenes`` (LGM: ImageNet-normalised RGB then
Plücker ``[o x d, d]``). It gets a float32 CPU tensor of its own (free to change in place) and
moves it to its network's device; the scenes are rendered on their own device."""
Renderer = Callable[[GaussianScene, CameraBatch, float], torch.Tensor]
"""``renderer(scene, cameras, background grey) -> rgb [N,H,W,3]`` in 0..1."""
Encoder = Callable[[torch.Tensor], torch.Tensor]
"""``encode(images [N,H,W,3] 0..1) -> scaled latents [N,4,H/8,W/8]``."""


# ---- cameras -----------------------------------------------------------------------------------
def lgm_poses(cams: CameraBatch) -> torch.Tensor:
    """VideoMV's normalised LGM poses ``[N,4,4]`` float32 (OpenGL axes: x right, y up, z back).

    ``P_i = [I | (0, 0, d)] @ C_0^-1 @ C_i`` with ``C`` the OpenCV camera-to-world poses of
    ``cams`` and ``d = |centre of camera 0|``: view 0 sits at ``(0, 0, d)`` with the identity
    rotation (see the module docstring for why this equals the entrance script's steps).
    """
    c2w = cams.c2w.to(torch.float64)
    shift = torch.eye(4, dtype=torch.float64, device=c2w.device)
    shift[2, 3] = c2w[0, :3, 3].norm()
    return (shift @ torch.linalg.inv(c2w[0]) @ c2w).float()


def lgm_to_world(cams: CameraBatch) -> torch.Tensor:
    """The rigid transform ``[4,4]`` float32 from LGM's normalised frame to the world of ``cams``.

    ``T = C_0 G S^-1`` (``S = [I | (0, 0, d)]``, ``G = diag(1,-1,-1,1)``): it carries LGM's render
    camera of view 0 (``P_0 G = S G``, :func:`lgm_cameras`) onto ``C_0``, so Gaussians moved by
    ``T`` (:meth:`GaussianScene.transformed`) render from ``cams[0]`` exactly as LGM's view 0, LGM's
    origin lands ``d`` in front of camera 0 (the orbit's centre, the world origin of a pack orbit)
    and LGM's ``y`` axis along camera 0's up. The other views of the original's normalisation are
    not a rigid image of the orbit (module docstring: read as OpenGL they look away from
    ``(0, 0, 2d)``), so no single transform lines up all 24; view 0's is the one LGM's input is
    anchored to.
    """
    c2w = cams.c2w.to(torch.float64)
    inv_shift = torch.eye(4, dtype=torch.float64, device=c2w.device)
    inv_shift[2, 3] = -c2w[0, :3, 3].norm()
    return (c2w[0] @ _GL_FLIP.to(c2w.device) @ inv_shift).float()


def lgm_cameras(poses: torch.Tensor, size: int, fov_deg: float = VIDEOMV_FOV_DEG) -> CameraBatch:
    """The cameras of LGM poses ``[N,4,4]`` (OpenGL) as a :class:`CameraBatch` (OpenCV, the
    COLMAP flip ``P G``), square ``size`` px with vertical field of view ``fov_deg``."""
    c2w = poses.to(torch.float64) @ _GL_FLIP.to(poses.device)
    return CameraBatch(c2w.float(), intrinsics_from_fov(fov_deg, size, size).to(poses.device), size, size)


def lgm_rays(poses: torch.Tensor, size: int = LGM_INPUT_SIZE, fov_deg: float = VIDEOMV_FOV_DEG) -> torch.Tensor:
    """LGM's Plücker rays ``[N,6,size,size]`` of poses ``[N,4,4]``: ``[o x d, d]`` with ``d`` the
    unit direction through each pixel centre of the OpenGL camera and ``o`` its centre
    (``core/utils.get_rays`` with ``opengl=True``, then ``cat([cross(o, d), d])``)."""
    return plucker_rays(lgm_cameras(poses, size, fov_deg), size, size, reference=None, moment_first=True)


# ---- x0 -> LGM input ---------------------------------------------------------------------------
def lgm_input(x0: torch.Tensor, codec: LatentCodec, rays: torch.Tensor,
              views: Sequence[int] = LGM_VIEWS) -> torch.Tensor:
    """LGM's input ``[B,V,9,H,W]`` from x0 latents ``[B,4,F,h,w]`` (diffusion space).

    The ``views`` frames are decoded with ``codec`` (``latent / scale``, then ``(x + 1) / 2``
    clamped to [0,1]), ImageNet-normalised and followed by their ``rays`` ``[V,6,H,W]``
    (:func:`lgm_rays` of those views). Returns float32 on the CPU.
    """
    b = x0.shape[0]
    latents = x0[:, :, list(views)].permute(0, 2, 1, 3, 4).flatten(0, 1)  # [B*V,4,h,w]
    images = codec.decode(latents.float()).clamp(0.0, 1.0).permute(0, 3, 1, 2)  # [B*V,3,H,W]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    images = ((images - mean) / std).unflatten(0, (b, len(views)))
    if rays.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"lgm_input: rays are {list(rays.shape)}, images {list(images.shape)}; sizes must match")
    return torch.cat([images, rays.cpu().float().unsqueeze(0).expand(b, -1, -1, -1, -1)], 2)


# ---- render -> latents -------------------------------------------------------------------------
def splat_renderer(near: float = RASTER_NEAR, backend: str = "auto") -> Renderer:
    """The default renderer: :func:`~consistent_video.nodes.splats.render.render` (SH-degree-0
    scenes give precomputed colours) over a grey background, clamped to [0,1] like LGM's."""
    def renderer(scene: GaussianScene, cameras: CameraBatch, background: float) -> torch.Tensor:
        rgb = render(scene, cameras, background=(background,) * 3, near=near, backend=backend)[0]
        return rgb.clamp(0.0, 1.0)
    return renderer


def renders_to_latents(rgb: torch.Tensor, encode: Encoder, size: int = LGM_INPUT_SIZE) -> torch.Tensor:
    """Renders ``[F,H,W,3]`` 0..1 -> latents ``[4,F,h,w]``: nearest resize to ``size``, then
    ``encode`` (0..1 in; the original maps to [-1,1] and samples the posterior, x 0.18215)."""
    x = F.interpolate(rgb.permute(0, 3, 1, 2).float(), size=(size, size), mode="nearest")
    return encode(x.permute(0, 2, 3, 1).contiguous()).permute(1, 0, 2, 3)


def posterior_sample_encoder(vae, generator: Optional[torch.Generator] = None) -> Encoder:
    """An :data:`Encoder` over a diffusers ``AutoencoderKL`` that **samples** the posterior
    (VideoMV's ``encode_firsr_stage``): ``vae.encode(2x - 1).latent_dist.sample(generator) x
    scaling_factor``, float32 on the CPU. ``generator`` on the VAE's device (reproducibility)."""
    scale = float(getattr(vae.config, "scaling_factor", None) or 0.18215)

    @torch.no_grad()
    def encode(images: torch.Tensor) -> torch.Tensor:
        param = next(vae.parameters())
        x = images.to(device=param.device, dtype=param.dtype).permute(0, 3, 1, 2) * 2.0 - 1.0
        return vae.encode(x).latent_dist.sample(generator).float().cpu() * scale
    return encode


# ---- one 3D-aware step -------------------------------------------------------------------------
@dataclass(frozen=True)
class RefineSettings:
    """Settings of the 3D-aware steps.

    Attributes:
        background: grey level behind the renders (VideoMV: 0.5 T2V, 0.7 I2V).
        views: the frames given to LGM.
        steps: DDIM loop indices where x0 is replaced.
        input_size, render_size: LGM input / render resolution in px.
        fov_deg: vertical field of view of the LGM cameras.
    """

    background: float
    views: tuple = LGM_VIEWS
    steps: tuple = REFINE_STEPS
    input_size: int = LGM_INPUT_SIZE
    render_size: int = LGM_RENDER_SIZE
    fov_deg: float = VIDEOMV_FOV_DEG


def refine_x0(x0: torch.Tensor, codec: LatentCodec, cameras: CameraBatch, reconstruct: Reconstruct,
              settings: RefineSettings, encode: Optional[Encoder] = None,
              renderer: Optional[Renderer] = None) -> tuple[torch.Tensor, list[GaussianScene]]:
    """Replacement latents for each branch's x0, and the Gaussians of each branch.

    Args:
        x0: ``[B,4,F,h,w]`` per-branch (unguided) x0 latents; batch item 0 is the conditional
            branch in the sampler. Every item is reconstructed on its own (a fresh LGM input,
            ``reconstruct`` called with ``B = 1``).
        codec: VAE (decode; encode too unless ``encode`` is given).
        cameras: the F cameras of the views (OpenCV, the pack's orbit).
        reconstruct: LGM (:data:`Reconstruct`).
        settings: :class:`RefineSettings`.
        encode: images -> latents (default ``codec.encode``, the posterior mean; VideoMV samples,
            :func:`posterior_sample_encoder`).
        renderer: :data:`Renderer` (default :func:`splat_renderer`).
    Returns:
        ``(latents [B,4,F,h,w]`` float32 on ``x0``'s device, ``scenes`` one per item).
    """
    encode = codec.encode if encode is None else encode
    renderer = splat_renderer() if renderer is None else renderer
    poses = lgm_poses(cameras.to("cpu"))
    rays = lgm_rays(poses[list(settings.views)], settings.input_size, settings.fov_deg)
    render_cams = lgm_cameras(poses, settings.render_size, settings.fov_deg)
    latents, scenes = [], []
    for item in x0.split(1):
        views = lgm_input(item, codec, rays, settings.views)
        scene = list(reconstruct(views))[0]
        rgb = renderer(scene, render_cams.to(scene.device), settings.background)
        latents.append(renders_to_latents(rgb.cpu(), encode, settings.input_size))
        scenes.append(scene)
    return torch.stack(latents).to(x0.device), scenes


def reconstruct_views(x0: torch.Tensor, codec: LatentCodec, cameras: CameraBatch, reconstruct: Reconstruct,
                      settings: RefineSettings) -> GaussianScene:
    """LGM once on ``settings.views`` of latents ``x0 [1,4,F,h,w]`` (e.g. the final result): the
    same input as a 3D-aware step (:func:`lgm_input`), no render. Returns the Gaussians."""
    poses = lgm_poses(cameras.to("cpu"))
    rays = lgm_rays(poses[list(settings.views)], settings.input_size, settings.fov_deg)
    return list(reconstruct(lgm_input(x0, codec, rays, settings.views)))[0]


# ---- the sampler -------------------------------------------------------------------------------
def _alpha(scheduler, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return scheduler.alphas_cumprod[int(t)].to(device=like.device, dtype=like.dtype)


def predicted_x0(scheduler, out: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x0 of model outputs ``out`` at timestep ``t`` and sample ``x``, by the scheduler's
    prediction type (eps ``(x - sqrt(1-a) eps) / sqrt(a)``; v ``sqrt(a) x - sqrt(1-a) v``)."""
    a = _alpha(scheduler, t, x)
    if scheduler.config.prediction_type == "epsilon":
        return (x - (1 - a).sqrt() * out) / a.sqrt()
    if scheduler.config.prediction_type == "v_prediction":
        return a.sqrt() * x - (1 - a).sqrt() * out
    raise ValueError(f"unsupported prediction type {scheduler.config.prediction_type!r}")


def output_for_x0(scheduler, x0: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The model output (eps or v) whose x0 at ``t``, ``x`` is ``x0``; its eps is
    ``(x - sqrt(a) x0) / sqrt(1 - a)`` (VideoMV's re-derived eps)."""
    a = _alpha(scheduler, t, x)
    if scheduler.config.prediction_type == "epsilon":
        return (x - a.sqrt() * x0) / (1 - a).sqrt()
    if scheduler.config.prediction_type == "v_prediction":
        return (a.sqrt() * x - x0) / (1 - a).sqrt()
    raise ValueError(f"unsupported prediction type {scheduler.config.prediction_type!r}")


def make_step_hook(guidance: float, steps: Sequence[int],
                   refine: Callable[[torch.Tensor], torch.Tensor]) -> pipeline.StepHook:
    """A :data:`~.pipeline.StepHook` for the 3D-aware steps: at loop indices ``steps`` the two
    branches' x0 (``[2,4,F,h,w]``, conditional first) go through ``refine`` (-> replacement
    latents, same shape), are guided ``u + s (c - u)`` and returned as the step's model output."""
    chosen = set(int(s) for s in steps)

    def hook(index, t, x, out, scheduler):
        if index not in chosen:
            return None
        x0 = predicted_x0(scheduler, out, t, torch.cat([x, x]))
        cond, uncond = refine(x0).float().to(x.device).chunk(2)
        return output_for_x0(scheduler, uncond + guidance * (cond - uncond), t, x)
    return hook


@torch.no_grad()
def sample_latents_3d(unet: torch.nn.Module, mode: str, conditioning: dict, cameras: CameraBatch,
                      settings: pipeline.ViewSettings, codec: LatentCodec, reconstruct: Reconstruct,
                      refine_settings: Optional[RefineSettings] = None, encode: Optional[Encoder] = None,
                      renderer: Optional[Renderer] = None,
                      progress: pipeline.Progress = None) -> tuple[torch.Tensor, Optional[GaussianScene]]:
    """VideoMV's second sampling loop: :func:`~.pipeline.sample_latents` (same noise, same
    guidance) with x0 replaced at ``refine_settings.steps`` by :func:`refine_x0`.

    Returns ``(latents [1,4,F,h,w]`` float32 on the CPU, the conditional branch's Gaussians of the
    last 3D-aware step, ``None`` if none ran).
    """
    refine_settings = refine_settings or RefineSettings(background=BACKGROUND[mode])
    last: list[GaussianScene] = []

    def refine(x0: torch.Tensor) -> torch.Tensor:
        latents, scenes = refine_x0(x0, codec, cameras, reconstruct, refine_settings, encode, renderer)
        last[:] = scenes[:1]
        return latents

    hook = make_step_hook(settings.guidance, refine_settings.steps, refine)
    latents = pipeline.sample_latents(unet, mode, conditioning, to_videomv_cameras(cameras), settings, progress,
                                      step_hook=hook)
    return latents, (last[0] if last else None)
