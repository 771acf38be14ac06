"""Memory-V2V nodes: a video memory on disk, source encoding, re-render turns, memory preview.

Thin: sampling is :mod:`.pipeline`, the memory-conditioned DiT call :mod:`.memory_forward`,
retrieval :mod:`.retrieval`, the bank :mod:`.bank`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..nodes.comfy import runtime
from ..nodes.cameras.preview import render_camera_preview
from ..nodes.cameras.geometry import CAMERA_TYPE, CameraBatch, check_cameras
from ..nodes.comfy.errors import NodeInputError, check_image, describe, input_error
from ..nodes.comfy.families import ModelHandle, check_model
from ..nodes.comfy.state_files import (PendingReset, always_rerun, ask_reset, check_name, resetting, save_memory,
                                       state_path)
from . import pipeline as P
from ..nodes.comfy.weights import WeightsError
from .adapters import load_adapters
from .bank import BankFileError, NonFiniteTurn, VideoMemoryBank
from .dinov2 import NAME as DINOV2, segment_descriptor
from .family import FAMILIES, WAN_REPO
from .memory_forward import SCALES, CallReport, tokenizer_for_rank
from .text import TEXT_LENGTH, encode_prompts, from_conditioning

log = logging.getLogger("consistent_video")

CATEGORY = "Consistent Video/Memory-V2V"
MEMORY_TYPE = "CVS_VIDEO_MEMORY"
SOURCE_TYPE = "CVS_V2V_SOURCE"
FOLDER = "cvs_video_memory"
_T = P.TurnSettings()
_SIZE_EXPECTED = "a multiple of 16 px (ReCamMaster's default: 832 x 480)"
RETRIEVAL = ("camera (VideoFOV)", "appearance (DINOv2)")


@dataclass(frozen=True)
class VideoMemory:
    """A named video memory file (what ``CVS_VIDEO_MEMORY`` carries). ``reset``: a reset asked
    for and not applied yet (while it holds, the memory reads as empty and the first turn
    stored applies it, :mod:`..nodes.comfy.state_files`)."""

    name: str
    path: Path
    reset: Optional[PendingReset] = None

    def __repr__(self) -> str:
        return f"<CVS video memory '{self.name}' at {self.path}>"


@dataclass
class Source:
    """An encoded user video (``CVS_V2V_SOURCE``): its frames at the working size, its latent."""

    frames: torch.Tensor
    latent: torch.Tensor
    settings: P.TurnSettings


def adapters_input(node: str, text: str, transformer):
    """The trained Memory-V2V adapters named by a node's ``adapter_weights`` input for
    ``transformer`` (:func:`.adapters.load_adapters`), ``None`` when the input is empty."""
    if not text or not text.strip():
        return None
    try:
        return load_adapters(Path(text.strip()).expanduser(), transformer)
    except WeightsError as exc:
        raise NodeInputError(node, "adapter_weights", str(exc), "empty (parameter-free defaults) or a Memory-V2V "
                             "adapter .safetensors made for this model") from None


def check_memory(node: str, value) -> VideoMemory:
    if not isinstance(value, VideoMemory):
        raise NodeInputError(node, "memory", f"got {describe(value)}", f"a {MEMORY_TYPE} from 'CVS Video Memory'")
    return value


def read_memory(node: str, memory: VideoMemory) -> VideoMemoryBank:
    """The memory's turns: none while its reset holds, else the file's."""
    if resetting(memory.reset, memory.path):
        return VideoMemoryBank()
    try:
        return VideoMemoryBank.load(memory.path)
    except BankFileError as exc:
        raise NodeInputError(node, "memory", f"cannot be read: {exc}",
                             "a file written by 'CVS Video Memory' (turn on 'reset' there to start anew)") from None


def holds_nothing(path: Path) -> bool:
    return VideoMemoryBank.stored_turns(path) == 0


def _summary(bank: VideoMemoryBank) -> str:
    def where(t) -> str:
        return "" if t.segment is None else f" (segment {t.segment} of video {t.video[:8]})"
    return f"{len(bank)} turn(s)" + "".join(f"\n  turn {i}: {t.frames} frames, {t.task}{where(t)}, '{t.prompt[:40]}'"
                                            for i, t in enumerate(bank.turns))


class CVS_VideoMemory:
    DISPLAY_NAME = "CVS Video Memory"
    CATEGORY = CATEGORY
    DESCRIPTION = ("A named Memory-V2V video memory: the turns re-rendered so far, in one file under the output "
                   "folder (cvs_video_memory/<name>.safetensors). Created when missing; 'reset' starts it anew "
                   "when the next turn is stored: only then is the old file kept as <name>.previous and replaced, "
                   "so a run that fails first loses nothing, and an empty memory never replaces that backup.")
    RETURN_TYPES = (MEMORY_TYPE, "STRING")
    RETURN_NAMES = ("memory", "info")
    OUTPUT_TOOLTIPS = ("The memory, for re-render turns and the preview.", "What it holds.")
    FUNCTION = "open"
    IS_CHANGED = classmethod(always_rerun)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "name": ("STRING", {"default": "v2v_memory", "tooltip": "File name of the memory (letters, digits, _ . -)."}),
            "reset": ("BOOLEAN", {"default": False, "tooltip": "Start an empty memory. Nothing changes until a "
                                  "turn is stored; then the old file is kept as <name>.previous.safetensors (one "
                                  "level of undo). Turn it off after one run: the node runs on every queue."}),
        }}

    def open(self, name, reset):
        node = self.DISPLAY_NAME
        name = check_name(node, name)
        path = state_path(FOLDER, name)
        if not path.exists():
            VideoMemoryBank().save(path)
        memory = VideoMemory(name, path, ask_reset(path) if reset else None)
        note = (f"\nreset: the stored memory is kept as {name}.previous and replaced when the next turn is stored "
                "(until then the file is unchanged)" if reset else "")
        return memory, _summary(read_memory(node, memory)) + note


class CVS_MemoryV2VEncodeSource:
    DISPLAY_NAME = "CVS Memory-V2V Encode Source"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Prepares the video to re-render: its first 'frames' frames at the working size (resize and "
                   "centre crop, never stretched), encoded once by the Wan VAE for every turn that uses it.")
    RETURN_TYPES = (SOURCE_TYPE, "IMAGE")
    RETURN_NAMES = ("source", "frames")
    OUTPUT_TOOLTIPS = ("The encoded video for re-render turns.", "The frames as the model sees them.")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("CVS_MODEL", {"tooltip": "ReCamMaster weights from 'CVS Model Loader' (its Wan VAE encodes)."}),
            "video": ("IMAGE", {"tooltip": "The video to re-render (e.g. from 'CVS Load Video')."}),
            "frames": ("INT", {"default": _T.frames, "min": 1, "max": 1001, "step": 4, "tooltip":
                       "Frames per turn, 4k + 1 (ReCamMaster: 81); the video's first frames are used."}),
            "width": ("INT", {"default": _T.width, "min": 16, "max": 2048, "step": 16, "tooltip":
                      "Working width (ReCamMaster: 832)."}),
            "height": ("INT", {"default": _T.height, "min": 16, "max": 2048, "step": 16, "tooltip":
                       "Working height (ReCamMaster: 480)."}),
        }}

    def encode(self, model, video, frames, width, height):
        node = self.DISPLAY_NAME
        handle = check_model(node, "model", model, FAMILIES)
        video = check_image(node, "video", video)
        try:
            settings = P.TurnSettings(frames=frames, width=width, height=height)
        except ValueError as exc:
            raise input_error(node, exc, {"frames": "4k + 1 frames, e.g. 81", "width": _SIZE_EXPECTED,
                                          "height": _SIZE_EXPECTED}) from None
        try:
            fitted = P.fit_video(video, settings)
        except ValueError as exc:
            raise NodeInputError(node, "video", str(exc)) from None
        if "vae" not in handle.modules:
            raise NodeInputError(node, "model", f"{handle.source} has no vae/ folder",
                                 f"vae/config.json + vae/diffusion_pytorch_model.safetensors from {WAN_REPO}")
        runtime.load_to_device([handle.modules["vae"]], handle.device)
        with runtime.Progress(1, node) as bar:
            latent = P.WanCodec(handle.modules["vae"]).encode(fitted)
            bar.update(1)
        return Source(fitted, latent, settings), fitted


def text_tokens(node: str, handle: ModelHandle, prompt: str, negative: str, positive_cond, negative_cond) -> torch.Tensor:
    """``[2, 512, text_dim]``: conditional then unconditional tokens (CONDITIONING inputs win)."""
    width = handle.modules["transformer"].config.text_dim
    encoder = handle.modules.get("text_encoder")
    out = []
    for name, text, cond in (("positive", prompt, positive_cond), ("negative", negative, negative_cond)):
        if cond is not None:
            try:
                out.append(from_conditioning(cond, width, TEXT_LENGTH))
            except ValueError as exc:
                raise NodeInputError(node, name, str(exc)) from None
        elif encoder is not None:
            runtime.load_to_device([encoder], handle.device)
            out.append(encode_prompts(encoder, handle.extra["tokenizer"], [text]))
        else:
            raise NodeInputError(node, name, f"is not connected and {handle.source} has no text_encoder/",
                                 "a CONDITIONING from CLIP Text Encode (umt5_xxl, type wan) or text_encoder/ + "
                                 "tokenizer/ in the model folder")
    return torch.cat(out)


def _report_text(picked, report: CallReport, bank: VideoMemoryBank, how: str = "VideoFOV score") -> str:
    lines = [f"retrieved {len(picked)} of {len(bank)} turn(s)"]
    for rank, (index, score) in enumerate(picked):
        lines.append(f"  turn {index}: {how} {score:.3f}, tokenized {tokenizer_for_rank(rank)}")
    tokens = report.tokens
    lines.append(f"tokens: target {tokens.get('target', 0)}, user {tokens.get('user', 0)}, memory "
                 f"{tokens.get('memory', 0)}")
    for merge in report.merges:
        lines.append(f"  block {merge['block']}: merged {len(merge['merged'])} of {len(merge['scores'])} "
                     "conditioning frames")
    if report.lengths:
        lines.append(f"sequence length: {report.lengths[0]} -> {report.lengths[-1]} (last block)")
    return "\n".join(lines)


class CVS_MemoryV2VRerender:
    DISPLAY_NAME = "CVS Memory-V2V Re-render Turn"
    CATEGORY = CATEGORY
    DESCRIPTION = ("One Memory-V2V turn: re-render the source video along new cameras with ReCamMaster, "
                   "conditioned on the earlier turns that saw the same directions (VideoFOV retrieval, coarse "
                   "tokens, token merging at blocks 10 and 20). The turn is added to the memory only when it "
                   "completes; Cancel or an error leaves the memory file unchanged. Runs on every queue.")
    RETURN_TYPES = ("IMAGE", CAMERA_TYPE, MEMORY_TYPE, "STRING")
    RETURN_NAMES = ("video", "cameras", "memory", "info")
    OUTPUT_TOOLTIPS = ("The re-rendered frames.", "Their cameras.", "The memory with this turn added.",
                       "Which turns were retrieved, their scores and the token counts.")
    FUNCTION = "rerender"
    IS_CHANGED = classmethod(always_rerun)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("CVS_MODEL", {"tooltip": "ReCamMaster weights from 'CVS Model Loader'."}),
                "memory": (MEMORY_TYPE, {"tooltip": "The memory from 'CVS Video Memory' (or a previous turn)."}),
                "source": (SOURCE_TYPE, {"tooltip": "The encoded video from 'CVS Memory-V2V Encode Source'."}),
                "cameras": (CAMERA_TYPE, {"tooltip": "The new camera path, one camera per frame. Its first camera is "
                                                     "the video's camera: the model gets every pose relative to it "
                                                     "(ReCamMaster's convention), so a path in any world works, e.g. a "
                                                     "ReCamMaster camera json from 'CVS Load Cameras'. Translations in "
                                                     "metres, as ReCamMaster was trained."}),
                "prompt": ("STRING", {"default": "", "multiline": True, "tooltip":
                           "What the video shows (umT5 text; ignored when 'positive' is connected)."}),
                "negative_prompt": ("STRING", {"default": "", "multiline": True, "tooltip":
                                    "Text of the unconditional branch (ignored when 'negative' is connected)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1, "tooltip": "Noise seed."}),
                "steps": ("INT", {"default": _T.steps, "min": 1, "max": 1000, "tooltip":
                          "Flow-matching steps (ReCamMaster: 50)."}),
                "cfg": ("FLOAT", {"default": _T.cfg, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip":
                        "Classifier-free guidance (ReCamMaster: 5.0)."}),
                "top_k": ("INT", {"default": _T.top_k, "min": 0, "max": 32, "tooltip":
                          "Earlier turns to condition on (the best 3 at 1x4x4 tokens, the rest at 1x8x8); 0 = "
                          "plain ReCamMaster."}),
                "merge_ratio": ("FLOAT", {"default": _T.merge_ratio, "min": 0.0, "max": 1.0, "step": 0.05,
                                "tooltip": "Share of the conditioning tokens, lowest responsiveness first, merged "
                                           "2x2 at blocks 10 and 20 (0 = off; only with memory)."}),
                "retrieval": (list(RETRIEVAL), {"default": RETRIEVAL[0], "tooltip":
                              "camera: earlier turns whose cameras saw the same directions (re-rendering). "
                              "appearance: turns whose source segments look alike by DINOv2, the latest first "
                              "(segments of a long video; needs 'dinov2')."}),
            },
            "optional": {
                "adapter_weights": ("STRING", {"default": "", "tooltip": "Optional trained Memory-V2V adapters "
                                    "(.safetensors: coarse_embedding.1x4x4/1x8x8.*, token_merge.<block>.*); empty = "
                                    "the parameter-free defaults (tiled patch kernel, averaging)."}),
                "dinov2": ("CVS_MODEL", {"tooltip": "DINOv2 from 'CVS Model Loader' (family dinov2): stores each "
                                                    "turn's source descriptor, used by appearance retrieval."}),
                "positive": ("CONDITIONING", {"tooltip": "Optional umT5 text from ComfyUI's CLIP Text Encode "
                                                         "(Load CLIP: umt5_xxl, type wan)."}),
                "negative": ("CONDITIONING", {"tooltip": "Optional umT5 text of the unconditional branch."}),
            },
        }

    def rerender(self, model, memory, source, cameras, prompt, negative_prompt, seed, steps, cfg, top_k,
                 merge_ratio, retrieval=RETRIEVAL[0], adapter_weights="", dinov2=None, positive=None, negative=None):
        node = self.DISPLAY_NAME
        handle = check_model(node, "model", model, FAMILIES)
        memory = check_memory(node, memory)
        if not isinstance(source, Source):
            raise NodeInputError(node, "source", f"got {describe(source)}",
                                 f"a {SOURCE_TYPE} from 'CVS Memory-V2V Encode Source'")
        base = source.settings
        cameras = check_cameras(node, "cameras", cameras)
        if len(cameras) != base.frames:
            raise NodeInputError(node, "cameras", f"has {len(cameras)} cameras for a {base.frames}-frame source",
                                 f"{base.frames} cameras, one per output frame")
        try:
            settings = P.TurnSettings(steps=steps, cfg=cfg, seed=seed, frames=base.frames, width=base.width,
                                      height=base.height, top_k=top_k, merge_ratio=merge_ratio)
        except ValueError as exc:
            raise input_error(node, exc, {"steps": "at least 1 step", "top_k": "0 or more earlier turns"}) from None
        if "vae" not in handle.modules:
            raise NodeInputError(node, "model", f"{handle.source} has no vae/ folder", "the Wan VAE in vae/")
        if retrieval not in RETRIEVAL:
            raise NodeInputError(node, "retrieval", f"is {retrieval!r}", f"one of {', '.join(RETRIEVAL)}")
        descriptor = None
        if dinov2 is not None:
            check_model(node, "dinov2", dinov2, DINOV2)
            runtime.load_to_device([dinov2.modules["model"]], dinov2.device)
            descriptor = segment_descriptor(dinov2.modules["model"], source.frames)
        elif retrieval == RETRIEVAL[1]:
            raise NodeInputError(node, "dinov2", "is not connected but retrieval is by appearance",
                                 "a DINOv2 model (family dinov2), or retrieval by camera")
        adapters = adapters_input(node, adapter_weights, handle.modules["transformer"])
        bank = read_memory(node, memory)
        text = text_tokens(node, handle, prompt, negative_prompt, positive, negative)
        if retrieval == RETRIEVAL[1]:
            picked, how = P.retrieve_by_appearance(bank, descriptor, settings.top_k), "DINOv2 cosine"
        else:
            picked, how = P.retrieve(bank, cameras, settings), "VideoFOV score"
        try:
            videos = P.memory_videos(bank, picked, tuple(source.latent.shape), cameras)
        except ValueError as exc:
            raise NodeInputError(node, "memory", str(exc)) from None
        if handle.is_smoke:
            log.warning("%s: %s holds SMOKE weights (tiny, random): the video is noise.", node, handle.source)
        runtime.load_to_device([handle.modules["transformer"], handle.modules["vae"]], handle.device)
        report = CallReport()
        with runtime.Progress(settings.steps + 1, node) as bar:
            latent = P.sample(handle.modules["transformer"], source.latent, P.camera_rows(cameras, base.frames),
                              text, videos, settings, progress=bar.update, report=report, adapters=adapters)
            video = P.WanCodec(handle.modules["vae"]).decode(latent)
            bar.update(1)
        info = _report_text(picked, report, bank, how)
        try:  # only now: a failed or cancelled turn adds nothing
            bank.add(P.make_turn(latent, cameras, prompt, descriptor))
        except NonFiniteTurn as exc:
            raise NodeInputError(node, "model", f"produced a turn with NaN or infinite values ({exc}); memory "
                                 f"'{memory.name}' is unchanged", "weights and settings that give finite latents "
                                 "(check the checkpoint, 'cfg' and 'adapter_weights')") from None
        save_memory(memory.path, bank.save, keep_old=resetting(memory.reset, memory.path), empty=holds_nothing)
        memory = VideoMemory(memory.name, memory.path)
        return video, cameras, memory, info + f"\nthe memory now holds {len(bank)} turn(s)"


class CVS_VideoMemoryPreview:
    DISPLAY_NAME = "CVS Video Memory Preview"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Shows what a video memory holds and, given a camera path, which turns a re-render along it "
                   "would retrieve (VideoFOV scores) and how many tokens each would bring.")
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("info", "preview")
    OUTPUT_TOOLTIPS = ("Turns, scores and token counts.", "Top view of every turn's cameras (and the path).")
    FUNCTION = "preview"
    IS_CHANGED = classmethod(always_rerun)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "memory": (MEMORY_TYPE, {"tooltip": "The memory from 'CVS Video Memory'."}),
                "top_k": ("INT", {"default": _T.top_k, "min": 0, "max": 32, "tooltip": "As in the re-render node."}),
            },
            "optional": {"cameras": (CAMERA_TYPE, {"tooltip": "A planned camera path to rank the turns for."})},
        }

    def preview(self, memory, top_k, cameras=None):
        node = self.DISPLAY_NAME
        bank = read_memory(node, check_memory(node, memory))
        lines = [_summary(bank)]
        paths = [t.cameras for t in bank.turns if t.cameras is not None]  # edit turns have no cameras
        if cameras is not None:
            cameras = check_cameras(node, "cameras", cameras)
            picked = P.retrieve(bank, cameras, P.TurnSettings(top_k=top_k))
            lines.append(f"a turn along this path would retrieve {len(picked)}:")
            for rank, (index, score) in enumerate(picked):
                turn = bank.turns[index]
                scale = SCALES[tokenizer_for_rank(rank)]
                _, frames, h, w = turn.latent.shape
                tokens = frames * -(-h // (2 * scale)) * -(-w // (2 * scale))
                lines.append(f"  turn {index}: score {score:.3f}, {tokens} tokens "
                             f"({'1x4x4' if scale == 2 else '1x8x8'})")
            paths.append(cameras)
        if paths:
            image = render_camera_preview(CameraBatch.cat(paths), 512, 320, "top")
        else:
            image = torch.full((1, 320, 512, 3), 0.1)
        return "\n".join(lines), image


_NODES = (CVS_VideoMemory, CVS_MemoryV2VEncodeSource, CVS_MemoryV2VRerender, CVS_VideoMemoryPreview)
NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in _NODES}
NODE_DISPLAY_NAME_MAPPINGS = {cls.__name__: cls.DISPLAY_NAME for cls in _NODES}
