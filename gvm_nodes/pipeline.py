"""GVM inference: one-step latent prediction of alpha, in overlapping windows.

Per window of frames (all tensors float; frames ``[T,H,W,3]`` 0..1, alpha ``[T,H,W]`` 0..1):

1. resize so the short side is ``size`` unless the long side would pass
   ``max_resolution`` (then the long side is ``max_resolution``), torchvision's rule;
   reflect-pad bottom/right to a multiple of 32 (cropped off again at the end);
2. encode ``2*rgb-1`` with the VAE (``latent_dist.mode() * scaling_factor``);
3. one UNet call on ``[zeros, image_latent]`` (8 channels, that order) at timestep
   ``num_train_timesteps - 1`` with one all-zero cross-attention token; the output
   *is* the alpha latent. Each refinement step feeds it back in place of the zeros at
   the same timestep;
4. decode in chunks of ``decode_chunk_size`` frames (the temporal decoder mixes the
   frames of a chunk), mean over RGB, ``*0.5+0.5``, clamp to [0,1], crop, resize back.

Windows of ``frames_per_window`` frames advance by ``frames_per_window - overlap``;
overlapping frames are cross-faded linearly in alpha space, and the last window is
moved back so it is full length. :func:`matte_stream` works on a stream of frames and
holds at most two windows of frames and alphas, whatever the video length.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F

from ..nodes.comfy import runtime

PAD_MULTIPLE = 32


@dataclass(frozen=True)
class MatteSettings:
    """User-facing knobs of the procedure (defaults follow the GVM README run)."""

    size: int = 720
    max_resolution: int = 960
    frames_per_window: int = 8
    overlap: int = 2
    refine_steps: int = 0
    decode_chunk_size: int = 8
    clamp: bool = False
    clamp_low: float = 25 / 255
    clamp_high: float = 240 / 255

    def validate(self) -> None:
        """Raise :class:`SettingError` naming the first out-of-range setting."""
        if self.size < 32:
            raise SettingError("size", f"is {self.size}", "at least 32")
        if self.max_resolution < 32:
            raise SettingError("max_resolution", f"is {self.max_resolution}", "at least 32")
        if self.frames_per_window < 1:
            raise SettingError("frames_per_window", f"is {self.frames_per_window}", "at least 1")
        if not 0 <= self.overlap < self.frames_per_window:
            raise SettingError("overlap", f"is {self.overlap}",
                               f"0 <= overlap < frames_per_window ({self.frames_per_window})")
        if self.refine_steps < 0:
            raise SettingError("refine_steps", f"is {self.refine_steps}", "0 or more")
        if self.decode_chunk_size < 1:
            raise SettingError("decode_chunk_size", f"is {self.decode_chunk_size}", "at least 1")
        if self.clamp and not 0.0 <= self.clamp_low < self.clamp_high <= 1.0:
            raise SettingError("clamp_low", f"is {self.clamp_low} with clamp_high {self.clamp_high}",
                               "0 <= clamp_low < clamp_high <= 1")


class SettingError(ValueError):
    """An out-of-range :class:`MatteSettings` field: ``name``, ``problem``, ``expected``."""

    def __init__(self, name: str, problem: str, expected: str):
        self.name, self.problem, self.expected = name, problem, expected
        super().__init__(f"{name} {problem}; expected {expected}")


def working_size(height: int, width: int, size: int, max_resolution: int) -> tuple[int, int]:
    """(height, width) after "short side to ``size``, long side capped at ``max_resolution``".

    Same arithmetic as torchvision's ``Resize(size, max_size=max_resolution)`` (lengths
    truncated), except that ``max_resolution <= size`` is allowed and simply caps.
    """
    short, long = (height, width) if height <= width else (width, height)
    new_short, new_long = size, int(size * long / short)
    if new_long > max_resolution:
        new_short, new_long = int(max_resolution * new_short / new_long), max_resolution
    new_short = max(new_short, 1)
    return (new_short, new_long) if height <= width else (new_long, new_short)


def _resize(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[N,C,H,W]`` (antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    shrink = hw[0] < x.shape[-2] or hw[1] < x.shape[-1]
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=shrink)


def _reflect_pad(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Pad bottom/right of ``[N,C,H,W]`` to a multiple (reflect; replicate if too small)."""
    ph, pw = (-x.shape[-2]) % multiple, (-x.shape[-1]) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class GVMMatter:
    """The networks plus the per-window procedure (steps 1-4 of the module doc).

    ``unet``: :class:`~.model.GVMUNet`; ``vae``: diffusers
    ``AutoencoderKLTemporalDecoder``; both already on ``device`` in ``dtype``.
    """

    def __init__(self, unet: torch.nn.Module, vae: torch.nn.Module, num_train_timesteps: int,
                 settings: MatteSettings):
        settings.validate()
        self.unet, self.vae, self.settings = unet, vae, settings
        self.timestep = num_train_timesteps - 1
        self.device = next(unet.parameters()).device
        self.unet_dtype = next(unet.parameters()).dtype
        self.vae_dtype = next(vae.parameters()).dtype
        self.scaling = float(vae.config.scaling_factor)

    @torch.no_grad()
    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """``[T,3,H,W]`` in [-1,1] -> latents ``[T,4,h,w]`` (scaled), in chunks."""
        out = []
        for chunk in rgb.split(self.settings.decode_chunk_size):
            dist = self.vae.encode(chunk.to(self.device, self.vae_dtype)).latent_dist
            out.append(dist.mode() * self.scaling)
        return torch.cat(out)

    @torch.no_grad()
    def predict(self, image_latents: torch.Tensor) -> torch.Tensor:
        """Alpha latents ``[T,4,h,w]`` from image latents ``[T,4,h,w]`` (one window)."""
        cond = image_latents.unsqueeze(0).to(self.unet_dtype)
        current = torch.zeros_like(cond)
        context = cond.new_zeros(1, 1, self.unet.context_dim)
        t = torch.tensor([self.timestep], device=self.device)
        for _ in range(1 + self.settings.refine_steps):
            current = self.unet(torch.cat([current, cond], dim=2), t, context).sample
        return current[0]

    @torch.no_grad()
    def decode_alpha(self, latents: torch.Tensor) -> torch.Tensor:
        """Alpha latents ``[T,4,h,w]`` -> alpha ``[T,H,W]`` in [0,1] (float32)."""
        out = []
        for chunk in latents.split(self.settings.decode_chunk_size):
            rgb = self.vae.decode(chunk.to(self.vae_dtype) / self.scaling, num_frames=chunk.shape[0]).sample
            out.append((rgb.float().mean(dim=1) * 0.5 + 0.5).clamp(0.0, 1.0))
        return torch.cat(out)

    def matte_window(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames ``[T,H,W,3]`` (any device) -> alpha ``[T,H,W]`` float32 on the CPU.

        Cancel stops the window before the next block of the UNet or the VAE
        (:func:`~consistent_video.nodes.comfy.runtime.interruptible`).
        """
        s = self.settings
        height, width = frames.shape[1:3]
        hw = working_size(height, width, s.size, s.max_resolution)
        x = frames.permute(0, 3, 1, 2).to(self.device, torch.float32)
        x = _reflect_pad(_resize(x, hw)) * 2.0 - 1.0
        with runtime.interruptible(self.unet, self.vae):
            alpha = self.decode_alpha(self.predict(self.encode(x)))
        alpha = alpha[:, : hw[0], : hw[1]]
        return _resize(alpha.unsqueeze(1), (height, width))[:, 0].clamp(0.0, 1.0).cpu()


def apply_clamp(alpha: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """GVM's hard thresholds: ``alpha <= low`` -> 0, ``alpha >= high`` -> 1, rest kept."""
    alpha = alpha.clone()
    alpha[alpha <= low] = 0.0
    alpha[alpha >= high] = 1.0
    return alpha


def window_count(num_frames: int, frames_per_window: int, overlap: int) -> int:
    """How many windows :func:`matte_stream` runs for ``num_frames`` frames."""
    if num_frames <= 0:
        return 0
    if num_frames <= frames_per_window:
        return 1
    return 1 + math.ceil((num_frames - frames_per_window) / (frames_per_window - overlap))


def matte_stream(frames: Iterable[torch.Tensor], window_fn: Callable[[torch.Tensor], torch.Tensor],
                 frames_per_window: int, overlap: int,
                 on_window: Optional[Callable[[], None]] = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(frame [H,W,3], alpha [H,W])`` for every frame of a stream, in order.

    ``window_fn(frames [n,H,W,3]) -> alpha [n,H,W]``. Each window's frames get weight 1,
    ramping linearly over frames shared with the previous window (in) and the next one
    (out), and every frame's alpha is the weighted mean of the windows that saw it: at a
    border consecutive frames move by at most 1/(overlap+1) of the two windows'
    disagreement, so there is no seam. A frame is emitted once no later window can
    cover it (the last window is moved back to full length, so that is one frame past
    the current window's start): at most ``2*frames_per_window - overlap + 1`` frames are
    held at a time, whatever the stream's length.
    """
    if frames_per_window < 1 or not 0 <= overlap < frames_per_window:
        raise ValueError(f"need frames_per_window >= 1 and 0 <= overlap < frames_per_window, "
                         f"got {frames_per_window}, {overlap}")
    source = iter(frames)
    held: deque[tuple[int, torch.Tensor]] = deque()  # frames read and not yet emitted
    acc: dict[int, list] = {}  # index -> [weighted alpha sum, weight sum]
    n_read, exhausted = 0, False
    start, covered = 0, 0  # next window's start; end of what windows have covered so far

    def read_until(count: int) -> None:
        nonlocal n_read, exhausted
        while not exhausted and n_read < count:
            frame = next(source, None)
            if frame is None:
                exhausted = True
            else:
                held.append((n_read, frame))
                n_read += 1

    def emit(upto: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while held and held[0][0] < upto:
            index, frame = held.popleft()
            total, weight = acc.pop(index)
            yield frame, total / weight

    while True:
        read_until(start + frames_per_window + 1)  # one frame of lookahead: is this the last window?
        final = exhausted
        if final:
            end = n_read
            start = max(0, end - frames_per_window)
            if end <= covered:
                break
        else:
            end = start + frames_per_window
        window = torch.stack([f for i, f in held if start <= i < end])
        alpha = window_fn(window)
        for offset, i in enumerate(range(start, end)):
            weight = 1.0
            if i < covered:
                weight = min(weight, (i - start + 1) / (covered - start + 1))
            if not final and i >= end - overlap:
                weight = min(weight, (end - i) / (overlap + 1))
            entry = acc.setdefault(i, [torch.zeros_like(alpha[offset]), 0.0])
            entry[0] += weight * alpha[offset]
            entry[1] += weight
        covered = end
        if on_window is not None:
            on_window()
        if final:
            break
        yield from emit(start + 1)  # later windows start after `start` (see docstring)
        start = end - overlap
    yield from emit(n_read)


def matte_frames(frames: torch.Tensor, window_fn: Callable[[torch.Tensor], torch.Tensor],
                 frames_per_window: int, overlap: int,
                 on_window: Optional[Callable[[], None]] = None) -> torch.Tensor:
    """Alpha ``[T,H,W]`` for an in-memory IMAGE batch ``[T,H,W,3]`` (see :func:`matte_stream`)."""
    alphas: list[torch.Tensor] = [alpha for _, alpha in
                                  matte_stream(frames, window_fn, frames_per_window, overlap, on_window)]
    return torch.stack(alphas)

