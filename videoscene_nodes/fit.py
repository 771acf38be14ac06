"""Map a video of any length and size onto the refiner's fixed frame count and resolution, and back.

The released transformer has a learned positional table for one size (480x720, 49 frames), so
every input is resampled to it and the output is mapped back to the input's frame count and
size. The original forces a 720x480 resize (a square render is stretched) and fails on videos
shorter than 49 frames: its reader asks decord for frames 0..48 and gets an ``IndexError``
("Out of bound indices"); here:

- **Time**: model frame ``k`` shows input frame ``round(k (N-1) / (M-1))`` (N input frames, M
  model frames, N >= 2); output frame ``j`` is model frame ``round(j (M-1) / (N-1))``. For
  ``N <= M`` every input frame is shown and comes back exactly (the rounding error of one
  direction, divided by ``(M-1)/(N-1) >= 1``, never reaches the next frame); for ``N > M`` the
  model sees M evenly spread frames and each output frame is the nearest refined one.
- **Space, never stretched**: ``pad`` scales the frame to fit inside the model size and centres
  it on a black canvas (the output is cropped back: the whole frame is refined); ``crop`` scales
  it to cover the model size and cuts the overflow (the output's uncovered border keeps the
  input's pixels). Resizing is bilinear with antialiasing.

Frames are ``[F, 3, H, W]`` tensors (any value range).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

MODES = ("pad", "crop")


def model_frame_indices(frames: int, model_frames: int) -> torch.Tensor:
    """``[model_frames]`` long: the input frame each model frame shows (see module doc)."""
    _check_frames(frames)
    k = torch.arange(model_frames, dtype=torch.float64)
    return torch.round(k * (frames - 1) / (model_frames - 1)).long()


def output_frame_indices(frames: int, model_frames: int) -> torch.Tensor:
    """``[frames]`` long: the model frame each output frame takes (see module doc)."""
    _check_frames(frames)
    j = torch.arange(frames, dtype=torch.float64)
    return torch.round(j * (model_frames - 1) / (frames - 1)).long()


def _check_frames(frames: int) -> None:
    if frames < 2:
        raise ValueError(f"the video has {frames} frame(s); the refiner needs at least 2 (it is conditioned on the "
                         "first and the last frame)")


@dataclass(frozen=True)
class Placement:
    """Where a ``height x width`` frame lands on the ``model_height x model_width`` canvas: scaled
    to ``scaled_h x scaled_w``, its top-left corner at ``(top, left)`` (negative when cropped)."""

    height: int
    width: int
    model_height: int
    model_width: int
    scaled_h: int
    scaled_w: int
    top: int
    left: int

    @classmethod
    def plan(cls, height: int, width: int, model_height: int, model_width: int, mode: str = "pad") -> "Placement":
        if mode not in MODES:
            raise ValueError(f"fit mode must be one of {', '.join(MODES)}; got '{mode}'")
        if min(height, width, model_height, model_width) < 1:
            raise ValueError(f"sizes must be positive; got {height}x{width} onto {model_height}x{model_width}")
        pick = min if mode == "pad" else max
        scale = pick(model_height / height, model_width / width)
        scaled_h = model_height if scale == model_height / height else max(1, round(height * scale))
        scaled_w = model_width if scale == model_width / width else max(1, round(width * scale))
        return cls(height, width, model_height, model_width, scaled_h, scaled_w,
                   (model_height - scaled_h) // 2, (model_width - scaled_w) // 2)

    def to_model(self, frames: torch.Tensor) -> torch.Tensor:
        """``[F, C, height, width]`` -> ``[F, C, model_height, model_width]``."""
        scaled = _resize(frames, self.scaled_h, self.scaled_w)
        canvas = scaled.new_zeros(*frames.shape[:2], self.model_height, self.model_width)
        src, dst = self._overlap()
        canvas[..., dst[0], dst[1]] = scaled[..., src[0], src[1]]
        return canvas

    def from_model(self, frames: torch.Tensor, original: torch.Tensor | None = None) -> torch.Tensor:
        """``[F, C, model_height, model_width]`` -> ``[F, C, height, width]``: the inverse of
        :meth:`to_model`. When cropped, the part of the frame the model never saw comes from
        ``original`` (``[F, C, height, width]``, required then)."""
        src, dst = self._overlap()
        if self.scaled_h <= self.model_height and self.scaled_w <= self.model_width:  # nothing was cut
            return _resize(frames[..., dst[0], dst[1]], self.height, self.width)
        if original is None:
            raise ValueError("a cropped placement needs the original frames to fill what the model did not see")
        scaled = _resize(original, self.scaled_h, self.scaled_w).clone()
        scaled[..., src[0], src[1]] = frames[..., dst[0], dst[1]].to(scaled.dtype)
        return _resize(scaled, self.height, self.width)

    def _overlap(self) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        """(rows, cols) of the scaled frame and of the canvas that coincide."""
        top, left = max(self.top, 0), max(self.left, 0)
        src_top, src_left = max(-self.top, 0), max(-self.left, 0)
        h = min(self.scaled_h - src_top, self.model_height - top)
        w = min(self.scaled_w - src_left, self.model_width - left)
        return ((slice(src_top, src_top + h), slice(src_left, src_left + w)),
                (slice(top, top + h), slice(left, left + w)))


def _resize(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if frames.shape[-2:] == (height, width):
        return frames
    work = frames if frames.dtype in (torch.float32, torch.float64) else frames.float()
    return F.interpolate(work, size=(height, width), mode="bilinear", antialias=True,
                         align_corners=False).to(frames.dtype)
