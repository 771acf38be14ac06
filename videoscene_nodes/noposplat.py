"""NoPoSplat: two unposed photos -> per-pixel 3D Gaussians in view 1's camera frame.

Plain torch, importable without ComfyUI. The network of the released
``mixRe10kDl3dv_512x512.ckpt`` (``cvg/NoPoSplat``, encoder ``noposplat`` with the ``croco``
backbone ``ViTLarge_BaseDecoder``, ``pose_free``, intrinsics token, ``dpt_gs`` Gaussian heads,
SH degree 4). Parameter names follow the checkpoint's ``encoder.*`` keys (without that prefix),
so the official state dict loads strictly:

- ``backbone``: a CroCo-v2 ViT. ``patch_embed.proj`` (patch 16), ``enc_blocks.N`` (pre-norm
  self-attention with 2-D RoPE, base 100), ``enc_norm``; ``intrinsic_encoder`` (``Linear(9, E)``
  of the flattened normalised K, appended to each view's tokens as one extra token placed one
  row below the patch grid, column 0); ``decoder_embed`` then two decoders ``dec_blocks``
  (view 1) / ``dec_blocks2`` (view 2) whose blocks cross-attend to the other view's tokens of
  the previous layer (DUSt3R); ``dec_norm`` on the last layer; ``mask_token`` (unused here,
  present in the checkpoint).
- ``downstream_head1/2``: DPT heads on decoder layers ``[0, L/2, 3L/4, L]`` (layer 0 is the
  encoder output) giving per-pixel points, mapped by ``xyz/|xyz| * expm1(|xyz|)`` (DUSt3R's
  ``exp`` depth mode). Both views' points are in view 1's camera frame (OpenCV axes).
- ``gaussian_param_head/2``: the same DPT trunk with the normalised image added at full
  resolution (``input_merger``) and a 1x1 output of ``1 + 7 + 3 (d+1)^2`` channels: opacity
  logit, 3 scales, quaternion ``(x, y, z, w)``, SH coefficients channel-major.
- The Gaussian adapter (``UnifiedGaussianAdapter``): opacity ``sigmoid``, scales
  ``min(0.001 softplus(s), 0.3)``, normalised quaternions, SH times the mask
  ``1`` (degree 0) / ``0.1 * 0.25^l`` (degree l).

Input images are RGB 0..1, normalised to -1..1 (mean = std = 0.5). The release assumes
intrinsics fx = fy = 0.8, cx = cy = 0.5 (normalised by width/height) and renders with
near 0.1, far 100.

Sizes (widths, depths, DPT channels, SH degree) come from the checkpoint's shapes
(:meth:`NoPoSplatConfig.from_state_dict`); attention heads are ``width / 64`` as in the
release (ViT-L 1024/16, base decoder 768/12).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..nodes.splats.gaussians import GaussianScene

HEAD_DIM = 64
"""Attention head width of the release (and of every CroCo/DUSt3R model)."""
DEFAULT_INTRINSICS = ((0.8, 0.0, 0.5), (0.0, 0.8, 0.5), (0.0, 0.0, 1.0))
"""Normalised K the release assumes for both input photos."""
NEAR, FAR = 0.1, 100.0
"""Clipping planes the release renders with."""
IMAGE_SIZE = 512
"""The 512x512 checkpoint's training resolution."""
RENDERER_SH_DEGREE = 3
"""Highest SH degree of the pack's renderer; :meth:`NoPoSplatOutput.scene` drops the rest."""


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class NoPoSplatConfig:
    """Sizes of the network. Defaults: the released 512x512 model."""

    patch_size: int = 16
    enc_dim: int = 1024
    enc_depth: int = 24
    enc_heads: int = 16
    enc_mlp: int = 4096
    dec_dim: int = 768
    dec_depth: int = 12
    dec_heads: int = 12
    dec_mlp: int = 3072
    rope_base: float = 100.0
    dpt_layer_dims: tuple[int, int, int, int] = (96, 192, 384, 768)
    dpt_features: int = 256
    dpt_last_dim: int = 128
    sh_degree: int = 4

    def __post_init__(self):
        if self.patch_size != 16:
            raise ValueError(f"patch size {self.patch_size}: the DPT heads' upsampling (x4, x2, x1, /2, then "
                             "four x2 fusions) is built for 16-pixel patches")
        if self.dec_depth < 4:
            raise ValueError(f"decoder depth {self.dec_depth}: the DPT heads read 4 distinct layers (needs >= 4)")

    @property
    def hooks(self) -> tuple[int, int, int, int]:
        """Decoder layers the DPT heads read (0 = encoder output, ``dec_depth`` = last)."""
        n = self.dec_depth
        return (0, n * 2 // 4, n * 3 // 4, n)

    @property
    def gaussian_channels(self) -> int:
        """Raw Gaussian head channels: opacity, 3 scales, 4 quaternion, 3 (d+1)^2 SH."""
        return 1 + 7 + 3 * (self.sh_degree + 1) ** 2

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> "NoPoSplatConfig":
        """The config whose network has the shapes of ``state`` (keys without ``encoder.``).

        Raises ``ValueError`` naming the first key it needs that is absent or malformed.
        """
        def shape(key: str, ndim: int) -> tuple[int, ...]:
            if key not in state:
                raise ValueError(f"no '{key}' (not a NoPoSplat encoder state dict?)")
            value = tuple(state[key].shape)
            if len(value) != ndim:
                raise ValueError(f"'{key}' has shape {list(value)}, expected {ndim} dimensions")
            return value

        def depth(prefix: str) -> int:
            ids = {int(k[len(prefix):].split(".", 1)[0]) for k in state if k.startswith(prefix)}
            if not ids or ids != set(range(len(ids))):
                raise ValueError(f"'{prefix}N' blocks are missing or not numbered 0..N-1")
            return len(ids)

        enc_dim, _, patch, _ = shape("backbone.patch_embed.proj.weight", 4)
        dec_dim, _ = shape("backbone.decoder_embed.weight", 2)
        for dim, what in ((enc_dim, "encoder"), (dec_dim, "decoder")):
            if dim % HEAD_DIM:
                raise ValueError(f"{what} width {dim} is not a multiple of the head width {HEAD_DIM}")
        head = "downstream_head1.dpt."
        layer_dims = tuple(shape(f"{head}act_postprocess.{i}.0.weight", 4)[0] for i in range(4))
        features = shape(f"{head}scratch.layer1_rn.weight", 4)[0]
        last_dim = shape(f"{head}head.2.weight", 4)[0]
        out = shape("gaussian_param_head.dpt.head.4.weight", 4)[0]
        d_sh = (out - 8) / 3
        degree = round(math.sqrt(max(d_sh, 1))) - 1
        if 8 + 3 * (degree + 1) ** 2 != out:
            raise ValueError(f"the Gaussian head has {out} output channels; expected 8 + 3 (d+1)^2")
        return cls(patch_size=patch, enc_dim=enc_dim, enc_depth=depth("backbone.enc_blocks."),
                   enc_heads=enc_dim // HEAD_DIM, enc_mlp=shape("backbone.enc_blocks.0.mlp.fc1.weight", 2)[0],
                   dec_dim=dec_dim, dec_depth=depth("backbone.dec_blocks."), dec_heads=dec_dim // HEAD_DIM,
                   dec_mlp=shape("backbone.dec_blocks.0.mlp.fc1.weight", 2)[0], dpt_layer_dims=layer_dims,
                   dpt_features=features, dpt_last_dim=last_dim, sh_degree=degree)


# --------------------------------------------------------------------------- RoPE and blocks
def patch_positions(batch: int, grid_h: int, grid_w: int, device=None) -> torch.Tensor:
    """``[batch, grid_h * grid_w, 2]`` long ``(row, column)`` of each patch token, row-major."""
    rows, cols = torch.meshgrid(torch.arange(grid_h, device=device), torch.arange(grid_w, device=device),
                                indexing="ij")
    return torch.stack([rows, cols], -1).reshape(1, -1, 2).expand(batch, -1, -1)


def rope_2d(x: torch.Tensor, positions: torch.Tensor, base: float = 100.0) -> torch.Tensor:
    """CroCo's 2-D rotary embedding of ``x [B, heads, N, d]`` at ``positions [B, N, 2]`` (row, col).

    The first half of each head's channels encodes the row, the second the column; within
    a half of width ``h``, channel ``i < h/2`` pairs with ``i + h/2`` and is rotated by
    ``pos * base^(-2i/h)``. ``d`` must be a multiple of 4.
    """
    d = x.shape[-1]
    if d % 4:
        raise ValueError(f"rope_2d: head width {d} is not a multiple of 4")
    half = d // 2
    inv_freq = base ** (-torch.arange(0, half, 2, device=x.device, dtype=torch.float32) / half)
    out = []
    for axis, part in enumerate(x.chunk(2, dim=-1)):
        angle = positions[..., axis].to(torch.float32)[..., None] * inv_freq  # [B, N, h/2]
        angle = torch.cat([angle, angle], -1)[:, None].to(x.dtype)
        first, second = part.chunk(2, dim=-1)
        out.append(part * angle.cos() + torch.cat([-second, first], -1) * angle.sin())
    return torch.cat(out, -1)


class Mlp(nn.Module):
    """``fc2(gelu(fc1(x)))`` (exact GELU)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class SelfAttention(nn.Module):
    """Multi-head self-attention with 2-D RoPE on queries and keys (``qkv``, ``proj``)."""

    def __init__(self, dim: int, heads: int, rope_base: float):
        super().__init__()
        self.heads, self.rope_base = heads, rope_base
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q, k, v = (_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        q, k = rope_2d(q, pos, self.rope_base), rope_2d(k, pos, self.rope_base)
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))


class CrossAttention(nn.Module):
    """Queries from one view, keys/values from the other (``projq/projk/projv``, ``proj``), RoPE on both."""

    def __init__(self, dim: int, heads: int, rope_base: float):
        super().__init__()
        self.heads, self.rope_base = heads, rope_base
        self.projq, self.projk, self.projv = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, memory_pos: torch.Tensor):
        q = rope_2d(_heads(self.projq(x), self.heads), pos, self.rope_base)
        k = rope_2d(_heads(self.projk(memory), self.heads), memory_pos, self.rope_base)
        v = _heads(self.projv(memory), self.heads)
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))


def _norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


class EncoderBlock(nn.Module):
    """Pre-norm ViT block: ``x + attn(norm1 x)``, then ``x + mlp(norm2 x)``."""

    def __init__(self, dim: int, heads: int, mlp: int, rope_base: float):
        super().__init__()
        self.norm1, self.attn = _norm(dim), SelfAttention(dim, heads, rope_base)
        self.norm2, self.mlp = _norm(dim), Mlp(dim, mlp)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), pos)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Self-attention, cross-attention to the other view (``norm_y`` on it), MLP; all pre-norm."""

    def __init__(self, dim: int, heads: int, mlp: int, rope_base: float):
        super().__init__()
        self.norm1, self.attn = _norm(dim), SelfAttention(dim, heads, rope_base)
        self.cross_attn = CrossAttention(dim, heads, rope_base)
        self.norm2, self.norm3, self.norm_y = _norm(dim), _norm(dim), _norm(dim)
        self.mlp = Mlp(dim, mlp)

    def forward(self, x, other, pos, other_pos):
        x = x + self.attn(self.norm1(x), pos)
        x = x + self.cross_attn(self.norm2(x), self.norm_y(other), pos, other_pos)
        return x + self.mlp(self.norm3(x))


class PatchEmbed(nn.Module):
    """``proj``: a ``patch x patch`` stride-``patch`` convolution to tokens."""

    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)


class CroCoBackbone(nn.Module):
    """Siamese encoder with the intrinsics token + the two cross-attending decoders."""

    def __init__(self, cfg: NoPoSplatConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.enc_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dec_dim))
        self.enc_blocks = nn.ModuleList(EncoderBlock(cfg.enc_dim, cfg.enc_heads, cfg.enc_mlp, cfg.rope_base)
                                        for _ in range(cfg.enc_depth))
        self.enc_norm = _norm(cfg.enc_dim)
        self.intrinsic_encoder = nn.Linear(9, cfg.enc_dim)
        self.decoder_embed = nn.Linear(cfg.enc_dim, cfg.dec_dim)
        for name in ("dec_blocks", "dec_blocks2"):
            setattr(self, name, nn.ModuleList(DecoderBlock(cfg.dec_dim, cfg.dec_heads, cfg.dec_mlp, cfg.rope_base)
                                              for _ in range(cfg.dec_depth)))
        self.dec_norm = _norm(cfg.dec_dim)

    def encode(self, images: torch.Tensor, intrinsics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens ``[B, N + 1, E]`` and positions ``[B, N + 1, 2]`` of normalised ``images [B,3,H,W]``
        with ``intrinsics [B,3,3]``; the last token is the intrinsics token."""
        x = self.patch_embed.proj(images)
        grid_h, grid_w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        b = x.shape[0]
        pos = patch_positions(b, grid_h, grid_w, x.device)
        token = self.intrinsic_encoder(intrinsics.reshape(b, 1, 9).to(x.dtype))
        token_pos = torch.tensor([grid_h, 0], device=x.device).expand(b, 1, 2)
        x, pos = torch.cat([x, token], 1), torch.cat([pos, token_pos], 1)
        for block in self.enc_blocks:
            x = block(x, pos)
        return self.enc_norm(x), pos

    def forward(self, image1, image2, intrinsics1, intrinsics2) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per view, the ``dec_depth + 1`` token layers the heads read (encoder output, then each
        decoder block, the last one normalised), intrinsics token removed: ``[B, N, C]`` each."""
        feats, pos = self.encode(torch.cat([image1, image2]), torch.cat([intrinsics1, intrinsics2]))
        f1, f2 = feats.chunk(2)
        pos1, pos2 = pos.chunk(2)
        layers1, layers2 = [f1], [f2]
        x1, x2 = self.decoder_embed(f1), self.decoder_embed(f2)
        for block1, block2 in zip(self.dec_blocks, self.dec_blocks2):
            x1, x2 = block1(x1, x2, pos1, pos2), block2(x2, x1, pos2, pos1)
            layers1.append(x1)
            layers2.append(x2)
        layers1[-1], layers2[-1] = self.dec_norm(layers1[-1]), self.dec_norm(layers2[-1])
        return [t[:, :-1] for t in layers1], [t[:, :-1] for t in layers2]


# --------------------------------------------------------------------------- DPT heads
class ResidualConvUnit(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))`` (3x3 convolutions with bias)."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """DPT fusion: ``(x + rcu1(skip))`` -> ``rcu2`` -> 2x bilinear (align corners) -> 1x1 ``out_conv``."""

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1, self.resConfUnit2 = ResidualConvUnit(features), ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = F.interpolate(self.resConfUnit2(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class _Upsample2x(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class DPTAdapter(nn.Module):
    """DPT trunk over four token layers at 1/16 resolution, output at full resolution.

    ``kind='points'``: the DUSt3R regression head (conv, 2x up, conv, ReLU, 1x1) to
    ``out_channels``. ``kind='gaussians'``: the head runs after a 2x upsampling plus
    ``input_merger`` (7x7 conv + ReLU) of the normalised image, with a 3x3 conv (no bias),
    ReLU and a 1x1 conv. The layer projections ``scratch.layerK_rn`` are also listed as
    ``scratch.layer_rn.(K-1)`` (one module, two names, as in the checkpoint).
    """

    def __init__(self, cfg: NoPoSplatConfig, kind: str, out_channels: int):
        super().__init__()
        dims_in = (cfg.enc_dim, cfg.dec_dim, cfg.dec_dim, cfg.dec_dim)
        lay, feat = cfg.dpt_layer_dims, cfg.dpt_features
        self.kind, self.hooks, self.patch = kind, cfg.hooks, cfg.patch_size
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(dims_in[0], lay[0], 1), nn.ConvTranspose2d(lay[0], lay[0], 4, stride=4)),
            nn.Sequential(nn.Conv2d(dims_in[1], lay[1], 1), nn.ConvTranspose2d(lay[1], lay[1], 2, stride=2)),
            nn.Sequential(nn.Conv2d(dims_in[2], lay[2], 1)),
            nn.Sequential(nn.Conv2d(dims_in[3], lay[3], 1), nn.Conv2d(lay[3], lay[3], 3, stride=2, padding=1)),
        ])
        self.scratch = nn.Module()
        projections = [nn.Conv2d(lay[i], feat, 3, padding=1, bias=False) for i in range(4)]
        for i, conv in enumerate(projections, 1):
            setattr(self.scratch, f"layer{i}_rn", conv)
        self.scratch.layer_rn = nn.ModuleList(projections)
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", FusionBlock(feat))
        if kind == "points":
            self.head = nn.Sequential(nn.Conv2d(feat, feat // 2, 3, padding=1), _Upsample2x(),
                                      nn.Conv2d(feat // 2, cfg.dpt_last_dim, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(cfg.dpt_last_dim, out_channels, 1))
        elif kind == "gaussians":
            self.input_merger = nn.Sequential(nn.Conv2d(3, feat, 7, padding=3), nn.ReLU())
            self.head = nn.Sequential(nn.Conv2d(feat, feat, 3, padding=1, bias=False), nn.Identity(), nn.ReLU(),
                                      nn.Identity(), nn.Conv2d(feat, out_channels, 1))
        else:
            raise ValueError(f"DPTAdapter: kind must be 'points' or 'gaussians', got {kind!r}")

    def forward(self, layers: list[torch.Tensor], image_size: tuple[int, int],
                image: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``layers``: the backbone's token layers ``[B, N, C]``; returns ``[B, out, H, W]``."""
        h, w = image_size[0] // self.patch, image_size[1] // self.patch
        maps = []
        for i, hook in enumerate(self.hooks):
            tokens = layers[hook]
            grid = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)
            maps.append(self.scratch.layer_rn[i](self.act_postprocess[i](grid)))
        path = self.scratch.refinenet4(maps[3])[:, :, :maps[2].shape[2], :maps[2].shape[3]]
        path = self.scratch.refinenet3(path, maps[2])
        path = self.scratch.refinenet2(path, maps[1])
        path = self.scratch.refinenet1(path, maps[0])
        if self.kind == "gaussians":
            path = F.interpolate(path, scale_factor=2, mode="bilinear", align_corners=True)
            path = path + self.input_merger(image)
        return self.head(path)


class PixelHead(nn.Module):
    """Holds a :class:`DPTAdapter` as ``dpt`` (the checkpoint's nesting)."""

    def __init__(self, cfg: NoPoSplatConfig, kind: str, out_channels: int):
        super().__init__()
        self.dpt = DPTAdapter(cfg, kind, out_channels)

    def forward(self, layers, image_size, image=None):
        return self.dpt(layers, image_size, image)


# --------------------------------------------------------------------------- Gaussians
def points_from_head(raw: torch.Tensor) -> torch.Tensor:
    """DUSt3R's ``exp`` depth mode on ``raw [..., 3]``: direction ``raw/|raw|``, distance ``expm1(|raw|)``."""
    d = raw.norm(dim=-1, keepdim=True)
    return raw / d.clamp_min(1e-8) * torch.expm1(d)


def sh_mask(degree: int, device=None) -> torch.Tensor:
    """``[(degree+1)^2]``: 1 for degree 0, ``0.1 * 0.25^l`` for the coefficients of degree ``l``."""
    return torch.cat([torch.full(((2 * l + 1),), 1.0 if l == 0 else 0.1 * 0.25 ** l, device=device)
                      for l in range(degree + 1)])


def gaussians_from_head(raw: torch.Tensor, sh_degree: int) -> dict[str, torch.Tensor]:
    """The Gaussian adapter on raw head channels ``raw [..., 8 + 3 (d+1)^2]``.

    Returns ``opacities [...]`` (sigmoid), ``scales [..., 3]`` (``min(0.001 softplus, 0.3)``),
    ``rotations [..., 4]`` unit quaternions **(w, x, y, z)** (the head predicts ``(x, y, z, w)``),
    ``sh [..., (d+1)^2, 3]`` (the head's channel-major coefficients times :func:`sh_mask`).
    """
    k = (sh_degree + 1) ** 2
    if raw.shape[-1] != 8 + 3 * k:
        raise ValueError(f"gaussians_from_head: expected {8 + 3 * k} channels for SH degree {sh_degree}, "
                         f"got {raw.shape[-1]}")
    opacity, scales, xyzw, sh = raw.split((1, 3, 4, 3 * k), dim=-1)
    xyzw = xyzw / (xyzw.norm(dim=-1, keepdim=True) + 1e-8)
    sh = sh.unflatten(-1, (3, k)).transpose(-1, -2) * sh_mask(sh_degree, raw.device)[:, None].to(raw.dtype)
    return {"opacities": opacity[..., 0].sigmoid(), "scales": (0.001 * F.softplus(scales)).clamp_max(0.3),
            "rotations": torch.cat([xyzw[..., 3:], xyzw[..., :3]], -1), "sh": sh}


@dataclass
class NoPoSplatOutput:
    """Per-pixel Gaussians of both views, in view 1's camera frame (OpenCV axes).

    ``means [B,2,H,W,3]`` (also the raw per-pixel points for PnP), ``opacities [B,2,H,W]``,
    ``scales [B,2,H,W,3]``, ``rotations [B,2,H,W,4]`` unit (w, x, y, z),
    ``sh [B,2,H,W,K,3]`` with ``K = (sh_degree + 1)^2`` (colour = SH . basis + 0.5, as in 3DGS).
    """

    means: torch.Tensor
    opacities: torch.Tensor
    scales: torch.Tensor
    rotations: torch.Tensor
    sh: torch.Tensor

    def scene(self, index: int = 0, min_opacity: float = 0.0) -> GaussianScene:
        """Batch item ``index`` as a :class:`GaussianScene` (both views, float32, SH cut to degree
        :data:`RENDERER_SH_DEGREE`; the release's degree-4 band is scaled by 0.1 * 0.25^4 and is
        the orthogonal remainder, so dropping it is the best lower-degree fit). Gaussians with
        opacity below ``min_opacity`` are left out."""
        keep_k = min(self.sh.shape[-2], (RENDERER_SH_DEGREE + 1) ** 2)
        flat = [t[index].reshape(-1, *t.shape[4:]).float() for t in
                (self.means, self.scales, self.rotations, self.opacities, self.sh[..., :keep_k, :])]
        scene = GaussianScene(*flat)
        return scene.select(scene.opacities >= min_opacity) if min_opacity > 0 else scene


# --------------------------------------------------------------------------- the network
def default_intrinsics(batch: int = 1, device=None) -> torch.Tensor:
    """``[batch, 2, 3, 3]`` copies of :data:`DEFAULT_INTRINSICS`."""
    return torch.tensor(DEFAULT_INTRINSICS, device=device).expand(batch, 2, 3, 3)


def prepare_images(first: torch.Tensor, second: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """The release demo's input preparation: each ``[H,W,C]`` RGB(A) 0..1 photo (ComfyUI layout) is
    centre-cropped to a square (offsets ``(W - m) // 2``, ``(H - m) // 2``, ``m = min(H, W)``; alpha
    dropped) and resized to ``size`` with bilinear interpolation (``align_corners=False``, no
    antialiasing). Returns ``[1, 2, 3, size, size]`` for :meth:`NoPoSplat.forward`."""
    out = []
    for image in (first, second):
        if image.dim() != 3 or image.shape[-1] not in (3, 4):
            raise ValueError(f"prepare_images: expected [H,W,3|4] images, got {list(image.shape)}")
        h, w = image.shape[:2]
        m = min(h, w)
        top, left = (h - m) // 2, (w - m) // 2
        square = image[top:top + m, left:left + m, :3].permute(2, 0, 1)[None].float()
        out.append(F.interpolate(square, size=(size, size), mode="bilinear", align_corners=False)[0])
    return torch.stack(out)[None]


class NoPoSplat(nn.Module):
    """The ``encoder`` of the NoPoSplat checkpoint (see the module docstring)."""

    def __init__(self, cfg: NoPoSplatConfig = NoPoSplatConfig()):
        super().__init__()
        self.cfg = cfg
        self.backbone = CroCoBackbone(cfg)
        self.downstream_head1 = PixelHead(cfg, "points", 3)
        self.downstream_head2 = PixelHead(cfg, "points", 3)
        self.gaussian_param_head = PixelHead(cfg, "gaussians", cfg.gaussian_channels)
        self.gaussian_param_head2 = PixelHead(cfg, "gaussians", cfg.gaussian_channels)

    def forward(self, images: torch.Tensor, intrinsics: Optional[torch.Tensor] = None) -> NoPoSplatOutput:
        """``images [B,2,3,H,W]`` RGB in 0..1 (H, W multiples of the patch size; the release: 512),
        ``intrinsics [B,2,3,3]`` normalised (default :func:`default_intrinsics`)."""
        if images.dim() != 5 or images.shape[1] != 2 or images.shape[2] != 3:
            raise ValueError(f"NoPoSplat: images must be [B,2,3,H,W], got {list(images.shape)}")
        b, _, _, h, w = images.shape
        if h % self.cfg.patch_size or w % self.cfg.patch_size:
            raise ValueError(f"NoPoSplat: image size {h}x{w} is not a multiple of the patch size {self.cfg.patch_size}")
        if intrinsics is None:
            intrinsics = default_intrinsics(b, images.device)
        dtype = self.backbone.patch_embed.proj.weight.dtype
        normed = (images * 2 - 1).to(dtype)
        layers1, layers2 = self.backbone(normed[:, 0], normed[:, 1], intrinsics[:, 0], intrinsics[:, 1])
        head_dtype = self.downstream_head1.dpt.head[0].weight.dtype
        results = []
        for view, layers, points_head, gaussian_head in (
                (0, layers1, self.downstream_head1, self.gaussian_param_head),
                (1, layers2, self.downstream_head2, self.gaussian_param_head2)):
            layers = [t.to(head_dtype) for t in layers]
            points = points_from_head(points_head(layers, (h, w)).permute(0, 2, 3, 1))
            raw = gaussian_head(layers, (h, w), normed[:, view].to(head_dtype)).permute(0, 2, 3, 1)
            results.append((points, gaussians_from_head(raw, self.cfg.sh_degree)))
        stack = lambda values: torch.stack(values, 1)  # noqa: E731
        return NoPoSplatOutput(means=stack([r[0] for r in results]),
                               **{k: stack([r[1][k] for r in results]) for k in results[0][1]})


def duplicate_key_pairs(state_keys) -> list[tuple[str, str]]:
    """``(scratch.layerK_rn.weight, scratch.layer_rn.(K-1).weight)`` key pairs: the checkpoint holds
    each DPT projection under both names (one module), so the two must be equal."""
    pairs = []
    for key in state_keys:
        if ".scratch.layer_rn." in key:
            head, rest = key.split(".scratch.layer_rn.", 1)
            index, tail = rest.split(".", 1)
            pairs.append((f"{head}.scratch.layer{int(index) + 1}_rn.{tail}", key))
    return pairs


__all__ = ["NoPoSplat", "prepare_images", "NoPoSplatConfig", "NoPoSplatOutput", "rope_2d", "patch_positions", "points_from_head",
           "gaussians_from_head", "sh_mask", "default_intrinsics", "duplicate_key_pairs", "DEFAULT_INTRINSICS",
           "NEAR", "FAR", "IMAGE_SIZE", "HEAD_DIM"]
