"""Memory-V2V retrieval: which earlier turns condition the next one.

- **Camera tasks (re-rendering): VideoFOV.** Every camera is expressed relative to the
  *target* video's first camera. A sphere of radius ``radius`` around that camera is sampled
  on a 180 x 360 latitude-longitude grid (cell centres; not area-uniform, as in the paper);
  a sphere point ``p`` is seen by a camera ``[R|t]`` (camera-to-world, OpenCV axes) when
  ``x = R^T (p - t)`` has ``z > 0`` and ``K x / z`` falls inside the image. A video's FOV is
  the union over its frames. A memory video ``i`` scores
  ``s = lam * |F* n F_i| / |F* u F_i| + (1 - lam) * |F* n F_i| / |F*|`` (``lam`` = 0.5).
- **Editing tasks: DINOv2 segment similarity.** A segment's descriptor is the mean DINOv2
  embedding of its *source* frames; candidates are ranked by cosine similarity to the
  current source segment's descriptor, with the most recent edited segment always first.

Both return the top ``k`` as ``[(index, score), ...]``, best first.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from ..nodes.cameras.geometry import CameraBatch, relative_to

GRID = (180, 360)  # latitude x longitude cells
DEFAULT_LAMBDA = 0.5


def sphere_points(radius: float = 1.0, grid: tuple[int, int] = GRID) -> torch.Tensor:
    """``[lat * lon, 3]`` float64: the cell centres of a latitude-longitude grid on a sphere of
    ``radius`` around the origin (latitude -90..90 along -y, the camera's up; longitude around y)."""
    n_lat, n_lon = grid
    lat = (torch.arange(n_lat, dtype=torch.float64) + 0.5) / n_lat * math.pi - math.pi / 2
    lon = (torch.arange(n_lon, dtype=torch.float64) + 0.5) / n_lon * 2 * math.pi - math.pi
    lat, lon = torch.meshgrid(lat, lon, indexing="ij")
    dirs = torch.stack([lat.cos() * lon.sin(), -lat.sin(), lat.cos() * lon.cos()], -1)
    return (dirs * radius).reshape(-1, 3)


def fov_mask(cameras: CameraBatch, reference: torch.Tensor, radius: float = 1.0,
             grid: tuple[int, int] = GRID, chunk: int = 16) -> torch.Tensor:
    """``[lat * lon]`` bool: the sphere points (around ``reference``, a camera-to-world ``[4,4]``)
    that any camera of ``cameras`` sees."""
    points = sphere_points(radius, grid)
    rel = relative_to(cameras.c2w, reference)  # [F, 4, 4] float64
    K = cameras.K.to(torch.float64)
    seen = torch.zeros(points.shape[0], dtype=torch.bool)
    for start in range(0, len(cameras), chunk):
        R, t, k = rel[start:start + chunk, :3, :3], rel[start:start + chunk, :3, 3], K[start:start + chunk]
        x = torch.einsum("fji,fpj->fpi", R, points[None] - t[:, None])  # R^T (p - t)
        z = x[..., 2]
        uv = torch.einsum("fij,fpj->fpi", k, x)[..., :2] / z.clamp_min(1e-12)[..., None]
        inside = (z > 1e-9) & (uv >= 0).all(-1) & (uv <= 1).all(-1)
        seen |= inside.any(0)
    return seen


def fov_scores(target: torch.Tensor, others: Sequence[torch.Tensor], lam: float = DEFAULT_LAMBDA) -> list[float]:
    """``lam * IoU + (1 - lam) * containment`` of each mask in ``others`` against ``target``."""
    size = int(target.sum())
    out = []
    for mask in others:
        inter = int((target & mask).sum())
        union = int((target | mask).sum())
        iou = inter / union if union else 0.0
        contain = inter / size if size else 0.0
        out.append(lam * iou + (1 - lam) * contain)
    return out


def rank_by_fov(target: CameraBatch, memory: Sequence[CameraBatch], k: int, lam: float = DEFAULT_LAMBDA,
                radius: float = 1.0, grid: tuple[int, int] = GRID) -> list[tuple[int, float]]:
    """The ``k`` memory videos whose VideoFOV best matches ``target``'s (module doc)."""
    reference = target.c2w[0]
    wanted = fov_mask(target, reference, radius, grid)
    scores = fov_scores(wanted, [fov_mask(cams, reference, radius, grid) for cams in memory], lam)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], -i))  # ties: the more recent first
    return [(i, scores[i]) for i in order[:max(k, 0)]]


def rank_by_appearance(current: torch.Tensor, descriptors: Sequence[torch.Tensor], k: int,
                       recent: Optional[int] = None) -> list[tuple[int, float]]:
    """The ``k`` memory segments most similar to ``current`` (cosine of mean DINOv2 embeddings),
    with ``recent`` (the index of the most recent edited segment) always first."""
    if not descriptors:
        return []
    stack = torch.stack([d.to(torch.float32).flatten() for d in descriptors])
    sims = torch.nn.functional.cosine_similarity(stack, current.to(torch.float32).flatten()[None], dim=-1)
    order = sorted(range(len(descriptors)), key=lambda i: (-float(sims[i]), -i))
    if recent is not None:
        if not 0 <= recent < len(descriptors):
            raise ValueError(f"recent must index the {len(descriptors)} segments; got {recent}")
        order.remove(recent)
        order.insert(0, recent)
    return [(i, float(sims[i])) for i in order[:max(k, 0)]]


def rank_turns_by_appearance(bank, candidates: Sequence[int], descriptor: torch.Tensor,
                             k: int) -> list[tuple[int, float]]:
    """:func:`rank_by_appearance` over the descriptors of the bank turns ``candidates`` (turn
    indices in the order they were stored), the last stored one first: ``[(turn index,
    cosine)]``, best first; ``[]`` without candidates or for ``k == 0``."""
    if not candidates or k == 0:
        return []
    ranked = rank_by_appearance(descriptor, [bank.turns[i].descriptor for i in candidates], k,
                                recent=len(candidates) - 1)
    return [(candidates[i], score) for i, score in ranked]
