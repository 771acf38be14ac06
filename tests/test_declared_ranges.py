"""Every INT/FLOAT range a node declares (min, max, step) holds only values the node accepts.

For each registered node and numeric input, the declared extremes -- ``min`` and the largest
``min + k * step`` not above ``max`` (the values ComfyUI's widget can be set to) -- go through
the node's own checks with every other input at its default. Nodes that need no model run
for real; nodes that sample with a model run the checks they apply before sampling (their
settings objects and check helpers), since 1000 steps at full size is no unit test. The
inputs whose legal range depends on other inputs or on stored data are listed with the
reason, and a test makes sure no numeric input is left out.
"""
import itertools

import pytest
import torch

import consistent_video
from consistent_video.gvm_nodes import nodes as gvm_nodes
from consistent_video.memory_v2v_nodes import nodes as v2v_nodes
from consistent_video.memory_v2v_nodes import edit_pipeline as v2v_edit_pipeline
from consistent_video.memory_v2v_nodes import pipeline as v2v_pipeline
from consistent_video.nodes.cameras import formats as camera_formats, trajectories
from consistent_video.nodes.video import video_io, video_nodes
from consistent_video.nodes.cameras.geometry import CameraBatch, intrinsics_from_fov
from consistent_video.nodes.comfy.errors import NodeInputError
from consistent_video.nodes.comfy.contract import input_specs
from consistent_video.videomv_nodes import nodes as videomv_nodes
from consistent_video.videomv_nodes import pipeline as videomv_pipeline
from consistent_video.vmem_nodes import nodes as surfel_nodes
from consistent_video.vmem_nodes.navigation import NavigationSettings
from consistent_video.vmem_nodes.pipeline import GenerationError, GenerationSettings
from consistent_video.vmem_nodes.pointmaps import DepthModelProvider
from consistent_video.vmem_nodes.retrieval import RetrievalSettings
from consistent_video.vmem_nodes.surfels import SurfelInputError

NODES = consistent_video.NODE_CLASS_MAPPINGS
NUMERIC = sorted((node_id, spec.name) for node_id, cls in NODES.items() for spec in input_specs(cls)
                 if spec.type in ("INT", "FLOAT") and ("min" in spec.options or "max" in spec.options))

# (node id, input) -> why its legal values depend on something other than its own declaration
DEPENDENT = {
    ("CVS_LoadVideo", "start_frame"): "must lie inside the video",
    ("CVS_SurfelMemoryFrames", "start"): "must index a stored frame",
    ("CVS_SurfelMemoryUndo", "steps"): "cannot undo more steps than stored",
    **{(node, name): "cross-field: overlap < frames_per_window, clamp_low < clamp_high (with clamp on)"
       for node in ("CVS_GVMMatte", "CVS_GVMMatteVideoFile")
       for name in ("frames_per_window", "overlap", "clamp_low", "clamp_high")},
    ("CVS_SplitVideoSegments", "overlap"): "cross-field: overlap < segment_length",
}


def declared_extremes(options: dict, kind: str) -> list:
    """``min`` and the largest value the widget can reach (``min + k * step`` for INT)."""
    low, high = options.get("min", options["default"]), options.get("max", options["default"])
    if kind == "INT":
        step = int(options.get("step", 1))
        high = low + (high - low) // step * step
    return [low, high]


def defaults(cls, **overrides) -> dict:
    values = {spec.name: spec.options["default"] for spec in input_specs(cls)
              if spec.required and "default" in spec.options}
    values.update(overrides)
    return values


def call(cls, **overrides):
    return getattr(cls(), cls.FUNCTION)(**defaults(cls, **overrides))


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def things(tmp_path_factory):
    """Inputs the nodes need: cameras, a ReCamMaster file (uses width, height and fov_deg), splats."""
    from consistent_video.nodes.splats.splat_nodes import CVS_LoadSplats
    folder = tmp_path_factory.mktemp("ranges")
    cams = CameraBatch.identity(3, 32, 32)
    recammaster = camera_formats.save_recammaster(cams, folder / "camera_extrinsics.json")
    splats = CVS_LoadSplats().load("cvs_scene.ply")[0]
    return {"cams": cams, "recammaster": str(recammaster), "splats": splats}


_names = itertools.count()


def _surfel_memory(frames: int = 2):
    """A fresh surfel memory holding ``frames`` frames (images, flat depth)."""
    memory = surfel_nodes.CVS_SurfelMemory().open(f"ranges{next(_names)}", True, 25, 0.999, 0.75, 0.6)[0]
    K = intrinsics_from_fov(54.0, 32, 32)
    c2w = torch.eye(4).repeat(frames, 1, 1)
    c2w[:, 0, 3] = torch.arange(frames) * 0.1
    surfel_nodes.CVS_SurfelMemoryAddFrames().add(memory, torch.rand(frames, 32, 32, 3),
                                                  CameraBatch(c2w, K, 32, 32), 0.5,
                                                  depth=torch.full((frames, 32, 32), 2.0))
    return memory


# ------------------------------------------------------------------------------- the nodes' own checks
def _load_video(monkeypatch, name, value):
    # the node checks the size against the video before it decodes; decoding a 14564x8192 frame is not the point
    monkeypatch.setattr(video_io, "load_frames", lambda *a, **k: (torch.zeros(1, 2, 2, 3), video_io.DEFAULT_FPS))
    call(video_nodes.CVS_LoadVideo, **{"max_frames": 1, name: value})


def _vmem(name, value):
    """What VMem Navigate / Walk check before they sample (``_run`` and ``_prepare``)."""
    v = defaults(NODES["CVS_VMemNavigate"], **{name: value})
    if v["resolution"] % 64:
        raise NodeInputError("CVS VMem", "resolution", "is not a multiple of 64")
    try:
        NavigationSettings(GenerationSettings(steps=v["steps"], cfg=v["cfg"], cfg_min=v["cfg_min"], guider=v["guider"],
                                              camera_scale=v["camera_scale"]),
                           RetrievalSettings(num_views=v["context_views"]), seed=v["seed"]).validate()
        DepthModelProvider(lambda x: x, start_depth=v["start_depth"])
    except (GenerationError, SurfelInputError) as exc:
        raise NodeInputError("CVS VMem", exc.argument, exc.problem, exc.expected) from None
    intrinsics_from_fov(v["fov"], v["resolution"], v["resolution"])


def _videomv(node_id, name, value):
    """What VideoMV Text / Image to Views check before they sample."""
    v = defaults(NODES[node_id], **{name: value})
    videomv_nodes._settings(NODES[node_id].DISPLAY_NAME, v["guidance"], v["steps"], v["seed"], v["resolution"])
    videomv_pipeline.orbit_cameras(24, v["elevation"], v["distance"], 0.0, v["resolution"])


def _v2v_turn(node_id, name, value):
    """What the Memory-V2V nodes check before they encode or sample (``TurnSettings``)."""
    v = defaults(NODES[node_id], **{name: value})
    keys = ("frames", "width", "height") if node_id == "CVS_MemoryV2VEncodeSource" else \
        ("steps", "cfg", "seed", "top_k", "merge_ratio")
    v2v_pipeline.TurnSettings(**{k: v[k] for k in keys})


def _v2v_edit(node_id, name, value):
    """What the LucyEdit nodes check before they encode or sample (``EditSettings``; frames 4k + 1)."""
    v = defaults(NODES[node_id], **{name: value})
    v2v_edit_pipeline.EditSettings(**{k: v[k] for k in ("steps", "cfg", "seed", "width", "height")},
                                   **{k: v[k] for k in ("top_k", "merge_ratio") if k in v})
    if "frames" in v:
        assert (v["frames"] - 1) % 4 == 0


def _videoscene(request, name, value):
    """VideoScene Refine checks the timestep before the conditioning images: a wrong
    ``first_image`` stops it right after (the seed has no limit to check)."""
    if name != "timestep":
        return
    handle = request.getfixturevalue("videoscene_handle")
    with pytest.raises(NodeInputError) as err:
        call(NODES["CVS_VideoSceneRefine"], model=handle, video=torch.rand(2, 16, 16, 3), timestep=value,
             first_image=torch.rand(2, 4, 4, 3))
    assert err.value.input_name == "first_image"


def _two_photos(name, value):
    """What VideoScene Two Photos checks before the network runs (its numeric inputs)."""
    from consistent_video.videoscene_nodes import nodes as videoscene_nodes
    v = defaults(NODES["CVS_VideoSceneTwoPhotos"], **{name: value})
    videoscene_nodes._two_photo_settings("CVS VideoScene Two Photos to Gaussians", v["size"], v["refine_steps"],
                                         v["learning_rate"], v["opacity_threshold"])


def run_checks(node_id, name, value, things, monkeypatch, request):
    """Run ``node_id``'s checks with input ``name`` at ``value`` (NodeInputError when refused)."""
    cls, over, cams = NODES[node_id], {name: value}, things["cams"]
    square = CameraBatch.identity(1, 32, 32)
    runners = {
        "CVS_CameraPreview": lambda: call(cls, cameras=cams, **over),
        "CVS_CameraPathBetween": lambda: call(cls, cameras=CameraBatch.cat(
            [square, trajectories.orbit(1, 0.0, 1.0, 30.0, 0.0, 32, 32)]), **over),
        "CVS_KeyframeCameras": lambda: call(cls, **over),
        "CVS_LoadCameras": lambda: call(cls, path=things["recammaster"], **over),
        "CVS_NavigateCameras": lambda: call(cls, **over),
        "CVS_OrbitCameras": lambda: call(cls, **over),
        "CVS_VideoMVOrbitCameras": lambda: call(cls, **over),
        "CVS_VideoMVPrepareImage": lambda: call(cls, image=torch.rand(1, 24, 24, 3),
                                                mask=torch.ones(1, 24, 24).index_fill(1, torch.tensor([0]), 0.0),
                                                **over),
        "CVS_LoadVideo": lambda: _load_video(monkeypatch, name, value),
        "CVS_SaveVideo": lambda: call(cls, images=torch.rand(2, 16, 16, 3), **over),
        "CVS_RenderSplats": lambda: call(cls, gaussians=things["splats"], cameras=CameraBatch.identity(1, 16, 16),
                                         **over),
        "CVS_SurfelMemory": lambda: call(cls, name=f"ranges{next(_names)}", reset=True, **over),
        "CVS_SurfelMemoryAddFrames": lambda: call(cls, memory=_surfel_memory(1), images=torch.rand(1, 32, 32, 3),
                                                  cameras=square, depth=torch.full((1, 32, 32), 2.0), **over),
        "CVS_SurfelMemoryRetrieve": lambda: call(cls, memory=_surfel_memory(), cameras=square, **over),
        "CVS_SurfelMemoryFrames": lambda: call(cls, memory=_surfel_memory(), **over),
        "CVS_SurfelMemoryPreview": lambda: call(cls, memory=_surfel_memory(), **over),
        "CVS_VideoMemoryPreview": lambda: call(cls, memory=v2v_nodes.CVS_VideoMemory().open(
            f"ranges{next(_names)}", True)[0], **over),
        "CVS_GVMMatte": lambda: gvm_nodes._settings(cls.DISPLAY_NAME, defaults(cls, **over)),
        "CVS_GVMMatteVideoFile": lambda: gvm_nodes._settings(cls.DISPLAY_NAME, defaults(cls, **over)),
        "CVS_VMemNavigate": lambda: _vmem(name, value),
        "CVS_VMemWalk": lambda: _vmem(name, value),
        "CVS_VideoMVTextToViews": lambda: _videomv(node_id, name, value),
        "CVS_VideoMVImageToViews": lambda: _videomv(node_id, name, value),
        "CVS_MemoryV2VEncodeSource": lambda: _v2v_turn(node_id, name, value),
        "CVS_MemoryV2VRerender": lambda: _v2v_turn(node_id, name, value),
        "CVS_SplitVideoSegments": lambda: call(cls, video=torch.rand(1001, 2, 2, 3), **{"overlap": 0, **over}),
        "CVS_MemoryV2VEditSegments": lambda: _v2v_edit(node_id, name, value),
        "CVS_LucyEditEdit": lambda: _v2v_edit(node_id, name, value),
        "CVS_VideoSceneRefine": lambda: _videoscene(request, name, value),
        "CVS_VideoSceneTwoPhotos": lambda: _two_photos(name, value),
    }
    assert node_id in runners, f"{node_id} has numeric inputs but no range check here; add one"
    runners[node_id]()


@pytest.fixture(scope="module")
def videoscene_handle(smoke_weights_dir):
    from consistent_video.nodes.comfy import families
    from consistent_video.videoscene_nodes import family as fam
    return families.get(fam.NAME).load(smoke_weights_dir / fam.NAME, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("node_id,name", [pytest.param(*p, id="/".join(p)) for p in NUMERIC if p not in DEPENDENT])
def test_declared_extremes_are_accepted(node_id, name, things, monkeypatch, request):
    spec = next(s for s in input_specs(NODES[node_id]) if s.name == name)
    for value in declared_extremes(spec.options, spec.type):
        try:
            run_checks(node_id, name, value, things, monkeypatch, request)
        except ValueError as exc:  # NodeInputError, or a settings check's ValueError
            pytest.fail(f"{node_id} declares {name} = {value} legal ({spec.options.get('min')}.."
                        f"{spec.options.get('max')}, step {spec.options.get('step', 1)}) but refuses it: {exc}")


def test_the_explained_exceptions_exist():
    """(Every other numeric input is checked above: ``run_checks`` fails for a node it does not know.)"""
    assert set(DEPENDENT) <= set(NUMERIC), "DEPENDENT names inputs that no longer exist"
    assert len(NUMERIC) > 50


def test_declared_minimums_below_are_refused_where_the_node_has_a_limit(things):
    """The other side of the ranges this issue fixed: one step below the declared min is refused,
    so the declaration is the node's real limit (not narrower, not wider)."""
    preview = NODES["CVS_CameraPreview"]
    assert preview.INPUT_TYPES()["required"]["width"][1]["min"] == 16
    with pytest.raises(NodeInputError, match="CVS Camera Preview: input 'width' is 15; expected at least 16"):
        call(preview, cameras=things["cams"], width=15)
    res = NODES["CVS_VideoMVTextToViews"].INPUT_TYPES()["required"]["resolution"][1]
    assert res["step"] == videomv_pipeline.LATENT_DOWNSCALE == 8
    with pytest.raises(NodeInputError, match="'resolution'.*multiple of 8"):
        _videomv("CVS_VideoMVTextToViews", "resolution", 68)
