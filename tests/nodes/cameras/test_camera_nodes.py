"""Camera nodes: registration, a save/load round trip through the output folder, the
trajectory nodes, the preview, and bad input rejected with the node and input named."""
import json

import pytest
import torch

import consistent_video
from consistent_video.nodes.cameras import formats as camera_formats
from consistent_video.nodes.cameras.camera_nodes import (CVS_CameraPathBetween, CVS_CameraPreview, CVS_ConcatCameras,
                                                         CVS_KeyframeCameras, CVS_LoadCameras, CVS_NavigateCameras,
                                                         CVS_OrbitCameras, CVS_SaveCameras)
from consistent_video.nodes.cameras.geometry import CAMERA_TYPE, CameraBatch
from consistent_video.nodes.comfy.errors import NodeInputError

NODES = (CVS_LoadCameras, CVS_SaveCameras, CVS_OrbitCameras, CVS_NavigateCameras, CVS_ConcatCameras,
         CVS_KeyframeCameras, CVS_CameraPathBetween, CVS_CameraPreview)


def defaults(cls, **overrides):
    """The node's default inputs (required widgets), with overrides."""
    values = {name: spec[1]["default"] for name, spec in cls.INPUT_TYPES()["required"].items()
              if "default" in spec[1]}
    values.update(overrides)
    return values


def run(cls, **overrides):
    node = cls()
    return getattr(node, cls.FUNCTION)(**defaults(cls, **overrides))


def test_registered_with_the_camera_category():
    for cls in NODES:
        assert consistent_video.NODE_CLASS_MAPPINGS[cls.__name__] is cls
        assert cls.CATEGORY == "Consistent Video/Cameras"
    assert all(t == CAMERA_TYPE for t in CVS_OrbitCameras.RETURN_TYPES)


@pytest.mark.parametrize("fmt", camera_formats.FORMATS)
def test_save_then_load(fmt, output_dir):
    (cams,) = run(CVS_OrbitCameras, views=6, width=320, height=240, fov_deg=40.0)
    saved = run(CVS_SaveCameras, cameras=cams, format=fmt, filename_prefix="cams/orbit")
    path = saved["result"][0]
    assert path.startswith(str(output_dir.resolve())) and saved["ui"]["text"] == [path]
    loaded, count = run(CVS_LoadCameras, path=path, width=320, height=240, fov_deg=40.0)
    assert count == 6 and (loaded.width, loaded.height) == (320, 240)
    assert torch.allclose(loaded.c2w, cams.c2w, atol=1e-5) and torch.allclose(loaded.K, cams.K, atol=1e-5)
    again = run(CVS_SaveCameras, cameras=cams, format=fmt, filename_prefix="cams/orbit")["result"][0]
    assert again != path  # the counter moves on


def test_orbit_node_passes_every_input_to_the_orbit(monkeypatch):
    """Each input, changed from its default, reaches trajectories.orbit under its own name."""
    from consistent_video.nodes.cameras import trajectories
    values = dict(views=5, elevation_deg=20.0, distance=3.5, azimuth_start_deg=10.0, azimuth_range_deg=180.0,
                  width=320, height=240, fov_deg=40.0)
    required = CVS_OrbitCameras.INPUT_TYPES()["required"]
    assert set(values) == set(required)
    assert all(required[name][1]["default"] != value for name, value in values.items())
    seen = []
    real = trajectories.orbit
    monkeypatch.setattr(trajectories, "orbit", lambda *args, **kwargs: seen.append((args, kwargs)) or
                        real(*args, **kwargs))
    (cams,) = run(CVS_OrbitCameras, **values)
    (args, kwargs), = seen
    names = ("views", "elevation_deg", "distance", "azimuth_start_deg", "azimuth_range_deg", "width", "height",
             "fov_deg")
    assert {**dict(zip(names, args)), **kwargs} == values
    assert len(cams) == 5 and (cams.width, cams.height) == (320, 240)


def test_navigate_concat_keyframes_preview():
    (walk,) = run(CVS_NavigateCameras, actions="turn_left 90\nmove_forward 1", poses_per_action=2)
    assert len(walk) == 4 and torch.allclose(walk.centers()[-1], torch.tensor([-1.0, 0, 0]), atol=1e-6)
    (more,) = run(CVS_NavigateCameras, actions="look_up 10", start_cameras=walk, include_start=True)
    assert len(more) == 5 and torch.equal(more.c2w[0], walk.c2w[-1])
    (joined,) = run(CVS_ConcatCameras, cameras_1=walk, cameras_2=more, cameras_3=walk[:1])
    assert len(joined) == 4 + 4 + 1  # the repeated joint is dropped
    (path,) = run(CVS_KeyframeCameras, frames_per_segment=3)
    assert len(path) == 7
    (from_cams,) = run(CVS_KeyframeCameras, frames_per_segment=2, keyframe_cameras=walk, easing="ease_in_out")
    assert len(from_cams) == 7
    (image,) = run(CVS_CameraPreview, cameras=joined, width=64, height=48)
    assert image.shape == (1, 48, 64, 3)
    depth = torch.full((len(walk), 8, 8), 2.0)
    (image,) = run(CVS_CameraPreview, cameras=walk, width=64, height=48, view="perspective", depth=depth,
                   images=torch.rand(len(walk), 16, 16, 3), max_points=50)
    assert image.shape == (1, 48, 64, 3)


def bad(cls, input_name, **overrides):
    with pytest.raises(NodeInputError) as err:
        run(cls, **overrides)
    assert err.value.input_name == input_name
    assert str(err.value).startswith(cls.DISPLAY_NAME + ": input '" + input_name + "'")
    return str(err.value)


def test_bad_input_names_node_and_input(tmp_path):
    cams = CameraBatch.identity(3, 64, 64)
    bad(CVS_OrbitCameras, "views", views=0)
    bad(CVS_OrbitCameras, "elevation_deg", elevation_deg=90.0)
    assert "turn_sideways" in bad(CVS_NavigateCameras, "actions", actions="turn_sideways 3")
    bad(CVS_NavigateCameras, "start_cameras", start_cameras=torch.eye(4))
    bad(CVS_SaveCameras, "cameras", cameras={"c2w": torch.eye(4)})
    bad(CVS_SaveCameras, "filename_prefix", cameras=cams, filename_prefix="../outside")
    bad(CVS_ConcatCameras, "cameras_2", cameras_1=cams, cameras_2=cams.with_size(32, 32))
    assert "NaN" in bad(CVS_KeyframeCameras, "keyframes",
                        keyframes='[{"c2w": [[NaN,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]}]')
    assert "4x4" in bad(CVS_KeyframeCameras, "keyframes", keyframes='[{"c2w": [[1,0,0],[0,1,0],[0,0,1]]}]')
    assert "1 maps" in bad(CVS_CameraPreview, "depth", cameras=cams, depth=torch.ones(1, 4, 4))
    bad(CVS_CameraPreview, "images", cameras=cams, images=torch.rand(3, 4, 4, 3))
    bad(CVS_LoadCameras, "path", path=str(tmp_path / "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"width": 8, "height": 8, "frames": []}))
    assert "empty" in bad(CVS_LoadCameras, "path", path=str(broken))
    counts = tmp_path / "counts.json"
    counts.write_text(json.dumps({"width": 8, "height": 8, "frames": [{"c2w": torch.eye(4).tolist()}]}))
    assert "neither 'K'" in bad(CVS_LoadCameras, "path", path=str(counts))


def test_camera_input_with_nan_names_node_and_input():
    """A CVS_CAMERA whose tensors were changed in place after the batch was made is checked again
    where a node takes it, and the message names the node and the input."""
    cams = CameraBatch.identity(3, 64, 64)
    cams.c2w[1, 0, 3] = float("nan")
    for cls, name, extra in ((CVS_CameraPreview, "cameras", {}), (CVS_SaveCameras, "cameras", {}),
                             (CVS_NavigateCameras, "start_cameras", {}), (CVS_KeyframeCameras, "keyframe_cameras", {}),
                             (CVS_ConcatCameras, "cameras_2", {"cameras_1": CameraBatch.identity(1, 64, 64)})):
        message = bad(cls, name, **{name: cams}, **extra)
        assert "NaN" in message and "camera 1" in message


def test_camera_preview_declares_the_size_it_accepts():
    cams = CameraBatch.identity(2, 64, 64)
    for name in ("width", "height"):
        assert CVS_CameraPreview.INPUT_TYPES()["required"][name][1]["min"] == 16
        (image,) = run(CVS_CameraPreview, cameras=cams, **{name: 16})
        assert image.shape[1 if name == "height" else 2] == 16
        assert "is 15; expected at least 16" in bad(CVS_CameraPreview, name, cameras=cams, **{name: 15})


def test_load_cameras_default_works_on_a_fresh_node():
    """The default path is the bundled sample (found like the bundled video), so a node fresh from
    the menu runs; an empty path says what to type."""
    cams, count = run(CVS_LoadCameras)
    assert count == 81 and (cams.width, cams.height) == (832, 480)
    torch.testing.assert_close(cams.c2w[0], torch.eye(4))
    assert cams.centers()[-1, 0] > 0.9  # an arc to the right
    message = bad(CVS_LoadCameras, "path", path="  ")
    assert "no camera file path was given" in message and "cvs_cameras.json" in message
    assert "camera file 'nope.json' was not found" in bad(CVS_LoadCameras, "path", path="nope.json")
