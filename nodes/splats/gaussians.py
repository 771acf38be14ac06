"""3D Gaussian splatting scenes: the container, the standard PLY layout, SH colours.

Plain torch + numpy, importable without ComfyUI.

Conventions:

- World coordinates are whatever the scene was trained in; cameras come as
  :class:`~..cameras.geometry.CameraBatch` (OpenCV axes) and are not changed here.
- A scene stores *activated* values: linear ``scales`` (the PLY stores their log),
  ``opacities`` in 0..1 (the PLY stores the logit), unit quaternions ``(w, x, y, z)``
  (the PLY's ``rot_0..3``, in that order).
- ``sh [N,K,3]`` holds real spherical-harmonic coefficients per colour channel with
  ``K = (degree + 1)^2``, degree 0..3, in the 3DGS basis order; ``sh[:, 0]`` is
  ``f_dc``. Colour = ``max(SH . basis(dir) + 0.5, 0)`` with ``dir`` the unit vector
  from the camera centre to the Gaussian (:func:`sh_to_rgb`).

The PLY layout is the one the 3DGS trainer writes (and every viewer reads): element
``vertex`` with float properties ``x y z nx ny nz f_dc_0..2 f_rest_0..R-1 opacity
scale_0..2 rot_0..3``, ``R = 3 (K - 1)``, where ``f_rest`` is **channel-major**:
``f_rest[c * (K - 1) + (k - 1)]`` is coefficient ``k >= 1`` of colour channel ``c``.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import numpy as np
import torch

from ..cameras.geometry import matrix_to_quaternion

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
         1.445305721320277, -0.5900435899266435)

_SH_COUNTS = {1: 0, 4: 1, 9: 2, 16: 3}  # K -> degree
_REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]
_REQUIRED_TEXT = "x y z, f_dc_0..2, opacity, scale_0..2, rot_0..3"
_OPACITY_EPS = 1e-6  # opacities are clamped to [eps, 1 - eps] before the logit on save


@dataclass(eq=False)  # tensors inside
class GaussianScene:
    """N 3D Gaussians with activated parameters (see the module docstring).

    Attributes:
        means: ``[N,3]`` float32 centres in world coordinates.
        scales: ``[N,3]`` float32 standard deviations along the Gaussian's local axes
            (linear, >= 0).
        rotations: ``[N,4]`` float32 quaternions ``(w, x, y, z)`` of the local axes;
            non-zero (renderers normalise them, :func:`load_ply` stores unit ones).
        opacities: ``[N]`` float32 in 0..1.
        sh: ``[N,K,3]`` float32 SH coefficients, ``K`` in 1, 4, 9, 16.

    Construction converts floating tensors to float32 (keeping autograd) and raises
    ``ValueError`` on wrong shapes, mixed devices, non-finite values, negative scales,
    opacities outside 0..1 or zero quaternions. N may be 0 (an empty scene).
    """

    means: torch.Tensor
    scales: torch.Tensor
    rotations: torch.Tensor
    opacities: torch.Tensor
    sh: torch.Tensor

    def __post_init__(self):
        shapes = {"means": (3,), "scales": (3,), "rotations": (4,), "opacities": (), "sh": None}
        for name, tail in shapes.items():
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or not torch.is_floating_point(value):
                raise ValueError(f"GaussianScene.{name} must be a floating-point tensor, got "
                                 f"{type(value).__name__ if not isinstance(value, torch.Tensor) else value.dtype}")
            setattr(self, name, value.to(torch.float32))
        n = self.means.shape[0] if self.means.dim() == 2 else -1
        expected = {"means": [n, 3], "scales": [n, 3], "rotations": [n, 4], "opacities": [n]}
        for name, shape in expected.items():
            if n < 0 or list(getattr(self, name).shape) != shape:
                raise ValueError(f"GaussianScene.{name} must have shape {['N', *shape[1:]]} with N = len(means); "
                                 f"got means {list(self.means.shape)}, {name} {list(getattr(self, name).shape)}")
        sh = self.sh
        if sh.dim() != 3 or sh.shape[0] != n or sh.shape[2] != 3 or sh.shape[1] not in _SH_COUNTS:
            raise ValueError(f"GaussianScene.sh must have shape [N,K,3] with N = {n} and K = (degree+1)^2 "
                             f"in 1, 4, 9, 16 (degree 0..3); got {list(sh.shape)}")
        devices = {str(getattr(self, name).device) for name in shapes}
        if len(devices) > 1:
            raise ValueError(f"GaussianScene tensors must be on one device, got {sorted(devices)}")
        for name in shapes:
            finite = torch.isfinite(getattr(self, name).detach())
            bad = ~(finite.flatten(1).all(1) if finite.dim() > 1 else finite)
            if bad.any():
                raise ValueError(f"GaussianScene.{name} has NaN or infinite values "
                                 f"({int(bad.sum())} Gaussians, first {int(bad.nonzero()[0])})")
        if (self.scales.detach() < 0).any():
            raise ValueError("GaussianScene.scales must be >= 0 (linear standard deviations, not log scales)")
        op = self.opacities.detach()
        if ((op < 0) | (op > 1)).any():
            raise ValueError(f"GaussianScene.opacities must lie in 0..1 (activated, not logits); "
                             f"got range {float(op.min()):.4g}..{float(op.max()):.4g}")
        if (self.rotations.detach().norm(dim=-1) < 1e-12).any():
            raise ValueError("GaussianScene.rotations has zero quaternions; expected (w, x, y, z) with norm > 0")

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        """Spherical-harmonic degree 0..3 (``K = (degree + 1)^2``)."""
        return _SH_COUNTS[self.sh.shape[1]]

    @property
    def device(self) -> torch.device:
        return self.means.device

    def to(self, device) -> "GaussianScene":
        """The same scene on another device."""
        return GaussianScene(self.means.to(device), self.scales.to(device), self.rotations.to(device),
                             self.opacities.to(device), self.sh.to(device))

    def transformed(self, matrix: torch.Tensor) -> "GaussianScene":
        """The scene moved by a rigid transform ``matrix [4,4]`` (``x' = R x + t``, ``R`` a proper
        rotation): centres moved, local axes rotated (``q' = q_R * q``), scales and opacities kept.

        Raises ``ValueError`` for a matrix that is not rigid (a scale, shear or mirror), and for
        SH degree above 0 (rotating the higher bands is not implemented: their colours would
        point the wrong way)."""
        m = matrix.detach().to(torch.float64).cpu()
        if m.shape != (4, 4):
            raise ValueError(f"a scene transform must be [4,4]; got {list(m.shape)}")
        rot = m[:3, :3]
        if not (torch.allclose(rot @ rot.T, torch.eye(3, dtype=torch.float64), atol=1e-5)
                and abs(float(torch.linalg.det(rot)) - 1.0) < 1e-5):
            raise ValueError("a scene transform must be rigid (a proper rotation and a translation)")
        if self.sh_degree:
            raise ValueError(f"moving a scene with SH degree {self.sh_degree} needs its SH bands rotated; only "
                             "degree 0 (plain colours) is supported")
        means = (self.means.to(torch.float64) @ rot.to(self.device).T + m[:3, 3].to(self.device)).float()
        q = matrix_to_quaternion(rot).to(torch.float64).to(self.device)
        r = self.rotations.to(torch.float64)
        w1, x1, y1, z1 = q.unbind(-1)
        w2, x2, y2, z2 = r.unbind(-1)
        rotations = torch.stack([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                                 w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2], -1)
        return GaussianScene(means, self.scales, rotations.float(), self.opacities, self.sh)

    def select(self, index) -> "GaussianScene":
        """The Gaussians picked by ``index`` (slice, bool mask or index tensor) as a new scene."""
        return GaussianScene(self.means[index], self.scales[index], self.rotations[index],
                             self.opacities[index], self.sh[index])


# ---- spherical harmonics -----------------------------------------------------------------
def sh_basis(dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """Real SH basis values ``[..., (degree+1)^2]`` at unit directions ``dirs [...,3]``
    (3DGS constants and order, degree 0..3)."""
    if degree not in (0, 1, 2, 3):
        raise ValueError(f"sh_basis: degree must be 0..3, got {degree}")
    out = [torch.full_like(dirs[..., 0], SH_C0)]
    if degree >= 1:
        x, y, z = dirs.unbind(-1)
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [SH_C2[0] * xy, SH_C2[1] * yz, SH_C2[2] * (2 * zz - xx - yy), SH_C2[3] * xz, SH_C2[4] * (xx - yy)]
    if degree >= 3:
        out += [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * xy * z, SH_C3[2] * y * (4 * zz - xx - yy),
                SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy),
                SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3 * yy)]
    return torch.stack(out, -1)


def sh_to_rgb(sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Colour ``[...,3]`` of SH coefficients ``sh [...,K,3]`` seen along ``dirs [...,3]``.

    ``dirs`` point from the camera centre to the Gaussian (normalised here). As in 3DGS
    the result is ``max(sum_k sh[k] * basis_k(dir) + 0.5, 0)`` (no upper clamp); with
    degree 0 that is ``C0 * f_dc + 0.5``.
    """
    k = sh.shape[-2]
    if k not in _SH_COUNTS or sh.shape[-1] != 3:
        raise ValueError(f"sh_to_rgb: sh must be [...,K,3] with K in 1, 4, 9, 16; got {list(sh.shape)}")
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    basis = sh_basis(dirs, _SH_COUNTS[k])
    return ((basis.unsqueeze(-1) * sh).sum(-2) + 0.5).clamp_min(0.0)


def rgb_to_sh_dc(rgb: torch.Tensor) -> torch.Tensor:
    """The degree-0 coefficient ``f_dc [...,3]`` that renders as colour ``rgb [...,3]``."""
    return (rgb - 0.5) / SH_C0


# ---- PLY -----------------------------------------------------------------------------------
_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}


@dataclass
class _PlyElement:
    name: str
    count: int
    properties: list  # [(name, numpy type code)]; a list property has type None


def _read_header(f, name: str) -> tuple[str, list[_PlyElement]]:
    """Parse the header of an open binary file; returns (format, elements)."""
    if f.read(4) not in (b"ply\n", b"ply\r"):
        raise ValueError(f"{name}: not a PLY file (it does not start with 'ply')")
    fmt, elements = None, []
    while True:
        raw = f.readline()
        if not raw:
            raise ValueError(f"{name}: PLY header has no 'end_header' line")
        words = raw.decode("ascii", errors="replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format" and len(words) >= 2 and words[1] in _FORMATS:
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append(_PlyElement(words[1], int(words[2]), []))
        elif words[0] == "property" and elements and len(words) == 3 and words[1] in _PLY_TYPES:
            elements[-1].properties.append((words[2], _PLY_TYPES[words[1]]))
        elif words[0] == "property" and elements and len(words) == 5 and words[1] == "list":
            elements[-1].properties.append((words[4], None))
        else:
            raise ValueError(f"{name}: unsupported PLY header line {raw.decode('ascii', 'replace').strip()!r}")
    if fmt is None:
        raise ValueError(f"{name}: PLY header lacks a 'format ascii|binary_little_endian|binary_big_endian 1.0' line")
    return fmt, elements


def _read_vertices(path: str) -> dict[str, np.ndarray]:
    """The vertex element of a PLY file as ``{property: float64/float32 array [N]}``."""
    name = os.path.basename(path)
    with open(path, "rb") as f:
        fmt, elements = _read_header(f, name)
        vertex = next((e for e in elements if e.name == "vertex"), None)
        if vertex is None:
            raise ValueError(f"{name}: the PLY has no 'vertex' element (a 3D Gaussian splatting PLY stores "
                             f"one vertex per Gaussian)")
        before = elements[:elements.index(vertex)]
        if any(t is None for e in [*before, vertex] for _, t in e.properties):
            raise ValueError(f"{name}: list properties in or before the vertex element are not supported")
        if fmt == "ascii":
            skip = sum(e.count for e in before)
            lines = f.read().decode("ascii", errors="replace").splitlines()
            rows = [line.split() for line in lines[skip:skip + vertex.count]]
            if len(rows) != vertex.count or any(len(r) != len(vertex.properties) for r in rows):
                raise ValueError(f"{name}: the ascii PLY body does not hold {vertex.count} vertices of "
                                 f"{len(vertex.properties)} values each")
            table = np.array(rows, dtype=np.float64).reshape(vertex.count, len(vertex.properties))
            return {p: table[:, i] for i, (p, _) in enumerate(vertex.properties)}
        order = _FORMATS[fmt]
        f.seek(sum(e.count * np.dtype([(p, order + t) for p, t in e.properties]).itemsize for e in before), 1)
        dtype = np.dtype([(p, order + t) for p, t in vertex.properties])
        data = f.read(vertex.count * dtype.itemsize)
        if len(data) != vertex.count * dtype.itemsize:
            raise ValueError(f"{name}: the PLY file is truncated ({len(data)} of {vertex.count * dtype.itemsize} "
                             f"vertex bytes)")
        table = np.frombuffer(data, dtype=dtype, count=vertex.count)
        return {p: table[p] for p, _ in vertex.properties}


def _f_rest_count(props: dict, name: str) -> int:
    """Number of ``f_rest_*`` properties, checked to be ``3 ((d+1)^2 - 1)`` for d in 0..3."""
    rest = sorted(int(m.group(1)) for p in props if (m := re.fullmatch(r"f_rest_(\d+)", p)))
    if rest != list(range(len(rest))):
        raise ValueError(f"{name}: f_rest properties must be numbered 0..R-1 without gaps, got {rest[:8]}...")
    allowed = {3 * ((d + 1) ** 2 - 1): d for d in range(4)}
    if len(rest) not in allowed:
        raise ValueError(f"{name}: {len(rest)} f_rest properties; expected 3 * ((degree+1)^2 - 1) for SH degree "
                         f"0..3, i.e. one of {sorted(allowed)}")
    return len(rest)


def load_ply(path: str | os.PathLike) -> GaussianScene:
    """Load a 3D Gaussian splatting PLY (binary little/big endian or ascii).

    Reads element ``vertex`` with ``x y z f_dc_0..2 [f_rest_0..R-1] opacity scale_0..2
    rot_0..3`` (``nx ny nz`` and other extra properties are ignored). Applies the 3DGS
    activations: ``scales = exp(scale_i)``, ``opacities = sigmoid(opacity)``, unit
    quaternions. ``f_rest`` is read channel-major (see the module docstring).

    Raises ``ValueError`` naming the file for: not a PLY, no vertices, missing required
    properties (listed), an ``f_rest`` count that is not ``3 ((d+1)^2 - 1)``, non-finite
    values or zero quaternions.
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    props = _read_vertices(path)
    missing = [p for p in _REQUIRED if p not in props]
    if missing:
        raise ValueError(f"{name}: the vertex element lacks {', '.join(missing)} (a 3D Gaussian splatting PLY has "
                         f"{_REQUIRED_TEXT})")
    n = len(props["x"])
    if n == 0:
        raise ValueError(f"{name}: the PLY has no vertices (no Gaussians)")
    n_rest = _f_rest_count(props, name)

    def column(*names: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(props[p], dtype=np.float32) for p in names], -1)
                                if names else np.zeros((n, 0), dtype=np.float32))

    k = n_rest // 3 + 1
    dc = column("f_dc_0", "f_dc_1", "f_dc_2").unsqueeze(1)  # [N,1,3]
    rest = column(*[f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, k - 1).transpose(1, 2)  # [N,K-1,3]
    rotations = column("rot_0", "rot_1", "rot_2", "rot_3")
    norms = rotations.norm(dim=-1, keepdim=True)
    if not torch.isfinite(norms).all() or (norms < 1e-12).any():
        raise ValueError(f"{name}: rot_0..3 has zero or non-finite quaternions")
    try:
        return GaussianScene(means=column("x", "y", "z"), scales=torch.exp(column("scale_0", "scale_1", "scale_2")),
                             rotations=rotations / norms, opacities=torch.sigmoid(column("opacity")[:, 0]),
                             sh=torch.cat([dc, rest], 1))
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def save_ply(scene: GaussianScene, path: str | os.PathLike) -> None:
    """Write ``scene`` as a binary little-endian 3DGS PLY (the trainer's exact layout).

    Properties, all float32: ``x y z nx ny nz f_dc_0..2 f_rest_0..R-1 opacity
    scale_0..2 rot_0..3`` with ``nx ny nz = 0``, ``f_rest`` channel-major,
    ``opacity = logit(clamp(o, 1e-6, 1 - 1e-6))``, ``scale_i = log(max(s, 1e-38))``,
    rotations normalised. :func:`load_ply` reads it back to the same scene.
    """
    n, k = len(scene), scene.sh.shape[1]
    rest_names = [f"f_rest_{i}" for i in range(3 * (k - 1))]
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *rest_names, "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    s = scene.to("cpu")
    op = s.opacities.detach().double().clamp(_OPACITY_EPS, 1 - _OPACITY_EPS)
    columns = torch.cat([
        s.means.detach(), torch.zeros(n, 3), s.sh.detach()[:, 0],
        s.sh.detach()[:, 1:].transpose(1, 2).reshape(n, -1),  # channel-major f_rest
        torch.log(op / (1 - op)).float()[:, None], torch.log(s.scales.detach().clamp_min(1e-38)),
        s.rotations.detach() / s.rotations.detach().norm(dim=-1, keepdim=True),
    ], 1).numpy().astype("<f4")
    header = "".join(["ply\n", "format binary_little_endian 1.0\n", f"element vertex {n}\n",
                      *[f"property float {p}\n" for p in names], "end_header\n"])
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(np.ascontiguousarray(columns).tobytes())


# ---- synthetic scenes ----------------------------------------------------------------------
def random_scene(count: int, sh_degree: int = 0, seed: int = 0, center=(0.0, 0.0, 0.0), extent: float = 1.0,
                 scale_range: tuple[float, float] = (0.01, 0.05), opacity_range: tuple[float, float] = (0.2, 0.95),
                 sh_rest_std: float = 0.1) -> GaussianScene:
    """A reproducible random scene of ``count`` Gaussians (for tests, benchmarks, assets).

    Means uniform in the cube ``center +- extent``; per-axis scales log-uniform in
    ``scale_range``; uniformly random rotations; opacities uniform in ``opacity_range``;
    base colours uniform in 0..1 (stored as ``f_dc``), higher SH coefficients normal
    with standard deviation ``sh_rest_std``. CPU tensors; ``torch.Generator`` seeded by ``seed``.
    """
    if sh_degree not in (0, 1, 2, 3):
        raise ValueError(f"random_scene: sh_degree must be 0..3, got {sh_degree}")
    if count < 0:
        raise ValueError(f"random_scene: count must be >= 0, got {count}")
    g = torch.Generator().manual_seed(seed)

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    means = torch.as_tensor(center, dtype=torch.float32) + uniform(-extent, extent, count, 3)
    scales = torch.exp(uniform(math.log(scale_range[0]), math.log(scale_range[1]), count, 3))
    quats = torch.randn(count, 4, generator=g)
    quats = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    opacities = uniform(opacity_range[0], opacity_range[1], count)
    dc = rgb_to_sh_dc(torch.rand(count, 1, 3, generator=g))
    rest = sh_rest_std * torch.randn(count, (sh_degree + 1) ** 2 - 1, 3, generator=g)
    return GaussianScene(means, scales, quats, opacities, torch.cat([dc, rest], 1))
