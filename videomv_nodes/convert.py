"""VideoMV's checkpoints (VGen layout) <-> :mod:`.model` keys, and the strict loaders.

The released ``t2v_00333000.pth`` and ``i2v_00882000.pth`` are torch pickles
``{'state_dict': sd, 'step': N}`` (a bare state dict is accepted too) of VGen's
``UNetSD_T2VBase`` and ``UNetSD_I2VGen``: LDM-style keys, no prefix.

VGen layout of the shared UNet body (module structure of ``UNetSD_T2VBase`` /
``UNetSD_I2VGen``; see the reference notes, section 4)
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

I2V only (``UNetSD_I2VGen``; diffusers' ``I2VGenXLUNet`` names on the right)
- ``input_blocks.0.0`` takes 8 channels: the noisy latent, then the image features.
- ``context_embedding.{0,2}`` (CLIP image embedding -> 4 global context tokens) and
  ``fps_embedding.{0,2}``: same names in diffusers.
- ``local_image_concat.{0,2,4}`` (three convs) -> ``image_latents_proj_in.{0,2,4}``.
- ``local_temporal_encoder.layers.0``: VGen's ``TransformerV2`` of depth 1,
  ``.0`` = PreNorm attention (``.0.norm`` LayerNorm -> ``norm1``; ``.0.fn.to_qkv`` one
  bias-free Linear whose output rows are q, k, v in that order -> ``attn1.to_q/to_k/to_v``;
  ``.0.fn.to_out.0`` -> ``attn1.to_out.0``) and ``.1`` = FeedForward without a norm
  (``.1.net.0.0`` Linear + GELU -> ``ff.net.0.proj``; ``.1.net.2`` -> ``ff.net.2``), all
  under ``image_latents_temporal_encoder``.
- ``local_image_embedding.{0,3,5}`` (conv, pool, two stride-2 convs) ->
  ``image_latents_context_embedding.{0,3,5}``.
- The original adds the image features to the input twice; :func:`convert_i2v` folds
  that into ``conv_in.weight`` (:func:`fold_image_concat`).

Inferred, not stated in the weight files (no key listing of the releases is published):
the index structure of the body (that the ResBlock sits at ``.0`` with its temporal conv
inside, the SpatialTransformer at ``.1``, the TemporalTransformer at ``.2``, a Downsample
as an entry of its own and an Upsample as the last member of the output entry, mirroring
the LDM UNet and VGen's module code), the order of the middle block, and for I2V the
sub-module indices of ``local_temporal_encoder`` / ``local_image_*`` above, the q-k-v
row order of the fused ``to_qkv``, the channel order of the 8-channel input conv and a
single temporal-encoder layer (VGen's default ``adapter_transformer_layers`` 1; the I2V
yaml does not set it). These follow VGen's module code (``unet_i2vgen.py``, ``util.py``:
``TransformerV2``, ``PreNormattention``, ``Attention``, ``FeedForward``); the reference
notes give the top-level names. Everything else maps one to one onto diffusers.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Optional

import torch

from ..nodes.comfy.weights import WeightsError, load_strict, read_checkpoint
from .model import VideoMVI2VUNet, VideoMVT2VUNet, config_for_release, i2v_config_for_release

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


I2V_MARKER = "local_image_concat."
"""Key prefix only VideoMV's I2V checkpoint has (its image-concat branch)."""

IMAGE_CONCAT_ADDS = 2
"""How often VGen's ``UNetSD_I2VGen`` adds the image features to the input (``concat += _ximg``
twice); diffusers' ``I2VGenXLUNet`` adds them once."""

# I2V-only single layers: VGen module -> diffusers module
_I2V_MODULES = {
    "context_embedding.0": "context_embedding.0",
    "context_embedding.2": "context_embedding.2",
    "fps_embedding.0": "fps_embedding.0",
    "fps_embedding.2": "fps_embedding.2",
    **{f"local_image_concat.{i}": f"image_latents_proj_in.{i}" for i in (0, 2, 4)},
    **{f"local_image_embedding.{i}": f"image_latents_context_embedding.{i}" for i in (0, 3, 5)},
    "local_temporal_encoder.layers.0.0.norm": "image_latents_temporal_encoder.norm1",
    "local_temporal_encoder.layers.0.0.fn.to_out.0": "image_latents_temporal_encoder.attn1.to_out.0",
    "local_temporal_encoder.layers.0.1.net.0.0": "image_latents_temporal_encoder.ff.net.0.proj",
    "local_temporal_encoder.layers.0.1.net.2": "image_latents_temporal_encoder.ff.net.2",
}
_FUSED_QKV = "local_temporal_encoder.layers.0.0.fn.to_qkv.weight"
_SPLIT_QKV = tuple(f"image_latents_temporal_encoder.attn1.to_{n}.weight" for n in "qkv")


def i2v_module_table(config: Optional[Mapping] = None) -> dict[str, tuple[str, str]]:
    """:func:`module_table` of the I2V network: the shared body plus its single I2V layers
    (kind ``param``). The fused ``to_qkv`` of the temporal encoder is handled apart (it
    becomes three tensors). ``config``: :class:`~.model.VideoMVI2VUNet` arguments."""
    table = module_table(i2v_config_for_release() if config is None else config)
    table.update({vgen: (target, "param") for vgen, target in _I2V_MODULES.items()})
    return table


def _refuse_foreign(keys: list[str], mode: str) -> None:
    if any(k.startswith(("input_blocks.", "output_blocks.", "middle_block.")) for k in keys):
        return
    if any(k.startswith(("down_blocks.", "up_blocks.", "mid_block.", "conv_in.")) for k in keys):
        raise ValueError("this is a diffusers-layout state dict (down_blocks.*, conv_in.*, ...), not VideoMV's "
                         f"VGen-layout {mode} checkpoint (input_blocks.*, middle_block.*, ...). "
                         f"First keys: {_preview(keys, 5)}")
    raise ValueError("this is not a VGen-layout UNet state dict (no input_blocks.* / middle_block.* / "
                     f"output_blocks.* keys). First keys: {_preview(keys, 5)}")


def _map_keys(state: Mapping[str, torch.Tensor], table: Mapping[str, tuple[str, str]], to_vgen: bool = False
              ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename every key of ``state`` by ``table`` (``{module prefix: (other prefix, kind)}``):
    VGen -> diffusers, or with ``to_vgen`` the inverse table's direction. Temporal
    ``proj_in``/``proj_out`` weights go from Conv1d ``[out, in, 1]`` to Linear ``[out, in]``
    (back with ``to_vgen``). Returns the renamed dict and the keys with no place in ``table``."""
    resblock_names = _RESBLOCK_BACK if to_vgen else _RESBLOCK
    out, unconsumed = {}, []
    for key, value in state.items():
        split = _split(key, table)
        new_suffix = None
        if split is not None:
            prefix, suffix = split
            target, kind = table[prefix]
            new_suffix = _rename(suffix, kind, resblock_names)
        if new_suffix is None:
            unconsumed.append(key)
            continue
        if kind == "temporal" and suffix in _SQUEEZED:
            if to_vgen and value.ndim == 2:
                value = value.unsqueeze(-1)
            elif not to_vgen and value.ndim == 3 and value.shape[-1] == 1:
                value = value.squeeze(-1)
        out[f"{target}.{new_suffix}"] = value
    return out, unconsumed


def _split_set_aside(state: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    unet = {k: v for k, v in state.items() if not k.startswith(SET_ASIDE_PREFIX)}
    return unet, {k: v for k, v in state.items() if k.startswith(SET_ASIDE_PREFIX)}


def convert_t2v(state: Mapping[str, torch.Tensor], config: Optional[Mapping] = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """VGen-layout T2V state dict -> ``(VideoMVT2VUNet state dict, set-aside keys)``.

    ``config``: the UNet's ``__init__`` arguments (default: the release). ``lgm_big.*``
    keys are returned unchanged in the second dict. Every other key must be a parameter
    of the VGen layout (module doc); otherwise a ValueError names the unconsumed keys.
    The temporal transformers' Conv1d ``proj_in``/``proj_out`` weights ``[out, in, 1]``
    become Linear weights ``[out, in]``; tensors are otherwise passed through (no copy).
    Missing keys and shapes are checked when loading (``nodes.comfy.weights.load_strict``).
    """
    body, set_aside = _split_set_aside(state)
    _refuse_foreign(list(body), "T2V")
    if any(k.startswith(I2V_MARKER) for k in body):
        raise ValueError(f"this is VideoMV's image-to-multi-view (I2V) checkpoint ({I2V_MARKER}* keys), "
                         "not the T2V one: load it as the I2V model (family 'videomv_i2v', load_i2v_unet)")
    unet, unconsumed = _map_keys(body, module_table(config))
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
    out, unknown = _map_keys(state, table, to_vgen=True)
    if unknown:
        raise ValueError(f"{len(unknown)} key(s) are not parameters of VideoMV's T2V UNet: {_preview(unknown)}")
    return out


def fold_image_concat(state: Mapping[str, torch.Tensor], in_channels: int, factor: float = IMAGE_CONCAT_ADDS
                      ) -> dict[str, torch.Tensor]:
    """Fold VGen's double addition of the image features into ``conv_in.weight`` (diffusers names).

    VGen's ``UNetSD_I2VGen.forward`` builds the extra input channels as
    ``concat = 0; concat += ximg; concat += ximg`` (``ximg``: ``local_image_concat`` then
    ``local_temporal_encoder``, the original's own comment calls it a bug), i.e. ``2 * ximg``,
    and feeds ``cat([x, concat])`` to its input conv. diffusers' ``I2VGenXLUNet`` computes
    the same features (``image_latents_proj_in`` + ``image_latents_temporal_encoder``) and
    concatenates them once, ``conv_in(cat([sample, image_latents]))``; that concatenation
    is their only use. A convolution is linear in its input, so
    ``conv(cat([x, 2 * ximg]); W) == conv(cat([x, ximg]); W')`` with ``W' = W`` except
    ``W'[:, in_channels:] = 2 * W[:, in_channels:]`` (the bias is unchanged). The factor 2
    is a power of two, so the folded weights give bit-identical products. The features
    cannot be scaled earlier: the temporal encoder ends in residual additions.

    Returns a new dict with only ``conv_in.weight`` replaced (``[out, 2 * in_channels, k, k]``
    required; ValueError otherwise); ``factor=1 / IMAGE_CONCAT_ADDS`` undoes the fold.
    """
    weight = state["conv_in.weight"]
    if weight.ndim != 4 or weight.shape[1] != 2 * in_channels:
        raise ValueError(f"conv_in.weight must take {2 * in_channels} input channels (noisy latent + image "
                         f"features); got shape {list(weight.shape)}")
    folded = dict(state)
    folded["conv_in.weight"] = torch.cat([weight[:, :in_channels], weight[:, in_channels:] * factor], dim=1)
    return folded


def convert_i2v(state: Mapping[str, torch.Tensor], config: Optional[Mapping] = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """VGen-layout I2V state dict -> ``(VideoMVI2VUNet state dict, set-aside keys)``.

    All the T2V mappings (:func:`convert_t2v`), the I2V layers of the module doc, the fused
    ``to_qkv`` ``[3 * inner, dim]`` split into ``to_q``/``to_k``/``to_v`` ``[inner, dim]``,
    and :func:`fold_image_concat` applied, so the diffusers network computes the original's
    function. ``lgm_big.*`` keys are returned unchanged in the second dict; any other key
    that is not a parameter of the I2V layout raises ValueError naming it (so does a T2V
    or diffusers-layout state dict). Missing keys and shapes are checked when loading.
    """
    config = dict(i2v_config_for_release() if config is None else config)
    body, set_aside = _split_set_aside(state)
    _refuse_foreign(list(body), "I2V")
    if not any(k.startswith(I2V_MARKER) for k in body):
        raise ValueError(f"this VGen-layout UNet has no image branch ({I2V_MARKER}* keys): it is not VideoMV's "
                         "I2V checkpoint (the T2V one loads as family 'videomv_t2v', load_t2v_unet)")
    fused = body.pop(_FUSED_QKV, None)
    unet, unconsumed = _map_keys(body, i2v_module_table(config))
    if fused is not None:
        if fused.ndim != 2 or fused.shape[0] % 3:
            raise ValueError(f"{_FUSED_QKV} must be [3 * inner, dim] (q, k, v rows); got {list(fused.shape)}")
        unet.update(zip(_SPLIT_QKV, fused.chunk(3, dim=0)))
    if unconsumed:
        raise ValueError(f"{len(unconsumed)} key(s) of the checkpoint are not part of VideoMV's I2V UNet "
                         f"(VGen layout): {_preview(unconsumed)}")
    if "conv_in.weight" in unet:
        unet = fold_image_concat(unet, int(config["in_channels"]))
    return unet, set_aside


def to_vgen_i2v(state: Mapping[str, torch.Tensor], config: Optional[Mapping] = None) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_i2v`: a :class:`~.model.VideoMVI2VUNet` state dict in VGen layout.

    ``conv_in.weight[:, in_channels:]`` is halved back (the original adds those features
    twice), ``attn1.to_q/to_k/to_v`` of the temporal encoder are fused into ``to_qkv``
    (all three needed), temporal projections get their Conv1d dimension back. A key that
    is not a parameter of the network raises ValueError.
    """
    config = dict(i2v_config_for_release() if config is None else config)
    state = dict(state)
    if "conv_in.weight" in state:
        state = fold_image_concat(state, int(config["in_channels"]), 1 / IMAGE_CONCAT_ADDS)
    parts = [state.pop(k) for k in _SPLIT_QKV if k in state]
    if len(parts) not in (0, 3):
        raise ValueError(f"to_vgen_i2v needs all of {', '.join(_SPLIT_QKV)} to fuse them into {_FUSED_QKV}")
    table = {target: (vgen, kind) for vgen, (target, kind) in i2v_module_table(config).items()}
    out, unknown = _map_keys(state, table, to_vgen=True)
    if unknown:
        raise ValueError(f"{len(unknown)} key(s) are not parameters of VideoMV's I2V UNet: {_preview(unknown)}")
    if parts:
        out[_FUSED_QKV] = torch.cat(parts, dim=0)
    return out


RELEASE_HEAD_WIDTH = 64  # attention head width of both released UNets (not visible in the shapes)
RELEASE_NORM_GROUPS = 32  # GroupNorm groups of both released UNets (not visible in the shapes)


def infer_config(unet_state: Mapping[str, torch.Tensor], release: Mapping) -> dict:
    """The UNet's ``__init__`` arguments read from a converted (diffusers-key) state dict.

    Block types and layers per block are ``release``'s (they decide the key names, which the
    conversion already checked); the widths come from the shapes: ``block_out_channels``
    (each level's first ResNet), ``in_channels`` (``conv_in``; half of it for the I2V network,
    whose input also carries the image features), ``out_channels``, ``cross_attention_dim``
    (the first cross-attention's key projection) and ``camera_dim``. Head width 64 and 32
    norm groups are the release's. A missing key raises ValueError naming it.
    """
    config = dict(release)

    def shape(key: str, dim: int) -> int:
        if key not in unet_state:
            raise ValueError(f"the checkpoint has no {key} (converted name): it is not a complete VideoMV UNet")
        return int(unet_state[key].shape[dim])

    levels = len(config["down_block_types"])
    config["block_out_channels"] = tuple(shape(f"down_blocks.{i}.resnets.0.conv1.weight", 0) for i in range(levels))
    image_branch = "image_latents_proj_in.0.weight" in unet_state
    config["in_channels"] = shape("conv_in.weight", 1) // (2 if image_branch else 1)
    config["out_channels"] = shape("conv_out.weight", 0)
    attn_level = next(i for i, t in enumerate(config["down_block_types"]) if t.startswith("CrossAttn"))
    config["cross_attention_dim"] = shape(
        f"down_blocks.{attn_level}.attentions.0.transformer_blocks.0.attn2.to_k.weight", 1)
    config["camera_dim"] = shape("camera_embedding.0.weight", 1)
    config["attention_head_dim"] = RELEASE_HEAD_WIDTH
    config["norm_num_groups"] = RELEASE_NORM_GROUPS
    return config


def _load_unet(path, dtype: torch.dtype, config: Optional[Mapping], release: Mapping, what: str, convert, network):
    """Read, convert (ValueError -> WeightsError), size (``config`` or :func:`infer_config`),
    build on meta, load strictly, cast, freeze."""
    path = Path(path)
    state = read_checkpoint(path, what)
    try:
        unet_state, set_aside = convert(state, dict(release if config is None else config))
        config = infer_config(unet_state, release) if config is None else dict(config)
    except ValueError as exc:
        raise WeightsError(f"{what}: {path}: {exc}") from None
    with torch.device("meta"):
        unet = network(**config)
    load_strict(unet, unet_state, f"{what} {path.name}")
    # nn.Module.to: diffusers' override warns about fp32-only modules these networks do not have
    torch.nn.Module.to(unet, dtype=dtype).eval().requires_grad_(False)
    return unet, set_aside


def load_t2v_unet(path, dtype: torch.dtype = torch.float32, config: Optional[Mapping] = None
                  ) -> tuple[VideoMVT2VUNet, dict[str, torch.Tensor]]:
    """Load VideoMV's T2V UNet strictly from a VGen-layout checkpoint file.

    ``path``: ``t2v_*.pth`` (``{'state_dict': ..., 'step': ...}`` or a bare state dict) or a
    ``.safetensors`` with the same keys. ``config``: ``VideoMVT2VUNet`` arguments (default:
    the release's structure with the widths read from the shapes, :func:`infer_config`). Returns the network (CPU, ``dtype``, eval mode, no gradients) and the
    set-aside ``lgm_big.*`` tensors. Unreadable files, unconsumed, missing or mis-shaped
    keys raise :class:`~consistent_video.nodes.comfy.weights.WeightsError` naming them.
    """
    return _load_unet(path, dtype, config, config_for_release(), "VideoMV T2V UNet", convert_t2v, VideoMVT2VUNet)


def load_i2v_unet(path, dtype: torch.dtype = torch.float32, config: Optional[Mapping] = None
                  ) -> tuple[VideoMVI2VUNet, dict[str, torch.Tensor]]:
    """Load VideoMV's I2V UNet strictly from a VGen-layout checkpoint file.

    ``path``: ``i2v_*.pth`` (``{'state_dict': ..., 'step': ...}`` or a bare state dict) or a
    ``.safetensors`` with the same keys. ``config``: ``VideoMVI2VUNet`` arguments (default:
    as :func:`load_t2v_unet`). The weights go through :func:`convert_i2v`, so the double addition of
    the image features is folded into ``conv_in``. Returns the network (CPU, ``dtype``,
    eval mode, no gradients) and the set-aside ``lgm_big.*`` tensors; errors as
    :func:`load_t2v_unet`.
    """
    return _load_unet(path, dtype, config, i2v_config_for_release(), "VideoMV I2V UNet", convert_i2v,
                      VideoMVI2VUNet)
