"""Camera math against values known independently: conventions, projection, Plücker rays,
rotations, trajectories, normalisation, file formats and the preview."""
import json
import math

import pytest
import torch

from consistent_video.nodes.cameras import formats as F
from consistent_video.nodes.cameras import preview as P
from consistent_video.nodes.cameras import trajectories as T
from consistent_video.nodes.cameras.geometry import (CameraBatch, axis_angle_to_matrix, interpolate_poses,
                                                     intrinsics_from_fov, look_at, matrix_to_quaternion,
                                                     normalize_cameras, plucker_rays, project, quaternion_to_matrix,
                                                     rigid_inverse, slerp, unproject)

ATOL = 1e-5


def rot_y(deg):
    """Rotation about +y by ``deg`` (right-hand rule), written out by hand."""
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def pose(R, t):
    c2w = torch.eye(4)
    c2w[:3, :3], c2w[:3, 3] = R, torch.tensor(t, dtype=torch.float32)
    return c2w


def K_norm(fx, fy, cx=0.5, cy=0.5):
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def random_cameras(n=5, seed=0, width=64, height=48, skew=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g)
    c2w = torch.eye(4).repeat(n, 1, 1)
    c2w[:, :3, :3] = quaternion_to_matrix(q)
    c2w[:, :3, 3] = torch.randn(n, 3, generator=g) * 2
    K = torch.zeros(n, 3, 3)
    K[:, 0, 0] = 0.6 + torch.rand(n, generator=g)
    K[:, 1, 1] = 0.6 + torch.rand(n, generator=g)
    K[:, 0, 2] = 0.4 + 0.2 * torch.rand(n, generator=g)
    K[:, 1, 2] = 0.4 + 0.2 * torch.rand(n, generator=g)
    K[:, 2, 2] = 1
    return CameraBatch(c2w, K, width, height)


# ---- the type -------------------------------------------------------------------------------
def test_batch_basics():
    cams = random_cameras(4)
    assert len(cams) == 4 and len(cams[1]) == 1 and len(cams[1:3]) == 2 and len(cams[[0, 3]]) == 2
    assert torch.equal(cams[-1].c2w[0], cams.c2w[3])
    Kp = cams.pixel_K()
    assert torch.allclose(Kp[:, 0, 0], cams.K[:, 0, 0] * 64) and torch.allclose(Kp[:, 1, 2], cams.K[:, 1, 2] * 48)
    assert torch.allclose(cams.world_to_camera() @ cams.c2w, torch.eye(4).expand(4, 4, 4), atol=ATOL)
    assert torch.equal(cams.centers(), cams.c2w[:, :3, 3])
    both = CameraBatch.cat([cams, cams[:2]])
    assert len(both) == 6 and torch.equal(both.c2w[4:], cams.c2w[:2])
    one_K = CameraBatch(torch.eye(4).repeat(3, 1, 1), K_norm(1, 1), 8, 8)  # a [3,3] K is broadcast
    assert one_K.K.shape == (3, 3, 3)


@pytest.mark.parametrize("c2w, K, size, message", [
    (torch.eye(4).repeat(3, 1, 1), K_norm(1, 1).repeat(2, 1, 1), (8, 8), "counts differ"),
    (torch.full((2, 4, 4), float("nan")), K_norm(1, 1), (8, 8), "NaN"),
    (torch.eye(3).repeat(2, 1, 1), K_norm(1, 1), (8, 8), "[N,4,4]"),
    (torch.zeros(0, 4, 4), K_norm(1, 1), (8, 8), "at least one camera"),
    (torch.diag(torch.tensor([1.0, 1.0, -1.0, 1.0])), K_norm(1, 1), (8, 8), "proper rotation"),
    (torch.eye(4), K_norm(-1, 1), (8, 8), "positive focal"),
    (torch.eye(4), K_norm(1, 1), (0, 8), "image size"),
    (torch.eye(4), torch.eye(4), (8, 8), "[N,3,3]"),
])
def test_batch_rejects_bad_input(c2w, K, size, message):
    with pytest.raises(ValueError) as err:
        CameraBatch(c2w, K, *size)
    assert message in str(err.value)


def test_cat_needs_one_size():
    with pytest.raises(ValueError, match="64x48"):
        CameraBatch.cat([random_cameras(2), random_cameras(2).with_size(32, 32)])


def test_intrinsics_from_fov_matches_vmem_default():
    K = intrinsics_from_fov(54.0, 576, 576)
    assert K[0, 0] == pytest.approx(0.9813, abs=1e-4) and K[1, 1] == pytest.approx(0.9813, abs=1e-4)
    assert K[0, 2] == 0.5 and K[1, 2] == 0.5
    wide = intrinsics_from_fov(54.0, 200, 100)  # square pixels: fx * W == fy * H
    assert float(wide[0, 0] * 200) == pytest.approx(float(wide[1, 1] * 100))


# ---- projection -------------------------------------------------------------------------------
def test_pixel_centres_are_at_half():
    cams = CameraBatch(torch.eye(4), K_norm(1.0, 1.0), 4, 4)  # fx = 4 px, principal point (2, 2)
    pts = unproject(torch.ones(1, 4, 4), cams)
    # pixel (0, 0) has its centre at (0.5, 0.5): x = (0.5 - 2) / 4
    assert torch.allclose(pts[0, 0, 0], torch.tensor([-0.375, -0.375, 1.0]))
    assert torch.allclose(pts[0, 3, 3], torch.tensor([0.375, 0.375, 1.0]))
    uv, z = project(torch.tensor([[0.0, 0.0, 3.0]]), cams)  # the optical axis hits the image centre
    assert torch.allclose(uv[0, 0], torch.tensor([2.0, 2.0])) and z[0, 0] == 3.0


def test_project_inverts_unproject_at_any_resolution():
    cams = random_cameras(3)
    depth = 1 + torch.rand(3, 6, 10)
    pts = unproject(depth, cams)
    uv, z = project(pts.reshape(3, -1, 3), cams, width=10, height=6)
    v, u = torch.meshgrid(torch.arange(6) + 0.5, torch.arange(10) + 0.5, indexing="ij")
    assert torch.allclose(uv, torch.stack([u, v], -1).reshape(1, -1, 2).expand(3, -1, -1), atol=1e-3)
    assert torch.allclose(z, depth.reshape(3, -1), atol=1e-4)


# ---- Plücker rays -------------------------------------------------------------------------------
def test_plucker_identity_camera_by_hand():
    cams = CameraBatch(torch.eye(4), K_norm(1.0, 0.5), 5, 5)  # fx = 5 px, fy = 2.5 px, centre (2.5, 2.5)
    rays = plucker_rays(cams, 5, 5)
    assert rays.shape == (1, 6, 5, 5)
    assert torch.allclose(rays[0, :, 2, 2], torch.tensor([0.0, 0, 1, 0, 0, 0]), atol=1e-6)  # centre pixel
    # pixel (col 0, row 4): centre (0.5, 4.5) -> ((0.5-2.5)/5, (4.5-2.5)/2.5, 1) = (-0.4, 0.8, 1)
    d = torch.tensor([-0.4, 0.8, 1.0]) / math.sqrt(0.16 + 0.64 + 1)
    assert torch.allclose(rays[0, :3, 4, 0], d, atol=1e-6)
    assert torch.allclose(rays[0, 3:, 4, 0], torch.zeros(3), atol=1e-6)  # the origin has no moment


def test_plucker_moment_and_reference():
    R = rot_y(90)
    c2w = torch.stack([pose(torch.eye(3), [1.0, 0, 0]), pose(R, [0.0, 2, 0])])
    cams = CameraBatch(c2w, K_norm(1.0, 1.0), 3, 3)
    world = plucker_rays(cams, 3, 3, reference=None)
    # camera 0 at (1,0,0), centre ray (0,0,1): moment = o x d = (0,-1,0)
    assert torch.allclose(world[0, :, 1, 1], torch.tensor([0.0, 0, 1, 0, -1, 0]), atol=1e-6)
    # camera 1 looks along R @ z = (1,0,0) from (0,2,0): moment = (0,2,0) x (1,0,0) = (0,0,-2)
    assert torch.allclose(world[1, :, 1, 1], torch.tensor([1.0, 0, 0, 0, 0, -2]), atol=1e-6)
    rel = plucker_rays(cams, 3, 3)  # relative to view 0: camera 0 becomes the identity
    assert torch.allclose(rel[0, 3:], torch.zeros(3, 3, 3), atol=1e-6)
    assert torch.allclose(rel[1, :, 1, 1], torch.tensor([1.0, 0, 0, 0, 0, -2]), atol=1e-6)  # (-1,2,0) x (1,0,0)
    swapped = plucker_rays(cams, 3, 3, moment_first=True)
    assert torch.equal(swapped[:, :3], rel[:, 3:]) and torch.equal(swapped[:, 3:], rel[:, :3])
    # a moment does not depend on the point picked on the ray, and is orthogonal to d
    some = plucker_rays(random_cameras(2), 4, 7)
    assert torch.allclose((some[:, :3] * some[:, 3:]).sum(1), torch.zeros(2, 4, 7), atol=1e-5)
    assert torch.allclose(some[:, :3].norm(dim=1), torch.ones(2, 4, 7), atol=1e-6)


# ---- rotations -------------------------------------------------------------------------------
def test_quaternion_round_trip_and_slerp_midpoint():
    Rs = torch.stack([rot_y(0), rot_y(90), rot_y(180), axis_angle_to_matrix(torch.tensor([1.0, 2, 3]), 2.5),
                      torch.diag(torch.tensor([1.0, -1, -1]))])
    assert torch.allclose(quaternion_to_matrix(matrix_to_quaternion(Rs)), Rs, atol=1e-6)
    q0, q90 = matrix_to_quaternion(rot_y(0)), matrix_to_quaternion(rot_y(90))
    assert torch.allclose(quaternion_to_matrix(slerp(q0, q90, 0.5)), rot_y(45), atol=1e-6)
    assert torch.allclose(quaternion_to_matrix(slerp(q0, -q90, 0.5)), rot_y(45), atol=1e-6)  # shorter arc
    assert torch.allclose(slerp(q0, q0, 0.3), q0)
    mid = interpolate_poses(pose(rot_y(0), [0, 0, 0]), pose(rot_y(90), [2, 4, 6]), torch.tensor([0.5]))[0]
    assert torch.allclose(mid, pose(rot_y(45), [1, 2, 3]), atol=1e-6)
    assert torch.allclose(axis_angle_to_matrix(torch.tensor([0.0, 1, 0]), math.radians(30)), rot_y(30), atol=1e-6)


def test_look_at_identity():
    c2w = look_at(torch.tensor([0.0, 0, -2]), torch.zeros(3), torch.tensor([0.0, -1, 0]))
    assert torch.allclose(c2w, pose(torch.eye(3), [0, 0, -2]), atol=1e-6)


# ---- conventions and formats ---------------------------------------------------------------------
def test_opengl_opencv_known_camera():
    gl = pose(torch.eye(3), [0.0, 0, 2])  # OpenGL camera at +z looking along -z to the origin, y up
    cv = F.opengl_to_opencv(gl)
    assert torch.allclose(cv[:3, 2], torch.tensor([0.0, 0, -1]))  # looks along world -z
    assert torch.allclose(cv[:3, 1], torch.tensor([0.0, -1, 0]))  # image down is world -y
    cams = CameraBatch(cv, K_norm(1, 1), 8, 8)
    uv, z = project(torch.tensor([[0.0, 0, 0], [0.0, 1, 0]]), cams)
    assert torch.allclose(uv[0, 0], torch.tensor([4.0, 4.0])) and z[0, 0] == 2.0
    assert uv[0, 1, 1] < 4.0  # world +y (OpenGL up) is up in the image (smaller v)
    assert torch.equal(F.opencv_to_opengl(cv), gl)
    assert torch.equal(F.to_opengl(F.from_opengl(gl[None], K_norm(1, 1), 8, 8)), gl[None])


@pytest.mark.parametrize("fmt", F.FORMATS)
def test_format_round_trip(fmt, tmp_path):
    cams = random_cameras(6)
    if fmt == "recammaster_json":  # no intrinsics in the file: they come from the field of view
        cams = CameraBatch(cams.c2w, intrinsics_from_fov(40.0, 64, 48), 64, 48)
    path = tmp_path / f"cams.{F.EXTENSIONS[fmt]}"
    F.save_cameras(cams, path, fmt)
    assert F.detect_format(path) == fmt
    back = F.load_cameras(path, "auto", width=64, height=48, fov_deg=40.0)
    assert (back.width, back.height) == (64, 48)
    assert torch.allclose(back.c2w, cams.c2w, atol=ATOL) and torch.allclose(back.K, cams.K, atol=ATOL)


def test_realestate10k_by_hand(tmp_path):
    path = tmp_path / "clip.txt"
    path.write_text("https://www.youtube.com/watch?v=x\n"
                    "0 0.5 0.9 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0\n"
                    "33366 0.5 0.9 0.5 0.5 0 0 1 0 0 1 0 1 0 2 0 0 1 3\n")
    cams = F.load_realestate10k(path, 640, 360)
    assert len(cams) == 2 and torch.allclose(cams.K[0], K_norm(0.5, 0.9))
    assert torch.allclose(cams.c2w[0], torch.eye(4))
    assert torch.allclose(cams.centers()[1], torch.tensor([-1.0, -2, -3]))  # w2c translation (1,2,3)
    (tmp_path / "bad.txt").write_text("url\n0 0.5 0.9 0.5\n")
    with pytest.raises(F.CameraFormatError, match="19 numbers"):
        F.load_realestate10k(tmp_path / "bad.txt", 640, 360)


def test_nerfstudio_by_hand(tmp_path):
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps({"fl_x": 100, "fl_y": 120, "cx": 100, "cy": 50, "w": 200, "h": 100, "frames": [
        {"file_path": "a.png", "transform_matrix": pose(torch.eye(3), [0, 0, 2]).tolist()},
        {"file_path": "b.png", "fl_x": 50, "transform_matrix": pose(torch.eye(3), [1, 0, 2]).tolist()}]}))
    cams = F.load_nerfstudio(path)
    assert (cams.width, cams.height) == (200, 100)
    assert torch.allclose(cams.K[0], K_norm(0.5, 1.2)) and cams.K[1, 0, 0] == pytest.approx(0.25)
    assert torch.allclose(cams.forward_axes()[0], torch.tensor([0.0, 0, -1]))  # OpenGL camera looking along -z
    blender = tmp_path / "blender.json"  # the Blender synthetic variant: camera_angle_x, no size
    blender.write_text(json.dumps({"camera_angle_x": 2 * math.atan(0.5), "frames": [
        {"file_path": "r_0", "transform_matrix": torch.eye(4).tolist()}]}))
    cams = F.load_nerfstudio(blender, 800, 800)
    assert cams.K[0, 0, 0] == pytest.approx(1.0) and cams.K[0, 1, 1] == pytest.approx(1.0)


def recammaster_reference_pose(text):
    """ReCamMaster's own reading of one matrix string (their published procedure)."""
    rows = [[float(x) for x in r.strip("[] ").split()] for r in text.split("] [")]
    c2w = torch.tensor(rows, dtype=torch.float64).T[:, [1, 2, 0, 3]]
    c2w[:3, 1] *= -1
    c2w[:3, 3] /= 100
    return c2w


def test_recammaster_by_hand(tmp_path):
    ue0 = "[1 0 0 0] [0 1 0 0] [0 0 1 0] [100 200 300 1]"  # UE identity at (1 m, 2 m, 3 m)
    c, s = math.cos(0.3), math.sin(0.3)  # a yaw of 0.3 rad about UE z (rows are the rotated axes)
    ue1 = f"[{c} {s} 0 0] [{-s} {c} 0 0] [0 0 1 0] [150 180 290 1]"
    path = tmp_path / "camera_extrinsics.json"
    path.write_text(json.dumps({"frame0": {"cam01": ue0, "cam02": ue1}, "frame1": {"cam01": ue1, "cam02": ue0}}))
    assert F.recammaster_cameras(path) == ["cam01", "cam02"]
    cams = F.load_recammaster(path, "cam01", 832, 480, 50.0)
    # UE forward +x, right +y, up +z; our world negates y: forward (1,0,0), right (0,-1,0), down (0,0,-1)
    expected = torch.tensor([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])
    assert torch.allclose(cams.c2w[0, :3, :3], expected)
    assert torch.allclose(cams.centers()[0], torch.tensor([1.0, -2, 3]))
    # relative poses, which ReCamMaster feeds to its network, equal those of its own procedure
    ref = [recammaster_reference_pose(t) for t in (ue0, ue1)]
    ref_rel = torch.linalg.inv(ref[0]) @ ref[1]
    ours_rel = rigid_inverse(cams.c2w[0].double()) @ cams.c2w[1].double()
    assert torch.allclose(ours_rel, ref_rel, atol=1e-6)
    assert len(F.load_recammaster(path, "cam02", frame_stride=2)) == 1
    with pytest.raises(F.CameraFormatError, match="cam09"):
        F.load_recammaster(path, "cam09")


def test_plain_json_accepts_opengl_and_fov(tmp_path):
    path = tmp_path / "gl.json"
    gl = pose(torch.eye(3), [0, 0, 2])
    path.write_text(json.dumps({"width": 100, "height": 50, "convention": "opengl",
                                "frames": [{"c2w": gl.tolist(), "fov_deg": 90}]}))
    cams = F.load_cvs_json(path)
    assert torch.allclose(cams.c2w[0], F.opengl_to_opencv(gl)) and cams.K[0, 1, 1] == pytest.approx(0.5)
    path.write_text(json.dumps({"width": 100, "height": 50, "frames": [{"c2w": [[1, 0], [0, 1]], "K": []}]}))
    with pytest.raises(F.CameraFormatError, match="frame 0 'c2w'"):
        F.load_cvs_json(path)


# ---- trajectories ------------------------------------------------------------------------------
def test_orbit_geometry():
    cams = T.orbit(12, elevation_deg=30.0, distance=2.5, target=(1.0, 0.0, 0.0))
    centre = torch.tensor([1.0, 0, 0])
    offsets = cams.centers() - centre
    assert torch.allclose(offsets.norm(dim=-1), torch.full((12,), 2.5), atol=1e-5)
    assert torch.allclose(-offsets[:, 1], torch.full((12,), 2.5 * math.sin(math.radians(30))), atol=1e-5)  # above
    uv, z = project(centre[None], cams)  # the optical axis goes through the target
    assert torch.allclose(uv, torch.tensor([288.0, 288.0]).expand(12, 1, 2), atol=1e-3) and (z > 0).all()
    assert torch.allclose(cams.c2w[:, 1, 0], torch.zeros(12), atol=1e-6)  # no roll: camera x stays horizontal
    az = torch.rad2deg(torch.atan2(offsets[:, 0], -offsets[:, 2]))
    assert torch.allclose(az[:6], torch.arange(6) * 30.0, atol=1e-3)  # full turn: 360/12 apart, no repeat
    first = T.orbit(1, 0.0, 2.0)
    assert torch.allclose(first.c2w[0], pose(torch.eye(3), [0, 0, -2]), atol=1e-6)
    arc = T.orbit(3, 0.0, 1.0, azimuth_start_deg=-45, azimuth_range_deg=90)  # partial range: both ends
    assert torch.allclose(arc.centers()[2], torch.tensor([math.sqrt(0.5), 0, -math.sqrt(0.5)]), atol=1e-6)


def test_navigation():
    cams = T.navigate(T.parse_actions("turn_left 90"), poses_per_action=3)
    assert len(cams) == 3
    assert torch.allclose(cams.forward_axes()[-1], torch.tensor([-1.0, 0, 0]), atol=1e-6)  # faces left (-x)
    assert torch.allclose(cams.c2w[0, :3, :3], rot_y(-30), atol=1e-6)  # first of three steps: a third
    right = T.navigate([("turn_right", 90.0)], 1)
    assert torch.allclose(right.forward_axes()[0], torch.tensor([1.0, 0, 0]), atol=1e-6)
    up = T.navigate([("look_up", 30.0)], 1)
    assert torch.allclose(up.forward_axes()[0], torch.tensor([0.0, -0.5, math.sqrt(0.75)]), atol=1e-6)
    walk = T.navigate(T.parse_actions("turn_left 90; move_forward 2"), 4, include_start=True)
    assert len(walk) == 9 and torch.allclose(walk.c2w[0], torch.eye(4))
    assert torch.allclose(walk.centers()[6], torch.tensor([-1.0, 0, 0]), atol=1e-6)  # halfway along the new axis
    assert torch.allclose(walk.centers()[-1], torch.tensor([-2.0, 0, 0]), atol=1e-6)
    start = T.orbit(4, 10.0, 3.0, width=320, height=240)
    on = T.navigate([("move_forward", 1.0)], 2, start=start)
    assert (on.width, on.height) == (320, 240) and torch.equal(on.K[0], start.K[-1])
    assert torch.allclose(on.centers()[-1], start.centers()[-1] + start.forward_axes()[-1], atol=1e-6)
    big = T.navigate([("turn_left", 270.0)], 3)  # goes the long way round as asked
    assert torch.allclose(big.forward_axes()[0], torch.tensor([-1.0, 0, 0]), atol=1e-6)
    for text, message in [("", "no actions"), ("jump 3", "unknown action"), ("turn_left", "one amount"),
                          ("move_forward far", "not a number")]:
        with pytest.raises(ValueError, match=message):
            T.parse_actions(text)


def test_keyframes_and_concat():
    keys = CameraBatch(torch.stack([pose(rot_y(0), [0, 0, 0]), pose(rot_y(90), [4, 0, 0]), pose(rot_y(90), [4, 0, 4])]),
                       torch.stack([K_norm(1, 1), K_norm(2, 2), K_norm(2, 2)]), 32, 32)
    path = T.keyframe_path(keys, 4)
    assert len(path) == 9 and torch.allclose(path.c2w[[0, 4, 8]], keys.c2w, atol=1e-6)
    assert torch.allclose(path.c2w[2], pose(rot_y(45), [2, 0, 0]), atol=1e-6)
    assert torch.allclose(path.K[2], K_norm(1.5, 1.5))
    eased = T.keyframe_path(keys, 4, "ease_in_out")
    assert torch.allclose(eased.c2w[2], path.c2w[2], atol=1e-6)  # symmetric easing keeps the midpoint
    assert eased.centers()[1, 0] < path.centers()[1, 0]  # and starts slower
    joined = T.concatenate([path, path[8:], keys[2:]])
    assert len(joined) == 9  # both repeated joints dropped
    assert len(T.concatenate([path, keys], skip_repeated_joint=False)) == 12


def test_keyframes_from_text():
    text = '[{"position": [0,0,0], "look_at": [0,0,1]}, {"position": [1,0,0], "look_at": [1,0,-1], "fov_deg": 90}]'
    keys = F.keyframes_from_text(text, 64, 64)
    assert torch.allclose(keys.c2w[0], torch.eye(4), atol=1e-6)
    assert torch.allclose(keys.forward_axes()[1], torch.tensor([0.0, 0, -1]), atol=1e-6) and keys.K[1, 1, 1] == 0.5
    for bad, message in [("[", "not valid JSON"), ("[]", "non-empty"), ('[{"position": [0,0,0]}]', "needs 'c2w'"),
                         ('[{"c2w": [[NaN,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]}]', "NaN"),
                         ('[{"c2w": [[1,0],[0,1]]}]', "4x4")]:
        with pytest.raises(F.CameraFormatError, match=message):
            F.keyframes_from_text(bad, 64, 64)


# ---- normalisation ------------------------------------------------------------------------------
@pytest.mark.parametrize("scale_by", ["first", "median"])
def test_normalisation_undo(scale_by):
    cams = random_cameras(40, seed=3)
    c2w = cams.c2w.clone()
    c2w[5, :3, 3] = torch.tensor([1e4, 0, 0])  # an outlier must not move the centre
    cams = CameraBatch(c2w, cams.K, cams.width, cams.height)
    norm, sim = normalize_cameras(cams, target_scale=2.0, scale_by=scale_by)
    inliers = torch.tensor([i != 5 for i in range(40)])
    assert torch.allclose(sim.center, cams.centers()[inliers].mean(0), atol=1e-4)
    dist = norm.centers().norm(dim=-1)
    ref = dist[0] if scale_by == "first" else dist[inliers].median()
    assert float(ref) == pytest.approx(2.0, rel=1e-5)
    back = sim.undo_cameras(norm)
    assert torch.allclose(back.c2w, cams.c2w, atol=1e-5 * 1e4)
    assert torch.allclose(back.c2w[inliers], cams.c2w[inliers], atol=1e-5)
    pts = torch.randn(10, 3)  # projections are unchanged by the similarity
    uv, z = project(pts, cams[inliers])
    uv_n, z_n = project(sim.apply_points(pts), norm[inliers])
    front = z > 0.5  # away from the singular camera plane
    assert torch.allclose(uv[front], uv_n[front], atol=1e-2) and torch.allclose(z_n, z * sim.scale, atol=1e-4)


# ---- preview ------------------------------------------------------------------------------------
def test_preview_draws_path_and_points():
    cams = T.orbit(8, 20.0, 2.0)
    blank = torch.tensor([30, 30, 34]) / 255.0
    for view in P.VIEWS:
        img = P.render_camera_preview(cams, 96, 64, view)
        assert img.shape == (1, 64, 96, 3) and img.min() >= 0 and img.max() <= 1
        assert ((img[0] - blank).abs().sum(-1) > 0.1).float().mean() > 0.01  # something was drawn
        green = (img[0, ..., 1] > 0.8) & (img[0, ..., 0] < 0.4)
        assert green.any(), f"first camera not drawn in the {view} view"
    pts = torch.tensor([[0.0, 0.0, 0.0]])
    img = P.render_camera_preview(cams, 96, 64, "top", points=pts, colors=torch.tensor([[1.0, 0.0, 1.0]]))
    magenta = (img[0] - torch.tensor([1.0, 0, 1])).abs().sum(-1) < 1e-3
    assert magenta.sum() == 1  # one point, one pixel, at the centre of the orbit
    y, x = magenta.nonzero()[0].tolist()
    assert abs(x - 48) <= 1 and abs(y - 32) <= 1
    single = P.render_camera_preview(CameraBatch.identity(), 64, 64)  # a lone camera still draws
    assert single.shape == (1, 64, 64, 3)
