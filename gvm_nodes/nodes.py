"""GVM nodes: thin wrappers that validate, convert and call the core modules."""
from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path

import torch

from ..nodes.comfy import runtime
from ..nodes.video import video_io
from ..nodes.comfy.errors import NodeInputError, check_image, check_mask
from ..nodes.comfy.families import check_model
from .foreground import composite, estimate_foreground, parse_color
from .pipeline import GVMMatter, MatteSettings, SettingError, apply_clamp, matte_frames, matte_stream, window_count

log = logging.getLogger("consistent_video")

CATEGORY = "Consistent Video/GVM"
FOREGROUND_CHUNK = 8  # frames per foreground-estimation batch (bounds memory)

_D = MatteSettings()
SETTING_INPUTS = {
    "size": ("INT", {"default": _D.size, "min": 64, "max": 4096, "step": 8,
                     "tooltip": "Short side of the working resolution (GVM: 720). Small videos are upscaled."}),
    "max_resolution": ("INT", {"default": _D.max_resolution, "min": 64, "max": 8192, "step": 8,
                               "tooltip": "Cap on the long side of the working resolution (GVM README: 960)."}),
    "frames_per_window": ("INT", {"default": _D.frames_per_window, "min": 1, "max": 128,
                                  "tooltip": "Frames the network sees at once. More = steadier, more GPU memory."}),
    "overlap": ("INT", {"default": _D.overlap, "min": 0, "max": 127,
                        "tooltip": "Frames shared by neighbouring windows, cross-faded so no seam shows."}),
    "refine_steps": ("INT", {"default": _D.refine_steps, "min": 0, "max": 8,
                             "tooltip": "Extra passes feeding the prediction back in (0 = GVM's one step)."}),
    "decode_chunk_size": ("INT", {"default": _D.decode_chunk_size, "min": 1, "max": 128,
                                  "tooltip": "Frames the VAE decodes at once (lower = less memory)."}),
    "clamp": ("BOOLEAN", {"default": _D.clamp,
                          "tooltip": "Snap near-0 alpha to 0 and near-1 alpha to 1 (GVM demo's post-process)."}),
    "clamp_low": ("FLOAT", {"default": round(_D.clamp_low, 4), "min": 0.0, "max": 1.0, "step": 0.001,
                            "tooltip": "With clamp: alpha at or below this becomes 0 (GVM: 25/255)."}),
    "clamp_high": ("FLOAT", {"default": round(_D.clamp_high, 4), "min": 0.0, "max": 1.0, "step": 0.001,
                             "tooltip": "With clamp: alpha at or above this becomes 1 (GVM: 240/255)."}),
}
BACKGROUND_COLOR = ("STRING", {"default": "#00B140",
                               "tooltip": "Composite background colour, '#RRGGBB' or 'r,g,b' (used when no "
                                          "background image is connected)."})
BACKGROUND_IMAGE = ("IMAGE", {"tooltip": "Optional background image or clip; scaled to cover and centre-cropped, "
                                         "a shorter clip loops."})


def _settings(node: str, values: dict) -> MatteSettings:
    settings = MatteSettings(**{k: values[k] for k in SETTING_INPUTS})
    try:
        settings.validate()
    except SettingError as exc:
        raise NodeInputError(node, exc.name, exc.problem, exc.expected) from None
    return settings


def _matter(node: str, model, settings: MatteSettings) -> GVMMatter:
    model = check_model(node, "model", model, "gvm")
    if model.is_smoke:
        log.warning("%s: running on SMOKE weights (%s): the matte is noise, not a result.", node, model.source)
    runtime.load_to_device(model.modules.values(), model.device)
    scheduler = model.extra["scheduler"]
    return GVMMatter(model.modules["unet"], model.modules["vae"], scheduler.config.num_train_timesteps, settings)


def _background(node: str, color: str, image):
    if image is not None:
        return check_image(node, "background", image)
    try:
        return parse_color(color)
    except ValueError as exc:
        raise NodeInputError(node, "background_color", str(exc), "'#RRGGBB' or 'r,g,b'") from None


def _foreground_and_composite(images: torch.Tensor, alpha: torch.Tensor, background, estimate: bool):
    """Foreground ``[N,H,W,3]`` and composite ``[N,H,W,3]``, in chunks of frames."""
    fgs, comps = [], []
    for start in range(0, images.shape[0], FOREGROUND_CHUNK):
        img, a = images[start:start + FOREGROUND_CHUNK], alpha[start:start + FOREGROUND_CHUNK]
        fg = estimate_foreground(img, a) if estimate else img
        fgs.append(fg)
        comps.append(composite(fg, a, background, first=start))
    return torch.cat(fgs), torch.cat(comps)


class CVS_GVMMatte:
    DISPLAY_NAME = "CVS GVM Video Matte"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Soft alpha mattes for a whole clip with GVM (one-step generative video matting): no first-frame "
                   "mask needed. Frames are processed in overlapping windows that are cross-faded, so clips of any "
                   "length work. Also outputs the estimated foreground colours and a composite.")
    RETURN_TYPES = ("MASK", "IMAGE", "IMAGE")
    RETURN_NAMES = ("alpha", "foreground", "composite")
    OUTPUT_TOOLTIPS = ("Soft alpha per frame, 0..1 (never binarised).",
                       "Foreground colours with the old background removed from soft edges (hair, blur).",
                       "Foreground over the background colour or image.")
    FUNCTION = "matte"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("CVS_MODEL", {"tooltip": "GVM model from 'CVS Model Loader' (family gvm)."}),
                "images": ("IMAGE", {"tooltip": "Video frames [frames, height, width, 3]."}),
                **SETTING_INPUTS,
                "estimate_foreground": ("BOOLEAN", {"default": True, "tooltip": "Estimate clean foreground colours "
                                                    "(blur-fusion); off = use the input pixels."}),
                "background_color": BACKGROUND_COLOR,
            },
            "optional": {"background": BACKGROUND_IMAGE},
        }

    def matte(self, model, images, estimate_foreground, background_color, background=None, **settings):
        node = self.DISPLAY_NAME
        images = check_image(node, "images", images)
        bg = _background(node, background_color, background)
        s = _settings(node, settings)
        matter = _matter(node, model, s)
        with runtime.Progress(window_count(images.shape[0], s.frames_per_window, s.overlap), "GVM windows") as bar:
            alpha = matte_frames(images, matter.matte_window, s.frames_per_window, s.overlap, bar.update)
        if s.clamp:
            alpha = apply_clamp(alpha, s.clamp_low, s.clamp_high)
        foreground, comp = _foreground_and_composite(images.float(), alpha, bg, estimate_foreground)
        return alpha, foreground, comp


class CVS_MatteComposite:
    DISPLAY_NAME = "CVS Matte Foreground & Composite"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Estimates clean foreground colours for any soft matte (blur-fusion) and composites them over a "
                   "colour or a background image/clip.")
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("foreground", "composite")
    OUTPUT_TOOLTIPS = ("Foreground colours.", "Foreground over the background.")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Original frames."}),
                "alpha": ("MASK", {"tooltip": "Soft matte, one per frame, same size as the frames."}),
                "estimate_foreground": ("BOOLEAN", {"default": True, "tooltip": "Estimate clean foreground "
                                                    "colours; off = use the input pixels."}),
                "background_color": BACKGROUND_COLOR,
            },
            "optional": {"background": BACKGROUND_IMAGE},
        }

    def run(self, images, alpha, estimate_foreground, background_color, background=None):
        node = self.DISPLAY_NAME
        images = check_image(node, "images", images)
        alpha = check_mask(node, "alpha", alpha)
        if alpha.shape != images.shape[:3]:
            raise NodeInputError(node, "alpha", f"has shape {list(alpha.shape)}",
                                 f"one mask per frame of the same size as 'images': {list(images.shape[:3])}")
        bg = _background(node, background_color, background)
        return _foreground_and_composite(images.float(), alpha.float(), bg, estimate_foreground)


class CVS_GVMMatteVideoFile:
    DISPLAY_NAME = "CVS GVM Matte Video File"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    DESCRIPTION = ("Mattes a video file of any length straight to output files, streaming: memory is bounded by the "
                   "window size, not the video length. Writes the alpha matte and optionally the foreground (with "
                   "alpha where the format has it) and a composite.")
    RETURN_TYPES = ("STRING", "INT")
    RETURN_NAMES = ("paths", "frame_count")
    OUTPUT_TOOLTIPS = ("Written files, one absolute path per line.", "Number of frames matted.")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        formats = list(video_io.FORMATS)  # all of them, so saved workflows load anywhere; missing encoders error
        return {
            "required": {
                "model": ("CVS_MODEL", {"tooltip": "GVM model from 'CVS Model Loader' (family gvm)."}),
                "video": ("STRING", {"default": "cvs_sample.mp4",
                                     "tooltip": "Video file: a path, or a name in ComfyUI's input folder."}),
                "max_frames": ("INT", {"default": 0, "min": 0, "max": 10_000_000,
                                       "tooltip": "Stop after this many frames (0 = the whole video)."}),
                **SETTING_INPUTS,
                "format": (formats, {"default": "prores4444-mov" if "prores4444-mov" in formats else formats[0],
                                     "tooltip": "Container/codec of the written files."}),
                "write_foreground": ("BOOLEAN", {"default": True, "tooltip": "Also write the estimated foreground "
                                                 "(RGBA where the format supports alpha)."}),
                "write_composite": ("BOOLEAN", {"default": False, "tooltip": "Also write a composite over the "
                                                "background colour or image."}),
                "background_color": BACKGROUND_COLOR,
                "filename_prefix": ("STRING", {"default": "ConsistentVideo/gvm",
                                               "tooltip": "Output name prefix, relative to the output folder."}),
            },
            "optional": {"background": BACKGROUND_IMAGE},
        }

    def run(self, model, video, max_frames, format, write_foreground, write_composite, background_color,
            filename_prefix, background=None, **settings):
        node = self.DISPLAY_NAME
        try:
            path = video_io.resolve_input_path(video)
            info = video_io.probe(path)
        except video_io.VideoError as exc:
            raise NodeInputError(node, "video", str(exc), "a readable video file with at least one frame") from None
        available = [name for name, spec in video_io.FORMATS.items() if spec.available]
        if format not in available:
            raise NodeInputError(node, "format", f"is '{format}', which this PyAV/FFmpeg build cannot write",
                                 f"one of {available}")
        bg = _background(node, background_color, background) if write_composite else None
        s = _settings(node, settings)
        matter = _matter(node, model, s)
        total = min(info.frame_count, max_frames) if max_frames else info.frame_count
        output = video_io.WriteSettings(info.frame_rate, format, info.width, info.height)
        ext = video_io.FORMATS[format].extension
        try:
            base = video_io.next_output_path(filename_prefix, ext)  # one counter for all files of this run
        except ValueError as exc:
            raise NodeInputError(node, "filename_prefix", str(exc)) from None
        stem, suffix = (base.name[: -len(ext) - 1], f".{ext}") if ext else (base.name, "")
        kinds = ["alpha"] + ["foreground"] * write_foreground + ["composite"] * write_composite
        out_paths = {k: base.with_name(f"{stem}_{k}{suffix}") for k in kinds}
        frames = video_io.read_frames(path, max_frames=max_frames)
        try:
            count = self._stream(frames, matter, s, total, out_paths, output, bg)
        except BaseException:  # cancelled or failed: leave no half-written files behind
            for written in out_paths.values():
                shutil.rmtree(written, ignore_errors=True) if written.is_dir() else written.unlink(missing_ok=True)
            raise
        if count == 0:
            raise NodeInputError(node, "video", f"{path} decoded to zero frames", "a video with at least one frame")
        files = [str(Path(p).resolve()) for p in out_paths.values()]
        ui = {"images": [video_io.ui_entry(p) for p in out_paths.values()], "animated": [True]}
        return {"ui": ui, "result": ("\n".join(files), count)}

    @staticmethod
    def _stream(frames, matter, s: MatteSettings, total: int, out_paths: dict, output: video_io.WriteSettings,
                bg) -> int:
        """Matte ``frames`` (``total`` of them, for the progress bar) into writers of
        ``out_paths`` made with ``output``; return the frame count."""
        count = 0
        with runtime.Progress(window_count(total, s.frames_per_window, s.overlap), "GVM windows") as bar, \
                output.writer(out_paths["alpha"]) as alpha_out, \
                _optional_writer(out_paths.get("foreground"), output, output.alpha) as fg_out, \
                _optional_writer(out_paths.get("composite"), output, False) as comp_out:
            for frame, alpha in matte_stream(frames, matter.matte_window, s.frames_per_window, s.overlap, bar.update):
                if s.clamp:
                    alpha = apply_clamp(alpha, s.clamp_low, s.clamp_high)
                alpha_out.write(alpha.unsqueeze(-1))
                if fg_out is not None or comp_out is not None:
                    fg = estimate_foreground(frame[None].float(), alpha[None])
                    if fg_out is not None:
                        fg_out.write(torch.cat([fg[0], alpha.unsqueeze(-1)], -1) if output.alpha else fg[0])
                    if comp_out is not None:
                        comp_out.write(composite(fg, alpha[None], bg, first=count)[0])
                count += 1
        return count


def _optional_writer(path, output: video_io.WriteSettings, alpha: bool):
    if path is None:
        return contextlib.nullcontext()
    return output.writer(path, alpha=alpha)


NODE_CLASS_MAPPINGS = {
    "CVS_GVMMatte": CVS_GVMMatte,
    "CVS_GVMMatteVideoFile": CVS_GVMMatteVideoFile,
    "CVS_MatteComposite": CVS_MatteComposite,
}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY_NAME for k, v in NODE_CLASS_MAPPINGS.items()}
