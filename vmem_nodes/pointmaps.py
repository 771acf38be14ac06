"""Pointmap providers: frames + cameras -> world points, depth and confidence.

The memory builds surfels from per-pixel world points (:class:`~.surfels.Pointmaps`). Where
they come from is behind one interface, :class:`PointmapProvider`:

- :class:`AnalyticProvider` ray-casts a scene of rectangles (tests, benchmarks, demos);
- :class:`DepthModelProvider` runs a monocular depth estimator from ``transformers``
  (the Depth Anything V2 class, ``AutoModelForDepthEstimation``), unprojects its depth
  with the known cameras and scales it to the memory: per frame, the median ratio of the
  memory's rendered depth to the predicted depth over the pixels where surfels are seen.

VMem itself uses CUT3R with a global alignment (non-commercial weights); such a provider
fits the same interface. Cameras follow :mod:`consistent_video.nodes.cameras.geometry` (OpenCV
c2w, normalised K, pixel centres at +0.5, z-depth).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..nodes.cameras.geometry import CameraBatch, camera_rays, unproject
from .surfels import Pointmaps, SurfelInputError

if TYPE_CHECKING:
    from .memory import SurfelMemory


class PointmapProvider(ABC):
    """``provider(frames [N,H,W,3] 0..1, cameras, memory) -> Pointmaps`` at the frames' size.

    ``memory`` is the :class:`~.memory.SurfelMemory` the frames are about to join (or None);
    providers whose scale is ambiguous align to it.
    """

    @abstractmethod
    def __call__(self, frames: torch.Tensor, cameras: CameraBatch,
                 memory: Optional["SurfelMemory"] = None) -> Pointmaps:
        ...


def _check_frames(frames, cameras) -> None:
    expected = "an IMAGE [N,H,W,3] with one frame per camera and H, W >= 1"
    if not isinstance(cameras, CameraBatch):
        raise SurfelInputError("cameras", f"is a {type(cameras).__name__}", "a CameraBatch")
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[-1] != 3:
        got = list(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise SurfelInputError("frames", f"is {got}", expected)
    if frames.shape[0] != len(cameras) or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise SurfelInputError("frames", f"has shape {list(frames.shape)} for {len(cameras)} cameras", expected)


@dataclass(frozen=True)
class Quad:
    """A rectangle ``centre + a * half_u + b * half_v`` for ``|a|, |b| <= 1`` (world, ``[3]`` each)."""

    centre: Sequence[float]
    half_u: Sequence[float]
    half_v: Sequence[float]


def box_quads(low: Sequence[float], high: Sequence[float]) -> list[Quad]:
    """The six faces of the axis-aligned box ``low..high``: x-, x+, y-, y+, z-, z+."""
    lo, hi = torch.tensor(low, dtype=torch.float64), torch.tensor(high, dtype=torch.float64)
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    faces = []
    for axis in range(3):
        u, v = [(axis + 1) % 3, (axis + 2) % 3]
        for side in (lo, hi):
            centre = mid.clone()
            centre[axis] = side[axis]
            hu, hv = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
            hu[u], hv[v] = half[u], half[v]
            faces.append(Quad(centre.tolist(), hu.tolist(), hv.tolist()))
    return faces


class AnalyticProvider(PointmapProvider):
    """Exact pointmaps of a scene of :class:`Quad` rectangles (the frames' pixels are not
    looked at, only their size). Pixels that hit nothing get confidence 0."""

    def __init__(self, quads: Sequence[Quad]):
        if not quads:
            raise SurfelInputError("quads", "is empty", "at least one Quad")
        self.centre = torch.tensor([q.centre for q in quads], dtype=torch.float32)
        self.half_u = torch.tensor([q.half_u for q in quads], dtype=torch.float32)
        self.half_v = torch.tensor([q.half_v for q in quads], dtype=torch.float32)

    def __call__(self, frames: torch.Tensor, cameras: CameraBatch,
                 memory: Optional["SurfelMemory"] = None) -> Pointmaps:
        _check_frames(frames, cameras)
        n, height, width = frames.shape[:3]
        cameras = cameras.to("cpu")
        rays = torch.einsum("nij,nhwj->nhwi", cameras.c2w[:, :3, :3], camera_rays(cameras, height, width))
        origin = cameras.centers()[:, None, None, :]
        depth = torch.full((n, height, width), float("inf"))
        for centre, hu, hv in zip(self.centre, self.half_u, self.half_v):
            normal = torch.cross(hu, hv, dim=0)
            denom = rays @ normal
            safe = torch.where(denom.abs() > 1e-12, denom, torch.ones_like(denom))
            t = ((centre - origin) @ normal) / safe
            offset = origin + t.unsqueeze(-1) * rays - centre
            inside = ((offset @ hu).abs() <= hu.dot(hu)) & ((offset @ hv).abs() <= hv.dot(hv))
            hit = (denom.abs() > 1e-12) & (t > 0) & inside
            depth = torch.where(hit & (t < depth), t, depth)  # rays have z = 1: t is z-depth
        valid = torch.isfinite(depth)
        depth = torch.where(valid, depth, torch.zeros_like(depth))
        points = origin + torch.where(valid, depth, torch.ones_like(depth)).unsqueeze(-1) * rays
        return Pointmaps(points, depth, valid.float())


class DepthModelProvider(PointmapProvider):
    """Pointmaps from a monocular depth estimator, scaled to the memory.

    Args:
        estimator: ``frames [N,H,W,3] 0..1 -> [N,H,W]`` predicted disparity (relative
            models) or depth (metric models).
        output: ``"disparity"`` (depth = 1 / disparity: the shift of an affine-invariant
            disparity is taken as 0) or ``"depth"``.
        align_width: width of the memory renders used for the scale (height by aspect).
        min_overlap: rendered pixels a frame needs for its own scale; frames with fewer
            take the median scale of the others, or the last scale used (1 at first).
        start_depth: when the memory is empty (the first frames of a walk), scale the
            prediction so its median depth is this many scene units (None: scale 1).
    """

    def __init__(self, estimator: Callable[[torch.Tensor], torch.Tensor], output: str = "disparity",
                 align_width: int = 64, min_overlap: int = 32, start_depth: Optional[float] = None):
        if output not in ("disparity", "depth"):
            raise SurfelInputError("output", f"is {output!r}", "'disparity' or 'depth'")
        if start_depth is not None and not start_depth > 0:
            raise SurfelInputError("start_depth", f"is {start_depth}", "a positive depth or None")
        self.estimator, self.output = estimator, output
        self.align_width, self.min_overlap = align_width, min_overlap
        self.start_depth = start_depth
        self.scale = 1.0

    @classmethod
    def from_pretrained(cls, source: Union[str, Path], device: Union[str, torch.device] = "cpu",
                        dtype: torch.dtype = torch.float32, local_files_only: bool = True,
                        **kwargs) -> "DepthModelProvider":
        """Load a ``transformers`` depth model and its image processor from ``source`` (a
        folder, or a Hugging Face repo id when ``local_files_only=False``; the caller
        decides whether to download). Relative models give disparity, metric ones depth
        (``config.depth_estimation_type``). ``kwargs`` go to the constructor."""
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation
        processor = AutoImageProcessor.from_pretrained(str(source), local_files_only=local_files_only)
        model = AutoModelForDepthEstimation.from_pretrained(str(source), local_files_only=local_files_only)
        model = model.to(device, dtype).eval()
        kind = getattr(model.config, "depth_estimation_type", "relative")

        @torch.no_grad()
        def estimate(frames: torch.Tensor) -> torch.Tensor:
            images = [f for f in (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()]
            pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(device, dtype)
            predicted = model(pixel_values=pixels).predicted_depth.float()
            return F.interpolate(predicted.unsqueeze(1), size=tuple(frames.shape[1:3]), mode="bilinear",
                                 align_corners=False)[:, 0].cpu()

        kwargs.setdefault("output", "depth" if kind == "metric" else "disparity")
        return cls(estimate, **kwargs)

    def _scales(self, depth: torch.Tensor, valid: torch.Tensor, cameras: CameraBatch,
                memory: Optional["SurfelMemory"]) -> torch.Tensor:
        """Per-frame factor ``[N]`` taking predicted depth to the memory's scale."""
        n, height, width = depth.shape
        if memory is None or memory.num_surfels == 0:
            if self.start_depth is not None and bool(valid.any()):
                return torch.full((n,), self.start_depth / float(depth[valid].median().clamp_min(1e-12)))
            return torch.full((n,), self.scale)
        w = min(self.align_width, width)
        h = max(1, round(w * height / width))
        small = F.interpolate(depth.unsqueeze(1), size=(h, w), mode="nearest")[:, 0]
        small_valid = F.interpolate(valid.float().unsqueeze(1), size=(h, w), mode="nearest")[:, 0] > 0
        found = []
        for i in range(n):
            seen = memory.render(cameras[i], w, h)
            use = (seen.surfel >= 0) & small_valid[i]
            found.append(float((seen.depth[use] / small[i][use]).median()) if int(use.sum()) >= self.min_overlap
                         else float("nan"))
        scales = torch.tensor(found)
        known = scales[~scales.isnan()]
        fallback = float(known.median()) if known.numel() else self.scale
        return torch.where(scales.isnan(), torch.full_like(scales, fallback), scales)

    def __call__(self, frames: torch.Tensor, cameras: CameraBatch,
                 memory: Optional["SurfelMemory"] = None) -> Pointmaps:
        _check_frames(frames, cameras)
        cameras = cameras.to("cpu")
        predicted = self.estimator(frames).to("cpu", torch.float32)
        if tuple(predicted.shape) != tuple(frames.shape[:3]):
            raise SurfelInputError("estimator output", f"is {list(predicted.shape)}",
                                   f"[N,H,W] = {list(frames.shape[:3])}")
        finite = torch.isfinite(predicted)
        predicted = torch.where(finite, predicted, torch.zeros_like(predicted))
        if self.output == "disparity":
            peak = predicted.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
            valid = finite & (predicted > 1e-3 * peak)
            depth = 1.0 / torch.where(valid, predicted, torch.ones_like(predicted))
        else:
            valid = finite & (predicted > 0)
            depth = torch.where(valid, predicted, torch.ones_like(predicted))
        scales = self._scales(depth, valid, cameras, memory)
        self.scale = float(scales.median())
        depth = depth * scales.view(-1, 1, 1)
        points = unproject(depth, cameras)
        return Pointmaps(points, torch.where(valid, depth, torch.zeros_like(depth)), valid.float())
