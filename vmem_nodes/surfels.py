"""Surfels from world pointmaps (VMem's surface elements), vectorised over frames.

A surfel is an oriented disk in world space: centre ``position [3]``, unit ``normal [3]``
pointing towards the camera that observed it, and ``radius`` (world units). Cameras
follow :mod:`consistent_video.nodes.cameras.geometry`: OpenCV camera-to-world ``c2w [N,4,4]``
(x right, y down, z forward) and intrinsics ``K [N,3,3]`` normalised by the image size.

One frame's pointmap ``[H,W,3]`` becomes at most ``gh x gw`` surfels:

1. **Downsample.** Take every ``stride``-th pixel on both axes, ``stride`` = the longer
   side over ``grid_size`` (512x384 -> 25x19 = 475 surfels, VMem's count). VMem resizes
   bilinearly instead: a bilinear blend of a foreground and a background point lies on
   neither surface. Samples are evenly spaced, so equal disks cover a surface evenly.
2. **Filter.** Keep a sample whose confidence is at least ``min_confidence``, whose depth
   is positive and at most the frame's ``max_depth_quantile`` of depths.
3. **Normal.** Cross product of the horizontal and the vertical difference to a
   neighbouring sample; on each axis the neighbour closer in space is used, so a sample
   next to a depth edge takes its normal from its own surface (VMem always uses the
   right and lower neighbours and leaves the last row and column with zero normals).
   The normal is flipped to face the camera.
4. **Radius.** ``radius_scale * depth / focal / (0.2 + 0.8 |cos|)``: depth is z-depth,
   focal is in samples (``sqrt(2 / (1/fx^2 + 1/fy^2))`` of the pixel focal lengths over
   ``stride``, so ``radius_scale = sqrt(1/2)`` reaches exactly the corners of a sample's
   cell head-on), ``cos`` is between the normal and the direction to the camera, so a
   surface seen at a grazing angle gets larger disks.

Invalid pixels are marked with a low confidence; points themselves must be finite.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


class SurfelInputError(ValueError):
    """A malformed input: ``"<argument> <problem>; expected <expected>"``."""

    def __init__(self, argument: str, problem: str, expected: str):
        self.argument, self.problem, self.expected = argument, problem, expected
        super().__init__(f"{argument} {problem}; expected {expected}")


@dataclass
class Pointmaps:
    """Per-pixel geometry of N frames: world ``points [N,H,W,3]``, z-``depth [N,H,W]`` and
    ``confidence [N,H,W]`` (1 = valid, 0 = no geometry; finite points everywhere)."""

    points: torch.Tensor
    depth: torch.Tensor
    confidence: torch.Tensor

    def __len__(self) -> int:
        return self.points.shape[0]


@dataclass(frozen=True)
class SurfelSettings:
    """How frames become surfels (defaults follow VMem's ``surfel`` config, except one).

    ``radius_scale`` is 0.75, not VMem's 0.5: above ``sqrt(1/2)`` a disk reaches past the
    corners of its sample's cell, so one frame's disks cover the surface it saw without
    gaps. With 0.5 a fifth of every surface is left open between the disks, and surfaces
    hidden behind it vote through the holes.
    """

    grid_size: int = 25
    min_confidence: float = 1.0
    max_depth_quantile: float = 0.999
    radius_scale: float = 0.75

    def validate(self) -> None:
        """Raise :class:`SurfelInputError` naming the first out-of-range setting."""
        if self.grid_size < 2:
            raise SurfelInputError("grid_size", f"is {self.grid_size}", "at least 2")
        if not 0.0 < self.max_depth_quantile <= 1.0:
            raise SurfelInputError("max_depth_quantile", f"is {self.max_depth_quantile}", "in (0, 1]")
        if not self.radius_scale > 0.0:
            raise SurfelInputError("radius_scale", f"is {self.radius_scale}", "a positive number")


@dataclass
class Surfels:
    """A set of surfels, each observed by one frame of the batch it was made from.

    ``position [M,3]``, ``normal [M,3]`` (unit, facing the observing camera) and
    ``radius [M]`` are float32 world quantities; ``frame [M]`` (int64) is the index of the
    observing frame within that batch, in increasing order.
    """

    position: torch.Tensor
    normal: torch.Tensor
    radius: torch.Tensor
    frame: torch.Tensor

    def __len__(self) -> int:
        return self.position.shape[0]


def grid_stride(height: int, width: int, grid_size: int) -> int:
    """Pixels between samples: the longer side over ``grid_size``, rounded (at least 1)."""
    return max(1, round(max(height, width) / grid_size))


def grid_pixels(length: int, stride: int) -> torch.Tensor:
    """Pixel indices ``[g]`` sampled along an axis of ``length`` pixels: the centres of the
    whole cells of ``stride`` pixels, the cells centred on the axis (at least one sample)."""
    count = max(1, length // stride)
    first = (length - count * stride) // 2 + stride // 2
    return (first + stride * torch.arange(count)).clamp(max=length - 1)


def grid_shape(height: int, width: int, grid_size: int) -> tuple[int, int]:
    """``(gh, gw)``: samples per frame along each axis (512x384 and 25 -> 19 x 25)."""
    stride = grid_stride(height, width, grid_size)
    return len(grid_pixels(height, stride)), len(grid_pixels(width, stride))


def sample_grid(x: torch.Tensor, stride: int) -> torch.Tensor:
    """``x [N,H,W,...]`` at the pixels of :func:`grid_pixels` on both axes: ``[N,gh,gw,...]``."""
    rows = grid_pixels(x.shape[1], stride).to(x.device)
    cols = grid_pixels(x.shape[2], stride).to(x.device)
    return x[:, rows][:, :, cols]


def _difference(points: torch.Tensor, valid: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the difference to the closer valid neighbour along ``dim`` (1 rows, 2 columns).

    Returns ``(diff [N,h,w,3], ok [N,h,w])``; the difference always points in the +``dim``
    direction (``next - this`` or ``this - previous``), so cross products keep their sign.
    """
    n = points.shape[dim]
    forward = torch.zeros_like(points)
    backward = torch.zeros_like(points)
    f_ok = torch.zeros_like(valid)
    b_ok = torch.zeros_like(valid)
    if n > 1:
        here, after = points.narrow(dim, 0, n - 1), points.narrow(dim, 1, n - 1)
        ok = valid.narrow(dim, 0, n - 1) & valid.narrow(dim, 1, n - 1)
        forward.narrow(dim, 0, n - 1).copy_(after - here)
        backward.narrow(dim, 1, n - 1).copy_(after - here)
        f_ok.narrow(dim, 0, n - 1).copy_(ok)
        b_ok.narrow(dim, 1, n - 1).copy_(ok)
    use_forward = f_ok & (~b_ok | (forward.norm(dim=-1) <= backward.norm(dim=-1)))
    return torch.where(use_forward.unsqueeze(-1), forward, backward), f_ok | b_ok


def estimate_normals(points: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit normals of grid pointmaps ``points [N,h,w,3]`` where ``valid [N,h,w]``.

    Returns ``(normal [N,h,w,3], ok [N,h,w])``; ``ok`` is false where a sample has no valid
    neighbour on one of the axes or the two differences are (nearly) parallel. The sign is
    not oriented (see :func:`surfels_from_pointmaps`).
    """
    dx, ok_x = _difference(points, valid, 2)
    dy, ok_y = _difference(points, valid, 1)
    normal = torch.cross(dx, dy, dim=-1)
    length = normal.norm(dim=-1)
    ok = valid & ok_x & ok_y & (length > 1e-6 * dx.norm(dim=-1) * dy.norm(dim=-1)) & (length > 0)
    return normal / length.clamp_min(1e-30).unsqueeze(-1), ok


def check_pointmaps(points, confidence, c2w, K) -> None:
    """Raise :class:`SurfelInputError` unless ``points [N,H,W,3]``, ``confidence [N,H,W]``,
    ``c2w [N,4,4]`` and ``K [N,3,3]`` agree, have N, H, W >= 1 and are finite floats."""
    shape = "[N,H,W,3] float world points with N, H, W >= 1"
    if not isinstance(points, torch.Tensor) or points.dim() != 4 or points.shape[-1] != 3:
        got = list(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise SurfelInputError("points", f"is {got}", shape)
    n, height, width = points.shape[:3]
    if n == 0 or height == 0 or width == 0:
        raise SurfelInputError("points", f"has shape {list(points.shape)} (no frames or zero-size frames)", shape)
    if not torch.is_floating_point(points):
        raise SurfelInputError("points", f"has dtype {points.dtype}", shape)
    expected = {"confidence": (confidence, (n, height, width), "[N,H,W]"),
                "c2w": (c2w, (n, 4, 4), "[N,4,4] OpenCV camera-to-world"),
                "K": (K, (n, 3, 3), "[N,3,3] normalised intrinsics")}
    for name, (value, want, text) in expected.items():
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != want:
            got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise SurfelInputError(name, f"is {got}", f"{text} = {list(want)} to match points {list(points.shape)}")
        if not torch.is_floating_point(value):
            raise SurfelInputError(name, f"has dtype {value.dtype}", f"{text} floats")
    for name, value in (("points", points), ("confidence", confidence), ("c2w", c2w), ("K", K)):
        bad = int((~torch.isfinite(value)).sum())
        if bad:
            hint = " (mark invalid pixels with a low confidence, not NaN)" if name == "points" else ""
            raise SurfelInputError(name, f"has {bad} NaN or infinite values", f"finite values{hint}")


def surfels_from_pointmaps(points: torch.Tensor, confidence: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor,
                           settings: SurfelSettings = SurfelSettings()) -> Surfels:
    """Surfels of every frame (steps 1-4 of the module doc).

    Args:
        points: ``[N,H,W,3]`` world points of each pixel.
        confidence: ``[N,H,W]``; pixels below ``settings.min_confidence`` are dropped.
        c2w: ``[N,4,4]`` OpenCV camera-to-world of each frame.
        K: ``[N,3,3]`` intrinsics normalised by the image size.
    Returns:
        :class:`Surfels` on the CPU in float32, ordered by frame then grid row and column.
    """
    settings.validate()
    check_pointmaps(points, confidence, c2w, K)
    points = points.detach().to("cpu", torch.float32)
    confidence = confidence.detach().to("cpu", torch.float32)
    c2w = c2w.detach().to("cpu", torch.float32)
    K = K.detach().to("cpu", torch.float32)
    n, height, width = points.shape[:3]
    stride = grid_stride(height, width, settings.grid_size)
    p = sample_grid(points, stride)                                  # [N,gh,gw,3]
    conf = sample_grid(confidence, stride)                           # [N,gh,gw]
    gh, gw = conf.shape[1:]
    centre = c2w[:, None, None, :3, 3]
    depth = ((p - centre) * c2w[:, None, None, :3, 2]).sum(-1)      # z-depth in each camera
    valid = (conf >= settings.min_confidence) & (depth > 0)
    if settings.max_depth_quantile < 1.0:
        for i in range(n):  # per-frame quantile over the valid samples (a few hundred values)
            if valid[i].any():
                limit = torch.quantile(depth[i][valid[i]], settings.max_depth_quantile)
                valid[i] &= depth[i] <= limit
    normal, ok = estimate_normals(p, valid)
    to_camera = centre - p
    distance = to_camera.norm(dim=-1).clamp_min(1e-12)
    cos = (normal * to_camera).sum(-1) / distance
    normal = torch.where((cos < 0).unsqueeze(-1), -normal, normal)
    fx, fy = K[:, 0, 0] * width / stride, K[:, 1, 1] * height / stride  # focal lengths in samples
    focal = (2.0 / (fx.reciprocal().square() + fy.reciprocal().square())).sqrt()
    radius = settings.radius_scale * depth / focal[:, None, None] / (0.2 + 0.8 * cos.abs())
    frame = torch.arange(n).view(n, 1, 1).expand(n, gh, gw)
    return Surfels(p[ok].contiguous(), normal[ok].contiguous(), radius[ok].contiguous(), frame[ok].contiguous())
