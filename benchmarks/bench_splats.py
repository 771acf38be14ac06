"""Gaussian splat rendering benchmark; prints markdown table rows (copy them into RESULTS.md).

    python benchmarks/bench_splats.py [cpu|gpu] [--count 100000] [--width 720] [--height 480]

What is measured: the wall time to render one frame (colour, alpha and expected depth)
of a random scene with ``nodes.splats.render.render``, median of several runs after one
warm-up; the scene, the projection and the SH colours are all inside the timed call.

The scene: ``--count`` Gaussians (default 100 000) with SH degree 3, means uniform in a
5 m cube centred 5.5 m in front of a 60 degree (vertical) camera at the origin, so the
view is filled; per-axis scales log-uniform in 1..6 cm (footprints from a few pixels to
tens of pixels across at 720x480, printed below) and opacities uniform in 0.2..0.95.

- ``cpu``: the pure-torch tiled rasteriser (tile 8, its default, and tile 16) next to
  ``render_naive``, the same image formation composited one Gaussian at a time in a
  Python loop. The speed-up is the ratio of the two, measured side by side. When the
  loop would take longer than ``--naive-limit`` seconds (estimated from its first
  5 000 Gaussians), it runs on a subset only and its time is extrapolated linearly per
  Gaussian; the row says so.
- ``gpu``: the torch backend on CUDA and, when gsplat is installed, the gsplat backend,
  at ``--count`` and at 10x that, with peak GPU memory.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from consistent_video.nodes.cameras.geometry import CameraBatch, intrinsics_from_fov
from consistent_video.nodes.splats.gaussians import random_scene
from consistent_video.nodes.splats.render import gsplat_available, project_gaussians, render, render_naive

SUBSET = 5000  # Gaussians timed first to estimate the naive loop


def make_scene(count: int):
    return random_scene(count, sh_degree=3, seed=0, center=(0.0, 0.0, 5.5), extent=2.5,
                        scale_range=(0.01, 0.06), opacity_range=(0.2, 0.95))


def camera(width: int, height: int) -> CameraBatch:
    return CameraBatch(torch.eye(4)[None], intrinsics_from_fov(60.0, width, height)[None], width, height)


def timed(fn, repeats: int, sync=lambda: None) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls after one warm-up, and the last result."""
    out = fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def footprint_row(scene, cam) -> str:
    proj = project_gaussians(scene, cam)
    across = (proj.boxes[:, 2:] - proj.boxes[:, :2] + 1).float().amax(1)
    q = torch.quantile(across, torch.tensor([0.1, 0.5, 0.9])).tolist()
    return (f"| scene: {len(scene) // 1000}k Gaussians, SH degree 3, {cam.width}x{cam.height} | {len(proj)} in view; "
            f"footprint box {q[0]:.0f} / {q[1]:.0f} / {q[2]:.0f} px across (10th / 50th / 90th percentile) | |")


def cpu(args) -> None:
    scene, cam = make_scene(args.count), camera(args.width, args.height)
    print(footprint_row(scene, cam))
    fast = {}
    for tile in (16, 8):
        fast[tile], image = timed(lambda: render(scene, cam, tile=tile), args.repeats)
        coverage = float(image[1].mean())
        print(f"| CPU, torch tiled rasteriser, tile {tile} | {fast[tile]:.2f} s per frame (median of {args.repeats}); "
              f"mean alpha {coverage:.2f} | |")
    start = time.perf_counter()
    render_naive(scene.select(slice(0, SUBSET)), cam)
    estimate = (time.perf_counter() - start) * args.count / SUBSET
    if estimate <= args.naive_limit:
        start = time.perf_counter()
        reference = render_naive(scene, cam)
        naive, note = time.perf_counter() - start, "measured on all Gaussians"
        diff = max(float((a - b).abs().max()) for a, b in zip(render(scene, cam), reference))
        note += f"; max difference to the tiled image {diff:.1e}"
    else:
        part = max(SUBSET, int(args.count * args.naive_limit / estimate))
        start = time.perf_counter()
        render_naive(scene.select(slice(0, part)), cam)
        naive = (time.perf_counter() - start) * args.count / part
        note = f"extrapolated linearly per Gaussian from a run on the first {part} of {args.count}"
    print(f"| CPU, naive per-Gaussian Python loop | {naive:.1f} s per frame ({note}) | |")
    print(f"| **speed-up of the tiled rasteriser over the naive loop** | **{naive / fast[8]:.0f}x** (tile 8, the default), "
          f"{naive / fast[16]:.0f}x (tile 16) | |")


def gpu(args) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("gpu mode needs a CUDA device")
    backends = ["torch"] + (["gsplat"] if gsplat_available() else [])
    cam = camera(args.width, args.height).to("cuda")
    for count in (args.count, 10 * args.count):
        scene = make_scene(count).to("cuda")
        for backend in backends:
            torch.cuda.reset_peak_memory_stats()
            seconds, _ = timed(lambda: render(scene, cam, backend=backend), args.repeats, torch.cuda.synchronize)
            peak = torch.cuda.max_memory_allocated() / 2 ** 20
            print(f"| {torch.cuda.get_device_name()}, {backend} backend, {count // 1000}k Gaussians, "
                  f"{args.width}x{args.height} | {1000 * seconds:.1f} ms per frame (median of {args.repeats}); "
                  f"peak GPU memory {peak:.0f} MiB | |")
    if not gsplat_available():
        print("| gsplat backend | not run: gsplat is not installed | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--count", type=int, default=100_000, help="number of Gaussians")
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per row (median reported)")
    parser.add_argument("--naive-limit", type=float, default=180.0,
                        help="longest naive loop to run in full, in seconds; beyond it, extrapolate from a subset")
    args = parser.parse_args()
    print(f"<!-- {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d')} -->")
    print("| benchmark | result | note |")
    print("|---|---|---|")
    (cpu if args.mode == "cpu" else gpu)(args)


if __name__ == "__main__":
    main()
