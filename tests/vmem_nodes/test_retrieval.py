"""Retrieval: the z-buffer renderer, votes, quotas, pose ranking, selection, and synthetic
scenes whose right answer is known (a room, a cycle trajectory, an occluded wall)."""
from __future__ import annotations

import math

import pytest
import torch

from consistent_video.nodes.cameras.geometry import CameraBatch, axis_angle_to_matrix, intrinsics_from_fov, look_at
from consistent_video.vmem_nodes.memory import SurfelMemory
from consistent_video.vmem_nodes.pointmaps import AnalyticProvider, Quad, box_quads
from consistent_video.vmem_nodes.retrieval import (RetrievalSettings, SurfelRender, distribute_quotas, frame_votes,
                                                   mean_pose, pose_distance, render_surfels, select_views)
from consistent_video.vmem_nodes.surfels import SurfelInputError

UP = torch.tensor([0.0, -1.0, 0.0])
EXACT = RetrievalSettings(num_views=3, use_nms=False, include_most_recent=False)


def cameras(eyes, targets, width=64, height=48) -> CameraBatch:
    c2w = look_at(torch.tensor(eyes, dtype=torch.float32), torch.tensor(targets, dtype=torch.float32), UP)
    K = intrinsics_from_fov(54.0, width, height).expand(len(eyes), 3, 3)
    return CameraBatch(c2w, K, width, height)


def add(memory: SurfelMemory, scene: AnalyticProvider, cams: CameraBatch) -> None:
    memory.add_frames(scene(torch.zeros(len(cams), cams.height, cams.width, 3), cams), cams)


# ----------------------------------------------------------------------------- renderer
def _disk(z=2.0, r=0.25, normal=(0.0, 0.0, -1.0), x=0.0):
    return torch.tensor([[x, 0.0, z]]), torch.tensor([normal]), torch.tensor([r])


K_PIX100 = torch.tensor([[0.5, 0.0, 0.5], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])  # fx = fy = 50 px at 100x100


def test_a_facing_disk_covers_its_projected_area():
    position, normal, radius = _disk()
    out = render_surfels(position, normal, radius, torch.eye(4), K_PIX100, 100, 100)
    covered = int((out.surfel == 0).sum())
    assert covered == pytest.approx(math.pi * (50 * 0.25 / 2.0) ** 2, rel=0.08)  # radius 6.25 px
    assert float(out.depth[50, 50]) == pytest.approx(2.0, abs=1e-6)
    assert float(out.cos[50, 50]) == pytest.approx(1.0, abs=1e-3)
    assert bool(torch.isinf(out.depth[out.surfel < 0]).all()) and float(out.cos[out.surfel < 0].abs().sum()) == 0


def test_back_faces_and_surfels_behind_the_camera_are_not_drawn():
    for disk in (_disk(normal=(0.0, 0.0, 1.0)), _disk(z=-2.0, normal=(0.0, 0.0, 1.0))):
        assert int((render_surfels(*disk, torch.eye(4), K_PIX100, 100, 100).surfel >= 0).sum()) == 0


def test_z_buffer_keeps_the_nearest_disk_and_breaks_ties_by_index():
    position = torch.tensor([[0.0, 0.0, 4.0], [0.1, 0.0, 2.0], [0.0, 0.0, 4.0]])
    normal = torch.tensor([[0.0, 0.0, -1.0]] * 3)
    radius = torch.tensor([1.0, 0.2, 1.0])
    out = render_surfels(position, normal, radius, torch.eye(4), K_PIX100, 100, 100)
    assert int(out.surfel[50, 52]) == 1 and float(out.depth[50, 52]) == pytest.approx(2.0)
    assert int(out.surfel[50, 40]) == 0  # disk 2 is at the same depth: the lower index wins
    assert int((out.surfel == 2).sum()) == 0
    # ... but both belong to the front surface of the pixels they share, disk 1 alone where it is
    front = {(int(p), int(s)) for p, s in zip(out.front_pixel, out.front_surfel)}
    assert {(50 * 100 + 40, 0), (50 * 100 + 40, 2)} <= front and (50 * 100 + 52, 0) not in front


def test_a_slanted_disk_has_per_pixel_depth_and_cosine():
    n = torch.tensor([[math.sin(0.6), 0.0, -math.cos(0.6)]])
    out = render_surfels(torch.tensor([[0.0, 0.0, 3.0]]), n, torch.tensor([0.8]), torch.eye(4), K_PIX100, 100, 100)
    ys, xs = (out.surfel == 0).nonzero(as_tuple=True)
    ray = torch.stack([(xs + 0.5 - 50) / 50, (ys + 0.5 - 50) / 50, torch.ones(len(xs))], -1)
    # the hit lies on the plane n.(X - c) = 0, within the radius
    hit = out.depth[ys, xs].unsqueeze(-1) * ray
    assert torch.allclose((hit - torch.tensor([0.0, 0.0, 3.0])) @ n[0], torch.zeros(len(xs)), atol=1e-4)
    assert float((hit - torch.tensor([0.0, 0.0, 3.0])).norm(dim=-1).max()) <= 0.8 + 1e-4
    assert torch.allclose(out.cos[ys, xs], -(ray @ n[0]) / ray.norm(dim=-1), atol=1e-5)


# ----------------------------------------------------------------------------- votes, quotas
def test_every_pixel_votes_once_for_each_observer():
    # pixels 0, 1: surfel 0; pixel 2: surfels 1 and 2 coincide (one surface); pixel 3: empty
    render = SurfelRender(surfel=torch.tensor([[0, 0, 1, -1]]), depth=torch.tensor([[1.0, 3.0, 1.0, math.inf]]),
                          cos=torch.tensor([[1.0, 0.5, 0.8, 0.0]]), front_pixel=torch.tensor([0, 1, 2, 2]),
                          front_surfel=torch.tensor([0, 0, 1, 2]))
    # surfel 0 was seen by frames 0 and 2, surfel 1 by frame 2, surfel 2 by frame 3
    pair_surfel, pair_frame = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 2, 2, 3])
    radius = torch.tensor([0.1, 0.1, 0.2])
    votes = frame_votes(render, radius, pair_surfel, pair_frame, num_frames=5)
    first = 1.0 / 2 + 0.5 / 4  # VMem counts each frame's first vote twice
    # the shared pixel is split 4:1 by resolution (1 / radius^2) between surfels 1 and 2
    assert votes.tolist() == pytest.approx([first, 0.0, first + 0.4 * 0.8, 0.4 * 0.2, 0.0])


def test_quotas_are_apportioned_by_largest_remainder():
    assert distribute_quotas(torch.tensor([3.0, 1.0, 0.0, 0.0]), 6).tolist() == [4, 2, 0, 0]
    # two leftover slots go one each to the largest remainders (VMem sets them to 1)
    assert distribute_quotas(torch.tensor([5.0, 3.0, 2.0]), 6).tolist() == [2, 2, 2]
    assert distribute_quotas(torch.tensor([6.0, 2.0, 1.0]), 7).tolist() == [4, 2, 1]
    # equal remainders: the more recent frames first
    assert distribute_quotas(torch.tensor([1.0, 1.0, 1.0]), 5).tolist() == [1, 2, 2]
    # more voters than slots: the best-voted frames get one each
    assert distribute_quotas(torch.tensor([5.0, 1.0, 3.0, 2.0]), 2).tolist() == [1, 0, 1, 0]
    assert distribute_quotas(torch.zeros(3), 4).tolist() == [0, 0, 0]
    assert int(distribute_quotas(torch.rand(40), 14).sum()) == 14


# ----------------------------------------------------------------------------- poses
def _pose(yaw_deg=0.0, t=(0.0, 0.0, 0.0)) -> torch.Tensor:
    out = torch.eye(4)
    out[:3, :3] = axis_angle_to_matrix(torch.tensor([0.0, 1.0, 0.0]), math.radians(yaw_deg))
    out[:3, 3] = torch.tensor(t)
    return out


def test_pose_distance_is_weighted_translation_plus_angle():
    d = pose_distance(_pose(), torch.stack([_pose(90, (3, 4, 0)), _pose(), _pose(180)]), 0.1)
    assert d.tolist() == pytest.approx([0.5 + math.pi / 2, 0.0, math.pi], abs=1e-6)
    assert float(pose_distance(_pose(0.001), _pose(), 0.1)) == pytest.approx(math.radians(0.001), rel=1e-3)


def test_mean_pose_averages_rotations_and_centres():
    mean = mean_pose(torch.stack([_pose(30, (1, 0, 0)), _pose(-30, (3, 0, 2))]))
    assert torch.allclose(mean, _pose(0, (2, 0, 1)), atol=1e-6)


def test_selection_rules():
    poses = torch.stack([_pose(yaw) for yaw in (0, 2, 4, 40, 80, 120)])
    distances = pose_distance(_pose(0), poses, 0.1)
    candidates = torch.tensor([0, 1, 2, 3, 4])  # nearest first
    by_distance = select_views(distances, candidates, poses, RetrievalSettings(num_views=3, use_nms=False))
    assert by_distance.tolist() == [0, 1, 2]
    recent = select_views(distances, candidates, poses, RetrievalSettings(num_views=3, use_nms=False,
                                                                           include_most_recent=True))
    assert recent.tolist() == [0, 5, 1]  # the most recent frame even without a quota
    diverse = select_views(distances, candidates, poses, RetrievalSettings(num_views=3, use_nms=True))
    assert diverse.tolist() == [0, 3, 4]  # spread out instead of three near-duplicates
    # fewer candidates than views: filled with the nearest other frames, never repeated
    few = select_views(distances, torch.tensor([4]), poses, RetrievalSettings(num_views=4, use_nms=True))
    assert few.tolist() == [4, 0, 1, 2]
    assert select_views(distances[:2], torch.tensor([], dtype=torch.long), poses[:2],
                        RetrievalSettings(num_views=4)).tolist() == [0, 1]


def test_settings_are_validated():
    with pytest.raises(SurfelInputError, match="num_views is 0"):
        RetrievalSettings(num_views=0).validate()
    with pytest.raises(SurfelInputError, match="nms_relax"):
        RetrievalSettings(nms_relax=1.0).validate()


# ----------------------------------------------------------------------------- scenes
def test_room_walls_retrieve_the_frames_that_saw_them():
    """Frames 3w..3w+2 look at wall w (N, E, S, W); a camera facing wall w gets exactly them."""
    room = AnalyticProvider(box_quads([-5, -1.5, -5], [5, 1.5, 5]))
    memory = SurfelMemory()
    directions = [(0.0, 1.0), (1.0, 0.0), (0.0, -1.0), (-1.0, 0.0)]  # (x, z) of N, E, S, W
    for dx, dz in directions:
        eyes = [(0.2 * i - 0.2, 0.0, 0.1 * i) for i in range(3)]
        sway = [0.1 * (i - 1) for i in range(3)]  # about +-6 degrees of yaw
        add(memory, room, cameras(eyes, [(e[0] + dx + w * dz, 0.0, e[2] + dz - w * dx) for e, w in zip(eyes, sway)]))
    for wall, (dx, dz) in enumerate(directions):
        found = memory.retrieve(cameras([(0.3, 0.0, -0.2)], [(0.3 + dx, 0.0, -0.2 + dz)]), EXACT)
        assert sorted(found.indices.tolist()) == [3 * wall, 3 * wall + 1, 3 * wall + 2]
        mine = found.retrieval.votes[3 * wall: 3 * wall + 3]
        others = torch.cat([found.retrieval.votes[: 3 * wall], found.retrieval.votes[3 * wall + 3:]])
        assert float(others.max()) < 0.2 * float(mine.min())  # floor and ceiling near the corners


def _yaw_cameras(positions, yaws_deg) -> CameraBatch:
    eyes = [(x, 0.0, z) for x, z in positions]
    return cameras(eyes, [(x + math.sin(math.radians(a)), 0.0, z + math.cos(math.radians(a)))
                          for (x, z), a in zip(positions, yaws_deg)])


def test_cycle_trajectory_retrieves_the_early_frames_on_return():
    """Walk once round a block (north, east, south, west; 60 frames) back to the start, then
    on north again: the views for that step are the first frames, not the most recent ones."""
    room = box_quads([-6, -1.5, -6], [6, 1.5, 6]) + box_quads([-3, -1.5, -3], [3, 1.5, 3])
    scene = AnalyticProvider(room)
    memory = SurfelMemory()
    legs = [((-4.5, -4.5), (0.0, 1.0)), ((-4.5, 4.5), (1.0, 0.0)),  # (start, direction) of each leg
            ((4.5, 4.5), (0.0, -1.0)), ((4.5, -4.5), (-1.0, 0.0))]
    for leg, ((x, z), (dx, dz)) in enumerate(legs):
        for k in range(0, 12, 4):  # 9 m along the corridor, 4 poses per step
            add(memory, scene, _yaw_cameras([(x + 0.75 * j * dx, z + 0.75 * j * dz) for j in range(k, k + 4)],
                                            [90.0 * leg] * 4))
        if leg < 3:  # turn right at the corner
            end = (x + 9 * dx, z + 9 * dz)
            add(memory, scene, _yaw_cameras([end] * 4, [90.0 * leg + 22.5 * (j + 1) for j in range(4)]))
    assert memory.num_frames == 60
    onwards = _yaw_cameras([(-4.5, -3.75)], [0.0])  # the next step goes north from the start again
    nearest = memory.retrieve(onwards, RetrievalSettings(use_nms=False))
    assert sorted(nearest.indices.tolist()) == [0, 1, 2, 3]
    assert int(nearest.retrieval.votes.argmax()) < 12  # the first leg saw most of this view
    diverse = memory.retrieve(onwards)  # NMS on: the nearest early frame leads, then diverse views
    assert int(diverse.indices[0]) == 1
    assert len(set(diverse.indices.tolist())) == 4


def test_an_occluded_wall_does_not_vote():
    front = Quad([0.0, 0.0, 3.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0])
    back = Quad([0.0, 0.0, 6.0], [8.0, 0.0, 0.0], [0.0, 8.0, 0.0])
    scene = AnalyticProvider([front, back])
    behind_front = cameras([(x, 0.0, 4.5) for x in (-0.3, 0.0, 0.3)], [(x, 0.0, 5.5) for x in (-0.3, 0.0, 0.3)])
    before_front = cameras([(x, 0.0, 0.0) for x in (-0.3, 0.0, 0.3)], [(x, 0.0, 1.0) for x in (-0.3, 0.0, 0.3)])
    query = cameras([(0.0, 0.0, 1.5)], [(0.0, 0.0, 2.5)])  # sees only front-wall parts frames 3-5 saw
    only_back = SurfelMemory()
    add(only_back, scene, behind_front)
    assert float(only_back.retrieve(query, EXACT).retrieval.votes.sum()) > 0  # visible without the front wall
    memory = SurfelMemory()
    add(memory, scene, behind_front)  # frames 0-2 saw only the back wall
    add(memory, scene, before_front)  # frames 3-5 saw only the front wall
    found = memory.retrieve(query, EXACT)
    assert found.retrieval.votes[:3].tolist() == [0.0, 0.0, 0.0]
    assert sorted(found.indices.tolist()) == [3, 4, 5]
    seen_from_between = memory.retrieve(cameras([(0.0, 0.0, 4.0)], [(0.0, 0.0, 5.0)]), EXACT)
    assert sorted(seen_from_between.indices.tolist()) == [0, 1, 2]
