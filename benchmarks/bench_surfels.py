"""Surfel memory benchmarks on CPU; prints markdown table rows (copy them into RESULTS.md).

    python benchmarks/bench_surfels.py [--skip-naive]

Rows: retrieval latency at 100 and 1000 memorised frames (median over 3 queries of the
median of 9 runs), each next to the same retrieval written as a plain per-surfel,
per-pixel Python loop (same views expected); the cost of adding a 4-frame step at 20 and
at 1000 frames (median of 7 steps, each undone again); and a stress run with merging
off, where every frame keeps its 475 surfels (475 000 at 1000 frames).

The scene is a furnished room (12 x 3 x 12 m, eight boxes) walked through by a seeded
random navigation: every step is 4 poses of one action (move 0.5 m or turn 10 degrees),
as VMem's interface produces. Pointmaps are exact (ray-cast) at 25 x 19, so every frame
gives up to 475 surfels, VMem's count. Pointmaps are computed before timing: only the
memory's own work is measured.
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch

from consistent_video.nodes.cameras.geometry import CameraBatch, intrinsics_from_fov, look_at, rigid_inverse
from consistent_video.vmem_nodes.memory import SurfelMemory
from consistent_video.vmem_nodes.pointmaps import AnalyticProvider, box_quads
from consistent_video.vmem_nodes.retrieval import (RetrievalSettings, distribute_quotas, mean_pose, pose_distance,
                                                   rank_recent_first, render_size, select_views)
from consistent_video.vmem_nodes.surfel_index import MergeSettings

WIDTH, HEIGHT = 25, 19
UP = torch.tensor([0.0, -1.0, 0.0])
ROOM = 6.0  # half size of the room in x and z
BOXES = [(x, z) for x in (-3.0, 3.0) for z in (-4.0, -1.3, 1.3, 4.0)]


def scene() -> AnalyticProvider:
    quads = box_quads([-ROOM, -1.5, -ROOM], [ROOM, 1.5, ROOM])
    for x, z in BOXES:
        quads += box_quads([x - 0.5, 0.5, z - 0.5], [x + 0.5, 1.5, z + 0.5])
    return AnalyticProvider(quads)


def walk(frames: int, seed: int = 0) -> CameraBatch:
    """``frames`` poses, 4 per action; a move that would leave the free space turns instead."""
    gen = torch.Generator().manual_seed(seed)
    pos, yaw, poses = torch.tensor([0.0, 0.0, 0.0]), 0.0, []
    while len(poses) < frames:
        move = bool(torch.rand(1, generator=gen) < 0.5)
        turn = 0.0 if move else (10.0 if torch.rand(1, generator=gen) < 0.5 else -10.0)
        for _ in range(4):
            yaw += turn / 4
            ahead = torch.tensor([math.sin(math.radians(yaw)), 0.0, math.cos(math.radians(yaw))])
            nxt = pos + ahead * (0.125 if move else 0.0)
            blocked = nxt[[0, 2]].abs().max() > ROOM - 1 or any(
                abs(float(nxt[0]) - x) < 1.2 and abs(float(nxt[2]) - z) < 1.2 for x, z in BOXES)
            if blocked:
                yaw += 2.5
            else:
                pos = nxt
            ahead = torch.tensor([math.sin(math.radians(yaw)), 0.0, math.cos(math.radians(yaw))])
            poses.append(look_at(pos, pos + ahead, UP))
    K = intrinsics_from_fov(54.0, WIDTH, HEIGHT)
    return CameraBatch(torch.stack(poses[:frames]), K.expand(frames, 3, 3), WIDTH, HEIGHT)


class Session:
    """The walk, its pointmaps (computed once) and a memory filled step by step."""

    def __init__(self, frames: int):
        self.cameras = walk(frames)
        provider = scene()
        blank = torch.zeros(4, HEIGHT, WIDTH, 3)
        self.steps = [(provider(blank, self.cameras[list(range(i, i + 4))]), self.cameras[list(range(i, i + 4))])
                      for i in range(0, frames, 4)]
        self.restart()

    def restart(self, merge: MergeSettings = MergeSettings()) -> None:
        """Start again with an empty memory."""
        self.memory = SurfelMemory(merge_settings=merge)
        self.done = 0

    def fill(self, frames: int) -> SurfelMemory:
        while self.memory.num_frames < frames:
            self.memory.add_frames(*self.steps[self.done])
            self.done += 1
        return self.memory


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def retrieval_ms(session: Session, repeats: int = 9) -> float:
    """Median latency of :meth:`SurfelMemory.retrieve` for the next 3 steps' last poses."""
    memory, frames = session.memory, session.memory.num_frames
    queries = [session.cameras[frames + 4 * j + 3] for j in range(3)]
    return statistics.median(_median_ms(lambda q=q: memory.retrieve(q), repeats) for q in queries)


def add_ms(session: Session, trials: int = 7) -> float:
    """Median time to add one of the next ``trials`` steps (each undone again)."""
    times = []
    for step in session.steps[session.done: session.done + trials]:
        start = time.perf_counter()
        session.memory.add_frames(*step)
        times.append(time.perf_counter() - start)
        session.memory.undo()
    return 1000 * statistics.median(times)


def _size(memory: SurfelMemory) -> str:
    return f"{memory.num_frames} frames, {memory.num_surfels} surfels, {memory.index.num_pairs} observations"


# ---------------------------------------------------------------------------------- naive
def naive_votes(memory: SurfelMemory, query_c2w: torch.Tensor, query_K: torch.Tensor,
                settings: RetrievalSettings) -> list[float]:
    """Steps 1-2 of :mod:`retrieval` one surfel and one pixel at a time in Python, with the
    per-surfel frame lists VMem keeps (built first, inside the timing)."""
    index = memory.index
    frames_of: list[list[int]] = [[] for _ in range(index.num_surfels)]
    for s, f in zip(index.pair_surfel.tolist(), index.pair_frame.tolist()):
        frames_of[s].append(f)
    K = query_K.clone()
    K[0, 0] *= settings.focal_scale
    K[1, 1] *= settings.focal_scale
    width, height = render_size(query_K, settings.render_width)
    fx, fy, cx, cy = float(K[0, 0]) * width, float(K[1, 1]) * height, float(K[0, 2]) * width, float(K[1, 2]) * height
    w2c = rigid_inverse(query_c2w).tolist()
    eye = query_c2w[:3, 3].tolist()
    near, far = settings.near, settings.far
    hits: list[list[tuple[float, int, float]]] = [[] for _ in range(width * height)]  # (depth, surfel, cos)
    radii = index.radius.tolist()
    for i, (p, n, r) in enumerate(zip(index.position.tolist(), index.normal.tolist(), radii)):
        if sum((e - a) * b for e, a, b in zip(eye, p, n)) <= 0:
            continue
        pc = [sum(w2c[k][j] * p[j] for j in range(3)) + w2c[k][3] for k in range(3)]
        nc = [sum(w2c[k][j] * n[j] for j in range(3)) for k in range(3)]
        if pc[2] + r <= near or pc[2] - r >= far:
            continue
        extent = [r * math.sqrt(max(0.0, 1.0 - c * c)) for c in nc]
        lo, hi = [a - e for a, e in zip(pc, extent)], [a + e for a, e in zip(pc, extent)]
        if hi[2] <= near or lo[2] >= far:
            continue
        z_lo, z_hi = max(lo[2], near), hi[2]
        xs = [lo[0] / z_lo, lo[0] / z_hi, hi[0] / z_lo, hi[0] / z_hi]
        ys = [lo[1] / z_lo, lo[1] / z_hi, hi[1] / z_lo, hi[1] / z_hi]
        u0, u1 = max(0, math.ceil(fx * min(xs) + cx - 0.5)), min(width - 1, math.floor(fx * max(xs) + cx - 0.5))
        v0, v1 = max(0, math.ceil(fy * min(ys) + cy - 0.5)), min(height - 1, math.floor(fy * max(ys) + cy - 0.5))
        plane = nc[0] * pc[0] + nc[1] * pc[1] + nc[2] * pc[2]
        for v in range(v0, v1 + 1):
            for u in range(u0, u1 + 1):
                ray = ((u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy, 1.0)
                denom = nc[0] * ray[0] + nc[1] * ray[1] + nc[2]
                if denom >= 0:
                    continue
                depth = plane / denom
                if near < depth < far and sum((depth * ray[k] - pc[k]) ** 2 for k in range(3)) <= r * r:
                    cos = -denom / math.sqrt(ray[0] ** 2 + ray[1] ** 2 + 1.0)
                    hits[v * width + u].append((depth, i, cos))
    votes = [0.0] * memory.num_frames
    for pixel_hits in hits:
        if not pixel_hits:
            continue
        depth, _, cos = min(pixel_hits)
        front = [s for d, s, _ in pixel_hits if d <= depth * (1.0 + settings.depth_tolerance)]
        total = sum(1.0 / radii[s] ** 2 for s in front)
        for s in front:
            for f in frames_of[s]:
                votes[f] += cos / (1.0 + depth) / radii[s] ** 2 / total
    return votes


def naive_retrieve(memory: SurfelMemory, cameras: CameraBatch, settings: RetrievalSettings) -> torch.Tensor:
    c2w = mean_pose(cameras.c2w[-settings.query_views:])
    votes = torch.tensor(naive_votes(memory, c2w, cameras.K[-1], settings), dtype=torch.float64)
    frames = memory.cameras().c2w
    quotas = distribute_quotas(votes, settings.num_views + settings.extra_candidates)
    distances = pose_distance(c2w, frames, settings.translation_weight)
    candidates = (quotas > 0).nonzero().squeeze(1)
    candidates = candidates[rank_recent_first(distances[candidates])]
    return select_views(distances, candidates, frames, settings)


def naive_row(session: Session, queries: int) -> str:
    """The per-surfel loop and the vectorised retrieval on the same queries, side by side."""
    memory, frames = session.memory, session.memory.num_frames
    settings = RetrievalSettings()
    naive_ms, fast_ms, same = [], [], 0
    for j in range(queries):
        query = session.cameras[frames + 4 * j + 3]
        start = time.perf_counter()
        slow = naive_retrieve(memory, query, settings)
        naive_ms.append(1000 * (time.perf_counter() - start))
        fast_ms.append(_median_ms(lambda: memory.retrieve(query, settings), 5))
        same += int(torch.equal(slow, memory.retrieve(query, settings).indices))
    slow, fast = statistics.median(naive_ms), statistics.median(fast_ms)
    return (f"| per-surfel Python loop vs vectorised retrieval ({_size(memory)}) | {slow:.0f} ms vs {fast:.1f} ms: "
            f"{slow / fast:.0f}x faster; same views for {same}/{queries} queries | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-naive", action="store_true", help="leave out the slow per-surfel loop")
    args = parser.parse_args()
    print(f"<!-- {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')} -->")
    print("| benchmark | result | target |")
    print("|---|---|---|")
    session = Session(1040)
    session.fill(20)
    add_small = add_ms(session)
    for frames in (100, 1000):
        session.fill(frames)
        target = "<= 50 ms" if frames == 1000 else ""
        print(f"| retrieval latency ({_size(session.memory)}) | {retrieval_ms(session):.1f} ms median | {target} |")
        if not args.skip_naive:
            print(naive_row(session, queries=3))
    add_large = add_ms(session)
    print(f"| add a 4-frame step at 20 / 1000 frames | {add_small:.1f} / {add_large:.1f} ms (median of 7), ratio "
          f"{add_large / add_small:.2f} | ratio <= 1.5 |")
    # Stress: merging off, so every frame keeps all its surfels (475 per frame) and every
    # wall is drawn once per frame that saw it: the cost follows that overdraw.
    session.restart(MergeSettings(normal_threshold=2.0))
    for frames in (100, 1000):
        session.fill(frames)
        note = "" if frames == 100 or args.skip_naive else "Python loop not run at this size"
        print(f"| stress, merging off: retrieval latency ({_size(session.memory)}) | "
              f"{retrieval_ms(session, repeats=3):.1f} ms median | {note} |")
        if not args.skip_naive and frames == 100:
            print(naive_row(session, queries=1).replace("| per-surfel", "| stress, merging off: per-surfel"))


if __name__ == "__main__":
    main()
