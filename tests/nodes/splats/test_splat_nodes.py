"""The shared splat nodes: load the bundled PLY, render a path, bad input, Cancel."""
import json

import pytest
import torch

from consistent_video.nodes.cameras import formats as camera_formats, trajectories
from consistent_video.nodes.comfy import runtime
from consistent_video.nodes.splats import render as splat_render
from consistent_video.nodes.comfy.errors import NodeInputError
from consistent_video.nodes.splats.gaussians import GaussianScene, random_scene, save_ply
from consistent_video.nodes.splats.splat_nodes import CVS_LoadSplats, CVS_RenderSplats

PATH = [{"position": [-0.9, -0.45, -2.4], "look_at": [0, 0.2, 0.6]}, {"position": [0.9, -0.45, -2.4],
                                                                      "look_at": [0, 0.2, 0.6]}]


def cameras(frames=3, width=48, height=32):
    keys = camera_formats.keyframes_from_text(json.dumps(PATH), width, height, 55.0)
    return trajectories.keyframe_path(keys, frames - 1, "cosine")


def test_bundled_scene_renders_along_a_path():
    scene, info = CVS_LoadSplats().load("cvs_scene.ply")
    assert isinstance(scene, GaussianScene) and len(scene) > 1000 and "SH degree 0" in info
    images, alpha, depth, text = CVS_RenderSplats().render(scene, cameras(), 0.0, 0.0, 1.0, 0.01, "torch")
    assert images.shape == (3, 32, 48, 3) and alpha.shape == (3, 32, 48) and depth.shape == (3, 32, 48, 3)
    assert float(alpha.mean()) > 0.3  # the room fills most of the view
    uncovered = alpha < 1e-3
    assert torch.allclose(images[uncovered], torch.tensor([0.0, 0.0, 1.0]), atol=1e-5)  # the blue background
    assert float(depth.max()) == pytest.approx(1.0) and bool((depth[uncovered] == 0).all())
    assert not torch.allclose(images[0], images[-1])  # the camera moved
    assert "3 frame(s) of 48x32" in text


def test_load_rejects_missing_and_malformed_files(tmp_path):
    with pytest.raises(NodeInputError, match="'ply'.*not found"):
        CVS_LoadSplats().load(str(tmp_path / "nothing.ply"))
    bad = tmp_path / "bad.ply"
    bad.write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float z\n"
                   "end_header\n0 0 0\n", encoding="ascii")
    with pytest.raises(NodeInputError, match="scale_0"):
        CVS_LoadSplats().load(str(bad))


def test_render_rejects_bad_input(tmp_path):
    with pytest.raises(NodeInputError, match="'gaussians'"):
        CVS_RenderSplats().render(torch.zeros(3), cameras(), 0, 0, 0, 0.01, "auto")
    scene = random_scene(10)
    with pytest.raises(NodeInputError, match="'cameras'"):
        CVS_RenderSplats().render(scene, "cams", 0, 0, 0, 0.01, "auto")
    with pytest.raises(NodeInputError, match="'backend'"):
        CVS_RenderSplats().render(scene, cameras(), 0, 0, 0, 0.01, "opengl")
    if not torch.cuda.is_available():  # gsplat renders on CUDA only
        with pytest.raises(NodeInputError, match="'backend'.*CUDA"):
            CVS_RenderSplats().render(scene, cameras(), 0, 0, 0, 0.01, "gsplat")


def test_saved_scene_loads_back_through_the_node(tmp_path):
    scene = random_scene(50, sh_degree=2, seed=3)
    save_ply(scene, tmp_path / "s.ply")
    loaded, info = CVS_LoadSplats().load(str(tmp_path / "s.ply"))
    assert len(loaded) == 50 and loaded.sh_degree == 2 and torch.allclose(loaded.means, scene.means)


def test_cancel_stops_a_render(cancel_on_call):
    scene, _ = CVS_LoadSplats().load("cvs_scene.ply")
    calls = cancel_on_call(splat_render, "project_gaussians", 2)
    with pytest.raises(runtime.Interrupted):
        CVS_RenderSplats().render(scene, cameras(5), 0, 0, 0, 0.01, "torch")
    assert len(calls) == 2  # stopped after the second frame


def test_zero_cameras_never_reach_the_renderer():
    """A path of zero cameras cannot be built: empty keyframes and empty slices are refused
    where they are made, with the input named."""
    from consistent_video.nodes.cameras.camera_nodes import CVS_KeyframeCameras
    with pytest.raises(NodeInputError, match="'keyframes'"):
        CVS_KeyframeCameras().build("[]", 8, "cosine", 64, 48, 55.0)
    with pytest.raises(ValueError, match="at least one camera"):
        cameras()[3:]


def test_save_splats_writes_a_ply_that_loads_back(output_dir):
    from consistent_video.nodes.splats.splat_nodes import CVS_SaveSplats

    scene, _ = CVS_LoadSplats().load("cvs_scene.ply")
    result = CVS_SaveSplats().save(scene, "splats/room")
    path = result["result"][0]
    assert path.endswith("splats/room_00001.ply") and "Gaussians" in result["ui"]["text"][0]
    assert result["ui"]["cvs_files"] == [{"filename": "room_00001.ply", "subfolder": "splats", "type": "output"}]
    again, _ = CVS_LoadSplats().load(path)
    torch.testing.assert_close(again.means, scene.means)
    torch.testing.assert_close(again.opacities, scene.opacities, rtol=1e-5, atol=1e-6)
    assert CVS_SaveSplats().save(scene, "splats/room")["result"][0].endswith("room_00002.ply")
    with pytest.raises(NodeInputError, match="CVS Save Splats: input 'gaussians'.*expected Gaussians"):
        CVS_SaveSplats().save(torch.zeros(3), "splats/room")
    with pytest.raises(NodeInputError, match="'filename_prefix'"):
        CVS_SaveSplats().save(scene, "../outside")
