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

The transformer blocks come from :mod:`..nodes.networks.croco`, the DPT trunk and the points
heads from :mod:`..nodes.networks.dpt` (shared with other CroCo-family models); this module
adds the NoPoSplat parts (intrinsics token, Gaussian head, activations).

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

from ..nodes.networks.croco import NORM_EPS, DecoderBlock, EncoderBlock, PatchEmbed
from ..nodes.networks.dpt import DPTAdapter, DPTTrunk, PixelHead, upsample2x
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
    def dpt_dims_in(self) -> tuple[int, int, int, int]:
        """Token widths of the layers :attr:`hooks` (the encoder's, then three decoder layers)."""
        return (self.enc_dim, self.dec_dim, self.dec_dim, self.dec_dim)

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


# --------------------------------------------------------------------------- backbone
class CroCoBackbone(nn.Module):
    """NoPoSplat's CroCo backbone: the siamese encoder with the intrinsics token, then the two
    cross-attending decoders (``dec_blocks`` for view 1, ``dec_blocks2`` for view 2)."""

    def __init__(self, cfg: NoPoSplatConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.enc_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dec_dim))
        self.enc_blocks = nn.ModuleList(EncoderBlock(cfg.enc_dim, cfg.enc_heads, cfg.enc_mlp, cfg.rope_base, NORM_EPS)
                                        for _ in range(cfg.enc_depth))
        self.enc_norm = nn.LayerNorm(cfg.enc_dim, eps=NORM_EPS)
        self.intrinsic_encoder = nn.Linear(9, cfg.enc_dim)
        self.decoder_embed = nn.Linear(cfg.enc_dim, cfg.dec_dim)
        for name in ("dec_blocks", "dec_blocks2"):
            setattr(self, name, nn.ModuleList(
                DecoderBlock(cfg.dec_dim, cfg.dec_heads, cfg.dec_mlp, cfg.rope_base, NORM_EPS)
                for _ in range(cfg.dec_depth)))
        self.dec_norm = nn.LayerNorm(cfg.dec_dim, eps=NORM_EPS)

    def encode(self, images: torch.Tensor, intrinsics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens ``[B, N + 1, E]`` and positions ``[B, N + 1, 2]`` of normalised ``images [B,3,H,W]``
        with ``intrinsics [B,3,3]``; the last token is the intrinsics token."""
        x, pos = self.patch_embed(images)
        b = x.shape[0]
        token = self.intrinsic_encoder(intrinsics.reshape(b, 1, 9).to(x.dtype))
        token_pos = torch.tensor([images.shape[-2] // self.cfg.patch_size, 0], device=x.device).expand(b, 1, 2)
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
class GaussianDPTAdapter(DPTTrunk):
    """NoPoSplat's ``dpt_gs`` head: the :class:`DPTTrunk` output upsampled 2x to full resolution,
    plus ``input_merger`` (7x7 conv + ReLU) of the normalised image, then ``head``: a 3x3 conv
    (no bias), ReLU and a 1x1 conv to ``out_channels`` (``head.1``/``head.3`` are identities, as
    in the checkpoint's numbering)."""

    def __init__(self, cfg: NoPoSplatConfig, out_channels: int):
        super().__init__(cfg.dpt_dims_in, cfg.dpt_layer_dims, cfg.dpt_features, cfg.hooks)
        feat = cfg.dpt_features
        self.input_merger = nn.Sequential(nn.Conv2d(3, feat, 7, padding=3), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(feat, feat, 3, padding=1, bias=False), nn.Identity(), nn.ReLU(),
                                  nn.Identity(), nn.Conv2d(feat, out_channels, 1))

    def forward(self, layers: list[torch.Tensor], image_size: tuple[int, int], image: torch.Tensor) -> torch.Tensor:
        """Token layers ``[B, N, C]`` and the normalised ``image [B, 3, H, W]`` -> ``[B, out_channels, H, W]``."""
        path = upsample2x(self.fuse(layers, image_size)) + self.input_merger(image)
        return self.head(path)


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
        points = lambda: DPTAdapter(cfg.dpt_dims_in, cfg.dpt_layer_dims, cfg.dpt_features, cfg.hooks,  # noqa: E731
                                    cfg.dpt_last_dim, 3)
        self.downstream_head1, self.downstream_head2 = PixelHead(points()), PixelHead(points())
        self.gaussian_param_head = PixelHead(GaussianDPTAdapter(cfg, cfg.gaussian_channels))
        self.gaussian_param_head2 = PixelHead(GaussianDPTAdapter(cfg, cfg.gaussian_channels))

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


__all__ = ["NoPoSplat", "prepare_images", "NoPoSplatConfig", "NoPoSplatOutput", "points_from_head",
           "gaussians_from_head", "sh_mask", "default_intrinsics", "duplicate_key_pairs", "DEFAULT_INTRINSICS",
           "NEAR", "FAR", "IMAGE_SIZE", "HEAD_DIM"]
