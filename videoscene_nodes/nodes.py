"""VideoScene node: refine a coarse render (splat render, or any video) in one network pass.

Thin: the pass is :mod:`.pipeline`, the size mapping :mod:`.fit`, the weights :mod:`.family`.
The splat loader and renderer that feed it are shared nodes (:mod:`..nodes.splat_nodes`).
"""
from __future__ import annotations

import logging

import torch

from ..nodes import runtime
from ..nodes.errors import NodeInputError, check_image
from ..nodes.families import check_model
from .family import NAME, describe_report
from .fit import MODES, Placement, model_frame_indices, output_frame_indices
from .pipeline import DEFAULT_TIMESTEP, MVSPLAT_TIMESTEP, geometry, refine

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


_NODES = (CVS_VideoSceneRefine,)
NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in _NODES}
NODE_DISPLAY_NAME_MAPPINGS = {cls.__name__: cls.DISPLAY_NAME for cls in _NODES}
