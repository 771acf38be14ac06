"""DINOv2 segment descriptors for Memory-V2V's appearance retrieval, and the ``dinov2`` model family.

A segment's descriptor is the mean over its frames of DINOv2's image embedding (the
layer-normed CLS token, transformers' ``pooler_output``). Frames are preprocessed as the
model's own image processor does: the shorter side resized to 256 (bicubic, antialiased),
the centre 224 x 224 cropped, ImageNet mean / std.

Weights (``models/dinov2/facebook--dinov2-base/``, from ``facebook/dinov2-base``; any DINOv2
size works)::

    config.json
    model.safetensors
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..nodes.comfy import families
from ..nodes.comfy.runtime import module_place
from ..nodes.comfy.weights import WeightsError, is_smoke

NAME = "dinov2"
FILES = ("config.json", "model.safetensors")
RESIZE, CROP = 256, 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_FRAMES = 16  # frames per descriptor, evenly spaced over the segment


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """``[N,H,W,3]`` 0..1 -> ``[N,3,224,224]`` normalised (module doc)."""
    x = images.float().permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    scale = RESIZE / min(h, w)
    size = (max(RESIZE, round(h * scale)), max(RESIZE, round(w * scale)))
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    top, left = (size[0] - CROP) // 2, (size[1] - CROP) // 2
    x = x[..., top:top + CROP, left:left + CROP]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def segment_descriptor(model, frames: torch.Tensor, max_frames: int = MAX_FRAMES, chunk: int = 8) -> torch.Tensor:
    """The mean DINOv2 embedding of ``frames`` ``[N,H,W,3]`` (at most ``max_frames`` of them,
    evenly spaced): ``[D]`` float32 on the CPU."""
    if frames.shape[0] > max_frames:
        frames = frames[torch.linspace(0, frames.shape[0] - 1, max_frames).round().long()]
    device, dtype = module_place(model)
    out = []
    for part in frames.split(chunk):
        out.append(model(pixel_values=preprocess(part).to(device=device, dtype=dtype)).pooler_output.float().cpu())
    return torch.cat(out).mean(0)


def _load(folder: Path, device: torch.device, dtype: torch.dtype) -> families.ModelHandle:
    from transformers import Dinov2Model
    folder = Path(folder)
    try:
        model = Dinov2Model.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises several types for malformed files
        raise WeightsError(f"DINOv2 in {folder} could not be read ({type(exc).__name__}: {exc})") from None
    torch.nn.Module.to(model, dtype=dtype).eval().requires_grad_(False)
    return families.ModelHandle(family=NAME, source=folder, modules={"model": model}, device=device, dtype=dtype,
                                is_smoke=is_smoke(folder))


def _write_smoke(folder: Path, seed: int = 0) -> None:
    from transformers import Dinov2Config, Dinov2Model
    torch.manual_seed(seed)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          image_size=CROP, patch_size=14)
    Dinov2Model(config).save_pretrained(str(folder))
    families.mark_smoke(Path(folder), "DINOv2")


FAMILY = families.register(families.Family(
    name=NAME, display_name="DINOv2 (segment descriptors for Memory-V2V appearance retrieval)",
    default_repo="facebook/dinov2-base", files=FILES,
    licence="DINOv2 weights (facebook/dinov2-*): Apache-2.0.", load=_load, write_smoke=_write_smoke))
