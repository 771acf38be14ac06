"""Regenerate the bundled sample assets (deterministic; run from anywhere).

``cvs_sample.mp4``: a synthetic matting clip, 48 frames, 320x180, exactly 30000/1001 fps,
H.264. A textured landscape pans slowly while a figure (soft-edged head and body, with
thin hair strands that sway) walks across it. :func:`render_clip` also returns the
ground-truth alpha, so tests can score a matte against it without storing it.

``cvs_background.png``: a different 320x180 scene (sunset over the sea) to composite onto.

``cvs_room.png``: a 320x180 room (:func:`render_room`), the starting image of the VMem walks.

``cvs_object.png``: an apple-like object on a transparent 320x240 canvas, off centre
(:func:`render_object`), the input of the VideoMV image-to-views example.

``cvs_scene.ply``: a small room of 3D Gaussians in the 3DGS PLY layout (:func:`splat_scene`): a
chequered floor, a back wall and three objects, the input of the VideoScene splat example.

``cvs_photo_left.png`` / ``cvs_photo_right.png``: two 480x320 photos of that splat room from two
viewpoints 1.2 m apart (:func:`render_photo_pair`), the input of the two-photo VideoScene example.

``cvs_cameras.json``: a camera path in the pack's plain camera JSON (:func:`sample_cameras`), the
default of 'CVS Load Cameras'.

The pixels are deterministic; the H.264 bytes may differ between runs because x264's
multi-threaded encoder is not bit-exact.

    python assets/make_assets.py
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image

WIDTH, HEIGHT, FRAMES = 320, 180, 48
FRAME_RATE = Fraction(30000, 1001)
SUPERSAMPLE = 4  # the figure is drawn at 4x and averaged down, for anti-aliased alpha
HERE = Path(__file__).resolve().parent


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    """Value noise ``[height, width]`` in 0..1: a coarse random grid, bicubically enlarged."""
    grid = rng.random((max(2, height * cells // width), cells)).astype(np.float32)
    image = Image.fromarray(grid, mode="F").resize((width, height), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(image), 0, 1)


def _landscape(rng: np.random.Generator, width: int) -> np.ndarray:
    """A panoramic ``[HEIGHT, width, 3]`` scene: sky, hills, textured meadow, fence posts."""
    y = np.linspace(0, 1, HEIGHT, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    sky = np.stack([0.45 + 0.3 * y, 0.65 + 0.2 * y, 0.95 - 0.1 * y], -1) * np.ones((1, width, 1), np.float32)
    clouds = _smooth_noise(rng, width, HEIGHT, 24)[..., None]
    scene = sky + 0.25 * np.clip(clouds - 0.5, 0, 1)
    ridge = 0.45 + 0.06 * np.sin(x / 37.0) + 0.03 * np.sin(x / 11.0 + 1.3)
    hills = (y > ridge)[..., None]
    scene = np.where(hills, np.array([0.30, 0.45, 0.35], np.float32), scene)
    meadow = y > 0.62 + 0.02 * np.sin(x / 53.0)
    grass = _smooth_noise(rng, width, HEIGHT, width // 6)
    scene = np.where(meadow[..., None], np.stack([0.25 + 0.2 * grass, 0.5 + 0.25 * grass, 0.15 + 0.1 * grass], -1),
                     scene)
    posts = (np.abs((x % 64) - 32) < 2) & (y > 0.55) & (y < 0.8)
    scene = np.where(posts[..., None], np.array([0.4, 0.28, 0.18], np.float32), scene)
    return np.clip(scene, 0, 1)


def _figure(t: int, rng_seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """Colour ``[H,W,3]`` and alpha ``[H,W]`` of the walking figure in frame ``t``."""
    s = SUPERSAMPLE
    cx = 70 + 180 * t / (FRAMES - 1)
    cy = 70 + 4 * np.sin(t / 3.0)
    yy, xx = np.mgrid[0:HEIGHT * s, 0:WIDTH * s].astype(np.float32) / s + 0.5 / s
    feather = 1.5  # soft edge width in pixels

    def soft(distance: np.ndarray) -> np.ndarray:  # signed distance (px, <0 inside) to coverage
        return np.clip(0.5 - distance / feather, 0, 1)

    head = soft(np.hypot(xx - cx, yy - cy) - 20)
    torso_r = np.hypot((xx - cx) / 32, (yy - (cy + 80)) / 62)
    torso = soft((torso_r - 1) * 32)
    hair = np.zeros_like(head)
    rng = np.random.default_rng(rng_seed)
    for angle in np.linspace(-2.6, -0.55, 34):
        root = np.array([cx + 19 * np.cos(angle), cy + 19 * np.sin(angle)])
        direction = np.array([np.cos(angle), np.sin(angle)])
        normal = np.array([-direction[1], direction[0]])
        length, phase = rng.uniform(14, 30), rng.uniform(0, 2 * np.pi)
        u = np.linspace(0, 1, int(length * s * 3))[:, None]
        sway = 3.0 * u ** 1.5 * np.sin(2.5 * u * np.pi + phase + t / 4.0)
        points = root + u * length * direction + sway * normal
        cols = np.clip((points[:, 0] * s).astype(int), 0, WIDTH * s - 2)
        rows = np.clip((points[:, 1] * s).astype(int), 0, HEIGHT * s - 2)
        for dr in (0, 1):
            for dc in (0, 1):
                hair[rows + dr, cols + dc] = 1.0
    colours = (
        (torso, np.array([0.15, 0.25, 0.75], np.float32)),
        (head, np.array([0.9, 0.7, 0.55], np.float32)),
        (hair, np.array([0.3, 0.17, 0.07], np.float32)),
    )
    alpha = np.zeros_like(head)
    colour = np.zeros(head.shape + (3,), np.float32)
    for coverage, rgb in colours:  # paint back to front
        colour = colour * (1 - coverage[..., None]) + rgb * coverage[..., None]
        alpha = alpha + coverage * (1 - alpha)

    def pool(a: np.ndarray) -> np.ndarray:
        return a.reshape(HEIGHT, s, WIDTH, s, *a.shape[2:]).mean(axis=(1, 3))

    alpha_low = pool(alpha)
    colour_low = pool(colour) / np.maximum(alpha_low[..., None], 1e-6)  # un-premultiply
    return np.clip(colour_low, 0, 1), alpha_low


def render_clip() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sample clip: composited frames ``[48,180,320,3]``, the figure's colour
    ``[48,180,320,3]`` and its ground-truth alpha ``[48,180,320]``, all float32 0..1."""
    rng = np.random.default_rng(5)
    pan = 1  # pixels per frame
    panorama = _landscape(rng, WIDTH + pan * FRAMES)
    frames, colours, alphas = [], [], []
    for t in range(FRAMES):
        background = panorama[:, pan * t: pan * t + WIDTH]
        colour, alpha = _figure(t)
        frames.append(colour * alpha[..., None] + background * (1 - alpha[..., None]))
        colours.append(colour)
        alphas.append(alpha)
    return tuple(torch.from_numpy(np.stack(a).astype(np.float32)) for a in (frames, colours, alphas))


def render_backdrop() -> torch.Tensor:
    """The compositing background ``[180,320,3]`` float32: a sunset over the sea."""
    y = np.linspace(0, 1, HEIGHT, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 1, WIDTH, dtype=np.float32)[None, :, None]
    sky = np.array([0.95, 0.55, 0.3], np.float32) * (1 - y) + np.array([0.5, 0.2, 0.4], np.float32) * y
    sun = np.clip(1.2 - np.hypot((x - 0.65) * 16 / 9, y - 0.42) * 12, 0, 1)
    scene = sky + sun * np.array([0.3, 0.35, 0.2], np.float32)
    sea = (y > 0.5) * np.ones_like(x)
    waves = 0.04 * np.sin(x * 90 + y * 400) * (y - 0.5)
    scene = np.where(sea > 0, np.array([0.15, 0.2, 0.4], np.float32) + waves + 0.25 * sun, scene)
    return torch.from_numpy(np.clip(scene, 0, 1).astype(np.float32))


def render_room(width: int = WIDTH, height: int = HEIGHT, fov_deg: float = 54.0) -> torch.Tensor:
    """A room ``[height,width,3]`` float32 seen from the origin looking along +z (OpenCV axes,
    ``fov_deg`` across the width): checkered floor, coloured walls with a window, and a box.
    The starting image of the VMem example walks."""
    focal = 0.5 * width / np.tan(np.radians(fov_deg) / 2)
    u = (np.arange(width, dtype=np.float64) + 0.5 - width / 2) / focal
    v = (np.arange(height, dtype=np.float64) + 0.5 - height / 2) / focal
    rays = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.ones((height, 1))), -1)
    low, high = np.array([-2.5, -1.5, -3.0]), np.array([2.5, 1.0, 9.0])  # y down: floor at y = 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        t_far = np.where(rays > 0, high / rays, np.where(rays < 0, low / rays, np.inf)).min(-1)
    hit = rays * t_far[..., None]
    axis = np.argmin(np.abs(np.where(rays != 0, np.where(rays > 0, high / rays, low / rays), np.inf)
                            - t_far[..., None]), -1)
    colour = np.zeros((height, width, 3))
    floor = (axis == 1) & (rays[..., 1] > 0)
    checker = ((np.floor(hit[..., 0] * 2) + np.floor(hit[..., 2] * 2)) % 2)[..., None]
    colour[floor] = (np.array([0.55, 0.42, 0.3]) * (0.75 + 0.25 * checker))[floor]
    colour[(axis == 1) & ~floor] = [0.92, 0.92, 0.88]  # ceiling
    back = (axis == 2) & (rays[..., 2] > 0)
    colour[back] = [0.35, 0.55, 0.7]
    window = back & (np.abs(hit[..., 0] - 0.8) < 0.9) & (hit[..., 1] > -1.0) & (hit[..., 1] < 0.0)
    colour[window] = (np.array([0.75, 0.88, 1.0]) - 0.2 * (hit[..., 1:2] + 0.9))[window]
    colour[(axis == 0) & (rays[..., 0] < 0)] = [0.75, 0.45, 0.35]  # left wall
    colour[(axis == 0) & (rays[..., 0] > 0)] = [0.5, 0.65, 0.45]  # right wall
    # a box standing on the floor, left of centre
    b_low, b_high = np.array([-1.7, 0.2, 4.0]), np.array([-0.7, 1.0, 5.0])
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = b_low / rays, b_high / rays
    t_in, t_out = np.nanmax(np.minimum(t1, t2), -1), np.nanmin(np.maximum(t1, t2), -1)
    inside = (t_in <= t_out) & (t_in > 0) & (t_in < t_far)
    shade = 0.7 + 0.3 * (np.abs(rays[..., 0]) / np.linalg.norm(rays, axis=-1))
    colour[inside] = (np.array([0.85, 0.7, 0.2]) * shade[..., None])[inside]
    light = 1.0 - 0.15 * np.clip(np.linalg.norm(hit, axis=-1) / 6.0, 0, 1)
    return torch.from_numpy(np.clip(colour * light[..., None], 0, 1).astype(np.float32))


def render_object(width: int = 320, height: int = 240) -> tuple[torch.Tensor, torch.Tensor]:
    """An apple-like object (shaded sphere with a stripe, a stem and a leaf) left of centre on a
    transparent canvas: colour ``[height,width,3]`` and alpha ``[height,width]``, float32, with
    anti-aliased edges (drawn at 4x and averaged down)."""
    s = SUPERSAMPLE
    y, x = np.mgrid[0:height * s, 0:width * s].astype(np.float64) / s + 0.5 / s
    cx, cy, r = 0.4 * width, 0.58 * height, 0.3 * height
    dx, dy = (x - cx) / r, (y - cy) / (0.92 * r)
    d2 = dx * dx + dy * dy
    body = d2 <= 1.0
    nz = np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))
    light = np.array([-0.45, -0.55, 0.7]) / np.linalg.norm([-0.45, -0.55, 0.7])
    lambert = np.clip(dx * light[0] + dy * light[1] + nz * light[2], 0.0, 1.0)
    base = np.where((np.abs(dx + 0.15 * np.sin(3.0 * dy)) < 0.12)[..., None], [0.95, 0.85, 0.35], [0.78, 0.12, 0.1])
    spec = np.clip(lambert, 0, 1) ** 40
    colour = base * (0.25 + 0.75 * lambert[..., None]) + 0.6 * spec[..., None]
    stem = (np.abs(x - cx - 0.05 * r * (cy - r - y) / r) < 0.05 * r) & (y > cy - 1.25 * r) & (y < cy - 0.8 * r)
    colour[stem] = [0.35, 0.22, 0.1]
    lx, ly = (x - cx - 0.28 * r) / (0.3 * r), (y - cy + 1.05 * r) / (0.12 * r)
    leaf = lx * lx + ly * ly <= 1.0
    colour[leaf] = np.array([0.25, 0.6, 0.2]) * (0.8 + 0.2 * lx[leaf, None])
    alpha = (body | stem | leaf).astype(np.float64)
    colour = colour * alpha[..., None]

    def down(a: np.ndarray) -> np.ndarray:
        return a.reshape(height, s, width, s, *a.shape[2:]).mean((1, 3))
    a = down(alpha)
    rgb = down(colour) / np.maximum(a, 1e-8)[..., None]  # straight (not premultiplied) colour
    return torch.from_numpy(np.clip(rgb, 0, 1).astype(np.float32)), torch.from_numpy(a.astype(np.float32))


def splat_scene():
    """A :class:`~consistent_video.nodes.splats.gaussians.GaussianScene` of about 4000 Gaussians, SH
    degree 0, in the pack's OpenCV world (y down, the floor at y = 0.5): a 4 x 4 m chequered floor,
    a back wall at z = 3, a red ball, a green box and a small blue ball near the origin."""
    from consistent_video.nodes.splats.gaussians import GaussianScene, rgb_to_sh_dc
    rng = np.random.default_rng(5)
    means, scales, colours = [], [], []

    def add(points, scale, colour):
        means.append(points)
        scales.append(np.broadcast_to(scale, points.shape))
        colours.append(np.broadcast_to(colour, points.shape))

    u, v = np.meshgrid(np.linspace(-2, 2, 40), np.linspace(-1, 3, 40))
    floor = np.stack([u.ravel(), np.full(u.size, 0.5), v.ravel()], 1)
    checker = ((np.floor(u * 2) + np.floor(v * 2)) % 2).ravel()[:, None]
    add(floor, [0.06, 0.005, 0.06], 0.25 + 0.5 * checker * np.array([1.0, 0.95, 0.85]))
    u, v = np.meshgrid(np.linspace(-2, 2, 40), np.linspace(-1.5, 0.5, 20))
    wall = np.stack([u.ravel(), v.ravel(), np.full(u.size, 3.0)], 1)
    add(wall, [0.06, 0.06, 0.005], np.stack([0.55 + 0.1 * np.sin(3 * u.ravel()), 0.6 - 0.1 * v.ravel(),
                                             np.full(u.size, 0.75)], 1))
    for centre, radius, colour, count in (((-0.5, 0.2, 0.5), 0.3, (0.85, 0.15, 0.1), 700),
                                          ((0.05, 0.35, -0.2), 0.15, (0.15, 0.3, 0.9), 300)):
        k = np.arange(count) + 0.5
        polar, azimuth = np.arccos(1 - 2 * k / count), np.pi * (1 + 5 ** 0.5) * k
        unit = np.stack([np.sin(polar) * np.cos(azimuth), np.cos(polar), np.sin(polar) * np.sin(azimuth)], 1)
        shade = 0.6 + 0.4 * np.clip(-unit[:, 1:2] * 0.6 - unit[:, 2:3] * 0.5, 0, 1)
        add(np.asarray(centre) + radius * unit, 0.045 * radius / 0.3, np.asarray(colour) * shade)
    box = rng.uniform(-0.25, 0.25, (1200, 3))
    face = rng.integers(0, 3, len(box))
    box[np.arange(len(box)), face] = np.sign(rng.uniform(-1, 1, len(box))) * 0.25
    add(box + np.array([0.6, 0.25, 0.9]), 0.03, np.array([0.2, 0.65, 0.25]) * (0.7 + 0.3 * (face == 1))[:, None])
    means = torch.tensor(np.concatenate(means), dtype=torch.float32)
    count = len(means)
    rgb = torch.tensor(np.concatenate(colours), dtype=torch.float32)
    return GaussianScene(means, torch.tensor(np.concatenate(scales), dtype=torch.float32),
                         torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(count, 4).contiguous(),
                         torch.full((count,), 0.9), rgb_to_sh_dc(rgb)[:, None, :])


PHOTO_VIEWS = ({"position": [-0.6, -0.4, -2.2], "look_at": [0.0, 0.2, 0.7]},
               {"position": [0.6, -0.4, -2.2], "look_at": [0.1, 0.2, 0.7]})


def render_photo_pair(width: int = 480, height: int = 320, fov_deg: float = 55.0) -> list[torch.Tensor]:
    """Two ``[height,width,3]`` renders of :func:`splat_scene` from ``PHOTO_VIEWS`` (OpenCV
    convention, vertical field of view ``fov_deg``): two photos of one place for the
    two-photo VideoScene example, whose poses the pack does not give it."""
    import json
    from consistent_video.nodes.cameras.formats import keyframes_from_text
    from consistent_video.nodes.splats.render import render
    cameras = keyframes_from_text(json.dumps(list(PHOTO_VIEWS)), width, height, fov_deg)
    scene = splat_scene()
    return [render(scene, cameras[i])[0][0].clamp(0, 1) for i in range(len(cameras))]


def sample_cameras():
    """81 cameras (ReCamMaster's frame count) at 832x480 with a 50 degree vertical field of view:
    starting at the identity camera, an arc of 30 degrees to the right around the point 2 units
    ahead, always looking at it."""
    from consistent_video.nodes.cameras.trajectories import orbit
    return orbit(81, 0.0, 2.0, 0.0, 30.0, width=832, height=480, fov_deg=50.0, target=(0.0, 0.0, 2.0))


def save_photo_pair() -> None:
    """Write ``cvs_photo_left.png`` and ``cvs_photo_right.png`` (:func:`render_photo_pair`)."""
    for name, photo in zip(("cvs_photo_left.png", "cvs_photo_right.png"), render_photo_pair()):
        Image.fromarray((photo.numpy() * 255).round().astype(np.uint8)).save(HERE / name, optimize=True)


def main() -> None:
    from consistent_video.nodes.video.video_io import VideoWriter

    frames, _, _ = render_clip()
    with VideoWriter(HERE / "cvs_sample.mp4", FRAME_RATE, "h264-mp4", WIDTH, HEIGHT, quality=20) as writer:
        writer.write(frames)
    pixels = (render_backdrop().numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(HERE / "cvs_background.png", optimize=True)
    pixels = (render_room().numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(HERE / "cvs_room.png", optimize=True)
    rgb, alpha = render_object()
    rgba = torch.cat([rgb, alpha[..., None]], -1)
    Image.fromarray((rgba.numpy() * 255).round().astype(np.uint8), "RGBA").save(HERE / "cvs_object.png", optimize=True)
    from consistent_video.nodes.splats.gaussians import save_ply
    save_ply(splat_scene(), HERE / "cvs_scene.ply")
    from consistent_video.nodes.cameras.formats import save_cvs_json
    save_cvs_json(sample_cameras(), HERE / "cvs_cameras.json")
    save_photo_pair()
    for name in ("cvs_sample.mp4", "cvs_background.png", "cvs_room.png", "cvs_object.png", "cvs_scene.ply",
                 "cvs_cameras.json", "cvs_photo_left.png", "cvs_photo_right.png"):
        print(f"{name}: {(HERE / name).stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
