"""VideoScene view poses: PnP from per-pixel Gaussian centres, photometric refinement, se(3), the loss."""
import math

import pytest
import torch

from consistent_video.nodes.cameras.geometry import CameraBatch, intrinsics_from_fov, pixel_grid, project, unproject
from consistent_video.nodes.splats.gaussians import random_scene
from consistent_video.nodes.splats.render import render
from consistent_video.videoscene_nodes import pose

W, H = 64, 48
K = torch.tensor([[0.9, 0.0, 0.47], [0.0, 1.1, 0.53], [0.0, 0.0, 1.0]])  # non-square, off-centre


def pose_from_twist(*tau) -> torch.Tensor:
    """A camera-to-world [4,4] float32 that is the inverse of exp(tau) (an arbitrary rigid pose)."""
    return torch.linalg.inv(pose.se3_exp(torch.tensor(tau, dtype=torch.float64))).float()


def pose_errors(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(rotation angle in rad, centre distance) between two c2w, in float64 (atan2: exact near 0)."""
    R = a[:3, :3].double().T @ b[:3, :3].double()
    s = torch.stack([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]).norm() / 2
    angle = math.atan2(float(s), float((R.trace() - 1) / 2))
    return angle, float((a[:3, 3].double() - b[:3, 3].double()).norm())


def points_map(c2w: torch.Tensor, seed: int) -> torch.Tensor:
    """[H,W,3] world points seen at every pixel centre by the camera c2w (depth 2..4)."""
    g = torch.Generator().manual_seed(seed)
    depth = 2.0 + 2.0 * torch.rand(1, H, W, generator=g)
    return unproject(depth, CameraBatch(c2w[None], K[None], W, H))[0]


# ---- PnP ---------------------------------------------------------------------------------
def test_pnp_recovers_the_exact_pose_and_the_pixel_centre_convention():
    c2w = pose_from_twist(0.3, -0.2, 0.5, 0.2, -0.3, 0.1)
    points = points_map(c2w, seed=0)
    est = pose.pnp_pose(points, torch.ones(H, W), W, H, K)
    assert est.shape == (4, 4) and est.dtype == torch.float32
    rot, trans = pose_errors(est, c2w)
    assert rot < 1e-5 and trans < 1e-5
    # camera-to-world (not world-to-camera), OpenCV axes: the points project onto their pixel centres
    uv, z = project(points.reshape(-1, 3), CameraBatch(est[None], K[None], W, H))
    assert (z > 0).all()
    assert torch.allclose(uv[0], pixel_grid(H, W).reshape(-1, 2), atol=1e-3)


def test_pnp_with_noise_outliers_and_low_opacity_pixels_of_another_pose():
    g = torch.Generator().manual_seed(1)
    c2w = pose_from_twist(0.2, 0.1, -0.3, -0.1, 0.25, 0.05)
    points = points_map(c2w, seed=2) + 1e-3 * torch.randn(H, W, 3, generator=g)
    # 15 % outliers: the point of another pixel at least 8 px away (a mismatched Gaussian)
    flat = points.reshape(-1, 3).clone()
    grid = pixel_grid(H, W).reshape(-1, 2)
    outlier = torch.rand(H * W, generator=g) < 0.15
    other = torch.randint(0, H * W, (H * W,), generator=g)
    outlier &= (grid[other] - grid).norm(dim=-1) > 8
    flat[outlier] = flat[other[outlier]]
    points = flat.reshape(H, W, 3)
    # 60 % of the pixels are transparent and hold a consistent scene seen from another pose: without
    # the opacity threshold RANSAC would find that pose
    transparent = torch.rand(H, W, generator=g) < 0.6
    decoy = points_map(pose_from_twist(-0.5, 0.4, 0.2, 0.3, 0.1, -0.4), seed=3)
    points = torch.where(transparent[..., None], decoy, points)
    opacities = torch.where(transparent, 0.1 + 0.2 * torch.rand(H, W, generator=g),
                            0.31 + 0.69 * torch.rand(H, W, generator=g))
    rot, trans = pose_errors(pose.pnp_pose(points, opacities, W, H, K), c2w)
    assert rot < 1e-3 and trans < 5e-3
    rot_all, _ = pose_errors(pose.pnp_pose(points, opacities, W, H, K, threshold=0.0), c2w)
    assert rot_all > 0.1  # the threshold is what keeps the decoy out


def test_pnp_refuses_too_few_points_and_bad_inputs():
    c2w = pose_from_twist(0.1, 0.0, 0.0, 0.0, 0.1, 0.0)
    points = points_map(c2w, seed=4)
    opacities = torch.zeros(H, W)
    opacities[0, :3] = 0.9
    with pytest.raises(ValueError, match=r"only 3 of 3072 pixels have opacity > 0.3.*at least 6"):
        pose.pnp_pose(points, opacities, W, H, K)
    nan_points = points.clone()
    nan_points.view(-1, 3)[5:] = float("nan")
    with pytest.raises(ValueError, match="only 5 of 3072 pixels"):
        pose.pnp_pose(nan_points, torch.ones(H, W), W, H, K)
    with pytest.raises(ValueError, match=r"points are 64x48 per pixel but the image size given is 48x64"):
        pose.pnp_pose(points, torch.ones(H, W), H, W, K)
    with pytest.raises(ValueError, match=r"opacities must be a tensor \[H,W\]"):
        pose.pnp_pose(points, torch.ones(W, H), W, H, K)
    with pytest.raises(ValueError, match="points must be a tensor"):
        pose.pnp_pose(points[..., :2], torch.ones(H, W), W, H, K)
    with pytest.raises(ValueError, match="positive focal lengths"):
        pose.pnp_pose(points, torch.ones(H, W), W, H, -K)


# ---- se(3) and the loss --------------------------------------------------------------------------
def test_se3_exp_is_the_matrix_exponential_and_smooth_at_zero():
    g = torch.Generator().manual_seed(5)
    for scale in (1.0, 1e-3, 1e-6):
        tau = scale * torch.randn(6, generator=g, dtype=torch.float64)
        twist = torch.zeros(4, 4, dtype=torch.float64)
        twist[:3, :3] = torch.tensor([[0, -tau[5], tau[4]], [tau[5], 0, -tau[3]], [-tau[4], tau[3], 0]])
        twist[:3, 3] = tau[:3]
        assert torch.allclose(pose.se3_exp(tau), torch.linalg.matrix_exp(twist), atol=1e-12)
    jac = torch.autograd.functional.jacobian(pose.se3_exp, torch.zeros(6, dtype=torch.float64))
    eps = 1e-6
    for i in range(6):
        step = torch.zeros(6, dtype=torch.float64)
        step[i] = eps
        numeric = (pose.se3_exp(step) - pose.se3_exp(-step)) / (2 * eps)
        assert torch.allclose(jac[..., i], numeric, atol=1e-8)


def test_structure_loss_known_values():
    g = torch.Generator().manual_seed(6)
    x = torch.rand(32, 40, 3, generator=g)
    assert float(pose.photometric_loss(x, x)) == pytest.approx(1 - 0.98, abs=1e-6)  # clamped at 0.98
    assert float(pose.photometric_loss(1 - x, x)) > 1.9  # anti-correlated: structure near -1
    # structure ignores brightness and contrast: an affine change of the image costs nothing
    assert float(pose.photometric_loss(0.25 + 0.5 * x, x)) == pytest.approx(0.02, abs=1e-5)
    assert float(pose.photometric_loss(0.25 + 0.5 * x, x, mse_weight=1.0)) > 0.02 + 0.01


# ---- refinement --------------------------------------------------------------------------------
def small_scene():
    scene = random_scene(200, seed=1, center=(0.0, 0.0, 3.0), extent=1.0, scale_range=(0.06, 0.15),
                         opacity_range=(0.5, 0.95))
    K_view = intrinsics_from_fov(60.0, 40, 40)
    c2w = pose_from_twist(0.05, 0.02, 0.0, 0.0, 0.03, 0.0)
    image = render(scene, CameraBatch(c2w[None], K_view[None], 40, 40), backend="torch")[0][0]
    return scene, image, c2w, K_view


def test_the_render_is_differentiable_in_the_pose_and_matches_finite_differences():
    scene, image, c2w, K_view = small_scene()
    w2c = torch.linalg.inv(pose_from_twist(0.02, -0.01, 0.01, 0.01, -0.02, 0.01) @ c2w).double()

    def loss_of(tau, structure_weight, mse_weight):
        c2w_tau = torch.linalg.inv(pose.se3_exp(tau) @ w2c)
        rendered = render(scene, CameraBatch(c2w_tau[None].float(), K_view[None], 40, 40), backend="torch",
                          differentiable=True)[0][0]
        return pose.photometric_loss(rendered, image, structure_weight, mse_weight)

    for weights in ((0.0, 1.0), (1.0, 0.0)):
        tau = torch.zeros(6, dtype=torch.float64, requires_grad=True)
        loss_of(tau, *weights).backward()
        numeric = torch.zeros(6, dtype=torch.float64)
        for i in range(6):
            step = torch.zeros(6, dtype=torch.float64)
            step[i] = 1e-3
            numeric[i] = (loss_of(step, *weights) - loss_of(-step, *weights)).detach() / 2e-3
        assert torch.allclose(tau.grad, numeric, rtol=0.03, atol=0.01 * float(numeric.abs().max())), (tau.grad, numeric)


def test_refinement_reduces_the_loss_and_moves_towards_the_true_pose():
    scene, image, c2w, K_view = small_scene()
    start = pose_from_twist(0.04, -0.03, 0.03, 0.025, -0.02, 0.03) @ c2w  # perturbed in the world frame
    rot0, trans0 = pose_errors(start, c2w)
    calls = []
    refined, losses = pose.refine_pose(scene, image, start, K_view, steps=12, backend="torch",
                                       progress=calls.append)
    assert len(losses) == 12 and calls == [1] * 12
    rot1, trans1 = pose_errors(refined, c2w)
    # the structure loss reaches its floor (0.02) within a few steps; Adam at lr 0.005 then oscillates
    # around the pose (measured: 0.044 -> 0.021 rad, 0.059 -> 0.044 in translation)
    assert min(losses) < 0.2 * losses[0]
    assert rot1 < 0.6 * rot0 and trans1 < 0.85 * trans0, (rot0, rot1, trans0, trans1)
    assert refined.dtype == torch.float32 and torch.allclose(refined[3], torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_refinement_keeps_the_true_pose_and_cancel_stops_it():
    scene, image, c2w, K_view = small_scene()
    refined, losses = pose.refine_pose(scene, image, c2w, K_view, steps=2, backend="torch")
    assert losses[0] == pytest.approx(0.02, abs=1e-5)  # identical images: the loss floor
    assert torch.allclose(refined, c2w, atol=1e-5)

    class Cancelled(Exception):
        pass

    def cancel(n):
        raise Cancelled

    with pytest.raises(Cancelled):
        pose.refine_pose(scene, image, c2w, K_view, steps=5, backend="torch", progress=cancel)


def test_refinement_refuses_an_empty_view_and_bad_inputs():
    scene, image, c2w, K_view = small_scene()
    behind = c2w.clone()
    behind[:3, :3] = behind[:3, :3] @ torch.diag(torch.tensor([-1.0, 1.0, -1.0]))  # looking away
    with pytest.raises(ValueError, match="no Gaussian is visible"):
        pose.refine_pose(scene, image, behind, K_view, steps=1, backend="torch")
    with pytest.raises(ValueError, match=r"image must be a tensor \[H,W,3\]"):
        pose.refine_pose(scene, image[..., 0], c2w, K_view, steps=1)
    with pytest.raises(ValueError, match=r"c2w must be a finite \[4,4\]"):
        pose.refine_pose(scene, image, c2w[:3], K_view, steps=1)
    with pytest.raises(ValueError, match="gaussians must be a GaussianScene"):
        pose.refine_pose(None, image, c2w, K_view, steps=1)
