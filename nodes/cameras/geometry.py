"""The camera batch shared by every capability, and the camera math on it.

Plain torch, importable without ComfyUI (kornia-style batched functions).

Conventions (fixed for the whole pack; conversions to other conventions live in
:mod:`.formats`):

- **Extrinsics**: camera-to-world ``c2w [N,4,4]`` float32 in the **OpenCV** convention:
  camera x points right, y down, z forward (the optical axis); the world frame is
  right-handed. ``c2w[:, :3, 3]`` is the camera centre in world coordinates.
- **Intrinsics**: ``K [N,3,3]`` **normalised** by the image size: ``fx/W, fy/H, cx/W,
  cy/H`` (skew ``s/W``). So one batch serves every resolution of the same aspect ratio;
  :meth:`CameraBatch.pixel_K` scales to pixels.
- **Pixels**: continuous image coordinates ``(u, v)`` with the origin at the top-left
  *corner* of the image; pixel ``(i, j)`` (column, row) covers ``[i, i+1) x [j, j+1)``,
  so its **centre is at (i + 0.5, j + 0.5)**. A principal point ``cx = 0.5`` (normalised)
  lies exactly in the middle of the image.
- **Depth** is z-depth (distance along the optical axis), not ray length.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..comfy.errors import NodeInputError, describe

CAMERA_TYPE = "CVS_CAMERA"  # ComfyUI type string of a CameraBatch

_ORTHO_TOL = 1e-2  # how far a c2w rotation may be from orthonormal before it is rejected


@dataclass(eq=False)  # tensors inside: compare cameras with torch.allclose, not ==
class CameraBatch:
    """A batch of N pinhole cameras (see the module docstring for the conventions).

    Attributes:
        c2w: ``[N,4,4]`` float32 camera-to-world, OpenCV axes (x right, y down, z forward).
        K: ``[N,3,3]`` float32 intrinsics normalised by image size (``fx/W, fy/H, cx/W, cy/H``).
            A single ``[3,3]`` matrix is broadcast to all N cameras.
        width: image width in pixels the cameras refer to.
        height: image height in pixels.

    Construction validates everything and raises ``ValueError`` with a clear message:
    shapes, N >= 1, finite values, matching counts, rotation part orthonormal with
    determinant +1, bottom row ``[0,0,0,1]``, positive focal lengths, positive size.
    Indexing (int, slice, list or index tensor) returns a new ``CameraBatch``.
    """

    c2w: torch.Tensor
    K: torch.Tensor
    width: int
    height: int

    def __post_init__(self):
        c2w, K = self.c2w, self.K
        if not isinstance(c2w, torch.Tensor):
            raise ValueError(f"camera c2w must be a tensor [N,4,4], got {type(c2w).__name__}")
        if not isinstance(K, torch.Tensor):
            raise ValueError(f"camera K must be a tensor [N,3,3], got {type(K).__name__}")
        if c2w.dim() == 2:
            c2w = c2w.unsqueeze(0)
        if c2w.dim() != 3 or tuple(c2w.shape[1:]) != (4, 4):
            raise ValueError(f"camera c2w must have shape [N,4,4], got {list(self.c2w.shape)}")
        n = c2w.shape[0]
        if n < 1:
            raise ValueError("a camera batch needs at least one camera, got 0")
        if K.dim() == 2:
            K = K.unsqueeze(0)
        if K.dim() != 3 or tuple(K.shape[1:]) != (3, 3):
            raise ValueError(f"camera K must have shape [N,3,3] (normalised intrinsics), got {list(self.K.shape)}")
        if K.shape[0] == 1 and n > 1:
            K = K.expand(n, 3, 3)
        if K.shape[0] != n:
            raise ValueError(f"camera counts differ: c2w has {n} cameras, K has {K.shape[0]}")
        if not (torch.is_floating_point(c2w) and torch.is_floating_point(K)):
            raise ValueError(f"camera c2w and K must be floating point, got {c2w.dtype} and {K.dtype}")
        c2w = c2w.to(torch.float32).contiguous()
        K = K.to(device=c2w.device, dtype=torch.float32).contiguous()
        bad = ~torch.isfinite(c2w).flatten(1).all(1)
        if bad.any():
            raise ValueError(f"camera c2w has NaN or infinite values (camera {int(bad.nonzero()[0])})")
        bad = ~torch.isfinite(K).flatten(1).all(1)
        if bad.any():
            raise ValueError(f"camera K has NaN or infinite values (camera {int(bad.nonzero()[0])})")
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], device=c2w.device)
        bad = (c2w[:, 3] - bottom).abs().amax(1) > 1e-5
        if bad.any():
            raise ValueError(f"camera c2w bottom row must be [0,0,0,1] (camera {int(bad.nonzero()[0])} has "
                             f"{c2w[int(bad.nonzero()[0]), 3].tolist()})")
        R = c2w[:, :3, :3]
        ortho_err = (R.transpose(1, 2) @ R - torch.eye(3, device=c2w.device)).abs().flatten(1).amax(1)
        bad = (ortho_err > _ORTHO_TOL) | (torch.linalg.det(R) <= 0)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"camera c2w rotation of camera {i} is not a proper rotation (orthonormal, det +1): "
                             f"{R[i].tolist()}; a left-handed or scaled matrix usually means the wrong "
                             f"convention (see camera_formats for OpenGL/Blender conversions)")
        bad = (K[:, 0, 0] <= 0) | (K[:, 1, 1] <= 0)
        if bad.any():
            raise ValueError(f"camera K must have positive focal lengths (camera {int(bad.nonzero()[0])})")
        bad = (K[:, 2] - torch.tensor([0.0, 0.0, 1.0], device=K.device)).abs().amax(1) > 1e-6
        if bad.any():
            raise ValueError(f"camera K bottom row must be [0,0,1] (camera {int(bad.nonzero()[0])})")
        try:
            width, height = int(self.width), int(self.height)
        except (TypeError, ValueError):
            raise ValueError(f"camera width/height must be integers, got {self.width!r} x {self.height!r}") from None
        if width < 1 or height < 1:
            raise ValueError(f"camera image size must be positive, got {width}x{height}")
        self.c2w, self.K, self.width, self.height = c2w, K, width, height

    # ---- container behaviour -------------------------------------------------------
    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, index) -> "CameraBatch":
        """``cams[i]`` (a batch of one), ``cams[a:b]``, ``cams[[0, 2]]`` or a bool/long tensor."""
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                raise IndexError(f"camera index {index} out of range for {len(self)} cameras")
            index = slice(index % len(self), index % len(self) + 1)
        elif isinstance(index, Sequence) and not isinstance(index, (str, bytes)):
            index = torch.as_tensor(list(index), dtype=torch.long)
        if isinstance(index, torch.Tensor):
            index = index.to(self.c2w.device)
        return CameraBatch(self.c2w[index], self.K[index], self.width, self.height)

    def to(self, device=None) -> "CameraBatch":
        """The same cameras on another device (always float32)."""
        return CameraBatch(self.c2w.to(device), self.K.to(device), self.width, self.height)

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @classmethod
    def cat(cls, batches: Sequence["CameraBatch"]) -> "CameraBatch":
        """Concatenate batches in order. All must refer to the same image size."""
        batches = list(batches)
        if not batches:
            raise ValueError("CameraBatch.cat needs at least one camera batch")
        w, h = batches[0].width, batches[0].height
        for i, b in enumerate(batches):
            if not isinstance(b, CameraBatch):
                raise ValueError(f"CameraBatch.cat: item {i} is a {type(b).__name__}, not a CameraBatch")
            if (b.width, b.height) != (w, h):
                raise ValueError(f"CameraBatch.cat: batch {i} refers to {b.width}x{b.height} images, "
                                 f"batch 0 to {w}x{h}; resize one with with_size()")
        dev = batches[0].device
        return cls(torch.cat([b.c2w.to(dev) for b in batches]), torch.cat([b.K.to(dev) for b in batches]), w, h)

    @classmethod
    def identity(cls, n: int = 1, width: int = 576, height: int = 576, fov_deg: float = 54.0) -> "CameraBatch":
        """``n`` identity cameras (at the origin looking along +z) with :func:`intrinsics_from_fov`."""
        K = intrinsics_from_fov(fov_deg, width, height)
        return cls(torch.eye(4).expand(n, 4, 4).clone(), K.expand(n, 3, 3).clone(), width, height)

    def with_size(self, width: int, height: int) -> "CameraBatch":
        """The same cameras referring to another image size (normalised K unchanged, so a
        change of aspect ratio changes the field of view on one axis)."""
        return CameraBatch(self.c2w, self.K, width, height)

    # ---- derived quantities ---------------------------------------------------------
    def pixel_K(self, width: int | None = None, height: int | None = None) -> torch.Tensor:
        """Intrinsics in pixels ``[N,3,3]`` for ``width x height`` (default: the batch's size)."""
        return scale_intrinsics(self.K, width or self.width, height or self.height)

    def world_to_camera(self) -> torch.Tensor:
        """World-to-camera ``[N,4,4]`` (OpenCV), the exact rigid inverse of ``c2w``."""
        return rigid_inverse(self.c2w)

    def centers(self) -> torch.Tensor:
        """Camera centres in world coordinates ``[N,3]``."""
        return self.c2w[:, :3, 3]

    def forward_axes(self) -> torch.Tensor:
        """Optical axes (camera +z) in world coordinates ``[N,3]``, unit length."""
        return self.c2w[:, :3, 2]


def check_cameras(node: str, name: str, value, *, count: int | None = None) -> CameraBatch:
    """Validate a node's camera input: a :class:`CameraBatch` (with ``count`` cameras if
    given) whose values still pass the batch's own checks (finite, rigid, positive focal
    lengths). Raises :class:`NodeInputError` naming the node and the input."""
    if not isinstance(value, CameraBatch):
        raise NodeInputError(node, name, f"got {describe(value)}",
                             f"a {CAMERA_TYPE} camera batch (from a CVS camera node)")
    try:  # again: a batch's tensors can have been changed in place since it was made
        CameraBatch(value.c2w, value.K, value.width, value.height)
    except ValueError as exc:
        raise NodeInputError(node, name, f"is not a valid camera batch: {exc}",
                             "finite, rigid OpenCV camera-to-world poses and positive focal lengths") from None
    if count is not None and len(value) != count:
        raise NodeInputError(node, name, f"has {len(value)} cameras", f"{count}, one per frame")
    return value


# ---- intrinsics --------------------------------------------------------------------------
def intrinsics_from_fov(fov_deg: float, width: int, height: int) -> torch.Tensor:
    """Normalised intrinsics ``[3,3]`` for a **vertical** field of view with square pixels
    and the principal point in the image centre.

    ``fy/H = 0.5 / tan(fov/2)``, ``fx/W = fy/H * H/W``, ``cx/W = cy/H = 0.5``.
    VMem's default (54 deg, square images) gives ``fx/W = fy/H = 0.981``.
    """
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"field of view must be between 0 and 180 degrees, got {fov_deg}")
    fy = 0.5 / math.tan(math.radians(fov_deg) / 2.0)
    fx = fy * height / width
    return torch.tensor([[fx, 0.0, 0.5], [0.0, fy, 0.5], [0.0, 0.0, 1.0]])


def scale_intrinsics(K: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Scale normalised intrinsics ``[...,3,3]`` to pixels for ``width x height`` (rows 0 and 1)."""
    scale = torch.tensor([width, height, 1.0], dtype=K.dtype, device=K.device).view(3, 1)
    return K * scale


def normalize_intrinsics(K_pixels: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Inverse of :func:`scale_intrinsics`: pixel intrinsics ``[...,3,3]`` to normalised."""
    scale = torch.tensor([width, height, 1.0], dtype=K_pixels.dtype, device=K_pixels.device).view(3, 1)
    return K_pixels / scale


def rigid_inverse(T: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms ``[...,4,4]`` (rotation + translation): ``[R^T | -R^T t]``."""
    R, t = T[..., :3, :3], T[..., :3, 3:]
    out = torch.zeros_like(T)
    out[..., :3, :3] = R.transpose(-1, -2)
    out[..., :3, 3:] = -R.transpose(-1, -2) @ t
    out[..., 3, 3] = 1.0
    return out


def relative_to(c2w: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Camera-to-world poses ``[...,4,4]`` re-expressed in the frame of a ``reference`` camera
    (its camera-to-world ``[4,4]``): ``rigid_inverse(reference) @ c2w``, so the reference
    becomes the identity and every pose says where that camera sits as seen from the
    reference camera (OpenCV axes: x right, y down, z forward, in the world's units).
    Computed and returned in float64, so poses far from the origin keep their relative
    precision."""
    return rigid_inverse(reference.to(torch.float64)) @ c2w.to(device=reference.device, dtype=torch.float64)


# ---- projection ---------------------------------------------------------------------------
def pixel_grid(height: int, width: int, device=None) -> torch.Tensor:
    """Pixel-centre coordinates ``[H,W,2]`` as ``(u, v) = (column + 0.5, row + 0.5)``."""
    v, u = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32) + 0.5,
                          torch.arange(width, device=device, dtype=torch.float32) + 0.5, indexing="ij")
    return torch.stack([u, v], dim=-1)


def camera_rays(cams: CameraBatch, height: int, width: int) -> torch.Tensor:
    """Un-normalised ray directions in **camera** coordinates ``[N,H,W,3]`` through the
    pixel centres of an ``height x width`` image, with z = 1 (so ``depth * ray`` is the
    camera-space point for z-depth)."""
    Kp = cams.pixel_K(width, height)  # [N,3,3]
    uv1 = torch.cat([pixel_grid(height, width, cams.device), torch.ones(height, width, 1, device=cams.device)], -1)
    return torch.einsum("nij,hwj->nhwi", torch.linalg.inv(Kp), uv1)


def unproject(depth: torch.Tensor, cams: CameraBatch) -> torch.Tensor:
    """Lift z-depth maps to world points.

    Args:
        depth: ``[N,H,W]`` z-depth (along the optical axis) per pixel. H and W may differ
            from ``cams.height/width``: the normalised K is scaled to the depth map's size.
        cams: N cameras.
    Returns:
        ``[N,H,W,3]`` world points of the pixel centres ``(col + 0.5, row + 0.5)``.
    """
    if depth.dim() != 3 or depth.shape[0] != len(cams):
        raise ValueError(f"unproject: depth must be [N,H,W] with N = {len(cams)} cameras, got {list(depth.shape)}")
    n, h, w = depth.shape
    pts_cam = camera_rays(cams, h, w) * depth.to(torch.float32).unsqueeze(-1)
    c2w = cams.c2w
    return torch.einsum("nij,nhwj->nhwi", c2w[:, :3, :3], pts_cam) + c2w[:, None, None, :3, 3]


def project(points: torch.Tensor, cams: CameraBatch, width: int | None = None,
            height: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points into every camera.

    Args:
        points: ``[M,3]`` (the same points for every camera) or ``[N,M,3]`` (per camera).
        cams: N cameras.
        width, height: image size to project into (default: the batch's size).
    Returns:
        ``(uv, depth)``: ``uv [N,M,2]`` continuous pixel coordinates (pixel centres at
        ``+0.5``; ``u`` along the width), ``depth [N,M]`` z-depth in each camera (points
        behind a camera have depth <= 0; their uv is not meaningful).
    """
    n = len(cams)
    if points.dim() == 2:
        points = points.unsqueeze(0).expand(n, -1, -1)
    if points.dim() != 3 or points.shape[-1] != 3 or points.shape[0] != n:
        raise ValueError(f"project: points must be [M,3] or [N,M,3] with N = {n} cameras, got {list(points.shape)}")
    w2c = cams.world_to_camera()
    pc = torch.einsum("nij,nmj->nmi", w2c[:, :3, :3], points.to(torch.float32)) + w2c[:, None, :3, 3]
    z = pc[..., 2]
    Kp = cams.pixel_K(width, height)
    proj = torch.einsum("nij,nmj->nmi", Kp, pc)
    safe_z = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
    return proj[..., :2] / safe_z.unsqueeze(-1), z


# ---- Plücker rays --------------------------------------------------------------------------
def plucker_rays(cams: CameraBatch, height: int, width: int, reference: int | None = 0,
                 moment_first: bool = False) -> torch.Tensor:
    """Plücker ray maps ``[N,6,H,W]`` of every pixel centre, at any resolution.

    Poses are first expressed relative to a reference view: ``c2w_rel = w2c[reference] @ c2w``
    (so the reference camera becomes the identity); ``reference=None`` keeps world
    coordinates. Rays go through pixel centres ``(col + 0.5, row + 0.5)`` of a
    ``height x width`` image using the normalised K scaled to that size.

    Channel order (SEVA / VMem ``get_plucker_coordinates``): ``[d, o x d]`` -- channels
    0..2 the **unit** ray direction ``d`` in the (relative) world frame, channels 3..5 the
    moment ``o x d`` with ``o`` the (relative) camera centre. ``moment_first=True`` gives
    ``[o x d, d]`` (the CameraCtrl order) instead.
    """
    n = len(cams)
    c2w = cams.c2w
    if reference is not None:
        if not -n <= reference < n:
            raise ValueError(f"plucker_rays: reference view {reference} out of range for {n} cameras")
        c2w = rigid_inverse(c2w[reference]).unsqueeze(0) @ c2w
    dirs_cam = camera_rays(cams, height, width)  # [N,H,W,3]
    d = torch.einsum("nij,nhwj->nhwi", c2w[:, :3, :3], dirs_cam)
    d = d / d.norm(dim=-1, keepdim=True)
    o = c2w[:, None, None, :3, 3].expand_as(d)
    m = torch.cross(o, d, dim=-1)
    out = torch.cat([m, d] if moment_first else [d, m], dim=-1)
    return out.permute(0, 3, 1, 2).contiguous()


# ---- normalisation -------------------------------------------------------------------------
@dataclass
class Similarity:
    """World similarity ``x' = scale * (x - center)`` applied to cameras and points.

    Rotations are unchanged, camera centres and points are transformed, so projections
    are preserved (depths scale by ``scale``). :meth:`undo_cameras` reverses it.
    """

    center: torch.Tensor  # [3]
    scale: float

    def apply_points(self, points: torch.Tensor) -> torch.Tensor:
        """Transform world points ``[...,3]``."""
        return (points - self.center.to(points)) * self.scale

    def undo_points(self, points: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`apply_points`."""
        return points / self.scale + self.center.to(points)

    def apply_cameras(self, cams: CameraBatch) -> CameraBatch:
        """Transform camera centres (rotations and intrinsics unchanged)."""
        c2w = cams.c2w.clone()
        c2w[:, :3, 3] = self.apply_points(c2w[:, :3, 3])
        return CameraBatch(c2w, cams.K, cams.width, cams.height)

    def undo_cameras(self, cams: CameraBatch) -> CameraBatch:
        """Inverse of :meth:`apply_cameras`."""
        c2w = cams.c2w.clone()
        c2w[:, :3, 3] = self.undo_points(c2w[:, :3, 3])
        return CameraBatch(c2w, cams.K, cams.width, cams.height)


def normalize_cameras(cams: CameraBatch, target_scale: float = 2.0, scale_by: str = "first",
                      outlier_factor: float = 10.0, scale_offset: float = 0.0) -> tuple[CameraBatch, Similarity]:
    """Centre and scale camera positions (SEVA / VMem style), returning the transform.

    Centring: the mean camera centre, excluding outliers whose distance to the median
    centre exceeds ``outlier_factor`` times the 97th percentile of those distances.
    Scaling, after centring:

    - ``"first"`` (SEVA): ``target_scale / |t0| + scale_offset`` with ``t0`` the first
      camera's centred position (VMem passes ``scale_offset=0.01``); if ``|t0| <= 1e-5``
      the scale is ``target_scale``.
    - ``"median"`` (robust): ``target_scale / median |t_i|`` over the inlier cameras
      (``target_scale`` when all are about 0).

    Returns ``(normalised cameras, Similarity)``; ``similarity.undo_cameras`` restores the
    input and ``similarity.apply_points`` moves world points consistently.
    """
    if scale_by not in ("first", "median"):
        raise ValueError(f"normalize_cameras: scale_by must be 'first' or 'median', got {scale_by!r}")
    if not target_scale > 0:
        raise ValueError(f"normalize_cameras: target_scale must be positive, got {target_scale}")
    pos = cams.centers().double()
    dist = (pos - pos.median(dim=0).values).norm(dim=-1)
    limit = outlier_factor * torch.quantile(dist, 0.97)
    inlier = dist <= limit + 1e-12
    center = pos[inlier].mean(0)
    centred = (pos - center).norm(dim=-1)
    ref = centred[0] if scale_by == "first" else centred[inlier].median()
    scale = target_scale / float(ref) + scale_offset if float(ref) > 1e-5 else target_scale
    sim = Similarity(center.float(), float(scale))
    return sim.apply_cameras(cams), sim


# ---- rotations ------------------------------------------------------------------------------
def axis_angle_to_matrix(axis: torch.Tensor, angle_rad: torch.Tensor | float) -> torch.Tensor:
    """Rotation matrices ``[...,3,3]`` for rotations by ``angle`` (radians, right-hand rule)
    about unit ``axis [...,3]`` (Rodrigues)."""
    axis = torch.as_tensor(axis, dtype=torch.float32)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    angle = torch.as_tensor(angle_rad, dtype=torch.float32, device=axis.device)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    Kx = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*axis.shape[:-1], 3, 3)
    s, c = torch.sin(angle)[..., None, None], torch.cos(angle)[..., None, None]
    eye = torch.eye(3, device=axis.device).expand_as(Kx)
    return eye + s * Kx + (1 - c) * (Kx @ Kx)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``[...,4]`` as ``(w, x, y, z)`` with ``w >= 0`` from rotations ``[...,3,3]``."""
    R = R.to(torch.float64)
    m = {(i, j): R[..., i, j] for i in range(3) for j in range(3)}
    diag = torch.stack([1 + m[0, 0] + m[1, 1] + m[2, 2], 1 + m[0, 0] - m[1, 1] - m[2, 2],
                        1 - m[0, 0] + m[1, 1] - m[2, 2], 1 - m[0, 0] - m[1, 1] + m[2, 2]], -1)
    d21, d02, d10 = m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]
    s01, s02, s12 = m[0, 1] + m[1, 0], m[0, 2] + m[2, 0], m[1, 2] + m[2, 1]
    # four candidate (unnormalised) quaternions, each 4x one component; use the best-conditioned one
    cands = torch.stack([
        torch.stack([diag[..., 0], d21, d02, d10], -1),
        torch.stack([d21, diag[..., 1], s01, s02], -1),
        torch.stack([d02, s01, diag[..., 2], s12], -1),
        torch.stack([d10, s02, s12, diag[..., 3]], -1),
    ], -2)  # [...,4,4]
    best = diag.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[..., :1] < 0, -q, q)
    return q.float()


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[...,3,3]`` from quaternions ``[...,4]`` ``(w, x, y, z)`` (normalised here)."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(*q.shape[:-1], 3, 3)


def slerp(q0: torch.Tensor, q1: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Spherical linear interpolation of unit quaternions ``(w, x, y, z)``.

    ``q0, q1 [...,4]`` broadcast with ``t [...]`` (0 gives q0, 1 gives q1). Takes the
    shorter arc (q1 is negated when ``q0 . q1 < 0``); falls back to normalised lerp for
    nearly equal rotations.
    """
    q0, q1 = q0.to(torch.float64), q1.to(torch.float64)
    t = torch.as_tensor(t, dtype=torch.float64, device=q0.device)[..., None]
    dot = (q0 * q1).sum(-1, keepdim=True)
    q1 = torch.where(dot < 0, -q1, q1)
    dot = dot.abs().clamp(max=1.0)
    theta = torch.acos(dot)
    sin = torch.sin(theta)
    near = sin < 1e-6
    safe_sin = torch.where(near, torch.ones_like(sin), sin)
    w0 = torch.where(near, 1 - t, torch.sin((1 - t) * theta) / safe_sin)
    w1 = torch.where(near, t, torch.sin(t * theta) / safe_sin)
    q = w0 * q0 + w1 * q1
    return (q / q.norm(dim=-1, keepdim=True)).float()


def interpolate_poses(c2w0: torch.Tensor, c2w1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Poses ``[T,4,4]`` between two c2w ``[4,4]`` at fractions ``t [T]``: rotation by
    :func:`slerp`, camera centre by linear interpolation."""
    t = torch.as_tensor(t, dtype=torch.float32)
    q = slerp(matrix_to_quaternion(c2w0[:3, :3]), matrix_to_quaternion(c2w1[:3, :3]), t)
    out = torch.eye(4).repeat(t.shape[0], 1, 1)
    out[:, :3, :3] = quaternion_to_matrix(q)
    out[:, :3, 3] = (1 - t)[:, None] * c2w0[:3, 3] + t[:, None] * c2w1[:3, 3]
    return out


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """OpenCV c2w ``[...,4,4]`` for cameras at ``eye [...,3]`` looking at ``target [...,3]``.

    ``up [3]`` is the world's up direction: the camera's y axis (down in the image) is
    chosen to point against it, so the world up appears up in the image. ``up`` must not
    be parallel to the viewing direction.
    """
    eye = torch.as_tensor(eye, dtype=torch.float32)
    target = torch.as_tensor(target, dtype=torch.float32).expand_as(eye)
    up = torch.as_tensor(up, dtype=torch.float32).expand_as(eye)
    z = target - eye
    z = z / z.norm(dim=-1, keepdim=True)
    x = torch.cross(-up, z, dim=-1)  # right = down x forward
    norm = x.norm(dim=-1, keepdim=True)
    if (norm < 1e-6).any():
        raise ValueError("look_at: the up direction is parallel to the viewing direction")
    x = x / norm
    y = torch.cross(z, x, dim=-1)
    out = torch.zeros(*eye.shape[:-1], 4, 4)
    out[..., :3, 0], out[..., :3, 1], out[..., :3, 2], out[..., :3, 3] = x, y, z, eye
    out[..., 3, 3] = 1.0
    return out
