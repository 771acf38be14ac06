"""The VMem and SEVA model families: the UNet checkpoint plus the VAE and CLIP image encoder.

Both families share one folder layout; only the UNet file differs::

    vmem_weights.pth        VMem UNet (liguang0115/vmem): a plain state dict, read with
                            weights_only=True; a "module." prefix is stripped
    model.safetensors       SEVA UNet (stabilityai/stable-virtual-camera v1.0), no prefix
    vae/config.json                           SD 2.1 VAE (stabilityai/stable-diffusion-2-1-base,
    vae/diffusion_pytorch_model.safetensors   subfolder vae), diffusers AutoencoderKL
    image_encoder/config.json                 OpenCLIP ViT-H-14 laion2b_s32b_b79k in transformers
    image_encoder/model.safetensors           form (laion/CLIP-ViT-H-14-laion2B-s32B-b79K)

The VAE and image encoder are optional in the folder: the VMem nodes can take ComfyUI's
own VAE and CLIP_VISION instead. The UNet's sizes are read from the checkpoint's shapes
(:func:`.model.infer_params`; head width 64 and 32 norm groups as released), so smoke
weights need no config file either.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..nodes.comfy import families
from ..nodes.encoders.clip import load_image_encoder, write_smoke_image_encoder
from ..nodes.comfy.jsonfile import read_json_object
from ..nodes.encoders.vae import load_vae, write_smoke_vae
from ..nodes.comfy.weights import WeightsError, is_smoke, load_strict, random_state, read_state_dict
from .model import SevaParams, SevaUNet, infer_params, strip_prefix

VMEM, SEVA = "vmem", "seva"
FAMILIES = (VMEM, SEVA)
UNET_FILES = {VMEM: "vmem_weights.pth", SEVA: "model.safetensors"}
VAE_FILES = ("vae/config.json", "vae/diffusion_pytorch_model.safetensors")
IMAGE_ENCODER_FILES = ("image_encoder/config.json", "image_encoder/model.safetensors")
OPTIONAL_FILES = {
    "vae/config.json": "stabilityai/stable-diffusion-2-1-base:vae/config.json",
    "vae/diffusion_pytorch_model.safetensors":
        "stabilityai/stable-diffusion-2-1-base:vae/diffusion_pytorch_model.safetensors",
    "image_encoder/config.json": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K:config.json",
    "image_encoder/model.safetensors": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K:model.safetensors",
}
LICENCES = {
    VMEM: ("VMem UNet weights: a fine-tune of SEVA (Stability AI Non-Commercial License); the model card says "
           "Apache-2.0 but treat them as NON-COMMERCIAL. SEVA's licence makes generated outputs non-commercial "
           "too. SD 2.1 VAE: CreativeML Open RAIL++-M. OpenCLIP ViT-H-14: MIT."),
    SEVA: ("SEVA (Stable Virtual Camera) weights: Stability AI Non-Commercial License; generated outputs are "
           "non-commercial too. SD 2.1 VAE: CreativeML Open RAIL++-M. OpenCLIP ViT-H-14: MIT."),
}


def load_unet(path: Path, family: str, num_frames: int = 8) -> SevaUNet:
    """Build the SEVA UNet from a checkpoint file, strictly (sizes from its shapes)."""
    what = f"{family} UNet {path.name}"
    state = strip_prefix(read_state_dict(path, what))
    try:
        params = infer_params(state, num_frames=num_frames)
    except ValueError as exc:
        raise WeightsError(f"{what} in {path.parent}: {exc}") from None
    with torch.device("meta"):
        unet = SevaUNet(params)
    return load_strict(unet, state, what)


def _loader(family: str):
    def load(folder: Path, device: torch.device, dtype: torch.dtype) -> families.ModelHandle:
        """Load the UNet and, when present, the VAE and image encoder; networks rest on the CPU."""
        folder = Path(folder)
        modules = {"unet": load_unet(folder / UNET_FILES[family], family)}
        for role, files, build in (("vae", VAE_FILES, load_vae), ("image_encoder", IMAGE_ENCODER_FILES,
                                                                   load_image_encoder)):
            present = [(folder / f).is_file() for f in files]
            if all(present):
                modules[role] = build(folder / role)
            elif any(present):
                missing = [f for f, ok in zip(files, present) if not ok]
                raise WeightsError(f"{folder}/{role} is incomplete: {', '.join(missing)} missing "
                                   f"(remove the folder to use a ComfyUI {role.upper()} input instead)")
        for module in modules.values():
            torch.nn.Module.to(module, dtype=dtype).eval().requires_grad_(False)
        return families.ModelHandle(family=family, source=folder, modules=modules, device=device, dtype=dtype,
                                    extra={"params": modules["unet"].params}, is_smoke=is_smoke(folder))
    return load


# --------------------------------------------------------------------------- smoke weights
def smoke_params(context_dim: int) -> SevaParams:
    """A tiny UNet with the released head width (64) and norm groups (32), so its sizes can
    be read back from the shapes alone; two levels (one downsampling)."""
    return SevaParams(model_channels=64, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2, 1),
                      transformer_depth=(1, 1), context_dim=context_dim)


def _smoke_writer(family: str):
    def write(folder: Path, seed: int = 0) -> None:
        folder = Path(folder)
        write_smoke_vae(folder / "vae", seed=seed)
        write_smoke_image_encoder(folder / "image_encoder", seed=seed)
        config = read_json_object(folder / "image_encoder/config.json", "smoke image encoder config", WeightsError)
        projection = config.get("projection_dim") or config["vision_config"]["projection_dim"]
        unet = SevaUNet(smoke_params(context_dim=int(projection)))
        state = random_state(unet, torch.Generator().manual_seed(seed))
        path = folder / UNET_FILES[family]
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file
            save_file(state, str(path))
        else:
            torch.save(state, str(path))
        families.mark_smoke(folder, "VMem" if family == VMEM else "SEVA")
    return write


# On a CPU the smoke demo walks at 128 x 128 pixels with a few sampling steps.
SMOKE_OVERRIDES = {node: {"resolution": 128, "steps": 4} for node in ("CVS_VMemNavigate", "CVS_VMemWalk")}

VMEM_FAMILY = families.register(families.Family(
    name=VMEM, display_name="VMem (surfel-memory scene navigation, SEVA architecture)",
    default_repo="liguang0115/vmem", files=(UNET_FILES[VMEM],), licence=LICENCES[VMEM],
    load=_loader(VMEM), write_smoke=_smoke_writer(VMEM), smoke_overrides=SMOKE_OVERRIDES,
    optional_files=OPTIONAL_FILES))
SEVA_FAMILY = families.register(families.Family(
    name=SEVA, display_name="SEVA (Stable Virtual Camera)",
    default_repo="stabilityai/stable-virtual-camera", files=(UNET_FILES[SEVA],), licence=LICENCES[SEVA],
    load=_loader(SEVA), write_smoke=_smoke_writer(SEVA), smoke_overrides=SMOKE_OVERRIDES,
    optional_files=OPTIONAL_FILES))
