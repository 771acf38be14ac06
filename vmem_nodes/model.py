"""The SEVA multi-view UNet (Stable Virtual Camera, "Seva") that VMem samples with.

Plain-torch code with every size configurable (:class:`SevaParams`); parameter names are
exactly those of the official checkpoints, so their state dicts load with
``load_state_dict(strict=True)`` (after :func:`strip_prefix` for ``module.`` keys), and
:func:`infer_params` reads the sizes back from a state dict.

Shapes and conventions (``N = batch * num_frames``; the frames of one batch item are
contiguous, item ``b`` owns rows ``b*num_frames .. (b+1)*num_frames - 1``):

- ``x [N, in_channels, h, w]``: the network input at latent resolution. With the official
  11 channels: 4 latent channels (noisy latent for target frames, clean latent for
  context frames), 1 mask channel (1 = context frame, 0 = target frame) and 6 Plücker
  ray channels of the frame's camera. ``h`` and ``w`` must be divisible by
  ``2 ** (len(channel_mult) - 1)``.
- ``t [N]``: timestep values, integer (the sampler passes the DDPM index) or float.
- ``context [N, L, context_dim]``: per-frame conditioning tokens (CLIP image embeddings).
- ``dense [N, dense_in_channels, h', w']``: dense conditioning (the Plücker rays), resized
  bilinearly to every ResBlock's resolution, where it modulates the first normalisation.
- Output ``[N, out_channels, h, w]``: the model's prediction for every frame.

Every :class:`MultiviewTransformer` has per-layer spatial attention followed by a temporal
mix (attention over the frames of each pixel, cross-attending the first frame's context).
Its spatial attention is per frame, except in the *joint* layers named in
``unflatten_names`` (``"middle_ds8"``, ``"output_ds4"``, ``"output_ds2"`` at full size),
where the tokens of all frames of a batch item attend to each other and cross-attend the
first frame's context. Layer names are ``<input|middle|output>_ds<downsampling factor>``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

Tensor = torch.Tensor


@dataclass(frozen=True)
class SevaParams:
    """Sizes of a :class:`SevaUNet`; the defaults are those of the official checkpoints.

    ``attention_resolutions`` holds downsampling factors ``2**level``; ``transformer_depth``
    has one entry per level (the middle block uses the last). ``norm_groups`` is the group
    count of every GroupNorm (32 officially; smaller values allow tiny test models).
    ``num_frames`` is only the default frame count of :meth:`SevaUNet.forward`.
    """

    in_channels: int = 11
    model_channels: int = 320
    out_channels: int = 4
    num_frames: int = 8
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_head_channels: int = 64
    transformer_depth: tuple[int, ...] = (1, 1, 1, 1)
    context_dim: int = 1024
    dense_in_channels: int = 6
    dropout: float = 0.0
    unflatten_names: tuple[str, ...] = ("middle_ds8", "output_ds4", "output_ds2")
    norm_groups: int = 32

    def __post_init__(self):
        for name in ("attention_resolutions", "channel_mult", "transformer_depth", "unflatten_names"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(value))

    def validate(self) -> SevaParams:
        """Raise ``ValueError`` naming the first inconsistent field; return ``self``."""
        for name in ("in_channels", "model_channels", "out_channels", "num_frames",
                     "num_res_blocks", "num_head_channels", "context_dim",
                     "dense_in_channels", "norm_groups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SevaParams.{name} must be a positive int, got {value!r}")
        for name in ("attention_resolutions", "channel_mult", "transformer_depth"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
                raise ValueError(f"SevaParams.{name} must be a tuple of positive ints, got {value!r}")
        levels = len(self.channel_mult)
        if levels == 0:
            raise ValueError("SevaParams.channel_mult must not be empty")
        if len(self.transformer_depth) != levels:
            raise ValueError(
                f"SevaParams.transformer_depth needs one entry per level ({levels}), "
                f"got {self.transformer_depth!r}")
        factors = {2 ** level for level in range(levels)}
        if not set(self.attention_resolutions) <= factors:
            raise ValueError(
                f"SevaParams.attention_resolutions must hold factors 2**level of existing "
                f"levels {sorted(factors)}, got {self.attention_resolutions!r}")
        for level, mult in enumerate(self.channel_mult):
            ch = self.model_channels * mult
            if ch % self.norm_groups:
                raise ValueError(
                    f"SevaParams.norm_groups ({self.norm_groups}) must divide every level's "
                    f"channels, not {ch}")
            attended = 2 ** level in self.attention_resolutions or level == levels - 1
            if attended and ch % self.num_head_channels:
                raise ValueError(
                    f"SevaParams.num_head_channels ({self.num_head_channels}) must divide the "
                    f"channels of every attention level, not {ch}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"SevaParams.dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.unflatten_names, tuple) or not all(
                isinstance(n, str) for n in self.unflatten_names):
            raise ValueError(
                f"SevaParams.unflatten_names must be a tuple of layer names, got {self.unflatten_names!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (sequences as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SevaParams:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``; the result is validated."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SevaParams field(s): {', '.join(unknown)}")
        return cls(**dict(data)).validate()


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[N, dim]`` of timesteps ``t [N]``: cosines first, then sines."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back to the input dtype."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None.

    Keys: ``to_q``, ``to_k``, ``to_v`` (no bias), ``to_out.0`` (with bias).
    """

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8,
                 dim_head: int = 64, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``x [B, Lq, query_dim]``, ``context [B, Lk, context_dim]`` -> ``[B, Lq, query_dim]``."""
        context = x if context is None else context
        q, k, v = (rearrange(t, "b l (h d) -> b h l d", h=self.heads)
                   for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h l d -> b l (h d)"))


class GEGLU(nn.Module):
    """``a * gelu(gate)`` of the two halves of one projection (key ``proj``)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward: ``net.0`` (GEGLU), ``net.1`` (dropout), ``net.2`` (output Linear)."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim_out or dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to ``context`` and feed-forward, each residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, dropout: float = 0.0):
        super().__init__()
        self.attn1 = Attention(dim, heads=heads, dim_head=dim_head, dropout=dropout)
        self.attn2 = Attention(dim, context_dim, heads=heads, dim_head=dim_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class TransformerBlockTimeMix(nn.Module):
    """Attention over the frames of each token; returns the update (no outer residual).

    ``dim`` must equal ``heads * dim_head`` (the ``ff_in`` step is residual).
    """

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.norm_in = nn.LayerNorm(dim)
        self.ff_in = FeedForward(dim, dim_out=inner, dropout=dropout)
        self.attn1 = Attention(inner, heads=heads, dim_head=dim_head, dropout=dropout)
        self.ff = FeedForward(inner, dim_out=dim, dropout=dropout)
        self.attn2 = Attention(inner, context_dim, heads=heads, dim_head=dim_head, dropout=dropout)
        self.norm1 = nn.LayerNorm(inner)
        self.norm2 = nn.LayerNorm(inner)
        self.norm3 = nn.LayerNorm(inner)

    def forward(self, x: Tensor, context: Tensor, num_frames: int) -> Tensor:
        """``x [(b t), s, c]``, ``context [(b s), L, context_dim]`` -> ``[(b t), s, c]``."""
        s = x.shape[1]
        x = rearrange(x, "(b t) s c -> (b s) t c", t=num_frames)
        x = self.ff_in(self.norm_in(x)) + x
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        x = self.ff(self.norm3(x))
        return rearrange(x, "(b s) t c -> (b t) s c", s=s)


class MultiviewTransformer(nn.Module):
    """Spatial transformer (per frame, or joint over frames if ``name in unflatten_names``)
    interleaved with temporal mixing; residual around the whole.

    ``x [(b t), c, h, w]``, ``context [(b t), L, context_dim]`` -> ``[(b t), c, h, w]``.
    """

    def __init__(self, in_channels: int, n_heads: int, d_head: int, name: str,
                 unflatten_names: tuple[str, ...] = (), depth: int = 1, context_dim: int = 1024,
                 dropout: float = 0.0, groups: int = 32):
        super().__init__()
        inner = n_heads * d_head
        self.name = name
        self.joint = name in unflatten_names
        self.norm = nn.GroupNorm(groups, in_channels, eps=1e-6)
        self.proj_in = nn.Linear(in_channels, inner)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner, n_heads, d_head, context_dim, dropout) for _ in range(depth))
        self.proj_out = nn.Linear(inner, in_channels)
        self.time_mix_blocks = nn.ModuleList(
            TransformerBlockTimeMix(inner, n_heads, d_head, context_dim, dropout) for _ in range(depth))

    def forward(self, x: Tensor, context: Tensor, num_frames: int) -> Tensor:
        _, _, h, w = x.shape
        x_in = x
        first = context[::num_frames]
        time_context = first.repeat_interleave(h * w, dim=0)
        if self.joint:
            context = first
        x = rearrange(self.norm(x), "b c h w -> b (h w) c")
        x = self.proj_in(x)
        for block, mix in zip(self.transformer_blocks, self.time_mix_blocks):
            if self.joint:
                x = rearrange(x, "(b t) s c -> b (t s) c", t=num_frames)
            x = block(x, context)
            if self.joint:
                x = rearrange(x, "b (t s) c -> (b t) s c", t=num_frames)
            x = x + mix(x, time_context, num_frames)
        x = rearrange(self.proj_out(x), "b (h w) c -> b c h w", h=h, w=w)
        return x + x_in


class ResBlock(nn.Module):
    """Residual block with timestep embedding and dense (Plücker) scale/shift modulation."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int,
                 dense_in_channels: int, dropout: float = 0.0, groups: int = 32):
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(groups, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.dense_emb_layers = nn.Sequential(nn.Conv2d(dense_in_channels, 2 * channels, 1))
        self.out_layers = nn.Sequential(
            GroupNorm32(groups, out_channels), nn.SiLU(), nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: Tensor, emb: Tensor, dense: Tensor) -> Tensor:
        h = self.in_layers[:-1](x)
        dense = F.interpolate(dense, size=h.shape[2:], mode="bilinear", align_corners=True)
        scale, shift = self.dense_emb_layers(dense).type(h.dtype).chunk(2, dim=1)
        h = self.in_layers[-1](h * (1 + scale) + shift)
        h = h + self.emb_layers(emb)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (key ``op``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling then a 3x3 convolution (key ``conv``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands each layer the inputs it takes."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor, dense: Tensor, num_frames: int) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, dense)
            elif isinstance(layer, MultiviewTransformer):
                x = layer(x, context, num_frames)
            else:
                x = layer(x)
        return x


class SevaUNet(nn.Module):
    """The SEVA multi-view UNet; see the module docstring for shapes and conventions."""

    def __init__(self, params: SevaParams):
        super().__init__()
        self.params = p = params.validate()
        mc = p.model_channels
        emb_dim = 4 * mc

        def res(ch_in: int, ch_out: int) -> ResBlock:
            return ResBlock(ch_in, emb_dim, ch_out, p.dense_in_channels, p.dropout, p.norm_groups)

        def attn(ch: int, name: str, depth: int) -> MultiviewTransformer:
            return MultiviewTransformer(ch, ch // p.num_head_channels, p.num_head_channels, name,
                                        p.unflatten_names, depth, p.context_dim, p.dropout, p.norm_groups)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(p.in_channels, mc, 3, padding=1))])
        ds, ch, chans = 1, mc, [mc]
        last = len(p.channel_mult) - 1
        for level, mult in enumerate(p.channel_mult):
            for _ in range(p.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * mc)]
                ch = mult * mc
                if ds in p.attention_resolutions:
                    layers.append(attn(ch, f"input_ds{ds}", p.transformer_depth[level]))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != last:
                ds *= 2
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                chans.append(ch)

        self.middle_block = TimestepEmbedSequential(
            res(ch, ch), attn(ch, f"middle_ds{ds}", p.transformer_depth[-1]), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(p.channel_mult))):
            for i in range(p.num_res_blocks + 1):
                layers = [res(ch + chans.pop(), mc * mult)]
                ch = mc * mult
                if ds in p.attention_resolutions:
                    layers.append(attn(ch, f"output_ds{ds}", p.transformer_depth[level]))
                if level and i == p.num_res_blocks:
                    ds //= 2
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(p.norm_groups, ch), nn.SiLU(), nn.Conv2d(ch, p.out_channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor, context: Tensor, dense: Tensor,
                num_frames: int | None = None) -> Tensor:
        """``x [N, in, h, w]``, ``t [N]``, ``context [N, L, context_dim]``,
        ``dense [N, dense_in, h', w']`` -> ``[N, out_channels, h, w]``, ``N = batch * num_frames``.
        """
        p = self.params
        num_frames = num_frames or p.num_frames
        if x.ndim != 4 or x.shape[1] != p.in_channels:
            raise ValueError(f"x must be [N, {p.in_channels}, h, w], got {list(x.shape)}")
        n = x.shape[0]
        if n % num_frames:
            raise ValueError(f"x has {n} frames, not a multiple of num_frames={num_frames}")
        factor = 2 ** (len(p.channel_mult) - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"x's height and width must be divisible by {factor}, got {list(x.shape[2:])}")
        if t.shape != (n,) or context.shape[0] != n or dense.shape[0] != n:
            raise ValueError(
                f"t, context and dense need {n} rows, got {list(t.shape)}, "
                f"{list(context.shape)}, {list(dense.shape)}")

        emb = self.time_embed(timestep_embedding(t, p.model_channels).to(x.dtype))
        h, hs = x, []
        for block in self.input_blocks:
            h = block(h, emb, context, dense, num_frames)
            hs.append(h)
        h = self.middle_block(h, emb, context, dense, num_frames)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context, dense, num_frames)
        return self.out(h.type(x.dtype))


def strip_prefix(state: dict) -> dict:
    """Drop a leading ``module.`` from every key when all keys have it; else return ``state``."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def infer_params(state: Mapping[str, Tensor], num_frames: int = 8, num_head_channels: int = 64,
                 norm_groups: int = 32,
                 unflatten_names: tuple[str, ...] = SevaParams.unflatten_names) -> SevaParams:
    """Read :class:`SevaParams` from the shapes and key names of a SEVA UNet state dict.

    Head size, GroupNorm groups, joint layer names, dropout and the frame count are not
    stored in the weights and come from the arguments (official values by default); the
    transformer depth of a level without attention (except the last, read from the middle
    block) is taken as 1. ``attention_resolutions`` is listed in descending order.
    Raises ``ValueError`` when the state dict is not a SEVA/VMem UNet.
    """
    state = strip_prefix(dict(state))
    for key in ("time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight",
                "input_blocks.1.0.dense_emb_layers.0.weight", "middle_block.1.proj_in.weight"):
        if key not in state:
            found = ", ".join(repr(k) for k in sorted(state)[:2]) or "no keys"
            raise ValueError(
                f"state dict does not look like a SEVA/VMem UNet: no {key!r} (found {found})")

    def depth(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})

    conv_in = state["input_blocks.0.0.weight"]
    model_channels, in_channels = conv_in.shape[0], conv_in.shape[1]
    # Group the input blocks into levels, split by the downsample blocks (``op`` keys).
    levels: list[list[int]] = [[]]
    index = 1
    while f"input_blocks.{index}.0.op.weight" in state or f"input_blocks.{index}.0.out_layers.3.weight" in state:
        if f"input_blocks.{index}.0.op.weight" in state:
            levels.append([])
        else:
            levels[-1].append(index)
        index += 1
    counts = {len(blocks) for blocks in levels}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"SEVA UNet with uneven res blocks per level: {[len(b) for b in levels]}")

    channel_mult, attention, depths = [], [], []
    for level, blocks in enumerate(levels):
        channel_mult.append(state[f"input_blocks.{blocks[0]}.0.out_layers.3.weight"].shape[0] // model_channels)
        if f"input_blocks.{blocks[0]}.1.proj_in.weight" in state:
            attention.append(2 ** level)
            depths.append(depth(f"input_blocks.{blocks[0]}.1.transformer_blocks."))
        else:
            depths.append(1)
    depths[-1] = depth("middle_block.1.transformer_blocks.")
    context_key = next(k for k in state if k.endswith("attn2.to_k.weight"))
    return SevaParams(
        in_channels=in_channels,
        model_channels=model_channels,
        out_channels=state["out.2.weight"].shape[0],
        num_frames=num_frames,
        num_res_blocks=counts.pop(),
        attention_resolutions=tuple(sorted(attention, reverse=True)),
        channel_mult=tuple(channel_mult),
        num_head_channels=num_head_channels,
        transformer_depth=tuple(depths),
        context_dim=state[context_key].shape[1],
        dense_in_channels=state["input_blocks.1.0.dense_emb_layers.0.weight"].shape[1],
        unflatten_names=tuple(unflatten_names),
        norm_groups=norm_groups,
    )
