"""VideoScene node: refine a coarse render (splat render, or any video) in one network pass.

Thin: the pass is :mod:`.pipeline`, the size mapping :mod:`.fit`, the weights :mod:`.family`.
The splat loader and renderer that feed it are shared nodes (:mod:`..nodes.splats.splat_nodes`).
"""
from __future__ import annotations

import logging

import torch

from ..nodes.comfy import runtime
from ..nodes.cameras.geometry import CAMERA_TYPE
from ..nodes.splats.splat_nodes import GAUSSIANS_TYPE
from ..nodes.comfy.errors import NodeInputError, check_image
from ..nodes.comfy.families import check_model
from .family import NAME, describe_report
from .fit import MODES, Placement, model_frame_indices, output_frame_indices
from .noposplat import IMAGE_SIZE
from .noposplat_family import NAME as NOPOSPLAT
from .pipeline import DEFAULT_TIMESTEP, MVSPLAT_TIMESTEP, geometry, refine
from .pose import OPACITY_THRESHOLD, REFINE_LR, REFINE_STEPS
from .two_photos import TwoPhotoSettings, ViewPoseError, stage_count, two_photos_to_gaussians

log = logging.getLogger("consistent_video")

CATEGORY = "Consistent Video/VideoScene"


def _condition(node: str, name: str, image, placement: Placement) -> torch.Tensor | None:
    """An optional first/last view: one IMAGE of the video's size, placed like the video; [3, H, W] in [-1, 1]."""
    if image is None:
        return None
    image = check_image(node, name, image)
    if image.shape[0] != 1:
        raise NodeInputError(node, name, f"has {image.shape[0]} images", "one image")
    if tuple(image.shape[1:3]) != (placement.height, placement.width):
        raise NodeInputError(node, name, f"is {image.shape[2]}x{image.shape[1]}",
                             f"the video's size, {placement.width}x{placement.height}")
    return placement.to_model(image.permute(0, 3, 1, 2).float())[0] * 2 - 1


def _map_back(refined: torch.Tensor, source: torch.Tensor, placement: Placement, model_frames: int,
              chunk: int = 16) -> torch.Tensor:
    """The refined model frames ``[M, 3, h, w]`` (0..1) as IMAGE ``[F, H, W, 3]`` at the input's
    frame count and size, ``chunk`` frames at a time (a long input is never duplicated whole)."""
    frames = source.shape[0]
    pick = output_frame_indices(frames, model_frames)
    result = torch.empty(frames, placement.height, placement.width, 3)
    for start in range(0, frames, chunk):
        rows = slice(start, min(start + chunk, frames))
        back = placement.from_model(refined[pick[rows]], source[rows])
        result[rows] = back.clamp(0, 1).permute(0, 2, 3, 1)
    return result


class CVS_VideoSceneRefine:
    DISPLAY_NAME = "CVS VideoScene Refine"
    CATEGORY = CATEGORY
    DESCRIPTION = ("VideoScene: turns a coarse 3D render (e.g. from 'CVS Render Splats') into a clean, consistent video "
                   "in ONE pass of the CogVideoX interpolation transformer: the render is noised to a fixed timestep "
                   "and denoised once, conditioned on its first and last frames. Any length (2 frames or more) and "
                   "aspect: it is resampled to the model's 49 frames at 480x720 without stretching, and the result "
                   "mapped back to the input's frame count and size.")
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("video", "info")
    OUTPUT_TOOLTIPS = ("The refined video, with the input's frame count and size.", "What was done.")
    FUNCTION = "refine"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("CVS_MODEL", {"tooltip": "VideoScene weights from 'CVS Model Loader' (family videoscene)."}),
                "video": ("IMAGE", {"tooltip": "The coarse render to refine: at least 2 frames, any size."}),
                "timestep": ("INT", {"default": DEFAULT_TIMESTEP, "min": 0, "max": 999, "tooltip":
                             f"How far the render is noised before the single denoising pass (0..999): higher "
                             f"changes more. VideoScene uses {DEFAULT_TIMESTEP} for splat renders from two views, "
                             f"{MVSPLAT_TIMESTEP} for MVSplat renders."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1, "tooltip":
                         "Seed of the added noise (the same seed gives the same video on any device)."}),
                "fit": (list(MODES), {"default": "pad", "tooltip":
                        "How a frame of another aspect meets the model's 480x720: 'pad' fits it inside (black bars, "
                        "all of it refined); 'crop' fills the frame and cuts the overflow (the cut border keeps the "
                        "input's pixels). Never stretched."}),
                "vae_tiling": ("BOOLEAN", {"default": True, "tooltip":
                               "Encode/decode in tiles: much less GPU memory at 480x720, tiny seams possible."}),
            },
            "optional": {
                "first_image": ("IMAGE", {"tooltip": "The view the path starts at (e.g. a real input photo), the "
                                                     "video's size; default: the video's first frame."}),
                "last_image": ("IMAGE", {"tooltip": "The view the path ends at, the video's size; default: the "
                                                    "video's last frame."}),
            },
        }

    def refine(self, model, video, timestep, seed, fit, vae_tiling, first_image=None, last_image=None):
        node = self.DISPLAY_NAME
        handle = check_model(node, "model", model, NAME)
        video = check_image(node, "video", video)
        if video.shape[0] < 2:
            raise NodeInputError(node, "video", f"has {video.shape[0]} frame", "at least 2 frames (the refiner is "
                                 "conditioned on the first and the last)")
        if fit not in MODES:
            raise NodeInputError(node, "fit", f"is '{fit}'", f"one of {', '.join(MODES)}")
        if not 0 <= int(timestep) <= 999:
            raise NodeInputError(node, "timestep", f"is {timestep}", "0..999")
        transformer, vae = handle.modules["transformer"], handle.modules["vae"]
        shape = geometry(transformer, vae)
        frames = video.shape[0]
        placement = Placement.plan(video.shape[1], video.shape[2], shape.height, shape.width, fit)
        first = _condition(node, "first_image", first_image, placement)
        last = _condition(node, "last_image", last_image, placement)
        if handle.is_smoke:
            log.warning("%s: %s holds SMOKE weights (tiny, random): the video is noise.", node, handle.source)
        source = video.permute(0, 3, 1, 2).float().cpu()  # [F, 3, H, W] in 0..1
        model_input = placement.to_model(source[model_frame_indices(frames, shape.frames)]) * 2 - 1
        first = model_input[0] if first is None else first
        last = model_input[-1] if last is None else last
        runtime.load_to_device(handle.modules.values(), handle.device)
        (vae.enable_tiling if vae_tiling else vae.disable_tiling)()
        with runtime.Progress(4, node) as bar, torch.inference_mode():
            out = refine(transformer, vae, handle.extra["scheduler"], handle.extra["prompt_embeds"], model_input,
                         first, last, int(timestep), int(seed), progress=bar.update)
        result = _map_back(((out.cpu() + 1) / 2).clamp(0, 1), source, placement, shape.frames)
        info = (f"refined {frames} frames of {video.shape[2]}x{video.shape[1]} in one pass at timestep {timestep} "
                f"(model: {shape.frames} frames of {shape.width}x{shape.height}, fit '{fit}'); "
                f"{describe_report(handle.extra['report'])}" + ("; SMOKE weights: noise" if handle.is_smoke else ""))
        return result, info


SIZE_STEP = 16
"""NoPoSplat's patch size: the working size must be a multiple of it."""
IDENTICAL_TOLERANCE = 1.0 / 512
"""Photos whose pixels all differ by less than half an 8-bit level count as identical."""


def _photo(node: str, name: str, image) -> torch.Tensor:
    """One IMAGE ``[1,H,W,3]`` as ``[H,W,3]`` float32 on the CPU."""
    if image is None:
        raise NodeInputError(node, name, "is missing", "a photo (IMAGE); the node needs two photos of one place, "
                             "image_a and image_b")
    image = check_image(node, name, image)
    if image.shape[0] != 1:
        raise NodeInputError(node, name, f"has {image.shape[0]} images",
                             "exactly one photo per input (the first in image_a, the second in image_b; pick one "
                             "image of a batch with 'ImageFromBatch')")
    return image[0].float().cpu()


def _two_photo_settings(node: str, size, refine_steps, learning_rate, opacity_threshold) -> TwoPhotoSettings:
    """The numeric inputs checked (also used by the declared-range test) and made the core's
    settings; a learning rate of 0 keeps the PnP poses (no refinement steps)."""
    if int(size) != size or not 64 <= size <= 1024 or size % SIZE_STEP:
        raise NodeInputError(node, "size", f"is {size}", f"a multiple of {SIZE_STEP} in 64..1024")
    if int(refine_steps) != refine_steps or not 0 <= refine_steps <= 2000:
        raise NodeInputError(node, "refine_steps", f"is {refine_steps}", "an integer in 0..2000")
    if not 0.0 <= learning_rate <= 1.0:
        raise NodeInputError(node, "learning_rate", f"is {learning_rate}", "0..1")
    if not 0.0 <= opacity_threshold <= 1.0:
        raise NodeInputError(node, "opacity_threshold", f"is {opacity_threshold}", "0..1")
    return TwoPhotoSettings(size=int(size), steps=int(refine_steps) if learning_rate > 0 else 0,
                            lr=float(learning_rate), threshold=float(opacity_threshold))


def _describe_pose(c2w: torch.Tensor) -> str:
    """``centre (x, y, z), rotation a deg`` of a camera-to-world matrix."""
    cos = float(((c2w[:3, :3].double().trace() - 1) / 2).clamp(-1, 1))
    return ("centre (" + ", ".join(f"{v:.3f}" for v in c2w[:3, 3].tolist()) +
            f"), rotation {torch.tensor(cos).acos().rad2deg().item():.2f} deg")


class CVS_VideoSceneTwoPhotos:
    DISPLAY_NAME = "CVS VideoScene Two Photos to Gaussians"
    CATEGORY = CATEGORY
    DESCRIPTION = ("VideoScene's first stage: two unposed photos of one place -> 3D Gaussians (NoPoSplat) and the "
                   "two cameras. Both photos are centre-cropped to squares and resized to 'size'; NoPoSplat predicts "
                   "per-pixel Gaussians of both views in view 1's camera frame (assumed intrinsics fx = fy = 0.8, "
                   "cx = cy = 0.5); each view's pose is then found by PnP on its own predicted Gaussians and refined "
                   "photometrically through the pack's rasteriser, as the original demo does (view 1 included). "
                   "Connect the cameras to 'CVS Camera Path Between' and 'CVS Render Splats', then 'CVS VideoScene "
                   "Refine'.")
    RETURN_TYPES = (GAUSSIANS_TYPE, CAMERA_TYPE, "STRING")
    RETURN_NAMES = ("gaussians", "cameras", "info")
    OUTPUT_TOOLTIPS = ("The Gaussians of both views in view 1's camera frame (OpenCV axes); those below 1/255 "
                       "opacity, which the renderer skips anyway, are left out.",
                       "The two views (image_a, image_b): size x size, the intrinsics NoPoSplat assumed, the "
                       "estimated poses.",
                       "Poses, PnP inliers, refinement losses, Gaussian count.")
    FUNCTION = "predict"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("CVS_MODEL", {"tooltip": "NoPoSplat weights from 'CVS Model Loader' (family noposplat)."}),
                "image_a": ("IMAGE", {"tooltip": "The first photo (one image); the Gaussians are in its camera "
                                                 "frame. Any size: the centre square is used, the borders outside "
                                                 "it are cut (never stretched)."}),
                "image_b": ("IMAGE", {"tooltip": "The second photo of the same place from another viewpoint (one "
                                                 "image), the same size as image_a. The centre square is used, the "
                                                 "borders outside it are cut."}),
                "size": ("INT", {"default": IMAGE_SIZE, "min": 64, "max": 1024, "step": SIZE_STEP, "tooltip":
                         f"The square working size both photos are resized to (after the centre crop), a multiple "
                         f"of {SIZE_STEP}; {IMAGE_SIZE} is NoPoSplat's trained size. The cameras have this size."}),
                "refine_steps": ("INT", {"default": REFINE_STEPS, "min": 0, "max": 2000, "tooltip":
                                 f"Adam steps of photometric pose refinement per view (the original: {REFINE_STEPS}); "
                                 f"0 keeps the PnP poses."}),
                "learning_rate": ("FLOAT", {"default": REFINE_LR, "min": 0.0, "max": 1.0, "step": 0.0001, "tooltip":
                                  f"Adam learning rate of the refinement (rotation in rad, translation in scene "
                                  f"units; the original: {REFINE_LR}); 0 keeps the PnP poses."}),
                "opacity_threshold": ("FLOAT", {"default": OPACITY_THRESHOLD, "min": 0.0, "max": 1.0, "step": 0.01,
                                      "tooltip": f"PnP uses the pixels whose Gaussian is more opaque than this "
                                                 f"(the original: {OPACITY_THRESHOLD})."}),
            },
        }

    def predict(self, model, image_a, image_b, size, refine_steps, learning_rate, opacity_threshold):
        node = self.DISPLAY_NAME
        handle = check_model(node, "model", model, NOPOSPLAT)
        first, second = _photo(node, "image_a", image_a), _photo(node, "image_b", image_b)
        if first.shape != second.shape:
            raise NodeInputError(node, "image_b", f"is {second.shape[1]}x{second.shape[0]} but image_a is "
                                 f"{first.shape[1]}x{first.shape[0]}", "two photos of the same size (resize one, "
                                 "e.g. with 'Upscale Image', or crop both alike)")
        if (first - second).abs().max() < IDENTICAL_TOLERANCE:
            raise NodeInputError(node, "image_b", "is the same photo as image_a: the two photos are identical",
                                 "two photos of one place from different viewpoints")
        settings = _two_photo_settings(node, size, refine_steps, learning_rate, opacity_threshold)
        if handle.is_smoke:
            log.warning("%s: %s holds SMOKE weights (tiny, random): the Gaussians and poses are noise.", node,
                        handle.source)
        network = handle.modules["noposplat"]
        runtime.load_to_device([network], handle.device)
        with runtime.Progress(stage_count(settings.steps), node) as bar, runtime.interruptible(network):
            try:
                result = two_photos_to_gaussians(network, first, second, settings, device=handle.device,
                                                 tolerate_failures=handle.is_smoke, progress=bar.update)
            except ViewPoseError as exc:
                name = "opacity_threshold" if "opacity >" in exc.reason else ("image_a", "image_b")[exc.view]
                raise NodeInputError(node, name, f"gave no usable pose for view {exc.view + 1}: {exc.stage} failed "
                                     f"({exc.reason})", "two photos of one place that overlap, and a threshold "
                                     "that leaves enough opaque Gaussians") from None
        views = []
        for index, view in enumerate(result.views):
            text = (f"view {index + 1}: {_describe_pose(view.c2w)}; PnP {view.inliers}/{view.used} inliers")
            if view.losses:
                text += f", loss {view.losses[0]:.4f} -> {view.losses[-1]:.4f} over {len(view.losses)} steps"
            views.append(text + (f" ({view.note})" if view.note else ""))
        info = (f"{len(result.gaussians)} of {result.predicted} Gaussians (opacity >= 1/255) from two photos "
                f"cropped to squares at {size}x{size}; " + "; ".join(views) +
                ("; SMOKE weights: noise" if handle.is_smoke else ""))
        return result.gaussians, result.cameras, info


_NODES = (CVS_VideoSceneRefine, CVS_VideoSceneTwoPhotos)
NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in _NODES}
NODE_DISPLAY_NAME_MAPPINGS = {cls.__name__: cls.DISPLAY_NAME for cls in _NODES}
