"""The LucyEdit model family: Decart's Lucy-Edit-Dev (Wan2.2 TI2V-5B architecture), as released for diffusers.

Layout (``models/lucyedit/<any folder>/``, the ``decart-ai/Lucy-Edit-Dev`` repository as is)::

    model_index.json                         _class_name LucyEditPipeline; expand_timesteps (true:
                                             one timestep per token, Wan2.2 TI2V's convention)
    transformer/config.json                  diffusers WanTransformer3DModel: 96 input channels
                                             (48 noisy + 48 source latent channels), 48 output
    transformer/diffusion_pytorch_model.safetensors
                                             its weights (one file, as released), or the sharded
    transformer/diffusion_pytorch_model-0000k-of-0000n.safetensors + ...safetensors.index.json
    vae/config.json                          Wan2.2 VAE (AutoencoderKLWan, z_dim 48, stride 4 x 16 x 16)
    vae/diffusion_pytorch_model.safetensors
    scheduler/scheduler_config.json          a flow-matching scheduler (released: UniPCMultistepScheduler,
                                             flow_prediction, flow sigmas, flow_shift 5)
    text_encoder/, tokenizer/                umT5-XXL (UMT5EncoderModel); optional: the nodes can take
                                             ComfyUI CONDITIONING instead (:mod:`.text`)

Conventions (diffusers ``LucyEditPipeline``):

- **Latents** are the Wan2.2 VAE's posterior *mode*, normalised per channel with the VAE
  config's ``latents_mean`` / ``latents_std``: ``(z - mean) / std``; decoding undoes it.
  :class:`.pipeline.WanCodec` does exactly this for any Wan VAE (:func:`codec`), giving
  ``[48, (F - 1) / 4 + 1, H / 16, W / 16]`` here.
- **The source video enters on channels**: the transformer input is ``cat([noisy, source], dim=1)``
  (48 + 48 = 96 channels); the output is the 48-channel flow prediction.
- **The transformer is diffusers' own** ``WanTransformer3DModel``, built from ``transformer/config.json``
  on the meta device and filled strictly from the checkpoint (every key used, every parameter
  filled); its RoPE tables, which no checkpoint holds, are built for real. A transformer that is
  not LucyEdit-shaped (a Wan2.1 / ReCamMaster DiT, a plain Wan2.2 TI2V) is refused by name.
- **Scheduler**: ``handle.extra["scheduler_config"]`` is the config dict; :func:`make_scheduler`
  builds a fresh scheduler from it (one per sampling run: diffusers schedulers keep state).
- **dtype**: the transformer and text encoder in the requested dtype, except the parts diffusers
  keeps in float32 (``WanTransformer3DModel._keep_in_fp32_modules``: RoPE, time embedder,
  modulation tables, norms), as ``from_pretrained(torch_dtype=...)`` does; the VAE stays float32.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from ..nodes.comfy import families
from ..nodes.comfy.jsonfile import write_json
from ..nodes.comfy.weights import (COMPONENT_WEIGHTS, WeightsError, is_smoke, load_strict, random_state,
                                   read_component_weights, read_json, write_component_weights)
from .family import load_vae
from .pipeline import WanCodec
from .text import load_optional_text_encoder, write_smoke_text_encoder

NAME = "lucyedit"
MODELS_FOLDER = "lucyedit"
REPO = "decart-ai/Lucy-Edit-Dev"
PIPELINE_CLASS = "LucyEditPipeline"
TRANSFORMER_CLASS = "WanTransformer3DModel"

MODEL_INDEX = "model_index.json"
TRANSFORMER_CONFIG = "transformer/config.json"
VAE_CONFIG = "vae/config.json"
VAE_WEIGHTS = "vae/" + COMPONENT_WEIGHTS
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
FILES = (MODEL_INDEX, TRANSFORMER_CONFIG, VAE_CONFIG, VAE_WEIGHTS, SCHEDULER_CONFIG)
"""What a folder needs to count as complete; the transformer weights are found through the
shard index or the single file (:func:`read_component_weights`)."""

LATENT_CHANNELS = 48  # Wan2.2 VAE z_dim; LucyEdit's transformer takes twice as many (noisy + source)

FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "UniPCMultistepScheduler", "DPMSolverMultistepScheduler")
"""Scheduler classes accepted from ``scheduler_config.json``; the last two only with
``prediction_type: flow_prediction`` and ``use_flow_sigmas: true``."""

RELEASE_SCHEDULER_CONFIG = {
    "_class_name": "UniPCMultistepScheduler", "num_train_timesteps": 1000, "prediction_type": "flow_prediction",
    "use_flow_sigmas": True, "flow_shift": 5.0, "solver_order": 2, "solver_type": "bh2", "predict_x0": True,
    "lower_order_final": True, "final_sigmas_type": "zero", "timestep_spacing": "linspace",
}
"""Wan2.2 TI2V-5B's sampler as diffusers ships it (UniPC on flow sigmas, shift 5); the smoke
weights write this."""

LICENCE = ("Lucy-Edit-Dev weights (decart-ai/Lucy-Edit-Dev): Lucy Edit Dev Model Non-Commercial License v1.0 "
           "(lucy-edit-dev-model-non-commercial-license-v1.0): non-commercial use only; read the model card "
           "before any other use. The Wan2.2 VAE and the umT5 text encoder it ships are Wan-AI's, Apache-2.0. "
           "Memory-V2V has released no weights; trained Memory-V2V adapters, if you have them, carry their own "
           "terms.")


# --------------------------------------------------------------------------- checks
def read_model_index(folder: Path) -> dict:
    """``model_index.json`` of ``folder``; raises :class:`WeightsError` unless it names ``LucyEditPipeline``."""
    path = Path(folder) / MODEL_INDEX
    index = read_json(path, "LucyEdit model_index.json")
    name = index.get("_class_name")
    if name != PIPELINE_CLASS:
        raise WeightsError(f"{path} names the pipeline {name!r}, not {PIPELINE_CLASS}: this folder holds another "
                           f"model. LucyEdit's weights come from https://huggingface.co/{REPO}")
    return index


def lucy_shape_problem(in_channels: int, out_channels: int, z_dim: int) -> Optional[str]:
    """Why a transformer with these channel counts next to a VAE of ``z_dim`` is not LucyEdit, or ``None``.

    LucyEdit concatenates the source latent to the noisy latent on channels: ``in = 2 * out``,
    and predicts the VAE's latent: ``out = z_dim`` (48 for the Wan2.2 VAE)."""
    if in_channels == 2 * out_channels and out_channels == z_dim:
        return None
    found = f"a DiT with {in_channels} input and {out_channels} output latent channels"
    expected = (f"LucyEdit's takes {2 * z_dim} (the {z_dim} noisy + {z_dim} source channels of the VAE in vae/) and "
                f"predicts {z_dim}")
    if in_channels == out_channels:
        kind = {16: "a Wan2.1 DiT (Wan2.1 T2V, or ReCamMaster: family 'recammaster')",
                48: "a plain Wan2.2 TI2V-5B DiT (text/image to video, no source-video input)"}.get(
            in_channels, "a plain text-to-video DiT")
        return f"{found}: {kind}, not LucyEdit. {expected}"
    if in_channels == 2 * out_channels:
        return f"{found}, but the VAE in vae/ has z_dim {z_dim}: the transformer and the VAE come from different models"
    return f"{found}: not LucyEdit. {expected}"


# --------------------------------------------------------------------------- loading
def build_transformer(config: Mapping, where: str):
    """diffusers ``WanTransformer3DModel`` from a ``config.json`` dict, on the meta device, with
    real RoPE tables (buffers no checkpoint holds)."""
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
    name = config.get("_class_name", TRANSFORMER_CLASS)
    if name != TRANSFORMER_CLASS:
        raise WeightsError(f"{where} describes a {name}, not a {TRANSFORMER_CLASS}: not a LucyEdit / Wan2.2 "
                           "transformer")
    try:
        with torch.device("meta"):
            model = WanTransformer3DModel.from_config(dict(config))
    except Exception as exc:  # malformed values in config.json
        raise WeightsError(f"{where} does not describe a valid {TRANSFORMER_CLASS} "
                           f"({type(exc).__name__}: {exc})") from None
    cfg = model.config
    model.rope = WanRotaryPosEmbed(cfg.attention_head_dim, cfg.patch_size, cfg.rope_max_seq_len)
    return model


def keep_fp32_parts(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast ``model``'s floating tensors to ``dtype``, except those under its ``_keep_in_fp32_modules``
    (a name part matches), which become float32, as diffusers' ``from_pretrained(torch_dtype=dtype)`` does."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.float32 if keep & set(name.split(".")) else dtype)
    return model


def load_transformer(folder: Path, dtype: torch.dtype = torch.float32, z_dim: int = LATENT_CHANNELS):
    """LucyEdit's ``WanTransformer3DModel`` from ``folder/transformer`` (config + single or sharded
    safetensors), loaded strictly; eval mode, no gradients, on the CPU (dtype: module doc).
    A transformer that is not LucyEdit-shaped for a VAE of ``z_dim`` raises :class:`WeightsError`
    before any weight is read."""
    folder = Path(folder)
    where = f"{folder / TRANSFORMER_CONFIG}"
    model = build_transformer(read_json(folder / TRANSFORMER_CONFIG, "LucyEdit transformer config"), where)
    problem = lucy_shape_problem(model.config.in_channels, model.config.out_channels, z_dim)
    if problem:
        raise WeightsError(f"{where}: {problem}")
    what = f"LucyEdit transformer in {folder / 'transformer'}"
    state = read_component_weights(folder / "transformer", what, f"https://huggingface.co/{REPO}")
    load_strict(model, state, what)
    del state  # the model holds the tensors now; casting frees each float32 original as it goes
    return keep_fp32_parts(model, dtype).eval().requires_grad_(False)


def read_scheduler_config(folder: Path) -> dict:
    """``scheduler/scheduler_config.json`` of ``folder``, checked to name a flow-matching scheduler
    (:data:`FLOW_SCHEDULERS`) that builds."""
    path = Path(folder) / SCHEDULER_CONFIG
    config = read_json(path, "LucyEdit scheduler config")
    try:
        make_scheduler(config)
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from None
    return config


def make_scheduler(handle_or_config: Union[families.ModelHandle, Mapping]):
    """A fresh diffusers scheduler from a LucyEdit handle (``extra["scheduler_config"]``) or a
    ``scheduler_config.json`` dict; raises :class:`WeightsError` for a class that is not a
    flow-matching scheduler diffusers has."""
    config = (handle_or_config.extra["scheduler_config"] if isinstance(handle_or_config, families.ModelHandle)
              else handle_or_config)
    name = config.get("_class_name")
    if name not in FLOW_SCHEDULERS:
        raise WeightsError(f"the scheduler {name!r} is not a flow-matching scheduler LucyEdit can sample with "
                           f"(expected one of {', '.join(FLOW_SCHEDULERS)})")
    if name != "FlowMatchEulerDiscreteScheduler" and (config.get("prediction_type") != "flow_prediction"
                                                      or not config.get("use_flow_sigmas")):
        raise WeightsError(f"the {name} is not set up for flow matching (needs prediction_type 'flow_prediction' "
                           f"and use_flow_sigmas true; got {config.get('prediction_type')!r} / "
                           f"{config.get('use_flow_sigmas')!r})")
    import diffusers
    try:
        return getattr(diffusers, name).from_config(dict(config))
    except Exception as exc:  # malformed values
        raise WeightsError(f"the {name} config could not be built ({type(exc).__name__}: {exc})") from None


def codec(handle: families.ModelHandle) -> WanCodec:
    """The Wan2.2 VAE of a LucyEdit handle as a :class:`.pipeline.WanCodec`: ``[F,H,W,3]`` 0..1 videos
    (``F = 4k + 1``, ``H, W`` multiples of 16) <-> normalised latents ``[48, k + 1, H / 16, W / 16]``."""
    return WanCodec(handle.modules["vae"])


def load(folder: Path, device: torch.device, dtype: torch.dtype) -> families.ModelHandle:
    """The family's loader: ``modules`` ``transformer``, ``vae`` and, when ``text_encoder/`` and
    ``tokenizer/`` are there, ``text_encoder``; ``extra`` ``tokenizer`` (or ``None``),
    ``scheduler_config`` and ``expand_timesteps`` (from ``model_index.json``)."""
    folder = Path(folder)
    index = read_model_index(folder)
    vae_config = read_json(folder / VAE_CONFIG, "LucyEdit VAE config")
    z_dim = vae_config.get("z_dim")
    if z_dim != LATENT_CHANNELS:
        raise WeightsError(f"{folder / VAE_CONFIG} describes a VAE with z_dim {z_dim!r}; LucyEdit uses the Wan2.2 VAE "
                           f"(z_dim {LATENT_CHANNELS}, stride 4 x 16 x 16). Is vae/ from another model?")
    scheduler_config = read_scheduler_config(folder)
    transformer = load_transformer(folder, dtype, z_dim)
    modules = {"transformer": transformer, "vae": load_vae(folder / "vae")}
    text_encoder, tokenizer = load_optional_text_encoder(folder, transformer.config.text_dim, "the transformer")
    if text_encoder is not None:
        modules["text_encoder"] = torch.nn.Module.to(text_encoder, dtype=dtype)
    return families.ModelHandle(family=NAME, source=folder, modules=modules, device=device, dtype=dtype,
                                extra={"tokenizer": tokenizer, "scheduler_config": scheduler_config,
                                       "expand_timesteps": bool(index.get("expand_timesteps", False))},
                                is_smoke=is_smoke(folder))


# --------------------------------------------------------------------------- smoke weights
SMOKE_TEXT_WIDTH = 32


def smoke_transformer_config() -> dict:
    """LucyEdit's structure at a tiny width: 30 blocks like the release (Memory-V2V merges at blocks
    10 and 20), 2 heads of 24 (RoPE splits a head 8 / 8 / 8 over time / height / width), FFN 256,
    a 32-wide text input, 96 input / 48 output channels, patch 1 x 2 x 2."""
    return {"patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 24,
            "in_channels": 2 * LATENT_CHANNELS, "out_channels": LATENT_CHANNELS, "text_dim": SMOKE_TEXT_WIDTH,
            "freq_dim": 256, "ffn_dim": 256, "num_layers": 30, "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024}


def smoke_vae_config(seed: int = 0) -> dict:
    """A tiny Wan2.2-style VAE: residual, pixels patchified 2 x 2 (12 channels), three down-samplings
    (spatial stride 16, temporal 4), z_dim 48, random per-channel latent statistics."""
    gen = torch.Generator().manual_seed(seed)
    return {"base_dim": 8, "decoder_base_dim": 16, "z_dim": LATENT_CHANNELS, "dim_mult": [1, 2, 2, 2],
            "num_res_blocks": 1, "temperal_downsample": [False, True, True], "is_residual": True,
            "in_channels": 12, "out_channels": 12, "patch_size": 2, "scale_factor_spatial": 16,
            "scale_factor_temporal": 4,
            "latents_mean": [round(float(v), 4) for v in torch.randn(LATENT_CHANNELS, generator=gen) * 0.2],
            "latents_std": [round(float(v), 4) for v in 0.5 + torch.rand(LATENT_CHANNELS, generator=gen) * 1.5]}


def smoke_model_index() -> dict:
    """``model_index.json`` as in the release."""
    import diffusers
    return {"_class_name": PIPELINE_CLASS, "_diffusers_version": diffusers.__version__, "boundary_ratio": None,
            "expand_timesteps": True, "scheduler": ["diffusers", RELEASE_SCHEDULER_CONFIG["_class_name"]],
            "text_encoder": ["transformers", "UMT5EncoderModel"], "tokenizer": ["transformers", "T5TokenizerFast"],
            "transformer": ["diffusers", TRANSFORMER_CLASS], "transformer_2": [None, None],
            "vae": ["diffusers", "AutoencoderKLWan"]}


def write_smoke(folder: Path, seed: int = 0, shards: int = 2) -> None:
    """Tiny random LucyEdit weights in the release layout (transformer in ``shards`` files)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        transformer = WanTransformer3DModel(**smoke_transformer_config())
    transformer.save_config(str(folder / "transformer"))
    write_component_weights(folder / "transformer", random_state(transformer, torch.Generator().manual_seed(seed)),
                              shards)
    torch.manual_seed(seed)
    AutoencoderKLWan(**smoke_vae_config(seed)).save_pretrained(str(folder / "vae"))
    make_scheduler(RELEASE_SCHEDULER_CONFIG).save_pretrained(str(folder / "scheduler"))
    write_smoke_text_encoder(folder, SMOKE_TEXT_WIDTH, seed)
    write_json(folder / MODEL_INDEX, smoke_model_index())
    families.mark_smoke(folder, "LucyEdit")


SMOKE_OVERRIDES: dict = {}  # filled by the LucyEdit nodes module (short CPU runs on smoke weights)

FAMILY = families.register(families.Family(
    name=NAME, display_name="LucyEdit (Lucy-Edit-Dev, Wan2.2 TI2V-5B video editing)", default_repo=REPO,
    files=FILES, licence=LICENCE, load=load, write_smoke=write_smoke, smoke_overrides=SMOKE_OVERRIDES,
    models_folder=MODELS_FOLDER, download_patterns=("transformer/*", "text_encoder/*", "tokenizer/*")))
