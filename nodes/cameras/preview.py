"""Draw a camera path, its frusta and optional coloured points into an IMAGE (torch + PIL).

Views (``view``; the world's up is -y, see :mod:`.trajectories`):

- ``"top"`` (default): orthographic, looking down from above; world +x to the right,
  world +z (the identity camera's viewing direction) up the picture. Best for walks.
- ``"front"``: orthographic along +z (behind the identity camera), up is up.
- ``"side"``: orthographic from +x looking towards -x; world +z to the right.
- ``"perspective"``: a virtual pinhole camera above, behind and to the right of the path,
  looking at the centre of the cameras. Best for orbits and look-up/down moves.

The drawing fits everything in the frame. The path joins the camera centres (grey);
each frustum is a pyramid from the centre to the image corners at depth ``frustum_size``
with a small triangle on the image's top edge (so roll and upside-down cameras show),
coloured from blue (first camera) over purple to orange (last camera); the first frustum is drawn
green and the last red. Points are splatted one pixel each with a z-buffer.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from .geometry import CameraBatch, look_at, unproject
from .trajectories import WORLD_UP

VIEWS = ("top", "perspective", "front", "side")
MIN_SIZE = 16  # smallest preview width and height in pixels
_ORTHO = {  # rows: view x (right), view y (down), view z (away from the viewer), in world axes
    "top": [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]],
    "front": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
    "side": [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]],
}
_BACKGROUND = (30, 30, 34)
_PATH = (170, 170, 170)
_FIRST, _LAST = (60, 220, 90), (240, 60, 60)
_GRADIENT = np.array([[60.0, 140.0, 255.0], [190.0, 90.0, 230.0], [255.0, 150.0, 40.0]])  # blue, purple, orange


def frustum_points(cams: CameraBatch, size: float) -> torch.Tensor:
    """World points ``[N,8,3]`` of each camera's frustum: centre, the four image corners at
    z-depth ``size`` (top-left, top-right, bottom-right, bottom-left), and the three
    corners of the "up" triangle above the top edge."""
    Kinv = torch.linalg.inv(cams.K)  # normalised: image corners are (0,0)..(1,1)
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.2, 0.0], [0.8, 0.0], [0.5, -0.25]])
    uv1 = torch.cat([uv, torch.ones(len(uv), 1)], -1).to(cams.device)
    pts = torch.einsum("nij,kj->nki", Kinv, uv1) * size  # z = size
    pts = torch.cat([torch.zeros_like(pts[:, :1]), pts], 1)
    return torch.einsum("nij,nkj->nki", cams.c2w[:, :3, :3], pts) + cams.c2w[:, None, :3, 3]


def _view_transform(view: str, centres: torch.Tensor, forward: torch.Tensor, extent: float):
    """World -> view coordinates ``(R [3,3], t [3])`` and whether the view is perspective."""
    if view in _ORTHO:
        return torch.tensor(_ORTHO[view]), torch.zeros(3), False
    target = (centres.amin(0) + centres.amax(0)) / 2
    back = -forward.mean(0)
    back = back - (back @ WORLD_UP) * WORLD_UP  # horizontal
    if back.norm() < 1e-6:
        back = torch.tensor([0.0, 0.0, -1.0])
    back = back / back.norm()
    right = torch.linalg.cross(-WORLD_UP, -back)  # the path's right seen from behind
    direction = back + 0.8 * WORLD_UP + 0.5 * right
    eye = target + direction / direction.norm() * 2.2 * extent
    c2w = look_at(eye, target, WORLD_UP)
    R = c2w[:3, :3].T
    return R, -R @ eye, True


def render_camera_preview(cams: CameraBatch, width: int = 512, height: int = 512, view: str = "top",
                          frustum_size: float = 0.0, points: torch.Tensor | None = None,
                          colors: torch.Tensor | None = None, max_frusta: int = 64) -> torch.Tensor:
    """Render a preview IMAGE ``[1,height,width,3]`` (float 0..1) of the cameras.

    Args:
        cams: the cameras (OpenCV c2w).
        view: one of :data:`VIEWS` (see the module docstring).
        frustum_size: frustum depth in scene units; 0 chooses 8% of the path's extent
            (or 0.3 for a single camera / a path without extent).
        points: optional world points ``[M,3]``; ``colors`` ``[M,3]`` 0..1 (default white).
        max_frusta: draw at most this many frusta (evenly spaced; first and last always).
    """
    if view not in VIEWS:
        raise ValueError(f"unknown preview view '{view}'; expected one of {', '.join(VIEWS)}")
    if width < MIN_SIZE or height < MIN_SIZE:
        raise ValueError(f"preview size must be at least {MIN_SIZE}x{MIN_SIZE}, got {width}x{height}")
    cams = cams.to("cpu")
    n = len(cams)
    centres = cams.centers()
    extent = float((centres.amax(0) - centres.amin(0)).norm())
    if points is not None and len(points):
        pts_all = points.detach().float().cpu().reshape(-1, 3)
        finite = torch.isfinite(pts_all).all(-1)
        points = pts_all[finite]
        colors = None if colors is None else colors.detach().float().cpu().reshape(-1, 3)[finite]
        if len(points):
            extent = max(extent, float((points.amax(0) - points.amin(0)).norm()))
    size = frustum_size if frustum_size > 0 else (0.08 * extent if extent > 1e-6 else 0.3)
    scene_extent = max(extent, size * 4)
    R, t, perspective = _view_transform(view, centres, cams.forward_axes(), scene_extent)

    shown = torch.linspace(0, n - 1, min(n, max_frusta)).round().long().unique()
    fr = frustum_points(cams[shown], size)  # [F,8,3]

    def to_view(p):
        v = p @ R.T + t
        if perspective:
            z = v[..., 2:].clamp(min=1e-6)
            return torch.cat([v[..., :2] / z, v[..., 2:]], -1)
        return v

    fr_v, cen_v = to_view(fr), to_view(centres)
    pts_v = to_view(points) if points is not None and len(points) else None
    if perspective:  # keep what lies in front of the virtual camera
        keep = (fr_v[..., 2] > 1e-3).all(-1)
        fr_v, shown = fr_v[keep], shown[keep]
        if pts_v is not None:
            front = pts_v[:, 2] > 1e-3
            pts_v, colors = pts_v[front], None if colors is None else colors[front]
    all_xy = [fr_v[..., :2].reshape(-1, 2), cen_v[:, :2]]
    if pts_v is not None and len(pts_v):
        all_xy.append(pts_v[:, :2])
    xy = torch.cat(all_xy)
    lo, hi = xy.amin(0), xy.amax(0)
    margin = 0.08 * min(width, height)
    span = (hi - lo).clamp(min=1e-9)
    scale = float(torch.minimum((width - 2 * margin) / span[0], (height - 2 * margin) / span[1]))
    offset = torch.tensor([width / 2.0, height / 2.0]) - (lo + hi) / 2 * scale

    def to_px(v):
        return v[..., :2] * scale + offset

    img = torch.tensor(_BACKGROUND, dtype=torch.float32).expand(height, width, 3).clone()
    if pts_v is not None and len(pts_v):
        img = _splat(img, to_px(pts_v), pts_v[:, 2], colors)
    canvas = Image.fromarray(img.round().clamp(0, 255).to(torch.uint8).numpy())
    draw = ImageDraw.Draw(canvas)
    line_w = max(1, round(min(width, height) / 256))
    if n > 1:  # (in the perspective view every centre is in front: the eye is 2.2 extents away)
        draw.line([tuple(p) for p in to_px(cen_v).tolist()], fill=_PATH, width=line_w)
    fr_px = to_px(fr_v).tolist()
    order = sorted(range(len(shown)), key=lambda k: (shown[k] == 0, shown[k] == n - 1))  # first, last on top
    for k, i in ((k, int(shown[k])) for k in order):
        frac = i / max(n - 1, 1)
        colour = _FIRST if i == 0 else _LAST if i == n - 1 and n > 1 else _gradient(frac)
        c, a, b, d, e, tl, tr, tip = (tuple(p) for p in fr_px[k])
        for corner in (a, b, d, e):
            draw.line([c, corner], fill=colour, width=line_w)
        draw.line([a, b, d, e, a], fill=colour, width=line_w)
        draw.polygon([tl, tr, tip], outline=colour)
    draw.text((6, 4), f"{view} view, {n} camera{'s' if n != 1 else ''}", fill=(220, 220, 220))
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).unsqueeze(0)


def _gradient(frac: float) -> tuple[int, int, int]:
    pos = frac * (len(_GRADIENT) - 1)
    k = min(int(pos), len(_GRADIENT) - 2)
    c = _GRADIENT[k] * (1 - (pos - k)) + _GRADIENT[k + 1] * (pos - k)
    return tuple(int(v) for v in c)


def points_from_depth(cams: CameraBatch, depth: torch.Tensor, images: torch.Tensor | None = None,
                      max_points: int = 50000) -> tuple[torch.Tensor, torch.Tensor | None]:
    """World points and colours to preview from z-depth maps.

    Args:
        depth: ``[N,H,W]`` z-depth in scene units, one map per camera; values <= 0 or
            non-finite are skipped.
        images: optional ``[N,h,w,3]`` 0..1 colours, resized (bilinear) to the depth size.
        max_points: keep at most this many points (an evenly strided subset).
    Returns:
        ``(points [M,3], colors [M,3] or None)``.
    """
    pts = unproject(depth.float().cpu(), cams.to("cpu"))  # [N,H,W,3]
    cols = None
    if images is not None:
        cols = torch.nn.functional.interpolate(images.float().cpu().permute(0, 3, 1, 2), size=depth.shape[1:],
                                               mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    valid = (depth.cpu() > 0) & torch.isfinite(depth.cpu())
    pts = pts[valid]
    cols = None if cols is None else cols[valid]
    if len(pts) > max_points:
        keep = torch.linspace(0, len(pts) - 1, max_points).long()
        pts, cols = pts[keep], None if cols is None else cols[keep]
    return pts, cols


def _splat(img: torch.Tensor, px: torch.Tensor, depth: torch.Tensor, colors: torch.Tensor | None) -> torch.Tensor:
    """Write each point's colour (0..1) at its pixel, nearest point (smallest view z) wins."""
    h, w = img.shape[:2]
    ij = px.floor().long()
    inside = (ij[:, 0] >= 0) & (ij[:, 0] < w) & (ij[:, 1] >= 0) & (ij[:, 1] < h)
    ij, depth = ij[inside], depth[inside]
    cols = torch.ones(len(ij), 3) if colors is None else colors[inside].clamp(0, 1)
    if not len(ij):
        return img
    flat = ij[:, 1] * w + ij[:, 0]
    best = torch.full((h * w,), float("inf")).scatter_reduce(0, flat, depth, "amin")
    win = depth <= best[flat]
    # one deterministic winner per pixel among equal depths: the highest point index
    idx = torch.arange(len(flat))
    chosen = torch.full((h * w,), -1, dtype=torch.long).scatter_reduce(0, flat[win], idx[win], "amax")
    hit = chosen >= 0
    out = img.view(-1, 3).clone()
    out[hit] = cols[chosen[hit]] * 255.0
    return out.view(h, w, 3)
