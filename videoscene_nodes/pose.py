"""The pose of an input view from its own predicted Gaussians: PnP, then photometric refinement.

VideoScene's demo (NoPoSplat, pose-free) predicts per-pixel Gaussians of both views in view 1's
frame and never sees a camera pose; each view's pose is recovered afterwards
(``noposplat/src/model/model_wrapper.py`` ``ModelWrapper.predict``, lines 220-384 of
hanyang-21/VideoScene at 70e9c84, the same procedure as cvg/NoPoSplat 9b04307
``src/evaluation/pose_evaluator.py`` lines 78-146). The demo estimates both views this way,
view 2 (lines 236-308) and then view 1 itself (lines 310-382), rather than fixing view 1 at
the identity:

1. :func:`pnp_pose`: RANSAC PnP (OpenCV SQPnP) between the view's pixels and the centres of
   the Gaussians predicted for them, keeping pixels whose opacity exceeds 0.3.
2. :func:`refine_pose`: 200 Adam steps (lr 0.005) on an se(3) update of the pose that
   minimises a photometric loss between the view's image and a render of all the Gaussians.

Plain torch + OpenCV (``opencv-python-headless``), importable without ComfyUI.

Conventions (the pack's, :mod:`~consistent_video.nodes.cameras`): poses are camera-to-world
``c2w [4,4]`` in the OpenCV convention (x right, y down, z forward); intrinsics ``[3,3]`` are
normalised by the image width/height; pixel ``(col, row)`` has its centre at
``(col + 0.5, row + 0.5)``; images are ``[H,W,3]`` floats in 0..1.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..nodes.cameras.geometry import CameraBatch, pixel_grid, rigid_inverse, scale_intrinsics
from ..nodes.splats.gaussians import GaussianScene
from ..nodes.splats.render import render

# ---- PnP settings of the original -------------------------------------------------------------
# NoPoSplat src/misc/cam_utils.py get_pnp_pose, lines 158-180 (cvg/NoPoSplat 9b04307), copied
# unchanged into VideoScene noposplat/src/misc/cam_utils.py lines 160-180:
#   mask = opacity > opacity_threshold                            (threshold 0.3, line 158/160)
#   cv2.solvePnPRansac(pts3d[mask], pixels[mask], K, None,
#                      iterationsCount=100, reprojectionError=5, flags=cv2.SOLVEPNP_SQPNP)
#                                                                 (lines 169-170 / 171-172)
# The confidence is not passed, so OpenCV's default 0.99 applies. OpenCV samples 5-point
# minimal sets (EPnP) in the RANSAC loop and re-solves on the inliers with the given flag (SQPnP).
OPACITY_THRESHOLD = 0.3
PNP_ITERATIONS = 100
PNP_REPROJECTION_ERROR = 5.0  # pixels
PNP_CONFIDENCE = 0.99
MIN_PNP_POINTS = 6  # OpenCV's RANSAC draws 5-point samples; one more so that a sample can be checked

# ---- refinement settings of the original --------------------------------------------------------
# VideoScene noposplat/src/model/model_wrapper.py ModelWrapper.predict (70e9c84):
#   lr = 0.005, number_steps = 200                                   (lines 233-234)
#   Adam over cam_rot_delta and cam_trans_delta, both lr 0.005       (lines 243-260)
#   loss: sum of the configured losses (none in the demo: noposplat/src/app.py lines 227-238
#         build ModelWrapper with losses=None, an empty nn.ModuleList) + (1 - SSIM structure),
#         window 11, data range 1                                    (lines 282-291)
#   after each Adam step: w2c <- SE3_exp([trans_delta, rot_delta]) @ w2c, deltas reset to 0
#         (Adam's moments are kept)                                  (lines 296-305; cam_utils.py
#         update_pose lines 118-140, SE3_exp lines 103-115)
# NoPoSplat's pose evaluation (src/evaluation/pose_evaluator.py lines 86-146) adds its configured
# losses: MSE (weight 1.0, config/loss/mse.yaml) and, in some experiments, LPIPS-VGG (weight 0.05,
# config/loss/lpips.yaml). LPIPS needs downloaded VGG weights and is not offered here; the MSE
# term is (``mse_weight``).
REFINE_STEPS = 200
REFINE_LR = 0.005
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K2 = 0.03
STRUCTURE_MAX = 0.98  # the original clamps the structure map at 0.98 (loss_ssim.py line 120)


# ---- PnP ---------------------------------------------------------------------------------------
def _check_intrinsics(name: str, intrinsics) -> torch.Tensor:
    K = torch.as_tensor(intrinsics, dtype=torch.float64).detach().cpu()
    if K.shape == (1, 3, 3):
        K = K[0]
    if K.shape != (3, 3) or not torch.isfinite(K).all():
        raise ValueError(f"{name}: intrinsics must be a finite [3,3] matrix normalised by the image size "
                         f"(fx/W, fy/H, cx/W, cy/H), got shape {list(K.shape)}")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"{name}: intrinsics must have positive focal lengths, got fx/W={float(K[0, 0]):.4g}, "
                         f"fy/H={float(K[1, 1]):.4g}")
    return K


def pnp_pose(points: torch.Tensor, opacities: torch.Tensor, width: int, height: int, intrinsics: torch.Tensor,
             threshold: float = OPACITY_THRESHOLD, return_inliers: bool = False):
    """Camera-to-world pose of a view from the Gaussian centres predicted for its pixels.

    Pixel ``(col, row)`` of the view sees the Gaussian centre ``points[row, col]``; OpenCV's
    ``solvePnPRansac`` with ``SOLVEPNP_SQPNP`` (100 iterations, 5 px reprojection threshold,
    confidence 0.99, as the original) finds the pose that projects the centres onto their
    pixels, using the pixels whose opacity is above ``threshold`` (and whose point is finite).

    Difference from the original: the 2-D points are the pixel *centres* ``(col + 0.5,
    row + 0.5)`` (the pack's convention, and where the rasteriser evaluates pixels), where
    the original passes the integer indices ``(col, row)`` with the same ``K``, a half-pixel
    shift of every correspondence.

    Args:
        points: ``[H,W,3]`` Gaussian centres per pixel, in the world frame (view 1's camera frame
            for NoPoSplat).
        opacities: ``[H,W]`` their opacities in 0..1.
        width, height: the view's image size; must match ``points``.
        intrinsics: ``[3,3]`` normalised intrinsics of the view (``fx/W, fy/H, cx/W, cy/H``).
        threshold: pixels with opacity ``> threshold`` take part (the original's 0.3).
        return_inliers: also return the counts of RANSAC inliers and of pixels that took part.
    Returns:
        ``c2w [4,4]`` float32 on ``points``' device, OpenCV axes (x right, y down, z forward);
        with ``return_inliers``: ``(c2w, inliers, used)``.
    Raises:
        ValueError: wrong shapes or sizes, bad intrinsics, fewer than :data:`MIN_PNP_POINTS`
            usable pixels, or no pose found.
    """
    if not isinstance(points, torch.Tensor) or points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"pnp_pose: points must be a tensor [H,W,3] of Gaussian centres, got "
                         f"{list(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__}")
    h, w = points.shape[:2]
    if not isinstance(opacities, torch.Tensor) or tuple(opacities.shape) != (h, w):
        got = list(opacities.shape) if isinstance(opacities, torch.Tensor) else type(opacities).__name__
        raise ValueError(f"pnp_pose: opacities must be a tensor [H,W] = [{h},{w}] like points, got {got}")
    if (int(width), int(height)) != (w, h):
        raise ValueError(f"pnp_pose: points are {w}x{h} per pixel but the image size given is {width}x{height}")
    K = scale_intrinsics(_check_intrinsics("pnp_pose", intrinsics), w, h)

    pts = points.detach().to("cpu", torch.float64)
    mask = (opacities.detach().cpu() > threshold) & torch.isfinite(pts).all(-1)
    count = int(mask.sum())
    if count < MIN_PNP_POINTS:
        raise ValueError(f"pnp_pose: only {count} of {h * w} pixels have opacity > {threshold} and a finite "
                         f"point; PnP needs at least {MIN_PNP_POINTS} (lower the threshold, or check that the "
                         f"Gaussians belong to this view)")
    import cv2  # here, so that importing the module does not need OpenCV

    object_points = pts[mask].numpy()
    image_points = pixel_grid(h, w).to(torch.float64)[mask].numpy()
    try:
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(
            object_points, image_points, K.numpy(), None, iterationsCount=PNP_ITERATIONS,
            reprojectionError=PNP_REPROJECTION_ERROR, confidence=PNP_CONFIDENCE, flags=cv2.SOLVEPNP_SQPNP)
    except cv2.error as exc:
        raise ValueError(f"pnp_pose: OpenCV's solvePnPRansac failed on {count} points: {exc}") from None
    if not ok or inliers is None or not np.isfinite(rvec).all() or not np.isfinite(tvec).all():
        raise ValueError(f"pnp_pose: RANSAC PnP found no pose from {count} points (no set of points reprojects "
                         f"within {PNP_REPROJECTION_ERROR} px); the predicted points may be degenerate")
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, :3] = torch.from_numpy(cv2.Rodrigues(rvec)[0])
    w2c[:3, 3] = torch.from_numpy(tvec.reshape(3))
    c2w = rigid_inverse(w2c).to(device=points.device, dtype=torch.float32)
    return (c2w, int(len(inliers)), count) if return_inliers else c2w


# ---- se(3) ---------------------------------------------------------------------------------
def _hat(v: torch.Tensor) -> torch.Tensor:
    """Skew-symmetric ``[3,3]`` of ``v [3]``: ``hat(v) @ x = v x x``."""
    zero = torch.zeros((), dtype=v.dtype, device=v.device)
    x, y, z = v.unbind(-1)
    return torch.stack([torch.stack([zero, -z, y]), torch.stack([z, zero, -x]), torch.stack([-y, x, zero])])


def se3_exp(tau: torch.Tensor) -> torch.Tensor:
    """The rigid transform ``[4,4]`` ``exp(tau^)`` of a twist ``tau = (rho, theta) [6]``.

    ``rho`` is the translational and ``theta`` the rotational part (axis times angle, rad),
    in the order of NoPoSplat's ``update_pose`` (``tau = cat([trans_delta, rot_delta])``).
    ``R = I + A W + B W^2`` and ``t = (I + B W + C W^2) rho`` with ``W = hat(theta)``,
    ``A = sin(a)/a``, ``B = (1 - cos a)/a^2``, ``C = (a - sin a)/a^3``, ``a = |theta|``; near
    ``a = 0`` their Taylor series are used, so the result and its gradient are exact at 0.
    """
    rho, theta = tau[:3], tau[3:]
    a2 = (theta * theta).sum()
    small = a2 < 1e-8
    a2_safe = torch.where(small, torch.ones_like(a2), a2)
    a = a2_safe.sqrt()
    A = torch.where(small, 1 - a2 / 6, torch.sin(a) / a)
    B = torch.where(small, 0.5 - a2 / 24, (1 - torch.cos(a)) / a2_safe)
    C = torch.where(small, 1.0 / 6.0 - a2 / 120, (a - torch.sin(a)) / (a2_safe * a))
    W = _hat(theta)
    W2 = W @ W
    eye = torch.eye(3, dtype=tau.dtype, device=tau.device)
    R = eye + A * W + B * W2
    t = (eye + B * W + C * W2) @ rho
    bottom = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=tau.dtype, device=tau.device)
    return torch.cat([torch.cat([R, t[:, None]], 1), bottom], 0)


# ---- loss ----------------------------------------------------------------------------------
def _gaussian_blur_valid(x: torch.Tensor, window: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter without padding of ``x [B,C,H,W]`` (a dimension shorter than
    the window is left unfiltered, as in the original's ``gaussian_filter``)."""
    coords = torch.arange(window, dtype=x.dtype, device=x.device) - window // 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = (g / g.sum()).repeat(x.shape[1], 1, 1, 1)  # [C,1,1,window]
    if x.shape[-2] >= window:
        x = F.conv2d(x, g.transpose(-1, -2), groups=x.shape[1])
    if x.shape[-1] >= window:
        x = F.conv2d(x, g, groups=x.shape[1])
    return x


def ssim_structure(x: torch.Tensor, y: torch.Tensor, window: int = SSIM_WINDOW,
                   sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Mean SSIM *structure* term of two images ``[H,W,3]`` (or ``[B,H,W,C]``) in 0..1.

    Per pixel ``s = (sigma_xy + C3) / (sigma_x sigma_y + C3)`` with local statistics from an
    11-tap Gaussian window (sigma 1.5, no padding), ``C3 = (0.03)^2 / 2``; variances clamped at
    ``eps_float32^2``, ``|sigma_xy|`` at ``sigma_x sigma_y``, and ``s`` at 0.98 (so identical
    images give 0.98), as the original's ``_ssim(..., retrun_seprate=True)``
    (NoPoSplat ``src/loss/loss_ssim.py`` lines 104-124). Returns a scalar tensor.
    """
    if x.shape != y.shape:
        raise ValueError(f"ssim_structure: images differ in shape, {list(x.shape)} and {list(y.shape)}")
    if x.dim() == 3:
        x, y = x[None], y[None]
    x, y = x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2)
    mu_x, mu_y = _gaussian_blur_valid(x, window, sigma), _gaussian_blur_valid(y, window, sigma)
    eps = torch.finfo(torch.float32).eps ** 2
    var_x = (_gaussian_blur_valid(x * x, window, sigma) - mu_x ** 2).clamp(min=eps)
    var_y = (_gaussian_blur_valid(y * y, window, sigma) - mu_y ** 2).clamp(min=eps)
    sd_xy = var_x.sqrt() * var_y.sqrt()
    cov = _gaussian_blur_valid(x * y, window, sigma) - mu_x * mu_y
    cov = torch.sign(cov) * torch.minimum(sd_xy, cov.abs())
    c3 = SSIM_K2 ** 2 / 2
    return ((cov + c3) / (sd_xy + c3)).clamp(max=STRUCTURE_MAX).mean()


def photometric_loss(rendered: torch.Tensor, target: torch.Tensor, structure_weight: float = 1.0,
                     mse_weight: float = 0.0) -> torch.Tensor:
    """``mse_weight * MSE + structure_weight * (1 - SSIM structure)`` of two images ``[H,W,3]``.

    The defaults are VideoScene's demo loss (structure only); NoPoSplat's pose evaluation also
    adds the MSE with weight 1.0 (and LPIPS, which is not available here)."""
    loss = structure_weight * (1.0 - ssim_structure(target, rendered))
    if mse_weight:
        loss = loss + mse_weight * ((rendered - target) ** 2).mean()
    return loss


# ---- refinement ------------------------------------------------------------------------------
def refine_pose(gaussians: GaussianScene, image: torch.Tensor, c2w: torch.Tensor, intrinsics: torch.Tensor,
                steps: int = REFINE_STEPS, lr: float = REFINE_LR, structure_weight: float = 1.0,
                mse_weight: float = 0.0, background: Sequence[float] = (0.0, 0.0, 0.0), near: float = 0.01,
                backend: str = "auto",
                progress: Optional[Callable[[int], None]] = None) -> tuple[torch.Tensor, list[float]]:
    """Refine a view's pose by gradient descent on a photometric loss against its image.

    Each step renders ``gaussians`` (fixed, no gradient) from the current pose with the pack's
    differentiable rasteriser (:func:`~consistent_video.nodes.splats.render.render`, black
    background as the original), evaluates :func:`photometric_loss` against ``image`` and takes
    an Adam step on a twist ``tau = (rho, theta)`` that is zero before every step; the pose
    becomes ``w2c <- se3_exp(tau) @ w2c`` (a perturbation in the camera frame) and ``tau`` is
    reset to zero while Adam keeps its moments -- the original's scheme (see the module
    constants for file and line). The pose is carried in float64.

    Args:
        gaussians: the scene, in the world frame of ``c2w``; its device is the working device.
        image: ``[H,W,3]`` the view's image in 0..1; the render has its size.
        c2w: ``[4,4]`` initial camera-to-world (OpenCV), e.g. from :func:`pnp_pose`.
        intrinsics: ``[3,3]`` normalised intrinsics of the view.
        steps: Adam steps (the original's 200).
        lr: Adam learning rate for rotation (rad) and translation (world units) (the original's 0.005).
        structure_weight, mse_weight: weights of the loss terms (:func:`photometric_loss`).
        background: ``(r, g, b)`` behind the splats.
        near: culling distance of the render.
        backend: renderer backend (``"auto"``: gsplat on CUDA when installed, else torch).
        progress: called as ``progress(1)`` after every step (``runtime.Progress.update``); an
            exception it raises (Cancel) stops the refinement.
    Returns:
        ``(c2w [4,4] float32, losses)``: the refined pose on ``c2w``'s device and the loss at the
        start of every step (``steps`` floats).
    """
    if not isinstance(gaussians, GaussianScene):
        raise ValueError(f"refine_pose: gaussians must be a GaussianScene, got {type(gaussians).__name__}")
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[-1] != 3:
        raise ValueError(f"refine_pose: image must be a tensor [H,W,3] in 0..1, got "
                         f"{list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    c2w_in = torch.as_tensor(c2w)
    if c2w_in.shape != (4, 4) or not torch.isfinite(c2w_in).all():
        raise ValueError(f"refine_pose: c2w must be a finite [4,4] camera-to-world matrix, got shape "
                         f"{list(c2w_in.shape)}")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"refine_pose: steps must be an integer >= 0, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"refine_pose: lr must be > 0, got {lr!r}")
    K = _check_intrinsics("refine_pose", intrinsics).to(torch.float32)
    device = gaussians.device
    height, width = image.shape[:2]
    target = image.detach().to(device, torch.float32)
    scene = GaussianScene(gaussians.means.detach(), gaussians.scales.detach(), gaussians.rotations.detach(),
                          gaussians.opacities.detach(), gaussians.sh.detach())
    w2c = rigid_inverse(c2w_in.detach().to(device, torch.float64))
    tau = torch.zeros(6, dtype=torch.float64, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([tau], lr=lr)
    losses: list[float] = []
    with torch.enable_grad():
        for _ in range(int(steps)):
            optimizer.zero_grad()
            pose = rigid_inverse(se3_exp(tau) @ w2c)
            camera = CameraBatch(pose[None].float(), K.to(device)[None], width, height)
            rendered = render(scene, camera, background=background, near=near, backend=backend,
                              differentiable=True)[0][0]
            loss = photometric_loss(rendered, target, structure_weight, mse_weight)
            if not loss.requires_grad:
                raise ValueError("refine_pose: no Gaussian is visible from the pose, so the loss does not depend "
                                 "on it; check the initial pose and that the Gaussians are in its world frame")
            loss.backward()
            losses.append(float(loss.detach()))
            optimizer.step()
            with torch.no_grad():
                w2c = se3_exp(tau) @ w2c
                tau.zero_()
            if progress is not None:
                progress(1)
    return rigid_inverse(w2c).to(device=c2w_in.device, dtype=torch.float32), losses
