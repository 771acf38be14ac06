"""The two frozen networks around VMem's UNet: the autoencoder and the CLIP image encoder.

VMem (a SEVA-architecture multi-view diffusion model) works in the latent space of the
Stable Diffusion 2.1 autoencoder and is conditioned on OpenCLIP ViT-H-14
(``laion2b_s32b_b79k``) image embeddings. Each network sits behind a tiny interface, so
the pipeline can use either our own loaded networks or ComfyUI's native VAE / CLIP_VISION:

- :class:`LatentCodec` ``images [N,H,W,3] 0..1 <-> latents [N,4,H/8,W/8]`` (SEVA-scaled),
  implemented by :class:`DiffusersVAECodec` (a diffusers ``AutoencoderKL``) and
  :class:`ComfyVAECodec` (ComfyUI's ``comfy.sd.VAE``, duck-typed);
- :class:`ImageEmbedder` ``images [N,H,W,3] 0..1 -> [N,dim]``, implemented by
  :class:`TransformersCLIPEmbedder` (transformers ``CLIPVisionModelWithProjection``) and
  :class:`ComfyCLIPVisionEmbedder` (ComfyUI's ``comfy.clip_vision.ClipVisionModel``, duck-typed).

Weights layouts::

    vae/config.json                          diffusers AutoencoderKL (stabilityai/stable-diffusion-2-1-base)
    vae/diffusion_pytorch_model.safetensors
    image_encoder/config.json                CLIPConfig ("clip", laion/CLIP-ViT-H-14-laion2B-s32B-b79K)
                                             or CLIPVisionConfig ("clip_vision_model", e.g. h94/IP-Adapter
                                             models/image_encoder, stable-diffusion-2-1-unclip image_encoder)
    image_encoder/model.safetensors

Nothing here imports ComfyUI; the Comfy adapters only call the methods named in their docs.
The codecs run wherever their network is; moving it to the GPU (``runtime.load_to_device``
here, ComfyUI's model management inside ComfyUI's own objects) is the caller's business.
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
import torch.nn.functional as F

from ..nodes.jsonfile import write_json
from ..nodes.weights import WeightsError, load_strict, random_state, read_json, read_state_dict

if TYPE_CHECKING:  # imported where used: transformers is only needed for the image encoder
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionModelWithProjection

_SD_SCALING_FACTOR = 0.18215  # SD 1.x/2.x latent scale (diffusers' default; ComfyUI's latent_formats.SD15)
_LATENT_CHANNELS = 4
_DOWNSCALE = 8
_CLIP_SIZE = 224
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP normalisation, used by SEVA and ComfyUI
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_VIT_H_DIM = 1024  # projection width of OpenCLIP ViT-H-14
_VAE_CLASS = "AutoencoderKL"
_TEXT_PREFIXES = ("text_model.", "text_projection.")
_TEXT_KEYS = ("logit_scale",)
_POSITION_IDS = "vision_model.embeddings.position_ids"

_Progress = Optional[Callable[[int], None]]


# --------------------------------------------------------------------------- interfaces
class LatentCodec(abc.ABC):
    """Images <-> SEVA latents (SD-2.1 autoencoder, posterior mean times 0.18215).

    ``encode(images [N,H,W,3] float 0..1) -> [N,4,H/8,W/8]`` float32 on the CPU;
    ``decode(latents [N,4,h,w]) -> [N,8h,8w,3]`` float32 0..1 on the CPU. ``H`` and ``W``
    must be multiples of :attr:`downscale` (no silent crop).
    """

    latent_channels: int = _LATENT_CHANNELS
    downscale: int = _DOWNSCALE

    @abc.abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``[N,H,W,3]`` 0..1 -> scaled latents ``[N,4,H/8,W/8]``, float32 on the CPU."""

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[N,4,h,w]`` -> images ``[N,8h,8w,3]`` 0..1, float32 on the CPU."""


class ImageEmbedder(abc.ABC):
    """Images -> CLIP image embeddings (SEVA's conditioning, before averaging over views).

    ``embed(images [N,H,W,3] float 0..1) -> [N, dim]`` float32 on the CPU.
    """

    dim: int

    @abc.abstractmethod
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``[N,H,W,3]`` 0..1 -> ``[N, dim]`` float32 on the CPU."""


# --------------------------------------------------------------------------- input checks
def _check_images(images: torch.Tensor, multiple: int = 1) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] != 3:
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected images [N,H,W,3] (ComfyUI IMAGE layout), got {shape}")
    if images.shape[0] == 0:
        raise ValueError("expected at least one image, got an empty batch")
    height, width = images.shape[1:3]
    if height % multiple or width % multiple:
        raise ValueError(f"image size {height}x{width} is not a multiple of {multiple} (the autoencoder's "
                         f"downscale); resize or crop the frames first")


def _check_latents(latents: torch.Tensor, channels: int) -> None:
    if not isinstance(latents, torch.Tensor) or latents.dim() != 4 or latents.shape[1] != channels:
        shape = list(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(f"expected latents [N,{channels},h,w], got {shape}")
    if latents.shape[0] == 0:
        raise ValueError("expected at least one latent, got an empty batch")


def _check_chunk_size(chunk_size: int) -> int:
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    return int(chunk_size)


def _place(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of a module's first parameter (where its inputs must go)."""
    first = next(module.parameters())
    return first.device, first.dtype


# --------------------------------------------------------------------------- autoencoder
class DiffusersVAECodec(LatentCodec):
    """:class:`LatentCodec` over a diffusers ``AutoencoderKL`` (SEVA's ``AutoEncoder``).

    Encoding maps 0..1 to [-1,1], takes the posterior **mean** and multiplies it by the
    config's ``scaling_factor`` (0.18215 for SD 2.1); decoding divides by it, decodes and
    maps [-1,1] back to 0..1 (clamped). Work runs ``chunk_size`` images at a time on the
    module's device and in its dtype (read at every call, so the module may be moved
    between calls); results come back as float32 on the CPU. ``progress(n)`` is called
    after each chunk with the number of images it held (progress bars; raising there,
    e.g. on Cancel, stops the loop).
    """

    def __init__(self, vae: AutoencoderKL, chunk_size: int = 1, progress: _Progress = None) -> None:
        config = vae.config
        channels = int(getattr(config, "latent_channels", _LATENT_CHANNELS))
        downscale = 2 ** (len(getattr(config, "block_out_channels", (64,))) - 1)
        if channels != _LATENT_CHANNELS or downscale != _DOWNSCALE:
            raise ValueError(f"VMem needs an SD-family autoencoder ({_LATENT_CHANNELS} latent channels, "
                             f"{_DOWNSCALE}x downscale); this one has {channels} channels and {downscale}x")
        self.vae = vae
        self.scaling_factor = float(getattr(config, "scaling_factor", None) or _SD_SCALING_FACTOR)
        self.chunk_size = _check_chunk_size(chunk_size)
        self.progress = progress

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``[N,H,W,3]`` 0..1 -> ``vae.encode(2x-1).latent_dist.mean * scaling_factor``,
        ``[N,4,H/8,W/8]`` float32 on the CPU."""
        _check_images(images, self.downscale)
        device, dtype = _place(self.vae)
        out = []
        for chunk in images.split(self.chunk_size):
            x = chunk.to(device=device, dtype=torch.float32).permute(0, 3, 1, 2) * 2.0 - 1.0
            mean = self.vae.encode(x.to(dtype)).latent_dist.mean
            out.append(mean.float().cpu() * self.scaling_factor)
            if self.progress is not None:
                self.progress(len(chunk))
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``[N,4,h,w]`` scaled latents -> ``clamp((vae.decode(z / scaling_factor) + 1) / 2, 0, 1)``,
        ``[N,8h,8w,3]`` float32 on the CPU."""
        _check_latents(latents, self.latent_channels)
        device, dtype = _place(self.vae)
        out = []
        for chunk in latents.split(self.chunk_size):
            z = chunk.to(device=device, dtype=torch.float32) / self.scaling_factor
            x = self.vae.decode(z.to(dtype)).sample.float()
            out.append(((x + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).cpu())
            if self.progress is not None:
                self.progress(len(chunk))
        return torch.cat(out)


class ComfyVAECodec(LatentCodec):
    """:class:`LatentCodec` over ComfyUI's ``comfy.sd.VAE`` (what a VAE socket carries), duck-typed.

    What ComfyUI's object does (``comfy/sd.py`` ``VAE.encode`` / ``VAE.decode``,
    ``comfy/ldm/models/autoencoder.py``): ``encode(pixels [B,H,W,C] 0..1)`` maps to [-1,1]
    (``process_input``), runs ``AutoencoderKL.encode`` whose ``DiagonalGaussianRegularizer``
    (``sample=False``) returns the posterior **mode = mean**, **unscaled** (the 0.18215 is the
    diffusion model's ``latent_format.process_in``, not the VAE's), ``[B,4,H/8,W/8]`` on
    ComfyUI's intermediate device; it centre-crops H and W to multiples of 8 first (we
    require multiples, so it never does). ``decode(latents [B,4,h,w])`` expects unscaled
    latents and returns ``clamp((x + 1) / 2, 0, 1)`` as ``[B,H,W,3]``. This adapter multiplies
    by ``scaling_factor`` after encoding and divides before decoding, so for the same network
    it produces what :class:`DiffusersVAECodec` produces (up to the dtype ComfyUI runs it in).

    The object must report ``latent_channels == 4``, ``spacial_compression_encode() == 8``
    (or ``downscale_ratio == 8`` on older ComfyUI) and ``latent_dim == 2``, else ``ValueError``.
    An SDXL VAE passes that check but has another latent space (and scale); use an SD 1.x/2.x VAE.
    """

    def __init__(self, vae: Any, chunk_size: int = 1, progress: _Progress = None,
                 scaling_factor: float = _SD_SCALING_FACTOR) -> None:
        if getattr(vae, "first_stage_model", True) is None:
            raise ValueError("the VAE is empty (ComfyUI found no VAE weights in that file)")
        channels = getattr(vae, "latent_channels", None)
        if callable(getattr(vae, "spacial_compression_encode", None)):
            downscale = vae.spacial_compression_encode()
        else:
            downscale = getattr(vae, "downscale_ratio", None)
        latent_dim = getattr(vae, "latent_dim", 2)
        if channels != _LATENT_CHANNELS or downscale != _DOWNSCALE or latent_dim != 2:
            raise ValueError(
                f"VMem needs an SD 1.x/2.x-family image VAE ({_LATENT_CHANNELS} latent channels, {_DOWNSCALE}x "
                f"downscale, 2-D latents); this VAE has {channels} latent channels, {downscale}x downscale and "
                f"{latent_dim}-D latents (e.g. an SD3/Flux or video VAE). Load the SD 2.1 VAE "
                f"(stabilityai/stable-diffusion-2-1-base vae) instead.")
        self.vae = vae
        self.scaling_factor = float(scaling_factor)
        self.chunk_size = _check_chunk_size(chunk_size)
        self.progress = progress

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``[N,H,W,3]`` 0..1 -> ``vae.encode(images) * scaling_factor``, ``[N,4,H/8,W/8]`` float32 on the CPU."""
        _check_images(images, self.downscale)
        out = []
        for chunk in images.split(self.chunk_size):
            out.append(self.vae.encode(chunk).float().cpu() * self.scaling_factor)
            if self.progress is not None:
                self.progress(len(chunk))
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``[N,4,h,w]`` scaled latents -> ``vae.decode(latents / scaling_factor)``, ``[N,8h,8w,3]``
        0..1 float32 on the CPU."""
        _check_latents(latents, self.latent_channels)
        out = []
        for chunk in latents.split(self.chunk_size):
            out.append(self.vae.decode(chunk.float() / self.scaling_factor).float().cpu())
            if self.progress is not None:
                self.progress(len(chunk))
        return torch.cat(out)


# --------------------------------------------------------------------------- image encoder
def _blur_axis(x: torch.Tensor, sigma: float, size: int, dim: int) -> torch.Tensor:
    """Normalised Gaussian of odd ``size`` along ``dim`` (-2 or -1) of ``[N,C,H,W]``, reflect padding."""
    if size <= 1:
        return x
    offsets = torch.arange(size, dtype=x.dtype, device=x.device) - size // 2
    weights = torch.exp(-offsets.pow(2) / (2.0 * sigma * sigma))
    weights = weights / weights.sum()
    channels = x.shape[1]
    if dim == -2:
        kernel = weights.view(1, 1, size, 1).expand(channels, 1, size, 1)
        padded = F.pad(x, (0, 0, size // 2, size // 2), mode="reflect")
    else:
        kernel = weights.view(1, 1, 1, size).expand(channels, 1, 1, size)
        padded = F.pad(x, (size // 2, size // 2, 0, 0), mode="reflect")
    return F.conv2d(padded, kernel, groups=channels)


def _seva_resize(x: torch.Tensor, size: int = _CLIP_SIZE) -> torch.Tensor:
    """SEVA's ``kornia.geometry.resize(x, (size, size), "bicubic", align_corners=True, antialias=True)``.

    ``[N,C,H,W] -> [N,C,size,size]``. kornia's antialiasing (unlike torch's ``antialias=True``)
    is a Gaussian pre-blur when shrinking: per axis with factor ``f = in / out``,
    ``sigma = max((f - 1) / 2, 0.001)`` and kernel size ``int(max(4 sigma, 3))`` rounded up to
    odd, reflect padding; then plain bicubic interpolation with ``align_corners=True``. The
    whole frame is resized to ``size x size``, so a non-square frame is squashed, not cropped.
    """
    height, width = x.shape[-2:]
    if (height, width) == (size, size):
        return x  # bicubic with align_corners=True at the same size is the identity
    if max(height, width) > size:
        for dim, length in ((-2, height), (-1, width)):
            sigma = max((length / size - 1.0) / 2.0, 0.001)
            kernel = int(max(4.0 * sigma, 3))
            kernel = kernel if kernel % 2 else kernel + 1
            x = _blur_axis(x, sigma, 1 if length == 1 else kernel, dim)
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=True)


def _clip_pixels(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """SEVA's CLIP preprocessing: ``[N,H,W,3]`` 0..1 -> ``[N,3,224,224]`` normalised, float32 on ``device``.

    SEVA resizes its [-1,1] frames and then maps them to [0,1]; both steps are linear and the
    resampling weights sum to one, so resizing the 0..1 images directly is the same.
    """
    x = images.to(device=device, dtype=torch.float32).permute(0, 3, 1, 2)
    x = _seva_resize(x)
    mean = torch.tensor(_CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(_CLIP_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


class TransformersCLIPEmbedder(ImageEmbedder):
    """:class:`ImageEmbedder` over a transformers ``CLIPVisionModelWithProjection`` (SEVA's ``CLIPConditioner``).

    Preprocessing as in SEVA: the whole frame resized to 224x224 (kornia semantics: Gaussian
    anti-alias blur, bicubic, ``align_corners=True``; see :func:`_seva_resize`), no clamp,
    OpenAI CLIP mean/std. Returns ``image_embeds`` ``[N, dim]`` (1024 for ViT-H-14) as float32
    on the CPU; the model runs on its own device and dtype, ``chunk_size`` images at a time.
    """

    def __init__(self, model: CLIPVisionModelWithProjection, chunk_size: int = 8) -> None:
        self.model = model
        self.dim = int(model.config.projection_dim)
        self.chunk_size = _check_chunk_size(chunk_size)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``[N,H,W,3]`` 0..1 -> ``[N, dim]`` float32 on the CPU."""
        _check_images(images)
        device, dtype = _place(self.model)
        out = []
        for chunk in images.split(self.chunk_size):
            pixels = _clip_pixels(chunk, device).to(dtype)
            out.append(self.model(pixel_values=pixels).image_embeds.float().cpu())
        return torch.cat(out)


class ComfyCLIPVisionEmbedder(ImageEmbedder):
    """:class:`ImageEmbedder` over ComfyUI's ``comfy.clip_vision.ClipVisionModel`` (a CLIP_VISION socket), duck-typed.

    Calls ``encode_image(images, crop=False)`` and returns its ``image_embeds`` as float32 on
    the CPU. ComfyUI's ``clip_preprocess`` (``comfy/clip_vision.py``) with ``crop=False``
    resizes the whole frame to ``image_size`` x ``image_size`` like SEVA (``crop=True`` would
    centre-crop non-square frames), but with torch's bicubic ``antialias=True`` and
    ``align_corners=False`` instead of kornia's Gaussian pre-blur and ``align_corners=True``,
    and it clamps and rounds the resized pixels to 8 bits before the mean/std normalisation.
    A frame already 224x224 is not resized, so for 8-bit frames of that size both embedders see
    identical pixels; for larger frames the embeddings differ slightly.

    Checks (``ValueError``): ``image_size`` 224 and the OpenAI CLIP mean/std when the object
    has them (a SigLIP or DINOv2 CLIP_VISION has others), and an embedding width of
    ``expected_dim`` (1024 for ViT-H-14; a ViT-L CLIP_VISION gives 768) -- from
    ``model.visual_projection`` when present, otherwise from the first result.
    """

    def __init__(self, clip_vision: Any, expected_dim: int = _VIT_H_DIM) -> None:
        size = getattr(clip_vision, "image_size", _CLIP_SIZE)
        if size != _CLIP_SIZE:
            raise ValueError(f"this CLIP_VISION works at {size}px; VMem needs OpenCLIP ViT-H-14 at {_CLIP_SIZE}px")
        for name, expected in (("image_mean", _CLIP_MEAN), ("image_std", _CLIP_STD)):
            found = getattr(clip_vision, name, expected)
            if len(found) != 3 or any(abs(float(a) - b) > 1e-6 for a, b in zip(found, expected)):
                raise ValueError(f"this CLIP_VISION normalises with {name} {list(found)}, not CLIP's "
                                 f"{list(expected)}: it is not a CLIP ViT-H-14 image encoder (SigLIP, DINOv2?)")
        self.clip_vision = clip_vision
        self.dim = int(expected_dim)
        projection = getattr(getattr(clip_vision, "model", None), "visual_projection", None)
        weight = getattr(projection, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            self._check_dim(int(weight.shape[0]))

    def _check_dim(self, found: int) -> None:
        if found != self.dim:
            hint = " (a CLIP ViT-L image encoder)" if found == 768 else ""
            raise ValueError(f"this CLIP_VISION gives {found}-d image embeddings{hint}; VMem needs the "
                             f"{self.dim}-d OpenCLIP ViT-H-14 (laion2b_s32b_b79k) image encoder")

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``[N,H,W,3]`` 0..1 -> ``encode_image(images, crop=False).image_embeds``, ``[N, dim]`` float32 on the CPU."""
        _check_images(images)
        embeds = self.clip_vision.encode_image(images, crop=False).image_embeds
        self._check_dim(int(embeds.shape[-1]))
        return embeds.float().cpu()


# --------------------------------------------------------------------------- loading
def load_vae(folder: Path) -> AutoencoderKL:
    """The diffusers ``AutoencoderKL`` of a ``vae/`` folder (``config.json`` +
    ``diffusion_pytorch_model.safetensors``), built on the meta device and filled strictly.

    The config must name ``_class_name`` ``"AutoencoderKL"`` with 4 latent channels and four
    blocks (8x downscale), else :class:`WeightsError`. The network comes back in eval mode,
    without gradients, on the CPU in the dtype stored in the file.
    """
    from diffusers import AutoencoderKL
    folder = Path(folder)
    config_path = folder / "config.json"
    config = read_json(config_path, "VAE config")
    name = config.get("_class_name")
    if name != _VAE_CLASS:
        raise WeightsError(f"{config_path} describes a '{name}', not an '{_VAE_CLASS}'. VMem needs the SD 2.1 VAE "
                           f"(stabilityai/stable-diffusion-2-1-base, subfolder vae).")
    channels = config.get("latent_channels", _LATENT_CHANNELS)
    downscale = 2 ** (len(config.get("block_out_channels", [64])) - 1)
    if channels != _LATENT_CHANNELS or downscale != _DOWNSCALE:
        raise WeightsError(f"{config_path} describes an autoencoder with {channels} latent channels and {downscale}x "
                           f"downscale; VMem needs the SD 2.1 VAE ({_LATENT_CHANNELS} channels, {_DOWNSCALE}x).")
    state = read_state_dict(folder / "diffusion_pytorch_model.safetensors", "VAE weights")
    try:
        with torch.device("meta"):
            vae = AutoencoderKL.from_config(config)
    except (TypeError, ValueError, KeyError) as exc:
        raise WeightsError(f"{config_path} is not a valid AutoencoderKL config: {exc}") from None
    load_strict(vae, state, f"VAE {folder / 'diffusion_pytorch_model.safetensors'}")
    return vae.eval().requires_grad_(False)


def vision_keys(state: dict) -> dict:
    """The image-tower part of a full transformers ``CLIPModel`` state dict.

    Drops exactly the text side -- ``text_model.*``, ``text_projection.*`` and ``logit_scale``
    -- and keeps everything else unchanged (``vision_model.*``, ``visual_projection.weight``,
    and any unknown key, so that a strict load still names it). Pure: ``state`` is not modified.
    """
    return {key: value for key, value in state.items()
            if not key.startswith(_TEXT_PREFIXES) and key not in _TEXT_KEYS}


def _without_position_ids(state: dict, num_positions: int) -> dict:
    """Drop ``vision_model.embeddings.position_ids`` when it is the ``arange`` that transformers
    rebuilds itself (a non-persistent buffer now; checkpoints saved by transformers < 4.31 hold
    it). Any other value is kept, so the strict load names it."""
    ids = state.get(_POSITION_IDS)
    if ids is None or ids.numel() != num_positions or not torch.equal(
            ids.reshape(-1).long(), torch.arange(num_positions)):
        return state
    return {key: value for key, value in state.items() if key != _POSITION_IDS}


def load_image_encoder(folder: Path) -> CLIPVisionModelWithProjection:
    """The transformers ``CLIPVisionModelWithProjection`` of an ``image_encoder/`` folder
    (``config.json`` + ``model.safetensors``), built on the meta device and filled strictly.

    Accepts a vision-only ``CLIPVisionConfig`` (``model_type`` ``"clip_vision_model"``; weights
    ``vision_model.*`` + ``visual_projection.weight``) and a full ``CLIPConfig`` (``"clip"``,
    the laion release; its text keys are dropped with :func:`vision_keys` and the top-level
    ``projection_dim`` is used). Another model type, an invalid config or weights that do
    not match give :class:`WeightsError`. The network comes back in eval mode, without
    gradients, on the CPU in the dtype stored in the file.
    """
    from transformers import CLIPConfig, CLIPVisionConfig, CLIPVisionModelWithProjection
    folder = Path(folder)
    config_path = folder / "config.json"
    config = read_json(config_path, "image encoder config")
    model_type = config.get("model_type")
    if model_type not in ("clip", "clip_vision_model"):
        raise WeightsError(f"{config_path} describes a '{model_type}' model; the image encoder must be a CLIP "
                           f"('clip', as laion/CLIP-ViT-H-14-laion2B-s32B-b79K) or a CLIP vision tower "
                           f"('clip_vision_model').")
    try:  # transformers validates configs with its own error types, hence the broad catch
        if model_type == "clip":
            full = CLIPConfig.from_dict(config)
            vision = full.vision_config
            vision.projection_dim = full.projection_dim  # the full config's sub-config keeps a default
        else:
            vision = CLIPVisionConfig.from_dict(config)
    except Exception as exc:
        raise WeightsError(f"{config_path} is not a valid {model_type} config: {exc}") from None
    weights_path = folder / "model.safetensors"
    state = read_state_dict(weights_path, "image encoder weights")
    if model_type == "clip":
        state = vision_keys(state)
    state = _without_position_ids(state, (vision.image_size // vision.patch_size) ** 2 + 1)
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(vision)
    embeddings = model.vision_model.embeddings  # its non-persistent buffer is not in any checkpoint
    embeddings.register_buffer("position_ids", torch.arange(embeddings.num_positions).unsqueeze(0), persistent=False)
    load_strict(model, state, f"image encoder {weights_path}")
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------- smoke weights
_SMOKE_VAE_CONFIG = {  # the SD 2.1 file's keys; four blocks keep the real 8x downscale, widths are tiny
    "_class_name": _VAE_CLASS, "_diffusers_version": "0.8.0", "act_fn": "silu",
    "block_out_channels": [32, 32, 32, 32], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3, "latent_channels": _LATENT_CHANNELS, "layers_per_block": 1, "norm_num_groups": 8,
    "out_channels": 3, "sample_size": 64, "scaling_factor": _SD_SCALING_FACTOR,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
_SMOKE_VISION = {  # ViT-H-14's shape of config (patch 14, 224 px, gelu), tiny widths
    "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
    "patch_size": 14, "image_size": _CLIP_SIZE, "num_channels": 3, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
}
_SMOKE_TEXT = {
    "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
    "vocab_size": 64, "max_position_embeddings": 16, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
    "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
_SMOKE_PROJECTION = 16  # deliberately not 1024: nothing may assume the width
_SMOKE_CLIP_CONFIG = {  # the laion release's layout
    "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": _SMOKE_PROJECTION,
    "logit_scale_init_value": 2.6592, "text_config": _SMOKE_TEXT, "vision_config": _SMOKE_VISION,
}
_SMOKE_VISION_CONFIG = {  # the vision-only layout (h94/IP-Adapter models/image_encoder)
    "architectures": ["CLIPVisionModelWithProjection"], "model_type": "clip_vision_model",
    "projection_dim": _SMOKE_PROJECTION, **_SMOKE_VISION,
}


def write_smoke_vae(folder: Path, seed: int = 0) -> None:
    """Tiny random ``AutoencoderKL`` in the official ``vae/`` layout (``config.json`` +
    ``diffusion_pytorch_model.safetensors``): 4 latent channels, a real 8x downscale, width 32.
    The family's writer marks the weights folder as smoke weights."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file
    folder = Path(folder)
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(_SMOKE_VAE_CONFIG)
    write_json(folder / "config.json", _SMOKE_VAE_CONFIG)
    state = random_state(vae, torch.Generator().manual_seed(seed))
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))


def write_smoke_image_encoder(folder: Path, seed: int = 0, full_clip: bool = True) -> None:
    """Tiny random CLIP image encoder in an official ``image_encoder/`` layout (``config.json`` +
    ``model.safetensors``): the laion full-``CLIPModel`` layout with text keys by default, the
    vision-only layout with ``full_clip=False`` (the same vision weights for the same seed).
    Hidden 32, 2 layers, 2 heads, patch 14 at 224 px, projection 16."""
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel
    folder = Path(folder)
    with torch.device("meta"):
        model = CLIPModel(CLIPConfig.from_dict(_SMOKE_CLIP_CONFIG))
    state = random_state(model, torch.Generator().manual_seed(seed))
    if full_clip:
        write_json(folder / "config.json", _SMOKE_CLIP_CONFIG)
    else:
        write_json(folder / "config.json", _SMOKE_VISION_CONFIG)
        state = vision_keys(state)
    save_file(state, str(folder / "model.safetensors"))
