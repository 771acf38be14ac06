"""Camera nodes: load/save camera files, build trajectories, preview them.

Thin V1 nodes over :mod:`.geometry`, :mod:`.formats`, :mod:`.trajectories` and
:mod:`.preview`. Cameras travel between nodes as ``CVS_CAMERA`` (a
:class:`~.geometry.CameraBatch`: OpenCV camera-to-world, normalised intrinsics, image size).
"""
from __future__ import annotations

import os
from pathlib import Path

from . import formats as camera_formats, preview as camera_preview, trajectories
from ..video import video_io
from .geometry import CAMERA_TYPE, CameraBatch, check_cameras
from ..comfy.errors import NodeInputError, check_image, check_mask

CATEGORY = "Consistent Video/Cameras"
_CAMERAS_OUT = "The camera batch (OpenCV camera-to-world, normalised intrinsics, image size)."


def _size_inputs(width: int = 576, height: int = 576, what: str = "the cameras refer to", minimum: int = 1) -> dict:
    return {
        "width": ("INT", {"default": width, "min": minimum, "max": 16384,
                          "tooltip": f"Image width in pixels {what}."}),
        "height": ("INT", {"default": height, "min": minimum, "max": 16384,
                           "tooltip": f"Image height in pixels {what}."}),
    }


_FOV = ("FLOAT", {"default": 54.0, "min": 1.0, "max": 179.0, "step": 0.1,
                  "tooltip": "Vertical field of view in degrees (VMem/SEVA default: 54)."})


def _resolve_camera_path(node: str, text: str) -> Path:
    """An absolute or existing path as is, else a name in ComfyUI's input folder, else a
    bundled asset (:func:`video_io.resolve_input_path`)."""
    expected = ("a camera file: an absolute path, a file name in ComfyUI's input folder, or the bundled "
                "'cvs_cameras.json'")
    try:
        path = video_io.resolve_input_path(text, kind="camera file")
    except video_io.VideoError as exc:
        raise NodeInputError(node, "path", str(exc), expected) from None
    if not path.is_file():
        raise NodeInputError(node, "path", f"'{path}' is a folder", expected)
    return path


class CVS_LoadCameras:
    DISPLAY_NAME = "CVS Load Cameras"
    DESCRIPTION = ("Load a camera trajectory from a file: the pack's plain JSON, a RealEstate10K .txt, a "
                   "nerfstudio transforms.json or a ReCamMaster camera json. Converts to OpenCV poses.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (CAMERA_TYPE, "INT")
    RETURN_NAMES = ("cameras", "count")
    OUTPUT_TOOLTIPS = (_CAMERAS_OUT, "How many cameras were loaded.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "path": ("STRING", {"default": "cvs_cameras.json", "tooltip":
                     "Camera file: an absolute path or a file name in ComfyUI's input folder. The bundled "
                     "'cvs_cameras.json' (81 cameras arcing 30 degrees to the right, 832x480) works anywhere."}),
            "format": (["auto", *camera_formats.FORMATS], {"default": "auto", "tooltip":
                       "File format; 'auto' tells them apart by extension (.txt = RealEstate10K) and JSON keys."}),
            **_size_inputs(576, 576, "the cameras refer to, for formats that do not store it "
                                     "(RealEstate10K, ReCamMaster)"),
            "fov_deg": ("FLOAT", {**_FOV[1], "tooltip": "Vertical field of view in degrees for ReCamMaster "
                                                        "files (they store no intrinsics)."}),
            "recammaster_camera": ("STRING", {"default": "", "tooltip":
                                   "ReCamMaster files hold several cameras ('cam01', 'cam02', ...); "
                                   "empty = the first."}),
        }}

    @classmethod
    def IS_CHANGED(cls, path, **_):
        try:
            return os.path.getmtime(_resolve_camera_path(cls.DISPLAY_NAME, path))
        except (NodeInputError, OSError):
            return float("nan")  # never cached: the run reports the error

    def load(self, path, format, width, height, fov_deg, recammaster_camera):
        node = self.DISPLAY_NAME
        file = _resolve_camera_path(node, path)
        try:
            cams = camera_formats.load_cameras(file, format, width, height, fov_deg, recammaster_camera.strip())
        except (ValueError, OSError) as exc:
            raise NodeInputError(node, "path", f"could not be read as '{format}' cameras: {exc}") from None
        return (cams, len(cams))


class CVS_SaveCameras:
    DISPLAY_NAME = "CVS Save Cameras"
    DESCRIPTION = ("Save a camera batch to ComfyUI's output folder as the pack's plain JSON, a RealEstate10K "
                   ".txt, a nerfstudio transforms.json or a ReCamMaster camera json.")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("Absolute path of the written file.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "cameras": (CAMERA_TYPE, {"tooltip": "The cameras to save."}),
            "format": (list(camera_formats.FORMATS), {"default": "cvs_json", "tooltip":
                       "cvs_json keeps everything (poses, intrinsics, size); realestate10k_txt drops the size; "
                       "recammaster_json drops the intrinsics."}),
            "filename_prefix": ("STRING", {"default": "ConsistentVideo/cameras", "tooltip":
                                "Subfolder and name inside the output folder; a counter is appended."}),
        }}

    def save(self, cameras, format, filename_prefix):
        node = self.DISPLAY_NAME
        cams = check_cameras(node, "cameras", cameras)
        if format not in camera_formats.FORMATS:
            raise NodeInputError(node, "format", f"is '{format}'", f"one of {', '.join(camera_formats.FORMATS)}")
        try:
            path = video_io.next_output_path(filename_prefix, camera_formats.EXTENSIONS[format])
        except ValueError as exc:
            raise NodeInputError(node, "filename_prefix", str(exc)) from None
        camera_formats.save_cameras(cams, path, format)
        return {"ui": {"text": [str(path)], "cvs_files": [video_io.ui_entry(path)]}, "result": (str(path),)}


class CVS_OrbitCameras:
    DISPLAY_NAME = "CVS Orbit Cameras"
    DESCRIPTION = ("Cameras on a circle around a centre point, all looking at it (object turntables, "
                   "VideoMV-style multi-view). Azimuth 0 at elevation 0 is the identity camera moved back.")
    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = (CAMERA_TYPE,)
    RETURN_NAMES = ("cameras",)
    OUTPUT_TOOLTIPS = (_CAMERAS_OUT,)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "views": ("INT", {"default": 24, "min": 1, "max": 4096, "tooltip": "Number of cameras on the orbit."}),
            "elevation_deg": ("FLOAT", {"default": 15.0, "min": -89.9, "max": 89.9, "step": 0.1, "tooltip":
                              "Degrees above (positive) or below the centre's horizontal plane (VideoMV: 15 "
                              "for text-to-video, 5 for image-to-video)."}),
            "distance": ("FLOAT", {"default": 2.0, "min": 0.001, "max": 1e6, "step": 0.01, "tooltip":
                         "Distance from the centre point in scene units (VideoMV: 2.0 / 1.7)."}),
            "azimuth_start_deg": ("FLOAT", {"default": 0.0, "min": -360.0, "max": 360.0, "step": 0.1, "tooltip":
                                  "Azimuth of the first camera; 0 = in front of the object, behind the "
                                  "identity camera's position."}),
            "azimuth_range_deg": ("FLOAT", {"default": 360.0, "min": -3600.0, "max": 3600.0, "step": 0.1,
                                  "tooltip": "Degrees the orbit sweeps (positive: the camera moves to its right). "
                                  "A full 360 does not repeat the first view; other ranges include both ends."}),
            **_size_inputs(),
            "fov_deg": _FOV,
        }}

    def build(self, views, elevation_deg, distance, azimuth_start_deg, azimuth_range_deg, width, height, fov_deg):
        node = self.DISPLAY_NAME
        if views < 1:
            raise NodeInputError(node, "views", f"is {views}", "at least 1")
        if not abs(elevation_deg) < 90:
            raise NodeInputError(node, "elevation_deg", f"is {elevation_deg}", "strictly between -90 and 90")
        if not distance > 0:
            raise NodeInputError(node, "distance", f"is {distance}", "a positive distance")
        return (trajectories.orbit(views, elevation_deg, distance, azimuth_start_deg=azimuth_start_deg,
                                   azimuth_range_deg=azimuth_range_deg, width=width, height=height, fov_deg=fov_deg),)


class CVS_NavigateCameras:
    DISPLAY_NAME = "CVS Navigate Cameras"
    DESCRIPTION = ("Walk a camera through actions like 'turn_left 30, move_forward 0.5' (VMem's navigation). "
                   "Each action adds poses_per_action poses, rotation by slerp and translation by lerp.")
    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = (CAMERA_TYPE,)
    RETURN_NAMES = ("cameras",)
    OUTPUT_TOOLTIPS = ("The new poses (preceded by the start pose when include_start is on).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "actions": ("STRING", {"default": "turn_left 30, move_forward 0.5", "multiline": True, "tooltip":
                            "Actions separated by commas or new lines, each 'name amount': turn_left/turn_right "
                            "and look_up/look_down in degrees; move_forward/move_backward, move_left/move_right, "
                            "move_up/move_down in scene units."}),
                "poses_per_action": ("INT", {"default": 4, "min": 1, "max": 1000, "tooltip":
                                     "Poses generated per action, ending at the full amount (VMem: 4)."}),
                "include_start": ("BOOLEAN", {"default": False, "tooltip":
                                  "Put the start pose first in the output (off: only the new poses, ready to "
                                  "append to an existing trajectory)."}),
                **_size_inputs(what="of the default start camera"),
                "fov_deg": ("FLOAT", {**_FOV[1], "tooltip": "Vertical field of view of the default start camera "
                                                            "(used when start_cameras is not connected)."}),
            },
            "optional": {
                "start_cameras": (CAMERA_TYPE, {"tooltip": "Start from the last camera of this batch (its "
                                                           "intrinsics and size are kept). Unconnected: the "
                                                           "identity camera."}),
            },
        }

    def build(self, actions, poses_per_action, include_start, width, height, fov_deg, start_cameras=None):
        node = self.DISPLAY_NAME
        start = None if start_cameras is None else check_cameras(node, "start_cameras", start_cameras)
        try:
            steps = trajectories.parse_actions(actions)
        except ValueError as exc:
            raise NodeInputError(node, "actions", str(exc)) from None
        if poses_per_action < 1:
            raise NodeInputError(node, "poses_per_action", f"is {poses_per_action}", "at least 1")
        return (trajectories.navigate(steps, poses_per_action, start, include_start, width, height, fov_deg),)


class CVS_ConcatCameras:
    DISPLAY_NAME = "CVS Concat Cameras"
    DESCRIPTION = "Join up to four camera batches end to end (for example an orbit, then a walk)."
    CATEGORY = CATEGORY
    FUNCTION = "concat"
    RETURN_TYPES = (CAMERA_TYPE,)
    RETURN_NAMES = ("cameras",)
    OUTPUT_TOOLTIPS = (_CAMERAS_OUT,)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "cameras_1": (CAMERA_TYPE, {"tooltip": "First part of the trajectory."}),
                "cameras_2": (CAMERA_TYPE, {"tooltip": "Appended after cameras_1."}),
                "skip_repeated_joint": ("BOOLEAN", {"default": True, "tooltip":
                                        "Drop a part's first camera when it equals the previous part's last "
                                        "one, so the path does not stand still for a frame."}),
            },
            "optional": {
                "cameras_3": (CAMERA_TYPE, {"tooltip": "Optional third part."}),
                "cameras_4": (CAMERA_TYPE, {"tooltip": "Optional fourth part."}),
            },
        }

    def concat(self, cameras_1, cameras_2, skip_repeated_joint, cameras_3=None, cameras_4=None):
        node = self.DISPLAY_NAME
        parts = []
        for name, value in (("cameras_1", cameras_1), ("cameras_2", cameras_2),
                            ("cameras_3", cameras_3), ("cameras_4", cameras_4)):
            if value is None and name in ("cameras_3", "cameras_4"):
                continue
            cams = check_cameras(node, name, value)
            if parts and (cams.width, cams.height) != (parts[0].width, parts[0].height):
                raise NodeInputError(node, name, f"refers to {cams.width}x{cams.height} images",
                                     f"the same size as cameras_1 ({parts[0].width}x{parts[0].height})")
            parts.append(cams)
        return (trajectories.concatenate(parts, skip_repeated_joint),)


_KEYFRAME_EXAMPLE = ('[{"position": [0, 0, 0], "look_at": [0, 0, 1]},\n'
                     ' {"position": [0.5, 0, 0.5], "look_at": [0, 0, 1.5]},\n'
                     ' {"position": [1, 0, 1], "look_at": [0, 0, 2], "fov_deg": 40}]')


class CVS_KeyframeCameras:
    DISPLAY_NAME = "CVS Keyframe Cameras"
    DESCRIPTION = ("A custom camera path through keyframes: rotations by slerp, positions and intrinsics by "
                   "lerp, with optional easing. Keyframes come as JSON text or a camera batch.")
    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = (CAMERA_TYPE,)
    RETURN_NAMES = ("cameras",)
    OUTPUT_TOOLTIPS = ("The path: (keyframes - 1) x frames_per_segment + 1 cameras, through every keyframe.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "keyframes": ("STRING", {"default": _KEYFRAME_EXAMPLE, "multiline": True, "tooltip":
                              "JSON list of keyframes, each {'position': [x,y,z], 'look_at': [x,y,z]} or "
                              "{'c2w': 4x4 OpenCV matrix}, optionally with 'fov_deg' or 'K'. World up is -y. "
                              "Ignored when keyframe_cameras is connected."}),
                "frames_per_segment": ("INT", {"default": 8, "min": 1, "max": 10000, "tooltip":
                                       "Cameras from one keyframe up to (not including) the next."}),
                "easing": (list(trajectories.EASINGS), {"default": "linear", "tooltip":
                           "Timing within each segment: linear (constant speed), ease_in_out (slow at every "
                           "keyframe), ease_in, ease_out, cosine (VideoScene's timing between two views)."}),
                **_size_inputs(what="for keyframes given as JSON text"),
                "fov_deg": ("FLOAT", {**_FOV[1], "tooltip": "Vertical field of view for JSON keyframes "
                                                            "without 'fov_deg' or 'K'."}),
            },
            "optional": {
                "keyframe_cameras": (CAMERA_TYPE, {"tooltip": "Use these cameras as the keyframes instead of "
                                                              "the JSON text."}),
            },
        }

    def build(self, keyframes, frames_per_segment, easing, width, height, fov_deg, keyframe_cameras=None):
        node = self.DISPLAY_NAME
        if keyframe_cameras is not None:
            keys = check_cameras(node, "keyframe_cameras", keyframe_cameras)
        else:
            try:
                keys = camera_formats.keyframes_from_text(keyframes, width, height, fov_deg)
            except ValueError as exc:
                raise NodeInputError(node, "keyframes", str(exc)) from None
        if easing not in trajectories.EASINGS:
            raise NodeInputError(node, "easing", f"is '{easing}'", f"one of {', '.join(trajectories.EASINGS)}")
        if frames_per_segment < 1:
            raise NodeInputError(node, "frames_per_segment", f"is {frames_per_segment}", "at least 1")
        return (trajectories.keyframe_path(keys, frames_per_segment, easing),)


class CVS_CameraPathBetween:
    DISPLAY_NAME = "CVS Camera Path Between"
    DESCRIPTION = ("A camera path between two views, as VideoScene renders it: the camera swings about the point "
                   "where the two view directions meet (their least-squares intersection), so it keeps looking at "
                   "it, with cosine-eased timing over 49 frames by default; intrinsics are interpolated. 'straight' "
                   "moves the centre on a straight line instead. Both views are the exact first and last frame.")
    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = (CAMERA_TYPE,)
    RETURN_NAMES = ("cameras",)
    OUTPUT_TOOLTIPS = ("The path: 'frames' cameras from the start view to the end view, both included, with the "
                       "start view's image size (ready for CVS Render Splats).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "cameras": (CAMERA_TYPE, {"tooltip": "The start view is this batch's first camera. Without "
                                                     "end_cameras the end view is its last camera, so a batch of "
                                                     "the two input views (e.g. estimated poses) works alone."}),
                "frames": ("INT", {"default": 49, "min": 2, "max": 10000, "tooltip":
                           "Cameras on the path, both views included (VideoScene: 49)."}),
                "easing": (list(trajectories.EASINGS), {"default": "cosine", "tooltip":
                           "Timing: cosine (VideoScene: slow at both views, halfway at the middle frame), linear "
                           "(constant speed), ease_in_out (smoothstep), ease_in, ease_out."}),
                "rule": (list(trajectories.PATH_RULES), {"default": "pivot", "tooltip":
                         "pivot (VideoScene/NoPoSplat): the camera swings about the point where the two view "
                         "directions meet, keeps looking at it, and its distance to it changes evenly; views "
                         "within 0.8 degrees of parallel slide on the straight line between them. straight: "
                         "centre on the straight line, rotation by slerp (like CVS Keyframe Cameras)."}),
            },
            "optional": {
                "end_cameras": (CAMERA_TYPE, {"tooltip": "The end view is this batch's first camera (must refer to "
                                                         "the same image size). Unconnected: the last camera of "
                                                         "'cameras'."}),
            },
        }

    def build(self, cameras, frames, easing, rule, end_cameras=None):
        node = self.DISPLAY_NAME
        cams = check_cameras(node, "cameras", cameras)
        if end_cameras is None:
            if len(cams) < 2:
                raise NodeInputError(node, "cameras", "has 1 camera and end_cameras is not connected",
                                     "a batch of the two views (first = start, last = end), or an end_cameras "
                                     "input")
            end_name, end = "cameras", cams[-1]
        else:
            end_name, end = "end_cameras", check_cameras(node, "end_cameras", end_cameras)[0]
            if (end.width, end.height) != (cams.width, cams.height):
                raise NodeInputError(node, "end_cameras", f"refers to {end.width}x{end.height} images",
                                     f"the same size as 'cameras' ({cams.width}x{cams.height})")
        start = cams[0]
        if trajectories.same_view(start, end):
            raise NodeInputError(node, end_name, "gives an end view identical to the start view (same pose and "
                                 "intrinsics), so every frame would show the same camera",
                                 "two different views (for VideoScene: the two input views' poses)")
        if frames < 2:
            raise NodeInputError(node, "frames", f"is {frames}", "at least 2 (the start and end views)")
        if easing not in trajectories.EASINGS:
            raise NodeInputError(node, "easing", f"is '{easing}'", f"one of {', '.join(trajectories.EASINGS)}")
        if rule not in trajectories.PATH_RULES:
            raise NodeInputError(node, "rule", f"is '{rule}'", f"one of {', '.join(trajectories.PATH_RULES)}")
        views = CameraBatch.cat([start, end.to(start.device)])
        return (trajectories.path_between(views, frames, easing, rule),)


class CVS_CameraPreview:
    DISPLAY_NAME = "CVS Camera Preview"
    DESCRIPTION = ("Draw the camera path and frusta (and optionally a point cloud from depth maps) into an "
                   "image, to check a trajectory before spending GPU time. First camera green, last red.")
    CATEGORY = CATEGORY
    FUNCTION = "preview"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The preview [1, height, width, 3].",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "cameras": (CAMERA_TYPE, {"tooltip": "The cameras to draw."}),
                "view": (list(camera_preview.VIEWS), {"default": "top", "tooltip":
                         "top: seen from above (walks); perspective: from above, behind and to the right "
                         "(orbits, looking up/down); front / side: orthographic along z / x."}),
                **_size_inputs(512, 512, "of the preview image", minimum=camera_preview.MIN_SIZE),
                "frustum_size": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1e6, "step": 0.01, "tooltip":
                                 "Frustum depth in scene units; 0 = 8% of the path's extent."}),
                "max_points": ("INT", {"default": 50000, "min": 1, "max": 10_000_000, "tooltip":
                               "At most this many depth points are drawn (an even subset)."}),
            },
            "optional": {
                "depth": ("MASK", {"tooltip": "Optional z-depth maps in scene units [cameras, height, width], "
                                              "one per camera, drawn as a point cloud (0 = no point)."}),
                "images": ("IMAGE", {"tooltip": "Optional colours for the depth points, one image per camera "
                                                "(resized to the depth maps)."}),
            },
        }

    def preview(self, cameras, view, width, height, frustum_size, max_points, depth=None, images=None):
        node = self.DISPLAY_NAME
        cams = check_cameras(node, "cameras", cameras)
        if view not in camera_preview.VIEWS:
            raise NodeInputError(node, "view", f"is '{view}'", f"one of {', '.join(camera_preview.VIEWS)}")
        for name, value in (("width", width), ("height", height)):
            if value < camera_preview.MIN_SIZE:
                raise NodeInputError(node, name, f"is {value}", f"at least {camera_preview.MIN_SIZE} pixels")
        points = colors = None
        if depth is not None:
            depth = check_mask(node, "depth", depth)
            if depth.shape[0] != len(cams):
                raise NodeInputError(node, "depth", f"has {depth.shape[0]} maps but 'cameras' has {len(cams)}",
                                     "one depth map per camera")
            if images is not None:
                images = check_image(node, "images", images)
                if images.shape[0] != len(cams):
                    raise NodeInputError(node, "images", f"has {images.shape[0]} frames but 'cameras' has "
                                         f"{len(cams)}", "one image per camera")
            points, colors = camera_preview.points_from_depth(cams, depth, images, max_points)
        elif images is not None:
            raise NodeInputError(node, "images", "is connected without 'depth'", "a depth input to place the colours")
        return (camera_preview.render_camera_preview(cams, width, height, view, frustum_size, points, colors),)


_NODES = (CVS_LoadCameras, CVS_SaveCameras, CVS_OrbitCameras, CVS_NavigateCameras, CVS_ConcatCameras,
          CVS_KeyframeCameras, CVS_CameraPathBetween, CVS_CameraPreview)
NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in _NODES}
NODE_DISPLAY_NAME_MAPPINGS = {cls.__name__: cls.DISPLAY_NAME for cls in _NODES}
