"""ReCamMaster on diffusers' Wan2.1 DiT, and the checkpoint conversion.

ReCamMaster (KwaiVGI, public port on Wan2.1-T2V-1.3B) is Wan's DiT with two layers added
to every block (DiffSynth ``wan_video_dit.py``):

- ``cam_encoder`` = Linear(12, dim), zero-initialised: per latent frame, the 12 floats of
  a camera's ``[R|t]`` (3x4, row-major), broadcast over that frame's tokens and **added to
  the modulated, normalised block input** before self-attention;
- ``projector`` = Linear(dim, dim), identity-initialised: applied to the **self-attention
  output** before the gate.

So a block computes (diffusers names; ``norm2`` is the cross-attention norm)::

    x_in = norm1(x) * (1 + scale_msa) + shift_msa + cam_encoder(cam)
    x    = x + gate_msa * projector(attn1(x_in, rope))
    x    = x + attn2(norm2(x), text)
    x    = x + c_gate * ffn(norm3(x) * (1 + c_scale) + c_shift)

With both layers at their initial values a block is exactly Wan's. :class:`ReCamMasterTransformer`
is ``WanTransformer3DModel`` plus those layers (``blocks.{i}.cam_encoder``,
``blocks.{i}.projector``); :mod:`.memory_forward` runs it on token sequences (target,
source, memory videos) that the stock forward cannot express.

Checkpoints: ReCamMaster's ``step20000.ckpt`` and the single-file bf16 variant common in
ComfyUI (``Wan2_1_kwai_recammaster_1_3B_step20000_bf16.safetensors``) hold Wan's original
key names (``blocks.N.self_attn.q``, ``head.modulation``, ... plus the camera layers),
optionally under ``model.diffusion_model.``; diffusers' own converter
(``convert_wan_transformer_to_diffusers``) renames them, and loading is strict. A plain
Wan2.1 checkpoint (no camera layers) loads with the camera layers at their initial values
(zero / identity) and a warning.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import nn
from diffusers import WanTransformer3DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from ..nodes.comfy.weights import WeightsError, load_strict, read_checkpoint

log = logging.getLogger("consistent_video")

CAMERA_DIM = 12  # [R|t] row-major per latent frame
HEAD_DIM = 128  # Wan2.1's attention head width (not visible in the shapes)
CAMERA_KEYS = ("cam_encoder", "projector")


def config_for_release() -> dict:
    """``__init__`` arguments of Wan2.1-T2V-1.3B (ReCamMaster's public base): dim 1536 (12 heads
    of 128), FFN 8960, 30 blocks, umT5 text width 4096, 16 latent channels, patch 1x2x2."""
    return {
        "patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": HEAD_DIM, "in_channels": 16,
        "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30,
        "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
    }


class ReCamMasterTransformer(WanTransformer3DModel):
    """Wan2.1's DiT with ReCamMaster's per-block ``cam_encoder`` (zero) and ``projector`` (identity).

    The stock ``forward`` is Wan's (the camera layers unused); use
    :func:`.memory_forward.denoise` for camera-conditioned and memory-conditioned calls.
    """

    @register_to_config
    def __init__(self, patch_size: tuple[int, ...] = (1, 2, 2), num_attention_heads: int = 12,
                 attention_head_dim: int = HEAD_DIM, in_channels: int = 16, out_channels: int = 16,
                 text_dim: int = 4096, freq_dim: int = 256, ffn_dim: int = 8960, num_layers: int = 30,
                 cross_attn_norm: bool = True, qk_norm: Optional[str] = "rms_norm_across_heads", eps: float = 1e-6,
                 camera_dim: int = CAMERA_DIM):
        super().__init__(patch_size=patch_size, num_attention_heads=num_attention_heads,
                         attention_head_dim=attention_head_dim, in_channels=in_channels, out_channels=out_channels,
                         text_dim=text_dim, freq_dim=freq_dim, ffn_dim=ffn_dim, num_layers=num_layers,
                         cross_attn_norm=cross_attn_norm, qk_norm=qk_norm, eps=eps)
        dim = num_attention_heads * attention_head_dim
        for block in self.blocks:
            block.cam_encoder = nn.Linear(camera_dim, dim)
            block.projector = nn.Linear(dim, dim)
        self.reset_camera_layers()

    def reset_camera_layers(self) -> None:
        """ReCamMaster's initial values: ``cam_encoder`` zero, ``projector`` identity (a plain Wan block)."""
        with torch.no_grad():
            for block in self.blocks:
                block.cam_encoder.weight.zero_()
                block.cam_encoder.bias.zero_()
                block.projector.weight.copy_(torch.eye(block.projector.weight.shape[0]))
                block.projector.bias.zero_()


# --------------------------------------------------------------------------- checkpoints
_PREFIX = "model.diffusion_model."
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def _strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(k.startswith(_PREFIX) for k in state):
        return {k[len(_PREFIX):]: v for k, v in state.items() if k.startswith(_PREFIX)}
    return dict(state)


def is_original_layout(state: Mapping[str, torch.Tensor]) -> bool:
    """Wan's original key names (``head.modulation``, ``blocks.0.self_attn.q.weight``), not diffusers'."""
    return any(k in state for k in ("head.modulation", "blocks.0.self_attn.q.weight"))


def convert_checkpoint(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan / ReCamMaster original keys -> :class:`ReCamMasterTransformer` keys (diffusers' converter).

    ``model.diffusion_model.`` is stripped; a state dict already in diffusers' layout is
    returned as is. The camera layers keep their names. Pure: ``state`` is not changed.
    """
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
    state = _strip_prefix(state)
    if not is_original_layout(state):
        return state
    return convert_wan_transformer_to_diffusers(dict(state))


def infer_config(state: Mapping[str, torch.Tensor]) -> dict:
    """The transformer's arguments from a converted state dict's shapes (head width 128 as
    released): width, FFN, blocks, text width, latent channels and patch size."""
    def get(key: str) -> torch.Tensor:
        if key not in state:
            raise ValueError(f"it has no {key}: it is not a Wan2.1 / ReCamMaster DiT")
        return state[key]
    patch = get("patch_embedding.weight")  # [dim, in, pt, ph, pw]
    dim = int(patch.shape[0])
    if dim % HEAD_DIM:
        raise ValueError(f"its width {dim} is not a multiple of Wan's head width {HEAD_DIM}")
    layers = 1 + max(int(m.group(1)) for m in map(_BLOCK.match, state) if m)
    out_total = int(get("proj_out.weight").shape[0])
    patch_size = tuple(int(s) for s in patch.shape[2:])
    config = config_for_release()
    config.update(num_attention_heads=dim // HEAD_DIM, in_channels=int(patch.shape[1]),
                  out_channels=out_total // (patch_size[0] * patch_size[1] * patch_size[2]), patch_size=patch_size,
                  text_dim=int(get("condition_embedder.text_embedder.linear_1.weight").shape[1]),
                  freq_dim=int(get("condition_embedder.time_embedder.linear_1.weight").shape[1]),
                  ffn_dim=int(get("blocks.0.ffn.net.0.proj.weight").shape[0]), num_layers=layers)
    return config


def load_transformer(path: Path, dtype: torch.dtype = torch.float32) -> tuple[ReCamMasterTransformer, bool]:
    """Load a ReCamMaster (or plain Wan2.1 T2V) DiT strictly; returns ``(network, has_camera_layers)``.

    ``.ckpt`` / ``.pth`` pickles are read with ``weights_only=True``, ``.safetensors`` memory-mapped.
    Every key must be used and every parameter filled -- except that a checkpoint without
    any camera layer (plain Wan2.1) gets them at ReCamMaster's initial values, with a
    warning: it then renders the source video again, ignoring the target cameras.
    A checkpoint with only some camera layers is refused.
    """
    path = Path(path)
    what = f"ReCamMaster DiT {path.name}"
    state = convert_checkpoint(read_checkpoint(path, "ReCamMaster / Wan2.1 DiT"))
    try:
        config = infer_config(state)
    except ValueError as exc:
        raise WeightsError(f"{what} in {path.parent}: {exc}") from None
    with torch.device("meta"):
        model = ReCamMasterTransformer(**config)
    # RoPE tables are buffers that no checkpoint holds: build them for real
    model.rope = WanRotaryPosEmbed(config["attention_head_dim"], config["patch_size"], model.config.rope_max_seq_len)
    camera = {k for k in state if any(f".{name}." in k for name in CAMERA_KEYS)}
    expected = {k for k in model.state_dict() if any(f".{name}." in k for name in CAMERA_KEYS)}
    if not camera:
        log.warning("%s has no camera layers (a plain Wan2.1 checkpoint?): they start at ReCamMaster's initial "
                    "values (zero / identity), so target cameras have no effect until trained weights are used.",
                    what)
        state = {**state, **initial_camera_layers(config)}
    elif camera != expected:
        missing = sorted(expected - camera)[:3]
        raise WeightsError(f"{what}: some camera layers are missing ({', '.join(missing)}, ...): a damaged or "
                           "partial ReCamMaster checkpoint")
    load_strict(model, state, what)
    torch.nn.Module.to(model, dtype=dtype).eval().requires_grad_(False)
    return model, bool(camera)


def initial_camera_layers(config: Mapping) -> dict[str, torch.Tensor]:
    """ReCamMaster's initial camera layers for every block of ``config``: ``cam_encoder`` zero,
    ``projector`` identity (so each block is a plain Wan block)."""
    dim = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    width = int(config.get("camera_dim", CAMERA_DIM))
    out = {}
    for i in range(int(config["num_layers"])):
        out[f"blocks.{i}.cam_encoder.weight"] = torch.zeros(dim, width)
        out[f"blocks.{i}.cam_encoder.bias"] = torch.zeros(dim)
        out[f"blocks.{i}.projector.weight"] = torch.eye(dim)
        out[f"blocks.{i}.projector.bias"] = torch.zeros(dim)
    return out


def to_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_checkpoint` for smoke weights and tests: diffusers names -> Wan's."""
    renames = [
        ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
        ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
        ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
        ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
        ("condition_embedder.time_proj", "time_projection.1"),
        ("attn2", "cross_attn"), ("attn1", "self_attn"), (".to_out.0.", ".o."), (".to_q.", ".q."),
        (".to_k.", ".k."), (".to_v.", ".v."), ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
        ("proj_out", "head.head"),
    ]
    out = {}
    for key, value in state.items():
        new = key
        if key == "scale_shift_table":
            new = "head.modulation"
        elif key.endswith(".scale_shift_table"):
            new = key.replace("scale_shift_table", "modulation")
        else:
            for a, b in renames:
                new = new.replace(a, b)
            # diffusers' norm2 (cross-attention, affine) is Wan's norm3 and the other way round
            new = re.sub(r"\.norm([23])\.", lambda m: ".norm" + {"2": "3", "3": "2"}[m.group(1)] + ".", new)
        out[new] = value
    return out
