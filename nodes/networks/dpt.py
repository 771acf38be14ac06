"""The DPT head of the CroCo family (DUSt3R's ``DPTOutputAdapter``): four token layers of a
ViT on a 16-pixel patch grid -> a feature pyramid -> fused upwards -> a per-pixel map.

Plain torch modules with DUSt3R's parameter names (``act_postprocess``, ``scratch.layerK_rn``,
``scratch.refinenetK.resConfUnit1/2``, ``out_conv``, ``head``), so DUSt3R-style checkpoints load
into them. Feature maps are ``[B, C, H, W]``; every 2x upsampling is bilinear with aligned
corners.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

PATCH_SIZE = 16
"""Patch size of the token grid the DPT trunk's reassembly (x4, x2, x1, /2) is built for."""


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, C, 2H, 2W]``, bilinear with ``align_corners=True`` (DPT's upsampling)."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class Upsample2x(nn.Module):
    """:func:`upsample2x` as a parameter-free module (a step of a ``nn.Sequential`` head)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, C, 2H, 2W]``."""
        return upsample2x(x)


class ResidualConvUnit(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))`` on ``[B, features, H, W]`` (3x3 convolutions with bias,
    padding 1)."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, features, H, W] -> [B, features, H, W]``."""
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """DPT fusion step: ``x + resConfUnit1(skip)`` (without a skip: ``x``) -> ``resConfUnit2`` ->
    2x bilinear (aligned corners) -> 1x1 ``out_conv``."""

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1, self.resConfUnit2 = ResidualConvUnit(features), ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x [B, features, H, W]`` and ``skip`` of the same shape -> ``[B, features, 2H, 2W]``."""
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        return self.out_conv(upsample2x(self.resConfUnit2(x)))


class DPTTrunk(nn.Module):
    """DPT reassembly and fusion of four token layers, without an output head.

    ``hooks``: the indices of the four layers read from the list given to :meth:`fuse`;
    ``dims_in``: their token widths; ``layer_dims``: the widths of the four pyramid levels;
    ``features``: the fusion width. Level ``i`` is a 1x1 conv of the token grid to
    ``layer_dims[i]`` then a resampling to 1/4, 1/8, 1/16, 1/32 of the image (4x4 stride-4
    transposed conv, 2x2 stride-2 transposed conv, none, 3x3 stride-2 conv), projected to
    ``features`` by the 3x3 bias-free ``scratch.layer{i+1}_rn``, also listed as
    ``scratch.layer_rn.i`` (one module, two names, as in the checkpoints). The ``refinenet4..1``
    :class:`FusionBlock` s fuse from the coarsest level up.
    """

    def __init__(self, dims_in: Sequence[int], layer_dims: Sequence[int], features: int, hooks: Sequence[int]):
        super().__init__()
        if not (len(dims_in) == len(layer_dims) == len(hooks) == 4):
            raise ValueError("DPTTrunk: dims_in, layer_dims and hooks need 4 entries each")
        lay = tuple(layer_dims)
        self.hooks = tuple(hooks)
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(dims_in[0], lay[0], 1), nn.ConvTranspose2d(lay[0], lay[0], 4, stride=4)),
            nn.Sequential(nn.Conv2d(dims_in[1], lay[1], 1), nn.ConvTranspose2d(lay[1], lay[1], 2, stride=2)),
            nn.Sequential(nn.Conv2d(dims_in[2], lay[2], 1)),
            nn.Sequential(nn.Conv2d(dims_in[3], lay[3], 1), nn.Conv2d(lay[3], lay[3], 3, stride=2, padding=1)),
        ])
        self.scratch = nn.Module()
        projections = [nn.Conv2d(lay[i], features, 3, padding=1, bias=False) for i in range(4)]
        for i, conv in enumerate(projections, 1):
            setattr(self.scratch, f"layer{i}_rn", conv)
        self.scratch.layer_rn = nn.ModuleList(projections)
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", FusionBlock(features))

    def fuse(self, layers: Sequence[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        """``layers``: token layers ``[B, N, C]`` (``N = (H/16)(W/16)``, row-major), of which the
        ``hooks`` are read; ``image_size``: ``(H, W)``. Returns ``[B, features, H/2, W/2]``."""
        h, w = image_size[0] // PATCH_SIZE, image_size[1] // PATCH_SIZE
        maps = []
        for i, hook in enumerate(self.hooks):
            tokens = layers[hook]
            grid = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)
            maps.append(self.scratch.layer_rn[i](self.act_postprocess[i](grid)))
        path = self.scratch.refinenet4(maps[3])[:, :, :maps[2].shape[2], :maps[2].shape[3]]
        path = self.scratch.refinenet3(path, maps[2])
        path = self.scratch.refinenet2(path, maps[1])
        return self.scratch.refinenet1(path, maps[0])


class DPTAdapter(DPTTrunk):
    """:class:`DPTTrunk` plus DUSt3R's regression ``head``: 3x3 conv to ``features / 2``, 2x
    upsampling, 3x3 conv to ``last_dim``, ReLU, 1x1 conv to ``out_channels`` (all with bias)."""

    def __init__(self, dims_in: Sequence[int], layer_dims: Sequence[int], features: int, hooks: Sequence[int],
                 last_dim: int, out_channels: int):
        super().__init__(dims_in, layer_dims, features, hooks)
        self.head = nn.Sequential(nn.Conv2d(features, features // 2, 3, padding=1), Upsample2x(),
                                  nn.Conv2d(features // 2, last_dim, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(last_dim, out_channels, 1))

    def forward(self, layers: Sequence[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        """Token layers ``[B, N, C]`` of an ``image_size = (H, W)`` image -> ``[B, out_channels, H, W]``."""
        return self.head(self.fuse(layers, image_size))


class PixelHead(nn.Module):
    """A per-pixel head holding its DPT module as ``dpt`` (DUSt3R's ``PixelwiseTaskWithDPT``
    nesting, so the checkpoints' ``<head>.dpt.*`` keys load). Calls it unchanged; the caller
    maps the raw channels (depth mode, confidence, ...)."""

    def __init__(self, dpt: nn.Module):
        super().__init__()
        self.dpt = dpt

    def forward(self, *args, **kwargs) -> torch.Tensor:
        """Whatever ``dpt`` returns for these arguments (``[B, channels, H, W]`` for the DPT modules)."""
        return self.dpt(*args, **kwargs)
