"""Rendering 3D Gaussian splats to colour, alpha and depth (EWA splatting as in 3DGS).

Plain torch, importable without ComfyUI. Cameras are :class:`~..cameras.geometry.CameraBatch`
(OpenCV axes, normalised K, pixel ``(i, j)`` centred at ``(i + 0.5, j + 0.5)``); the
scene is a :class:`~.gaussians.GaussianScene`.

Image formation (the 3DGS forward pass; the same in :func:`render` and :func:`render_naive`):

1. ``Sigma = R S S^T R^T`` per Gaussian (``R`` from the quaternion, ``S = diag(scales)``).
2. Camera-space mean ``t = W mu + w`` (world-to-camera ``[W | w]``); Gaussians with
   ``t_z <= near`` are culled. Projected mean ``K t / t_z`` in pixels.
3. 2-D covariance ``J W Sigma W^T J^T + 0.3 I`` with ``J`` the Jacobian of the
   perspective projection at ``t``, where ``t_x/t_z`` and ``t_y/t_z`` are first clamped
   to the image's field of view widened by 30 % of its half-width on each side (gsplat's
   form of 3DGS's ``+-1.3 tan(fov/2)``, identical for a centred principal point).
4. Per pixel ``p`` and Gaussian: ``alpha = min(0.99, o exp(-1/2 d^T Sigma2^-1 d))``,
   ``d = p - mean2d``; contributions with ``alpha < 1/255`` are skipped.
5. Front to back by camera-space depth ``t_z``: ``T_i = prod_{j<i} (1 - alpha_j)``,
   weight ``w_i = alpha_i T_i``. As in 3DGS, a pixel stops at the first Gaussian that
   would bring ``T`` below ``1e-4``; that Gaussian and all behind it are left out.
6. Outputs: ``rgb = sum_i w_i c_i + T_final * background``; ``alpha = 1 - T_final``;
   ``depth = sum_i w_i z_i / sum_i w_i``, the expected z-depth of the visible surface
   (gsplat's "ED"), independent of the background and 0 where nothing was hit.
   Colours ``c_i`` are the SH colours seen from the camera centre (:func:`~.gaussians.sh_to_rgb`).

A Gaussian's screen footprint is the axis-aligned box of the ellipse where its alpha
can reach ``1/255``: ``+- sqrt(2 ln(255 o)) sqrt(Sigma2_xx)`` (``<= 3.33`` sigma, the
opacity-aware box of gsplat), so every pixel it can contribute to is visited.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..cameras.geometry import CameraBatch, quaternion_to_matrix
from .gaussians import GaussianScene, sh_to_rgb

ALPHA_MAX = 0.99  # 3DGS clamp (gsplat uses 0.999)
ALPHA_MIN = 1.0 / 255.0  # contributions below this are skipped
T_MIN = 1e-4  # a pixel stops before its transmittance would fall below this
DILATION = 0.3  # px^2 added to the 2-D covariance diagonal
_BOX_MARGIN = 1e-3  # px added to footprints so rounding never drops a pixel at the alpha edge
BACKENDS = ("auto", "torch", "gsplat")


@dataclass(eq=False)
class ProjectedGaussians:
    """The Gaussians one camera sees, sorted front to back (``M`` of them).

    Attributes:
        ids: ``[M]`` long indices into the scene.
        means2d: ``[M,2]`` pixel coordinates ``(u, v)`` of the projected means.
        conics: ``[M,3]`` ``(a, b, c)`` of the inverse 2-D covariance:
            ``d^T Sigma2^-1 d = a dx^2 + 2 b dx dy + c dy^2``.
        depths: ``[M]`` camera-space z.
        opacities: ``[M]``.
        colors: ``[M,3]`` SH colours seen from this camera.
        boxes: ``[M,4]`` long ``(x0, y0, x1, y1)``: inclusive pixel ranges of the
            footprint, clipped to the image (never empty).
    """

    ids: torch.Tensor
    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor
    boxes: torch.Tensor

    def __len__(self) -> int:
        return self.ids.shape[0]

    def features(self) -> torch.Tensor:
        """``[M,5]`` per-Gaussian values composited per pixel: ``(r, g, b, z, 1)``."""
        return torch.cat([self.colors, self.depths[:, None], torch.ones_like(self.depths)[:, None]], 1)


# ---- projection -----------------------------------------------------------------------------
def covariances_3d(scales: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """World covariances ``[N,3,3] = R S S^T R^T`` from ``scales [N,3]`` (linear) and
    quaternions ``rotations [N,4]`` ``(w, x, y, z)`` (normalised here)."""
    m = quaternion_to_matrix(rotations) * scales[:, None, :]
    return m @ m.transpose(1, 2)


def ewa_project(means: torch.Tensor, cov3d: torch.Tensor, w2c: torch.Tensor, K: torch.Tensor,
                width: int, height: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Perspective projection of 3-D Gaussians with the local affine (EWA) approximation.

    Args:
        means: ``[N,3]`` world means.
        cov3d: ``[N,3,3]`` world covariances.
        w2c: ``[4,4]`` world-to-camera (OpenCV).
        K: ``[3,3]`` intrinsics in pixels (skew allowed).
        width, height: image size, for the field-of-view clamp of the Jacobian.
    Returns:
        ``(means2d [N,2], cov2d [N,2,2], depths [N])``: pixel means (centres at +0.5),
        2-D covariances **without** the 0.3 px dilation, camera-space z. Values for
        points at ``z <= 0`` are not meaningful (callers cull them).
    """
    R, tr = w2c[:3, :3], w2c[:3, 3]
    t = means @ R.T + tr
    x, y, z = t.unbind(-1)
    z = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
    fx, s, cx, fy, cy = K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]
    margin_x, margin_y = 0.3 * 0.5 * width / fx, 0.3 * 0.5 * height / fy
    xc = z * (x / z).clamp(-(cx / fx + margin_x), (width - cx) / fx + margin_x)
    yc = z * (y / z).clamp(-(cy / fy + margin_y), (height - cy) / fy + margin_y)
    zero = torch.zeros_like(z)
    J = torch.stack([fx / z, s / z, -(fx * xc + s * yc) / (z * z),
                     zero, fy / z, -fy * yc / (z * z)], -1).reshape(-1, 2, 3)
    JW = J @ R
    cov2d = JW @ cov3d @ JW.transpose(1, 2)
    means2d = torch.stack([(fx * x + s * y) / z + cx, fy * y / z + cy], -1)
    return means2d, cov2d, t[:, 2]


def project_gaussians(scene: GaussianScene, camera: CameraBatch, near: float = 0.01) -> ProjectedGaussians:
    """Project ``scene`` into the first camera of ``camera`` and keep what it can see.

    Culls Gaussians with depth ``<= near``, opacity below ``1/255``, a degenerate 2-D
    covariance, or a footprint (see the module docstring) outside the image; sorts the
    rest by depth (stable, so equal depths keep scene order).
    """
    device = scene.device
    w2c, K = camera.world_to_camera()[0].to(device), camera.pixel_K()[0].to(device)
    width, height = camera.width, camera.height
    means2d, cov2d, depths = ewa_project(scene.means, covariances_3d(scene.scales, scene.rotations), w2c, K,
                                         width, height)
    cov2d = cov2d + DILATION * torch.eye(2, device=device)
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det = a * c - b * b
    keep = (depths > near) & (det > 0) & (scene.opacities >= ALPHA_MIN)
    ids = keep.nonzero()[:, 0]
    reach = torch.sqrt(2.0 * torch.log(255.0 * scene.opacities[ids]).clamp_min(0.0))
    radius = reach[:, None] * torch.stack([a[ids], c[ids]], -1).sqrt() + _BOX_MARGIN  # [M,2] in px
    centre = means2d[ids]
    limit = torch.tensor([width, height], device=device, dtype=centre.dtype)
    lo = torch.ceil((centre - radius - 0.5).clamp(min=-1.0).minimum(limit)).clamp(min=0)
    hi = torch.floor((centre + radius - 0.5).clamp(min=-1.0).minimum(limit)).minimum(limit - 1)
    inside = (lo <= hi).all(-1)
    ids, lo, hi = ids[inside], lo[inside], hi[inside]
    order = torch.sort(depths[ids], stable=True).indices
    ids, boxes = ids[order], torch.cat([lo, hi], -1)[order].long()
    det = det[ids]
    conics = torch.stack([c[ids] / det, -b[ids] / det, a[ids] / det], -1)
    colors = sh_to_rgb(scene.sh[ids], scene.means[ids] - camera.centers()[0].to(device))
    return ProjectedGaussians(ids, means2d[ids], conics, depths[ids], scene.opacities[ids], colors, boxes)


# ---- tiled rasteriser -------------------------------------------------------------------------
def _bin_tiles(boxes: torch.Tensor, tile: int, tiles_x: int, n_tiles: int):
    """(Gaussian, tile) pairs of footprint boxes ``[M,4]`` (M sorted front to back).

    Returns ``(pair_gaussian [P], tile_count [n_tiles], tile_start [n_tiles])``: pairs
    sorted by tile and, within a tile, by depth; tile ``t`` owns pairs
    ``tile_start[t] : tile_start[t] + tile_count[t]``.
    """
    t0, t1 = boxes[:, :2] // tile, boxes[:, 2:] // tile  # [M,2] (tx, ty), inclusive
    span = t1 - t0 + 1
    counts = span[:, 0] * span[:, 1]
    gid = torch.repeat_interleave(torch.arange(len(boxes), device=boxes.device), counts)
    local = torch.arange(len(gid), device=boxes.device) - (torch.cumsum(counts, 0) - counts)[gid]
    nx = span[gid, 0]
    tile_ids = (t0[gid, 1] + local // nx) * tiles_x + t0[gid, 0] + local % nx
    order = torch.sort(tile_ids, stable=True).indices
    tile_count = torch.bincount(tile_ids, minlength=n_tiles)
    return gid[order], tile_count, torch.cumsum(tile_count, 0) - tile_count


def _composite_batch(params: torch.Tensor, features: torch.Tensor, pair_gaussian: torch.Tensor,
                     tiles: torch.Tensor, starts: torch.Tensor, counts: torch.Tensor, chunk: int,
                     tile: int, tiles_x: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Front-to-back compositing of a batch of ``B`` tiles, ``chunk`` Gaussians at a time.

    ``params [M+1,6]`` are ``(u, v, a, b, c, log opacity)`` per Gaussian, row ``M`` a
    transparent padding Gaussian; ``features [M+1,5]`` likewise. Works on padded
    ``[B, chunk, tile, tile]`` tensors (the quadratic form is built from per-row and
    per-column terms) and carries the transmittance and the per-pixel "stopped" flag
    from chunk to chunk. Returns ``(acc [B,P,5], T [B,P])``, ``P = tile*tile``: the
    weighted sums of the features and the final transmittance.
    """
    device = features.device
    B, pad = len(tiles), params.shape[0] - 1
    offsets = torch.arange(tile, device=device, dtype=torch.float32) + 0.5
    px = ((tiles % tiles_x) * tile)[:, None, None] + offsets  # [B,1,tile] pixel-centre u of each column
    py = ((tiles // tiles_x) * tile)[:, None, None] + offsets  # [B,1,tile] v of each row
    T = torch.ones(B, 1, tile * tile, device=device)
    stopped = torch.zeros(B, 1, tile * tile, dtype=torch.bool, device=device)
    acc = torch.zeros(B, tile * tile, features.shape[1], device=device)
    longest = int(counts.max())
    for g0 in range(0, longest, chunk):
        slot = torch.arange(g0, min(g0 + chunk, longest), device=device)
        valid = slot[None, :] < counts[:, None]  # [B,G]
        idx = torch.where(valid, pair_gaussian[(starts[:, None] + slot).clamp(max=len(pair_gaussian) - 1)], pad)
        u, v, a, b, c, log_op = params[idx].unsqueeze(-1).unbind(-2)  # each [B,G,1]
        dx, dy = px - u, py - v  # [B,G,tile]
        row = -0.5 * c * dy * dy  # [B,G,tile]
        col = log_op - 0.5 * a * dx * dx
        power = (row.unsqueeze(-1) + col.unsqueeze(-2)) - (b * dy).unsqueeze(-1) * dx.unsqueeze(-2)
        alpha = torch.exp(power.flatten(2)).clamp(max=ALPHA_MAX)  # [B,G,P]
        alpha = torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))
        T_after = T * torch.cumprod(1.0 - alpha, 1)
        kept = (T_after >= T_MIN) & ~stopped  # a prefix along G for every pixel
        weight = torch.where(kept, alpha * T_after / (1.0 - alpha), torch.zeros_like(alpha))
        acc = acc + weight.transpose(1, 2) @ features[idx]
        T = torch.where(kept, T_after, T).amin(1, keepdim=True)
        stopped = stopped | ~kept[:, -1:, :]
        if bool(stopped.all()):
            break
    return acc, T[:, 0]


def _rasterize(proj: ProjectedGaussians, width: int, height: int, background: torch.Tensor, tile: int,
               chunk_elements: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tile-binned rasterisation of one camera: ``(rgb [H,W,3], alpha [H,W], depth [H,W])``."""
    device = background.device
    tiles_x, tiles_y = -(-width // tile), -(-height // tile)
    n_tiles, P = tiles_x * tiles_y, tile * tile
    acc = torch.zeros(n_tiles, P, 5, device=device)
    T = torch.ones(n_tiles, P, device=device)
    if len(proj):
        padding = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, -math.inf]], device=device)
        params = torch.cat([torch.cat([proj.means2d, proj.conics, proj.opacities.log()[:, None]], 1), padding])
        features = torch.cat([proj.features(), torch.zeros(1, 5, device=device)])
        pair_gaussian, tile_count, tile_start = _bin_tiles(proj.boxes, tile, tiles_x, n_tiles)
        count_sorted, tile_order = torch.sort(tile_count, descending=True)
        counts = count_sorted.tolist()
        i = 0
        while i < len(counts) and counts[i] > 0:
            chunk = max(1, min(counts[i], chunk_elements // P))
            tiles = tile_order[i:i + max(1, chunk_elements // (chunk * P))]
            tiles = tiles[tile_count[tiles] > 0]
            acc[tiles], T[tiles] = _composite_batch(params, features, pair_gaussian, tiles, tile_start[tiles],
                                                    tile_count[tiles], chunk, tile, tiles_x)
            i += len(tiles)

    def image(x: torch.Tensor) -> torch.Tensor:  # [n_tiles, P, C] -> [H, W, C]
        c = x.shape[-1]
        x = x.reshape(tiles_y, tiles_x, tile, tile, c).permute(0, 2, 1, 3, 4)
        return x.reshape(tiles_y * tile, tiles_x * tile, c)[:height, :width]

    acc, T = image(acc), image(T[..., None])[..., 0]
    weight = acc[..., 4]
    rgb = acc[..., :3] + T[..., None] * background
    depth = torch.where(weight > 0, acc[..., 3] / weight.clamp_min(1e-12), torch.zeros_like(weight))
    return rgb, 1.0 - T, depth


# ---- naive reference ----------------------------------------------------------------------------
def _rasterize_naive(proj: ProjectedGaussians, width: int, height: int,
                     background: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One camera, one Gaussian at a time over its footprint box (front to back)."""
    device = background.device
    acc = torch.zeros(height, width, 5, device=device)
    T = torch.ones(height, width, device=device)
    stopped = torch.zeros(height, width, dtype=torch.bool, device=device)
    us = torch.arange(width, device=device, dtype=torch.float32) + 0.5
    vs = torch.arange(height, device=device, dtype=torch.float32) + 0.5
    features = proj.features()
    rows = zip(proj.boxes.tolist(), proj.means2d.tolist(), proj.conics.tolist(), proj.opacities.tolist())
    for k, ((x0, y0, x1, y1), (mx, my), (a, b, c), o) in enumerate(rows):
        dx = us[x0:x1 + 1][None, :] - mx
        dy = vs[y0:y1 + 1][:, None] - my
        alpha = (o * torch.exp(-0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy)).clamp(max=ALPHA_MAX)
        T_box, stop_box = T[y0:y1 + 1, x0:x1 + 1], stopped[y0:y1 + 1, x0:x1 + 1]
        T_after = T_box * (1.0 - alpha)
        hit = (alpha >= ALPHA_MIN) & ~stop_box
        kept = hit & (T_after >= T_MIN)
        acc[y0:y1 + 1, x0:x1 + 1] += torch.where(kept, alpha * T_box, 0.0)[..., None] * features[k]
        stopped[y0:y1 + 1, x0:x1 + 1] = stop_box | (hit & ~kept)
        T[y0:y1 + 1, x0:x1 + 1] = torch.where(kept, T_after, T_box)
    weight = acc[..., 4]
    depth = torch.where(weight > 0, acc[..., 3] / weight.clamp_min(1e-12), torch.zeros_like(weight))
    return acc[..., :3] + T[..., None] * background, 1.0 - T, depth


# ---- public entry points -----------------------------------------------------------------------
def _background(background, device) -> torch.Tensor:
    bg = torch.as_tensor(background, dtype=torch.float32).to(device).flatten()
    if bg.numel() != 3 or not torch.isfinite(bg).all():
        raise ValueError(f"splat render: background must be 3 finite numbers (r, g, b), got {background!r}")
    return bg


def _check_inputs(scene, cameras, near) -> None:
    if not isinstance(scene, GaussianScene):
        raise ValueError(f"splat render: scene must be a GaussianScene, got {type(scene).__name__}")
    if not isinstance(cameras, CameraBatch):
        raise ValueError(f"splat render: cameras must be a CameraBatch, got {type(cameras).__name__}")
    if not (math.isfinite(near) and near >= 0):
        raise ValueError(f"splat render: near must be a finite distance >= 0, got {near}")


def gsplat_available() -> bool:
    """True when the optional ``gsplat`` package is installed (not imported here)."""
    return importlib.util.find_spec("gsplat") is not None


def _pick_backend(backend: str, scene: GaussianScene) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"splat render: backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = scene.device.type == "cuda"
    if backend == "gsplat" and not (on_cuda and gsplat_available()):
        raise ValueError("splat render: backend 'gsplat' needs the gsplat package and the scene on a CUDA device "
                         f"(gsplat installed: {gsplat_available()}, scene on {scene.device}); use 'torch' or 'auto'")
    if backend == "auto":
        return "gsplat" if on_cuda and gsplat_available() else "torch"
    return backend


def _render_gsplat(scene: GaussianScene, cameras: CameraBatch, background: torch.Tensor, near: float, tile: int,
                   progress) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per camera ``gsplat.rasterization`` (CUDA) in "RGB+ED" mode, converted to our outputs."""
    from gsplat import rasterization

    viewmats, Ks = cameras.world_to_camera(), cameras.pixel_K()  # OpenCV w2c and pixel K, as gsplat takes
    frames = []
    for i in range(len(cameras)):
        colors, alphas, _ = rasterization(scene.means, scene.rotations, scene.scales, scene.opacities, scene.sh,
                                          viewmats[i:i + 1], Ks[i:i + 1], cameras.width, cameras.height,
                                          near_plane=near, sh_degree=scene.sh_degree, tile_size=tile,
                                          backgrounds=background[None], render_mode="RGB+ED")
        frames.append((colors[0, ..., :3], alphas[0, ..., 0], colors[0, ..., 3]))
        if progress is not None:
            progress(i + 1, len(cameras))
    return frames


def render(scene: GaussianScene, cameras: CameraBatch, background: Sequence[float] | torch.Tensor = (0.0, 0.0, 0.0),
           near: float = 0.01, backend: str = "auto", tile: int | None = None,
           progress: Callable[[int, int], None] | None = None, chunk_elements: int = 1 << 20,
           differentiable: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render ``scene`` from every camera at the cameras' ``width x height``.

    Args:
        scene: the Gaussians (their device is the rendering device; cameras are moved there).
        cameras: N cameras (OpenCV c2w, normalised K).
        background: ``(r, g, b)`` composited behind the splats.
        near: Gaussians with camera-space depth ``<= near`` are culled (gsplat's default 0.01;
            3DGS uses 0.2).
        backend: ``"torch"`` (this module's tiled rasteriser), ``"gsplat"`` (``gsplat.rasterization``;
            needs gsplat and the scene on CUDA) or ``"auto"`` (gsplat when both hold, else torch).
            gsplat clamps alpha at 0.999 instead of 0.99; otherwise both follow the module docstring.
        tile: tile size in pixels of the binning; default 8 for the torch backend (about 1.7x
            faster on a CPU than 16 at 100k Gaussians, 480x720) and 16 for gsplat (its own default).
        progress: ``progress(done, total)`` called after every camera; an exception it raises
            (e.g. ComfyUI's Cancel) propagates and stops the render.
        chunk_elements: memory budget of the torch backend: elements of its largest
            ``[tiles, Gaussians, pixels]`` working tensor (about 8 such float tensors live at once).
        differentiable: keep the autograd graph; by default rendering runs under
            ``torch.no_grad``.
    Returns:
        ``(rgb [N,H,W,3], alpha [N,H,W], depth [N,H,W])`` float32 on the scene's device:
        colour composited over the background, accumulated opacity ``1 - T``, and the
        expected z-depth of the visible splats (0 where alpha is 0). See the module docstring.
    """
    _check_inputs(scene, cameras, near)
    chosen = _pick_backend(backend, scene)
    tile = (16 if chosen == "gsplat" else 8) if tile is None else tile
    if int(tile) != tile or tile < 1:
        raise ValueError(f"splat render: tile must be a positive integer, got {tile!r}")
    if chunk_elements < tile * tile:
        raise ValueError(f"splat render: chunk_elements must be at least tile*tile = {tile * tile}, got {chunk_elements}")
    bg = _background(background, scene.device)
    cameras = cameras.to(scene.device)
    with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
        if len(scene) > 0 and chosen == "gsplat":
            frames = _render_gsplat(scene, cameras, bg, near, int(tile), progress)
        else:
            frames = []
            for i in range(len(cameras)):
                proj = project_gaussians(scene, cameras[i], near)
                frames.append(_rasterize(proj, cameras.width, cameras.height, bg, int(tile), chunk_elements))
                if progress is not None:
                    progress(i + 1, len(cameras))
    rgb, alpha, depth = (torch.stack(x) for x in zip(*frames))
    return rgb, alpha, depth


def render_naive(scene: GaussianScene, cameras: CameraBatch,
                 background: Sequence[float] | torch.Tensor = (0.0, 0.0, 0.0),
                 near: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference renderer: the same image formation as :func:`render`, composited one
    Gaussian at a time (front to back, each over its footprint box) in a Python loop.

    Slow by design (the benchmark's baseline, and an independent check of the tiling and
    chunked compositing in tests). Shares the projection (:func:`project_gaussians`).
    Returns ``(rgb [N,H,W,3], alpha [N,H,W], depth [N,H,W])`` like :func:`render`.
    """
    _check_inputs(scene, cameras, near)
    bg = _background(background, scene.device)
    cameras = cameras.to(scene.device)
    frames = []
    with torch.no_grad():
        for i in range(len(cameras)):
            proj = project_gaussians(scene, cameras[i], near)
            frames.append(_rasterize_naive(proj, cameras.width, cameras.height, bg))
    rgb, alpha, depth = (torch.stack(x) for x in zip(*frames))
    return rgb, alpha, depth
