"""One denoising call of Memory-V2V on either of its two DiTs: token groups, dynamic
tokenization, responsiveness scores and adaptive token merging.

Two DiTs share this module:

- **ReCamMaster** (Wan2.1-T2V-1.3B plus per-block camera layers, :mod:`.model`), multi-turn
  novel-view synthesis: :func:`denoise`. The sequence the DiT attends over is, in order::

      target (noisy, 1x2x2 patches) | user video (clean, 1x2x2) | memory videos (clean, 1x4x4 / 1x8x8)

- **LucyEdit** (diffusers' plain ``WanTransformer3DModel`` at Wan2.2-TI2V-5B's shape: 96 input
  channels = noisy 48 + source 48 concatenated on channels, 48 out, a timestep per token),
  long-video editing segment by segment: :func:`denoise_edit`. The sequence is::

      target (noisy target | its source, 1x2x2) | prev segment (clean) | other memory segments (clean)

What both need lives here once: :class:`Tokens` (a sequence with its layout: RoPE positions,
optional cameras, optional per-token timesteps), :func:`tokenize`, :func:`concat`, :func:`rope`
at arbitrary positions, :func:`run_block` (one block over the whole sequence: the camera
layers are used only when the block has them, the modulation is per token when the
timestep is), :func:`responsiveness` / :func:`frame_scores`, :func:`choose_frames`,
:func:`merge`, and the block loop with merging and the output head.

Choices for ReCamMaster (the paper leaves them open; see docs/memory_v2v.md):

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

Choices for LucyEdit (paper section 3.4; its open points settled here):

- **Target tokens** = ``patch_embedding(cat([noisy target, source], channels))`` -- exactly
  LucyEdit's input, the source staying channel-concatenated (no user token group, no user
  RoPE range) -- at the call's timestep.
- **Memory segments** (:class:`MemorySegment`): the bank stores every edited segment *with
  its own source latent*, and a memory segment enters as extra clean tokens
  ``patch_embedding(cat([edited, its source], channels))``. This answers "how does a
  48-channel memory latent enter a 96-channel patch embedder": both halves of the embedder
  get the kind of input they were trained on (a clean edited-looking half, its source
  half). Coarse 1x4x4 / 1x8x8 kernels tile the 96-channel kernel exactly as above.
- **Per-token timesteps**: memory tokens are clean, so they get timestep 0 per token, as
  Wan2.2 TI2V treats its clean conditioning-frame tokens; target tokens get the call's
  timestep (a ``[B]`` timestep, or the ``[B, N_target]`` one LucyEditPipeline passes with
  ``expand_timesteps``). The modulation is then per token (diffusers' ``temb.ndim == 4``
  path: ``scale_shift_table[None] + time_proj`` ``[B, N, 6, D]``), computed by the model's
  own ``condition_embedder`` with ``timestep_seq_len``. Without memory and with a ``[B]``
  timestep the call uses the single-timestep modulation, so it equals diffusers' forward
  with either timestep form. Merging averages the per-token timesteps of a group (all equal
  within a frame, so merged memory tokens stay at 0) and recomputes their modulation.
- **Temporal RoPE ranges** (paper section 1.8): target ``0..T-1``; the immediately
  preceding segment ("prev": ``memory[0]`` when its role is ``"prev"``; the retrieval always
  puts the most recent segment first) from ``T``; every other memory segment from ``2T``
  (the same range for each). **Reversed order**: frame ``j`` of an ``F``-frame memory segment
  sits at ``start + (F - 1 - j)``, so the frame nearest the target in time is nearest to it
  in position (in training the memory was a *future* extension starting right after the
  target; at inference it is the past). Spatial positions follow the coarse-token rule
  above; a memory segment must have the target's latent height and width.
- **Dynamic tokenization**: the caller chooses a tokenizer per segment (Memory-V2V: in
  retrieval order, the best 3 -- prev included -- at 1x4x4, the rest at 1x8x8);
  :func:`denoise_edit` takes what it is given.
- **ATM**: the conditioning frames are all memory frames (prev and others); the same
  responsiveness, choice and merge as above, only when the call has memory.
- No camera layers: :class:`Tokens` carries no cameras and blocks without ``cam_encoder`` /
  ``projector`` run as plain Wan blocks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .model import ReCamMasterTransformer

ROLES = ("target", "user", "memory")
"""Token groups of a ReCamMaster call (:func:`denoise`)."""
EDIT_ROLES = ("target", "prev", "memory")
"""Token groups of a LucyEdit call (:func:`denoise_edit`)."""
DEFAULT_MERGE_BLOCKS = (10, 20)
DEFAULT_MERGE_RATIO = 0.5
SCALES = {"1x2x2": 1, "1x4x4": 2, "1x8x8": 4}
"""Tokenizer name -> ``s``: a token covers ``2s x 2s`` latent pixels (``s x s`` native tokens)."""
FINE_TOKENIZED = 3
"""Dynamic tokenization: the best-ranked retrieved memories this many at 1x4x4, the others at 1x8x8."""


def tokenizer_for_rank(rank: int) -> str:
    """The tokenizer of the memory video retrieved at ``rank`` (0 = most relevant)."""
    return "1x4x4" if rank < FINE_TOKENIZED else "1x8x8"


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
    units; ``cam`` ``[N, 12]`` the camera floats added in every block, or None (a DiT without
    camera layers: LucyEdit); ``frames`` the spans in sequence order (they tile ``0..N-1``);
    ``t`` the per-token timesteps ``[N]`` or ``[B, N]`` float32, or None: the call's single
    timestep for every token (ReCamMaster).
    """

    x: torch.Tensor
    pos: torch.Tensor
    cam: Optional[torch.Tensor]
    frames: list[FrameSpan] = field(default_factory=list)
    t: Optional[torch.Tensor] = None

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


def tokenize(model: torch.nn.Module, latent: torch.Tensor, scale: int, t_start: int, cams: Optional[torch.Tensor],
             role: str, video: int = 0, embedder: Optional[torch.nn.Conv3d] = None, *, reverse: bool = False,
             timestep: Optional[float] = None) -> Tokens:
    """Patchify ``latent`` ``[B, C, F, H, W]`` at ``scale`` (1: native 1x2x2, 2: 1x4x4, 4: 1x8x8).

    ``cams`` ``[F, 12]`` per latent frame, or None (no camera layers); ``t_start`` the first
    temporal RoPE position; ``reverse``: frame ``j`` at ``t_start + F - 1 - j`` instead of
    ``t_start + j``; ``timestep``: a per-token timestep for every token (None: no per-token
    timesteps); ``embedder`` a trained coarse patch embedding (else :func:`coarse_kernel` of
    the native one). ``C`` is the patch embedding's input width (LucyEdit: a 48-channel
    latent and its 48-channel source, concatenated).
    """
    if scale not in (1, 2, 4):
        raise ValueError(f"scale must be 1, 2 or 4 (1x2x2, 1x4x4, 1x8x8); got {scale}")
    batch, _, frames, height, width = latent.shape
    if cams is not None and cams.shape != (frames, 12):
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
    order = torch.arange(frames, dtype=torch.float64)
    t = (order.flip(0) if reverse else order) + t_start
    y = torch.arange(h, dtype=torch.float64) * scale + (scale - 1) / 2.0
    xx = torch.arange(w, dtype=torch.float64) * scale + (scale - 1) / 2.0
    pos = torch.stack(torch.meshgrid(t, y, xx, indexing="ij"), -1).reshape(-1, 3)
    cam = None if cams is None else cams.to(torch.float32).repeat_interleave(h * w, dim=0)
    steps = None if timestep is None else torch.full((x.shape[1],), float(timestep), device=x.device)
    spans = [FrameSpan(role, video, f, f * h * w, h, w) for f in range(frames)]
    return Tokens(x, pos, cam, spans, steps)


def _joined(parts: Sequence[Optional[torch.Tensor]], batch: int, what: str) -> Optional[torch.Tensor]:
    """Concatenate per-token rows (``[n]`` or ``[B, n]`` when ``what`` is ``t``; ``[n, ...]`` otherwise)."""
    if all(p is None for p in parts):
        return None
    if any(p is None for p in parts):
        raise ValueError(f"either every part of a sequence has {what} or none has")
    if what == "t" and any(p.ndim == 2 for p in parts):
        return torch.cat([p.expand(batch, -1) if p.ndim == 1 else p for p in parts], 1)
    return torch.cat(list(parts), -1 if what == "t" else 0)


def concat(parts: Sequence[Tokens]) -> Tokens:
    """One sequence from several, in order (spans re-based)."""
    spans, offset = [], 0
    for part in parts:
        spans.extend(replace(s, start=s.start + offset) for s in part.frames)
        offset += part.length
    batch = max(p.x.shape[0] for p in parts)
    return Tokens(torch.cat([p.x for p in parts], 1), torch.cat([p.pos for p in parts]),
                  _joined([p.cam for p in parts], batch, "cameras"), spans,
                  _joined([p.t for p in parts], batch, "t"))


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
    """The block's six modulation vectors: ``[B, 1, D]`` each from ``temb_proj`` ``[B, 6, D]``
    (one timestep per call), ``[B, N, D]`` each from ``[B, N, 6, D]`` (a timestep per token,
    diffusers' Wan2.2-TI2V path)."""
    if temb_proj.ndim == 4:
        table = block.scale_shift_table.unsqueeze(0) + temb_proj.float()
        return tuple(part.squeeze(2) for part in table.chunk(6, dim=2))
    return (block.scale_shift_table + temb_proj.float()).chunk(6, dim=1)


def _block_input(block, x: torch.Tensor, temb_proj: torch.Tensor, cam: Optional[torch.Tensor]) -> torch.Tensor:
    """The modulated, normalised self-attention input, plus the camera embedding when the block
    has camera layers (ReCamMaster)."""
    shift, scale, _, _, _, _ = _modulation(block, temb_proj)
    x_in = (block.norm1(x.float()) * (1 + scale) + shift).type_as(x)
    encoder = getattr(block, "cam_encoder", None)
    if encoder is None:
        return x_in
    if cam is None:
        raise ValueError("this DiT block has camera layers (ReCamMaster): the tokens need cameras")
    return x_in + encoder(cam.to(x.dtype))[None]


def run_block(block, tokens: Tokens, text: torch.Tensor, temb_proj: torch.Tensor,
              rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """One Wan block over the whole sequence: ReCamMaster's (module doc of :mod:`.model`) when
    the block has ``cam_encoder`` / ``projector``, else diffusers' ``WanTransformerBlock``.
    ``temb_proj`` ``[B, 6, D]`` or, with per-token timesteps, ``[B, N, 6, D]``. The block's
    submodules are called one by one (so Cancel points on them fire)."""
    x = tokens.x
    _, _, gate, c_shift, c_scale, c_gate = _modulation(block, temb_proj)
    x_in = _block_input(block, x, temb_proj, tokens.cam)
    attn = block.attn1(x_in, None, None, rotary)
    projector = getattr(block, "projector", None)
    if projector is not None:
        attn = projector(attn)
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
    ``block``'s own q / k projections, norms and RoPE (and its camera layer, if it has one)."""
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
    ``window x window`` groups in space; positions and per-token timesteps are averaged,
    cameras kept. Target frames are refused; a 1x1 frame cannot shrink and is left as is."""
    chosen = set(span_ids)
    if any(tokens.frames[i].role == "target" for i in chosen):
        raise ValueError("target tokens are never merged")
    xs, poss, cams, steps, spans, offset = [], [], [], [], [], 0
    for index, span in enumerate(tokens.frames):
        rows = slice(span.start, span.start + span.length)
        x, pos = tokens.x[:, rows], tokens.pos[rows]
        cam = None if tokens.cam is None else tokens.cam[rows]
        t = None if tokens.t is None else tokens.t[..., rows]
        h, w = span.h, span.w
        if index in chosen and span.length > 1:
            x = _merge_grid(x, h, w, merger, window)
            pos = _merge_grid(pos[None], h, w, None, window)[0]
            if t is not None:
                grid = t[None, :, None] if t.ndim == 1 else t[..., None]
                merged = _merge_grid(grid.double(), h, w, None, window)[..., 0].to(t.dtype)
                t = merged[0] if t.ndim == 1 else merged
            h, w = -(-h // window), -(-w // window)
            cam = None if cam is None else cam[:h * w]
        xs.append(x)
        poss.append(pos)
        cams.append(cam)
        steps.append(t)
        spans.append(replace(span, start=offset, h=h, w=w))
        offset += h * w
    return Tokens(torch.cat(xs, 1), torch.cat(poss), None if tokens.cam is None else torch.cat(cams), spans,
                  None if tokens.t is None else torch.cat(steps, -1))


# --------------------------------------------------------------------------- one call
@dataclass
class MemoryVideo:
    """A conditioning video from the memory: its latent ``[C, F, H, W]`` (or ``[B, ...]``),
    its cameras ``[F, 12]`` and its tokenizer (``"1x4x4"`` / ``"1x8x8"`` / ``"1x2x2"``)."""

    latent: torch.Tensor
    cams: torch.Tensor
    tokenizer: str = "1x4x4"


@dataclass
class MemorySegment:
    """An earlier edited segment for :func:`denoise_edit`: its edited latent ``[C, F, H, W]``
    (or ``[B, ...]``), the source latent it was edited from (same shape), its tokenizer
    (``"1x4x4"`` / ``"1x8x8"`` / ``"1x2x2"``) and its role: ``"prev"`` for the immediately
    preceding segment (only as ``memory[0]``), ``"memory"`` for any other."""

    latent: torch.Tensor
    source: torch.Tensor
    tokenizer: str = "1x4x4"
    role: str = "memory"


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


def _run(model, tokens: Tokens, text: torch.Tensor, temb_proj: torch.Tensor, merging: bool,
         merge_blocks: Sequence[int], merge_ratio: float, merge_window: int, mergers: dict,
         report: Optional[CallReport], modulation: Optional[Callable[[Tokens], torch.Tensor]] = None) -> torch.Tensor:
    """The block loop, with responsiveness and merging before the blocks in ``merge_blocks``
    when ``merging``; returns the target tokens. ``modulation(tokens)`` recomputes a
    per-token ``temb_proj`` after a merge (None: one for the whole call)."""
    device = tokens.x.device
    head_dim = model.config.attention_head_dim
    rotary = tuple(r.to(device) for r in rope(tokens.pos, head_dim))
    for index, block in enumerate(model.blocks):
        if index in merge_blocks and merge_ratio > 0 and merging:
            scores = responsiveness(block, tokens, temb_proj, rotary)  # every conditioning frame
            cond = [i for i, f in enumerate(tokens.frames) if f.role != "target"]
            picked = choose_frames(scores, merge_ratio, [tokens.frames[i].length for i in cond])
            tokens = merge(tokens, [cond[j] for j in picked], mergers.get(index), merge_window)
            rotary = tuple(r.to(device) for r in rope(tokens.pos, head_dim))
            if modulation is not None:
                temb_proj = modulation(tokens)
            if report is not None:
                report.merges.append({"block": index, "scores": scores.tolist(), "merged": picked,
                                      "frames": [(tokens.frames[cond[j]].role, tokens.frames[cond[j]].video,
                                                  tokens.frames[cond[j]].frame) for j in picked]})
        if report is not None:
            report.lengths.append(tokens.length)
        tokens.x = run_block(block, tokens, text, temb_proj, rotary)
    return tokens.x[:, :tokens.count("target")]


def _head(model, x: torch.Tensor, temb: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Output norm, projection and unpatchify of the target tokens ``x`` ``[B, N_target, D]``;
    ``temb`` ``[B, D]`` or per token ``[B, N >= N_target, D]``; ``shape`` the target latent's."""
    batch, _, frames, height, width = shape
    if temb.ndim == 3:  # a timestep per token (Wan2.2 TI2V): the target's rows
        table = model.scale_shift_table.unsqueeze(0).to(temb.device) + temb[:, :x.shape[1]].unsqueeze(2)
        shift, scale = (part.squeeze(2) for part in table.chunk(2, dim=2))
    else:
        shift, scale = (model.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
    x = model.proj_out((model.norm_out(x.float()) * (1 + scale) + shift).type_as(x))
    p_t, p_h, p_w = model.config.patch_size
    h, w = height // p_h, width // p_w
    x = x.reshape(batch, frames // p_t, h, w, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)


@torch.no_grad()
def denoise(model: ReCamMasterTransformer, target: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor,
            target_cams: torch.Tensor, user: torch.Tensor, memory: Sequence[MemoryVideo] = (),
            merge_blocks: Sequence[int] = DEFAULT_MERGE_BLOCKS, merge_ratio: float = DEFAULT_MERGE_RATIO,
            merge_window: int = 2, embedders: Optional[dict] = None, mergers: Optional[dict] = None,
            report: Optional[CallReport] = None) -> torch.Tensor:
    """The ReCamMaster model output (flow velocity) for the target latent.

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
    x = _run(model, tokens, text, temb_proj, bool(tokens.count("memory")), merge_blocks, merge_ratio, merge_window,
             mergers, report)
    return _head(model, x, temb, target.shape)


# --------------------------------------------------------------------------- LucyEdit
def _check_edit_inputs(model, target: torch.Tensor, source: torch.Tensor, memory: Sequence[MemorySegment]) -> None:
    height, width = target.shape[3:]
    if source.shape[2:] != target.shape[2:]:
        raise ValueError(f"the source segment latent is {list(source.shape[2:])} (frames, height, width) and the "
                         f"target {list(target.shape[2:])}: LucyEdit edits a segment at its own size")
    want = model.config.in_channels
    if target.shape[1] + source.shape[1] != want:
        raise ValueError(f"target ({target.shape[1]} channels) and source ({source.shape[1]}) must fill the patch "
                         f"embedding's {want} input channels together")
    for i, segment in enumerate(memory):
        if segment.tokenizer not in SCALES:
            raise ValueError(f"memory segment {i}: tokenizer must be one of {', '.join(SCALES)}; "
                             f"got {segment.tokenizer!r}")
        if segment.role not in ("prev", "memory"):
            raise ValueError(f"memory segment {i}: role must be 'prev' or 'memory'; got {segment.role!r}")
        if segment.role == "prev" and i != 0:
            raise ValueError(f"memory segment {i} is marked 'prev': only the first memory segment (the "
                             "immediately preceding one, retrieved first) can be")
        latent, src = segment.latent, segment.source
        if latent.shape[-3:] != src.shape[-3:]:
            raise ValueError(f"memory segment {i}: its edited latent is {list(latent.shape[-3:])} (frames, height, "
                             f"width) and its source {list(src.shape[-3:])}: they must match")
        if tuple(latent.shape[-2:]) != (height, width):
            raise ValueError(f"memory segment {i} has a latent of {latent.shape[-2]} x {latent.shape[-1]} (height x "
                             f"width) but the target is {height} x {width}: every memory segment must have the "
                             "target's spatial size (its tokens lie on the target's token grid)")
        if latent.shape[-4] + src.shape[-4] != want:
            raise ValueError(f"memory segment {i}: its latent ({latent.shape[-4]} channels) and source "
                             f"({src.shape[-4]}) must fill the patch embedding's {want} input channels together")


def _target_steps(timestep: torch.Tensor, batch: int, n_target: int) -> torch.Tensor:
    """The target's per-token timesteps ``[B, N_target]`` float32 from a ``[B]`` (or 0-d) or
    ``[B, N_target]`` timestep."""
    timestep = torch.as_tensor(timestep)
    if timestep.ndim == 2:
        if tuple(timestep.shape) != (batch, n_target):
            raise ValueError(f"a per-token timestep must be [batch, target tokens] = [{batch}, {n_target}]; "
                             f"got {list(timestep.shape)}")
        return timestep.float()
    return timestep.float().reshape(-1).expand(batch)[:, None].expand(batch, n_target)


def edit_tokens(model: torch.nn.Module, target: torch.Tensor, source: torch.Tensor,
                memory: Sequence[MemorySegment] = (), timestep: Optional[torch.Tensor] = None,
                embedders: Optional[dict] = None) -> Tokens:
    """The token sequence of a LucyEdit call (module doc): ``target | prev | memory``.

    ``target`` ``[B, C, T, H, W]`` and ``source`` ``[B or 1, C', T, H, W]`` (``C + C'`` = the
    patch embedding's input channels) give the target tokens at RoPE times ``0..T-1``; each
    memory segment ``cat([latent, source])`` at its tokenizer's scale, in reversed temporal
    order from ``T`` (prev) or ``2T`` (others). ``timestep`` ``[B]`` or ``[B, N_target]``: the
    tokens get per-token timesteps ``t`` (target: the call's, memory: 0) when it is per token
    or there is memory; without memory and with a ``[B]`` timestep (or None) ``t`` is None.
    Raises ValueError on inconsistent shapes.
    """
    batch, _, frames = target.shape[:3]
    embedders = embedders or {}
    source = _batched(source, batch)
    _check_edit_inputs(model, target, source, memory)
    parts = [tokenize(model, torch.cat([target, source.to(target.dtype)], 1), 1, 0, None, "target")]
    per_token = bool(memory) or (timestep is not None and torch.as_tensor(timestep).ndim == 2)
    for i, segment in enumerate(memory):
        scale = SCALES[segment.tokenizer]
        start = frames if segment.role == "prev" else 2 * frames
        latent = _batched(segment.latent, batch)
        pair = torch.cat([latent, _batched(segment.source, batch).to(latent.dtype)], 1)
        parts.append(tokenize(model, pair, scale, start, None, segment.role, i, embedders.get(scale), reverse=True,
                              timestep=0.0 if per_token else None))
    if per_token:
        if timestep is None:
            raise ValueError("a call with memory needs the timestep (memory tokens get 0, the target its own)")
        parts[0].t = _target_steps(timestep, batch, parts[0].length).to(parts[0].x.device)
    return concat(parts)


def _per_token_embedding(model, t: torch.Tensor, batch: int, text: torch.Tensor):
    """``(temb [B, N, D], temb_proj [B, N, 6, D], text)`` from the model's own condition
    embedder at per-token timesteps ``t`` (``[N]`` or ``[B, N]``): Wan2.2 TI2V's path."""
    t = t.expand(batch, -1) if t.ndim == 1 else t
    temb, proj, text, _ = model.condition_embedder(t.flatten(), text, None, timestep_seq_len=t.shape[1])
    return temb, proj.unflatten(2, (6, -1)), text


@torch.no_grad()
def denoise_edit(model: torch.nn.Module, target: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor,
                 source: torch.Tensor, memory: Sequence[MemorySegment] = (),
                 merge_blocks: Sequence[int] = DEFAULT_MERGE_BLOCKS, merge_ratio: float = DEFAULT_MERGE_RATIO,
                 merge_window: int = 2, embedders: Optional[dict] = None, mergers: Optional[dict] = None,
                 report: Optional[CallReport] = None) -> torch.Tensor:
    """The LucyEdit model output (flow velocity) for one segment's target latent, with memory.

    ``model`` a ``WanTransformer3DModel`` whose patch embedding takes ``cat([target, source])``
    (LucyEdit: 48 + 48 = 96 channels); ``target`` ``[B, C, T, H, W]`` noisy; ``timestep`` ``[B]``
    (0..1000) or ``[B, N_target]`` per token (LucyEditPipeline's ``expand_timesteps``); ``text``
    ``[B, L, text_dim]``; ``source`` ``[B or 1, C', T, H, W]`` the clean source segment latent;
    ``memory`` earlier edited segments (:class:`MemorySegment`, retrieval order, ``"prev"``
    first). ``embedders``: trained coarse patch embeddings by scale; ``mergers``: trained
    merges by block index. Without memory this is ``model(cat([target, source], 1), timestep,
    text)``. Returns ``[B, C_out, T, H, W]`` in the model dtype.
    """
    batch = target.shape[0]
    dtype = model.patch_embedding.weight.dtype
    mergers = mergers or {}
    tokens = edit_tokens(model, target, source, memory, timestep, embedders)
    tokens.x = tokens.x.to(dtype)
    if report is not None:
        report.tokens = {role: tokens.count(role) for role in EDIT_ROLES}
    raw = text.to(dtype)
    if tokens.t is None:
        temb, temb_proj, text, _ = model.condition_embedder(torch.as_tensor(timestep).reshape(-1).expand(batch),
                                                            raw, None)
        temb_proj, modulation = temb_proj.unflatten(1, (6, -1)), None
    else:
        temb, temb_proj, text = _per_token_embedding(model, tokens.t, batch, raw)
        # after a merge: the merged sequence's modulation, without projecting the text again
        modulation = lambda merged: _per_token_embedding(model, merged.t, batch, raw[:, :0])[1]  # noqa: E731
    x = _run(model, tokens, text, temb_proj, bool(memory), merge_blocks, merge_ratio, merge_window, mergers, report,
             modulation)
    return _head(model, x, temb, target.shape)
