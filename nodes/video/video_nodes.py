"""Video nodes: load and save files, convert between ComfyUI's VIDEO and IMAGE batches.

Thin V1 nodes over :mod:`.video_io`: they check their inputs, call the core and convert
the results. Frames travel as IMAGE ``[T,H,W,3]``, mattes as MASK ``[T,H,W]``
(1 = foreground, used as alpha when saving), frame rates as exact fraction strings.
"""
from __future__ import annotations

from fractions import Fraction

import torch

from ..comfy import runtime
from . import video_io
from ..comfy.errors import NodeInputError, check_image, check_mask

CATEGORY = "Consistent Video/Video"
SAVE_CHUNK = 16  # frames per progress step when saving
_FPS_TOOLTIP = "Frame rate: a number ('24', '29.97') or an exact fraction ('30000/1001')."


def _parse_fps(node: str, value) -> Fraction:
    try:
        return video_io.parse_fps(value)
    except ValueError as exc:
        raise NodeInputError(node, "fps", str(exc)) from None


class CVS_LoadVideo:
    DISPLAY_NAME = "CVS Load Video"
    DESCRIPTION = ("Load frames from a video file or a PNG/JPG sequence folder as an IMAGE batch, "
                   "with the exact frame rate. Decodes one frame at a time.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "INT", "FLOAT", "STRING")
    RETURN_NAMES = ("images", "frame_count", "fps", "fps_fraction")
    OUTPUT_TOOLTIPS = (
        "The selected frames [frames, height, width, 3].",
        "How many frames were loaded.",
        "Frame rate of the loaded frames as a number (the source rate divided by stride).",
        "The same rate as an exact fraction string (e.g. '30000/1001'); link it to CVS Save Video's fps.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video": ("STRING", {"default": "cvs_sample.mp4", "tooltip":
                      "A video path, a file name in ComfyUI's input folder, or a folder of PNG/JPG frames. "
                      "The bundled 'cvs_sample.mp4' works anywhere."}),
            "start_frame": ("INT", {"default": 0, "min": 0, "max": 1_000_000,
                                    "tooltip": "First frame to load (0 = the first frame of the video)."}),
            "end_frame": ("INT", {"default": -1, "min": -1, "max": 1_000_000,
                                  "tooltip": "Stop before this frame (exclusive); -1 loads to the end."}),
            "stride": ("INT", {"default": 1, "min": 1, "max": 1000,
                               "tooltip": "Load every n-th frame; the fps outputs are divided by it, so the duration stays the same."}),
            "max_frames": ("INT", {"default": 0, "min": 0, "max": 1_000_000,
                                   "tooltip": "Load at most this many frames; 0 = no limit."}),
            "width": ("INT", {"default": 0, "min": 0, "max": video_io.MAX_SIDE, "tooltip":
                              "Resize to this width; 0 keeps the width (or follows the aspect ratio if height is set)."}),
            "height": ("INT", {"default": 0, "min": 0, "max": video_io.MAX_SIDE, "tooltip":
                               "Resize to this height; 0 keeps the height (or follows the aspect ratio if width is set)."}),
        }}

    @classmethod
    def IS_CHANGED(cls, video, **_):
        return video_io.input_fingerprint(video)

    def load(self, video, start_frame, end_frame, stride, max_frames, width, height):
        node = self.DISPLAY_NAME
        if end_frame != -1 and end_frame <= start_frame:
            raise NodeInputError(node, "end_frame", f"is {end_frame}, not after start_frame={start_frame}",
                                 "-1 (to the end) or a frame index greater than start_frame")
        try:
            path = video_io.resolve_input_path(video)
            info = video_io.probe(path)
        except video_io.VideoError as exc:
            raise NodeInputError(node, "video", str(exc)) from None
        if info.frame_count_exact and start_frame >= info.frame_count:
            raise NodeInputError(node, "start_frame", f"is {start_frame} but the video has {info.frame_count} frames",
                                 f"0..{info.frame_count - 1}")
        for name, value in (("width", width), ("height", height)):
            if not 0 <= value <= video_io.MAX_SIDE:
                raise NodeInputError(node, name, f"is {value}", f"0 (keep) or a size up to {video_io.MAX_SIDE} pixels")
        try:
            video_io.output_size(info, (width, height))
        except video_io.VideoError as exc:
            raise NodeInputError(node, "width" if width else "height", str(exc),
                                 "a smaller size, or 0 in both to keep the video's size") from None
        try:
            images, rate = video_io.load_frames(path, start_frame, None if end_frame == -1 else end_frame,
                                                stride, max_frames, (width, height))
        except video_io.VideoError as exc:
            raise NodeInputError(node, "video", str(exc)) from None
        rate /= stride
        return images, images.shape[0], float(rate), video_io.format_fps(rate)


class CVS_LoadImage:
    DISPLAY_NAME = "CVS Load Image"
    DESCRIPTION = ("Load one picture (PNG, JPG, WebP, or the first frame of a video) as an IMAGE with its alpha "
                   "as a MASK, 1 = opaque (unlike core 'Load Image', whose MASK is 1 where transparent).")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "alpha")
    OUTPUT_TOOLTIPS = ("The picture [1, height, width, 3] (colour as stored, not premultiplied).",
                       "Its alpha [1, height, width], 1 = opaque; all ones when the file has no alpha.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("STRING", {"default": "cvs_object.png", "tooltip":
                      "A path, a file name in ComfyUI's input folder, or a bundled asset ('cvs_object.png': an "
                      "object on a transparent background)."}),
        }}

    @classmethod
    def IS_CHANGED(cls, image, **_):
        return video_io.input_fingerprint(image)

    def load(self, image):
        node = self.DISPLAY_NAME
        try:
            path = video_io.resolve_input_path(image, kind="image")
            frames, _ = video_io.load_frames(path, max_frames=1, alpha=True, kind="image")
        except video_io.VideoError as exc:
            raise NodeInputError(node, "image", str(exc)) from None
        return frames[..., :3].contiguous(), frames[..., 3].contiguous()


class CVS_SaveVideo:
    DISPLAY_NAME = "CVS Save Video"
    DESCRIPTION = ("Save frames and/or a matte to ComfyUI's output folder. Images only: a colour video. "
                   "Mask only: a grey matte video. Both: alpha formats store RGBA with the mask as alpha; "
                   "other formats write the colour video plus a '<name>_matte' video.")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("paths",)
    OUTPUT_TOOLTIPS = ("Absolute paths of the written files or folders, one per line.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "fps": ("STRING", {"default": "24", "tooltip": _FPS_TOOLTIP
                                   + " Link CVS Load Video's fps_fraction to keep the source rate."}),
                "format": (list(video_io.FORMATS), {"default": "h264-mp4", "tooltip":
                           "h264-mp4 / h265-mp4: small colour files. prores4444-mov, vp9-webm, png-sequence: "
                           "keep alpha (the mask)."}),
                "filename_prefix": ("STRING", {"default": "ConsistentVideo/video", "tooltip":
                                    "Subfolder and name inside the output folder; a counter is appended."}),
                "quality": ("INT", {"default": video_io.DEFAULT_QUALITY, "min": 0, "max": 51, "tooltip":
                            "CRF for H.264/H.265/VP9: lower is better and larger (0 = best). "
                            "ProRes and PNG ignore it."}),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "Frames to save [frames, height, width, 3]."}),
                "mask": ("MASK", {"tooltip": "Matte to save [frames, height, width], 1 = foreground; "
                                  "becomes the alpha channel in alpha formats."}),
            },
        }

    def save(self, fps, format, filename_prefix, quality, images=None, mask=None):
        node = self.DISPLAY_NAME
        if images is None and mask is None:
            raise NodeInputError(node, "images", "and input 'mask' are both unconnected",
                                 "at least one of them linked")
        if images is not None:
            images = check_image(node, "images", images)
        if mask is not None:
            mask = check_mask(node, "mask", mask)
        if images is not None and mask is not None and images.shape[:3] != mask.shape:
            raise NodeInputError(node, "mask", f"has {mask.shape[0]} frames of {mask.shape[2]}x{mask.shape[1]} "
                                 f"but 'images' has {images.shape[0]} frames of {images.shape[2]}x{images.shape[1]}",
                                 "the same frame count and size as images")
        if format not in video_io.FORMATS:
            raise NodeInputError(node, "format", f"is '{format}'", f"one of {', '.join(video_io.FORMATS)}")
        rate = _parse_fps(node, fps)
        spec = video_io.FORMATS[format]
        try:
            path = video_io.next_output_path(filename_prefix, spec.extension)
        except ValueError as exc:
            raise NodeInputError(node, "filename_prefix", str(exc)) from None

        matte = None if mask is None else mask.unsqueeze(-1)
        if images is None:
            jobs = [(path, [matte])]
        elif matte is None:
            jobs = [(path, [images])]
        elif spec.alpha:
            jobs = [(path, [images, matte])]
        else:
            jobs = [(path, [images]), (path.with_name(f"{path.stem}_matte{path.suffix}"), [matte])]
        frames, height, width = jobs[0][1][0].shape[:3]
        try:
            with runtime.Progress(frames * len(jobs), "Saving video") as bar:
                for target, layers in jobs:
                    with video_io.VideoWriter(target, rate, format, width, height, alpha=len(layers) == 2,
                                              quality=quality) as writer:
                        for start in range(0, frames, SAVE_CHUNK):
                            writer.write(torch.cat([layer[start:start + SAVE_CHUNK].cpu().float() for layer in layers], -1))
                            bar.update(min(SAVE_CHUNK, frames - start))
        except video_io.VideoError as exc:
            raise NodeInputError(node, "format", str(exc)) from None

        paths = "\n".join(str(target) for target, _ in jobs)
        previews = [video_io.ui_entry(target) for target, _ in jobs]
        return {"ui": {"images": previews, "animated": [True]}, "result": (paths,)}


class CVS_VideoToImages:
    DISPLAY_NAME = "CVS Video to Images"
    DESCRIPTION = "Split a ComfyUI VIDEO into an IMAGE batch and its exact frame rate."
    CATEGORY = CATEGORY
    FUNCTION = "split"
    RETURN_TYPES = ("IMAGE", "INT", "FLOAT", "STRING")
    RETURN_NAMES = ("images", "frame_count", "fps", "fps_fraction")
    OUTPUT_TOOLTIPS = CVS_LoadVideo.OUTPUT_TOOLTIPS[:1] + (
        "Number of frames.", "Frame rate as a number.", "Exact frame rate as a fraction string.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"video": ("VIDEO", {"tooltip": "A VIDEO from ComfyUI's Load Video or Create Video."})}}

    def split(self, video):
        node = self.DISPLAY_NAME
        if not runtime.is_video(video):
            raise NodeInputError(node, "video", f"got a {type(video).__name__}", "a VIDEO")
        images, rate = runtime.video_to_frames(video)
        images = check_image(node, "video", images)
        return images, images.shape[0], float(rate), video_io.format_fps(rate)


class CVS_ImagesToVideo:
    DISPLAY_NAME = "CVS Images to Video"
    DESCRIPTION = "Wrap an IMAGE batch and a frame rate as a ComfyUI VIDEO (for the core video nodes)."
    CATEGORY = CATEGORY
    FUNCTION = "combine"
    RETURN_TYPES = ("VIDEO",)
    RETURN_NAMES = ("video",)
    OUTPUT_TOOLTIPS = ("The frames as a VIDEO with the exact frame rate.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Frames [frames, height, width, 3]."}),
            "fps": ("STRING", {"default": "24", "tooltip": _FPS_TOOLTIP}),
        }}

    def combine(self, images, fps):
        node = self.DISPLAY_NAME
        images = check_image(node, "images", images)
        return (runtime.make_video(images, _parse_fps(node, fps)),)


_NODES = (CVS_LoadVideo, CVS_LoadImage, CVS_SaveVideo, CVS_VideoToImages, CVS_ImagesToVideo)
NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in _NODES}
NODE_DISPLAY_NAME_MAPPINGS = {cls.__name__: cls.DISPLAY_NAME for cls in _NODES}
