"""VideoMV's text-to-multi-view UNet: ModelScope-T2V on diffusers plus a per-view camera MLP.

VideoMV's T2V network (VGen's ``UNetSD_T2VBase`` with ``use_camera_condition``) is the
ModelScope-T2V UNet, i.e. diffusers' :class:`~diffusers.UNet3DConditionModel`, plus one
module: ``camera_embedding`` = Linear(16, E), SiLU, Linear(E, E) with E the time-embedding
width (``4 * block_out_channels[0]`` = 1280 at full size; the last layer starts at zero).
Its output for each view is added to the timestep embedding *after* that embedding is
repeated per frame, so every view gets its own time-plus-camera embedding, and that
embedding feeds every ResBlock. diffusers computes the embedding once per batch item and
repeats it inside ``forward``, so :class:`VideoMVT2VUNet` overrides ``forward`` (reusing
the parent's modules and its semantics for everything else).

Conventions
- ``sample`` ``[B, C, F, H, W]`` latents (diffusers' UNet3D layout); inside the network
  the frames of one batch item are contiguous: row ``b * F + f`` is frame ``f`` of item ``b``.
- ``camera``: per view, the 16 floats of the row-major flattened 4x4 camera-to-world
  matrix (bottom row ``[0, 0, 0, 1]`` included) in VideoMV's axis convention (OpenGL
  orbit converted to Blender z-up, then the world rotated 90 degrees about z; see the
  reference notes, section 2), given as ``[B, F, 16]`` or ``[B * F, 16]`` (same order).
- ``encoder_hidden_states`` ``[B, L, D]`` text tokens (OpenCLIP ViT-H penultimate layer,
  L = 77, D = 1024 at full size).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from diffusers import UNet3DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_3d_condition import UNet3DConditionOutput
from diffusers.utils.torch_utils import maybe_adjust_dtype_for_device

CAMERA_DIM = 16
"""Floats per view in the camera input: a flattened 4x4 camera-to-world matrix."""


def config_for_release() -> dict:
    """``__init__`` arguments of the released T2V UNet (``t2v_00333000.pth``).

    VGen's ``dim`` 320, ``dim_mult`` [1, 2, 4, 4], ``num_res_blocks`` 2, ``head_dim`` 64,
    ``context_dim`` 1024, attention at the three finest levels: diffusers' defaults.
    """
    return {
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
        "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "cross_attention_dim": 1024,
        "attention_head_dim": 64,
        "camera_dim": CAMERA_DIM,
    }


def config_for_tests() -> dict:
    """A tiny configuration with the release's block structure (for tests and smoke weights).

    Same four levels, block types and layers per level as the release; 16/32/32/32
    channels, 8 norm groups, head width 8 (so 2-4 spatial/temporal heads and the 8-head
    ``transformer_in``), a 12-wide text context.
    """
    config = config_for_release()
    config.update(block_out_channels=(16, 32, 32, 32), norm_num_groups=8, cross_attention_dim=12,
                  attention_head_dim=8)
    return config


class VideoMVT2VUNet(UNet3DConditionModel):
    """ModelScope-T2V UNet with VideoMV's per-view camera embedding.

    State dict: the stock ``UNet3DConditionModel`` keys plus ``camera_embedding.0`` (Linear
    ``camera_dim -> 4 * block_out_channels[0]``) and ``camera_embedding.2`` (Linear, square,
    zero-initialised so a fresh model equals the stock UNet). Convert VideoMV's VGen-layout
    checkpoints with :mod:`.convert`.
    """

    _skip_layerwise_casting_patterns = ["norm", "time_embedding", "camera_embedding"]

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types: tuple[str, ...] = (
            "UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1024,
        attention_head_dim: int | tuple[int] = 64,
        camera_dim: int = CAMERA_DIM,
    ):
        super().__init__(
            sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
            down_block_types=down_block_types, up_block_types=up_block_types,
            block_out_channels=block_out_channels, layers_per_block=layers_per_block,
            downsample_padding=downsample_padding, mid_block_scale_factor=mid_block_scale_factor,
            act_fn=act_fn, norm_num_groups=norm_num_groups, norm_eps=norm_eps,
            cross_attention_dim=cross_attention_dim, attention_head_dim=attention_head_dim,
        )
        time_embed_dim = block_out_channels[0] * 4
        self.camera_embedding = nn.Sequential(
            nn.Linear(camera_dim, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim))
        nn.init.zeros_(self.camera_embedding[2].weight)
        nn.init.zeros_(self.camera_embedding[2].bias)

    # ------------------------------------------------------------------ embedding
    def frame_embedding(self, timestep: torch.Tensor | float | int, batch_size: int, num_frames: int,
                        camera: torch.Tensor | None = None, timestep_cond: torch.Tensor | None = None,
                        device: torch.device | None = None) -> torch.Tensor:
        """Per-view time(+camera) embedding ``[batch_size * num_frames, 4 * block_out_channels[0]]``.

        ``timestep``: a number, a 0-d tensor, or ``[batch_size]``. The time embedding of
        item ``b`` is repeated for its ``num_frames`` rows, then ``camera_embedding(camera)``
        is added row by row (``camera`` ``[B, F, camera_dim]`` or ``[B * F, camera_dim]``,
        frames contiguous per item). ``camera=None`` gives the plain ModelScope embedding.
        """
        device = self.device if device is None else device
        timesteps = timestep
        if not torch.is_tensor(timesteps):
            dtype = maybe_adjust_dtype_for_device(torch.float64 if isinstance(timestep, float) else torch.int64, device)
            timesteps = torch.tensor([timesteps], dtype=dtype, device=device)
        elif timesteps.ndim == 0:
            timesteps = timesteps[None].to(device)
        timesteps = timesteps.expand(batch_size)

        # the sinusoid is float32 whatever the network's dtype
        t_emb = self.time_proj(timesteps).to(dtype=self.dtype)
        emb = self.time_embedding(t_emb, timestep_cond)
        emb = emb.repeat_interleave(num_frames, dim=0, output_size=emb.shape[0] * num_frames)
        if camera is not None:
            emb = emb + self.camera_embedding(self._camera_rows(camera, batch_size, num_frames).to(emb))
        return emb

    def _camera_rows(self, camera: torch.Tensor, batch_size: int, num_frames: int) -> torch.Tensor:
        width = self.config.camera_dim
        rows = batch_size * num_frames
        if tuple(camera.shape) == (batch_size, num_frames, width):
            return camera.reshape(rows, width)
        if tuple(camera.shape) == (rows, width):
            return camera
        raise ValueError(f"camera must be [B, F, {width}] = [{batch_size}, {num_frames}, {width}] or "
                         f"[B*F, {width}] = [{rows}, {width}] (one flattened 4x4 camera-to-world per view); "
                         f"got {list(camera.shape)}")

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        camera: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet3DConditionOutput | tuple[torch.Tensor]:
        """Noise prediction ``[B, out_channels, F, H, W]`` for ``sample`` ``[B, C, F, H, W]``.

        ``encoder_hidden_states`` ``[B, L, cross_attention_dim]`` (shared by the frames of an
        item); ``camera`` ``[B, F, camera_dim]`` or ``[B * F, camera_dim]``: one flattened
        row-major 4x4 camera-to-world per view, in VideoMV's axis convention (module doc);
        ``None`` leaves the camera MLP out. The other arguments are the parent's, with the
        same meaning (``class_labels`` is dropped: the network has no class embedding).
        """
        batch_size, num_frames = sample.shape[0], sample.shape[2]
        emb = self.frame_embedding(timestep, batch_size, num_frames, camera, timestep_cond, device=sample.device)
        sample = self.run_blocks(sample, emb, encoder_hidden_states, attention_mask=attention_mask,
                                 cross_attention_kwargs=cross_attention_kwargs,
                                 down_block_additional_residuals=down_block_additional_residuals,
                                 mid_block_additional_residual=mid_block_additional_residual)
        if not return_dict:
            return (sample,)
        return UNet3DConditionOutput(sample=sample)

    def run_blocks(
        self,
        sample: torch.Tensor,
        emb: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The UNet body for a per-frame embedding ``emb`` ``[B * F, E]`` (see :meth:`frame_embedding`).

        Same steps as ``UNet3DConditionModel.forward`` after its embedding: ``conv_in``,
        ``transformer_in``, down / mid / up blocks (``num_frames`` = F, upsample sizes
        forwarded when H or W is not a multiple of the total upsampling factor), then
        ``conv_norm_out`` / ``conv_act`` / ``conv_out``. Returns ``[B, out_channels, F, H, W]``.
        """
        batch_size, _, num_frames = sample.shape[:3]
        if emb.shape[0] != batch_size * num_frames:
            raise ValueError(f"emb has {emb.shape[0]} rows; expected batch * frames = {batch_size * num_frames}")
        overall_up_factor = 2 ** self.num_upsamplers
        forward_upsample_size = any(s % overall_up_factor != 0 for s in sample.shape[-2:])
        upsample_size = None

        if attention_mask is not None:
            attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        encoder_hidden_states = encoder_hidden_states.repeat_interleave(
            num_frames, dim=0, output_size=encoder_hidden_states.shape[0] * num_frames)

        # pre-process: [B, C, F, H, W] -> [B*F, C, H, W], frames contiguous per item
        sample = sample.permute(0, 2, 1, 3, 4).reshape((batch_size * num_frames, -1) + sample.shape[3:])
        sample = self.conv_in(sample)
        sample = self.transformer_in(sample, num_frames=num_frames, cross_attention_kwargs=cross_attention_kwargs,
                                     return_dict=False)[0]

        # down
        down_block_res_samples = (sample,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res_samples = block(hidden_states=sample, temb=emb, encoder_hidden_states=encoder_hidden_states,
                                            attention_mask=attention_mask, num_frames=num_frames,
                                            cross_attention_kwargs=cross_attention_kwargs)
            else:
                sample, res_samples = block(hidden_states=sample, temb=emb, num_frames=num_frames)
            down_block_res_samples += res_samples
        if down_block_additional_residuals is not None:
            down_block_res_samples = tuple(
                res + extra for res, extra in zip(down_block_res_samples, down_block_additional_residuals))

        # mid
        sample = self.mid_block(sample, emb, encoder_hidden_states=encoder_hidden_states,
                                attention_mask=attention_mask, num_frames=num_frames,
                                cross_attention_kwargs=cross_attention_kwargs)
        if mid_block_additional_residual is not None:
            sample = sample + mid_block_additional_residual

        # up
        for i, block in enumerate(self.up_blocks):
            res_samples = down_block_res_samples[-len(block.resnets):]
            down_block_res_samples = down_block_res_samples[:-len(block.resnets)]
            if i < len(self.up_blocks) - 1 and forward_upsample_size:
                upsample_size = down_block_res_samples[-1].shape[2:]
            if getattr(block, "has_cross_attention", False):
                sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res_samples,
                               encoder_hidden_states=encoder_hidden_states, upsample_size=upsample_size,
                               attention_mask=attention_mask, num_frames=num_frames,
                               cross_attention_kwargs=cross_attention_kwargs)
            else:
                sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res_samples,
                               upsample_size=upsample_size, num_frames=num_frames)

        # post-process: [B*F, C, H, W] -> [B, C, F, H, W]
        if self.conv_norm_out is not None:
            sample = self.conv_act(self.conv_norm_out(sample))
        sample = self.conv_out(sample)
        return sample.reshape((batch_size, num_frames) + sample.shape[1:]).permute(0, 2, 1, 3, 4)
