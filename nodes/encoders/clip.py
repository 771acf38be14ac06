"""The OpenCLIP ViT-H-14 image encoder shared by several capabilities: adapters, loader, smoke files.

VMem (SEVA) and VideoMV (image-to-multi-view) are conditioned on OpenCLIP ViT-H-14
(``laion2b_s32b_b79k``) image embeddings, 1024-d after the projection. The network sits
behind a tiny interface so a pipeline can use either our own transformers model or
ComfyUI's native CLIP_VISION:

- :class:`ImageEmbedder` ``images [N,H,W,3] 0..1 -> [N,dim]``, implemented by
  :class:`TransformersCLIPEmbedder` (transformers ``CLIPVisionModelWithProjection``) and
  :class:`ComfyCLIPVisionEmbedder` (ComfyUI's ``comfy.clip_vision.ClipVisionModel``, duck-typed).

Weights layouts (the open_clip ``open_clip_pytorch_model.bin`` layout is read by
:mod:`.open_clip_weights`)::

    image_encoder/config.json                CLIPConfig ("clip", laion/CLIP-ViT-H-14-laion2B-s32B-b79K)
                                             or CLIPVisionConfig ("clip_vision_model", e.g. h94/IP-Adapter
                                             models/image_encoder, stable-diffusion-2-1-unclip image_encoder)
    image_encoder/model.safetensors

Nothing here imports ComfyUI; the Comfy adapter only calls the methods named in its doc.
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..comfy.jsonfile import write_json
from ..comfy.runtime import module_place
from .checks import check_chunk_size, check_images
from ..comfy.weights import WeightsError, load_strict, random_state, read_json, read_state_dict

if TYPE_CHECKING:  # imported where used: transformers is only needed when a model is built
    from transformers import CLIPVisionModelWithProjection

CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP normalisation, used by open_clip, SEVA and ComfyUI
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIT_H_DIM = 1024  # projection width of OpenCLIP ViT-H-14
_TEXT_PREFIXES = ("text_model.", "text_projection.")
_TEXT_KEYS = ("logit_scale",)
_POSITION_IDS = "vision_model.embeddings.position_ids"


# --------------------------------------------------------------------------- interface
class ImageEmbedder(abc.ABC):
    """Images -> CLIP image embeddings (e.g. SEVA's conditioning, before averaging over views).

    ``embed(images [N,H,W,3] float 0..1) -> [N, dim]`` float32 on the CPU.
    """

    dim: int

    @abc.abstractmethod
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``[N,H,W,3]`` 0..1 -> ``[N, dim]`` float32 on the CPU."""


# --------------------------------------------------------------------------- adapters
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


def _seva_resize(x: torch.Tensor, size: int = CLIP_SIZE) -> torch.Tensor:
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


RESIZE_MODES = ("seva", "bilinear")
"""How :class:`TransformersCLIPEmbedder` brings a frame to 224x224: ``"seva"`` (:func:`_seva_resize`)
or ``"bilinear"`` (antialiased bilinear, ``align_corners=False``: PIL's ``BILINEAR`` resize,
which VGen / VideoMV use on their 256x256 images)."""


def _clip_pixels(images: torch.Tensor, device: torch.device, resize: str = "seva") -> torch.Tensor:
    """CLIP preprocessing: ``[N,H,W,3]`` 0..1 -> ``[N,3,224,224]`` normalised, float32 on ``device``.

    The whole frame is resized (``resize``, see :data:`RESIZE_MODES`), then normalised with
    the OpenAI CLIP mean/std. SEVA resizes its [-1,1] frames and then maps them to [0,1];
    both steps are linear and the resampling weights sum to one, so resizing the 0..1
    images directly is the same.
    """
    x = images.to(device=device, dtype=torch.float32).permute(0, 3, 1, 2)
    if resize == "seva":
        x = _seva_resize(x)
    elif x.shape[-2:] != (CLIP_SIZE, CLIP_SIZE):
        x = F.interpolate(x, size=(CLIP_SIZE, CLIP_SIZE), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


class TransformersCLIPEmbedder(ImageEmbedder):
    """:class:`ImageEmbedder` over a transformers ``CLIPVisionModelWithProjection`` (SEVA's ``CLIPConditioner``).

    Preprocessing: the whole frame resized to 224x224 -- by default as in SEVA (kornia
    semantics: Gaussian anti-alias blur, bicubic, ``align_corners=True``; see
    :func:`_seva_resize`), or ``resize="bilinear"`` as VGen / VideoMV do -- no clamp, OpenAI
    CLIP mean/std. Returns ``image_embeds`` ``[N, dim]`` (1024 for ViT-H-14) as float32 on
    the CPU; the model runs on its own device and dtype, ``chunk_size`` images at a time.
    """

    def __init__(self, model: CLIPVisionModelWithProjection, chunk_size: int = 8, resize: str = "seva") -> None:
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}; got {resize!r}")
        self.model = model
        self.dim = int(model.config.projection_dim)
        self.chunk_size = check_chunk_size(chunk_size)
        self.resize = resize

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``[N,H,W,3]`` 0..1 -> ``[N, dim]`` float32 on the CPU."""
        check_images(images)
        device, dtype = module_place(self.model)
        out = []
        for chunk in images.split(self.chunk_size):
            pixels = _clip_pixels(chunk, device, self.resize).to(dtype)
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

    def __init__(self, clip_vision: Any, expected_dim: int = VIT_H_DIM) -> None:
        size = getattr(clip_vision, "image_size", CLIP_SIZE)
        if size != CLIP_SIZE:
            raise ValueError(f"this CLIP_VISION works at {size}px; OpenCLIP ViT-H-14 works at {CLIP_SIZE}px")
        for name, expected in (("image_mean", CLIP_MEAN), ("image_std", CLIP_STD)):
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
            raise ValueError(f"this CLIP_VISION gives {found}-d image embeddings{hint}; the "
                             f"{self.dim}-d OpenCLIP ViT-H-14 (laion2b_s32b_b79k) image encoder is needed")

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``[N,H,W,3]`` 0..1 -> ``encode_image(images, crop=False).image_embeds``, ``[N, dim]`` float32 on the CPU."""
        check_images(images)
        embeds = self.clip_vision.encode_image(images, crop=False).image_embeds
        self._check_dim(int(embeds.shape[-1]))
        return embeds.float().cpu()


# --------------------------------------------------------------------------- loading
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


def fill_position_ids(model: torch.nn.Module) -> None:
    """Give a model built on the meta device real ``position_ids`` buffers: transformers keeps
    ``arange`` position ids as non-persistent buffers that no checkpoint holds, so a strict
    load on the meta device would leave them empty."""
    for module in model.modules():
        ids = module._buffers.get("position_ids")
        if ids is not None and ids.is_meta:
            real = torch.arange(ids.shape[-1]).expand(ids.shape).contiguous()
            module.register_buffer("position_ids", real, persistent=False)


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
    fill_position_ids(model)
    load_strict(model, state, f"image encoder {weights_path}")
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------- smoke weights
_SMOKE_VISION = {  # ViT-H-14's shape of config (patch 14, 224 px, gelu), tiny widths
    "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
    "patch_size": 14, "image_size": CLIP_SIZE, "num_channels": 3, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
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
