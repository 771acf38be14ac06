"""VideoMV nodes: orbit cameras, object-image preparation, text / image to 24 views.

Thin: the sampling is :mod:`.pipeline`, the networks :mod:`.model`, the weights :mod:`.family`.
"""
from __future__ import annotations

import logging

import torch

from ..nodes.comfy import runtime
from ..nodes.cameras.formats import VIDEOMV_FOV_DEG, to_videomv_cameras
from ..nodes.cameras.geometry import CAMERA_TYPE, CameraBatch, check_cameras, intrinsics_from_fov
from ..nodes.encoders.clip import TransformersCLIPEmbedder
from ..nodes.encoders.clip_text import TransformersCLIPTextEmbedder
from ..nodes.comfy.errors import NodeInputError, check_image, check_mask
from ..nodes.comfy.families import ModelHandle, check_model
from ..nodes.splats.gaussians import GaussianScene
from ..nodes.splats.splat_nodes import GAUSSIANS_TYPE
from ..nodes.encoders.vae import SD_SCALING_FACTOR, DiffusersVAECodec
from . import denoise_3d
from .family import FAMILIES, I2V, LGM_FILE, MANUAL_DOWNLOAD, T2V
from .lgm import to_gaussian_scene
from .pipeline import LATENT_DOWNSCALE, NEGATIVE_PROMPT, Views, ViewSettings, generate, i2v_conditioning, \
    orbit_cameras, square_image, t2v_conditioning
from .prepare import prepare_object
from .schedules import I2V as I2V_DEFAULTS, NUM_STEPS, NUM_VIEWS, RESOLUTION, T2V as T2V_DEFAULTS

log = logging.getLogger("consistent_video")

CATEGORY = "Consistent Video/VideoMV"
OBJECT_FRACTION = 200 / 256  # VideoMV's recenter_i2v: the longest side at 200 px on a 256 canvas
CAMERA_DATA_TYPE = "CVS_VIDEOMV_CAMERA_DATA"
"""ComfyUI type of VideoMV's camera data: a float32 tensor ``[views, 16]``, per view the
row-major 4x4 camera-to-world in VideoMV's axis convention (``to_videomv_cameras``)."""

_MODES_HINT = "the text and image modes are separate checkpoints: pick the family in the loader"
_CAMERAS_OUT = ("The views' cameras (OpenCV camera-to-world, object at the origin; VideoMV's 39.6 degree field of "
                "view), for 3D reconstruction or other CVS camera nodes.")


def _check_mode(node: str, model, family: str) -> ModelHandle:
    """The model input of a sampler node; a model of the other VideoMV mode gets a hint."""
    other_mode = isinstance(model, ModelHandle) and model.family in FAMILIES
    return check_model(node, "model", model, family, _MODES_HINT if other_mode else "")


def _view_cameras(node: str, handle: ModelHandle, cameras, elevation: float, distance: float,
                  resolution: int) -> CameraBatch:
    """The cameras to generate: the ``cameras`` input, else VideoMV's orbit at ``elevation``;
    as many as the network was trained on, with VideoMV's field of view at ``resolution``."""
    views = int(handle.extra["num_views"])
    if cameras is None:
        try:
            return orbit_cameras(views, elevation, distance, 0.0, resolution)
        except ValueError as exc:
            raise NodeInputError(node, "elevation", str(exc)) from None
    cameras = check_cameras(node, "cameras", cameras)
    if len(cameras) != views:
        raise NodeInputError(node, "cameras", f"has {len(cameras)} views, but {handle.source.name} was trained on "
                             f"{views}", f"{views} cameras (e.g. 'CVS VideoMV Orbit Cameras' with views={views})")
    # the network sees only the poses; its views have VideoMV's fixed field of view
    return CameraBatch(cameras.c2w.float(), intrinsics_from_fov(VIDEOMV_FOV_DEG, resolution, resolution),
                       resolution, resolution)


def _settings(node: str, guidance: float, steps: int, seed: int, resolution: int) -> ViewSettings:
    try:
        return ViewSettings(guidance=guidance, steps=steps, seed=seed, resolution=resolution)
    except ValueError as exc:
        name = "steps" if "steps" in str(exc) else "resolution"
        raise NodeInputError(node, name, str(exc)) from None


def _refine_steps(node: str, text, steps: int, enabled: bool) -> tuple:
    """The ``denoise_3d_steps`` input: 0-based loop indices (comma or space separated integers),
    each in ``0..steps-1`` when ``denoise_3d`` is on."""
    expected = f"comma-separated 0-based step indices from 0 to {steps - 1}, e.g. '20, 30, 40' for 50 steps"
    parts = [p for p in str(text).replace(",", " ").split() if p]
    try:
        indices = tuple(sorted(set(int(p) for p in parts)))
    except ValueError:
        raise NodeInputError(node, "denoise_3d_steps", f"is {text!r}, not a list of integers", expected) from None
    if enabled:
        if not indices:
            raise NodeInputError(node, "denoise_3d_steps", "is empty", expected)
        bad = [i for i in indices if not 0 <= i < steps]
        if bad:
            raise NodeInputError(node, "denoise_3d_steps", f"has {', '.join(map(str, bad))}, outside a "
                                 f"{steps}-step run", expected)
    return indices


def _lgm_reconstructor(lgm, progress):
    """LGM as :data:`.denoise_3d.Reconstruct` (Cancel inside its blocks; ``progress(1)`` per call)."""
    def reconstruct(views):
        param = next(lgm.parameters())
        with runtime.interruptible(lgm):
            gaussians = lgm.forward_gaussians(views.to(device=param.device, dtype=param.dtype)).float()
        if progress is not None:
            progress(1)
        return [to_gaussian_scene(g) for g in gaussians]
    return reconstruct


def _empty_scene() -> GaussianScene:
    """No Gaussians (no LGM to reconstruct with)."""
    return GaussianScene(means=torch.zeros(0, 3), scales=torch.zeros(0, 3), rotations=torch.zeros(0, 4),
                         opacities=torch.zeros(0), sh=torch.zeros(0, 1, 3))


def _run(node: str, handle: ModelHandle, build_conditioning, cameras: CameraBatch, settings: ViewSettings,
         use_3d: bool = False, refine_steps: tuple = denoise_3d.REFINE_STEPS):
    """Move the networks to the device, condition, sample and decode, with one progress bar
    (sampling steps, LGM passes, then decoded views) that Cancel stops; with ``use_3d`` the
    3D-aware loop (:func:`.denoise_3d.sample_latents_3d`) at ``refine_steps``. Returns the
    images, cameras, latent and Gaussians (of the last 3D-aware step, else LGM once on 4 views of
    the result; empty without LGM), moved into the cameras' world (:func:`.denoise_3d.lgm_to_world`)."""
    if handle.is_smoke:
        log.warning("%s: %s holds SMOKE weights (tiny, random): the views are noise.", node, handle.source)
    lgm = handle.modules.get("lgm")
    if use_3d and lgm is None:
        raise NodeInputError(node, "denoise_3d", f"is on, but {handle.source} has no LGM "
                             f"({handle.extra.get('lgm_source', 'no lgm_big.* tensors')})",
                             f"off, or LGM's '{LGM_FILE}' from VideoMV's release zip in {handle.source} "
                             f"({MANUAL_DOWNLOAD})")
    runtime.load_to_device(handle.modules.values(), handle.device)
    encoded = 1 if handle.extra["mode"] == "i2v" else 0  # the I2V image goes through the VAE encoder first
    lgm_passes = 2 * len(refine_steps) if use_3d else (1 if lgm is not None else 0)
    with runtime.Progress(encoded + settings.steps + lgm_passes + len(cameras), node) as bar:
        codec = DiffusersVAECodec(handle.modules["vae"], chunk_size=4, progress=bar.update)
        text = TransformersCLIPTextEmbedder(handle.modules["text_encoder"], handle.extra["tokenizer"])
        conditioning = build_conditioning(text, codec)
        quiet_codec = DiffusersVAECodec(handle.modules["vae"], chunk_size=4)  # the LGM passes' VAE work
        reconstruct = None if lgm is None else _lgm_reconstructor(lgm, bar.update)
        refine = denoise_3d.RefineSettings(background=denoise_3d.BACKGROUND[handle.extra["mode"]],
                                           steps=tuple(refine_steps), input_size=settings.resolution,
                                           render_size=2 * settings.resolution)
        if use_3d:
            x, scene = denoise_3d.sample_latents_3d(handle.modules["unet"], handle.extra["mode"], conditioning,
                                                    cameras, settings, quiet_codec, reconstruct, refine,
                                                    progress=bar.update)
            latents = x[0].permute(1, 0, 2, 3).contiguous()
            views = Views(images=codec.decode(latents), latents=latents, cameras=cameras)
        else:
            views = generate(handle.modules["unet"], handle.extra["mode"], conditioning, cameras, codec, settings,
                             progress=bar.update)
            scene = None
            if reconstruct is not None:
                scene = denoise_3d.reconstruct_views(views.latents.permute(1, 0, 2, 3)[None], quiet_codec, cameras,
                                                     reconstruct, refine)
    if scene is None:
        log.warning("%s: %s; the 'gaussians' output is empty (install LGM's '%s' from VideoMV's release zip).",
                    node, handle.extra.get("lgm_source", "no LGM"), LGM_FILE)
        scene = _empty_scene()
    else:  # from LGM's normalised frame into the world of the cameras output (view 0 lines up exactly)
        scene = scene.transformed(denoise_3d.lgm_to_world(cameras))
    latent = {"samples": views.latents / SD_SCALING_FACTOR}  # ComfyUI LATENTs are unscaled VAE latents
    return views.images, views.cameras, latent, scene


def _shared_inputs(defaults) -> dict:
    return {
        "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1, "tooltip": "Noise seed (the same seed gives the "
                                                                             "same views on any device)."}),
        "steps": ("INT", {"default": NUM_STEPS, "min": 1, "max": 1000, "tooltip": "DDIM steps (VideoMV: 50)."}),
        "guidance": ("FLOAT", {"default": defaults.guidance, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip":
                     f"Classifier-free guidance scale (VideoMV: {defaults.guidance:g})."}),
        "elevation": ("FLOAT", {"default": defaults.elevation_deg, "min": -89.9, "max": 89.9, "step": 0.1,
                      "tooltip": f"Orbit elevation in degrees (VideoMV: {defaults.elevation_deg:g}); ignored "
                                 "when 'cameras' is connected."}),
        "distance": ("FLOAT", {"default": defaults.distance, "min": 0.1, "max": 100.0, "step": 0.01, "tooltip":
                     f"Orbit radius (VideoMV: {defaults.distance:g}, the value it was trained with); ignored when "
                     "'cameras' is connected."}),
        "resolution": ("INT", {"default": RESOLUTION, "min": 64, "max": 1024, "step": LATENT_DOWNSCALE, "tooltip":
                       f"Square view size in pixels, a multiple of {LATENT_DOWNSCALE} (the VAE's stride; VideoMV: "
                       "256, its trained size; others degrade)."}),
        "negative_prompt": ("STRING", {"default": NEGATIVE_PROMPT, "multiline": True, "tooltip":
                            "Text of the unconditional branch (VideoMV's fixed negative prompt)."}),
    }


_OPTIONAL_CAMERAS = {"cameras": (CAMERA_TYPE, {"tooltip": "Explicit cameras instead of the default orbit (as many "
                                                         "as the network was trained on: 24), e.g. from 'CVS "
                                                         "VideoMV Orbit Cameras' with another start azimuth."})}
_OPTIONAL_3D = {
    "denoise_3d": ("BOOLEAN", {"default": False, "tooltip": "VideoMV's 3D-aware sampling: at the chosen steps, LGM "
                               "reconstructs Gaussians from 4 views of the current x0 and the 24 renders replace "
                               "it (about twice the cost on a GPU); off = the plain loop."}),
    "denoise_3d_steps": ("STRING", {"default": ", ".join(map(str, denoise_3d.REFINE_STEPS)), "tooltip":
                         "0-based loop indices of the 3D-aware steps, comma separated, each from 0 to steps-1 "
                         "(VideoMV: 20, 30, 40 of a 50-step run); used when denoise_3d is on."}),
}
_OUTPUTS = ("IMAGE", CAMERA_TYPE, "LATENT", GAUSSIANS_TYPE)
_OUTPUT_NAMES = ("images", "cameras", "latent", "gaussians")
_OUTPUT_TIPS = ("The views [24, size, size, 3], in orbit order (azimuth 0, 15, ..., 345 degrees).", _CAMERAS_OUT,
                "The views' latents (SD VAE space, one per view) for ComfyUI's VAE Decode or further sampling.",
                "LGM's Gaussians in the world of the 'cameras' output (the object at the orbit's centre; "
                "rendered from camera 0 they give LGM's view 0): with denoise_3d, the "
                "conditional branch's of the last 3D-aware step, else LGM once on views 0, 6, 12, 18 of the "
                "result; empty when the weights have no LGM. For 'CVS Save Splats' / 'CVS Render Splats'.")


class CVS_VideoMVOrbitCameras:
    DISPLAY_NAME = "CVS VideoMV Orbit Cameras"
    CATEGORY = CATEGORY
    DESCRIPTION = ("VideoMV's camera orbit: views a full turn apart around the object at one elevation, looking at "
                   "it. Outputs the camera batch and VideoMV's flattened camera matrices (16 floats per view in its "
                   "own axis convention: z up, azimuth 0 on +x).")
    RETURN_TYPES = (CAMERA_TYPE, CAMERA_DATA_TYPE)
    RETURN_NAMES = ("cameras", "camera_data")
    OUTPUT_TOOLTIPS = (_CAMERAS_OUT, "VideoMV's per-view camera data [views, 16]: the row-major 4x4 camera-to-world "
                                     "matrices its UNet gets.")
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "views": ("INT", {"default": NUM_VIEWS, "min": 1, "max": 256, "tooltip": "Cameras on the orbit "
                                                                                    "(VideoMV: 24)."}),
            "elevation": ("FLOAT", {"default": T2V_DEFAULTS.elevation_deg, "min": -89.9, "max": 89.9, "step": 0.1,
                          "tooltip": "Degrees above the object's horizontal plane (VideoMV: 15 from text, 5 from "
                                     "an image)."}),
            "distance": ("FLOAT", {"default": T2V_DEFAULTS.distance, "min": 0.01, "max": 1000.0, "step": 0.01,
                         "tooltip": "Orbit radius (VideoMV: 2.0 from text, 1.7 from an image)."}),
            "azimuth_start": ("FLOAT", {"default": 0.0, "min": -360.0, "max": 360.0, "step": 0.5, "tooltip":
                              "Azimuth of the first view in degrees; the others follow every 360/views."}),
            "resolution": ("INT", {"default": RESOLUTION, "min": 8, "max": 4096, "step": 8, "tooltip":
                           "Image size the cameras refer to (VideoMV: 256)."}),
        }}

    def build(self, views, elevation, distance, azimuth_start, resolution):
        node = self.DISPLAY_NAME
        for name, value, ok, expected in (("views", views, views >= 1, "at least 1"),
                                          ("elevation", elevation, abs(elevation) < 90, "strictly between -90 and 90"),
                                          ("distance", distance, distance > 0, "a positive distance"),
                                          ("resolution", resolution, resolution >= 1, "a positive size")):
            if not ok:
                raise NodeInputError(node, name, f"is {value}", expected)
        cameras = orbit_cameras(views, elevation, distance, azimuth_start, resolution)
        return cameras, to_videomv_cameras(cameras)


class CVS_VideoMVPrepareImage:
    DISPLAY_NAME = "CVS VideoMV Prepare Image"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Prepares an object photo for VideoMV image-to-multi-view as its authors did: crop to the "
                   "object's alpha bounding box, scale its longest side to 200 px, centre it on a white 256x256 "
                   "canvas. Takes IMAGE + MASK from any background-removal node.")
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    OUTPUT_TOOLTIPS = ("The object on the canvas [1, size, size, 3].", "Its opacity on the canvas (1 = object).")
    FUNCTION = "prepare"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The object photo (the first frame is used)."}),
                "mask": ("MASK", {"tooltip": "The object's alpha, same size as the image (1 = object), e.g. from a "
                                             "background-removal node or 'CVS Load Image'."}),
                "invert_mask": ("BOOLEAN", {"default": False, "tooltip": "On for ComfyUI's 'Load Image' MASK, "
                                                                         "which is 1 where the picture is transparent."}),
                "size": ("INT", {"default": RESOLUTION, "min": 8, "max": 4096, "step": 8, "tooltip":
                         "Canvas size in pixels (VideoMV: 256)."}),
                "object_fraction": ("FLOAT", {"default": OBJECT_FRACTION, "min": 0.01, "max": 1.0, "step": 0.01,
                                    "tooltip": "The object's longest side as a fraction of the canvas (VideoMV: "
                                               "200 px of 256 = 0.78125)."}),
                "background": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                               "Grey level of the canvas (VideoMV: 1.0, white)."}),
            }}

    def prepare(self, image, mask, invert_mask, size, object_fraction, background):
        node = self.DISPLAY_NAME
        image = check_image(node, "image", image)
        mask = check_mask(node, "mask", mask)
        if image.shape[0] > 1:
            log.warning("%s: 'image' has %d frames; the first is prepared.", node, image.shape[0])
        if tuple(mask.shape[1:]) != tuple(image.shape[1:3]):
            raise NodeInputError(node, "mask", f"is {mask.shape[2]}x{mask.shape[1]} but the image is "
                                 f"{image.shape[2]}x{image.shape[1]}", "the object's alpha at the image's size (Load "
                                 "Image gives a 64x64 empty mask when the file has no alpha: remove the background "
                                 "first)")
        if not 0.0 < object_fraction <= 1.0:
            raise NodeInputError(node, "object_fraction", f"is {object_fraction}", "a fraction in (0, 1]")
        if not 0.0 <= background <= 1.0:
            raise NodeInputError(node, "background", f"is {background}", "a grey level from 0 (black) to 1 (white)")
        object_size = max(1, round(object_fraction * size))
        alpha = mask[0].float()
        alpha = 1.0 - alpha if invert_mask else alpha
        if not (alpha > 0.5 / 255).any():
            raise NodeInputError(node, "mask", "marks no object (it is empty" + (" after inversion)" if invert_mask
                                                                                 else ")"),
                                 "the object's alpha, 1 = object" + ("" if invert_mask else
                                                                     " (try invert_mask for Load Image masks)"))
        if bool((alpha > 1 - 0.5 / 255).all()):
            log.warning("%s: the mask covers the whole image (no background removed); the whole picture is "
                        "treated as the object.", node)
        rgb, out_alpha = prepare_object(image[0].float(), alpha, size, object_size, background)
        return rgb[None], out_alpha[None]


class CVS_VideoMVTextToViews:
    DISPLAY_NAME = "CVS VideoMV Text to Views"
    CATEGORY = CATEGORY
    DESCRIPTION = ("VideoMV text-to-multi-view: 24 consistent views around an object described by the prompt "
                   "(ModelScope-T2V video UNet with a per-view camera MLP, 50 DDIM steps, guidance 9). ', 3d "
                   "asset' is appended to the prompt as in VideoMV.")
    RETURN_TYPES = _OUTPUTS
    RETURN_NAMES = _OUTPUT_NAMES
    OUTPUT_TOOLTIPS = _OUTPUT_TIPS
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("CVS_MODEL", {"tooltip": "VideoMV T2V weights from 'CVS Model Loader' (family "
                                                   "videomv_t2v)."}),
                "prompt": ("STRING", {"default": "a red ceramic teapot", "multiline": True, "tooltip":
                           "The object to generate (English)."}),
                **_shared_inputs(T2V_DEFAULTS),
            },
            "optional": {**_OPTIONAL_CAMERAS, **_OPTIONAL_3D},
        }

    def generate(self, model, prompt, seed, steps, guidance, elevation, distance, resolution, negative_prompt,
                 cameras=None, denoise_3d=False, denoise_3d_steps=_OPTIONAL_3D["denoise_3d_steps"][1]["default"]):
        node = self.DISPLAY_NAME
        handle = _check_mode(node, model, T2V)
        if not isinstance(prompt, str) or not prompt.strip():
            raise NodeInputError(node, "prompt", "is empty", "a description of the object, e.g. 'a red teapot'")
        settings = _settings(node, guidance, steps, seed, resolution)
        refine_steps = _refine_steps(node, denoise_3d_steps, settings.steps, bool(denoise_3d))
        views = _view_cameras(node, handle, cameras, elevation, distance, resolution)
        return _run(node, handle, lambda text, codec: t2v_conditioning(text, prompt, negative_prompt), views,
                    settings, bool(denoise_3d), refine_steps)


class CVS_VideoMVImageToViews:
    DISPLAY_NAME = "CVS VideoMV Image to Views"
    CATEGORY = CATEGORY
    DESCRIPTION = ("VideoMV image-to-multi-view: 24 consistent views around the object in the image (I2VGen-XL "
                   "video UNet with a per-view camera MLP, 50 DDIM steps, guidance 6). Give it the output of 'CVS "
                   "VideoMV Prepare Image' (object centred on white); view 0 looks at the object's front.")
    RETURN_TYPES = _OUTPUTS
    RETURN_NAMES = _OUTPUT_NAMES
    OUTPUT_TOOLTIPS = _OUTPUT_TIPS
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("CVS_MODEL", {"tooltip": "VideoMV I2V weights from 'CVS Model Loader' (family "
                                                   "videomv_i2v)."}),
                "image": ("IMAGE", {"tooltip": "The prepared object image ('CVS VideoMV Prepare Image'); a "
                                               "non-square image is centre-cropped."}),
                **_shared_inputs(I2V_DEFAULTS),
            },
            "optional": {**_OPTIONAL_CAMERAS, **_OPTIONAL_3D},
        }

    def generate(self, model, image, seed, steps, guidance, elevation, distance, resolution, negative_prompt,
                 cameras=None, denoise_3d=False, denoise_3d_steps=_OPTIONAL_3D["denoise_3d_steps"][1]["default"]):
        node = self.DISPLAY_NAME
        handle = _check_mode(node, model, I2V)
        image = check_image(node, "image", image)
        if image.shape[0] != 1:
            raise NodeInputError(node, "image", f"has {image.shape[0]} images", "one object image")
        settings = _settings(node, guidance, steps, seed, resolution)
        refine_steps = _refine_steps(node, denoise_3d_steps, settings.steps, bool(denoise_3d))
        views = _view_cameras(node, handle, cameras, elevation, distance, resolution)
        square = square_image(image.cpu(), resolution)
        embedder = TransformersCLIPEmbedder(handle.modules["image_encoder"], resize="bilinear")

        def conditioning(text, codec):
            return i2v_conditioning(text, embedder, codec, square, negative_prompt)
        return _run(node, handle, conditioning, views, settings, bool(denoise_3d), refine_steps)


_NODES = (CVS_VideoMVOrbitCameras, CVS_VideoMVPrepareImage, CVS_VideoMVTextToViews, CVS_VideoMVImageToViews)
NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in _NODES}
NODE_DISPLAY_NAME_MAPPINGS = {cls.__name__: cls.DISPLAY_NAME for cls in _NODES}
