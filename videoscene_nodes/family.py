"""The VideoScene model family: the released refiner weights over the CogVideoX interpolation base.

Layout (``models/videoscene/<any folder>/``)::

    model.safetensors                    VideoScene's transformer weights (Google Drive link in the
                                         hanyang-21/VideoScene README): bare diffusers
                                         CogVideoXTransformer3DModel key names
    prompt_embeds.pt                     the precomputed T5-XXL prompt embedding [1, 226, 4096]
                                         (read with weights_only; no T5 is loaded)
    transformer/config.json              from feizhengcong/CogvideoX-Interpolation (fetched when online)
    vae/config.json                      AutoencoderKLCogVideoX, same repo (fetched when online)
    vae/diffusion_pytorch_model.safetensors
    scheduler/scheduler_config.json      same repo (optional: CogVideoX-5B's scheduler is built in)
    transformer/diffusion_pytorch_model.safetensors, or the sharded
    transformer/diffusion_pytorch_model-0000k-of-0000n.safetensors + ...safetensors.index.json
                                         the base transformer weights: needed only for the keys
                                         model.safetensors does not hold

Loading: the transformer is built from ``transformer/config.json``; every key it has must come
from ``model.safetensors`` or, for the keys that file lacks (a partial checkpoint over the
interpolation base, the expected case), from the base weights. ``model.safetensors`` keys that
the transformer does not have, or with other shapes, are refused (another model's file). What
came from where is reported in ``handle.extra["report"]`` and the log.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

from ..nodes.comfy import families
from ..nodes.comfy.jsonfile import write_json
from ..nodes.comfy.weights import (COMPONENT_INDEX, COMPONENT_WEIGHTS, WeightsError, is_smoke, load_strict,
                                   load_weights_only, random_state, read_component_weights, read_json, read_state_dict,
                                   write_component_weights)
from .pipeline import SCHEDULER_CONFIG, make_scheduler

log = logging.getLogger("consistent_video")

NAME = "videoscene"
BASE_REPO = "feizhengcong/CogvideoX-Interpolation"
REFINER_FILE, PROMPT_FILE = "model.safetensors", "prompt_embeds.pt"
FILES = (REFINER_FILE, PROMPT_FILE)
BASE_FILES = ("transformer/config.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
              "scheduler/scheduler_config.json")
BASE_WEIGHTS = "transformer/" + COMPONENT_WEIGHTS
BASE_INDEX = "transformer/" + COMPONENT_INDEX
MANUAL = ("Download model.safetensors and prompt_embeds.pt from the Google Drive link in the README of "
          "https://github.com/hanyang-21/VideoScene (checkpoints/VideoScene/); the CogVideoX interpolation base "
          f"(transformer/, vae/, scheduler/) comes from https://huggingface.co/{BASE_REPO}")
LICENCE = ("VideoScene code and weights, CogvideoX-Interpolation: licences unknown (check each repository's LICENSE "
           "and model card before redistributing or commercial use). The base THUDM/CogVideoX-5b-I2V weights are "
           "under the CogVideoX LICENSE (its own terms; commercial use needs registration).")


def _read_prompt(path: Path, text_dim: int, text_length: int) -> torch.Tensor:
    value = load_weights_only(path, "VideoScene prompt embedding")
    if not isinstance(value, torch.Tensor):
        raise WeightsError(f"VideoScene prompt embedding: {path} holds a {type(value).__name__}, not a tensor")
    value = value[None] if value.ndim == 2 else value
    if value.ndim != 3 or value.shape[0] != 1 or tuple(value.shape[1:]) != (text_length, text_dim):
        raise WeightsError(f"VideoScene prompt embedding: {path} is {list(value.shape)}; the transformer expects "
                           f"[1, {text_length}, {text_dim}] (T5 tokens x width)")
    return value.float()


def _base_state(folder: Path) -> dict[str, torch.Tensor]:
    """The base transformer weights (single file or shards with their index); empty when absent."""
    if not (folder / BASE_WEIGHTS).is_file() and not (folder / BASE_INDEX).is_file():
        return {}
    return read_component_weights(folder / "transformer", "CogVideoX base transformer",
                                  f"https://huggingface.co/{BASE_REPO}")


def merge_refiner(expected: dict[str, torch.Tensor], refiner: dict[str, torch.Tensor],
                  base: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """The full transformer state: every key of ``expected`` (name -> tensor of the right shape)
    from ``refiner``, else ``base``. Returns it and a report ``{"from_refiner", "from_base",
    "missing"}`` (key counts / lists). Refiner keys the network lacks or with other shapes raise."""
    unexpected = sorted(set(refiner) - set(expected))
    wrong = sorted(k for k in set(refiner) & set(expected) if tuple(refiner[k].shape) != tuple(expected[k].shape))
    if unexpected or wrong:
        parts = [f"{REFINER_FILE} does not fit the CogVideoX transformer of transformer/config.json"]
        if unexpected:
            parts.append(f"{len(unexpected)} key(s) it does not have: {', '.join(unexpected[:5])}")
        if wrong:
            parts.append("shape mismatch: " + ", ".join(f"{k} {list(refiner[k].shape)} vs {list(expected[k].shape)}"
                                                        for k in wrong[:3]))
        parts.append("Is this a checkpoint of another model?")
        raise WeightsError("\n  ".join(parts))
    state, from_base, missing = {}, [], []
    for key in expected:
        if key in refiner:
            state[key] = refiner[key]
        elif key in base:
            state[key] = base[key]
            from_base.append(key)
        else:
            missing.append(key)
    return state, {"from_refiner": len(expected) - len(from_base) - len(missing), "from_base": len(from_base),
                   "missing": missing}


def load_videoscene(folder: Path, device: torch.device, dtype: torch.dtype) -> families.ModelHandle:
    """Transformer (refiner over base), VAE, scheduler and prompt embedding from ``folder``."""
    folder = Path(folder)
    absent = [f for f in BASE_FILES[:3] if not (folder / f).is_file()]
    if absent:
        raise WeightsError(f"{folder} lacks the CogVideoX interpolation base files {', '.join(absent)}: get them from "
                           f"https://huggingface.co/{BASE_REPO} (the loader fetches them when online).")
    config = read_json(folder / "transformer/config.json", "CogVideoX transformer config")
    if config.get("_class_name", "CogVideoXTransformer3DModel") != "CogVideoXTransformer3DModel":
        raise WeightsError(f"{folder}/transformer/config.json describes a '{config['_class_name']}', not a "
                           "CogVideoXTransformer3DModel")
    with torch.device("meta"):
        transformer = CogVideoXTransformer3DModel.from_config(config)
    if transformer.config.in_channels != 2 * transformer.config.out_channels:
        raise WeightsError(f"{folder}/transformer/config.json has in_channels {transformer.config.in_channels} and "
                           f"out_channels {transformer.config.out_channels}: VideoScene needs an image-conditioned "
                           "(interpolation) transformer whose input is the noisy latent plus the condition latent")
    refiner = read_state_dict(folder / REFINER_FILE, f"VideoScene {REFINER_FILE}")
    refiner = {k.removeprefix("transformer."): v for k, v in refiner.items()}
    state, report = merge_refiner(transformer.state_dict(), refiner, _base_state(folder))
    if report["missing"]:
        raise WeightsError(
            f"{folder}/{REFINER_FILE} holds {report['from_refiner']} of the transformer's tensors and the base weights "
            f"lack {len(report['missing'])} others (e.g. {', '.join(report['missing'][:4])}). Put the base transformer "
            f"of https://huggingface.co/{BASE_REPO} into {folder}/transformer/ ({BASE_WEIGHTS}, or the sharded files "
            f"with {Path(BASE_INDEX).name}).")
    load_strict(transformer, state, f"VideoScene transformer ({REFINER_FILE} over the base)")
    log.info("VideoScene: %d transformer tensors from %s, %d from the CogVideoX interpolation base",
             report["from_refiner"], REFINER_FILE, report["from_base"])

    vae_config = read_json(folder / "vae/config.json", "CogVideoX VAE config")
    with torch.device("meta"):
        vae = AutoencoderKLCogVideoX.from_config(vae_config)
    load_strict(vae, read_state_dict(folder / "vae/diffusion_pytorch_model.safetensors", "CogVideoX VAE weights"),
                "CogVideoX vae/diffusion_pytorch_model.safetensors")
    if vae.config.latent_channels != transformer.config.out_channels:
        raise WeightsError(f"the VAE has {vae.config.latent_channels} latent channels, the transformer "
                           f"{transformer.config.out_channels}")
    scheduler_file = folder / "scheduler/scheduler_config.json"
    scheduler = make_scheduler(read_json(scheduler_file, "CogVideoX scheduler config") if scheduler_file.is_file()
                               else None)
    prompt = _read_prompt(folder / PROMPT_FILE, transformer.config.text_embed_dim,
                          transformer.config.max_text_seq_length)
    for module in (transformer, vae):
        torch.nn.Module.to(module, dtype=dtype).eval().requires_grad_(False)
    report = {**report, "missing": len(report["missing"])}
    return families.ModelHandle(family=NAME, source=folder, modules={"transformer": transformer, "vae": vae},
                                device=device, dtype=dtype,
                                extra={"scheduler": scheduler, "prompt_embeds": prompt, "report": report},
                                is_smoke=is_smoke(folder))


# --------------------------------------------------------------------------- smoke weights
SMOKE_TRANSFORMER = {  # the release's structure (interpolation: 32 in, 16 out; learned positions + RoPE), tiny
    "num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 32, "out_channels": 16, "time_embed_dim": 32,
    "text_embed_dim": 32, "num_layers": 2, "sample_width": 12, "sample_height": 8, "sample_frames": 9,
    "patch_size": 2, "temporal_compression_ratio": 4, "max_text_seq_length": 8, "use_rotary_positional_embeddings":
    True, "use_learned_positional_embeddings": True, "spatial_interpolation_scale": 1.875,
}
SMOKE_VAE = {  # four blocks, as released: 8x spatial and 4x temporal compression
    "block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4, "latent_channels": 16,
    "scaling_factor": 0.7,  # sample size left at the release's 480x720: tiles of 240x360, so smoke frames are whole
}
SMOKE_REFINER_PREFIXES = ("transformer_blocks.", "proj_out.", "norm_out.", "norm_final.")
"""The smoke ``model.safetensors`` holds these (a partial checkpoint); the rest comes from the base."""


def write_smoke_videoscene(folder: Path, seed: int = 0) -> None:
    """Tiny random weights in the layout above: a partial refiner file over a sharded base."""
    from safetensors.torch import save_file
    folder = Path(folder)
    generator = torch.Generator().manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(**SMOKE_TRANSFORMER)
    state = random_state(transformer, generator)
    state["patch_embed.pos_embedding"] = transformer.state_dict()["patch_embed.pos_embedding"]  # sin-cos table
    transformer.save_config(str(folder / "transformer"))
    refiner = {k: v for k, v in state.items() if k.startswith(SMOKE_REFINER_PREFIXES)}
    save_file(refiner, str(folder / REFINER_FILE))
    write_component_weights(folder / "transformer", {k: state[k] for k in sorted(state)}, shards=2)
    torch.manual_seed(seed)
    AutoencoderKLCogVideoX(**SMOKE_VAE).save_pretrained(str(folder / "vae"))
    write_json(folder / "scheduler/scheduler_config.json", {"_class_name": "CogVideoXDDIMScheduler",
                                                            **SCHEDULER_CONFIG})
    torch.save(torch.randn(1, SMOKE_TRANSFORMER["max_text_seq_length"], SMOKE_TRANSFORMER["text_embed_dim"],
                           generator=generator), str(folder / PROMPT_FILE))
    families.mark_smoke(folder, "VideoScene")


# On a CPU the smoke demo renders the splat path at 144 x 96 with 9 frames (the smoke model's own size is 96 x 64).
SMOKE_OVERRIDES = {"CVS_KeyframeCameras": {"frames_per_segment": 8, "width": 144, "height": 96}}

FAMILY = families.register(families.Family(
    name=NAME, display_name="VideoScene (CogVideoX interpolation refiner)", default_repo="", files=FILES,
    licence=LICENCE, load=load_videoscene, write_smoke=write_smoke_videoscene, smoke_overrides=SMOKE_OVERRIDES,
    optional_files={f: f"{BASE_REPO}:{f}" for f in BASE_FILES}, manual_download=MANUAL, default_entry="VideoScene"))


def describe_report(report: dict) -> str:
    """One line: where the transformer's tensors came from."""
    return (f"{report['from_refiner']} transformer tensors from {REFINER_FILE}, {report['from_base']} from the "
            "CogVideoX interpolation base")


__all__ = ["FAMILY", "NAME", "load_videoscene", "merge_refiner", "write_smoke_videoscene", "describe_report"]
