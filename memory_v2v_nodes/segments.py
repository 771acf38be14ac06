"""Segment bookkeeping for Memory-V2V long-video editing (LucyEdit): plan, stitch, resume, retrieve.

A long source video (hundreds of frames; LucyEdit's window is 81) is split into overlapping
segments of one fixed length, edited in order (each edit conditioned on earlier edited
segments from the :class:`~.bank.VideoMemoryBank`), and the edited segments are stitched back
with a cross-fade at the overlaps. Everything here is pure (no model, no file).

Conventions:

- **Frames** are ComfyUI images ``[N, H, W, 3]``, float, 0..1.
- **Spans** are ``(start, end)`` frame indices, ``end`` exclusive, 0-based.
- **Segments** all have exactly ``length`` frames, ``length = 4k + 1`` (the Wan VAE's temporal
  stride: ``(length - 1) / 4 + 1`` latent frames), so every segment's latent has one shape and
  any edited segment can serve as memory for any other.
- **Identity**: a :class:`SegmentPlan`'s ``fingerprint`` names the source video *and* its
  segmentation; a bank edit turn belongs to the plan when ``turn.video == plan.fingerprint``
  and its ``turn.segment`` is its index in ``plan.spans``. Edit turns of a video are stored in
  segment order (segment ``i`` is edited after ``0 .. i-1``), so the next segment to edit is
  the number already stored (:func:`next_segment`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .bank import VideoMemoryBank
from .retrieval import rank_turns_by_appearance

TEMPORAL_STRIDE = 4  # Wan VAE (2.1 and 2.2): 4 frames per latent frame after the first
_HASH_CHUNK = 16  # frames converted to uint8 at a time while fingerprinting


def plan_segments(frames: int, length: int, overlap: int) -> list[tuple[int, int]]:
    """The ``(start, end)`` spans (end exclusive) that cover ``frames`` frames with segments of
    exactly ``length`` frames.

    Segment ``i`` starts at ``i * stride`` with ``stride = length - overlap``, so consecutive
    segments share ``overlap`` frames; the **last segment is aligned to the video's end**
    (``start = frames - length``) whenever the stride does not land there exactly, and then it
    overlaps its predecessor by *more* than ``overlap`` frames (never fewer). ``length ==
    frames`` gives the single span ``(0, frames)``. With ``overlap > length / 2`` a frame can be
    covered by more than two segments (:func:`stitch` handles it).

    Example: ``plan_segments(100, 33, 8)`` -> ``[(0, 33), (25, 58), (50, 83), (67, 100)]``
    (the last overlaps its predecessor by 16 frames).

    Raises ``ValueError`` (naming the input and what was expected) when ``frames < 1``,
    ``length`` is not ``4k + 1``, ``overlap < 0``, ``overlap >= length`` or ``length > frames``.
    """
    for name, value in (("frames", frames), ("length", length), ("overlap", overlap)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int; got {value!r}")
    if frames < 1:
        raise ValueError(f"frames must be at least 1 (the video's frame count); got {frames}")
    if length < 1 or (length - 1) % TEMPORAL_STRIDE:
        raise ValueError(f"length must be 4k + 1 frames (the Wan VAE's temporal stride), e.g. 33 or 81; got {length}")
    if overlap < 0:
        raise ValueError(f"overlap must be 0 or more frames; got {overlap}")
    if overlap >= length:
        raise ValueError(f"overlap must be smaller than the segment length {length}; got {overlap}")
    if length > frames:
        raise ValueError(f"length {length} makes a segment longer than the video ({frames} frames)")
    stride = length - overlap
    starts = [0]
    while starts[-1] + length < frames:
        starts.append(min(starts[-1] + stride, frames - length))
    return [(s, s + length) for s in starts]


def fingerprint(frames: torch.Tensor, length: int, overlap: int) -> str:
    """A stable hex SHA-1 of the video and its segmentation: the frames quantised to uint8
    (``round(clamp(x, 0, 1) * 255)``, so float noise below 1/510 does not change it), their
    shape, ``length`` and ``overlap``. Independent of the tensor's dtype and device."""
    digest = hashlib.sha1()
    digest.update(f"cvs-segments;shape={list(frames.shape)};length={length};overlap={overlap};".encode())
    for start in range(0, frames.shape[0], _HASH_CHUNK):
        chunk = frames[start:start + _HASH_CHUNK].detach().to("cpu", torch.float32)
        digest.update((chunk.clamp(0, 1) * 255).round().to(torch.uint8).contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class SegmentPlan:
    """A source video split into segments (what a ``CVS_VIDEO_SEGMENTS`` value carries).

    - ``frames`` ``[N, H, W, 3]`` float 0..1: the source video at the working size;
    - ``spans``: :func:`plan_segments` ``(start, end)`` spans, end exclusive;
    - ``length`` / ``overlap``: as given to :func:`plan_segments`;
    - ``fingerprint``: :func:`fingerprint` of the frames, ``length`` and ``overlap``; bank edit
      turns with ``video == fingerprint`` are this video's edited segments.

    Build one with :meth:`create`.
    """

    frames: torch.Tensor
    spans: tuple[tuple[int, int], ...]
    length: int
    overlap: int
    fingerprint: str

    @classmethod
    def create(cls, frames: torch.Tensor, length: int, overlap: int) -> "SegmentPlan":
        """Plan ``frames`` ``[N, H, W, 3]`` (``ValueError`` for another shape or a bad plan)."""
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be an image batch [N, H, W, 3]; got {list(frames.shape)}")
        spans = tuple(plan_segments(int(frames.shape[0]), length, overlap))
        return cls(frames, spans, length, overlap, fingerprint(frames, length, overlap))

    @property
    def count(self) -> int:
        """How many segments."""
        return len(self.spans)

    def segment(self, index: int) -> torch.Tensor:
        """Source frames of segment ``index``: ``[length, H, W, 3]`` (a view)."""
        if not 0 <= index < len(self.spans):
            raise IndexError(f"segment {index} of a {len(self.spans)}-segment plan")
        start, end = self.spans[index]
        return self.frames[start:end]


def _check_spans(spans: Sequence[tuple[int, int]], total_frames: int) -> None:
    if not spans:
        raise ValueError("spans is empty; expected the plan's (start, end) spans")
    previous = None
    for i, (start, end) in enumerate(spans):
        if not 0 <= start < end <= total_frames:
            raise ValueError(f"span {i} ({start}, {end}) is not inside the video's {total_frames} frames")
        if previous is None:
            if start != 0:
                raise ValueError(f"span 0 starts at frame {start}; expected 0")
        elif not (previous[0] < start <= previous[1] and end > previous[1]):
            raise ValueError(f"span {i} ({start}, {end}) does not continue span {i - 1} {previous} (starts and "
                             "ends must increase, with no gap)")
        previous = (start, end)


def stitch(segments: Sequence[torch.Tensor], spans: Sequence[tuple[int, int]], total_frames: int) -> torch.Tensor:
    """Join edited segments ``[L_i, H, W, 3]`` into one video ``[N', H, W, 3]`` with cross-fades.

    ``spans`` is the whole plan (:func:`plan_segments` of a ``total_frames``-frame video);
    ``segments`` may be a prefix of it (the first ``m`` edited so far): the output covers frames
    ``[0, spans[m-1][1])``, and ``N' = total_frames`` once every segment is given.

    Segments are laid down in order. A frame covered only by segment ``i`` is copied from it.
    Segment ``i + 1`` overlaps what is already laid down on the ``n = end_i - start_{i+1}``
    frames ``start_{i+1} .. end_i - 1`` (more than ``overlap`` for an end-aligned last
    segment); on overlap frame ``k`` (``k = 0 .. n-1``) the output is::

        out = (1 - w_k) * out + w_k * segment_{i+1},   w_k = (k + 1) / (n + 1)

    so the new segment's weight rises linearly and neither end of the overlap is a hard cut
    (``torch.lerp``: where the two agree, the value is kept exactly). The result has the
    first segment's dtype and device. ``ValueError`` for an empty list, more segments than
    spans, a segment whose frame count differs from its span, mismatched frame sizes, or
    spans that are not an increasing gap-free cover inside ``total_frames``.
    """
    if not segments:
        raise ValueError("no segments to stitch; expected at least the first edited segment")
    if len(segments) > len(spans):
        raise ValueError(f"{len(segments)} segments for a {len(spans)}-span plan")
    _check_spans(spans, total_frames)
    first = segments[0]
    for i, (seg, (start, end)) in enumerate(zip(segments, spans)):
        if seg.ndim != 4 or seg.shape[0] != end - start or seg.shape[1:] != first.shape[1:]:
            raise ValueError(f"segment {i} is {list(seg.shape)}; expected [{end - start}, "
                             f"{', '.join(str(x) for x in first.shape[1:])}] for span ({start}, {end})")
    out = torch.empty((spans[len(segments) - 1][1],) + tuple(first.shape[1:]), dtype=first.dtype,
                      device=first.device)
    out[:spans[0][1]] = first
    for i in range(1, len(segments)):
        (start, end), done = spans[i], spans[i - 1][1]
        seg = segments[i].to(device=first.device, dtype=first.dtype)
        n = done - start
        if n:
            w = (torch.arange(1, n + 1, dtype=torch.float64) / (n + 1)).to(device=first.device, dtype=first.dtype)
            out[start:done] = torch.lerp(out[start:done], seg[:n], w.view(-1, *([1] * (seg.ndim - 1))))
        out[done:end] = seg[n:]
    return out


def edited_turns(bank: VideoMemoryBank, fingerprint: str) -> list[int]:
    """Bank indices of the edit turns of the video ``fingerprint``, ordered by segment index.

    Their segment indices must be exactly ``0 .. n-1``: ``ValueError`` names a duplicated or
    missing segment (a bank mixed from two runs of one video; reset the memory)."""
    found: dict[int, int] = {}
    for index, turn in enumerate(bank.turns):
        if turn.task != "edit" or turn.video != fingerprint:
            continue
        if turn.segment in found:
            raise ValueError(f"the memory holds segment {turn.segment} of this video twice (turns "
                             f"{found[turn.segment]} and {index}); reset the memory to edit the video again")
        found[turn.segment] = index
    missing = sorted(set(range(len(found))) - set(found))
    if missing:
        raise ValueError(f"the memory holds segments {sorted(found)} of this video but not segment {missing[0]}; "
                         "segments must be edited in order (reset the memory to start again)")
    return [found[s] for s in range(len(found))]


def next_segment(bank: VideoMemoryBank, fingerprint: str, count: int) -> Optional[int]:
    """The index of the next segment of video ``fingerprint`` to edit: how many of its edit
    turns the bank holds, or ``None`` once all ``count`` are. ``ValueError`` when the bank's
    turns of this video are inconsistent (:func:`edited_turns`) or more than ``count``."""
    done = len(edited_turns(bank, fingerprint))
    if done > count:
        raise ValueError(f"the memory holds {done} edited segments of this video; its plan has only {count}")
    return None if done == count else done


def retrieve_segments(bank: VideoMemoryBank, fingerprint: str, descriptor: torch.Tensor, top_k: int, *,
                      segment: Optional[int] = None,
                      latent_shape: Optional[Sequence[int]] = None) -> list[tuple[int, float]]:
    """Memory for editing a segment of video ``fingerprint``: up to ``top_k`` of its edited
    segments as ``[(bank index, cosine similarity), ...]``, best first.

    - **Candidates**: this video's edit turns (:func:`edited_turns`) of segments before
      ``segment`` (default: the next one to edit, i.e. every stored segment), whose descriptor
      has ``descriptor``'s shape and, when ``latent_shape`` is given, whose latent has that shape.
    - **Order**: the most recent candidate (the highest segment index) always first, as the
      paper's ``enforce_recent_first``; then the others by cosine similarity of their
      descriptors (mean DINOv2 of the *source* segment) to ``descriptor`` (the current source
      segment's), ties to the later segment (:func:`~.retrieval.rank_by_appearance`).
    - ``top_k == 0`` -> ``[]``; ``top_k < 0`` -> ``ValueError``.

    Turns of other videos (other fingerprints, camera turns, edit turns without a video) are
    never candidates: the memory is a consistency constraint *within one long video* (the
    edited segments must agree with each other where they meet and wherever the same content
    returns); an edit of another video, even one that looks alike, made with another prompt
    would pull this edit towards a different result, and the paper retrieves only among the
    current video's segments.
    """
    if top_k < 0:
        raise ValueError(f"top_k must be 0 or more; got {top_k}")
    if descriptor.ndim != 1:
        raise ValueError(f"descriptor must be [D]; got {list(descriptor.shape)}")
    if top_k == 0:
        return []
    candidates = [i for i in edited_turns(bank, fingerprint)
                  if (segment is None or bank.turns[i].segment < segment)
                  and bank.turns[i].descriptor.shape == descriptor.shape
                  and (latent_shape is None or tuple(bank.turns[i].latent.shape) == tuple(latent_shape))]
    return rank_turns_by_appearance(bank, candidates, descriptor, top_k)  # candidates are in segment order
