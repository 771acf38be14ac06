"""Memory-V2V long-video editing nodes (LucyEdit): split, edit segments with memory, stitch; plain LucyEdit.

Thin: segment bookkeeping is :mod:`.segments`, sampling :mod:`.edit_pipeline`, the
memory-conditioned DiT call :mod:`.memory_forward`, the bank :mod:`.bank`; the memory file
and text handling are shared with the re-render nodes (:mod:`.nodes`).
"""
from __future__ import annotations

import logging

import torch

from ..nodes.comfy import runtime
from ..nodes.comfy.errors import NodeInputError, check_image, describe, input_error
from ..nodes.comfy.families import check_model
from ..nodes.comfy.state_files import always_rerun, resetting, save_memory
from . import edit_pipeline as E
from . import lucy_family
from .bank import NonFiniteTurn
from .dinov2 import NAME as DINOV2, segment_descriptor
from .memory_forward import CallReport
from .nodes import (CATEGORY, MEMORY_TYPE, VideoMemory, adapters_input, check_memory, holds_nothing, read_memory,
                    text_tokens)
from .pipeline import fit_size
from .segments import SegmentPlan, edited_turns, next_segment, retrieve_segments, stitch

log = logging.getLogger("consistent_video")

SEGMENTS_TYPE = "CVS_VIDEO_SEGMENTS"
RUN_MODES = ("next segment", "all remaining segments")
_E = E.EditSettings()
DEFAULT_LENGTH, DEFAULT_OVERLAP = 81, 16  # LucyEdit's 81-frame window; a 16-frame (4 latent frames) cross-fade

# On a CPU the smoke demo edits at 64 x 64 with 2 steps.
lucy_family.SMOKE_OVERRIDES.update({
    "CVS_LoadVideo": {"max_frames": 13},  # 3 segments of 5 frames (overlap 1): memory of 1 and 2 segments
    "CVS_SplitVideoSegments": {"segment_length": 5, "overlap": 1},
    "CVS_MemoryV2VEditSegments": {"steps": 2, "width": 64, "height": 64},
    "CVS_LucyEditEdit": {"steps": 2, "width": 64, "height": 64},
})


def _check_plan(node: str, value) -> SegmentPlan:
    if not isinstance(value, SegmentPlan):
        raise NodeInputError(node, "segments", f"got {describe(value)}",
                             f"a {SEGMENTS_TYPE} from 'CVS Split Video Into Segments'")
    return value


_SIZE_EXPECTED = f"a multiple of {E.SIZE_MULTIPLE} px (LucyEdit's default: 832 x 480)"
_SETTING_EXPECTED = {"steps": "at least 1 step", "width": _SIZE_EXPECTED, "height": _SIZE_EXPECTED,
                     "top_k": "0 or more earlier segments", "merge_ratio": "a fraction from 0 to 1"}


def _settings(node: str, **values) -> E.EditSettings:
    try:
        return E.EditSettings(**values)
    except ValueError as exc:
        raise input_error(node, exc, _SETTING_EXPECTED) from None


def _lucy(node: str, model):
    handle = check_model(node, "model", model, lucy_family.NAME)
    return handle, handle.modules["transformer"]


def _sampling_inputs(defaults: E.EditSettings) -> dict:
    return {
        "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1, "tooltip": "Noise seed (segment i uses seed + i)."}),
        "steps": ("INT", {"default": defaults.steps, "min": 1, "max": 1000, "tooltip":
                  "Sampling steps (LucyEdit: 50)."}),
        "cfg": ("FLOAT", {"default": defaults.cfg, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip":
                "Classifier-free guidance (LucyEdit: 5.0)."}),
        "width": ("INT", {"default": defaults.width, "min": 32, "max": 2048, "step": 32, "tooltip":
                  "Working width, a multiple of 32 (LucyEdit: 832); frames are resized and centre-cropped, "
                  "never stretched."}),
        "height": ("INT", {"default": defaults.height, "min": 32, "max": 2048, "step": 32, "tooltip":
                   "Working height, a multiple of 32 (LucyEdit: 480)."}),
    }


_TEXT_INPUTS = {
    "prompt": ("STRING", {"default": "", "multiline": True, "tooltip":
               "The edit, e.g. 'Change the shirt to a red raincoat' (umT5 text; ignored when 'positive' is "
               "connected)."}),
    "negative_prompt": ("STRING", {"default": "", "multiline": True, "tooltip":
                        "Text of the unconditional branch (ignored when 'negative' is connected)."}),
}
_CONDITIONING_INPUTS = {
    "positive": ("CONDITIONING", {"tooltip": "Optional umT5 text from ComfyUI's CLIP Text Encode (Load CLIP: "
                                             "umt5_xxl, type wan)."}),
    "negative": ("CONDITIONING", {"tooltip": "Optional umT5 text of the unconditional branch."}),
}


class CVS_SplitVideoSegments:
    DISPLAY_NAME = "CVS Split Video Into Segments"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Splits a long video into overlapping segments of one length (4k + 1 frames) for segment-by-segment "
                   "editing. Consecutive segments share 'overlap' frames; the last one is aligned to the video's end "
                   "(it may overlap more). Nothing is resized here.")
    RETURN_TYPES = (SEGMENTS_TYPE, "INT", "STRING")
    RETURN_NAMES = ("segments", "count", "info")
    OUTPUT_TOOLTIPS = ("The plan: frames, spans and the video's fingerprint.", "How many segments.",
                       "The spans.")
    FUNCTION = "split"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video": ("IMAGE", {"tooltip": "The long video (e.g. from 'CVS Load Video')."}),
            "segment_length": ("INT", {"default": DEFAULT_LENGTH, "min": 5, "max": 1001, "step": 4, "tooltip":
                               "Frames per segment, 4k + 1 (LucyEdit: 81). At most the video's length."}),
            "overlap": ("INT", {"default": DEFAULT_OVERLAP, "min": 0, "max": 1000, "tooltip":
                        "Frames shared by consecutive segments, cross-faded when stitching; less than the length."}),
        }}

    def split(self, video, segment_length, overlap):
        node = self.DISPLAY_NAME
        video = check_image(node, "video", video)
        try:
            plan = SegmentPlan.create(video, segment_length, overlap)
        except ValueError as exc:
            raise input_error(node, exc, {
                "segment_length": f"4k + 1 frames, at most the video's {video.shape[0]}",
                "overlap": f"0 to {max(segment_length - 1, 0)} frames (fewer than segment_length)",
                "video": "a video of at least 1 frame"}, aliases={"length": "segment_length", "frames": "video"}) from None
        spans = ", ".join(f"{a}-{b - 1}" for a, b in plan.spans)
        return plan, plan.count, f"{plan.count} segment(s) of {segment_length} frames over {video.shape[0]}: {spans}"


class CVS_MemoryV2VEditSegments:
    DISPLAY_NAME = "CVS Memory-V2V Edit Segments"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Edits a long video segment by segment with LucyEdit, each segment conditioned on the earlier "
                   "edited segments that look most alike (DINOv2 of their sources; the previous segment always "
                   "first), entering as coarse extra tokens that are merged where the target attends little. "
                   "'next segment' edits one per queue run (queue again to go on); 'all remaining segments' edits "
                   "the rest in one run. Each segment is stored in the memory only when it completes: Cancel or an "
                   "error keeps the segments stored before. Stitch them with 'CVS Stitch Edited Segments'.")
    RETURN_TYPES = ("IMAGE", MEMORY_TYPE, "STRING")
    RETURN_NAMES = ("edited", "memory", "info")
    OUTPUT_TOOLTIPS = ("The segments edited in this run, one after another (length frames each); empty (one black "
                       "frame) when every segment was already edited.",
                       "The memory with the new segments.", "Per segment: retrieved segments, scores, tokens.")
    FUNCTION = "edit"
    IS_CHANGED = classmethod(always_rerun)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("CVS_MODEL", {"tooltip": "LucyEdit weights from 'CVS Model Loader' (family lucyedit)."}),
                "memory": (MEMORY_TYPE, {"tooltip": "The memory from 'CVS Video Memory': where the edited segments "
                                                    "are kept between runs."}),
                "segments": (SEGMENTS_TYPE, {"tooltip": "The plan from 'CVS Split Video Into Segments'."}),
                "dinov2": ("CVS_MODEL", {"tooltip": "DINOv2 from 'CVS Model Loader' (family dinov2): describes each "
                                                    "source segment for retrieval."}),
                **_TEXT_INPUTS,
                **_sampling_inputs(_E),
                "top_k": ("INT", {"default": _E.top_k, "min": 0, "max": 32, "tooltip":
                          "Earlier edited segments to condition on (the best 3 at 1x4x4 tokens, the rest at 1x8x8); "
                          "0 = each segment edited on its own (plain LucyEdit)."}),
                "merge_ratio": ("FLOAT", {"default": _E.merge_ratio, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                                "Share of the memory tokens, lowest responsiveness first, merged 2x2 at blocks 10 "
                                "and 20 (0 = off)."}),
                "run": (list(RUN_MODES), {"default": RUN_MODES[0], "tooltip":
                        "next segment: one segment per queue run. all remaining segments: the rest in this run."}),
            },
            "optional": {
                "adapter_weights": ("STRING", {"default": "", "tooltip": "Optional trained Memory-V2V adapters "
                                    "(.safetensors: coarse_embedding.1x4x4/1x8x8.*, token_merge.<block>.*); empty = "
                                    "the parameter-free defaults (tiled patch kernel, averaging)."}),
                **_CONDITIONING_INPUTS,
            },
        }

    def edit(self, model, memory, segments, dinov2, prompt, negative_prompt, seed, steps, cfg, width, height, top_k,
             merge_ratio, run, adapter_weights="", positive=None, negative=None):
        node = self.DISPLAY_NAME
        handle, transformer = _lucy(node, model)
        memory = check_memory(node, memory)
        plan = _check_plan(node, segments)
        check_model(node, "dinov2", dinov2, DINOV2)
        settings = _settings(node, steps=steps, cfg=cfg, seed=seed, width=width, height=height, top_k=top_k,
                             merge_ratio=merge_ratio)
        if run not in RUN_MODES:
            raise NodeInputError(node, "run", f"is {run!r}", f"one of {', '.join(RUN_MODES)}")
        adapters = adapters_input(node, adapter_weights, transformer)
        bank = read_memory(node, memory)
        try:
            first = next_segment(bank, plan.fingerprint, plan.count)
        except ValueError as exc:
            raise NodeInputError(node, "memory", f"holds inconsistent segments of this video ({exc})",
                                 "a memory with this video's segments in order (turn on 'reset' to start anew)") from None
        if first is None:
            return (torch.zeros(1, height, width, 3), memory,
                    f"all {plan.count} segment(s) are already edited in memory '{memory.name}'; connect 'CVS Stitch "
                    "Edited Segments', or reset the memory to edit again")
        todo = list(range(first, plan.count if run == RUN_MODES[1] else first + 1))
        text = text_tokens(node, handle, prompt, negative_prompt, positive, negative)
        if handle.is_smoke:
            log.warning("%s: %s holds SMOKE weights (tiny, random): the edit is noise.", node, handle.source)
        runtime.load_to_device([transformer, handle.modules["vae"]], handle.device)
        runtime.load_to_device([dinov2.modules["model"]], dinov2.device)
        codec = lucy_family.codec(handle)
        frames_out, lines = [], []
        with runtime.Progress(len(todo) * (settings.steps + 2), node) as bar:
            for index in todo:
                source_frames = fit_size(plan.segment(index), settings.width, settings.height)
                source = codec.encode(source_frames)
                descriptor = segment_descriptor(dinov2.modules["model"], source_frames)
                bar.update(1)
                picked = retrieve_segments(bank, plan.fingerprint, descriptor, settings.top_k, segment=index,
                                           latent_shape=tuple(source.shape))
                report = CallReport()
                memory_used = E.memory_segments(bank, picked, index)
                latent = E.sample_edit(transformer, lucy_family.make_scheduler(handle), source, text, memory_used,
                                       settings, settings.seed + index, handle.extra.get("expand_timesteps", True),
                                       bar.update, report, adapters)
                frames_out.append(codec.decode(latent))
                bar.update(1)
                try:  # only now: a cancelled or failed segment adds nothing
                    bank.add(E.make_edit_turn(latent, source, descriptor, prompt, plan.fingerprint, index))
                except NonFiniteTurn as exc:
                    raise NodeInputError(node, "model", f"produced segment {index} with NaN or infinite values "
                                         f"({exc}); memory '{memory.name}' keeps the segments stored before",
                                         "weights and settings that give finite latents") from None
                save_memory(memory.path, bank.save, keep_old=resetting(memory.reset, memory.path), empty=holds_nothing)
                memory = VideoMemory(memory.name, memory.path)
                lines.append(_segment_line(bank, plan, index, picked, memory_used, report))
        done = len(edited_turns(bank, plan.fingerprint))
        lines.append(f"{done} of {plan.count} segment(s) edited; the memory holds {len(bank)} turn(s)")
        return torch.cat(frames_out), memory, "\n".join(lines)


def _segment_line(bank, plan: SegmentPlan, index: int, picked, memory_used, report: CallReport) -> str:
    start, end = plan.spans[index]
    used = ", ".join(f"segment {bank.turns[i].segment} ({'prev, ' if m.role == 'prev' else ''}DINOv2 {score:.3f}, "
                     f"{m.tokenizer})" for (i, score), m in zip(picked, memory_used)) or "none"
    tokens = report.tokens
    merged = sum(len(m["merged"]) for m in report.merges)
    return (f"segment {index} (frames {start}-{end - 1}): memory {used}; tokens target {tokens.get('target', 0)}, "
            f"prev {tokens.get('prev', 0)}, memory {tokens.get('memory', 0)}; {merged} memory frame(s) merged"
            + (f"; sequence {report.lengths[0]} -> {report.lengths[-1]}" if report.lengths else ""))


class CVS_StitchEditedSegments:
    DISPLAY_NAME = "CVS Stitch Edited Segments"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Decodes the edited segments of a video stored in a memory and joins them, cross-fading "
                   "linearly over each overlap (no hard cut). Gives the frames edited so far: after k of n "
                   "segments, frames 0 up to the end of segment k.")
    RETURN_TYPES = ("IMAGE", "INT", "STRING")
    RETURN_NAMES = ("video", "segments_done", "info")
    OUTPUT_TOOLTIPS = ("The stitched edited video at the working size.", "How many segments it covers.",
                       "Which frames it covers.")
    FUNCTION = "stitch"
    IS_CHANGED = classmethod(always_rerun)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("CVS_MODEL", {"tooltip": "The LucyEdit weights (its VAE decodes the stored segments)."}),
            "memory": (MEMORY_TYPE, {"tooltip": "The memory the segments were stored in (link the edit node's "
                                                "memory output so this runs after it)."}),
            "segments": (SEGMENTS_TYPE, {"tooltip": "The same plan the segments were edited with."}),
        }}

    def stitch(self, model, memory, segments):
        node = self.DISPLAY_NAME
        handle, _ = _lucy(node, model)
        memory = check_memory(node, memory)
        plan = _check_plan(node, segments)
        bank = read_memory(node, memory)
        try:
            turns = edited_turns(bank, plan.fingerprint)
        except ValueError as exc:
            raise NodeInputError(node, "memory", f"holds inconsistent segments of this video ({exc})",
                                 "a memory with this video's segments in order") from None
        if not turns:
            raise NodeInputError(node, "memory", f"'{memory.name}' holds no edited segment of this video",
                                 "segments edited by 'CVS Memory-V2V Edit Segments' with the same plan")
        shapes = {tuple(bank.turns[i].latent.shape) for i in turns}
        if len(shapes) > 1:
            raise NodeInputError(node, "memory", f"holds this video's segments at different sizes {sorted(shapes)}",
                                 "segments edited at one width and height (reset the memory to edit again)")
        runtime.load_to_device([handle.modules["vae"]], handle.device)
        codec = lucy_family.codec(handle)
        decoded = []
        with runtime.Progress(len(turns), node) as bar:
            for i in turns:
                runtime.check_interrupt()
                decoded.append(codec.decode(bank.turns[i].latent.float()))
                bar.update(1)
        video = stitch(decoded, plan.spans, int(plan.frames.shape[0]))
        return video, len(turns), (f"{len(turns)} of {plan.count} segment(s): frames 0-{video.shape[0] - 1} of "
                                   f"{plan.frames.shape[0]}")


class CVS_LucyEditEdit:
    DISPLAY_NAME = "CVS LucyEdit Edit"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Plain LucyEdit, no memory (for comparison): edits the first 'frames' frames of a video as "
                   "diffusers' LucyEditPipeline does (source on channels, per-token timesteps, UniPC, CFG).")
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("video",)
    OUTPUT_TOOLTIPS = ("The edited frames at the working size.",)
    FUNCTION = "edit"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("CVS_MODEL", {"tooltip": "LucyEdit weights from 'CVS Model Loader' (family lucyedit)."}),
                "video": ("IMAGE", {"tooltip": "The video to edit."}),
                **_TEXT_INPUTS,
                "frames": ("INT", {"default": DEFAULT_LENGTH, "min": 5, "max": 1001, "step": 4, "tooltip":
                           "Frames to edit, 4k + 1 (LucyEdit: 81); the video's first frames."}),
                **_sampling_inputs(_E),
            },
            "optional": dict(_CONDITIONING_INPUTS),
        }

    def edit(self, model, video, prompt, negative_prompt, frames, seed, steps, cfg, width, height, positive=None,
             negative=None):
        node = self.DISPLAY_NAME
        handle, transformer = _lucy(node, model)
        video = check_image(node, "video", video)
        if frames < 1 or (frames - 1) % 4:
            raise NodeInputError(node, "frames", f"is {frames}", "4k + 1 frames (the Wan VAE's temporal stride)")
        if video.shape[0] < frames:
            raise NodeInputError(node, "video", f"has {video.shape[0]} frames", f"at least the {frames} to edit "
                                 "(or lower 'frames')")
        settings = _settings(node, steps=steps, cfg=cfg, seed=seed, width=width, height=height)
        text = text_tokens(node, handle, prompt, negative_prompt, positive, negative)
        if handle.is_smoke:
            log.warning("%s: %s holds SMOKE weights (tiny, random): the edit is noise.", node, handle.source)
        runtime.load_to_device([transformer, handle.modules["vae"]], handle.device)
        codec = lucy_family.codec(handle)
        with runtime.Progress(settings.steps + 2, node) as bar:
            source = codec.encode(fit_size(video[:frames], settings.width, settings.height))
            bar.update(1)
            latent = E.sample_edit(transformer, lucy_family.make_scheduler(handle), source, text, [], settings,
                                   settings.seed, handle.extra.get("expand_timesteps", True), bar.update)
            out = codec.decode(latent)
            bar.update(1)
        return (out,)


_NODES = (CVS_SplitVideoSegments, CVS_MemoryV2VEditSegments, CVS_StitchEditedSegments, CVS_LucyEditEdit)
NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in _NODES}
NODE_DISPLAY_NAME_MAPPINGS = {cls.__name__: cls.DISPLAY_NAME for cls in _NODES}
