"""Two unposed photos -> 3D Gaussians and the two views' cameras: VideoScene's demo procedure.

Plain torch (+ OpenCV through :mod:`.pose`), importable without ComfyUI. The steps of
``noposplat/src/app.py`` and ``ModelWrapper.predict`` (hanyang-21/VideoScene 70e9c84):

1. :func:`~.noposplat.prepare_images`: each photo centre-cropped to a square and resized
   (bilinear) to ``size`` (512 in the release; the borders outside the centre square are cut).
2. :class:`~.noposplat.NoPoSplat` with the release's intrinsics fx = fy = 0.8, cx = cy = 0.5
   (normalised) for both views: per-pixel Gaussians of both views in view 1's camera frame.
3. For view 2 and then view 1 (the demo re-estimates view 1 too, instead of fixing it at the
   identity): :func:`~.pose.pnp_pose` on the view's own predicted centres whose opacity exceeds
   ``threshold``, then ``steps`` Adam steps of :func:`~.pose.refine_pose` through the pack's
   rasteriser against the view's (cropped, resized) photo.

``size``, ``steps``, ``lr`` and ``threshold`` travel together as :class:`TwoPhotoSettings`.

Gaussians with opacity below the rasteriser's ``1/255`` are left out of the result
(:data:`MIN_OPACITY`): the renderer culls them anyway, so every render (and the refinement) is
the same with or without them. The original keeps all ``2 * size^2``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..nodes.cameras.geometry import CameraBatch
from ..nodes.splats.gaussians import GaussianScene
from ..nodes.splats.render import ALPHA_MIN
from . import pose
from .noposplat import DEFAULT_INTRINSICS, IMAGE_SIZE, NoPoSplat, prepare_images

MIN_OPACITY = ALPHA_MIN
"""Gaussians below this opacity are dropped: the rasteriser skips contributions under 1/255."""


@dataclass(frozen=True)
class TwoPhotoSettings:
    """The knobs of :func:`two_photos_to_gaussians` (defaults: the release demo's).

    ``size``: side in pixels of the square both photos are centre-cropped and resized to (a
    multiple of NoPoSplat's 16-pixel patch; the cameras have this size). ``steps``: Adam steps
    of photometric pose refinement per view (0 keeps the PnP poses). ``lr``: their learning
    rate (rotation in radians, translation in scene units). ``threshold``: PnP uses the pixels
    whose Gaussian opacity (0..1) exceeds this.
    """

    size: int = IMAGE_SIZE
    steps: int = pose.REFINE_STEPS
    lr: float = pose.REFINE_LR
    threshold: float = pose.OPACITY_THRESHOLD


@dataclass
class ViewPose:
    """One view's pose: ``pnp_c2w`` from PnP (``inliers`` of the ``used`` pixels whose opacity
    exceeds the threshold), ``c2w`` after refinement, ``losses`` the loss before every step."""

    pnp_c2w: torch.Tensor
    c2w: torch.Tensor
    inliers: int
    used: int
    losses: list[float]
    note: str = ""


class ViewPoseError(ValueError):
    """A view's pose could not be found: ``view`` (0 or 1), ``stage`` ("PnP" or "refinement")."""

    def __init__(self, view: int, stage: str, reason: str):
        self.view, self.stage, self.reason = view, stage, reason
        super().__init__(f"view {view + 1}: {stage} failed: {reason}")


@dataclass
class TwoPhotoScene:
    """The result: ``gaussians`` in view 1's camera frame (OpenCV axes), ``cameras`` the two
    views (``size x size``, the intrinsics the network assumed, the refined poses), ``images``
    the cropped, resized photos ``[2, size, size, 3]``, ``views`` the per-view details and
    ``predicted`` the number of Gaussians before dropping the invisible ones."""

    gaussians: GaussianScene
    cameras: CameraBatch
    images: torch.Tensor
    views: list[ViewPose]
    predicted: int


def stage_count(steps: int) -> int:
    """Progress units of :func:`two_photos_to_gaussians`: the network, then per view its PnP and its steps."""
    return 1 + 2 * (1 + int(steps))


def two_photos_to_gaussians(network: NoPoSplat, image_a: torch.Tensor, image_b: torch.Tensor,
                            settings: TwoPhotoSettings = TwoPhotoSettings(), device: torch.device | None = None,
                            backend: str = "auto", tolerate_failures: bool = False,
                            progress: Optional[Callable[[int], None]] = None) -> TwoPhotoScene:
    """Gaussians and the two views' cameras from two photos ``[H,W,3]`` in 0..1 (any sizes),
    with the knobs of ``settings``.

    ``progress(n)`` is called after the network, after each PnP and after every refinement
    step (one unit each), :func:`stage_count` units in all; an exception it raises (Cancel)
    stops the procedure. ``settings.steps = 0`` keeps the PnP poses. Raises
    :class:`ViewPoseError` when a view's pose cannot be found (PnP finds none, or no Gaussian is
    visible from it), unless
    ``tolerate_failures`` (for smoke weights, whose random geometry is degenerate): then the view
    keeps the identity (failed PnP) or its PnP pose (failed refinement) and says so in ``note``.
    """
    size, steps, lr, threshold = settings.size, settings.steps, settings.lr, settings.threshold
    report = progress or (lambda n: None)
    device = device or next(network.parameters()).device
    images = prepare_images(image_a, image_b, size).to(device)  # [1, 2, 3, S, S]
    K = torch.tensor(DEFAULT_INTRINSICS, dtype=torch.float32)
    with torch.inference_mode():
        out = network(images, K.to(device).expand(1, 2, 3, 3))
    out = type(out)(**{k: v.clone() for k, v in vars(out).items()})  # leave inference mode for autograd
    report(1)
    full = out.scene(0)
    gaussians = full.select(full.opacities >= MIN_OPACITY)
    photos = images[0].permute(0, 2, 3, 1).float()  # [2, S, S, 3]
    views: list[Optional[ViewPose]] = [None, None]
    for view in (1, 0):  # the demo's order: view 2, then view 1 itself
        note = ""
        try:
            start, inliers, used = pose.pnp_pose(out.means[0, view].float(), out.opacities[0, view].float(), size,
                                                 size, K, threshold, return_inliers=True)
        except ValueError as exc:
            if not tolerate_failures:
                raise ViewPoseError(view, "PnP", str(exc)) from None
            start, inliers, used, note = torch.eye(4), 0, 0, f"PnP failed ({exc}); identity kept"
        report(1)
        try:
            c2w, losses = (pose.refine_pose(gaussians, photos[view], start, K, steps=steps, lr=lr, backend=backend,
                                            progress=report) if steps else (start, []))
        except ValueError as exc:
            if not tolerate_failures:
                raise ViewPoseError(view, "refinement", str(exc)) from None
            c2w, losses, note = start, [], (note or f"refinement skipped ({exc}); PnP pose kept")
            report(steps)
        views[view] = ViewPose(start.cpu(), c2w.cpu(), inliers, used, losses, note)
    cameras = CameraBatch(torch.stack([v.c2w for v in views]), K.expand(2, 3, 3).clone(), size, size)
    return TwoPhotoScene(gaussians.to("cpu"), cameras, photos.cpu(), views, len(full))
