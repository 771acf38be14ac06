"""The ReCamMaster model families Memory-V2V runs on: the DiT checkpoint plus the Wan VAE and umT5.

Both families share ``models/recammaster/``; only the DiT file differs::

    step20000.ckpt                                   ReCamMaster DiT (KwaiVGI/ReCamMaster-Wan2.1),
                                                     Wan's original key names, read with weights_only
    Wan2_1_kwai_recammaster_1_3B_step20000_bf16.safetensors
                                                     the same weights in bf16 (Kijai/WanVideo_comfy),
                                                     family recammaster_bf16
    vae/config.json                                  Wan2.1 VAE (AutoencoderKLWan), from
    vae/diffusion_pytorch_model.safetensors          Wan-AI/Wan2.1-T2V-1.3B-Diffusers (fetched when online)
    text_encoder/, tokenizer/                        umT5-XXL (UMT5EncoderModel) from the same repo; optional:
                                                     the nodes can take ComfyUI CONDITIONING instead

A plain Wan2.1-T2V-1.3B checkpoint in the DiT's place loads with ReCamMaster's initial camera
layers and a warning (:func:`.model.load_transformer`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..nodes.comfy import families
from ..nodes.comfy.weights import WeightsError, is_smoke, random_state
from .model import ReCamMasterTransformer, config_for_release, load_transformer, to_original
from .text import load_optional_text_encoder, write_smoke_text_encoder

RECAMMASTER, RECAMMASTER_BF16 = "recammaster", "recammaster_bf16"
FAMILIES = (RECAMMASTER, RECAMMASTER_BF16)
MODELS_FOLDER = "recammaster"
DIT_FILES = {RECAMMASTER: "step20000.ckpt",
             RECAMMASTER_BF16: "Wan2_1_kwai_recammaster_1_3B_step20000_bf16.safetensors"}
REPOS = {RECAMMASTER: "KwaiVGI/ReCamMaster-Wan2.1", RECAMMASTER_BF16: "Kijai/WanVideo_comfy"}
WAN_REPO = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
VAE_FILES = ("vae/config.json", "vae/diffusion_pytorch_model.safetensors")
OPTIONAL_FILES = {name: f"{WAN_REPO}:{name}" for name in VAE_FILES}
LICENCE = ("ReCamMaster weights: the licence is unknown (check KwaiVGI/ReCamMaster and its model card); treat "
           "them as research-only until the authors say otherwise. Wan2.1 (DiT base, VAE, umT5): Apache-2.0. "
           "Memory-V2V has released no weights; trained Memory-V2V adapters, if you have them, carry their own terms.")


def load_vae(folder: Path):
    """diffusers ``AutoencoderKLWan`` from ``folder`` (``config.json`` + weights)."""
    from diffusers import AutoencoderKLWan
    try:
        return AutoencoderKLWan.from_pretrained(str(folder), local_files_only=True).eval().requires_grad_(False)
    except Exception as exc:  # diffusers raises several types for missing / malformed files
        raise WeightsError(f"the Wan VAE in {folder} could not be read ({type(exc).__name__}: {exc})") from None


def _loader(family: str):
    def load(folder: Path, device: torch.device, dtype: torch.dtype) -> families.ModelHandle:
        folder = Path(folder)
        model, has_camera = load_transformer(folder / DIT_FILES[family], dtype)
        modules = {"transformer": model}
        if all((folder / f).is_file() for f in VAE_FILES):
            modules["vae"] = load_vae(folder / "vae")
        text_encoder, tokenizer = load_optional_text_encoder(folder, model.config.text_dim, "the DiT")
        if text_encoder is not None:
            modules["text_encoder"] = text_encoder
        for name, module in modules.items():
            if name != "vae":  # the Wan VAE stays in float32 (its causal convolutions are sensitive)
                torch.nn.Module.to(module, dtype=dtype)
        return families.ModelHandle(family=family, source=folder, modules=modules, device=device, dtype=dtype,
                                    extra={"tokenizer": tokenizer, "has_camera_layers": has_camera},
                                    is_smoke=is_smoke(folder))
    return load


# --------------------------------------------------------------------------- smoke weights
SMOKE_TEXT_WIDTH = 32


def smoke_config() -> dict:
    """30 blocks like the release (merging happens at blocks 10 and 20), width 256 (2 heads of
    128), FFN 256, a 32-wide text input, Wan's 16 latent channels."""
    config = config_for_release()
    config.update(num_attention_heads=2, ffn_dim=256, text_dim=SMOKE_TEXT_WIDTH)
    return config


def _smoke_writer(family: str):
    def write(folder: Path, seed: int = 0) -> None:
        from diffusers import AutoencoderKLWan
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with torch.device("meta"):
            model = ReCamMasterTransformer(**smoke_config())
        state = to_original(random_state(model, torch.Generator().manual_seed(seed)))
        path = folder / DIT_FILES[family]
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file
            save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}, str(path))
        else:
            torch.save(state, str(path))
        torch.manual_seed(seed)
        AutoencoderKLWan(base_dim=16, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1).save_pretrained(
            str(folder / "vae"))
        write_smoke_text_encoder(folder, SMOKE_TEXT_WIDTH, seed)
        families.mark_smoke(folder, "ReCamMaster")
    return write


# On a CPU the smoke demo re-renders 9 frames at 64 x 48 with 2 steps (camera paths shortened to match).
SMOKE_OVERRIDES = {"CVS_MemoryV2VEncodeSource": {"frames": 9, "width": 64, "height": 48},
                   "CVS_MemoryV2VRerender": {"steps": 2}, "CVS_KeyframeCameras": {"frames_per_segment": 8},
                   "CVS_LoadVideo": {"max_frames": 9}}

RECAMMASTER_FAMILY, RECAMMASTER_BF16_FAMILY = (families.register(families.Family(
    name=name, display_name=f"ReCamMaster (Wan2.1-T2V-1.3B + camera layers){' bf16' if name.endswith('bf16') else ''}",
    default_repo=REPOS[name], files=(DIT_FILES[name],), licence=LICENCE, load=_loader(name),
    write_smoke=_smoke_writer(name), smoke_overrides=SMOKE_OVERRIDES, optional_files=OPTIONAL_FILES,
    models_folder=MODELS_FOLDER)) for name in FAMILIES)
