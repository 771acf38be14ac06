"""The GVM model family: official file layout, strict loading, smoke weights.

Layout of the release (Hugging Face ``geyongtao/gvm``)::

    vae/config.json                         AutoencoderKLTemporalDecoder
    vae/diffusion_pytorch_model.safetensors
    unet/config.json                        SVD UNet without added-time ids
    unet/diffusion_pytorch_model.safetensors
    unet/adapter_config.json                PEFT LoraConfig
    unet/pytorch_lora_weights.pt            PEFT LoRA state dict (read with weights_only)
    scheduler/scheduler_config.json         FlowMatchEulerDiscreteScheduler
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLTemporalDecoder, FlowMatchEulerDiscreteScheduler

from ..nodes.comfy import families
from ..nodes.comfy.jsonfile import write_json
from ..nodes.comfy.weights import (WeightsError, check_state_dict, is_smoke, load_strict, random_state, read_json,
                                   read_state_dict)
from .lora import LoraError, merge_lora
from .model import GVMUNet

FILES = (
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/adapter_config.json",
    "unet/pytorch_lora_weights.pt",
    "scheduler/scheduler_config.json",
)

LICENCE = ("GVM code and weights: academic use under 2-clause BSD per the GVM README, commercial use only "
           "with permission of the authors (no LICENSE file in the repository; treat as non-commercial).")

_UNET_CLASS = "UNetSpatioTemporalConditionModel"
_VAE_CLASS = "AutoencoderKLTemporalDecoder"


def _check_class(config: dict, expected: str, file: str) -> None:
    name = config.get("_class_name")
    if name is not None and name != expected:
        raise WeightsError(f"{file} describes a '{name}', not a '{expected}'. Is this a different model?")


def load_gvm(folder: Path, device: torch.device, dtype: torch.dtype) -> families.ModelHandle:
    """Build GVM's UNet (LoRA merged) and VAE from an official folder, strictly.

    Networks are built on the meta device and filled from the checkpoint, so no time
    is spent on random initialisation; they rest on the CPU in ``dtype`` until a node
    moves them to ``device``.
    """
    folder = Path(folder)
    unet_cfg = read_json(folder / "unet/config.json", "GVM unet config")
    _check_class(unet_cfg, _UNET_CLASS, "unet/config.json")
    try:
        unet_args = GVMUNet.config_from_release(unet_cfg)
    except ValueError as exc:
        raise WeightsError(f"unet/config.json in {folder}: {exc}") from None
    state = read_state_dict(folder / "unet/diffusion_pytorch_model.safetensors", "GVM unet weights")
    with torch.device("meta"):
        unet = GVMUNet(**unet_args)
    what = "GVM unet/diffusion_pytorch_model.safetensors"
    check_state_dict(unet, state, what)  # the base checkpoint first, so a wrong model is named as such
    lora_cfg = read_json(folder / "unet/adapter_config.json", "GVM LoRA config")
    lora = read_state_dict(folder / "unet/pytorch_lora_weights.pt", "GVM LoRA weights")
    try:
        merge_lora(state, lora, lora_cfg)
    except LoraError as exc:
        raise WeightsError(f"GVM LoRA in {folder / 'unet'}: {exc}") from None
    load_strict(unet, state, what)

    vae_cfg = read_json(folder / "vae/config.json", "GVM vae config")
    _check_class(vae_cfg, _VAE_CLASS, "vae/config.json")
    with torch.device("meta"):
        vae = AutoencoderKLTemporalDecoder.from_config(vae_cfg)
    load_strict(vae, read_state_dict(folder / "vae/diffusion_pytorch_model.safetensors", "GVM vae weights"),
                "GVM vae/diffusion_pytorch_model.safetensors")

    sched_cfg = read_json(folder / "scheduler/scheduler_config.json", "GVM scheduler config")
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(sched_cfg)
    for module in (unet, vae):
        # nn.Module.to: diffusers' override warns about fp32-only modules that these networks do not have
        torch.nn.Module.to(module, dtype=dtype).eval().requires_grad_(False)
    return families.ModelHandle(family="gvm", source=folder, modules={"unet": unet, "vae": vae},
                                device=device, dtype=dtype, extra={"scheduler": scheduler},
                                is_smoke=is_smoke(folder))


# --------------------------------------------------------------------------- smoke weights
SMOKE_UNET_CONFIG = {
    "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
    "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "num_attention_heads": [2, 4],
    "cross_attention_dim": 24,  # deliberately not 1024: the width comes from the config
    "transformer_layers_per_block": 1,
}
SMOKE_VAE_CONFIG = {  # four blocks: the real 8x downsampling, so latents have the real size
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "block_out_channels": [32, 32, 32, 32], "layers_per_block": 1, "latent_channels": 4}
SMOKE_LORA_CONFIG = {
    "peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "bias": "none",
    "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "conv_in"],
    "use_rslora": False, "use_dora": False, "rank_pattern": {}, "alpha_pattern": {},
    "init_lora_weights": True, "inference_mode": True,
}


def lora_targets(unet: torch.nn.Module, targets) -> dict[str, torch.nn.Module]:
    """Modules whose path ends with one of ``targets`` (PEFT's suffix rule), Linear or Conv2d."""
    found = {}
    for name, module in unet.named_modules():
        if any(name == t or name.endswith("." + t) for t in targets) and isinstance(
                module, (torch.nn.Linear, torch.nn.Conv2d)):
            found[name] = module
    return found


def write_smoke_gvm(folder: Path, seed: int = 0) -> None:
    """Tiny random GVM weights in the official layout (see module doc)."""
    folder = Path(folder)
    g = torch.Generator().manual_seed(seed)
    unet = GVMUNet(**GVMUNet.config_from_release(SMOKE_UNET_CONFIG))
    unet_state = random_state(unet, g)
    from safetensors.torch import save_file
    write_json(folder / "unet/config.json", {
        "_class_name": _UNET_CLASS, "_diffusers_version": "0.35.0.dev0", "sample_size": None,
        "in_channels": 8, "out_channels": 4, **SMOKE_UNET_CONFIG,
        "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 768,
        "num_frames": 25, "class_embed_type": None, "num_class_embeds": None, "act_fn": "silu"})
    save_file(unet_state, str(folder / "unet/diffusion_pytorch_model.safetensors"))

    r = SMOKE_LORA_CONFIG["r"]
    lora = {}
    for name, module in lora_targets(unet, SMOKE_LORA_CONFIG["target_modules"]).items():
        if isinstance(module, torch.nn.Linear):
            a_shape, b_shape = (r, module.in_features), (module.out_features, r)
        else:
            a_shape = (r, module.in_channels, *module.kernel_size)
            b_shape = (module.out_channels, r, 1, 1)
        lora[f"model.{name}.lora_A.weight"] = torch.randn(a_shape, generator=g) * 0.05
        lora[f"model.{name}.lora_B.weight"] = torch.randn(b_shape, generator=g) * 0.05
    write_json(folder / "unet/adapter_config.json", SMOKE_LORA_CONFIG)
    torch.save(lora, str(folder / "unet/pytorch_lora_weights.pt"))

    vae = AutoencoderKLTemporalDecoder(**SMOKE_VAE_CONFIG)
    write_json(folder / "vae/config.json", {"_class_name": _VAE_CLASS, "_diffusers_version": "0.35.0.dev0",
                                            **dict(vae.config)})
    save_file(random_state(vae, g), str(folder / "vae/diffusion_pytorch_model.safetensors"))

    write_json(folder / "scheduler/scheduler_config.json", {
        "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.35.0.dev0",
        "num_train_timesteps": 1000, "shift": 1.0})
    families.mark_smoke(folder, "GVM")


GVM_FAMILY = families.register(families.Family(
    name="gvm",
    display_name="GVM (generative video matting)",
    default_repo="geyongtao/gvm",
    files=FILES,
    licence=LICENCE,
    load=load_gvm,
    write_smoke=write_smoke_gvm,
    # Smoke networks on a CPU: the same procedure at a smaller working resolution.
    smoke_overrides={node: {"size": 128, "max_resolution": 228}
                     for node in ("CVS_GVMMatte", "CVS_GVMMatteVideoFile")},
))
