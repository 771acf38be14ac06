"""Shared Gaussian-splat nodes: load or save a 3DGS ``.ply``, render it along a camera path.

Thin: the scene and PLY I/O are :mod:`.gaussians`, the rasteriser :mod:`.render`.
"""
from __future__ import annotations

from ..comfy import runtime
from ..video import video_io
from ..cameras.geometry import CAMERA_TYPE, check_cameras
from ..comfy.errors import NodeInputError, describe
from .gaussians import GaussianScene, load_ply, save_ply
from .render import BACKENDS, render

CATEGORY = "Consistent Video/Gaussian Splats"
GAUSSIANS_TYPE = "CVS_GAUSSIANS"
"""ComfyUI type of a :class:`.gaussians.GaussianScene` (world coordinates, on the CPU)."""


def _summary(scene: GaussianScene) -> str:
    if not len(scene):
        return "0 Gaussians"
    low, high = scene.means.amin(0).tolist(), scene.means.amax(0).tolist()
    box = ", ".join(f"{a:.2f}..{b:.2f}" for a, b in zip(low, high))
    return f"{len(scene)} Gaussians, SH degree {scene.sh_degree}, x/y/z in {box}"


class CVS_LoadSplats:
    DISPLAY_NAME = "CVS Load Splats"
    DESCRIPTION = ("Load 3D Gaussian splats from a standard 3DGS .ply (positions, scales, rotations, opacity, "
                   "spherical-harmonic colours up to degree 3), as written by 3DGS trainers, gsplat, nerfstudio, "
                   "MVSplat / NoPoSplat exports and most splat tools.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (GAUSSIANS_TYPE, "STRING")
    RETURN_NAMES = ("gaussians", "info")
    OUTPUT_TOOLTIPS = ("The splats, for 'CVS Render Splats'.", "How many, their SH degree and extent.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "ply": ("STRING", {"default": "cvs_scene.ply", "tooltip":
                    "A path, a file name in ComfyUI's input folder, or the bundled 'cvs_scene.ply' (a small "
                    "room with objects)."}),
        }}

    @classmethod
    def IS_CHANGED(cls, ply, **_):
        return video_io.input_fingerprint(ply)

    def load(self, ply):
        node = self.DISPLAY_NAME
        try:
            path = video_io.resolve_input_path(ply, kind="file")
        except video_io.VideoError as exc:
            raise NodeInputError(node, "ply", str(exc)) from None
        try:
            scene = load_ply(path)
        except (ValueError, OSError) as exc:
            raise NodeInputError(node, "ply", f"could not be read: {exc}", "a 3D Gaussian splatting .ply") from None
        return scene, f"{path.name}: {_summary(scene)}"


class CVS_RenderSplats:
    DISPLAY_NAME = "CVS Render Splats"
    DESCRIPTION = ("Render Gaussian splats from every camera of a path (EWA splatting, sorted front to back): colour, "
                   "alpha and depth. Uses gsplat on a CUDA GPU when it is installed, else the pack's tiled pure-torch "
                   "rasteriser (also on the CPU). Cameras from any CVS camera node, e.g. 'CVS Keyframe Cameras' "
                   "between two views with easing.")
    CATEGORY = CATEGORY
    FUNCTION = "render"
    RETURN_TYPES = ("IMAGE", "MASK", "IMAGE", "STRING")
    RETURN_NAMES = ("images", "alpha", "depth", "info")
    OUTPUT_TOOLTIPS = ("One frame per camera, composited over the background, at the cameras' size.",
                       "Accumulated opacity, 1 = covered by splats.",
                       "Expected z-depth of the visible splats, divided by the largest depth in the batch (so 1 = "
                       "farthest, 0 = nothing); the range is in 'info'.",
                       "Backend, frames, size and the depth range.")

    @classmethod
    def INPUT_TYPES(cls):
        colour = {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}
        return {"required": {
            "gaussians": (GAUSSIANS_TYPE, {"tooltip": "Splats from 'CVS Load Splats'."}),
            "cameras": (CAMERA_TYPE, {"tooltip": "The camera path (OpenCV camera-to-world, the splats' world); the "
                                                 "frames have the cameras' width and height."}),
            "background_r": ("FLOAT", {**colour, "tooltip": "Background red, 0..1."}),
            "background_g": ("FLOAT", {**colour, "tooltip": "Background green, 0..1."}),
            "background_b": ("FLOAT", {**colour, "tooltip": "Background blue, 0..1."}),
            "near": ("FLOAT", {"default": 0.01, "min": 0.0001, "max": 100.0, "step": 0.01, "tooltip":
                     "Splats closer to a camera than this (along its axis) are not drawn."}),
            "backend": (list(BACKENDS), {"default": "auto", "tooltip":
                        "auto: gsplat when installed and a CUDA GPU is used, else the pure-torch rasteriser; "
                        "torch / gsplat force one."}),
        }}

    def render(self, gaussians, cameras, background_r, background_g, background_b, near, backend):
        node = self.DISPLAY_NAME
        if not isinstance(gaussians, GaussianScene):
            raise NodeInputError(node, "gaussians", f"got {describe(gaussians)}", "splats from 'CVS Load Splats'")
        cameras = check_cameras(node, "cameras", cameras)
        if backend not in BACKENDS:
            raise NodeInputError(node, "backend", f"is '{backend}'", f"one of {', '.join(BACKENDS)}")
        device = runtime.resolve_device("auto")
        scene = gaussians.to(device)
        with runtime.Progress(len(cameras), node) as bar:
            try:
                rgb, alpha, depth = render(scene, cameras, (background_r, background_g, background_b), near=near,
                                           backend=backend, progress=lambda done, total: bar.update())
            except ValueError as exc:  # bad settings (e.g. gsplat without CUDA); other errors propagate as they are
                message = str(exc)
                name = next((name for word, name in (("gsplat", "backend"), ("background", "background_r"),
                                                     ("near", "near")) if word in message), "gaussians")
                raise NodeInputError(node, name, message) from None
        rgb, alpha, depth = rgb.cpu(), alpha.cpu(), depth.cpu()
        far = float(depth.max())
        shown = (depth / far if far > 0 else depth).clamp(0, 1)[..., None].expand(-1, -1, -1, 3).contiguous()
        info = (f"{len(cameras)} frame(s) of {cameras.width}x{cameras.height} from {len(scene)} Gaussians on "
                f"{device.type}; depth 0..{far:.3f} (scene units)")
        return rgb.clamp(0, 1), alpha.clamp(0, 1), shown, info


class CVS_SaveSplats:
    DISPLAY_NAME = "CVS Save Splats"
    DESCRIPTION = ("Save 3D Gaussian splats to ComfyUI's output folder as a standard binary 3DGS .ply, which "
                   "3DGS viewers, SuperSplat, gsplat, nerfstudio and 'CVS Load Splats' read.")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("Absolute path of the written .ply.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "gaussians": (GAUSSIANS_TYPE, {"tooltip": "The splats to save (from 'CVS Load Splats' or a node "
                                                      "that makes Gaussians)."}),
            "filename_prefix": ("STRING", {"default": "ConsistentVideo/splats", "tooltip":
                                "Subfolder and name inside the output folder; a counter is appended."}),
        }}

    def save(self, gaussians, filename_prefix):
        node = self.DISPLAY_NAME
        if not isinstance(gaussians, GaussianScene):
            raise NodeInputError(node, "gaussians", f"got {describe(gaussians)}", "Gaussians (CVS_GAUSSIANS)")
        try:
            path = video_io.next_output_path(filename_prefix, "ply")
        except ValueError as exc:
            raise NodeInputError(node, "filename_prefix", str(exc)) from None
        save_ply(gaussians, path)
        return {"ui": {"text": [f"{path} ({_summary(gaussians)})"], "cvs_files": [video_io.ui_entry(path)]},
                "result": (str(path),)}


_NODES = (CVS_LoadSplats, CVS_RenderSplats, CVS_SaveSplats)
NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in _NODES}
NODE_DISPLAY_NAME_MAPPINGS = {cls.__name__: cls.DISPLAY_NAME for cls in _NODES}
