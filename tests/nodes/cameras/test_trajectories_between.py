"""The path between two views (VideoScene's render path): the focus point, the swing about it,
the straight alternative, easing and intrinsics, and the CVS Camera Path Between node.

Known answers come from geometry built by hand (cameras looking at a chosen point, parallel
cameras), not from the code under test."""
import math

import pytest
import torch

from consistent_video.nodes.cameras import trajectories
from consistent_video.nodes.cameras.camera_nodes import CVS_CameraPathBetween
from consistent_video.nodes.cameras.geometry import (CAMERA_TYPE, CameraBatch, axis_angle_to_matrix,
                                                     intrinsics_from_fov, look_at)
from consistent_video.nodes.comfy.errors import NodeInputError
from consistent_video.nodes.cameras.trajectories import WORLD_UP, focus_point, interpolate_about_focus, path_between

TARGET = torch.tensor([0.3, -0.2, 4.0])


def rolled(c2w: torch.Tensor, degrees: float) -> torch.Tensor:
    """``c2w [4,4]`` turned about its own optical axis (a roll), so it still looks the same way."""
    out = c2w.clone()
    out[:3, :3] = c2w[:3, :3] @ axis_angle_to_matrix(torch.tensor([0.0, 0.0, 1.0]), math.radians(degrees))
    return out


def looking_at_target(width=64, height=48) -> CameraBatch:
    """Two cameras whose optical axes cross at TARGET (distances 4.02 and 3.45), not level, the
    second rolled by 20 degrees, with different fields of view."""
    eyes = torch.tensor([[0.0, 0.0, 0.0], [3.0, -1.0, 2.0]])
    c2w = look_at(eyes, TARGET, WORLD_UP)
    c2w[1] = rolled(c2w[1], 20.0)
    K = torch.stack([intrinsics_from_fov(50.0, width, height), intrinsics_from_fov(40.0, width, height)])
    return CameraBatch(c2w, K, width, height)


def axis_offsets(cams: CameraBatch, point: torch.Tensor):
    """Per camera: distance of ``point`` along the optical axis and its distance from the axis line."""
    d = point.double() - cams.centers().double()
    along = (d * cams.forward_axes().double()).sum(-1)
    across = (d - along[:, None] * cams.forward_axes().double()).norm(dim=-1)
    return along, across


@pytest.mark.parametrize("rule", trajectories.PATH_RULES)
@pytest.mark.parametrize("easing", trajectories.EASINGS)
def test_end_points_are_the_two_views_exactly(rule, easing):
    views = looking_at_target()
    path = path_between(views, 7, easing, rule)
    assert len(path) == 7 and (path.width, path.height) == (64, 48)
    assert torch.equal(path.c2w[0], views.c2w[0]) and torch.equal(path.c2w[-1], views.c2w[1])
    assert torch.equal(path.K[0], views.K[0]) and torch.equal(path.K[-1], views.K[1])
    # and the formula itself lands on them (the exact copy only removes float32 rounding)
    ends = interpolate_about_focus(views.c2w[0], views.c2w[1], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(ends.float(), views.c2w, atol=1e-6, rtol=0)


def test_focus_point_is_the_intersection_of_the_optical_axes():
    views = looking_at_target()
    point, parallel = focus_point(views.c2w[0], views.c2w[1])
    assert not parallel and point.dtype == torch.float64
    torch.testing.assert_close(point.float(), TARGET, atol=1e-5, rtol=0)


def test_focus_point_of_skew_axes_is_the_least_squares_point():
    """Axes that miss each other: the point with the least summed squared distance to both lines,
    found here by solving the normal equations sum(I - n n^T) p = sum(I - n n^T) o."""
    c2w = look_at(torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.5, 1.0]]),
                  torch.tensor([[0.0, 0.3, 3.0], [0.0, -0.4, 3.0]]), WORLD_UP).double()
    point, parallel = focus_point(c2w[0], c2w[1])
    n = c2w[:, :3, 2] / c2w[:, :3, 2].norm(dim=-1, keepdim=True)
    projectors = torch.eye(3, dtype=torch.float64) - torch.einsum("ni,nj->nij", n, n)
    expected = torch.linalg.solve(projectors.sum(0), (projectors @ c2w[:, :3, 3, None]).sum(0))[:, 0]
    assert not parallel
    torch.testing.assert_close(point, expected, atol=1e-9, rtol=0)
    # it lies halfway between the closest points, at the same distance from both axes
    _, across = axis_offsets(CameraBatch(c2w.float(), intrinsics_from_fov(50, 8, 8), 8, 8), point)
    assert float(across[0]) > 0.1 and float(across[0]) == pytest.approx(float(across[1]), abs=1e-5)


def test_every_frame_looks_through_the_focus_point_and_its_distance_interpolates():
    views = looking_at_target()
    d0, d1 = (TARGET - views.centers()).norm(dim=-1).double()
    for easing in ("cosine", "linear", "ease_in_out"):
        path = path_between(views, 49, easing)
        along, across = axis_offsets(path, TARGET)
        assert float(across.max()) < 1e-5  # the optical axis of every frame passes through the point
        t = trajectories.ease(torch.linspace(0, 1, 49, dtype=torch.float64), easing)
        torch.testing.assert_close(along, (1 - t) * d0 + t * d1, atol=1e-5, rtol=0)  # in front, lerped
        K = (1 - t[:, None, None]) * views.K[0].double() + t[:, None, None] * views.K[1].double()
        torch.testing.assert_close(path.K.double(), K, atol=1e-6, rtol=0)


def test_cosine_middle_frame_is_the_halfway_point():
    """Level cameras on a horizontal arc about P, 60 degrees apart, distances 2 and 4: VideoScene's
    49 cosine-eased frames put frame 24 at azimuth 30 degrees and distance 3, frame 12 at the
    eased fraction (1 - cos(pi / 4)) / 2."""
    P = torch.tensor([0.5, -0.3, 3.0])

    def level_camera(azimuth_deg, distance):
        a = math.radians(azimuth_deg)  # camera moves to its right as the azimuth grows
        eye = P + distance * torch.tensor([math.sin(a), 0.0, -math.cos(a)])
        return look_at(eye, P, WORLD_UP)

    views = CameraBatch(torch.stack([level_camera(0, 2.0), level_camera(60, 4.0)]),
                        intrinsics_from_fov(50, 96, 64), 96, 64)
    path = path_between(views, 49, "cosine")
    torch.testing.assert_close(path.c2w[24], level_camera(30, 3.0), atol=1e-5, rtol=0)
    s = (1 - math.cos(math.pi / 4)) / 2
    torch.testing.assert_close(path.c2w[12], level_camera(60 * s, 2.0 + 2.0 * s), atol=1e-5, rtol=0)
    # the straight rule's middle centre is the midpoint of the centres instead, off the arc
    straight = path_between(views, 49, "cosine", "straight")
    torch.testing.assert_close(straight.centers()[24], views.centers().mean(0), atol=1e-6, rtol=0)
    assert float((straight.centers()[24] - path.centers()[24]).norm()) > 0.1


def test_middle_frame_of_rolled_views_is_halfway_in_swing_and_roll():
    """Same-distance views 90 degrees apart about P, rolled by 0 and 40 degrees: the middle
    frame is the 45-degree view rolled by 20 degrees."""
    P = torch.tensor([0.0, 0.0, 2.0])
    eye0, eye1 = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([2.0, 0.0, 2.0])
    mid = P + 2.0 * torch.tensor([math.sqrt(0.5), 0.0, -math.sqrt(0.5)])
    views = CameraBatch(torch.stack([look_at(eye0, P, WORLD_UP), rolled(look_at(eye1, P, WORLD_UP), 40.0)]),
                        intrinsics_from_fov(50, 32, 32), 32, 32)
    path = path_between(views, 5, "cosine")
    torch.testing.assert_close(path.c2w[2], rolled(look_at(mid, P, WORLD_UP), 20.0), atol=1e-5, rtol=0)


def test_parallel_axes_fall_back_to_the_straight_line_between_the_centres():
    """Same view direction (and a view within 0.5 degrees of it): no intersection, so the pivot
    is the midpoint of the centres and the camera slides on the straight line, rolling evenly."""
    start = torch.eye(4)
    end = rolled(torch.eye(4), 30.0)
    end[:3, 3] = torch.tensor([1.0, 0.2, 0.5])
    point, parallel = focus_point(start, end)
    assert parallel
    torch.testing.assert_close(point.float(), torch.tensor([0.5, 0.1, 0.25]), atol=1e-7, rtol=0)
    views = CameraBatch(torch.stack([start, end]), intrinsics_from_fov(50, 32, 32), 32, 32)
    path = path_between(views, 9, "linear")
    t = torch.linspace(0, 1, 9)
    torch.testing.assert_close(path.centers(), t[:, None] * end[:3, 3], atol=1e-6, rtol=0)
    for k in range(9):
        torch.testing.assert_close(path.c2w[k, :3, :3], rolled(start, 30.0 * float(t[k]))[:3, :3],
                                   atol=1e-6, rtol=0)
    # nearly parallel (0.5 degrees) counts as parallel, as in the original (threshold 1e-4 on |cos| - 1)
    tilted = end.clone()
    tilted[:3, :3] = axis_angle_to_matrix(torch.tensor([0.0, 1.0, 0.0]), math.radians(0.5)) @ end[:3, :3]
    assert focus_point(start, tilted)[1]
    assert not focus_point(start, look_at(torch.zeros(3), torch.tensor([0.1, 0.0, 1.0]), WORLD_UP))[1]  # 5.7 deg
    # opposite view directions: also the midpoint, and the path still ends on both views
    behind = look_at(torch.tensor([0.0, 0.0, 4.0]), torch.zeros(3), WORLD_UP)
    assert focus_point(start, behind)[1]
    path = path_between(CameraBatch(torch.stack([start, behind]), intrinsics_from_fov(50, 32, 32), 32, 32), 5)
    pivot = torch.tensor([0.0, 0.0, 2.0])  # a half turn about the midpoint, looking at it, 2 away
    along, across = axis_offsets(path, pivot)
    torch.testing.assert_close(along, torch.full((5,), 2.0, dtype=torch.float64), atol=1e-5, rtol=0)
    assert float(across.max()) < 1e-5


def test_path_between_rejects_bad_arguments():
    views = looking_at_target()
    with pytest.raises(ValueError, match="exactly 2 cameras"):
        path_between(views[:1])
    with pytest.raises(ValueError, match="at least 2 frames"):
        path_between(views, 1)
    with pytest.raises(ValueError, match="unknown easing"):
        path_between(views, 5, "bouncy")
    with pytest.raises(ValueError, match="unknown path rule"):
        path_between(views, 5, "cosine", "spline")


# ------------------------------------------------------------------------------------------------ the node
def build(**overrides):
    values = {"frames": 49, "easing": "cosine", "rule": "pivot"}
    values.update(overrides)
    return CVS_CameraPathBetween().build(**values)


def test_node_declares_the_videoscene_defaults():
    spec = CVS_CameraPathBetween.INPUT_TYPES()
    assert spec["required"]["frames"][1]["default"] == 49 and spec["required"]["frames"][1]["min"] == 2
    assert spec["required"]["easing"][1]["default"] == "cosine"
    assert spec["required"]["rule"] == (list(trajectories.PATH_RULES), spec["required"]["rule"][1])
    assert spec["required"]["rule"][1]["default"] == "pivot"
    assert spec["optional"]["end_cameras"][0] == CAMERA_TYPE and CVS_CameraPathBetween.RETURN_TYPES == (CAMERA_TYPE,)
    assert CVS_CameraPathBetween.CATEGORY == "Consistent Video/Cameras"


def test_node_takes_a_pair_or_two_batches_and_renders():
    views = looking_at_target()
    (path,) = build(cameras=views)
    assert isinstance(path, CameraBatch) and len(path) == 49
    assert torch.equal(path.c2w[0], views.c2w[0]) and torch.equal(path.c2w[-1], views.c2w[1])
    # two batches: the first camera of each (a longer first batch still starts at its first camera)
    three = CameraBatch.cat([views[:1], CameraBatch.identity(1, 64, 48), views[1:]])
    (again,) = build(cameras=three[:2], end_cameras=CameraBatch.cat([views[1:], views[:1]]))
    assert torch.equal(again.c2w, path.c2w)
    (first_last,) = build(cameras=three, frames=5, rule="straight", easing="linear")
    torch.testing.assert_close(first_last.centers()[2], views.centers().mean(0), atol=1e-6, rtol=0)
    # the output drives CVS Render Splats
    from consistent_video.nodes.splats.gaussians import random_scene
    from consistent_video.nodes.splats.splat_nodes import CVS_RenderSplats
    (short,) = build(cameras=views.with_size(24, 16), frames=3)
    images, alpha, _, text = CVS_RenderSplats().render(random_scene(30, seed=1), short, 0.0, 0.0, 0.0, 0.01, "torch")
    assert images.shape == (3, 16, 24, 3) and alpha.shape == (3, 16, 24) and "3 frame(s)" in text


def bad(input_name, **overrides):
    with pytest.raises(NodeInputError) as err:
        build(**overrides)
    assert err.value.input_name == input_name
    assert str(err.value).startswith(f"CVS Camera Path Between: input '{input_name}'")
    return str(err.value)


def test_node_errors_name_the_input_and_say_what_was_expected():
    views = looking_at_target()
    same = CameraBatch.cat([views[:1], views[:1]])
    assert "identical to the start view" in bad("cameras", cameras=same)
    assert "identical to the start view" in bad("end_cameras", cameras=views[:1], end_cameras=views)
    zoom = CameraBatch(same.c2w, views.K, 64, 48)  # same pose, other lens: a zoom is a path
    assert len(build(cameras=zoom, frames=3)[0]) == 3
    assert "has 1 camera" in bad("cameras", cameras=views[:1])
    assert "refers to 32x32 images" in bad("end_cameras", cameras=views, end_cameras=views.with_size(32, 32))
    assert "CVS_CAMERA" in bad("cameras", cameras=torch.eye(4))
    assert "CVS_CAMERA" in bad("end_cameras", cameras=views, end_cameras=[views])
    nan = looking_at_target()
    nan.c2w[1, 0, 3] = float("inf")
    assert "infinite" in bad("cameras", cameras=nan)
    assert "camera 1" in bad("end_cameras", cameras=views, end_cameras=nan)
    emptied = looking_at_target()
    emptied.c2w = torch.empty(0, 4, 4)
    assert "at least one camera" in bad("end_cameras", cameras=views, end_cameras=emptied)
    assert "at least 2" in bad("frames", cameras=views, frames=1)
    assert "cosine" in bad("easing", cameras=views, easing="bouncy")
    assert "pivot, straight" in bad("rule", cameras=views, rule="spline")
