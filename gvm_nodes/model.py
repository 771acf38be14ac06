"""GVM's network: the SVD spatio-temporal UNet without added-time conditioning.

GVM's UNet is diffusers' ``UNetSpatioTemporalConditionModel`` with ``add_time_proj`` /
``add_embedding`` removed (no fps / motion-bucket / noise-augmentation ids) and an
unused class-embedding option. Its released ``unet/`` state dict therefore has the stock
diffusers key names minus ``add_embedding.*``. :class:`GVMUNet` subclasses the stock
model and replaces the two added-time modules by parameter-free zeros, so the stock
forward is reused unchanged and the state dict matches the release exactly.

Tensor layout (as in diffusers): ``sample`` ``[B, F, C, h, w]`` latents (C = 8: the
current estimate and the image latent), output ``[B, F, 4, h, w]``.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn
from diffusers import UNetSpatioTemporalConditionModel
from diffusers.configuration_utils import register_to_config


class _ZeroAddedTimeEmbedding(nn.Module):
    """Stands in for ``add_embedding``: returns zeros ``[B, dim]`` (no parameters)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, time_embeds: torch.Tensor) -> torch.Tensor:
        return time_embeds.new_zeros(time_embeds.shape[0], self.dim)


# Config keys of the original GVM class that carry no weights in the release.
_IGNORED_CONFIG_KEYS = {"addition_time_embed_dim", "projection_class_embeddings_input_dim", "act_fn"}


class GVMUNet(UNetSpatioTemporalConditionModel):
    """SVD-architecture UNet with no added-time conditioning (GVM's network).

    Any ``cross_attention_dim`` works; GVM's pipeline feeds a single all-zero context
    token of that width.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 8,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types: tuple[str, ...] = (
            "UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int | tuple[int, ...] = 2,
        cross_attention_dim: int | tuple[int, ...] = 1024,
        transformer_layers_per_block: int | tuple = 1,
        num_attention_heads: int | tuple[int, ...] = (5, 10, 20, 20),
        num_frames: int = 25,
    ):
        super().__init__(
            sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
            down_block_types=down_block_types, up_block_types=up_block_types,
            block_out_channels=block_out_channels, layers_per_block=layers_per_block,
            cross_attention_dim=cross_attention_dim,
            transformer_layers_per_block=transformer_layers_per_block,
            num_attention_heads=num_attention_heads, num_frames=num_frames,
            # Tiny placeholders: both modules are replaced right below.
            addition_time_embed_dim=1, projection_class_embeddings_input_dim=1,
        )
        self.add_time_proj = nn.Identity()
        self.add_embedding = _ZeroAddedTimeEmbedding(block_out_channels[0] * 4)

    @property
    def context_dim(self) -> int:
        """Width of the (all-zero) cross-attention context token."""
        dim = self.config.cross_attention_dim
        return int(dim if isinstance(dim, int) else dim[0])

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                return_dict: bool = True):
        """``sample`` ``[B,F,C,h,w]``, ``encoder_hidden_states`` ``[B,1,context_dim]``."""
        no_ids = sample.new_zeros(sample.shape[0], 1)
        return super().forward(sample, timestep, encoder_hidden_states, added_time_ids=no_ids,
                               return_dict=return_dict)

    @classmethod
    def config_from_release(cls, config: dict) -> dict:
        """Arguments for ``__init__`` from a released ``unet/config.json``.

        Keys of the original class that carry no weights are dropped; a config that asks
        for the class embedding (never used by GVM, and with weights we would not load)
        is refused, as is any key this class does not know.
        """
        if config.get("class_embed_type") is not None or config.get("num_class_embeds") is not None:
            raise ValueError("unet/config.json enables a class embedding (class_embed_type/num_class_embeds); "
                             "GVM's released UNet has none. Is this a different model?")
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        out, unknown = {}, []
        for key, value in config.items():
            if key.startswith("_") or key in _IGNORED_CONFIG_KEYS or key in ("class_embed_type", "num_class_embeds"):
                continue
            if key in accepted:
                out[key] = tuple(value) if isinstance(value, list) else value
            else:
                unknown.append(key)
        if unknown:
            raise ValueError(f"unet/config.json has keys an SVD-architecture UNet does not take: {sorted(unknown)}. "
                             "Is this a different model?")
        if out.get("in_channels", 8) != 8 or out.get("out_channels", 4) != 4:
            raise ValueError(f"unet/config.json has in_channels={out.get('in_channels')}, "
                             f"out_channels={out.get('out_channels')}; GVM's UNet has 8 and 4. "
                             "Is this a different model (e.g. the stock SVD UNet)?")
        return out
