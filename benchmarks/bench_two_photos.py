"""Two photos -> Gaussians -> path render -> VideoScene refine: seconds per stage on the CPU at smoke size.

    python benchmarks/bench_two_photos.py [size]     # default 64, the demo's smoke size

Stages (the demo's order; :mod:`videoscene_nodes.two_photos` and the nodes after it):

- **crop + network**: both bundled photos (480x320) centre-cropped and resized to ``size``
  (:func:`noposplat.prepare_images`), one NoPoSplat pass with smoke weights.
- **PnP**: :func:`pose.pnp_pose` on one view's predicted Gaussians (the node runs it twice).
- **refinement, per step**: one Adam step of :func:`pose.refine_pose` (render, loss, backward)
  at ``size``. Smoke weights predict a degenerate cluster (all points ~1 mm apart), from whose
  PnP pose nothing is visible, so this stage, and the render, use a scene of the same kind and
  count as the real network's output instead: ``2 * size^2`` per-pixel Gaussians of a textured
  plane seen by two cameras (each Gaussian about one pixel wide).
- **render, 49-frame path**: :func:`trajectories.path_between` (cosine, pivot) between those
  two cameras, rendered at ``size`` by the pack's torch rasteriser.
- **VideoScene refine**: 'CVS VideoScene Refine' on that render with smoke weights (its own
  smoke geometry: the render is resampled to the smoke model's frames and size).
- **node, end to end**: 'CVS VideoScene Two Photos to Gaussians' on smoke weights with the
  demo's smoke overrides (4 refinement steps; refinement skipped on the degenerate poses).

Each time is the median of ``REPEATS`` runs after one warm-up run.
"""
from __future__ import annotations

import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from consistent_video.nodes.comfy import families
from consistent_video.nodes.cameras import trajectories
from consistent_video.nodes.cameras.geometry import CameraBatch, unproject
from consistent_video.nodes.splats.gaussians import GaussianScene, rgb_to_sh_dc
from consistent_video.nodes.splats.render import render
from consistent_video.videoscene_nodes import family as vs_family
from consistent_video.videoscene_nodes import noposplat as nps
from consistent_video.videoscene_nodes import noposplat_family as fam
from consistent_video.videoscene_nodes import pose
from consistent_video.videoscene_nodes.nodes import CVS_VideoSceneRefine, CVS_VideoSceneTwoPhotos

ASSETS = Path(__file__).resolve().parents[1] / "assets"
REPEATS = 3
K = torch.tensor(nps.DEFAULT_INTRINSICS)
SECOND = torch.tensor([[0.9950, 0.0, 0.0998, 0.25], [0.0, 1.0, 0.0, 0.02], [-0.0998, 0.0, 0.9950, 0.05],
                       [0.0, 0.0, 0.0, 1.0]])


def timed(fn, repeats: int = REPEATS):
    """(median seconds over ``repeats`` after a warm-up, the last result)."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def photo(name: str) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(ASSETS / name).convert("RGB"), dtype=np.float32) / 255.0)


def plane_scene(size: int) -> GaussianScene:
    """``2 size^2`` per-pixel Gaussians of the textured plane z = 2.5 + 0.2 x seen by the identity
    and :data:`SECOND` (the layout of NoPoSplat's output)."""
    means = []
    for c2w in (torch.eye(4), SECOND):
        cams = CameraBatch(c2w[None], K[None], size, size)
        rays = unproject(torch.ones(1, size, size), cams)[0] - c2w[:3, 3]
        o = c2w[:3, 3]
        depth = (2.5 + 0.2 * o[0] - o[2]) / (rays[..., 2] - 0.2 * rays[..., 0])
        means.append(unproject(depth[None], cams)[0].reshape(-1, 3))
    means = torch.cat(means)
    x, y = means[:, 0], means[:, 1]
    rgb = torch.stack([0.5 + 0.4 * torch.sin(9 * x), 0.5 + 0.4 * torch.cos(7 * y), 0.5 + 0.3 * torch.sin(5 * (x + y))],
                      -1)
    n = len(means)
    return GaussianScene(means, (means[:, 2:] / (0.8 * size)).expand(n, 3).contiguous(),
                         torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(n, 4).contiguous(), torch.full((n,), 0.95),
                         rgb_to_sh_dc(rgb)[:, None, :])


def main(size: int = 64) -> None:
    left, right = photo("cvs_photo_left.png"), photo("cvs_photo_right.png")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        fam.write_smoke_noposplat(folder / "noposplat")
        vs_family.write_smoke_videoscene(folder / "videoscene")
        handle = families.get(fam.NAME).load(folder / "noposplat", torch.device("cpu"), torch.float32)
        refiner = families.get(vs_family.NAME).load(folder / "videoscene", torch.device("cpu"), torch.float32)
    network = handle.modules["noposplat"]
    rows = []

    def forward():
        with torch.inference_mode():
            return network(nps.prepare_images(left, right, size))
    seconds, out = timed(forward)
    rows.append(("crop + network (smoke NoPoSplat)", seconds))
    seconds, _ = timed(lambda: pose.pnp_pose(out.means[0, 1], out.opacities[0, 1], size, size, K))
    rows.append(("PnP, one view", seconds))

    scene = plane_scene(size)
    cams = CameraBatch(torch.stack([torch.eye(4), SECOND]), K.expand(2, 3, 3), size, size)
    target = render(scene, cams[1])[0][0]
    steps = 10
    seconds, _ = timed(lambda: pose.refine_pose(scene, target, SECOND, K, steps=steps, backend="torch"))
    rows.append((f"refinement, per step ({len(scene)} Gaussians)", seconds / steps))
    path = trajectories.path_between(cams, 49)
    seconds, frames = timed(lambda: render(scene, path, backend="torch")[0])
    rows.append((f"render, 49-frame path ({len(scene)} Gaussians)", seconds))
    seconds, _ = timed(lambda: CVS_VideoSceneRefine().refine(refiner, frames.cpu(), 459, 0, "pad", True), 1)
    rows.append(("VideoScene refine (smoke weights)", seconds))
    overrides = fam.SMOKE_OVERRIDES["CVS_VideoSceneTwoPhotos"]
    seconds, _ = timed(lambda: CVS_VideoSceneTwoPhotos().predict(handle, left[None], right[None], learning_rate=0.005,
                                                                opacity_threshold=0.3, **overrides), 1)
    rows.append((f"node end to end (smoke, {overrides['refine_steps']} steps/view)", seconds))

    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"size {size}x{size}, CPU, median of {REPEATS} after a warm-up (VideoScene and the node: 1)")
    print("| stage | seconds |")
    print("|---|---|")
    for label, value in rows:
        print(f"| {label} | {value:.4f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if sys.argv[1:] else 64)
