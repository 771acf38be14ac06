"""One denoising call of Memory-V2V on ReCamMaster: token groups, dynamic tokenization,
responsiveness scores and adaptive token merging.

The sequence the DiT attends over is, in order::

    target (noisy, 1x2x2 patches) | user video (clean, 1x2x2) | memory videos (clean, 1x4x4 / 1x8x8)

Choices (the paper leaves them open; see the README):

- **Temporal RoPE ranges**: target ``0..T-1``, user ``T..2T-1``, every memory video
  ``2T..2T+F-1`` (the same range for each, so unseen positions never occur as memory grows).
- **Coarse tokens** (a patch of ``2s x 2s`` latent pixels, ``s`` = 2 for 1x4x4, 4 for 1x8x8):
  without trained embedders, the kernel is the native 1x2x2 kernel tiled ``s x s`` times and
  divided by ``s^2`` (FramePack's recipe), which makes a coarse token exactly the **mean of
  the ``s x s`` native tokens** it covers. Its RoPE position is the centre of those tokens,
  ``(s * i + (s - 1) / 2, s * j + (s - 1) / 2)`` in native token units, so coarse tokens
  stretch over the same space. A latent whose size is not a multiple of ``2s`` is padded by
  repeating its edge.
- **Cameras**: ReCamMaster adds the *target* camera embedding to target and source tokens;
  that is kept (with no memory the call equals ReCamMaster's), and each memory video adds
  its *own* trajectory's embedding (Memory-V2V's per-video embedding). Cameras are 12
  floats per latent frame, ``[R|t]`` row-major, every pose relative to the target path's
  first camera (:func:`.pipeline.camera_rows`).
- **Responsiveness** (before the blocks listed in ``merge_blocks``, 0-based, default 10 and
  20: "blocks 10 and 20 of 30"): per conditioning frame (user and memory), ``K_t`` = mean of
  the frame's keys (after the block's q/k norm and RoPE, as attention sees them);
  ``R_t = max over target queries of softmax over frames (q . K_t / sqrt(d))``, per head,
  then averaged over heads and over the batch (so both guidance branches merge the same
  frames). The cost is N_target x F_cond dot products per head.
- **Merging** (only when the call has memory videos): conditioning frames -- user and
  memory -- are taken from the lowest R_t upward while they hold at most ``merge_ratio`` of
  the conditioning tokens (default: the bottom half of the tokens; counting tokens, not
  frames, makes the ratio mean the same whatever the mix of 1x2x2 / 1x4x4 / 1x8x8 frames),
  and their tokens are merged 2x2 in space (a frame's token grid
  ``h x w`` becomes ``ceil(h/2) x ceil(w/2)``), by averaging the tokens (and their RoPE
  positions) of each 2x2 group that lies in the grid, or by a learned 2x2 stride-2 conv when
  merge weights are given. Merging at block 10 persists; block 20 scores the merged
  sequence and may merge a frame again. Conditioning tokens produce no output, so nothing is
  unmerged. Target tokens are never merged. Without memory videos nothing is merged, so such
  a call is exactly ReCamMaster's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .model import ReCamMasterTransformer

ROLES = ("target", "user", "memory")
DEFAULT_MERGE_BLOCKS = (10, 20)
DEFAULT_MERGE_RATIO = 0.5
SCALES = {"1x2x2": 1, "1x4x4": 2, "1x8x8": 4}
"""Tokenizer name -> ``s``: a token covers ``2s x 2s`` latent pixels (``s x s`` native tokens)."""


@dataclass(frozen=True)
class FrameSpan:
    """The tokens of one latent frame of one video: rows ``start .. start + h * w - 1`` (row-major grid)."""

    role: str
    video: int
    frame: int
    start: int
    h: int
    w: int

    @property
    def length(self) -> int:
        return self.h * self.w


@dataclass
class Tokens:
    """A token sequence with its layout.

    ``x`` ``[B, N, D]``; ``pos`` ``[N, 3]`` float64 RoPE positions (t, y, x) in native token
    units; ``cam`` ``[N, 12]`` the camera floats added in every block; ``frames`` the spans in
    sequence order (they tile ``0..N-1``).
    """

    x: torch.Tensor
    pos: torch.Tensor
    cam: torch.Tensor
    frames: list[FrameSpan] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.x.shape[1]

    def count(self, role: Optional[str] = None) -> int:
        """Tokens of ``role`` (all when None)."""
        return sum(f.length for f in self.frames if role is None or f.role == role)


def coarse_kernel(weight: torch.Tensor, bias: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The native patch kernel ``[D, C, 1, 2, 2]`` tiled ``scale x scale`` and divided by ``scale^2``
    (``[D, C, 1, 2s, 2s]``), and the bias unchanged: a coarse token = mean of the native tokens."""
    tiled = weight.repeat(1, 1, 1, scale, scale) / float(scale * scale)
    return tiled, bias


def tokenize(model: ReCamMasterTransformer, latent: torch.Tensor, scale: int, t_start: int, cams: torch.Tensor,
             role: str, video: int = 0, embedder: Optional[torch.nn.Conv3d] = None) -> Tokens:
    """Patchify ``latent`` ``[B, C, F, H, W]`` at ``scale`` (1: native 1x2x2, 2: 1x4x4, 4: 1x8x8).

    ``cams`` ``[F, 12]`` per latent frame; ``t_start`` the first temporal RoPE position;
    ``embedder`` a trained coarse patch embedding (else :func:`coarse_kernel` of the native one).
    """
    if scale not in (1, 2, 4):
        raise ValueError(f"scale must be 1, 2 or 4 (1x2x2, 1x4x4, 1x8x8); got {scale}")
    batch, _, frames, height, width = latent.shape
    if cams.shape != (frames, 12):
        raise ValueError(f"cams must be [frames, 12] = [{frames}, 12]; got {list(cams.shape)}")
    patch = 2 * scale
    pad_h, pad_w = (-height) % patch, (-width) % patch
    if pad_h or pad_w:
        latent = F.pad(latent, (0, pad_w, 0, pad_h, 0, 0), mode="replicate")
    conv = model.patch_embedding
    if scale == 1:
        x = conv(latent.to(conv.weight.dtype))
    elif embedder is not None:
        x = embedder(latent.to(embedder.weight.dtype))
    else:
        weight, bias = coarse_kernel(conv.weight, conv.bias, scale)
        x = F.conv3d(latent.to(weight.dtype), weight, bias, stride=(1, patch, patch))
    h, w = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2).contiguous()  # [B, F*h*w, D], frame-major then row-major
    t = torch.arange(frames, dtype=torch.float64) + t_start
    y = torch.arange(h, dtype=torch.float64) * scale + (scale - 1) / 2.0
    xx = torch.arange(w, dtype=torch.float64) * scale + (scale - 1) / 2.0
    pos = torch.stack(torch.meshgrid(t, y, xx, indexing="ij"), -1).reshape(-1, 3)
    cam = cams.to(torch.float32).repeat_interleave(h * w, dim=0)
    spans = [FrameSpan(role, video, f, f * h * w, h, w) for f in range(frames)]
    return Tokens(x, pos, cam, spans)


def concat(parts: Sequence[Tokens]) -> Tokens:
    """One sequence from several, in order (spans re-based)."""
    spans, offset = [], 0
    for part in parts:
        spans.extend(replace(s, start=s.start + offset) for s in part.frames)
        offset += part.length
    return Tokens(torch.cat([p.x for p in parts], 1), torch.cat([p.pos for p in parts]),
                  torch.cat([p.cam for p in parts]), spans)


def rope(pos: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Wan's 3-axis RoPE at arbitrary (also fractional) positions: ``(cos, sin)`` ``[1, N, 1, head_dim]``.

    Same split as diffusers' ``WanRotaryPosEmbed``: ``h = w = 2 * (head_dim // 6)`` channels for
    the y and x axes, the rest for t; per axis of ``d`` channels the frequencies are
    ``theta ** (-arange(0, d, 2) / d)``, each angle used for an interleaved pair. At integer
    positions this equals diffusers' table.
    """
    h_dim = w_dim = 2 * (head_dim // 6)
    t_dim = head_dim - h_dim - w_dim
    angles = []
    for axis, dim in enumerate((t_dim, h_dim, w_dim)):
        inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64)[: dim // 2] / dim)
        angles.append(pos[:, axis:axis + 1].to(torch.float64) * inv[None])
    angle = torch.cat(angles, -1).repeat_interleave(2, dim=-1)
    return angle.cos().float()[None, :, None], angle.sin().float()[None, :, None]


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of ``x`` ``[B, N, H, d]`` (diffusers' Wan convention)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], -1).flatten(-2).type_as(x)


def _modulation(block, temb_proj: torch.Tensor):
    return (block.scale_shift_table + temb_proj.float()).chunk(6, dim=1)


def _block_input(block, x: torch.Tensor, temb_proj: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    shift, scale, _, _, _, _ = _modulation(block, temb_proj)
    x_in = (block.norm1(x.float()) * (1 + scale) + shift).type_as(x)
    return x_in + block.cam_encoder(cam.to(x.dtype))[None]


def run_block(block, tokens: Tokens, text: torch.Tensor, temb_proj: torch.Tensor,
              rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """One ReCamMaster block (module doc of :mod:`.model`) over the whole sequence."""
    x = tokens.x
    _, _, gate, c_shift, c_scale, c_gate = _modulation(block, temb_proj)
    x_in = _block_input(block, x, temb_proj, tokens.cam)
    attn = block.projector(block.attn1(x_in, None, None, rotary))
    x = (x.float() + attn * gate).type_as(x)
    x = x + block.attn2(block.norm2(x.float()).type_as(x), text, None, None)
    ff_in = (block.norm3(x.float()) * (1 + c_scale) + c_shift).type_as(x)
    return (x.float() + block.ffn(ff_in).float() * c_gate).type_as(x)


# --------------------------------------------------------------------------- responsiveness
def frame_scores(queries: torch.Tensor, keys: torch.Tensor, spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Responsiveness of conditioning frames.

    ``queries`` ``[B, Nq, H, d]`` (target tokens), ``keys`` ``[B, Nk, H, d]`` (conditioning
    tokens), ``spans`` the ``(start, length)`` of each conditioning frame within ``keys``.
    ``K_t`` = mean key of frame t; ``R_t = max_q softmax_t(q . K_t / sqrt(d))`` per batch item
    and head, then averaged over heads and batch -> ``[F_cond]`` float32.
    """
    means = torch.stack([keys[:, s:s + n].float().mean(1) for s, n in spans], 1)  # [B, F, H, d]
    logits = torch.einsum("bqhd,bfhd->bhqf", queries.float(), means) / math.sqrt(queries.shape[-1])
    return logits.softmax(-1).amax(2).mean(dim=(0, 1))  # max over queries, mean over heads and batch


def responsiveness(block, tokens: Tokens, temb_proj: torch.Tensor, rotary) -> torch.Tensor:
    """:func:`frame_scores` of every conditioning (non-target) frame, in sequence order, with
    ``block``'s own q / k projections, norms and RoPE."""
    x_in = _block_input(block, tokens.x, temb_proj, tokens.cam)
    attn = block.attn1
    n_target = tokens.count("target")
    cos, sin = rotary
    q = attn.norm_q(attn.to_q(x_in[:, :n_target])).unflatten(2, (attn.heads, -1))
    k = attn.norm_k(attn.to_k(x_in[:, n_target:])).unflatten(2, (attn.heads, -1))
    q = _apply_rope(q, cos[:, :n_target], sin[:, :n_target])
    k = _apply_rope(k, cos[:, n_target:], sin[:, n_target:])
    spans = [(f.start - n_target, f.length) for f in tokens.frames if f.role != "target"]
    return frame_scores(q, k, spans)


def choose_frames(scores: torch.Tensor, ratio: float, sizes: Optional[Sequence[int]] = None) -> list[int]:
    """The lowest-scoring frames holding at most ``ratio`` of the tokens, in index order.

    Frames are taken from the lowest score upward (ties: the earlier frame first) and the
    selection stops before the first frame that would exceed ``ratio * sum(sizes)`` tokens.
    ``sizes`` (tokens per frame) defaults to 1 each, i.e. the bottom ``floor(ratio * F)`` frames.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"merge ratio must be in [0, 1]; got {ratio}")
    sizes = [1] * len(scores) if sizes is None else list(sizes)
    budget, taken, chosen = ratio * sum(sizes) + 1e-9, 0, []
    for i in sorted(range(len(scores)), key=lambda i: (float(scores[i]), i)):
        if taken + sizes[i] > budget:
            break
        taken += sizes[i]
        chosen.append(i)
    return sorted(chosen)


# --------------------------------------------------------------------------- merging
def _merge_grid(values: torch.Tensor, h: int, w: int, merger: Optional[torch.nn.Module],
                window: int = 2) -> torch.Tensor:
    """``values`` ``[B, h*w, C]`` -> ``[B, ceil(h/n)*ceil(w/n), C]`` (``n = window``): mean of each
    ``n x n`` group inside the grid (a group cut by the edge averages its existing tokens), or
    ``merger`` (an ``n x n`` stride-``n`` conv) on the edge-replicated grid."""
    b, _, c = values.shape
    grid = values.transpose(1, 2).reshape(b, c, h, w)
    if merger is None:
        exact = grid if grid.dtype == torch.float64 else grid.float()
        out = F.avg_pool2d(exact, window, window, ceil_mode=True).to(values.dtype)
    else:
        grid = F.pad(grid, (0, (-w) % window, 0, (-h) % window), mode="replicate")
        out = merger(grid.to(merger.weight.dtype)).to(values.dtype)
    return out.flatten(2).transpose(1, 2)


def merge(tokens: Tokens, span_ids: Sequence[int], merger: Optional[torch.nn.Module] = None,
          window: int = 2) -> Tokens:
    """Merge the tokens of the frames ``span_ids`` (indices into ``tokens.frames``) in
    ``window x window`` groups in space; positions are averaged, cameras kept. Target frames
    are refused; a 1x1 frame cannot shrink and is left as is."""
    chosen = set(span_ids)
    if any(tokens.frames[i].role == "target" for i in chosen):
        raise ValueError("target tokens are never merged")
    xs, poss, cams, spans, offset = [], [], [], [], 0
    for index, span in enumerate(tokens.frames):
        rows = slice(span.start, span.start + span.length)
        x, pos, cam = tokens.x[:, rows], tokens.pos[rows], tokens.cam[rows]
        h, w = span.h, span.w
        if index in chosen and span.length > 1:
            x = _merge_grid(x, h, w, merger, window)
            pos = _merge_grid(pos[None], h, w, None, window)[0]
            h, w = -(-h // window), -(-w // window)
            cam = cam[:h * w]
        xs.append(x)
        poss.append(pos)
        cams.append(cam)
        spans.append(replace(span, start=offset, h=h, w=w))
        offset += h * w
    return Tokens(torch.cat(xs, 1), torch.cat(poss), torch.cat(cams), spans)


# --------------------------------------------------------------------------- one call
@dataclass
class MemoryVideo:
    """A conditioning video from the memory: its latent ``[C, F, H, W]`` (or ``[B, ...]``),
    its cameras ``[F, 12]`` and its tokenizer (``"1x4x4"`` / ``"1x8x8"`` / ``"1x2x2"``)."""

    latent: torch.Tensor
    cams: torch.Tensor
    tokenizer: str = "1x4x4"


@dataclass
class CallReport:
    """What one call did: token counts per role before merging, the merges (block, frames,
    scores) and the sequence length entering each block."""

    tokens: dict = field(default_factory=dict)
    merges: list = field(default_factory=list)
    lengths: list = field(default_factory=list)


def _batched(latent: torch.Tensor, batch: int) -> torch.Tensor:
    latent = latent if latent.ndim == 5 else latent[None]
    return latent.expand(batch, -1, -1, -1, -1) if latent.shape[0] == 1 and batch > 1 else latent


@torch.no_grad()
def denoise(model: ReCamMasterTransformer, target: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor,
            target_cams: torch.Tensor, user: torch.Tensor, memory: Sequence[MemoryVideo] = (),
            merge_blocks: Sequence[int] = DEFAULT_MERGE_BLOCKS, merge_ratio: float = DEFAULT_MERGE_RATIO,
            merge_window: int = 2, embedders: Optional[dict] = None, mergers: Optional[dict] = None,
            report: Optional[CallReport] = None) -> torch.Tensor:
    """The model output (flow velocity) for the target latent.

    ``target`` ``[B, C, T, H, W]`` noisy; ``timestep`` ``[B]`` (0..1000); ``text`` ``[B, L, text_dim]``
    (umT5 tokens); ``target_cams`` ``[T, 12]``; ``user`` ``[C, T', H, W]`` or ``[B, ...]`` the clean
    source latent; ``memory`` the retrieved videos (in retrieval order). ``embedders``:
    trained coarse patch embeddings by scale (``{2: Conv3d, 4: Conv3d}``); ``mergers``: trained
    merges by block index. Returns ``[B, C, T, H, W]`` in the model dtype.
    """
    batch, _, frames = target.shape[:3]
    dtype = model.patch_embedding.weight.dtype
    embedders, mergers = embedders or {}, mergers or {}
    user = _batched(user, batch)
    if user.shape[2] != frames:
        raise ValueError(f"the user video has {user.shape[2]} latent frames and the target {frames}: ReCamMaster "
                         "re-renders a video at its own length")
    parts = [tokenize(model, target, 1, 0, target_cams, "target"),
             tokenize(model, user, 1, frames, target_cams, "user")]
    for i, video in enumerate(memory):
        scale = SCALES[video.tokenizer]
        parts.append(tokenize(model, _batched(video.latent, batch), scale, 2 * frames, video.cams, "memory", i,
                              embedders.get(scale)))
    tokens = concat(parts)
    tokens.x = tokens.x.to(dtype)
    if report is not None:
        report.tokens = {role: tokens.count(role) for role in ROLES}
    temb, temb_proj, text, _ = model.condition_embedder(timestep, text.to(dtype), None)
    temb_proj = temb_proj.unflatten(1, (6, -1))
    head_dim = model.config.attention_head_dim
    rotary = tuple(r.to(target.device) for r in rope(tokens.pos, head_dim))
    for index, block in enumerate(model.blocks):
        if index in merge_blocks and merge_ratio > 0 and tokens.count("memory"):
            scores = responsiveness(block, tokens, temb_proj, rotary)  # every conditioning frame
            cond = [i for i, f in enumerate(tokens.frames) if f.role != "target"]
            picked = choose_frames(scores, merge_ratio, [tokens.frames[i].length for i in cond])
            tokens = merge(tokens, [cond[j] for j in picked], mergers.get(index), merge_window)
            rotary = tuple(r.to(target.device) for r in rope(tokens.pos, head_dim))
            if report is not None:
                report.merges.append({"block": index, "scores": scores.tolist(), "merged": picked,
                                      "frames": [(tokens.frames[cond[j]].role, tokens.frames[cond[j]].video,
                                                  tokens.frames[cond[j]].frame) for j in picked]})
        if report is not None:
            report.lengths.append(tokens.length)
        tokens.x = run_block(block, tokens, text, temb_proj, rotary)
    x = tokens.x[:, :tokens.count("target")]
    shift, scale = (model.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
    x = model.proj_out((model.norm_out(x.float()) * (1 + scale) + shift).type_as(x))
    p_t, p_h, p_w = model.config.patch_size
    h, w = target.shape[3] // p_h, target.shape[4] // p_w
    x = x.reshape(batch, frames // p_t, h, w, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)
