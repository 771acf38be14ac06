"""The Depth Anything V2 model family (monocular depth for the surfel memory's pointmaps).

Layout of the ``transformers`` releases (``depth-anything/Depth-Anything-V2-Small-hf``,
``-Base-hf``, ``-Large-hf`` and the metric variants)::

    config.json                 DepthAnythingConfig (Dinov2 backbone, DPT-style neck and head)
    model.safetensors           DepthAnythingForDepthEstimation state dict
    preprocessor_config.json    DPT image processor settings (size 518, multiple of 14, ImageNet mean/std)

:func:`depth_estimator` turns a loaded handle into the ``frames -> disparity/depth``
callable that :class:`~.pointmaps.DepthModelProvider` expects.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..nodes.comfy import families, runtime
from ..nodes.comfy.jsonfile import write_json
from ..nodes.comfy.weights import WeightsError, is_smoke, load_strict, read_json, read_state_dict

FAMILY = "depth_anything_v2"
FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
LICENCE = ("Depth Anything V2: Small weights Apache-2.0; Base and Large weights CC-BY-NC-4.0 (non-commercial). "
           "Code Apache-2.0.")
_MODEL_TYPE = "depth_anything"


def load_depth_anything(folder: Path, device: torch.device, dtype: torch.dtype) -> families.ModelHandle:
    """Build ``DepthAnythingForDepthEstimation`` from ``config.json`` on the meta device and
    fill it strictly from ``model.safetensors``; the network rests on the CPU in ``dtype``."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation
    folder = Path(folder)
    config_dict = read_json(folder / "config.json", "Depth Anything config")
    if config_dict.get("model_type", _MODEL_TYPE) != _MODEL_TYPE:
        raise WeightsError(f"config.json in {folder} describes a '{config_dict.get('model_type')}' model, "
                           f"not '{_MODEL_TYPE}'. Is this a different model?")
    try:
        config = DepthAnythingConfig.from_dict(config_dict)
    except (TypeError, ValueError, KeyError) as exc:
        raise WeightsError(f"config.json in {folder} is not a valid Depth Anything config: {exc}") from None
    preprocessor = read_json(folder / "preprocessor_config.json", "Depth Anything preprocessor config")
    state = read_state_dict(folder / "model.safetensors", "Depth Anything weights")
    with torch.device("meta"):
        model = DepthAnythingForDepthEstimation(config)
    load_strict(model, state, "Depth Anything model.safetensors")
    model.to(dtype=dtype).eval().requires_grad_(False)
    return families.ModelHandle(family=FAMILY, source=folder, modules={"depth": model}, device=device,
                                dtype=dtype, extra={"preprocessor": preprocessor}, is_smoke=is_smoke(folder))


def _network_size(height: int, width: int, short_side: int, multiple: int) -> tuple[int, int]:
    """Input size of the network: the short side scaled to ``short_side`` (aspect kept), both
    sides rounded to a multiple of ``multiple`` (Depth Anything's ``lower_bound`` resize)."""
    scale = short_side / min(height, width)
    return (max(multiple, round(height * scale / multiple) * multiple),
            max(multiple, round(width * scale / multiple) * multiple))


def depth_estimator(handle: families.ModelHandle, chunk: int = 4,
                    on_chunk: Callable[[], None] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``frames [N,H,W,3] 0..1 -> [N,H,W]`` predictions of the handle's network (disparity for
    relative models, metres for metric ones), ``chunk`` frames at a time on ``handle.device``;
    ``on_chunk`` is called after each chunk (progress and Cancel).

    Preprocessing follows ``preprocessor_config.json``: bicubic resize with the short side at
    ``size`` (multiple of ``ensure_multiple_of``), then normalisation by ``image_mean`` /
    ``image_std``; the prediction is resized back bilinearly.
    """
    model = handle.modules["depth"]
    pre = handle.extra.get("preprocessor", {})
    size = pre.get("size", {"height": 518, "width": 518})
    short_side = min(size.values()) if isinstance(size, dict) else int(size)
    multiple = int(pre.get("ensure_multiple_of") or pre.get("size_divisor") or 14)
    mean = torch.tensor(pre.get("image_mean", [0.485, 0.456, 0.406])).view(1, 3, 1, 1)
    std = torch.tensor(pre.get("image_std", [0.229, 0.224, 0.225])).view(1, 3, 1, 1)
    device, dtype = handle.device, handle.dtype

    @torch.no_grad()
    def estimate(frames: torch.Tensor) -> torch.Tensor:
        runtime.load_to_device([model], device)
        height, width = frames.shape[1:3]
        net_h, net_w = _network_size(height, width, short_side, multiple)
        out = []
        for start in range(0, frames.shape[0], chunk):
            x = frames[start:start + chunk].to(device, torch.float32).clamp(0, 1).permute(0, 3, 1, 2)
            x = F.interpolate(x, size=(net_h, net_w), mode="bicubic", align_corners=False,
                              antialias=net_h < height).clamp(0, 1)
            x = (x - mean.to(device)) / std.to(device)
            predicted = model(pixel_values=x.to(dtype)).predicted_depth.float()
            out.append(F.interpolate(predicted.unsqueeze(1), size=(height, width), mode="bilinear",
                                     align_corners=False)[:, 0].cpu())
            if on_chunk is not None:
                on_chunk()
        return torch.cat(out)

    return estimate


def output_kind(handle: families.ModelHandle) -> str:
    """``"depth"`` for metric models, ``"disparity"`` for relative ones (the provider's ``output``)."""
    kind = getattr(handle.modules["depth"].config, "depth_estimation_type", "relative")
    return "depth" if kind == "metric" else "disparity"


# --------------------------------------------------------------------------- smoke weights
SMOKE_BACKBONE = {
    "model_type": "dinov2", "hidden_size": 32, "num_attention_heads": 2, "mlp_ratio": 2,
    "num_hidden_layers": 4,  # the neck reads four distinct layers (duplicates are refused)
    "patch_size": 14, "image_size": 98, "out_indices": [1, 2, 3, 4],
    "out_features": ["stage1", "stage2", "stage3", "stage4"], "reshape_hidden_states": False,
    "apply_layernorm": True, "layerscale_value": 1.0, "use_swiglu_ffn": False,
}
SMOKE_CONFIG = {
    "architectures": ["DepthAnythingForDepthEstimation"], "model_type": _MODEL_TYPE,
    "backbone_config": SMOKE_BACKBONE, "patch_size": 14, "reassemble_hidden_size": 32,
    "reassemble_factors": [4, 2, 1, 0.5], "neck_hidden_sizes": [8, 8, 16, 16], "fusion_hidden_size": 8,
    "head_in_index": -1, "head_hidden_size": 8, "depth_estimation_type": "relative",
}
SMOKE_PREPROCESSOR = {  # the official file's settings except the working size (518 there)
    "image_processor_type": "DPTImageProcessor", "do_resize": True, "size": {"height": 56, "width": 56},
    "keep_aspect_ratio": True, "ensure_multiple_of": 14, "resample": 3, "do_rescale": True,
    "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225], "do_pad": False,
}


def write_smoke_depth_anything(folder: Path, seed: int = 0) -> None:
    """Tiny random Depth Anything weights in the official layout (see module doc)."""
    from safetensors.torch import save_file
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation
    folder = Path(folder)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DepthAnythingForDepthEstimation(DepthAnythingConfig.from_dict(SMOKE_CONFIG))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["head.conv3.bias"] = torch.ones_like(state["head.conv3.bias"])  # positive disparity, not ReLU zeros
    write_json(folder / "config.json", SMOKE_CONFIG)
    save_file(state, str(folder / "model.safetensors"))
    write_json(folder / "preprocessor_config.json", SMOKE_PREPROCESSOR)
    families.mark_smoke(folder, "Depth Anything V2")


DEPTH_FAMILY = families.register(families.Family(
    name=FAMILY,
    display_name="Depth Anything V2 (monocular depth)",
    default_repo="depth-anything/Depth-Anything-V2-Small-hf",
    files=FILES,
    licence=LICENCE,
    load=load_depth_anything,
    write_smoke=write_smoke_depth_anything,
))
