"""VideoMV's UNets on diffusers: ModelScope-T2V / I2VGen-XL plus a per-view camera MLP.

VideoMV's two networks (VGen's ``UNetSD_T2VBase`` and ``UNetSD_I2VGen`` with
``use_camera_condition``) are diffusers' :class:`~diffusers.UNet3DConditionModel`
(text-to-multi-view) and :class:`~diffusers.I2VGenXLUNet` (image-to-multi-view), each plus
one module: ``camera_embedding`` = Linear(16, E), SiLU, Linear(E, E) with E the
time-embedding width (``4 * block_out_channels[0]`` = 1280 at full size; the last layer
starts at zero). Its output for each view is added to the timestep embedding *after* that
embedding is repeated per frame, so every view gets its own time-plus-camera embedding,
and that embedding feeds every ResBlock. diffusers computes the embedding once per batch
item and repeats it inside ``forward`` (a hook cannot change that), so both subclasses
override ``forward``; the camera logic and the UNet body they share live once, in
:class:`PerViewCameraMixin`.

Conventions
- ``sample`` ``[B, C, F, H, W]`` latents (diffusers' UNet3D layout); inside the network
  the frames of one batch item are contiguous: row ``b * F + f`` is frame ``f`` of item ``b``.
- ``camera``: per view, the 16 floats of the row-major flattened 4x4 camera-to-world
  matrix (bottom row ``[0, 0, 0, 1]`` included) in VideoMV's axis convention (OpenGL
  orbit converted to Blender z-up, then the world rotated 90 degrees about z; see the
  reference notes, section 2), given as ``[B, F, 16]`` or ``[B * F, 16]`` (same order).
- ``encoder_hidden_states`` ``[B, L, D]`` text tokens (OpenCLIP ViT-H penultimate layer,
  L = 77, D = 1024 at full size).
- I2V only: ``image_latents`` the VAE latent of the input image (scaled by 0.18215) and
  ``image_embeddings`` its projected OpenCLIP image embedding ``[B, D]`` (see
  :class:`VideoMVI2VUNet`).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from diffusers import I2VGenXLUNet, UNet3DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_3d_condition import UNet3DConditionOutput
from diffusers.utils.torch_utils import maybe_adjust_dtype_for_device

CAMERA_DIM = 16
"""Floats per view in the camera input: a flattened 4x4 camera-to-world matrix."""

TARGET_FPS = 8
"""The frame rate VideoMV's I2V network is always conditioned on (``target_fps``)."""


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


def i2v_config_for_release() -> dict:
    """``__init__`` arguments of the released I2V UNet (``i2v_00882000.pth``).

    The backbone settings are the T2V release's (:func:`config_for_release`: VGen's I2V
    yaml has the same ``dim``, ``dim_mult``, ``num_res_blocks``, ``head_dim``, 8 heads in
    ``transformer_in``, ``context_dim`` 1024); ``in_channels`` 4 is also the image-latent
    width and the number of global image tokens.
    """
    return config_for_release()


def i2v_config_for_tests() -> dict:
    """The tiny :func:`config_for_tests` sizes for :class:`VideoMVI2VUNet` (12-wide context)."""
    return config_for_tests()


def image_latents_for_frames(latent: torch.Tensor, num_frames: int) -> torch.Tensor:
    """VGen's per-frame image input: the image latent, then constant frame-position planes.

    ``latent`` ``[B, C, H, W]`` or ``[B, C, 1, H, W]`` (the VAE latent of the input image).
    Returns ``[B, C, num_frames, H, W]``: frame 0 is ``latent``, frame ``k >= 1`` is filled
    with ``k / (num_frames - 1)`` (VGen's ``mask_pos``; diffusers' I2VGen-XL pipeline builds
    the same tensor).
    """
    if latent.ndim == 5 and latent.shape[2] == 1:
        latent = latent[:, :, 0]
    if latent.ndim != 4:
        raise ValueError(f"image latent must be [B, C, H, W] or [B, C, 1, H, W]; got {list(latent.shape)}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1; got {num_frames}")
    frames = [latent]
    for k in range(1, num_frames):
        frames.append(torch.full_like(latent, k / (num_frames - 1)))
    return torch.stack(frames, dim=2)


def _as_batch(value: torch.Tensor | float | int, batch_size: int, device: torch.device) -> torch.Tensor:
    """A timestep-like value (number, 0-d, ``[1]`` or ``[batch_size]``) as a ``[batch_size]`` tensor
    (diffusers' conventions: int64 for ints, float64 for floats where the device has it)."""
    if not torch.is_tensor(value):
        dtype = maybe_adjust_dtype_for_device(torch.float64 if isinstance(value, float) else torch.int64, device)
        value = torch.tensor([value], dtype=dtype, device=device)
    elif value.ndim == 0:
        value = value[None].to(device)
    return value.expand(batch_size)


class PerViewCameraMixin:
    """VideoMV's per-view camera embedding and the UNet body that consumes a per-view embedding.

    Mixed into a diffusers 3D UNet (``UNet3DConditionModel`` / ``I2VGenXLUNet``): uses the
    host's ``conv_in``, ``transformer_in``, ``down_blocks``, ``mid_block``, ``up_blocks``,
    ``conv_norm_out``/``conv_act``/``conv_out`` and ``config.camera_dim``.
    """

    def _add_camera_embedding(self, camera_dim: int, time_embed_dim: int) -> None:
        """``camera_embedding``: Linear(camera_dim, E), SiLU, Linear(E, E), the last layer zero
        (so a fresh model equals its stock diffusers parent)."""
        self.camera_embedding = nn.Sequential(
            nn.Linear(camera_dim, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim))
        nn.init.zeros_(self.camera_embedding[2].weight)
        nn.init.zeros_(self.camera_embedding[2].bias)

    def _per_view(self, item_emb: torch.Tensor, num_frames: int, camera: torch.Tensor | None) -> torch.Tensor:
        """``item_emb`` ``[B, E]`` repeated for the ``num_frames`` rows of each item, then
        ``camera_embedding(camera)`` added row by row -> ``[B * num_frames, E]``."""
        emb = item_emb.repeat_interleave(num_frames, dim=0, output_size=item_emb.shape[0] * num_frames)
        if camera is not None:
            emb = emb + self.camera_embedding(self._camera_rows(camera, item_emb.shape[0], num_frames).to(emb))
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
        """The UNet body for a per-view embedding ``emb`` ``[B * F, E]``.

        ``sample`` ``[B, conv_in channels, F, H, W]`` (for I2V the noisy latent and the image
        features already concatenated); ``encoder_hidden_states`` ``[B, L, D]``, repeated per
        frame here. Same steps as the diffusers parents' ``forward`` after their embedding:
        ``conv_in``, ``transformer_in``, down / mid / up blocks (``num_frames`` = F, upsample
        sizes forwarded when H or W is not a multiple of the total upsampling factor), then
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


class VideoMVT2VUNet(PerViewCameraMixin, UNet3DConditionModel):
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
        self._add_camera_embedding(camera_dim, block_out_channels[0] * 4)

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
        timesteps = _as_batch(timestep, batch_size, device)
        # the sinusoid is float32 whatever the network's dtype
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=self.dtype), timestep_cond)
        return self._per_view(emb, num_frames, camera)

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


class VideoMVI2VUNet(PerViewCameraMixin, I2VGenXLUNet):
    """I2VGen-XL UNet with VideoMV's per-view camera embedding (the image-to-multi-view network).

    Inputs besides the noisy latent: the image's VAE latent, which enters twice -- through
    ``image_latents_proj_in`` (3 convs) and ``image_latents_temporal_encoder`` (a one-layer
    transformer over frames) as ``in_channels`` extra channels of ``conv_in`` (it takes
    ``2 * in_channels``), and through ``image_latents_context_embedding`` as context tokens
    -- and its CLIP image embedding, which ``context_embedding`` turns into ``in_channels``
    global context tokens. The time embedding gets ``fps_embedding`` of the frame rate
    (always 8 in VideoMV), then per view the camera MLP.

    State dict: the stock ``I2VGenXLUNet`` keys plus ``camera_embedding.{0,2}`` (as in
    :class:`VideoMVT2VUNet`). VideoMV's original adds the image features to the input
    twice; weights converted by :func:`.convert.convert_i2v` carry that in a doubled
    ``conv_in.weight[:, in_channels:]`` (see :func:`.convert.fold_image_concat`), so this
    network computes the original's function with diffusers' single addition.
    """

    _skip_layerwise_casting_patterns = ["norm", "time_embedding", "fps_embedding", "camera_embedding"]

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
        norm_num_groups: int | None = 32,
        cross_attention_dim: int = 1024,
        attention_head_dim: int | tuple[int] = 64,
        camera_dim: int = CAMERA_DIM,
    ):
        super().__init__(
            sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
            down_block_types=down_block_types, up_block_types=up_block_types,
            block_out_channels=block_out_channels, layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups, cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
        )
        self._add_camera_embedding(camera_dim, block_out_channels[0] * 4)

    # ------------------------------------------------------------------ embeddings
    def frame_embedding(self, timestep: torch.Tensor | float | int, batch_size: int, num_frames: int,
                        camera: torch.Tensor | None = None, fps: torch.Tensor | float | int = TARGET_FPS,
                        timestep_cond: torch.Tensor | None = None, device: torch.device | None = None
                        ) -> torch.Tensor:
        """Per-view time+fps(+camera) embedding ``[batch_size * num_frames, 4 * block_out_channels[0]]``.

        ``timestep`` and ``fps``: numbers, 0-d tensors, or ``[batch_size]``; both go through
        the same sinusoid (``time_proj``), then ``time_embedding`` and ``fps_embedding``, and
        are summed per item; the sum is repeated for the item's ``num_frames`` rows and
        ``camera_embedding(camera)`` is added row by row (``camera`` as in
        :meth:`VideoMVT2VUNet.frame_embedding`; ``None`` leaves it out).
        """
        device = self.device if device is None else device
        timesteps = _as_batch(timestep, batch_size, device)
        rates = _as_batch(fps, batch_size, device)
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=self.dtype), timestep_cond)
        emb = emb + self.fps_embedding(self.time_proj(rates).to(dtype=self.dtype))
        return self._per_view(emb, num_frames, camera)

    def context_tokens(self, encoder_hidden_states: torch.Tensor, image_latents: torch.Tensor,
                       image_embeddings: torch.Tensor | None) -> torch.Tensor:
        """Cross-attention context ``[B, L + N + in_channels, D]`` (145 tokens at full size).

        In order: the text tokens ``encoder_hidden_states`` ``[B, L, D]``; the image-latent
        tokens, ``image_latents_context_embedding`` of frame 0 of ``image_latents``
        ``[B, C, F, H, W]`` (pooled to 32x32, two stride-2 convs: N = 64 tokens, row-major);
        the global image tokens, ``context_embedding(image_embeddings)`` (``[B, D]`` or
        ``[B, 1, D]``) split into ``in_channels`` tokens of width D. ``image_embeddings=None``
        leaves the global tokens out (as VGen does when no image embedding is given).
        """
        batch_size, width = encoder_hidden_states.shape[0], self.config.cross_attention_dim
        local = self.image_latents_context_embedding(image_latents[:, :, 0])
        tokens = [encoder_hidden_states, local.flatten(2).transpose(1, 2)]
        if image_embeddings is not None:
            if (image_embeddings.shape[0] != batch_size or image_embeddings.shape[-1] != width
                    or image_embeddings.numel() != batch_size * width):
                raise ValueError(f"image_embeddings must be [B, {width}] or [B, 1, {width}] with B = {batch_size}; "
                                 f"got {list(image_embeddings.shape)}")
            image_embeddings = image_embeddings.reshape(batch_size, width)
            tokens.append(self.context_embedding(image_embeddings).reshape(batch_size, self.config.in_channels, width))
        return torch.cat(tokens, dim=1)

    def image_features(self, image_latents: torch.Tensor) -> torch.Tensor:
        """The image-concat branch: ``[B, C, F, H, W]`` -> ``[B, in_channels, F, H, W]``.

        ``image_latents_proj_in`` on every frame, then ``image_latents_temporal_encoder``
        across the F frames of each pixel. ``forward`` concatenates the result to the noisy
        latent once (channels ``in_channels:2*in_channels`` of ``conv_in``).
        """
        batch_size, channels, num_frames, height, width = image_latents.shape
        frames = image_latents.permute(0, 2, 1, 3, 4).reshape(batch_size * num_frames, channels, height, width)
        feats = self.image_latents_proj_in(frames)
        out_channels = feats.shape[1]
        feats = feats.reshape(batch_size, num_frames, out_channels, height, width).permute(0, 3, 4, 1, 2)
        feats = self.image_latents_temporal_encoder(feats.reshape(batch_size * height * width, num_frames, out_channels))
        return feats.reshape(batch_size, height, width, num_frames, out_channels).permute(0, 4, 3, 1, 2)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        fps: torch.Tensor | float | int = TARGET_FPS,
        image_latents: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        camera: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> UNet3DConditionOutput | tuple[torch.Tensor]:
        """Model output ``[B, out_channels, F, H, W]`` (v-prediction for VideoMV) for ``sample`` ``[B, C, F, H, W]``.

        The parent's arguments, in the parent's order, plus ``camera``:
        - ``fps``: number or ``[B]``, default 8 (VideoMV's fixed ``target_fps``).
        - ``image_latents`` (required): ``[B, C, F, H, W]`` as diffusers' pipeline builds it
          (:func:`image_latents_for_frames`), or just the image latent ``[B, C, H, W]`` /
          ``[B, C, 1, H, W]``, expanded here with that function.
        - ``image_embeddings``: the CLIP image embedding ``[B, D]`` or ``[B, 1, D]`` (zeros for
          VideoMV's unconditional branch); ``None`` leaves the global image tokens out.
        - ``encoder_hidden_states`` (required): text tokens ``[B, L, D]``.
        - ``camera``: ``[B, F, camera_dim]`` or ``[B * F, camera_dim]`` (module doc); ``None``
          leaves the camera MLP out.
        """
        batch_size, channels, num_frames, height, width = sample.shape
        if encoder_hidden_states is None or image_latents is None:
            raise ValueError("VideoMVI2VUNet needs encoder_hidden_states (text tokens [B, L, D]) and "
                             "image_latents (the image's VAE latent)")
        if image_latents.ndim == 4 or (image_latents.ndim == 5 and image_latents.shape[2] == 1):
            image_latents = image_latents_for_frames(image_latents, num_frames)
        if image_latents.ndim != 5 or image_latents.shape[0] != batch_size or image_latents.shape[2:] != (
                num_frames, height, width):
            raise ValueError(f"image_latents must be [B, C, F, H, W] with B, F, H, W = {batch_size}, {num_frames}, "
                             f"{height}, {width} (or one frame [B, C, H, W]); got {list(image_latents.shape)}")
        image_latents = image_latents.to(sample.dtype)

        emb = self.frame_embedding(timestep, batch_size, num_frames, camera, fps, timestep_cond, device=sample.device)
        context = self.context_tokens(encoder_hidden_states, image_latents, image_embeddings)
        sample = torch.cat([sample, self.image_features(image_latents)], dim=1)
        sample = self.run_blocks(sample, emb, context, cross_attention_kwargs=cross_attention_kwargs)
        if not return_dict:
            return (sample,)
        return UNet3DConditionOutput(sample=sample)
