"""Bad input through ComfyUI's ``/prompt``: the cases of the integration suite's fuzz test.

Each case is a small API prompt around one CVS node (its upstream built from the
pack's own loaders and the bundled assets, its first output fed to ComfyUI's
``PreviewAny`` so the node is validated and run) with one input made bad. Every case
must end in a validation error (HTTP 400) or an execution error that names the node,
the input and what was expected; the server must keep serving; memory-bank files
must stay byte-identical. :func:`judge` decides whether an answer is clear.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

WALK = "vmem_walk"  # banks the example workflows leave in the output folder
V2V = "v2v_three_turns"
SINK = "PreviewAny"

FAMILY_OF = {  # target node -> the model family its 'model' input takes
    "CVS_GVMMatte": "gvm", "CVS_GVMMatteVideoFile": "gvm",
    "CVS_VMemNavigate": "vmem", "CVS_VMemWalk": "vmem", "CVS_SurfelMemoryAddFrames": "depth_anything_v2",
    "CVS_VideoMVTextToViews": "videomv_t2v", "CVS_VideoMVImageToViews": "videomv_i2v",
    "CVS_MemoryV2VEncodeSource": "recammaster", "CVS_MemoryV2VRerender": "recammaster",
    "CVS_VideoSceneRefine": "videoscene", "CVS_VideoSceneTwoPhotos": "noposplat",
    "CVS_MemoryV2VEditSegments": "lucyedit", "CVS_StitchEditedSegments": "lucyedit", "CVS_LucyEditEdit": "lucyedit",
}
INPUT_FAMILY = {"depth_model": "depth_anything_v2", "dinov2": "dinov2"}  # model inputs named for their family


@dataclass
class Case:
    """One bad prompt: ``target`` is the node that must report ``input_name``."""

    name: str
    prompt: dict
    target: str
    class_type: str
    input_name: str
    repeat: int = 1  # queue it this many times (a failure must not add up)
    valid: str = ""  # why the node may accept it (an input it is meant to handle), else ""


class Graph:
    """Builds a valid prompt around one node; providers are added for its link inputs."""

    def __init__(self, node_classes: dict, smoke_entry: str):
        self.node_classes, self.smoke_entry = node_classes, smoke_entry
        self.prompt: dict = {}

    def add(self, class_type: str, inputs: dict, title: Optional[str] = None) -> str:
        """A node with ``inputs`` over its defaults (the pack's nodes; ComfyUI's own get ``inputs`` only)."""
        node_id = str(len(self.prompt) + 1)
        cls = self.node_classes.get(class_type)
        full = {**(_defaults(cls) if cls is not None else {}), **inputs}
        self.prompt[node_id] = {"class_type": class_type, "inputs": full, "_meta": {"title": title or class_type}}
        return node_id

    def loader(self, family: str) -> list:
        return [self.add("CVS_ModelLoader", {"family": family, "weights": self.smoke_entry, "path": "",
                                             "repo_id": "", "precision": "auto", "device": "auto"}), 0]

    def provide(self, kind: str, target_class: str, input_name: str) -> Optional[list]:
        """A link of type ``kind`` for ``input_name`` of ``target_class`` (None: leave it out)."""
        if kind == "CVS_MODEL":
            family = INPUT_FAMILY.get(input_name) or FAMILY_OF.get(target_class)
            return self.loader(family) if family else None
        if kind == "IMAGE":
            return [self.add("CVS_LoadVideo", {"video": "cvs_sample.mp4", "start_frame": 0, "end_frame": -1,
                                               "stride": 1, "max_frames": 9, "width": 64, "height": 48}), 0]
        if kind == "MASK":
            return [self.add("CVS_LoadImage", {"image": "cvs_object.png"}), 1]
        if kind == "CVS_CAMERA":
            return [self.add("CVS_OrbitCameras", {"views": 9, "elevation_deg": 10.0, "distance": 2.0,
                                                  "azimuth_start_deg": 0.0, "azimuth_range_deg": 90.0,
                                                  "width": 64, "height": 48, "fov_deg": 50.0}), 0]
        if kind == "CVS_SURFEL_MEMORY":
            return [self.add("CVS_SurfelMemory", {"name": WALK, "reset": False}), 0]
        if kind == "CVS_VIDEO_MEMORY":
            return [self.add("CVS_VideoMemory", {"name": V2V, "reset": False}), 0]
        if kind == "CVS_GAUSSIANS":
            return [self.add("CVS_LoadSplats", {"ply": "cvs_scene.ply"}), 0]
        if kind == "VIDEO":
            return [self.add("CVS_ImagesToVideo", {"images": self.provide("IMAGE", "", ""), "fps": "8"}), 0]
        if kind == "CVS_VIDEO_SEGMENTS":
            return [self.add("CVS_SplitVideoSegments", {"video": self.provide("IMAGE", "", ""), "segment_length": 5,
                                                        "overlap": 2}), 0]
        if kind == "CVS_V2V_SOURCE":
            return [self.add("CVS_MemoryV2VEncodeSource", {"model": self.loader("recammaster"),
                                                           "video": self.provide("IMAGE", "", ""),
                                                           "frames": 9, "width": 64, "height": 48}), 0]
        return None


def _defaults(cls: type) -> dict:
    """Every widget input at its declared default (the node as the menu creates it)."""
    from consistent_video.nodes.comfy.contract import input_specs

    return {s.name: s.default() for s in input_specs(cls) if s.is_widget}


# Values that make a node work at smoke size where its defaults do not.
WORKING = {
    "CVS_LoadCameras": {"format": "cvs_json"},
    "CVS_VMemNavigate": {"resolution": 128, "steps": 2},
    "CVS_VMemWalk": {"resolution": 128, "steps": 2},
    "CVS_VideoMVTextToViews": {"resolution": 64, "steps": 2},
    "CVS_VideoMVImageToViews": {"resolution": 64, "steps": 2},
    "CVS_MemoryV2VRerender": {"steps": 1},
    "CVS_MemoryV2VEditSegments": {"steps": 1, "width": 64, "height": 64},
    "CVS_LucyEditEdit": {"steps": 1, "width": 64, "height": 64, "frames": 5},
    "CVS_SplitVideoSegments": {"segment_length": 5, "overlap": 2},
}
OPTIONAL_LINKS = {"CVS_SaveVideo": ("images",), "CVS_VMemNavigate": ("image",), "CVS_VMemWalk": ("image",)}
"""Optional link inputs a node needs to do its job here (connected like the required ones)."""


def build(class_type: str, node_classes: dict, smoke_entry: str, changes: Optional[dict] = None,
          links: Optional[dict] = None) -> tuple[dict, str]:
    """A prompt with ``class_type`` wired to providers and a ``PreviewAny`` sink; returns it
    and the target's id. ``changes`` sets widget values, ``links`` replaces link inputs
    (``{input: (provider class, inputs, slot)}``)."""
    from consistent_video.nodes.comfy.contract import input_specs

    cls = node_classes[class_type]
    graph = Graph(node_classes, smoke_entry)
    inputs = {**_defaults(cls), **WORKING.get(class_type, {})}
    for spec in input_specs(cls):
        if spec.is_widget or links and spec.name in links:
            continue
        if not spec.required and spec.name not in OPTIONAL_LINKS.get(class_type, ()):
            continue
        link = graph.provide(spec.type_name, class_type, spec.name)
        if link is not None:
            inputs[spec.name] = link
    for name, (provider, provider_inputs, slot) in (links or {}).items():
        inputs[name] = [graph.add(provider, provider_inputs), slot]
    inputs.update(changes or {})
    target = graph.add(class_type, inputs)
    graph.add(SINK, {"source": [target, 0]})
    return graph.prompt, target


def generated_cases(node_classes: dict, smoke_entry: str) -> list[Case]:
    """The mechanical cases: every FLOAT widget NaN, every INT widget one past its range,
    every COMBO a value not in it, every required link of another type."""
    from consistent_video.nodes.comfy.contract import input_specs

    cases = []
    for class_type, cls in sorted(node_classes.items()):
        for spec in input_specs(cls):
            bad: list[tuple[str, Any]] = []
            if spec.is_widget and spec.type == "FLOAT":
                bad.append(("nan", math.nan))
                if "max" in spec.options:
                    bad.append(("inf", math.inf))
            elif spec.is_widget and spec.type == "INT":
                if "max" in spec.options and spec.options["max"] < 2 ** 62:
                    bad.append(("above max", spec.options["max"] + 1))
                if "min" in spec.options:
                    bad.append(("below min", spec.options["min"] - 1))
            elif spec.choices is not None:
                bad.append(("not a choice", "no-such-choice"))
            for label, value in bad:
                prompt, target = build(class_type, node_classes, smoke_entry, changes={spec.name: value})
                cases.append(Case(f"{class_type}.{spec.name} {label}", prompt, target, class_type, spec.name))
            if not spec.is_widget and spec.required:
                wrong = ("CVS_LoadImage", {"image": "cvs_object.png"}, 1) if spec.type_name != "MASK" \
                    else ("CVS_LoadVideo", {"video": "cvs_sample.mp4", "max_frames": 4, "width": 64, "height": 48}, 0)
                prompt, target = build(class_type, node_classes, smoke_entry, links={spec.name: wrong})
                cases.append(Case(f"{class_type}.{spec.name} wrong link type", prompt, target, class_type, spec.name))
    return cases


def judge(case: Case, answer: dict, display_names: dict) -> tuple[str, str]:
    """``("clear" | "unclear" | "accepted" | "valid", message)`` for one answer.

    ``"valid"`` instead of ``"accepted"`` when the case says why the node may take it.
    ``answer`` is ``{"http": status, "body": ...}`` for a refused prompt or
    ``{"history": entry}`` for a prompt that ran. A validation error is clear when
    ComfyUI lists it under the target node with ``input_name`` = the case's input (its
    message then names the input and the allowed values); an execution error is clear
    when it comes from the target node and its message names the node (display name or
    class), the input (quoted) and what was expected.
    """
    if "http" in answer:
        body = answer["body"] if isinstance(answer["body"], dict) else {}
        node_errors = body.get("node_errors") or {}
        errors = (node_errors.get(case.target) or {}).get("errors") or []
        for error in errors:
            if (error.get("extra_info") or {}).get("input_name") == case.input_name:
                return "clear", f"{error.get('message')}: {error.get('details')}"
        return "unclear", f"HTTP {answer['http']}: {str(body)[:600]}"
    entry = answer["history"]
    messages = dict(entry.get("status", {}).get("messages", []))
    if "execution_error" not in messages:
        status = entry.get("status", {}).get("status_str", "?")
        return ("valid" if case.valid and status == "success" else "accepted"), status
    data = messages["execution_error"]
    text = str(data.get("exception_message", ""))
    names_node = display_names.get(case.class_type, case.class_type) in text or case.class_type in text
    clear = (str(data.get("node_id")) == case.target and names_node and f"'{case.input_name}'" in text
             and "expected" in text.lower())
    return ("clear" if clear else "unclear"), f"#{data.get('node_id')} {data.get('node_type')}: {text[:600]}"


def _with(prompt: dict, node_id: str, **inputs) -> dict:
    prompt[node_id]["inputs"].update(inputs)
    return prompt


def hand_cases(node_classes: dict, smoke_entry: str) -> list[Case]:
    """Missing files, empty strings, 1x1 images, 0 frames, corrupt / wrong-model weights,
    camera counts, and the sequences that once lost a memory (a reset followed by a
    failure, twice; NaN guidance into a memory)."""
    def case(name, class_type, input_name, changes=None, links=None, **kw):
        prompt, target = build(class_type, node_classes, smoke_entry, changes=changes, links=links)
        return Case(name, prompt, target, class_type, input_name, **kw)

    tiny = ("EmptyImage", {"width": 1, "height": 1, "batch_size": 1, "color": 0}, 0)
    tiny_mask = ("SolidMask", {"value": 1.0, "width": 1, "height": 1}, 0)
    cases = [
        case("Load Video: missing file", "CVS_LoadVideo", "video", {"video": "no_such_clip.mp4"}),
        case("Load Video: empty path", "CVS_LoadVideo", "video", {"video": ""}),
        case("Load Video: start past the end (0 frames)", "CVS_LoadVideo", "start_frame", {"start_frame": 100000}),
        case("Load Video: 16384x16384", "CVS_LoadVideo", "width", {"width": 16384, "height": 16384}),
        case("Load Image: missing file", "CVS_LoadImage", "image", {"image": "no_such_picture.png"}),
        case("Load Splats: missing file", "CVS_LoadSplats", "ply", {"ply": "no_such_scene.ply"}),
        case("Load Cameras: empty path", "CVS_LoadCameras", "path", {"path": ""}),
        case("Load Cameras: missing file", "CVS_LoadCameras", "path", {"path": "no_such_cameras.json"}),
        case("GVM file: missing video", "CVS_GVMMatteVideoFile", "video", {"video": "no_such_clip.mp4"}),
        case("Model loader: corrupt weights", "CVS_ModelLoader", "weights",
             {"family": "gvm", "weights": "cvs-corrupt"}),
        case("Model loader: another model's weights", "CVS_ModelLoader", "weights",
             {"family": "gvm", "weights": "cvs-wrong-model"}),
        case("Model loader: empty entry, no path, offline", "CVS_ModelLoader", "weights",
             {"family": "gvm", "weights": "auto", "repo_id": ""}),
        case("Surfel memory: empty name", "CVS_SurfelMemory", "name", {"name": ""}),
        case("Surfel memory: name with a path", "CVS_SurfelMemory", "name", {"name": "../escape"}),
        case("Video memory: empty name", "CVS_VideoMemory", "name", {"name": ""}),
        case("Keyframe cameras: empty", "CVS_KeyframeCameras", "keyframes", {"keyframes": ""}),
        case("Keyframe cameras: not JSON", "CVS_KeyframeCameras", "keyframes", {"keyframes": "[{position"}),
        case("Navigate cameras: unknown action", "CVS_NavigateCameras", "actions", {"actions": "jump 3"}),
        case("Save video: empty fps", "CVS_SaveVideo", "fps", {"fps": ""}),
        case("Save video: 1x1 frames", "CVS_SaveVideo", "images", links={"images": tiny},
             valid="any frame size is saved (padded to what the codec takes)"),
        case("GVM matte: 1x1 frames", "CVS_GVMMatte", "images", links={"images": tiny},
             valid="GVM mattes frames of any size at its working resolution (tests/test_gvm.py)"),
        case("GVM matte: bad background colour", "CVS_GVMMatte", "background_color", {"background_color": "#zz"}),
        case("VideoMV text: empty prompt", "CVS_VideoMVTextToViews", "prompt", {"prompt": "   "}),
        case("VideoMV text: resolution not a multiple of 8", "CVS_VideoMVTextToViews", "resolution",
             {"resolution": 70}),
        case("VideoMV text: 9 cameras for 24 views", "CVS_VideoMVTextToViews", "cameras",
             links={"cameras": ("CVS_OrbitCameras", {"views": 9}, 0)}),
        case("VideoMV prepare: 1x1 image", "CVS_VideoMVPrepareImage", "image",
             links={"image": tiny, "mask": tiny_mask},
             valid="the object, however small, is scaled onto the canvas at the object fraction"),
        case("VideoScene: 1x1 video", "CVS_VideoSceneRefine", "video", links={"video": tiny}),
        case("Memory-V2V encode: 1x1 video", "CVS_MemoryV2VEncodeSource", "video", links={"video": tiny}),
        case("VMem navigate: 1x1 start image", "CVS_VMemNavigate", "image",
             {"action": "turn_left"}, links={"image": tiny},
             valid="a new walk starts from any picture, resized to the working size (a flat colour here)"),
        case("Surfel memory undo: more steps than the walk has", "CVS_SurfelMemoryUndo", "steps", {"steps": 10000}),
        case("Camera preview: 8 px wide", "CVS_CameraPreview", "width", {"width": 8}),
        case("Memory-V2V: NaN cfg twice into the memory", "CVS_MemoryV2VRerender", "cfg", {"cfg": math.nan},
             repeat=2),
        case("Split segments: a segment longer than the video", "CVS_SplitVideoSegments", "segment_length",
             {"segment_length": 81}),
        case("Split segments: overlap as long as a segment", "CVS_SplitVideoSegments", "overlap", {"overlap": 5}),
        case("Edit segments: width not a multiple of 32", "CVS_MemoryV2VEditSegments", "width", {"width": 48}),
        case("Edit segments: NaN cfg twice into the memory", "CVS_MemoryV2VEditSegments", "cfg", {"cfg": math.nan},
             repeat=2),
        case("LucyEdit: more frames than the video", "CVS_LucyEditEdit", "video", {"frames": 81}),
        case("Stitch: no edited segment of this video", "CVS_StitchEditedSegments", "memory"),
    ]
    # A new walk from a 1x1 start image (the start image of a walk that has begun is not used).
    start = next(c for c in cases if c.name.startswith("VMem navigate: 1x1"))
    for node in start.prompt.values():
        if node["class_type"] == "CVS_SurfelMemory":
            node["inputs"]["name"] = "fuzz_new_walk"
    # A reset of the walk's memory, then a failure downstream, twice: the walk must survive.
    prompt, target = build("CVS_VMemNavigate", node_classes, smoke_entry, changes={"angle": math.nan})
    memory_id = next(i for i, n in prompt.items() if n["class_type"] == "CVS_SurfelMemory")
    prompt[memory_id]["inputs"]["reset"] = True
    cases.append(Case("VMem: reset, then a failing step, twice", prompt, target, "CVS_VMemNavigate", "angle",
                      repeat=2))
    rerender, _ = build("CVS_MemoryV2VRerender", node_classes, smoke_entry, changes={"cfg": math.nan})
    rerender_id = next(i for i, n in rerender.items() if n["class_type"] == "CVS_MemoryV2VRerender")
    reset_memory = next(i for i, n in rerender.items() if n["class_type"] == "CVS_VideoMemory")
    rerender[reset_memory]["inputs"]["reset"] = True
    cases.append(Case("Memory-V2V: reset, then a failing turn, twice", rerender, rerender_id,
                      "CVS_MemoryV2VRerender", "cfg", repeat=2))
    return cases
