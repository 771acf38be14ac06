"""VMem generation nodes: one navigation step per queue run, or a whole list of actions.

Both continue the walk stored in a named surfel memory (``CVS Surfel Memory``); undo and
reset are that memory's nodes. The memory file is saved only after every step of the
run succeeded: a failed or cancelled run leaves it exactly as it was.
"""
from __future__ import annotations

import dataclasses
import logging

import torch

from ..nodes.comfy import runtime
from ..nodes.cameras import trajectories
from ..nodes.cameras.geometry import CAMERA_TYPE, CameraBatch, check_cameras, intrinsics_from_fov
from ..nodes.encoders.clip import ComfyCLIPVisionEmbedder, TransformersCLIPEmbedder
from ..nodes.comfy.errors import NodeInputError, check_image
from ..nodes.comfy.families import ModelHandle, check_model
from .depth_family import FAMILY as DEPTH_FAMILY, depth_estimator, output_kind
from .family import FAMILIES
from .navigation import (FIT_MODES, NavigationSettings, Navigator, WalkSettings, crop_region, fit_square,
                         square_cameras)
from ..nodes.comfy.state_files import always_rerun
from .nodes import CATEGORY, MEMORY_TYPE, _changing, _check_bank, _save, _summary, latent_codec
from .pipeline import GenerationError, GenerationSettings
from .pointmaps import DepthModelProvider
from .retrieval import RetrievalSettings
from .sampling import GUIDERS
from .surfels import SurfelInputError

log = logging.getLogger("consistent_video")

ACTIONS = tuple(name for name in trajectories.ACTIONS if name != "move_back")
# VMem retrieves for forward / backward moves without the diversity rule, always including
# the most recent view (the previous step's last frame); turns use the defaults.
_G = GenerationSettings()


def _generation_inputs() -> dict:
    """Inputs shared by both generation nodes."""
    return {
        "model": ("CVS_MODEL", {"tooltip": "VMem (or SEVA) weights from 'CVS Model Loader' (family vmem or seva)."}),
        "depth_model": ("CVS_MODEL", {"tooltip": "Depth Anything V2 from 'CVS Model Loader': the geometry of new "
                                                 "views, which places them in the surfel memory."}),
        "memory": (MEMORY_TYPE, {"tooltip": "The walk's memory from 'CVS Surfel Memory' (a name = a walk; 'reset' "
                                            "there starts anew, 'CVS Surfel Memory Undo' takes steps back)."}),
        "steps": ("INT", {"default": _G.steps, "min": 1, "max": 1000, "tooltip": "Sampling steps per call "
                                                                                   "(VMem: 50)."}),
        "cfg": ("FLOAT", {"default": _G.cfg, "min": 0.1, "max": 30.0, "step": 0.1, "tooltip":
                "Guidance scale (VMem: 2.0)."}),
        "cfg_min": ("FLOAT", {"default": _G.cfg_min, "min": 0.1, "max": 30.0, "step": 0.1, "tooltip":
                    "Guidance for target views that nearly repeat a context camera (VMem: 1.2)."}),
        "guider": (list(GUIDERS), {"default": _G.guider, "tooltip": "multiview: cfg_min for near-duplicate cameras "
                   "(VMem); multiview_temporal: also ramps from cfg_min next to context frames up to cfg; vanilla: "
                   "cfg everywhere."}),
        "seed": ("INT", {"default": 42, "min": 0, "max": 2**63 - 1, "control_after_generate": False, "tooltip":
                 "Noise seed of the walk; each step uses seed + frames in memory, so a walk is reproducible."}),
        "resolution": ("INT", {"default": 576, "min": 64, "max": 2048, "step": 64, "tooltip":
                       "Square working size in pixels (VMem: 576). Fixed for a walk once it has started."}),
        "fit": (list(FIT_MODES), {"default": "crop", "tooltip": "How a non-square image becomes square: crop the "
                "centre (VMem) or pad (the whole picture; outputs are cut back to its shape)."}),
        "fov": ("FLOAT", {"default": 54.0, "min": 5.0, "max": 170.0, "step": 0.5, "tooltip":
                "Field of view in degrees of the square frames when the walk starts (VMem: 54)."}),
        "context_views": ("INT", {"default": 4, "min": 1, "max": 7, "tooltip": "Memorised views each call is "
                          "conditioned on (VMem: 4; 8 frames per call, the rest are new views)."}),
        "camera_scale": ("FLOAT", {"default": _G.camera_scale, "min": 0.01, "max": 100.0, "step": 0.01,
                         "tooltip": "Camera normalisation scale of the network (VMem: 2.0)."}),
        "start_depth": ("FLOAT", {"default": 2.0, "min": 0.01, "max": 1000.0, "step": 0.01, "tooltip":
                        "Median depth of the starting image in scene units (sets what a move of 1 means)."}),
    }


def _optional_inputs() -> dict:
    return {
        "image": ("IMAGE", {"tooltip": "The starting image (needed while the memory is empty). Later runs only use its shape, "
                                      "to cut 'pad' outputs back to it."}),
        "vae": ("VAE", {"tooltip": "Optional: ComfyUI's SD 2.1 VAE instead of the model folder's vae/."}),
        "clip_vision": ("CLIP_VISION", {"tooltip": "Optional: ComfyUI's CLIP ViT-H/14 vision model instead of the "
                                                   "model folder's image_encoder/."}),
    }


def _walk_settings(*, steps, cfg, cfg_min, guider, seed, resolution, fit, fov, context_views, camera_scale,
                   start_depth, poses_per_action) -> WalkSettings:
    """The generation inputs both nodes share, by name, as the one settings object of the run."""
    generation = GenerationSettings(steps=steps, cfg=cfg, cfg_min=cfg_min, guider=guider, camera_scale=camera_scale)
    return WalkSettings(NavigationSettings(generation, RetrievalSettings(num_views=context_views), seed=seed),
                        resolution=resolution, fit=fit, fov=fov, start_depth=start_depth,
                        poses_per_action=poses_per_action)


def _prepare(node: str, settings: WalkSettings, model, depth_model, vae=None, clip_vision=None,
             progress=None) -> Navigator:
    """The navigator of a run: the inputs 'model' and 'depth_model' checked, the settings
    validated (errors name the node's input), the VAE and CLIP image encoder chosen and the
    networks loaded on the device."""
    handle: ModelHandle = check_model(node, "model", model, FAMILIES)
    depth = check_model(node, "depth_model", depth_model, DEPTH_FAMILY)
    try:
        settings.navigation.validate()
    except (GenerationError, SurfelInputError) as exc:
        raise NodeInputError(node, exc.argument, exc.problem, exc.expected) from None
    codec, vae_modules = latent_codec(node, handle, vae)
    modules = [handle.modules["unet"], *vae_modules]
    if clip_vision is not None:
        try:
            embedder = ComfyCLIPVisionEmbedder(clip_vision, expected_dim=handle.modules["unet"].params.context_dim)
        except (ValueError, AttributeError) as exc:
            raise NodeInputError(node, "clip_vision", str(exc), "ComfyUI's CLIP ViT-H/14 vision model") from None
    elif "image_encoder" in handle.modules:
        embedder = TransformersCLIPEmbedder(handle.modules["image_encoder"])
        modules.append(handle.modules["image_encoder"])
    else:
        raise NodeInputError(node, "clip_vision", f"is not connected and {handle.source} has no image_encoder/",
                             "a CLIP_VISION input (ViT-H/14, 'Load CLIP Vision') or image_encoder/config.json + "
                             "image_encoder/model.safetensors in the model folder")
    if embedder.dim != handle.modules["unet"].params.context_dim:
        raise NodeInputError(node, "clip_vision" if clip_vision is not None else "model",
                             f"gives {embedder.dim}-d image embeddings",
                             f"{handle.modules['unet'].params.context_dim}-d, the UNet's context width")
    if handle.is_smoke or depth.is_smoke:
        log.warning("%s: SMOKE weights (%s): the generated views are noise.", node,
                    handle.source if handle.is_smoke else depth.source)
    runtime.load_to_device(modules, handle.device)
    provider = DepthModelProvider(depth_estimator(depth, chunk=8), output=output_kind(depth),
                                  start_depth=settings.start_depth)
    return Navigator(handle.modules["unet"], codec, embedder, provider, handle.device, handle.dtype,
                     settings.navigation, progress=progress)


def _start(node: str, navigator: Navigator, store, image, settings: WalkSettings, camera: CameraBatch | None = None):
    """Memorise the starting image (with ``camera``, default the identity with the settings'
    ``fov``) if the walk has not started; return that step's result (None if it had) and the
    region of the picture in the square frames."""
    resolution = settings.resolution
    if image is not None:
        image = check_image(node, "image", image)
        if image.shape[0] != 1:
            log.warning("%s: 'image' has %d frames; the walk starts from the first.", node, image.shape[0])
        square, region = fit_square(image[:1].float().cpu(), resolution, settings.fit)
    else:
        square, region = None, (0, 0, resolution, resolution)
    if store.num_frames:
        if store.camera_size != (resolution, resolution):
            raise NodeInputError(node, "resolution", f"is {resolution}", f"{store.camera_size[0]}, the size this "
                                 "walk started with (or reset the memory)")
        return None, region
    if square is None:
        raise NodeInputError(node, "image", "is not connected and the memory is empty",
                             "a starting image for a new walk")
    if camera is None:
        camera = CameraBatch(torch.eye(4)[None], intrinsics_from_fov(settings.fov, resolution, resolution)[None],
                             resolution, resolution)
    return navigator.start(store, square, camera), region


class CVS_VMemNavigate:
    DISPLAY_NAME = "CVS VMem Navigate"
    CATEGORY = CATEGORY
    DESCRIPTION = ("One step of a VMem walk per queue run: move the camera (turn, look, move) from where the walk "
                   "is, retrieve the memorised views that saw the same surfaces, generate the new views with the "
                   "SEVA-architecture model and memorise them. The first run starts the walk from 'image'. The memory "
                   "is saved only when the step completed; Cancel leaves it unchanged. Runs on every queue.")
    RETURN_TYPES = ("IMAGE", CAMERA_TYPE, MEMORY_TYPE, "STRING")
    RETURN_NAMES = ("images", "cameras", "memory", "info")
    OUTPUT_TOOLTIPS = ("The new views of this step (after the starting image on the first run).",
                       "Their cameras (OpenCV, the walk's world).", "The memory, saved.",
                       "What happened, with the context views used.")
    FUNCTION = "navigate"
    IS_CHANGED = classmethod(always_rerun)

    @classmethod
    def INPUT_TYPES(cls):
        inputs = _generation_inputs()
        inputs.update({
            "action": (list(ACTIONS), {"default": "turn_left", "tooltip": "The move of this step, from the walk's "
                                                                          "last camera."}),
            "angle": ("FLOAT", {"default": 10.0, "min": -180.0, "max": 180.0, "step": 0.5, "tooltip":
                      "Degrees for turn_* and look_* (VMem turns 5 or 10 per click)."}),
            "distance": ("FLOAT", {"default": 0.25, "min": -100.0, "max": 100.0, "step": 0.01, "tooltip":
                         "Scene units for move_* (the starting image's median depth is 'start_depth')."}),
            "poses_per_action": ("INT", {"default": 4, "min": 1, "max": 7, "tooltip":
                                 "New views along the move (VMem: 4)."}),
        })
        optional = _optional_inputs()
        optional["cameras"] = (CAMERA_TYPE, {"tooltip": "Explicit target cameras in the walk's world instead of "
                                                        "the action (split into calls as needed)."})
        return {"required": inputs, "optional": optional}

    def navigate(self, model, depth_model, memory, steps, cfg, cfg_min, guider, seed, resolution, fit, fov,
                 context_views, camera_scale, start_depth, action, angle, distance, poses_per_action, image=None,
                 vae=None, clip_vision=None, cameras=None):
        node = self.DISPLAY_NAME
        bank = _check_bank(node, memory)
        if action not in ACTIONS:
            raise NodeInputError(node, "action", f"is '{action}'", f"one of {', '.join(ACTIONS)}")
        amount = angle if action in trajectories.ANGLE_ACTIONS else distance
        settings = _walk_settings(steps=steps, cfg=cfg, cfg_min=cfg_min, guider=guider, seed=seed,
                                  resolution=resolution, fit=fit, fov=fov, context_views=context_views,
                                  camera_scale=camera_scale, start_depth=start_depth,
                                  poses_per_action=poses_per_action)
        return _run(node, bank, settings, model, depth_model, image=image, vae=vae, clip_vision=clip_vision,
                    actions=[(action, amount)], cameras=cameras, cameras_name="cameras")


class CVS_VMemWalk:
    DISPLAY_NAME = "CVS VMem Walk"
    CATEGORY = CATEGORY
    DESCRIPTION = ("A whole VMem walk in one run: a list of actions (or a planned camera path) is generated step by "
                   "step, each step conditioned on the memorised views that saw the same surfaces, so coming back "
                   "to a place shows it again. Outputs the frames as a video-ready IMAGE batch and their cameras. "
                   "The memory is saved once, after the last step; Cancel leaves it unchanged.")
    RETURN_TYPES = ("IMAGE", CAMERA_TYPE, MEMORY_TYPE, "STRING")
    RETURN_NAMES = ("images", "cameras", "memory", "info")
    OUTPUT_TOOLTIPS = ("The walk's frames of this run (starting with the starting image when the walk starts).",
                       "Their cameras.", "The memory, saved.", "What happened, with the context views per call.")
    FUNCTION = "walk"
    IS_CHANGED = classmethod(always_rerun)

    @classmethod
    def INPUT_TYPES(cls):
        inputs = _generation_inputs()
        inputs.update({
            "actions": ("STRING", {"multiline": True, "default": "turn_left 20, turn_left 20, turn_right 20, "
                                   "turn_right 20", "tooltip": "Actions separated by commas or new lines: a name "
                                   f"({', '.join(ACTIONS)}) and an amount (degrees or scene units). Ignored when "
                                   "'path' is connected."}),
            "poses_per_action": ("INT", {"default": 4, "min": 1, "max": 7, "tooltip":
                                 "New views per action (VMem: 4); each action is one generation call."}),
        })
        optional = _optional_inputs()
        optional["path"] = (CAMERA_TYPE, {"tooltip": "A planned camera path instead of the actions. When the walk "
                                          "starts, its first camera is the starting image's view."})
        return {"required": inputs, "optional": optional}

    def walk(self, model, depth_model, memory, steps, cfg, cfg_min, guider, seed, resolution, fit, fov,
             context_views, camera_scale, start_depth, actions, poses_per_action, image=None, vae=None,
             clip_vision=None, path=None):
        node = self.DISPLAY_NAME
        bank = _check_bank(node, memory)
        parsed = None
        if path is None:
            try:
                parsed = trajectories.parse_actions(actions)
            except ValueError as exc:
                raise NodeInputError(node, "actions", str(exc), "e.g. 'turn_left 30, move_forward 0.5'") from None
        settings = _walk_settings(steps=steps, cfg=cfg, cfg_min=cfg_min, guider=guider, seed=seed,
                                  resolution=resolution, fit=fit, fov=fov, context_views=context_views,
                                  camera_scale=camera_scale, start_depth=start_depth,
                                  poses_per_action=poses_per_action)
        return _run(node, bank, settings, model, depth_model, image=image, vae=vae, clip_vision=clip_vision,
                    actions=parsed, cameras=path, cameras_name="path", path_starts_walk=True)


def _run(node: str, bank, settings: WalkSettings, model, depth_model, *, image=None, vae=None, clip_vision=None,
         actions=None, cameras=None, cameras_name: str = "cameras", path_starts_walk: bool = False):
    """The shared body: start the walk if needed, plan the calls, run them, save once.

    ``settings`` hold every knob of the run; ``model`` / ``depth_model`` / ``vae`` /
    ``clip_vision`` / ``image`` are the node's inputs of those names. ``actions`` (a parsed
    list) or ``cameras`` (targets, the input ``cameras_name``) give the moves; with
    ``path_starts_walk`` the first camera of ``cameras`` is the starting image's view when
    the walk starts in this run.
    """
    resolution, poses_per_action = settings.resolution, settings.poses_per_action
    if resolution % 64:
        raise NodeInputError(node, "resolution", f"is {resolution}", "a multiple of 64")
    planned = None
    if cameras is not None:
        planned = square_cameras(check_cameras(node, cameras_name, cameras), resolution, settings.fit)
    with _changing(node, bank) as store, runtime.Progress(None, node) as bar:
        done = [0]

        def progress(n):
            done[0] += n
            bar.update(n)

        navigator = _prepare(node, settings, model, depth_model, vae, clip_vision, progress=progress)
        try:
            start_camera = planned[:1] if planned is not None and path_starts_walk else None
            started, region = _start(node, navigator, store, image, settings, start_camera)
            if planned is not None:
                targets = planned[1:] if started is not None and path_starts_walk else planned
                segments = [targets] if len(targets) else []
            else:
                last = store.cameras(torch.tensor([store.num_frames - 1]))
                poses = trajectories.navigate(actions, poses_per_action, start=last)
                segments = [poses[i * poses_per_action:(i + 1) * poses_per_action] for i in range(len(actions))]
            calls = navigator.plan(store, segments)
            bar.total = done[0] + len(calls) * navigator.units_per_step()
            results = [started] if started is not None else []
            moves = dataclasses.replace(navigator.settings.retrieval, use_nms=False, include_most_recent=True)
            for number, targets in calls:
                moving = planned is None and trajectories.ACTIONS[actions[number][0]][0] == "forward"
                results.append(navigator.step(store, targets, moves if moving else None))
        except (GenerationError, SurfelInputError) as exc:
            name = {"latents": "vae" if vae is not None else "model"}.get(exc.argument, exc.argument)
            raise NodeInputError(node, name, exc.problem, exc.expected) from None
        bar.update(0)  # the last Cancel point: after it the file is replaced
        bank = _save(bank, store)
    images = crop_region(torch.cat([r.images for r in results]), region) if results else \
        torch.zeros(0, resolution, resolution, 3)
    out_cams = (CameraBatch.cat([r.cameras for r in results]) if results
                else store.cameras(torch.tensor([store.num_frames - 1])))
    context = [",".join(str(int(i)) for i in r.context) for r in results if r.context.numel()]
    generated = sum(len(r.cameras) for r in results) - (started is not None)
    info = f"generated {generated} view(s) in {len(calls)} call(s)"
    if context:
        info += "; context views per call: " + " | ".join(context)
    info += f"; memory '{bank.name}' now holds {_summary(store)}"
    if started is not None:
        info = "started the walk from the image; " + info
    return images, out_cams, bank, info


_NODES = (CVS_VMemNavigate, CVS_VMemWalk)
NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in _NODES}
NODE_DISPLAY_NAME_MAPPINGS = {cls.__name__: cls.DISPLAY_NAME for cls in _NODES}
