"""Gaussian splat scenes and their rasteriser, against answers known independently:
analytic footprints, hand-computed compositing and SH values, the per-Gaussian reference
loop, gsplat's pure-torch reference code (when installed) and hand-written PLY files."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from consistent_video.nodes.cameras.geometry import CameraBatch, intrinsics_from_fov, look_at
from consistent_video.nodes.splats.gaussians import (SH_C0, SH_C1, GaussianScene, load_ply, random_scene, rgb_to_sh_dc,
                                                     save_ply, sh_to_rgb)
from consistent_video.nodes.splats.render import (DILATION, covariances_3d, ewa_project, project_gaussians, render,
                                                  render_naive)

UP = torch.tensor([0.0, -1.0, 0.0])
IDENTITY_QUAT = [1.0, 0.0, 0.0, 0.0]


def cameras(eyes, targets, width=48, height=36, fov=60.0) -> CameraBatch:
    c2w = look_at(torch.tensor(eyes, dtype=torch.float32), torch.tensor(targets, dtype=torch.float32), UP)
    return CameraBatch(c2w, intrinsics_from_fov(fov, width, height).expand(len(eyes), 3, 3), width, height)


def axis_camera(width=65, height=65, fov=60.0) -> CameraBatch:
    """At the origin looking along +z (odd size: the optical axis hits a pixel centre)."""
    return CameraBatch(torch.eye(4)[None], intrinsics_from_fov(fov, width, height)[None], width, height)


def scene_of(means, scales, opacities, colors) -> GaussianScene:
    """Isotropic Gaussians (one scale each) with degree-0 colours."""
    n = len(means)
    return GaussianScene(torch.tensor(means, dtype=torch.float32),
                         torch.tensor(scales, dtype=torch.float32)[:, None].expand(n, 3).clone(),
                         torch.tensor([IDENTITY_QUAT] * n), torch.tensor(opacities, dtype=torch.float32),
                         rgb_to_sh_dc(torch.tensor(colors, dtype=torch.float32))[:, None])


# ---- one Gaussian against the analytic 2-D Gaussian ----------------------------------------
def test_single_gaussian_footprint_and_colour():
    cam = axis_camera()
    z, s, o, color, bg = 4.0, 0.2, 0.8, [0.9, 0.2, 0.4], torch.tensor([0.1, 0.3, 0.5])
    scene = scene_of([[0.0, 0.0, z]], [s], [o], [color])
    rgb, alpha, depth = render(scene, cam, background=bg)
    f = float(cam.pixel_K()[0, 0, 0])
    var = (f * s / z) ** 2 + DILATION
    uv = torch.arange(65, dtype=torch.float32) + 0.5 - 32.5
    d2 = uv[None, :] ** 2 + uv[:, None] ** 2
    expected = (o * torch.exp(-0.5 * d2 / var)).clamp(max=0.99)
    expected = torch.where(expected >= 1 / 255, expected, torch.zeros_like(expected))
    assert torch.allclose(alpha[0], expected, atol=2e-6)
    assert (expected > 0).sum() > 50  # the footprint covers many pixels
    centre = rgb[0, 32, 32]
    assert torch.allclose(centre, o * torch.tensor(color) + (1 - o) * bg, atol=1e-5)
    assert torch.allclose(rgb[0], alpha[0, ..., None] * torch.tensor(color) + (1 - alpha[0, ..., None]) * bg,
                          atol=1e-5)
    assert torch.allclose(depth[0][expected > 0], torch.tensor(z)) and (depth[0][expected == 0] == 0).all()


def test_sh_degree0_colour_is_c0_fdc_plus_half():
    f_dc = torch.tensor([[[0.3, -0.7, 1.2]]])
    out = sh_to_rgb(f_dc, torch.tensor([[0.0, 0.6, 0.8]]))
    assert torch.allclose(out, (SH_C0 * f_dc[:, 0] + 0.5).clamp_min(0))
    assert float(sh_to_rgb(torch.tensor([[[-5.0, 0.0, 0.0]]]), torch.tensor([[0.0, 0.0, 1.0]]))[0, 0]) == 0.0


def test_sh_degree1_follows_view_direction():
    sh = torch.zeros(1, 4, 3)
    sh[0, 2, 0] = 0.4  # z coefficient (basis C1 * z), red
    sh[0, 3, 1] = 0.2  # x coefficient (basis -C1 * x), green
    assert torch.allclose(sh_to_rgb(sh, torch.tensor([[0.0, 0.0, 2.0]]))[0],  # normalised inside
                          torch.tensor([0.5 + 0.4 * SH_C1, 0.5, 0.5]))
    assert torch.allclose(sh_to_rgb(sh, torch.tensor([[1.0, 0.0, 0.0]]))[0], torch.tensor([0.5, 0.5 - 0.2 * SH_C1, 0.5]))
    # rendered from in front (+z view) and from behind (-z view)
    scene = GaussianScene(torch.tensor([[0.0, 0.0, 4.0]]), torch.full((1, 3), 0.05), torch.tensor([IDENTITY_QUAT]),
                          torch.tensor([0.9]), sh)
    cams = cameras([[0.0, 0.0, 0.0], [0.0, 0.0, 8.0]], [[0.0, 0.0, 4.0], [0.0, 0.0, 4.0]], 33, 33)
    rgb, _, _ = render(scene, cams)
    red = rgb[:, 16, 16, 0] / 0.9
    assert torch.allclose(red, torch.tensor([0.5 + 0.4 * SH_C1, 0.5 - 0.4 * SH_C1]), atol=1e-5)


# ---- compositing order -----------------------------------------------------------------------
@pytest.mark.parametrize("near_first", [True, False])
def test_nearer_gaussian_wins_regardless_of_array_order(near_first):
    near = ([0.0, 0.0, 2.0], 0.1, 0.9, [1.0, 0.0, 0.0])
    far = ([0.0, 0.0, 5.0], 0.3, 0.8, [0.0, 0.0, 1.0])
    items = [near, far] if near_first else [far, near]
    scene = scene_of(*[[it[i] for it in items] for i in range(4)])
    rgb, alpha, depth = render(scene, axis_camera())
    expected = 0.9 * torch.tensor([1.0, 0.0, 0.0]) + 0.1 * 0.8 * torch.tensor([0.0, 0.0, 1.0])
    assert torch.allclose(rgb[0, 32, 32], expected, atol=1e-5)
    assert abs(float(alpha[0, 32, 32]) - (1 - 0.1 * 0.2)) < 1e-5
    assert abs(float(depth[0, 32, 32]) - (0.9 * 2.0 + 0.08 * 5.0) / 0.98) < 1e-4


def test_opaque_stack_stops_like_3dgs_and_depth_is_the_near_surface():
    """Four coincident o=0.95 Gaussians: T = 0.05, 0.0025, 1.25e-4, then 6.25e-6 < 1e-4, so
    the pixel stops before the 4th, and the far Gaussian is never composited."""
    scene = scene_of([[0.0, 0.0, 2.0]] * 4 + [[0.0, 0.0, 6.0]], [0.2] * 4 + [0.5], [0.95] * 4 + [0.9],
                     [[0.0, 1.0, 0.0]] * 4 + [[1.0, 0.0, 0.0]])
    bg = torch.tensor([0.0, 0.0, 1.0])
    rgb, alpha, depth = render(scene.select([4, 0, 1, 2, 3]), axis_camera(), background=bg)
    T = 0.05 ** 3
    assert torch.allclose(rgb[0, 32, 32], torch.tensor([0.0, 1 - T, T]), atol=1e-6)
    assert abs(float(alpha[0, 32, 32]) - (1 - T)) < 1e-6
    assert float(depth[0, 32, 32]) == pytest.approx(2.0, abs=1e-6)
    naive = render_naive(scene, axis_camera(), background=bg)
    assert torch.allclose(naive[0], rgb, atol=1e-6)


def test_empty_scene_renders_background():
    empty = random_scene(0, sh_degree=2)
    assert len(empty) == 0 and empty.sh_degree == 2
    rgb, alpha, depth = render(empty, cameras([[0.0, 0.0, 0.0]] * 2, [[0.0, 0.0, 1.0]] * 2), background=(0.2, 0.4, 0.6))
    assert rgb.shape == (2, 36, 48, 3) and alpha.shape == depth.shape == (2, 36, 48)
    assert torch.allclose(rgb, torch.tensor([0.2, 0.4, 0.6]).expand_as(rgb))
    assert (alpha == 0).all() and (depth == 0).all()


def test_gaussians_behind_or_outside_the_view_leave_background():
    scene = scene_of([[0.0, 0.0, -3.0], [0.0, 0.0, 0.005], [50.0, 0.0, 3.0]], [0.1] * 3, [0.9] * 3, [[1.0, 1.0, 1.0]] * 3)
    _, alpha, _ = render(scene, axis_camera())
    assert (alpha == 0).all()


# ---- tiled renderer against the per-Gaussian loop -----------------------------------------------
def test_tiled_matches_naive_reference_on_random_scene():
    scene = random_scene(400, sh_degree=3, seed=3, extent=1.5, scale_range=(0.02, 0.3), opacity_range=(0.05, 1.0))
    cams = cameras([[0.3, -0.5, -4.0], [3.0, 0.5, 1.0], [0.0, 0.0, -1.0]], [[0.0, 0.0, 0.0]] * 3, 40, 30)
    bg = (0.3, 0.6, 0.9)
    expected = render_naive(scene, cams, background=bg)
    assert float(expected[1].mean()) > 0.3  # a busy scene with overlaps
    for kwargs in ({}, {"tile": 8, "chunk_elements": 64 * 5}, {"tile": 7}):  # also: many depth chunks per tile
        got = render(scene, cams, background=bg, **kwargs)
        for g, e in zip(got, expected):
            assert g.shape == e.shape
            assert torch.allclose(g, e, atol=2e-5), (kwargs, float((g - e).abs().max()))


def test_progress_is_called_per_camera_and_can_cancel():
    scene = random_scene(20, seed=1, center=(0.0, 0.0, 3.0))
    cams = cameras([[0.0, 0.0, 0.0]] * 3, [[0.0, 0.0, 3.0]] * 3, 16, 16)
    calls = []
    render(scene, cams, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]

    def cancel(done, total):
        raise InterruptedError("cancelled")
    with pytest.raises(InterruptedError):
        render(scene, cams, progress=cancel)


def test_render_rejects_bad_arguments():
    scene = random_scene(5)
    cam = axis_camera(16, 16)
    with pytest.raises(ValueError, match="background"):
        render(scene, cam, background=(0.0, 1.0))
    with pytest.raises(ValueError, match="background"):
        render(scene, cam, background=(0.0, float("nan"), 1.0))
    with pytest.raises(ValueError, match="backend"):
        render(scene, cam, backend="cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="gsplat"):
            render(scene, cam, backend="gsplat")
    with pytest.raises(ValueError, match="CameraBatch"):
        render(scene, torch.eye(4))


def test_render_is_differentiable_on_request():
    scene = random_scene(30, seed=2, center=(0.0, 0.0, 3.0), scale_range=(0.05, 0.2))
    scene.means.requires_grad_(True)
    rgb, alpha, _ = render(scene, axis_camera(24, 24), differentiable=True)
    (rgb.sum() + alpha.sum()).backward()
    assert torch.isfinite(scene.means.grad).all() and scene.means.grad.abs().sum() > 0
    assert not render(scene, axis_camera(24, 24))[0].requires_grad


# ---- gsplat's reference implementation --------------------------------------------------------
def _gsplat_reference():
    try:
        from gsplat.cuda import _torch_impl
    except ImportError:
        pytest.skip("gsplat is not installed (pip install gsplat to compare against its pure-torch reference)")
    return _torch_impl


def test_projection_and_sh_match_gsplat_reference():
    ref = _gsplat_reference()
    scene = random_scene(300, sh_degree=3, seed=4, extent=2.0, scale_range=(0.01, 0.4))
    cams = cameras([[0.5, -1.0, -5.0], [4.0, 0.0, 0.5]], [[0.0, 0.0, 0.0]] * 2, 64, 40)
    covs = covariances_3d(scene.scales, scene.rotations)
    ref_covs, _ = ref._quat_scale_to_covar_preci(scene.rotations, scene.scales, compute_preci=False)
    assert torch.allclose(covs, ref_covs, atol=1e-6)
    viewmats, Ks = cams.world_to_camera(), cams.pixel_K()
    radii, means2d, depths, conics, _ = ref._fully_fused_projection(scene.means, covs, viewmats, Ks, 64, 40,
                                                                     eps2d=DILATION, near_plane=0.01)
    for i in range(len(cams)):
        m2d, cov2d, z = ewa_project(scene.means, covs, viewmats[i], Ks[i], 64, 40)
        front = z > 0.01
        assert torch.allclose(m2d[front], means2d[i][front], rtol=1e-4, atol=1e-3)
        assert torch.allclose(z, depths[i], atol=1e-5)
        proj = project_gaussians(scene, cams[i])
        assert torch.allclose(proj.conics, conics[i][proj.ids], rtol=1e-3, atol=1e-5)
        assert (radii[i][proj.ids] > 0).all(-1).all()  # what we draw, gsplat draws too
        dirs = scene.means[proj.ids] - cams.centers()[i]
        ref_rgb = (ref._spherical_harmonics(3, dirs, scene.sh[proj.ids]) + 0.5).clamp_min(0)
        assert torch.allclose(proj.colors, ref_rgb, atol=1e-5)
    # gsplat's pure-torch image path (_rasterize_to_pixels) calls its CUDA kernels and nerfacc,
    # so full images are compared on CUDA only (test_gsplat_backend_matches_torch_backend).


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat's rasteriser needs CUDA")
def test_gsplat_backend_matches_torch_backend():
    _gsplat_reference()
    scene = random_scene(2000, sh_degree=3, seed=5, extent=1.5, opacity_range=(0.1, 0.95)).to("cuda")
    cams = cameras([[0.5, -1.0, -5.0], [4.0, 0.0, 0.5]], [[0.0, 0.0, 0.0]] * 2, 96, 64)
    ours = render(scene, cams, background=(0.2, 0.5, 0.7), backend="torch")
    theirs = render(scene, cams, background=(0.2, 0.5, 0.7), backend="gsplat")
    # opacities <= 0.95 keep alpha below both clamps (0.99 here, 0.999 in gsplat)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-3), float((a - b).abs().max())


# ---- PLY ---------------------------------------------------------------------------------------
def _assert_same_scene(a: GaussianScene, b: GaussianScene):
    assert len(a) == len(b) and a.sh_degree == b.sh_degree
    assert torch.allclose(a.means, b.means) and torch.allclose(a.sh, b.sh)
    assert torch.allclose(a.scales, b.scales, rtol=1e-5)
    assert torch.allclose(a.opacities, b.opacities, atol=2e-6)
    assert torch.allclose(a.rotations, b.rotations, atol=1e-6)


@pytest.mark.parametrize("degree", [0, 3])
def test_ply_round_trip(tmp_path, degree):
    scene = random_scene(50, sh_degree=degree, seed=degree)
    path = tmp_path / "scene.ply"
    save_ply(scene, path)
    _assert_same_scene(load_ply(path), scene)
    # the layout the 3DGS trainer writes: header names, float32 rows, f_rest channel-major
    data = path.read_bytes()
    header, body = data.split(b"end_header\n", 1)
    names = [line.split()[-1] for line in header.decode().splitlines() if line.startswith("property float")]
    k = (degree + 1) ** 2
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[9:] == [f"f_rest_{i}" for i in range(3 * (k - 1))] + [
        "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    rows = np.frombuffer(body, dtype="<f4").reshape(50, len(names))
    assert np.allclose(rows[:, 3:6], 0)
    assert np.allclose(rows[:, names.index("opacity")], torch.logit(scene.opacities).numpy(), atol=1e-4)
    if degree:
        # f_rest index c*(K-1) + (k-1): green channel (c=1), coefficient k=2
        assert np.allclose(rows[:, names.index(f"f_rest_{1 * (k - 1) + 1}")], scene.sh[:, 2, 1].numpy())


def _write_ascii_ply(path, names, rows, extra_header=""):
    header = ["ply", "format ascii 1.0", "comment written by hand", f"element vertex {len(rows)}"]
    header += [f"property float {n}" for n in names] + ([extra_header] if extra_header else []) + ["end_header"]
    path.write_text("\n".join(header + [" ".join(str(v) for v in r) for r in rows]) + "\n")


BASE = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2"]
TAIL = ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def test_load_ascii_ply_with_degree1_channel_major_rest(tmp_path):
    rest = [f"f_rest_{i}" for i in range(9)]
    row = [1.0, 2.0, 3.0, 0.1, 0.2, 0.3] + [float(i) for i in range(9)] + [0.0, math.log(0.5), 0.0, math.log(2.0),
                                                                            2.0, 0.0, 0.0, 0.0]
    path = tmp_path / "hand.ply"
    _write_ascii_ply(path, BASE + rest + TAIL, [row, row])
    scene = load_ply(path)
    assert len(scene) == 2 and scene.sh_degree == 1
    assert torch.allclose(scene.means[0], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.allclose(scene.sh[0, 0], torch.tensor([0.1, 0.2, 0.3]))
    for i in range(9):  # f_rest_i is channel i // 3, coefficient 1 + i % 3
        assert float(scene.sh[0, 1 + i % 3, i // 3]) == i
    assert float(scene.opacities[0]) == pytest.approx(0.5)
    assert torch.allclose(scene.scales[0], torch.tensor([0.5, 1.0, 2.0]))
    assert torch.allclose(scene.rotations[0], torch.tensor(IDENTITY_QUAT))  # normalised from (2, 0, 0, 0)


def test_ply_without_scales_names_them(tmp_path):
    path = tmp_path / "noscale.ply"
    names = BASE + ["opacity", "rot_0", "rot_1", "rot_2", "rot_3"]
    _write_ascii_ply(path, names, [[0.0] * len(names)])
    with pytest.raises(ValueError, match=r"noscale\.ply: the vertex element lacks scale_0, scale_1, scale_2"):
        load_ply(path)


def test_ply_bad_inputs(tmp_path):
    bad_rest = tmp_path / "rest.ply"
    names = BASE + [f"f_rest_{i}" for i in range(5)] + TAIL
    _write_ascii_ply(bad_rest, names, [[0.0] * len(names)])
    with pytest.raises(ValueError, match=r"rest\.ply: 5 f_rest properties"):
        load_ply(bad_rest)
    not_ply = tmp_path / "image.png"
    not_ply.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32)
    with pytest.raises(ValueError, match=r"image\.png: not a PLY"):
        load_ply(not_ply)
    empty = tmp_path / "empty.ply"
    _write_ascii_ply(empty, BASE + TAIL, [])
    with pytest.raises(ValueError, match="no vertices"):
        load_ply(empty)
    truncated = tmp_path / "cut.ply"
    save_ply(random_scene(4), truncated)
    truncated.write_bytes(truncated.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        load_ply(truncated)


def test_scene_validation():
    good = random_scene(3)
    with pytest.raises(ValueError, match="scales"):
        GaussianScene(good.means, good.scales[:2], good.rotations, good.opacities, good.sh)
    with pytest.raises(ValueError, match="sh"):
        GaussianScene(good.means, good.scales, good.rotations, good.opacities, torch.zeros(3, 5, 3))
    with pytest.raises(ValueError, match="NaN"):
        GaussianScene(good.means * float("nan"), good.scales, good.rotations, good.opacities, good.sh)
    with pytest.raises(ValueError, match="0..1"):
        GaussianScene(good.means, good.scales, good.rotations, good.opacities + 2, good.sh)
    with pytest.raises(ValueError, match="log scales"):
        GaussianScene(good.means, -good.scales, good.rotations, good.opacities, good.sh)


def test_rigid_transform_moves_centres_and_rotates_axes():
    from consistent_video.nodes.cameras.geometry import axis_angle_to_matrix, quaternion_to_matrix
    scene = random_scene(50, seed=3)
    m = torch.eye(4)
    m[:3, :3] = axis_angle_to_matrix(torch.tensor([0.3, -0.5, 0.8]), 0.9)
    m[:3, 3] = torch.tensor([1.0, -2.0, 0.5])
    moved = scene.transformed(m)
    torch.testing.assert_close(moved.means, scene.means @ m[:3, :3].T + m[:3, 3], atol=1e-5, rtol=0)
    # each Gaussian's covariance R S^2 R^T turns with the scene: M R
    torch.testing.assert_close(quaternion_to_matrix(moved.rotations), m[:3, :3] @ quaternion_to_matrix(scene.rotations),
                               atol=1e-5, rtol=0)
    assert torch.equal(moved.scales, scene.scales) and torch.equal(moved.opacities, scene.opacities)
    mirror = torch.diag(torch.tensor([1.0, 1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="rigid"):
        scene.transformed(mirror)
    with pytest.raises(ValueError, match="SH degree 1"):
        random_scene(5, sh_degree=1).transformed(m)
