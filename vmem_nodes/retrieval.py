"""Which memorised views to condition on: render surfels, vote, rank, select.

For a query camera (OpenCV c2w, K normalised by image size; see
:mod:`consistent_video.nodes.cameras.geometry`):

1. **Render** the surfels as oriented disks into a ``render_width`` wide image with the
   query's intrinsics, focal lengths times ``focal_scale`` (0.65 in VMem, a wider view
   than the target), with a z-buffer; disks facing away from the camera are culled, so a
   surface only hides what is behind it from the side it was observed from. A pixel's
   *front surface* is every disk hit within ``depth_tolerance`` (relative) of the nearest
   hit. Vectorised in torch: per disk, the pixels of a conservative screen box are
   generated, the pixel ray is intersected with the disk's plane, the hit must lie within
   the radius, and a scatter-min per pixel keeps the nearest.
2. **Vote**: each covered pixel gives ``cos / (1 + depth)`` (``cos`` between the pixel ray
   and the normal, ``depth`` the hit's z-depth), shared by its front surface's surfels in
   proportion to ``1 / radius^2``, and each surfel passes its share to every frame that
   observed it.
3. **Quotas**: ``num_views + extra_candidates`` candidate slots are apportioned to the
   voting frames in proportion to their votes, at least one each (the best-voted frames
   when there are more voters than slots); frames with a slot are the candidates.
4. **Rank** candidates by pose distance to the query:
   ``translation_weight * |t_q - t_f| + rotation angle (radians)``.
5. **Select** ``num_views`` distinct views: the nearest candidate; the most recent frame
   if ``include_most_recent``; with ``use_nms``, candidates farther than a threshold from
   every selected view, the threshold starting at the median pairwise distance of the
   candidates and divided by ``nms_relax`` until enough are chosen; the rest by distance.

Fixes of VMem's code (``process_retrieved_spatial_information``, ``get_frame_distribution``,
``get_context_info``), each deliberate:

- The first vote of every frame is counted once (VMem initialises it and then adds it again).
- Leftover quota slots are added one by one to the largest remainders (VMem sets them to 1).
- A frame is a candidate once, whatever its quota (VMem repeats it ``quota`` times, and
  its fill step could then return the same view twice); selected views are distinct.
- With fewer candidates than ``num_views`` (or none: nothing visible), the remaining views
  are the nearest memorised frames by pose, so the model always gets
  ``min(num_views, frames in memory)`` views (VMem used fewer while the frame count the
  network expects stayed fixed).
- The NMS threshold is the median pairwise distance of the current candidates, computed
  per query (VMem computed it once, over all frames, only when exactly 5 frames existed).
- Coincident disks (views of one surface that did not merge) share a pixel instead of one
  winning by rounding: VMem's strict z-test hands every pixel of a wall to whichever copy
  is a hair nearer. Finer disks (seen from closer) get the larger share.
- Ray-disk intersection replaces the 16-gon and its mean vertex depth; per-pixel cosines
  replace the cosine at the disk centre.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..nodes.cameras.geometry import rigid_inverse
from .surfel_index import SurfelIndex, float_keys
from .surfels import SurfelInputError

_NONE = torch.iinfo(torch.int64).max
_MAX_FRAGMENTS = 1 << 22  # fragments generated at once (memory bound of the rasteriser)


@dataclass(frozen=True)
class RetrievalSettings:
    """Knobs of retrieval (defaults follow VMem's inference config, except two).

    ``render_width`` is 128 where VMem renders 512 pixels wide: on the benchmark walk
    (``benchmarks/bench_surfels.py``) both select the same views for 40 of 40 queries, at
    5 to 11 times faster. ``depth_tolerance`` is new (see :class:`SurfelRender`).
    """

    num_views: int = 4
    extra_candidates: int = 10
    translation_weight: float = 0.1
    use_nms: bool = True
    include_most_recent: bool = False
    nms_relax: float = 1.2
    render_width: int = 128
    focal_scale: float = 0.65
    near: float = 0.1
    far: float = 1000.0
    depth_tolerance: float = 0.02
    query_views: int = 1

    def validate(self) -> None:
        """Raise :class:`SurfelInputError` naming the first out-of-range setting."""
        checks = [("num_views", self.num_views >= 1, "at least 1"),
                  ("extra_candidates", self.extra_candidates >= 0, "0 or more"),
                  ("translation_weight", self.translation_weight >= 0, "0 or more"),
                  ("nms_relax", self.nms_relax > 1, "greater than 1"),
                  ("render_width", self.render_width >= 1, "at least 1"),
                  ("focal_scale", self.focal_scale > 0, "a positive number"),
                  ("near", 0 < self.near < self.far, "0 < near < far"),
                  ("depth_tolerance", self.depth_tolerance >= 0, "0 or more"),
                  ("query_views", self.query_views >= 1, "at least 1")]
        for name, ok, expected in checks:
            if not ok:
                raise SurfelInputError(name, f"is {getattr(self, name)}", expected)


@dataclass
class SurfelRender:
    """What a query camera sees of the surfels.

    Per pixel ``[H,W]``: the nearest ``surfel`` (int64, -1 where empty), its hit z-``depth``
    (inf where empty) and the ``cos`` between the pixel ray and its normal (0 where empty).
    The *front surface* of a pixel is every surfel hit within ``tolerance`` (relative) of the
    nearest depth: coincident disks of one surface (several views of a wall that did not
    merge) all belong to it, instead of an arbitrary one winning by rounding.
    ``front_pixel [L]`` (flat index ``row * W + column``) and ``front_surfel [L]`` list them.
    """

    surfel: torch.Tensor
    depth: torch.Tensor
    cos: torch.Tensor
    front_pixel: torch.Tensor
    front_surfel: torch.Tensor


@dataclass
class Retrieval:
    """Result of :func:`retrieve` over F memorised frames.

    ``indices [k]``: selected frames in selection order (nearest candidate first).
    ``votes [F]``: weighted votes; ``quotas [F]``: candidate slots; ``candidates [C]``:
    frames with a slot, nearest pose first; ``distances [F]``: pose distance of every
    frame to ``query_c2w [4,4]`` (the camera the surfels were rendered from).
    """

    indices: torch.Tensor
    votes: torch.Tensor
    quotas: torch.Tensor
    candidates: torch.Tensor
    distances: torch.Tensor
    query_c2w: torch.Tensor


def _screen_range(lo: torch.Tensor, hi: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last pixel whose centre (``i + 0.5``) lies in ``[lo, hi]``, clipped to the image."""
    first = torch.ceil(lo - 0.5).clamp(0, size).to(torch.int64)
    last = torch.floor(hi - 0.5).clamp(-1, size - 1).to(torch.int64)
    return first, last


def render_surfels(position: torch.Tensor, normal: torch.Tensor, radius: torch.Tensor, c2w: torch.Tensor,
                   K: torch.Tensor, width: int, height: int, near: float = 0.1, far: float = 1000.0,
                   tolerance: float = 0.02) -> SurfelRender:
    """Z-buffer render of oriented disks (step 1 of the module doc).

    Args:
        position, normal: ``[M,3]`` world centres and unit normals; radius ``[M]``.
        c2w: ``[4,4]`` OpenCV camera-to-world; K: ``[3,3]`` normalised intrinsics, scaled
            here to ``width x height`` pixels (pixel centres at ``+0.5``).
        near, far: z-depth range of hits.
        tolerance: relative depth range of a pixel's front surface (see :class:`SurfelRender`).
    Returns:
        :class:`SurfelRender` of shape ``[height, width]``; ties in depth go to the lower index.
    """
    c2w = c2w.to(torch.float32)
    w2c = rigid_inverse(c2w)
    R, t = w2c[:3, :3], w2c[:3, 3]
    fx, fy = float(K[0, 0]) * width, float(K[1, 1]) * height
    cx, cy = float(K[0, 2]) * width, float(K[1, 2]) * height
    z = position @ R[2] + t[2]
    facing = ((c2w[:3, 3] - position) * normal).sum(-1) > 0
    index = (facing & (z + radius > near) & (z - radius < far)).nonzero().squeeze(1)
    pc = position[index] @ R.T + t
    nc = normal[index] @ R.T
    r = radius[index]
    # The disk's axis-aligned box (radius r, unit normal n: half-extent r * sqrt(1 - n_i^2) on
    # axis i), cut at the near plane, bounds its screen box.
    extent = r.unsqueeze(-1) * (1.0 - nc.square()).clamp_min(0.0).sqrt()
    lo, hi = pc - extent, pc + extent
    inside = (hi[:, 2] > near) & (lo[:, 2] < far)
    index, pc, nc, r, lo, hi = index[inside], pc[inside], nc[inside], r[inside], lo[inside], hi[inside]
    z_lo, z_hi = lo[:, 2].clamp_min(near), hi[:, 2]
    u0, u1 = _screen_range(fx * torch.minimum(lo[:, 0] / z_lo, lo[:, 0] / z_hi) + cx,
                           fx * torch.maximum(hi[:, 0] / z_lo, hi[:, 0] / z_hi) + cx, width)
    v0, v1 = _screen_range(fy * torch.minimum(lo[:, 1] / z_lo, lo[:, 1] / z_hi) + cy,
                           fy * torch.maximum(hi[:, 1] / z_lo, hi[:, 1] / z_hi) + cy, height)
    box_w = (u1 - u0 + 1).clamp_min(0)
    counts = box_w * (v1 - v0 + 1).clamp_min(0)
    # Per-disk constants, gathered once per fragment: normal, plane offset n.p, centre, r^2.
    disk_f = torch.cat([nc, (nc * pc).sum(-1, keepdim=True), pc, r.square().unsqueeze(-1)], -1)
    ends = torch.cumsum(counts, 0)
    disk_i = torch.stack([u0, v0, box_w, ends - counts], -1)  # screen box origin, width, first fragment
    ray_x = (torch.arange(width, dtype=torch.float32) + 0.5 - cx) / fx  # camera rays (z = 1)
    ray_y = (torch.arange(height, dtype=torch.float32) + 0.5 - cy) / fy
    best = torch.full((height * width,), _NONE, dtype=torch.int64)
    # (pixel, depth, disk) of every hit, starting with an empty entry
    hits = [(torch.zeros(0, dtype=torch.int64), torch.zeros(0), torch.zeros(0, dtype=torch.int64))]
    start = 0
    while start < counts.shape[0]:  # slices of whole disks, at most _MAX_FRAGMENTS fragments each
        before = int(ends[start - 1]) if start else 0
        stop = max(start + 1, int(torch.searchsorted(ends, before + _MAX_FRAGMENTS, right=True)))
        disk = torch.repeat_interleave(torch.arange(start, stop), counts[start:stop])
        ints, f = disk_i[disk], disk_f[disk]
        local = torch.arange(before, before + disk.numel()) - ints[:, 3]
        start = stop
        u = ints[:, 0] + local % ints[:, 2]
        v = ints[:, 1] + local // ints[:, 2]
        rx, ry = ray_x[u], ray_y[v]
        denom = f[:, 0] * rx + f[:, 1] * ry + f[:, 2]
        depth = f[:, 3] / denom
        miss = ((depth * rx - f[:, 4]).square() + (depth * ry - f[:, 5]).square() + (depth - f[:, 6]).square()
                > f[:, 7])
        hit = ((denom < 0) & (depth > near) & (depth < far) & ~miss).nonzero().squeeze(1)
        hits.append((v[hit] * width + u[hit], depth[hit], disk[hit]))
        best.scatter_reduce_(0, hits[-1][0], float_keys(hits[-1][1], hits[-1][2]), "amin")
    pixel = (best != _NONE).nonzero().squeeze(1)
    disk = best[pixel] & ((1 << 32) - 1)
    ray = torch.stack([ray_x[pixel % width], ray_y[pixel // width], torch.ones(pixel.shape)], -1)
    surfel = torch.full((height * width,), -1, dtype=torch.int64)
    surfel[pixel] = index[disk]
    depth_map = torch.full((height * width,), float("inf"))
    depth_map[pixel] = (best[pixel] >> 32).to(torch.int32).view(torch.float32)
    cos_map = torch.zeros(height * width)
    cos_map[pixel] = -(nc[disk] * ray).sum(-1) / ray.norm(dim=-1)
    hit_pixel, hit_depth, hit_disk = (torch.cat(parts) for parts in zip(*hits))
    front = (hit_depth <= depth_map[hit_pixel] * (1.0 + tolerance)).nonzero().squeeze(1)
    return SurfelRender(surfel.view(height, width), depth_map.view(height, width), cos_map.view(height, width),
                        hit_pixel[front], index[hit_disk[front]])


def frame_votes(render: SurfelRender, radius: torch.Tensor, pair_surfel: torch.Tensor, pair_frame: torch.Tensor,
                num_frames: int) -> torch.Tensor:
    """Weighted votes ``[F]`` (float64, step 2).

    Each covered pixel's ``cos / (1 + depth)`` is shared by the surfels of its front surface
    in proportion to ``1 / radius^2`` (their resolution: a disk seen from close up outweighs
    a coincident one seen from afar), and each surfel's share goes once to every frame in
    its observations ``(pair_surfel, pair_frame)``; ``radius [M]`` of all surfels.
    """
    weight = (render.cos / (1.0 + render.depth)).double().flatten()
    pixel, surfel = render.front_pixel, render.front_surfel
    detail = radius[surfel].double().reciprocal().square()
    total = torch.zeros_like(weight).index_add_(0, pixel, detail)
    share = weight[pixel] * detail / total[pixel]
    per_surfel = torch.zeros(radius.shape[0], dtype=torch.float64).index_add_(0, surfel, share)
    return torch.zeros(num_frames, dtype=torch.float64).index_add_(0, pair_frame, per_surfel[pair_surfel])


def rank_recent_first(key: torch.Tensor) -> torch.Tensor:
    """Indices sorting ``key [F]`` ascending, ties to the higher index (the more recent frame)."""
    flipped = torch.argsort(key.flip(0), stable=True)
    return key.shape[0] - 1 - flipped


def distribute_quotas(votes: torch.Tensor, slots: int) -> torch.Tensor:
    """Candidate slots ``[F]`` (int64) in proportion to ``votes [F]`` (step 3).

    Every voting frame (vote > 0) gets one slot and the remaining ``slots - voters`` are
    apportioned by largest remainder; with more voters than slots, the ``slots`` best-voted
    frames get one each (ties to the more recent frame).
    """
    quotas = torch.zeros(votes.shape[0], dtype=torch.int64)
    voters = (votes > 0).nonzero().squeeze(1)
    if slots <= 0 or voters.numel() == 0:
        return quotas
    if voters.numel() >= slots:
        quotas[rank_recent_first(-votes)[:slots]] = 1
        return quotas
    spare = slots - voters.numel()
    share = votes[voters].double() / votes[voters].double().sum() * spare
    whole = share.floor()
    quotas[voters] = 1 + whole.to(torch.int64)
    left = spare - int(whole.sum())
    quotas[voters[rank_recent_first(-(share - whole))[:left]]] += 1
    return quotas


def pose_distance(c2w_a: torch.Tensor, c2w_b: torch.Tensor, translation_weight: float) -> torch.Tensor:
    """``translation_weight * |t_a - t_b| + angle(R_a^T R_b)`` (radians), broadcasting over
    leading dims of ``c2w_a [...,4,4]`` and ``c2w_b [...,4,4]``; float64."""
    a, b = c2w_a.double(), c2w_b.double()
    rel = a[..., :3, :3].transpose(-1, -2) @ b[..., :3, :3]
    skew = torch.stack([rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0],
                        rel[..., 1, 0] - rel[..., 0, 1]], -1)
    trace = rel.diagonal(dim1=-2, dim2=-1).sum(-1)
    angle = torch.atan2(0.5 * skew.norm(dim=-1), 0.5 * (trace - 1.0))
    return translation_weight * (a[..., :3, 3] - b[..., :3, 3]).norm(dim=-1) + angle


def mean_pose(c2w: torch.Tensor) -> torch.Tensor:
    """Average of poses ``[N,4,4]``: mean centre and the chordal mean rotation (the
    rotation nearest to the sum of rotation matrices). ``[4,4]`` float32."""
    out = torch.eye(4, dtype=torch.float64)
    c2w = c2w.double()
    out[:3, 3] = c2w[:, :3, 3].mean(0)
    U, _, Vh = torch.linalg.svd(c2w[:, :3, :3].sum(0))
    fix = torch.diag(torch.tensor([1.0, 1.0, float(torch.linalg.det(U @ Vh).sign())], dtype=torch.float64))
    out[:3, :3] = U @ fix @ Vh
    return out.float()


def select_views(distances: torch.Tensor, candidates: torch.Tensor, c2w: torch.Tensor,
                 settings: RetrievalSettings) -> torch.Tensor:
    """Step 5: ``min(num_views, F)`` distinct frame indices (int64) in selection order.

    ``distances [F]``: pose distance of every frame to the query; ``candidates [C]``: frames
    with a quota, nearest first; ``c2w [F,4,4]``: every frame's pose (for NMS).
    """
    count = min(settings.num_views, distances.shape[0])
    chosen: list[int] = []
    by_distance = rank_recent_first(distances).tolist()
    pool = candidates.tolist()
    chosen.append(pool[0] if pool else by_distance[0])
    last = distances.shape[0] - 1
    if settings.include_most_recent and last not in chosen and len(chosen) < count:
        chosen.append(last)
    if settings.use_nms and len(pool) > 1:
        members = pool + [f for f in chosen if f not in pool]
        pairwise = pose_distance(c2w[members].unsqueeze(1), c2w[members].unsqueeze(0), settings.translation_weight)
        among_pool = pairwise[:len(pool), :len(pool)]
        upper = among_pool[torch.triu_indices(len(pool), len(pool), 1).unbind(0)].sort().values
        threshold = float(upper[upper.shape[0] // 2])
        row = {frame: dict(zip(members, values)) for frame, values in zip(members, pairwise.tolist())}
        while len(chosen) < count and threshold >= 1e-5:
            for frame in pool:
                if len(chosen) >= count:
                    break
                if frame not in chosen and all(row[frame][s] >= threshold for s in chosen):
                    chosen.append(frame)
            threshold /= settings.nms_relax
    for frame in pool + by_distance:
        if len(chosen) >= count:
            break
        if frame not in chosen:
            chosen.append(frame)
    return torch.tensor(chosen, dtype=torch.int64)


def render_size(K: torch.Tensor, render_width: int) -> tuple[int, int]:
    """``(width, height)`` of the retrieval render: ``render_width`` wide, the height from
    the aspect ratio implied by square pixels (``H / W = (fx/W) / (fy/H)``)."""
    return render_width, max(1, round(render_width * float(K[0, 0]) / float(K[1, 1])))


def retrieve(index: SurfelIndex, frame_c2w: torch.Tensor, query_c2w: torch.Tensor, query_K: torch.Tensor,
             settings: RetrievalSettings = RetrievalSettings()) -> Retrieval:
    """Select context views for the query cameras (steps 1-5 of the module doc).

    Args:
        index: the memory's surfels and observations (frames numbered ``0..F-1``).
        frame_c2w: ``[F,4,4]`` poses of the memorised frames, F >= 1.
        query_c2w, query_K: ``[Q,4,4]`` / ``[Q,3,3]`` target cameras; the surfels are rendered
            from the mean pose of the last ``query_views`` of them (mean K likewise).
    """
    settings.validate()
    num_frames = frame_c2w.shape[0]
    if num_frames == 0:
        raise SurfelInputError("memory", "holds no frames", "at least one memorised frame to retrieve from")
    c2w = mean_pose(query_c2w[-settings.query_views:])
    K = query_K[-settings.query_views:].to(torch.float32).mean(0)
    K_render = K.clone()
    K_render[0, 0] *= settings.focal_scale
    K_render[1, 1] *= settings.focal_scale
    width, height = render_size(K, settings.render_width)
    render = render_surfels(index.position, index.normal, index.radius, c2w, K_render, width, height,
                            settings.near, settings.far, settings.depth_tolerance)
    votes = frame_votes(render, index.radius, index.pair_surfel, index.pair_frame, num_frames)
    quotas = distribute_quotas(votes, settings.num_views + settings.extra_candidates)
    distances = pose_distance(c2w, frame_c2w, settings.translation_weight)
    candidates = (quotas > 0).nonzero().squeeze(1)
    candidates = candidates[rank_recent_first(distances[candidates])]
    indices = select_views(distances, candidates, frame_c2w, settings)
    return Retrieval(indices, votes, quotas, candidates, distances, c2w)
