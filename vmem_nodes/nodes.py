"""VMem surfel-memory nodes: create/load a named memory, add frames, retrieve, undo, preview.

A memory bank is NAMED and lives in one file, ``<output>/cvs_memory/<name>.safetensors``
(the format of :meth:`~.memory.SurfelMemory.save`), so every queue run continues the same
walk and a restart loses nothing. Between nodes it travels as a :class:`MemoryBank`
(type ``CVS_SURFEL_MEMORY``): the name and the file, not the data. A node that changes the
memory changes its in-process copy of the file (read again whenever the file changed) and
saves atomically only after everything succeeded; a failed or cancelled run leaves the file
exactly as it was and drops the changed copy. Every node re-runs
on every queue (the file is the state), so chain the memory output from node to node to
fix their order. A reset is applied by the first node that stores into the memory
(:mod:`..nodes.comfy.state_files`); until then the file is untouched and readers see it empty.
"""
from __future__ import annotations

import dataclasses
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..nodes.cameras import preview as camera_preview
from ..nodes.comfy import runtime
from ..nodes.cameras.geometry import CAMERA_TYPE, CameraBatch, check_cameras, unproject
from ..nodes.comfy.errors import NodeInputError, check_image, check_mask, describe
from ..nodes.comfy.families import ModelHandle, check_model
from ..nodes.comfy.state_files import (EXTENSION, PendingReset, always_rerun, ask_reset, check_name, identity,
                                       resetting, save_memory, state_path)
from ..nodes.encoders.vae import ComfyVAECodec, DiffusersVAECodec, LatentCodec
from .depth_family import FAMILY as DEPTH_FAMILY, depth_estimator, output_kind
from .family import FAMILIES
from .memory import MemoryFileError, SurfelMemory
from .pointmaps import DepthModelProvider
from .retrieval import RetrievalSettings
from .surfel_index import MergeSettings
from .surfels import Pointmaps, SurfelInputError, SurfelSettings

log = logging.getLogger("consistent_video")

CATEGORY = "Consistent Video/VMem"
MEMORY_TYPE = "CVS_SURFEL_MEMORY"
FOLDER = "cvs_memory"
DEPTH_CHUNK = 4  # frames per depth-model batch


@dataclass(frozen=True)
class MemoryBank:
    """A named surfel memory on disk (what ``CVS_SURFEL_MEMORY`` carries between nodes).

    ``reset``: a reset asked for by 'CVS Surfel Memory' and not applied yet; while it holds,
    nodes read an empty memory with ``settings`` (surfel, merge) and the first node that
    stores applies it (:func:`_save`).
    """

    name: str
    path: Path
    reset: Optional[PendingReset] = None
    settings: Optional[tuple[SurfelSettings, MergeSettings]] = None

    def __repr__(self) -> str:
        return f"<CVS surfel memory '{self.name}' at {self.path}>"


def bank_path(name: str) -> Path:
    """``<output>/cvs_memory/<name>.safetensors``."""
    return state_path(FOLDER, name)


def _check_bank(node: str, value) -> MemoryBank:
    if not isinstance(value, MemoryBank):
        raise NodeInputError(node, "memory", f"got {describe(value)}",
                             f"a {MEMORY_TYPE} from 'CVS Surfel Memory'")
    return value


# The memory last read or written per file, with the file's identity then: a chain of memory
# nodes reads the file once, not once per node. The file stays the truth: an entry is used
# only while the file is unchanged, and a node that fails after changing an entry drops it.
_CACHE: dict[Path, tuple[tuple, SurfelMemory]] = {}


def _read(path: Path) -> SurfelMemory:
    """The memory as the file at ``path`` holds it (:class:`MemoryFileError` if unreadable)."""
    current = identity(path)
    cached = _CACHE.get(path)
    if current is not None and cached is not None and cached[0] == current:
        return cached[1]
    memory = SurfelMemory.load(path)
    _CACHE[path] = (current, memory)
    return memory


def _load(node: str, bank: MemoryBank) -> SurfelMemory:
    """The bank's memory: a new empty one while a reset holds, else the file's."""
    if resetting(bank.reset, bank.path):
        return SurfelMemory(*bank.settings)
    try:
        return _read(bank.path)
    except MemoryFileError as exc:
        raise NodeInputError(node, "memory", f"cannot be read: {exc}",
                             "a memory file written by 'CVS Surfel Memory' (turn on 'reset' there to start anew)"
                             ) from None


@contextmanager
def _changing(node: str, bank: MemoryBank):
    """Yield the bank's memory to change and save; if anything fails (or is cancelled), the
    changed copy is dropped, so the next node reads the unchanged file again."""
    memory = _load(node, bank)
    try:
        yield memory
    except BaseException:
        _CACHE.pop(bank.path, None)
        raise
    if not resetting(bank.reset, bank.path):  # else the new memory was not stored: the file stays the truth
        _CACHE[bank.path] = (identity(bank.path), memory)


def _holds_nothing(path: Path) -> bool:
    """Whether the file at ``path`` holds no step (its header only: the cached memory may be changed)."""
    return SurfelMemory.stored_steps(path) == 0


def _save(bank: MemoryBank, memory: SurfelMemory, keep_old: bool = False) -> MemoryBank:
    """Save ``memory`` as the bank's file; with ``keep_old``, or when the bank's reset holds
    (which this applies), the file it replaces is kept as ``<name>.previous`` unless it held
    nothing. Returns the bank without its reset, for the nodes after this one."""
    save_memory(bank.path, memory.save, keep_old=keep_old or resetting(bank.reset, bank.path), empty=_holds_nothing)
    return MemoryBank(bank.name, bank.path)


def _input_error(node: str, exc: SurfelInputError, names: dict[str, str]) -> NodeInputError:
    """A core validation error as a node error naming the node's input."""
    return NodeInputError(node, names.get(exc.argument, exc.argument), exc.problem, exc.expected)


def _summary(memory: SurfelMemory) -> str:
    return f"{memory.num_frames} frames in {memory.num_steps} steps, {memory.num_surfels} surfels"


# --------------------------------------------------------------------------- create / load
_S, _M = SurfelSettings(), MergeSettings()


class CVS_SurfelMemory:
    DISPLAY_NAME = "CVS Surfel Memory"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Creates or continues a named VMem surfel memory: the views of a walk anchored to the surface "
                   "elements (surfels) they saw. It lives in output/cvs_memory/<name>.safetensors, so every queue "
                   "run continues the same walk and a restart loses nothing. Surfel settings are fixed when the "
                   "memory is created. 'reset' starts it anew when the next node stores into it (a Navigate step, "
                   "Add Frames): only then is the old file kept as <name>.previous and replaced, so a run that "
                   "fails first loses nothing, and an empty memory never replaces that backup.")
    RETURN_TYPES = (MEMORY_TYPE, "STRING")
    RETURN_NAMES = ("memory", "info")
    OUTPUT_TOOLTIPS = ("The named memory; chain it through the memory nodes in the order they should run.",
                       "What the memory holds.")
    FUNCTION = "open"
    IS_CHANGED = classmethod(always_rerun)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "name": ("STRING", {"default": "walk", "tooltip": "Name of the memory (letters, digits, '_', '-', '.'). "
                                                              "Same name = same memory across runs and restarts."}),
            "reset": ("BOOLEAN", {"default": False, "tooltip": "Start an empty memory (with these settings). "
                                  "Nothing changes until a node stores into it; then the stored one is kept as "
                                  "<name>.previous. Turn it off again after one run: the node runs on every "
                                  "queue."}),
            "grid_size": ("INT", {"default": _S.grid_size, "min": 2, "max": 512, "tooltip":
                          "Surfels per frame on the longer image side (VMem: 25, about 475 per frame)."}),
            "max_depth_quantile": ("FLOAT", {"default": _S.max_depth_quantile, "min": 0.001, "max": 1.0,
                                   "step": 0.001, "tooltip": "Drop each frame's farthest points above this depth "
                                                             "quantile (sky, outliers). 1 keeps all."}),
            "radius_scale": ("FLOAT", {"default": _S.radius_scale, "min": 0.001, "max": 100.0, "step": 0.01,
                             "tooltip": "Surfel disk radius relative to the pixel footprint (VMem: 0.5)."}),
            "normal_threshold": ("FLOAT", {"default": _M.normal_threshold, "min": -1.0, "max": 1.01, "step": 0.01,
                                 "tooltip": "New surfels merge into nearby ones whose normals agree by at least "
                                            "this cosine (VMem: 0.6); above 1 never merges."}),
        }}

    def open(self, name, reset, grid_size, max_depth_quantile, radius_scale, normal_threshold):
        node = self.DISPLAY_NAME
        name = check_name(node, name)
        surfel = dataclasses.replace(_S, grid_size=grid_size, max_depth_quantile=max_depth_quantile,
                                     radius_scale=radius_scale)
        merge = dataclasses.replace(_M, normal_threshold=normal_threshold)
        try:
            surfel.validate()
            merge.validate()
        except SurfelInputError as exc:
            raise _input_error(node, exc, {}) from None
        bank = MemoryBank(name, bank_path(name))
        if bank.path.is_file() and reset:
            return (MemoryBank(name, bank.path, ask_reset(bank.path), (surfel, merge)),
                    f"memory '{name}': reset, new and empty; the stored memory is kept as {name}.previous and "
                    "replaced when a node stores into this one (until then the file is unchanged)")
        if bank.path.is_file():
            try:
                memory = _read(bank.path)
            except MemoryFileError as exc:
                raise NodeInputError(node, "name", f"refers to a memory that cannot be read: {exc}",
                                     "a readable memory, or 'reset' on to start anew (the file is kept as "
                                     f"{name}.previous{EXTENSION})") from None
            info = f"memory '{name}': {_summary(memory)}"
            if (memory.surfel_settings, memory.merge_settings.normal_threshold) != (surfel, normal_threshold):
                info += "; it keeps the settings it was created with (turn on 'reset' to apply new ones)"
                log.warning("%s: %s", node, info)
            return bank, info
        SurfelMemory(surfel, merge).save(bank.path)
        return bank, f"memory '{name}': new and empty ({bank.path})"


# --------------------------------------------------------------------------- add frames
def latent_codec(node: str, handle: Optional[ModelHandle], vae) -> tuple[LatentCodec, list[torch.nn.Module]]:
    """The SD 2.1 autoencoder of a VMem walk (images ``[N,H,W,3]`` 0..1 <-> latents
    ``[N,4,H/8,W/8]``): ComfyUI's ``vae`` (input 'vae') when connected, else the ``vae/`` of
    the VMem/SEVA model ``handle`` (input 'model'). Returns it with the networks to load on
    the model's device (none for ComfyUI's VAE, which ComfyUI places itself)."""
    if vae is not None:
        try:
            return ComfyVAECodec(vae), []
        except (ValueError, AttributeError) as exc:
            raise NodeInputError(node, "vae", str(exc), "ComfyUI's SD 2.1 VAE (4 latent channels, 8x)") from None
    if handle is not None and "vae" in handle.modules:
        return DiffusersVAECodec(handle.modules["vae"]), [handle.modules["vae"]]
    problem = f"is not connected and {handle.source} has no vae/ folder" if handle is not None else \
        "and 'model' are both unconnected"
    raise NodeInputError(node, "vae", problem, "a VAE input (SD 2.1, 'Load VAE') or vae/config.json + "
                         "vae/diffusion_pytorch_model.safetensors in the model folder")


def _pointmaps_from_depth(depth: torch.Tensor, confidence: torch.Tensor, cameras: CameraBatch) -> Pointmaps:
    """Pointmaps of z-depth maps ``[N,H,W]`` (0 = no geometry) seen by ``cameras``."""
    valid = depth > 0
    points = unproject(torch.where(valid, depth, torch.ones_like(depth)), cameras.to("cpu"))
    return Pointmaps(points, torch.where(valid, depth, torch.zeros_like(depth)), confidence * valid)


class CVS_SurfelMemoryAddFrames:
    DISPLAY_NAME = "CVS Surfel Memory Add Frames"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Memorises frames (one step) in a surfel memory: their geometry comes from a depth map per frame "
                   "or from a Depth Anything V2 model (scaled to what the memory already holds), their cameras place "
                   "it in the world, and the images are stored for retrieval. A VMem walk's memory also stores each "
                   "frame's latent: connect the walk's model (or its VAE) and the frames are encoded, so the walk "
                   "continues with them (they must have the walk's square size). The memory file is saved only "
                   "when everything succeeded; a failed or cancelled run leaves it unchanged. Runs on every queue.")
    RETURN_TYPES = (MEMORY_TYPE, "STRING")
    RETURN_NAMES = ("memory", "report")
    OUTPUT_TOOLTIPS = ("The memory, with the frames added and saved.", "Frames and surfels added.")
    FUNCTION = "add"
    IS_CHANGED = classmethod(always_rerun)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "memory": (MEMORY_TYPE, {"tooltip": "The memory from 'CVS Surfel Memory' or a previous "
                                                    "memory node."}),
                "images": ("IMAGE", {"tooltip": "The frames to memorise [frames, height, width, 3]; the same size "
                                                "for the whole memory."}),
                "cameras": (CAMERA_TYPE, {"tooltip": "One camera per frame (OpenCV camera-to-world in the memory's "
                                                     "world)."}),
                "min_confidence": ("FLOAT", {"default": _S.min_confidence, "min": 0.0, "max": 1.0, "step": 0.01,
                                   "tooltip": "Pixels whose confidence is below this make no surfels (confidence "
                                              "is 1 where there is depth unless a confidence mask is given)."}),
            },
            "optional": {
                "depth": ("MASK", {"tooltip": "Z-depth per pixel in scene units [frames, height, width], same size "
                                              "as the images; 0 = no geometry. Takes precedence over depth_model."}),
                "depth_model": ("CVS_MODEL", {"tooltip": "A Depth Anything V2 model from 'CVS Model Loader' (family "
                                              "depth_anything_v2), used when no depth is connected."}),
                "confidence": ("MASK", {"tooltip": "Optional per-pixel confidence 0..1, same size as the images."}),
                "model": ("CVS_MODEL", {"tooltip": "The VMem (or SEVA) model of the walk: its vae/ encodes the frames "
                                                   "into the latents a walk's memory stores (needed for a walk's "
                                                   "memory; on an empty memory it makes the frames walkable)."}),
                "vae": ("VAE", {"tooltip": "Optional: the SD 2.1 VAE the walk uses (ComfyUI 'Load VAE'), instead "
                                           "of the model folder's vae/."}),
            },
        }

    def add(self, memory, images, cameras, min_confidence, depth=None, depth_model=None, confidence=None,
            model=None, vae=None):
        node = self.DISPLAY_NAME
        bank = _check_bank(node, memory)
        images = check_image(node, "images", images)
        n, height, width = images.shape[:3]
        cams = check_cameras(node, "cameras", cameras, count=n)
        if depth is None and depth_model is None:
            raise NodeInputError(node, "depth", "and 'depth_model' are both unconnected",
                                 "a depth MASK or a Depth Anything V2 model")
        frame_shape = f"[{n}, {height}, {width}] like 'images'"
        if depth is not None:
            depth = check_mask(node, "depth", depth).float().cpu()
            if tuple(depth.shape) != (n, height, width):
                raise NodeInputError(node, "depth", f"has shape {list(depth.shape)}", frame_shape)
            if not torch.isfinite(depth).all():
                raise NodeInputError(node, "depth", "has NaN or infinite values", "finite z-depth (0 = no geometry)")
        else:
            check_model(node, "depth_model", depth_model, DEPTH_FAMILY)
        if confidence is not None:
            confidence = check_mask(node, "confidence", confidence).float().cpu()
            if tuple(confidence.shape) != (n, height, width):
                raise NodeInputError(node, "confidence", f"has shape {list(confidence.shape)}", frame_shape)
            if not torch.isfinite(confidence).all():
                raise NodeInputError(node, "confidence", "has NaN or infinite values", "values 0..1")
        else:
            confidence = torch.ones(n, height, width)
        handle = check_model(node, "model", model, FAMILIES) if model is not None else None

        depth_steps = 0 if depth is not None else -(-n // DEPTH_CHUNK)
        names = {"frames": "images", "points": "depth" if depth is not None else "depth_model",
                 "estimator output": "depth_model", "latents": "vae" if vae is not None else "model"}
        with _changing(node, bank) as store, runtime.Progress(depth_steps + 3, "surfel memory") as bar:
            encode = store.stores_latents or (store.num_frames == 0 and (handle is not None or vae is not None))
            if store.stores_latents and handle is None and vae is None:
                raise NodeInputError(node, "model", f"and 'vae' are both unconnected, but memory '{bank.name}' "
                                     "stores a latent per frame (a VMem walk)", "the walk's VMem/SEVA model (its "
                                     "vae/ encodes the frames) or the SD 2.1 VAE the walk uses")
            if not encode and (handle is not None or vae is not None):
                log.warning("%s: memory '%s' stores no latents; 'model' / 'vae' is not used.", node, bank.name)
            store.surfel_settings = dataclasses.replace(store.surfel_settings, min_confidence=min_confidence)
            try:
                latents = None
                if encode:
                    codec, modules = latent_codec(node, handle, vae)
                    if modules:
                        runtime.load_to_device(modules, handle.device)
                    try:
                        latents = codec.encode(images.float().cpu()).float().cpu()
                    except ValueError as exc:
                        raise NodeInputError(node, "images", str(exc), "frames the walk's VAE can encode") from None
                bar.update()
                if depth is not None:
                    pointmaps = _pointmaps_from_depth(depth, confidence, cams)
                else:
                    if depth_model.is_smoke:
                        log.warning("%s: depth from SMOKE weights (%s): the geometry is noise.", node,
                                    depth_model.source)
                    provider = DepthModelProvider(depth_estimator(depth_model, DEPTH_CHUNK, bar.update),
                                                  output=output_kind(depth_model))
                    pointmaps = provider(images, cams, store)
                    pointmaps.confidence = pointmaps.confidence * confidence
                bar.update()
                report = store.add_frames(pointmaps, cams, images=images, latents=latents)
            except SurfelInputError as exc:
                raise _input_error(node, exc, names) from None
            bar.update()  # the last Cancel point: after it the file is replaced
            bank = _save(bank, store)
        first, last = int(report.frames[0]), int(report.frames[-1])
        text = (f"added frames {first}..{last} ({n}){' with their latents' if latents is not None else ''}: "
                f"{report.added} new surfels, {report.merged} merged into existing ones; memory '{bank.name}' now "
                f"holds {_summary(store)}")
        return bank, text


# --------------------------------------------------------------------------- retrieve
_R = RetrievalSettings()


class CVS_SurfelMemoryRetrieve:
    DISPLAY_NAME = "CVS Surfel Memory Retrieve"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Selects the memorised views that saw what the query cameras will see (VMem's surfel retrieval: "
                   "render the surfels from the query, vote per frame, rank by pose distance, pick views with the "
                   "optional diversity rule). Outputs their images, cameras and memory indices.")
    RETURN_TYPES = ("IMAGE", CAMERA_TYPE, "STRING", "INT")
    RETURN_NAMES = ("images", "cameras", "indices", "count")
    OUTPUT_TOOLTIPS = ("The selected memorised frames, nearest first.", "Their cameras.",
                       "Their frame indices in the memory, comma separated.", "How many views were selected.")
    FUNCTION = "retrieve"
    IS_CHANGED = classmethod(always_rerun)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "memory": (MEMORY_TYPE, {"tooltip": "The memory to retrieve from."}),
            "cameras": (CAMERA_TYPE, {"tooltip": "The query (target) cameras; the surfels are rendered from the "
                                                 "mean pose of the last 'query_views' of them."}),
            "top_k": ("INT", {"default": _R.num_views, "min": 1, "max": 256, "tooltip":
                      "How many context views to select (fewer when the memory holds fewer frames)."}),
            "extra_candidates": ("INT", {"default": _R.extra_candidates, "min": 0, "max": 1024, "tooltip":
                                 "Candidate slots beyond top_k, shared among frames by their votes."}),
            "use_nms": ("BOOLEAN", {"default": _R.use_nms, "tooltip": "Diversity rule: prefer candidates far in "
                                    "pose from those already selected."}),
            "nms_relax": ("FLOAT", {"default": _R.nms_relax, "min": 1.01, "max": 10.0, "step": 0.01, "tooltip":
                          "With use_nms: the distance threshold is divided by this until enough views qualify."}),
            "include_most_recent": ("BOOLEAN", {"default": _R.include_most_recent, "tooltip":
                                    "Always include the most recently memorised frame."}),
            "translation_weight": ("FLOAT", {"default": _R.translation_weight, "min": 0.0, "max": 100.0,
                                   "step": 0.01, "tooltip": "Pose distance = this x translation + rotation angle "
                                                            "(radians)."}),
            "query_views": ("INT", {"default": _R.query_views, "min": 1, "max": 256, "tooltip":
                            "The surfels are rendered from the mean pose of this many last query cameras."}),
            "render_width": ("INT", {"default": _R.render_width, "min": 8, "max": 2048, "tooltip":
                             "Width of the surfel render used for voting (larger = finer, slower)."}),
        }}

    def retrieve(self, memory, cameras, top_k, extra_candidates, use_nms, nms_relax, include_most_recent,
                 translation_weight, query_views, render_width):
        node = self.DISPLAY_NAME
        bank = _check_bank(node, memory)
        cams = check_cameras(node, "cameras", cameras)
        settings = RetrievalSettings(num_views=top_k, extra_candidates=extra_candidates, use_nms=use_nms,
                                     nms_relax=nms_relax, include_most_recent=include_most_recent,
                                     translation_weight=translation_weight, query_views=query_views,
                                     render_width=render_width)
        store = _load(node, bank)
        try:
            settings.validate()
            found = store.retrieve(cams, settings)
        except SurfelInputError as exc:
            raise _input_error(node, exc, {"num_views": "top_k", "memory": "memory"}) from None
        if found.images is None:
            raise NodeInputError(node, "memory", "stores no images", "a memory filled by 'CVS Surfel Memory Add "
                                 "Frames'")
        indices = [int(i) for i in found.indices]
        return found.images, found.cameras, ",".join(map(str, indices)), len(indices)


# --------------------------------------------------------------------------- frames
class CVS_SurfelMemoryFrames:
    DISPLAY_NAME = "CVS Surfel Memory Frames"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Outputs memorised frames in the order they were added (e.g. the whole VMem walk so far, for a "
                   "video) with their cameras.")
    RETURN_TYPES = ("IMAGE", CAMERA_TYPE, "INT")
    RETURN_NAMES = ("images", "cameras", "count")
    OUTPUT_TOOLTIPS = ("The frames as memorised (square for VMem walks).", "Their cameras.", "How many frames.")
    FUNCTION = "frames"
    IS_CHANGED = classmethod(always_rerun)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "memory": (MEMORY_TYPE, {"tooltip": "The memory to read."}),
            "start": ("INT", {"default": 0, "min": -1_000_000, "max": 1_000_000, "tooltip":
                      "First frame; negative counts from the end (-8 = the last 8 frames)."}),
            "count": ("INT", {"default": 0, "min": 0, "max": 1_000_000, "tooltip": "How many frames; 0 = all "
                                                                                  "from 'start'."}),
        }}

    def frames(self, memory, start, count):
        node = self.DISPLAY_NAME
        bank = _check_bank(node, memory)
        store = _load(node, bank)
        if store.num_frames == 0:
            raise NodeInputError(node, "memory", "holds no frames", "a memory with frames")
        first = start + store.num_frames if start < 0 else start
        if not 0 <= first < store.num_frames:
            raise NodeInputError(node, "start", f"is {start}", f"-{store.num_frames}..{store.num_frames - 1}")
        last = store.num_frames if count == 0 else min(store.num_frames, first + count)
        indices = torch.arange(first, last)
        images = store.images(indices)
        if images is None:
            raise NodeInputError(node, "memory", "stores no images", "a memory filled with images")
        return images, store.cameras(indices), len(indices)


# --------------------------------------------------------------------------- undo
class CVS_SurfelMemoryUndo:
    DISPLAY_NAME = "CVS Surfel Memory Undo"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Removes the last step(s) added to a surfel memory, exactly, and saves it. What it removes stays "
                   "recoverable: the memory as it was before the undo is kept as <name>.previous (one level, "
                   "shared with reset). More steps than the memory holds are refused, naming how many it holds. "
                   "It runs on every queue: bypass it after use, or each run undoes another step.")
    RETURN_TYPES = (MEMORY_TYPE, "STRING")
    RETURN_NAMES = ("memory", "report")
    OUTPUT_TOOLTIPS = ("The memory with the steps removed (saved).", "What was removed.")
    FUNCTION = "undo"
    IS_CHANGED = classmethod(always_rerun)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "memory": (MEMORY_TYPE, {"tooltip": "The memory to change."}),
            "steps": ("INT", {"default": 1, "min": 1, "max": 10000, "tooltip": "How many of the last add steps to "
                              "remove (at most the steps the memory holds). The memory before the undo is kept as "
                              "<name>.previous, so an undo can be taken back."}),
        }}

    def undo(self, memory, steps):
        node = self.DISPLAY_NAME
        bank = _check_bank(node, memory)
        with _changing(node, bank) as store:
            if not 1 <= steps <= store.num_steps:
                held = store.num_steps
                why = " (its 'reset' is on)" if resetting(bank.reset, bank.path) else ""
                raise NodeInputError(node, "steps", f"is {steps}, but memory '{bank.name}' holds {held} step(s){why}",
                                     f"1..{held}" if held else "a memory with steps to undo (this one is empty)")
            removed = sum(store.undo() for _ in range(steps))
            bank = _save(bank, store, keep_old=True)
        return bank, (f"removed {removed} frame(s) in {steps} step(s); memory '{bank.name}' now holds "
                      f"{_summary(store)} (the memory before the undo is kept as {bank.name}.previous)")


# --------------------------------------------------------------------------- preview
def _even_subset(count: int, limit: int) -> Optional[torch.Tensor]:
    return None if count <= limit else torch.linspace(0, count - 1, limit).round().long()


class CVS_SurfelMemoryPreview:
    DISPLAY_NAME = "CVS Surfel Memory Preview"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Draws the memory's surfels coloured by how many views saw them (dark blue = one, red = the "
                   "most), with the memorised cameras or the cameras you connect.")
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("image", "info")
    OUTPUT_TOOLTIPS = ("The preview [1, height, width, 3].", "What the memory holds.")
    FUNCTION = "preview"
    IS_CHANGED = classmethod(always_rerun)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "memory": (MEMORY_TYPE, {"tooltip": "The memory to draw."}),
                "view": (list(camera_preview.VIEWS), {"default": "top", "tooltip":
                         "top: from above; perspective: from above, behind and to the right; front / side: "
                         "orthographic along z / x."}),
                "width": ("INT", {"default": 512, "min": 16, "max": 8192, "tooltip": "Preview width in pixels."}),
                "height": ("INT", {"default": 512, "min": 16, "max": 8192, "tooltip": "Preview height in pixels."}),
                "frustum_size": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1e6, "step": 0.01, "tooltip":
                                 "Frustum depth in scene units; 0 = 8% of the scene's extent."}),
                "max_points": ("INT", {"default": 50000, "min": 1, "max": 10_000_000, "tooltip":
                               "At most this many surfels are drawn (an even subset)."}),
            },
            "optional": {
                "cameras": (CAMERA_TYPE, {"tooltip": "Cameras to draw (e.g. the next targets); default: the "
                                                     "memorised frames' cameras."}),
            },
        }

    def preview(self, memory, view, width, height, frustum_size, max_points, cameras=None):
        node = self.DISPLAY_NAME
        bank = _check_bank(node, memory)
        if view not in camera_preview.VIEWS:
            raise NodeInputError(node, "view", f"is '{view}'", f"one of {', '.join(camera_preview.VIEWS)}")
        if width < 16 or height < 16:
            raise NodeInputError(node, "width" if width < 16 else "height", f"is {min(width, height)}", "at least 16")
        store = _load(node, bank)
        if cameras is not None:
            cams = check_cameras(node, "cameras", cameras)
        elif store.num_frames:
            cams = store.cameras()
        else:
            cams = CameraBatch.identity(1)
        points, colours, counts = store.preview()
        pick = _even_subset(len(points), max_points)
        if pick is not None:
            points, colours = points[pick], colours[pick]
        image = camera_preview.render_camera_preview(cams, width, height, view, frustum_size, points, colours)
        most = int(counts.max()) if counts.numel() else 0
        return image, f"memory '{bank.name}': {_summary(store)}; the most-seen surfel was seen by {most} frame(s)"


_NODES = (CVS_SurfelMemory, CVS_SurfelMemoryAddFrames, CVS_SurfelMemoryRetrieve, CVS_SurfelMemoryFrames,
          CVS_SurfelMemoryUndo, CVS_SurfelMemoryPreview)
NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in _NODES}
NODE_DISPLAY_NAME_MAPPINGS = {cls.__name__: cls.DISPLAY_NAME for cls in _NODES}
