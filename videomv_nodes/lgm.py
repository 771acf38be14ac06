"""LGM, the feed-forward Gaussian reconstruction network of VideoMV's 3D-aware sampling loop.

LGM ("Large Multi-View Gaussian Model", 3DTopia/LGM; VideoMV keeps a copy as ``self.lgm_big``)
maps 4 views to one pixel-aligned 3D Gaussian per output pixel of every view. Its network is an
asymmetric UNet (more down than up levels, so the output is coarser than the input) plus a
1x1 ``conv`` head; the 14 output channels are activated into Gaussians.

'big' configuration (VideoMV's, :data:`RELEASE`): 9 input channels (ImageNet-normalised RGB,
then the 6 Plücker channels ``(o x d, d)``), 14 outputs, down widths 64/128/256/512/1024/1024
with multi-view self-attention on the last three, a middle block with attention, up widths
1024/1024/512/256/128 with attention on the first three, 2 ResNets per down level (3 per up
level), 16 heads, GroupNorm with 32 groups (eps 1e-5), residual sums scaled by sqrt(1/2).
Input 256 x 256 per view -> 128 x 128 Gaussians per view (4 x 128^2 = 65,536).

State-dict keys (LGM's own names, identical in ``model.safetensors`` and, behind the prefix
``lgm_big.``, in VideoMV's UNet checkpoints)::

    unet.conv_in.{weight,bias}
    unet.down_blocks.{i}.nets.{j}.{norm1,conv1,norm2,conv2}.{weight,bias}   (+ .shortcut.* where
                                                                            the width changes)
    unet.down_blocks.{i}.attns.{j}.norm.{weight,bias}                       (levels with attention)
    unet.down_blocks.{i}.attns.{j}.attn.qkv.weight                           (no bias; rows q, k, v)
    unet.down_blocks.{i}.attns.{j}.attn.proj.{weight,bias}
    unet.down_blocks.{i}.downsample.{weight,bias}                           (all but the last level)
    unet.mid_block.nets.{0,1}.*, unet.mid_block.attns.0.*
    unet.up_blocks.{i}.nets.{j}.*, .attns.{j}.*, .upsample.{weight,bias}    (all but the last level)
    unet.norm_out.{weight,bias}, unet.conv_out.{weight,bias}
    conv.{weight,bias}                                                     (the 1x1 head)

The release has 376 such tensors (415,042,848 parameters). Output channel layout per Gaussian
(:func:`activate`): position 0:3 (clamped to +-1), opacity 3 (sigmoid), scale 4:7
(0.1 softplus), rotation 7:11 (normalised quaternion, (w, x, y, z): LGM hands it unchanged to
the 3DGS rasteriser, whose quaternions are real-part first), colour 11:14 (0.5 tanh + 0.5).
Positions are in LGM's world frame (the frame of the input rays; objects fill [-1, 1]^3).

Written from LGM's ``core/unet.py``, ``core/models.py`` and ``core/options.py`` ('big'); the
attention follows its ``core/attention.py`` (fused ``qkv`` Linear, scale head_dim^-1/2).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..nodes.splats.gaussians import GaussianScene, rgb_to_sh_dc
from ..nodes.comfy.weights import WeightsError, load_strict, random_state, read_state_dict

VIDEOMV_PREFIX = "lgm_big."
"""Prefix of LGM's keys inside VideoMV's UNet checkpoints (``convert.SET_ASIDE_PREFIX``)."""

SKIP_SCALE = math.sqrt(0.5)  # LGM's UNet multiplies every residual sum by this
NORM_EPS = 1e-5
GAUSSIAN_CHANNELS = 14
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LGMConfig:
    """Structure of an LGM network. ``attention_heads`` and ``norm_groups`` are not visible in
    the weights (the release: 16 and 32); the rest is read from the shapes (:func:`infer_config`)."""

    in_channels: int = 9
    out_channels: int = GAUSSIAN_CHANNELS
    down_channels: tuple[int, ...] = (64, 128, 256, 512, 1024, 1024)
    down_attention: tuple[bool, ...] = (False, False, False, True, True, True)
    mid_attention: bool = True
    up_channels: tuple[int, ...] = (1024, 1024, 512, 256, 128)
    up_attention: tuple[bool, ...] = (True, True, True, False, False)
    layers_per_block: int = 2
    attention_heads: int = 16
    norm_groups: int = 32

    def __post_init__(self):
        if self.out_channels != GAUSSIAN_CHANNELS:
            raise ValueError(f"LGMConfig: LGM predicts {GAUSSIAN_CHANNELS} channels per Gaussian, got {self.out_channels}")
        if len(self.down_attention) != len(self.down_channels) or len(self.up_attention) != len(self.up_channels):
            raise ValueError("LGMConfig: one attention flag per level is needed")
        if not 1 <= len(self.up_channels) <= len(self.down_channels):
            raise ValueError(f"LGMConfig: 1..{len(self.down_channels)} up levels expected, got {len(self.up_channels)}")
        for width in self.down_channels + self.up_channels:
            if width % self.norm_groups or width % self.attention_heads:
                raise ValueError(f"LGMConfig: width {width} is not divisible by {self.norm_groups} norm groups "
                                 f"and {self.attention_heads} heads")

    def output_size(self, input_size: int) -> int:
        """Gaussians per side of a view for ``input_size`` pixels per side (release: 256 -> 128)."""
        return input_size * 2 ** (len(self.up_channels) - 1) // 2 ** (len(self.down_channels) - 1)


RELEASE = LGMConfig()
"""LGM 'big' as VideoMV uses it."""


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=NORM_EPS)


class LGMResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3 twice, plus the input (1x1 ``shortcut`` where the width changes);
    the sum is scaled by :data:`SKIP_SCALE`. ``[N, cin, H, W] -> [N, cout, H, W]``."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (h + self.shortcut(x)) * SKIP_SCALE


class LGMSelfAttention(nn.Module):
    """Multi-head self-attention over tokens ``[B, N, C]``: one bias-free ``qkv`` Linear (output
    rows q, k, v; heads contiguous inside each), softmax(q k^T / sqrt(C / heads)) v, ``proj``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class LGMMultiViewAttention(nn.Module):
    """Self-attention across all pixels of all views of one object, residual, scaled by
    :data:`SKIP_SCALE`. ``x [B*V, C, H, W]`` (views of one object consecutive) with ``views`` V."""

    def __init__(self, dim: int, heads: int, groups: int):
        super().__init__()
        self.norm = _norm(dim, groups)
        self.attn = LGMSelfAttention(dim, heads)

    def forward(self, x: torch.Tensor, views: int) -> torch.Tensor:
        bv, c, h, w = x.shape
        tokens = self.norm(x).view(bv // views, views, c, h * w).permute(0, 1, 3, 2).reshape(bv // views, -1, c)
        out = self.attn(tokens).view(bv // views, views, h * w, c).permute(0, 1, 3, 2).reshape(bv, c, h, w)
        return (out + x) * SKIP_SCALE


def _attention_or_none(flag: bool, dim: int, config: LGMConfig) -> Optional[LGMMultiViewAttention]:
    return LGMMultiViewAttention(dim, config.attention_heads, config.norm_groups) if flag else None


class LGMDownBlock(nn.Module):
    """ResNets (each followed by attention at attention levels), then optionally a stride-2 3x3
    ``downsample`` conv. Returns the output and every intermediate for the skip connections."""

    def __init__(self, in_channels: int, out_channels: int, layers: int, attention: bool, downsample: bool,
                 config: LGMConfig):
        super().__init__()
        self.nets = nn.ModuleList(LGMResnetBlock(in_channels if j == 0 else out_channels, out_channels,
                                                 config.norm_groups) for j in range(layers))
        self.attns = nn.ModuleList(_attention_or_none(attention, out_channels, config) for _ in range(layers))
        self.downsample = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1) if downsample else None

    def forward(self, x: torch.Tensor, views: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for net, attn in zip(self.nets, self.attns):
            x = net(x)
            if attn is not None:
                x = attn(x, views)
            skips.append(x)
        if self.downsample is not None:
            x = self.downsample(x)
            skips.append(x)
        return x, skips


class LGMMidBlock(nn.Module):
    """ResNet, then (attention, ResNet): two ResNets and at most one attention."""

    def __init__(self, channels: int, attention: bool, config: LGMConfig):
        super().__init__()
        self.nets = nn.ModuleList(LGMResnetBlock(channels, channels, config.norm_groups) for _ in range(2))
        self.attns = nn.ModuleList([_attention_or_none(attention, channels, config)])

    def forward(self, x: torch.Tensor, views: int) -> torch.Tensor:
        x = self.nets[0](x)
        if self.attns[0] is not None:
            x = self.attns[0](x, views)
        return self.nets[1](x)


class LGMUpBlock(nn.Module):
    """For each ResNet: concatenate the newest unused skip (channels), ResNet, attention at
    attention levels; then optionally nearest x2 upsampling and a 3x3 ``upsample`` conv.
    ``skip_channels``: the widths of the skips in the order they are consumed."""

    def __init__(self, in_channels: int, skip_channels: list[int], out_channels: int, attention: bool,
                 upsample: bool, config: LGMConfig):
        super().__init__()
        widths = [in_channels] + [out_channels] * (len(skip_channels) - 1)
        self.nets = nn.ModuleList(LGMResnetBlock(cin + cskip, out_channels, config.norm_groups)
                                  for cin, cskip in zip(widths, skip_channels))
        self.attns = nn.ModuleList(_attention_or_none(attention, out_channels, config) for _ in skip_channels)
        self.upsample = nn.Conv2d(out_channels, out_channels, 3, padding=1) if upsample else None

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], views: int) -> torch.Tensor:
        for net, attn in zip(self.nets, self.attns):
            x = net(torch.cat([x, skips.pop()], dim=1))
            if attn is not None:
                x = attn(x, views)
        if self.upsample is not None:
            x = self.upsample(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class LGMUNet(nn.Module):
    """LGM's asymmetric UNet: ``[B*V, in, H, W] -> [B*V, out, h, w]`` (:meth:`LGMConfig.output_size`).

    Each up level consumes ``layers_per_block + 1`` skips, newest first, from the stack
    (``conv_in`` output, every down ResNet/attention output, every downsample output), so an
    up path shorter than the down path leaves the finest skips unused.
    """

    def __init__(self, config: LGMConfig):
        super().__init__()
        c = config
        self.conv_in = nn.Conv2d(c.in_channels, c.down_channels[0], 3, padding=1)
        stack = [c.down_channels[0]]  # widths of the skip stack
        blocks, width = [], c.down_channels[0]
        for i, (out, attention) in enumerate(zip(c.down_channels, c.down_attention)):
            last = i == len(c.down_channels) - 1
            blocks.append(LGMDownBlock(width, out, c.layers_per_block, attention, not last, c))
            stack += [out] * (c.layers_per_block + (0 if last else 1))
            width = out
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = LGMMidBlock(width, c.mid_attention, c)
        blocks = []
        for i, (out, attention) in enumerate(zip(c.up_channels, c.up_attention)):
            skips = [stack.pop() for _ in range(c.layers_per_block + 1)]
            blocks.append(LGMUpBlock(width, skips, out, attention, i != len(c.up_channels) - 1, c))
            width = out
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = _norm(width, c.norm_groups)
        self.conv_out = nn.Conv2d(width, c.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, views: int) -> torch.Tensor:
        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x, new = block(x, views)
            skips += new
        x = self.mid_block(x, views)
        for block in self.up_blocks:
            x = block(x, skips, views)
        return self.conv_out(F.silu(self.norm_out(x)))


class LGM(nn.Module):
    """LGM's network: the UNet and the 1x1 ``conv`` head (state-dict keys ``unet.*``, ``conv.*``)."""

    def __init__(self, config: LGMConfig = RELEASE):
        super().__init__()
        self.config = config
        self.unet = LGMUNet(config)
        self.conv = nn.Conv2d(config.out_channels, config.out_channels, 1)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        """Raw per-pixel features ``[B, V, 14, h, w]`` of ``views [B, V, 9, H, W]`` (H, W divisible
        by 2^(down levels - 1); the release: V = 4 views of 256^2 -> 128^2)."""
        b, v, c, h, w = views.shape
        if c != self.config.in_channels:
            raise ValueError(f"LGM: expected [B, V, {self.config.in_channels}, H, W] views, got {list(views.shape)}")
        step = 2 ** (len(self.config.down_channels) - 1)
        if h % step or w % step:
            raise ValueError(f"LGM: view size {h}x{w} must be divisible by {step}")
        x = self.conv(self.unet(views.reshape(b * v, c, h, w), v))
        return x.view(b, v, *x.shape[1:])

    def forward_gaussians(self, views: torch.Tensor) -> torch.Tensor:
        """Activated Gaussians ``[B, V*h*w, 14]`` of ``views [B, V, 9, H, W]`` (:func:`activate`)."""
        return activate(self(views))


def activate(features: torch.Tensor) -> torch.Tensor:
    """LGM's output activations: raw ``[B, V, 14, h, w]`` -> Gaussians ``[B, V*h*w, 14]``, ordered
    view, row, column; channels position (clamp +-1), opacity (sigmoid), scale (0.1 softplus),
    rotation (unit quaternion w, x, y, z), colour RGB (0.5 tanh + 0.5)."""
    b = features.shape[0]
    x = features.permute(0, 1, 3, 4, 2).reshape(b, -1, features.shape[2])
    return torch.cat([x[..., 0:3].clamp(-1, 1), torch.sigmoid(x[..., 3:4]), 0.1 * F.softplus(x[..., 4:7]),
                      F.normalize(x[..., 7:11], dim=-1), 0.5 * torch.tanh(x[..., 11:14]) + 0.5], dim=-1)


def to_gaussian_scene(gaussians: torch.Tensor, min_opacity: float = 0.0) -> GaussianScene:
    """One object's activated Gaussians ``[N, 14]`` (:func:`activate`) as a :class:`GaussianScene`
    with SH degree 0 whose colour is LGM's RGB; Gaussians with opacity below ``min_opacity`` are
    dropped (LGM's own PLY export uses 0.005)."""
    if gaussians.dim() != 2 or gaussians.shape[1] != GAUSSIAN_CHANNELS:
        raise ValueError(f"to_gaussian_scene: expected [N, 14] Gaussians, got {list(gaussians.shape)}")
    g = gaussians.float()
    if min_opacity > 0:
        g = g[g[:, 3] >= min_opacity]
    return GaussianScene(means=g[:, 0:3], scales=g[:, 4:7], rotations=g[:, 7:11], opacities=g[:, 3],
                         sh=rgb_to_sh_dc(g[:, 11:14]).unsqueeze(1))


def lgm_input(rgb: torch.Tensor, plucker: torch.Tensor) -> torch.Tensor:
    """LGM's input ``[B, V, 9, H, W]``: ``rgb [B, V, 3, H, W]`` in 0..1, ImageNet-normalised, then
    ``plucker [B, V, 6, H, W]`` (moment o x d, then direction d, as LGM builds them)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
    return torch.cat([(rgb - mean) / std, plucker.to(rgb.dtype)], dim=2)


# --------------------------------------------------------------------------- weights
_FIRST = re.compile(r"unet\.(down_blocks|up_blocks)\.(\d+)\.")


def _preview(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n} more)" if len(keys) > n else "")


def lgm_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LGM's own keys (``unet.*``, ``conv.*``) from either layout: VideoMV's ``lgm_big.*`` tensors
    (prefix removed; other keys are kept, so strict loading names them) or LGM's standalone
    ``model.safetensors``. A dict with no LGM key at all raises ValueError."""
    out = {(k[len(VIDEOMV_PREFIX):] if k.startswith(VIDEOMV_PREFIX) else k): v for k, v in state.items()}
    if not any(k.startswith("unet.conv_in.") for k in out):
        raise ValueError("this is not an LGM state dict (no unet.conv_in.* or lgm_big.unet.conv_in.* key). "
                         f"First keys: {_preview(list(state))}")
    return out


def infer_config(state: Mapping[str, torch.Tensor], heads: int = RELEASE.attention_heads,
                 groups: int = RELEASE.norm_groups) -> LGMConfig:
    """The :class:`LGMConfig` of an LGM state dict (``unet.*`` keys): widths from the shapes,
    levels and ResNets per level from the key indices, attention where a level has ``attns``
    keys, except that a network with the release's level counts gets the release's attention
    pattern (so missing attention tensors are named by the strict load). ``heads`` and
    ``groups`` are not visible in the weights. A key needed here that is absent raises ValueError."""
    def width(key: str, dim: int = 0) -> int:
        if key not in state:
            raise ValueError(f"the LGM state dict has no {key}: it is incomplete or not LGM")
        return int(state[key].shape[dim])

    levels = {"down_blocks": set(), "up_blocks": set()}
    for key in state:
        match = _FIRST.match(key)
        if match:
            levels[match[1]].add(int(match[2]))
    down, up = (sorted(levels[n]) for n in ("down_blocks", "up_blocks"))
    if down != list(range(len(down))) or up != list(range(len(up))) or not down or not up:
        raise ValueError(f"the LGM state dict has down levels {down} and up levels {up}: not a complete LGM UNet")
    layers = len({k.split(".")[4] for k in state if k.startswith("unet.down_blocks.0.nets.")})

    def has_attention(block: str) -> bool:
        return any(k.startswith(f"unet.{block}.attns.") for k in state)

    if (len(down), len(up)) == (len(RELEASE.down_channels), len(RELEASE.up_channels)):
        down_att, mid_att, up_att = RELEASE.down_attention, RELEASE.mid_attention, RELEASE.up_attention
    else:
        down_att = tuple(has_attention(f"down_blocks.{i}") for i in down)
        mid_att = has_attention("mid_block")
        up_att = tuple(has_attention(f"up_blocks.{i}") for i in up)
    return LGMConfig(
        in_channels=width("unet.conv_in.weight", 1), out_channels=width("unet.conv_out.weight"),
        down_channels=tuple(width(f"unet.down_blocks.{i}.nets.0.conv1.weight") for i in down),
        down_attention=down_att, mid_attention=mid_att,
        up_channels=tuple(width(f"unet.up_blocks.{i}.nets.0.conv1.weight") for i in up),
        up_attention=up_att, layers_per_block=layers, attention_heads=heads, norm_groups=groups)


def load_lgm(source: Union[str, Path, Mapping[str, torch.Tensor]], dtype: torch.dtype = torch.float32,
             config: Optional[LGMConfig] = None, what: str = "LGM") -> LGM:
    """Load LGM strictly.

    ``source``: LGM's ``model.safetensors`` (fp16, keys ``unet.*``/``conv.*``; a ``.pth`` is read
    with ``weights_only=True``), or a state dict in either layout, e.g. the ``lgm_big.*`` tensors
    that :func:`.convert.load_t2v_unet` sets aside. ``config``: default :func:`infer_config`.
    Returns the network on the CPU in ``dtype``, eval mode, no gradients. Another model's
    tensors, missing, unexpected or mis-shaped keys raise
    :class:`~consistent_video.nodes.comfy.weights.WeightsError` naming them.
    """
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        path = Path(source)
        state, what = read_state_dict(path, what), f"{what} {path}"
    try:
        state = lgm_state(state)
        config = infer_config(state) if config is None else config
    except ValueError as exc:
        raise WeightsError(f"{what}: {exc}") from None
    with torch.device("meta"):
        network = LGM(config)
    load_strict(network, state, what)
    return network.to(dtype).eval().requires_grad_(False)


def smoke_config() -> LGMConfig:
    """The tiny LGM of the smoke weights: the release's level pattern shrunk to three down and two
    up levels (32/64/64 and 64/64 channels, attention on the coarse levels), 2 ResNets per level,
    16 heads, 32 groups; output = input / 2 per side, as in the release."""
    return LGMConfig(down_channels=(32, 64, 64), down_attention=(False, True, True), mid_attention=True,
                     up_channels=(64, 64), up_attention=(True, False))


def smoke_state(seed: int = 0, prefix: str = "", dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random tensors of :func:`smoke_config` with LGM's keys behind ``prefix`` (``""`` for the
    standalone file, :data:`VIDEOMV_PREFIX` inside a VideoMV checkpoint), in ``dtype``."""
    with torch.device("meta"):
        network = LGM(smoke_config())
    state = random_state(network, torch.Generator().manual_seed(seed))
    return {prefix + k: v.to(dtype) for k, v in state.items()}
