"""CroCo-family transformer parts: 2-D RoPE, the pre-norm ViT encoder block, the cross-attending
two-view decoder block (DUSt3R), the patch embedding.

Plain torch modules. Parameter names are CroCo's (``qkv``, ``projq``/``projk``/``projv``,
``proj``, ``norm1``..``norm3``, ``norm_y``, ``mlp.fc1``/``mlp.fc2``, ``patch_embed.proj``), so the
state dicts of CroCo, DUSt3R and the models built on them (NoPoSplat, CUT3R) load into blocks
made from these classes. Tokens are ``[B, N, C]`` with ``C`` split into ``heads`` heads of width
``C / heads``; positions are ``[B, N, 2]`` integer ``(row, column)`` grid coordinates, used only
by the rotary embedding (no absolute position embedding).

Defaults are the values every CroCo-family release uses: RoPE base 100 ("RoPE100"), LayerNorm
eps 1e-6, biases on the query/key/value projections, exact GELU in the MLP.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ROPE_BASE = 100.0
"""Frequency base of CroCo's 2-D RoPE (the "RoPE100" of CroCo v2, DUSt3R, NoPoSplat, CUT3R)."""
NORM_EPS = 1e-6
"""LayerNorm epsilon of the CroCo-family blocks."""


# --------------------------------------------------------------------------- 2-D RoPE
def patch_positions(batch: int, grid_h: int, grid_w: int, device=None) -> torch.Tensor:
    """``[batch, grid_h * grid_w, 2]`` long ``(row, column)`` of each patch token, row-major
    (token ``r * grid_w + c`` is at ``(r, c)``); an expanded view, the same for every batch item."""
    rows, cols = torch.meshgrid(torch.arange(grid_h, device=device), torch.arange(grid_w, device=device),
                                indexing="ij")
    return torch.stack([rows, cols], -1).reshape(1, -1, 2).expand(batch, -1, -1)


def rope_2d(x: torch.Tensor, positions: torch.Tensor, base: float = ROPE_BASE) -> torch.Tensor:
    """CroCo's 2-D rotary embedding of ``x [B, heads, N, d]`` at ``positions [B, N, 2]`` (row, col).

    The first half of each head's channels encodes the row, the second the column; within
    a half of width ``h``, channel ``i < h/2`` pairs with ``i + h/2`` and the pair is rotated
    by the angle ``pos * base^(-2i/h)`` (``(a, b) -> (a cos - b sin, b cos + a sin)``). Positions
    may be any integers (negative too). The angles are computed in float32 and cast to
    ``x.dtype``. Returns a tensor shaped like ``x``; ``d`` must be a multiple of 4.
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


# --------------------------------------------------------------------------- layers
class Mlp(nn.Module):
    """The transformer MLP ``fc2(gelu(fc1(x)))`` (exact, erf GELU) on ``[..., dim]``; ``fc1`` maps
    ``dim -> hidden``, ``fc2`` back to ``dim``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., dim] -> [..., dim]``."""
        return self.fc2(F.gelu(self.fc1(x)))


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class SelfAttention(nn.Module):
    """Multi-head self-attention with 2-D RoPE (base ``rope_base``) on queries and keys.

    ``qkv``: one ``Linear(dim, 3 dim)`` whose output is ``[q | k | v]``, each split into ``heads``
    contiguous heads (bias iff ``qkv_bias``); softmax attention scaled by ``1/sqrt(dim/heads)``;
    ``proj``: ``Linear(dim, dim)`` with bias. ``dim / heads`` must be a multiple of 4.
    """

    def __init__(self, dim: int, heads: int, rope_base: float = ROPE_BASE, qkv_bias: bool = True):
        super().__init__()
        self.heads, self.rope_base = heads, rope_base
        self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=qkv_bias), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Tokens ``x [B, N, dim]`` at ``pos [B, N, 2]`` -> ``[B, N, dim]``."""
        q, k, v = (_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        q, k = rope_2d(q, pos, self.rope_base), rope_2d(k, pos, self.rope_base)
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))


class CrossAttention(nn.Module):
    """Multi-head attention of queries from one token set to keys/values of another, 2-D RoPE
    (base ``rope_base``) on both queries and keys, each at its own positions.

    ``projq``/``projk``/``projv``: ``Linear(dim, dim)`` (bias iff ``qkv_bias``); ``proj``:
    ``Linear(dim, dim)`` with bias; scale ``1/sqrt(dim/heads)``.
    """

    def __init__(self, dim: int, heads: int, rope_base: float = ROPE_BASE, qkv_bias: bool = True):
        super().__init__()
        self.heads, self.rope_base = heads, rope_base
        self.projq, self.projk, self.projv = (nn.Linear(dim, dim, bias=qkv_bias) for _ in range(3))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                memory_pos: torch.Tensor) -> torch.Tensor:
        """Queries ``x [B, N, dim]`` at ``pos [B, N, 2]`` attend to ``memory [B, M, dim]`` at
        ``memory_pos [B, M, 2]``; returns ``[B, N, dim]``."""
        q = rope_2d(_heads(self.projq(x), self.heads), pos, self.rope_base)
        k = rope_2d(_heads(self.projk(memory), self.heads), memory_pos, self.rope_base)
        v = _heads(self.projv(memory), self.heads)
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))


# --------------------------------------------------------------------------- blocks
class EncoderBlock(nn.Module):
    """Pre-norm ViT block with 2-D RoPE: ``x + attn(norm1 x)``, then ``x + mlp(norm2 x)``.

    ``dim`` token width, ``heads`` attention heads, ``mlp_hidden`` the MLP's hidden width (CroCo:
    ``4 dim``); LayerNorms with eps ``norm_eps``; ``rope_base`` and ``qkv_bias`` as in
    :class:`SelfAttention`.
    """

    def __init__(self, dim: int, heads: int, mlp_hidden: int, rope_base: float = ROPE_BASE,
                 norm_eps: float = NORM_EPS, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SelfAttention(dim, heads, rope_base, qkv_bias)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=norm_eps), Mlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Tokens ``x [B, N, dim]`` at ``pos [B, N, 2]`` -> ``[B, N, dim]``."""
        x = x + self.attn(self.norm1(x), pos)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """CroCo/DUSt3R decoder block: pre-norm self-attention, cross-attention to the other view's
    tokens, MLP, each added to the residual stream:

    ``x += attn(norm1 x)``; ``x += cross_attn(norm2 x, norm_y other)``; ``x += mlp(norm3 x)``.
    The other view's tokens get their own LayerNorm ``norm_y``. Parameters as in
    :class:`EncoderBlock`.
    """

    def __init__(self, dim: int, heads: int, mlp_hidden: int, rope_base: float = ROPE_BASE,
                 norm_eps: float = NORM_EPS, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SelfAttention(dim, heads, rope_base, qkv_bias)
        self.cross_attn = CrossAttention(dim, heads, rope_base, qkv_bias)
        self.norm2, self.norm3, self.norm_y = (nn.LayerNorm(dim, eps=norm_eps) for _ in range(3))
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, other: torch.Tensor, pos: torch.Tensor,
                other_pos: torch.Tensor) -> torch.Tensor:
        """This view's tokens ``x [B, N, dim]`` at ``pos [B, N, 2]`` with the other view's
        ``other [B, M, dim]`` at ``other_pos [B, M, 2]`` -> ``[B, N, dim]``."""
        x = x + self.attn(self.norm1(x), pos)
        x = x + self.cross_attn(self.norm2(x), self.norm_y(other), pos, other_pos)
        return x + self.mlp(self.norm3(x))


class PatchEmbed(nn.Module):
    """ViT patch embedding: ``proj``, a ``patch x patch`` stride-``patch`` convolution of RGB
    images to ``dim`` channels, flattened to tokens with their grid positions."""

    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images [B, 3, H, W]`` (H, W multiples of ``patch``) -> tokens ``[B, N, dim]`` row-major
        over the ``(H/patch) x (W/patch)`` grid and their positions ``[B, N, 2]``
        (:func:`patch_positions`)."""
        x = self.proj(images)
        grid_h, grid_w = x.shape[-2:]
        return x.flatten(2).transpose(1, 2), patch_positions(x.shape[0], grid_h, grid_w, x.device)
