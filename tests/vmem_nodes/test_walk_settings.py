"""The VMem generation nodes hand every input to the run as one WalkSettings.

Each input gets a value other than its default; the run (``navigate_nodes._run``, replaced
here) must receive all of them in its settings object, so an input the node forgets to pass
on fails here.
"""
import pytest
import torch

from consistent_video.nodes.cameras.geometry import CameraBatch
from consistent_video.vmem_nodes import navigate_nodes
from consistent_video.vmem_nodes.navigate_nodes import CVS_VMemNavigate, CVS_VMemWalk
from consistent_video.vmem_nodes.navigation import NavigationSettings, WalkSettings
from consistent_video.vmem_nodes.nodes import CVS_SurfelMemory
from consistent_video.vmem_nodes.pipeline import GenerationSettings
from consistent_video.vmem_nodes.retrieval import RetrievalSettings

CHANGED = dict(steps=7, cfg=3.5, cfg_min=1.7, guider="vanilla", seed=1234, resolution=192, fit="pad", fov=61.5,
               context_views=3, camera_scale=1.25, start_depth=3.75, poses_per_action=5)
EXPECTED = WalkSettings(NavigationSettings(GenerationSettings(steps=7, cfg=3.5, cfg_min=1.7, guider="vanilla",
                                                              camera_scale=1.25),
                                           RetrievalSettings(num_views=3), seed=1234),
                        resolution=192, fit="pad", fov=61.5, start_depth=3.75, poses_per_action=5)


@pytest.fixture
def captured(monkeypatch):
    calls = []

    def fake_run(node, bank, settings, model, depth_model, **live):
        calls.append(dict(node=node, bank=bank, settings=settings, model=model, depth_model=depth_model, **live))
        return "ran"
    monkeypatch.setattr(navigate_nodes, "_run", fake_run)
    return calls


@pytest.mark.parametrize("cls", [CVS_VMemNavigate, CVS_VMemWalk])
def test_the_changed_values_are_not_the_defaults(cls):
    required = cls.INPUT_TYPES()["required"]
    for name, value in CHANGED.items():
        assert required[name][1]["default"] != value, name


def test_navigate_passes_every_input_in_the_settings(captured):
    bank = CVS_SurfelMemory().open("settings", True, 25, 0.999, 0.5, 0.6)[0]
    model, depth, image, vae, clip, cams = object(), object(), torch.rand(1, 8, 8, 3), object(), object(), \
        CameraBatch.identity(2, 32, 32)
    assert CVS_VMemNavigate().navigate(model, depth, bank, action="move_forward", angle=12.0, distance=0.6,
                                       image=image, vae=vae, clip_vision=clip, cameras=cams, **CHANGED) == "ran"
    (call,) = captured
    assert call["settings"] == EXPECTED
    assert call["node"] == CVS_VMemNavigate.DISPLAY_NAME and call["bank"] is bank
    assert call["model"] is model and call["depth_model"] is depth
    assert call["image"] is image and call["vae"] is vae and call["clip_vision"] is clip and call["cameras"] is cams
    assert call["actions"] == [("move_forward", 0.6)] and call["cameras_name"] == "cameras"
    assert not call.get("path_starts_walk", False)


def test_walk_passes_every_input_in_the_settings(captured):
    bank = CVS_SurfelMemory().open("settings", True, 25, 0.999, 0.5, 0.6)[0]
    model, depth, image, vae, clip = object(), object(), torch.rand(1, 8, 8, 3), object(), object()
    CVS_VMemWalk().walk(model, depth, bank, actions="turn_right 15, move_forward 0.5", image=image, vae=vae,
                        clip_vision=clip, **CHANGED)
    path = CameraBatch.identity(3, 32, 32)
    CVS_VMemWalk().walk(model, depth, bank, actions="", path=path, **CHANGED)
    by_actions, by_path = captured
    for call in captured:
        assert call["settings"] == EXPECTED
        assert call["node"] == CVS_VMemWalk.DISPLAY_NAME and call["bank"] is bank
        assert call["model"] is model and call["depth_model"] is depth
        assert call["cameras_name"] == "path" and call["path_starts_walk"] is True
    assert by_actions["actions"] == [("turn_right", 15.0), ("move_forward", 0.5)] and by_actions["cameras"] is None
    assert by_actions["image"] is image and by_actions["vae"] is vae and by_actions["clip_vision"] is clip
    assert by_path["actions"] is None and by_path["cameras"] is path
    assert by_path["image"] is None and by_path["vae"] is None and by_path["clip_vision"] is None
