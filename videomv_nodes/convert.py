"""VideoMV's T2V checkpoint (VGen layout) <-> :class:`~.model.VideoMVT2VUNet` keys, and the strict loader.

The released ``t2v_00333000.pth`` is a torch pickle ``{'state_dict': sd, 'step': N}`` (a
bare state dict is accepted too) of VGen's ``UNetSD_T2VBase``: LDM-style keys, no prefix.

VGen layout (module structure of ``UNetSD_T2VBase``; see the reference notes, section 4)
- ``time_embed.{0,2}``, ``camera_embedding.{0,2}``: Linear-SiLU-Linear MLPs.
- ``input_blocks.0.0`` the input conv; ``input_blocks.0.1`` a TemporalTransformer (8 heads).
- ``input_blocks.N`` for each level and layer: ``.0`` a ResBlock (``in_layers.{0,2}``,
  ``emb_layers.1``, ``out_layers.{0,3}``, ``skip_connection`` where the width changes) with
  its temporal conv ``.0.temopral_conv`` (sic: ModelScope's typo; four GroupNorm-SiLU-
  [Dropout]-Conv3d(3,1,1) stages ``conv1.{0,2}``, ``conv{2,3,4}.{0,3}``); at levels with
  attention ``.1`` a SpatialTransformer (linear ``proj_in``/``proj_out``,
  ``transformer_blocks.0.{attn1,attn2,ff,norm1-3}``) and ``.2`` a TemporalTransformer
  (self-attention only; ``proj_in``/``proj_out`` are Conv1d weights ``[out, in, 1]``).
  After the last layer of every level but the deepest, a Downsample is its own entry
  ``input_blocks.N.op``.
- ``middle_block.{0,1,2,3}``: ResBlock, SpatialTransformer, TemporalTransformer, ResBlock.
- ``output_blocks.N`` for each level and layers_per_block + 1 layers: the same
  ``.0`` / ``.1`` / ``.2`` entries, and after the last layer of every level but the finest an
  Upsample appended to the same entry, ``.1.conv`` or (with attention) ``.3.conv``.
- ``out.{0,2}``: GroupNorm and the output conv.
- ``lgm_big.*``: VideoMV's LGM reconstruction network (not part of the UNet; set aside).

Inferred, not stated in the weight files: the index structure above (that the ResBlock
sits at ``.0`` with its temporal conv inside, the SpatialTransformer at ``.1``, the
TemporalTransformer at ``.2``, a Downsample as an entry of its own and an Upsample as the
last member of the output entry, mirroring the LDM UNet and VGen's module code), and the
order of the middle block. The reference notes give only ``input_blocks.0.1 ->
transformer_in``, ``temopral_conv -> temp_convs``, ``.2 -> temp_attentions`` and the
Conv1d squeeze. Everything else maps one to one onto diffusers' ``UNet3DConditionModel``.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Mapping, Optional

import torch

from ..nodes.weights import WeightsError, load_strict, read_state_dict
from .model import VideoMVT2VUNet, config_for_release

SET_ASIDE_PREFIX = "lgm_big."
"""Keys of VideoMV's LGM network inside the UNet checkpoint: returned apart, not loaded here."""

# ResBlock sub-modules: VGen name -> diffusers ResnetBlock2D name
_RESBLOCK = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
             "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_RESBLOCK_BACK = {v: k for k, v in _RESBLOCK.items()}

# Parameter suffixes each kind of module may have (identical names in both layouts).
_PARAM = r"(weight|bias)"
_TRANSFORMER = re.compile(
    rf"(norm|proj_in|proj_out)\.{_PARAM}"
    rf"|transformer_blocks\.\d+\.(attn[12]\.(to_[qkv]\.weight|to_out\.0\.{_PARAM})"
    rf"|ff\.net\.(0\.proj|2)\.{_PARAM}|norm[123]\.{_PARAM})")
_SUFFIX = {
    "param": re.compile(_PARAM),
    "temp_conv": re.compile(rf"conv1\.[02]\.{_PARAM}|conv[234]\.[03]\.{_PARAM}"),
    "spatial": _TRANSFORMER,
    "temporal": _TRANSFORMER,
}
_SQUEEZED = ("proj_in.weight", "proj_out.weight")  # Conv1d in VGen's temporal transformers, Linear here

_BLOCK_TYPES = {"CrossAttnDownBlock3D": True, "DownBlock3D": False, "CrossAttnUpBlock3D": True, "UpBlock3D": False}


def module_table(config: Optional[Mapping] = None) -> dict[str, tuple[str, str]]:
    """``{VGen module prefix: (diffusers module prefix, kind)}`` for a UNet ``config``.

    ``config``: :class:`~.model.VideoMVT2VUNet` ``__init__`` arguments (default: the
    release). Kinds: ``param`` (a single Linear / conv / norm), ``resnet``, ``temp_conv``,
    ``spatial``, ``temporal`` (Conv1d projections). The VGen entry indices follow from
    the number of levels, ``layers_per_block`` and which levels have attention.
    """
    config = dict(config_for_release() if config is None else config)
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    layers = int(config["layers_per_block"])
    for name in down + up:
        if name not in _BLOCK_TYPES:
            raise ValueError(f"unsupported block type {name!r}; VideoMV's T2V UNet uses {sorted(_BLOCK_TYPES)}")
    table: dict[str, tuple[str, str]] = {
        "time_embed.0": ("time_embedding.linear_1", "param"),
        "time_embed.2": ("time_embedding.linear_2", "param"),
        "camera_embedding.0": ("camera_embedding.0", "param"),
        "camera_embedding.2": ("camera_embedding.2", "param"),
        "input_blocks.0.0": ("conv_in", "param"),
        "input_blocks.0.1": ("transformer_in", "temporal"),
        "out.0": ("conv_norm_out", "param"),
        "out.2": ("conv_out", "param"),
    }

    def resblock(vgen: str, block: str, j: int) -> None:
        table[vgen] = (f"{block}.resnets.{j}", "resnet")
        table[f"{vgen}.temopral_conv"] = (f"{block}.temp_convs.{j}", "temp_conv")

    def attention(vgen: str, block: str, j: int) -> None:
        table[f"{vgen}.1"] = (f"{block}.attentions.{j}", "spatial")
        table[f"{vgen}.2"] = (f"{block}.temp_attentions.{j}", "temporal")

    entry = 1
    for i, name in enumerate(down):
        for j in range(layers):
            resblock(f"input_blocks.{entry}.0", f"down_blocks.{i}", j)
            if _BLOCK_TYPES[name]:
                attention(f"input_blocks.{entry}", f"down_blocks.{i}", j)
            entry += 1
        if i < len(down) - 1:
            table[f"input_blocks.{entry}.op"] = (f"down_blocks.{i}.downsamplers.0.conv", "param")
            entry += 1

    resblock("middle_block.0", "mid_block", 0)
    attention("middle_block", "mid_block", 0)
    resblock("middle_block.3", "mid_block", 1)

    entry = 0
    for i, name in enumerate(up):
        for j in range(layers + 1):
            resblock(f"output_blocks.{entry}.0", f"up_blocks.{i}", j)
            if _BLOCK_TYPES[name]:
                attention(f"output_blocks.{entry}", f"up_blocks.{i}", j)
            if i < len(up) - 1 and j == layers:
                last = 3 if _BLOCK_TYPES[name] else 1
                table[f"output_blocks.{entry}.{last}.conv"] = (f"up_blocks.{i}.upsamplers.0.conv", "param")
            entry += 1
    return table


def _split(key: str, table: Mapping[str, tuple[str, str]]) -> Optional[tuple[str, str]]:
    """``(module prefix, parameter suffix)`` for the longest prefix of ``key`` in ``table``."""
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in table:
            return prefix, ".".join(parts[n:])
    return None


def _rename(suffix: str, kind: str, resblock_names: Mapping[str, str]) -> Optional[str]:
    """The suffix in the other layout, or None when ``kind`` has no such parameter."""
    if kind == "resnet":
        module, _, param = suffix.rpartition(".")
        if module in resblock_names and re.fullmatch(_PARAM, param):
            return f"{resblock_names[module]}.{param}"
        return None
    return suffix if _SUFFIX[kind].fullmatch(suffix) else None


def _preview(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n} more)" if len(keys) > n else "")


def _refuse_foreign(keys: list[str]) -> None:
    if any(k.startswith(("input_blocks.", "output_blocks.", "middle_block.")) for k in keys):
        return
    if any(k.startswith(("down_blocks.", "up_blocks.", "mid_block.", "conv_in.")) for k in keys):
        raise ValueError("this is a diffusers-layout state dict (down_blocks.*, conv_in.*, ...), not VideoMV's "
                         f"VGen-layout T2V checkpoint (input_blocks.*, middle_block.*, ...). First keys: {_preview(keys, 5)}")
    raise ValueError("this is not a VGen-layout UNet state dict (no input_blocks.* / middle_block.* / "
                     f"output_blocks.* keys). First keys: {_preview(keys, 5)}")


def convert_t2v(state: Mapping[str, torch.Tensor], config: Optional[Mapping] = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """VGen-layout T2V state dict -> ``(VideoMVT2VUNet state dict, set-aside keys)``.

    ``config``: the UNet's ``__init__`` arguments (default: the release). ``lgm_big.*``
    keys are returned unchanged in the second dict. Every other key must be a parameter
    of the VGen layout (module doc); otherwise a ValueError names the unconsumed keys.
    The temporal transformers' Conv1d ``proj_in``/``proj_out`` weights ``[out, in, 1]``
    become Linear weights ``[out, in]``; tensors are otherwise passed through (no copy).
    Missing keys and shapes are checked when loading (``nodes.weights.load_strict``).
    """
    keys = list(state)
    _refuse_foreign([k for k in keys if not k.startswith(SET_ASIDE_PREFIX)])
    table = module_table(config)
    unet, set_aside, unconsumed = {}, {}, []
    for key in keys:
        value = state[key]
        if key.startswith(SET_ASIDE_PREFIX):
            set_aside[key] = value
            continue
        split = _split(key, table)
        new_suffix = None
        if split is not None:
            prefix, suffix = split
            target, kind = table[prefix]
            new_suffix = _rename(suffix, kind, _RESBLOCK)
        if new_suffix is None:
            unconsumed.append(key)
            continue
        if kind == "temporal" and suffix in _SQUEEZED and value.ndim == 3 and value.shape[-1] == 1:
            value = value.squeeze(-1)
        unet[f"{target}.{new_suffix}"] = value
    if unconsumed:
        raise ValueError(f"{len(unconsumed)} key(s) of the checkpoint are not part of VideoMV's T2V UNet "
                         f"(VGen layout): {_preview(unconsumed)}")
    return unet, set_aside


def to_vgen(state: Mapping[str, torch.Tensor], config: Optional[Mapping] = None) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_t2v`: a :class:`~.model.VideoMVT2VUNet` state dict in VGen layout.

    Used to write checkpoints in the release's layout (smoke weights, tests). Temporal
    ``proj_in``/``proj_out`` weights get their Conv1d kernel dimension back. A key that is
    not a parameter of the network raises ValueError.
    """
    table = {target: (vgen, kind) for vgen, (target, kind) in module_table(config).items()}
    out, unknown = {}, []
    for key, value in state.items():
        split = _split(key, table)
        new_suffix = None
        if split is not None:
            prefix, suffix = split
            vgen, kind = table[prefix]
            new_suffix = _rename(suffix, kind, _RESBLOCK_BACK)
        if new_suffix is None:
            unknown.append(key)
            continue
        if kind == "temporal" and suffix in _SQUEEZED and value.ndim == 2:
            value = value.unsqueeze(-1)
        out[f"{vgen}.{new_suffix}"] = value
    if unknown:
        raise ValueError(f"{len(unknown)} key(s) are not parameters of VideoMV's T2V UNet: {_preview(unknown)}")
    return out


def unwrap_checkpoint(obj) -> dict[str, torch.Tensor]:
    """The flat state dict of a VGen checkpoint: ``obj['state_dict']`` for the training
    wrapper ``{'state_dict': sd, 'step': N}``, else ``obj`` itself (a bare state dict).

    Raises ValueError when the result is not a dict of tensors with string keys.
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f"the checkpoint holds a {type(obj).__name__}, not a state dict")
    inner = obj.get("state_dict")
    state = inner if isinstance(inner, Mapping) else obj
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"the checkpoint is not a dict of tensors (entries that are not: {_preview(bad, 5)})")
    return dict(state)


def _read_checkpoint(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Read ``.safetensors`` via ``read_state_dict``, a ``.pt/.pth`` with ``weights_only=True``
    (memory-mapped when it is a zip checkpoint); any failure is a WeightsError naming the file."""
    if path.suffix == ".safetensors" or not path.is_file():
        return read_state_dict(path, what)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:
        raise WeightsError(f"{what}: {path} could not be read as a weights-only torch checkpoint "
                           f"(truncated, corrupt, or it needs unsafe unpickling: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    try:
        return unwrap_checkpoint(obj)
    except ValueError as exc:
        raise WeightsError(f"{what}: {path}: {exc}") from None


def load_t2v_unet(path, dtype: torch.dtype = torch.float32, config: Optional[Mapping] = None
                  ) -> tuple[VideoMVT2VUNet, dict[str, torch.Tensor]]:
    """Load VideoMV's T2V UNet strictly from a VGen-layout checkpoint file.

    ``path``: ``t2v_*.pth`` (``{'state_dict': ..., 'step': ...}`` or a bare state dict) or a
    ``.safetensors`` with the same keys. ``config``: ``VideoMVT2VUNet`` arguments (default:
    the release). Returns the network (CPU, ``dtype``, eval mode, no gradients) and the
    set-aside ``lgm_big.*`` tensors. Unreadable files, unconsumed, missing or mis-shaped
    keys raise :class:`~consistent_video.nodes.weights.WeightsError` naming them.
    """
    path = Path(path)
    what = "VideoMV T2V UNet"
    state = _read_checkpoint(path, what)
    config = dict(config_for_release() if config is None else config)
    try:
        unet_state, set_aside = convert_t2v(state, config)
    except ValueError as exc:
        raise WeightsError(f"{what}: {path}: {exc}") from None
    with torch.device("meta"):
        unet = VideoMVT2VUNet(**config)
    load_strict(unet, unet_state, f"{what} {path.name}")
    # nn.Module.to: diffusers' override warns about fp32-only modules this network does not have
    torch.nn.Module.to(unet, dtype=dtype).eval().requires_grad_(False)
    return unet, set_aside
