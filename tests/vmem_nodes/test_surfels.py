"""Surfels from pointmaps, and the pointmap providers, against geometry known by construction."""
from __future__ import annotations

import math

import pytest
import torch

from consistent_video.nodes.cameras.geometry import CameraBatch, intrinsics_from_fov, look_at
from consistent_video.vmem_nodes.memory import SurfelMemory
from consistent_video.vmem_nodes.pointmaps import AnalyticProvider, DepthModelProvider, Quad, box_quads
from consistent_video.vmem_nodes.surfels import (SurfelInputError, SurfelSettings, grid_pixels, grid_shape,
                                                 sample_grid, surfels_from_pointmaps)

UP = torch.tensor([0.0, -1.0, 0.0])


def cameras(eyes, targets, width=100, height=76) -> CameraBatch:
    c2w = look_at(torch.tensor(eyes, dtype=torch.float32), torch.tensor(targets, dtype=torch.float32), UP)
    K = intrinsics_from_fov(54.0, width, height).expand(len(eyes), 3, 3)
    return CameraBatch(c2w, K, width, height)


def blank(cams: CameraBatch) -> torch.Tensor:
    return torch.zeros(len(cams), cams.height, cams.width, 3)


def wall(z: float, half: float = 10.0) -> Quad:
    """A wall facing the origin at depth ``z`` along +z."""
    return Quad([0.0, 0.0, z], [half, 0.0, 0.0], [0.0, half, 0.0])


# ----------------------------------------------------------------------------- sampling
def test_grid_shape_matches_vmem_count():
    assert grid_shape(384, 512, 25) == (19, 25)  # VMem: 512x384 at 0.05 -> 475 surfels
    assert grid_shape(576, 576, 25) == (25, 25)
    assert grid_shape(512, 384, 25) == (25, 19)
    assert grid_shape(3, 2, 25) == (3, 2)  # never more cells than pixels


def test_samples_are_evenly_spaced_cell_centres():
    x = torch.arange(11 * 20).view(1, 11, 20).float()
    out = sample_grid(x, 5)  # cells of 5 pixels: rows 2, 7 (centred on 11 rows), columns 2, 7, 12, 17
    assert out[0].tolist() == [[x[0, 2, c].item() for c in (2, 7, 12, 17)], [x[0, 7, c].item() for c in (2, 7, 12, 17)]]
    assert grid_pixels(100, 4).diff().unique().tolist() == [4]


# ----------------------------------------------------------------------------- surfels
def test_fronto_parallel_wall_gives_known_surfels():
    cams = cameras([(0.0, 0.0, 0.0)], [(0.0, 0.0, 1.0)])
    maps = AnalyticProvider([wall(2.0)])(blank(cams), cams)
    s = surfels_from_pointmaps(maps.points, maps.confidence, cams.c2w, cams.K, SurfelSettings(max_depth_quantile=1.0))
    gh, gw = grid_shape(76, 100, 25)
    assert len(s) == gh * gw
    assert torch.allclose(s.position[:, 2], torch.full((len(s),), 2.0), atol=1e-5)
    assert torch.allclose(s.normal, torch.tensor([0.0, 0.0, -1.0]).expand_as(s.normal), atol=1e-5)  # faces camera
    # radius = radius_scale * depth / focal / (0.2 + 0.8 cos), focal in samples (every 4th pixel)
    focal = cams.K[0, 0, 0] * 100 / 4  # square pixels: fx = fy
    assert float(cams.K[0, 1, 1] * 76 / 4) == pytest.approx(float(focal))
    cos = 2.0 / s.position.norm(dim=-1)
    assert torch.allclose(s.radius, 0.75 * 2.0 / focal / (0.2 + 0.8 * cos), rtol=1e-5)
    # head-on, a disk reaches past the corners of its cell: the sample spacing is 2 / focal
    assert float(s.radius.min()) > math.sqrt(0.5) * 2.0 / float(focal)


def test_tilted_plane_normal_faces_the_camera():
    angle = math.radians(40)
    half_u = [5 * math.cos(angle), 0.0, 5 * math.sin(angle)]  # a plane rotated about the y axis
    cams = cameras([(0.0, 0.0, 0.0), (0.5, 0.2, -0.5)], [(0.0, 0.0, 1.0), (0.0, 0.0, 3.0)])
    maps = AnalyticProvider([Quad([0.0, 0.0, 3.0], half_u, [0.0, 5.0, 0.0])])(blank(cams), cams)
    s = surfels_from_pointmaps(maps.points, maps.confidence, cams.c2w, cams.K)
    expected = torch.tensor([math.sin(angle), 0.0, -math.cos(angle)])  # unit normal towards the cameras
    assert len(s) > 400
    assert torch.allclose(s.normal, expected.expand_as(s.normal), atol=1e-4)


def test_depth_edge_neither_blends_points_nor_bends_normals():
    """A near panel over a far wall: no surfel floats between them, and samples next to the
    edge take their normal from their own surface (both surfaces face the camera)."""
    cams = cameras([(0.0, 0.0, 0.0)], [(0.0, 0.0, 1.0)])
    panel = Quad([-2.0, 0.0, 2.0], [2.0, 0.0, 0.0], [0.0, 3.0, 0.0])  # covers the left half
    maps = AnalyticProvider([panel, wall(5.0)])(blank(cams), cams)
    s = surfels_from_pointmaps(maps.points, maps.confidence, cams.c2w, cams.K, SurfelSettings(max_depth_quantile=1.0))
    z = s.position[:, 2]
    assert bool(((z - 2.0).abs() < 1e-4).any()) and bool(((z - 5.0).abs() < 1e-4).any())
    assert bool((((z - 2.0).abs() < 1e-4) | ((z - 5.0).abs() < 1e-4)).all())
    assert torch.allclose(s.normal, torch.tensor([0.0, 0.0, -1.0]).expand_as(s.normal), atol=1e-5)


def test_low_confidence_and_far_samples_are_dropped():
    cams = cameras([(0.0, 0.0, 0.0)], [(0.0, 0.0, 1.0)])
    maps = AnalyticProvider([wall(2.0)])(blank(cams), cams)
    conf = maps.confidence.clone()
    conf[:, :, :50] = 0.0  # left half invalid
    s = surfels_from_pointmaps(maps.points, conf, cams.c2w, cams.K, SurfelSettings(max_depth_quantile=1.0))
    gh, gw = grid_shape(76, 100, 25)
    kept_columns = sum(int((j + 0.5) * 100 / gw) >= 50 for j in range(gw))
    assert len(s) == gh * kept_columns and bool((s.position[:, 0] > 0).all())
    slanted = AnalyticProvider([Quad([0.0, 0.0, 3.0], [4.0, 0.0, 1.0], [0.0, 4.0, 0.7])])(blank(cams), cams)
    everything = surfels_from_pointmaps(slanted.points, slanted.confidence, cams.c2w, cams.K)  # 0.999 quantile
    assert len(everything) == gh * gw - 1  # only the single farthest sample (a corner) goes


def test_surfels_record_their_frame():
    cams = cameras([(0.0, 0.0, 0.0), (1.0, 0.0, 0.0)], [(0.0, 0.0, 1.0), (1.0, 0.0, 1.0)])
    maps = AnalyticProvider([wall(2.0)])(blank(cams), cams)
    s = surfels_from_pointmaps(maps.points, maps.confidence, cams.c2w, cams.K)
    assert s.frame.unique().tolist() == [0, 1]
    assert bool((s.frame[1:] >= s.frame[:-1]).all())


# ----------------------------------------------------------------------------- bad input
def _inputs(n=2, height=8, width=10):
    cams = cameras([(0.0, 0.0, 0.0)] * n, [(0.0, 0.0, 1.0)] * n, width, height)
    maps = AnalyticProvider([wall(2.0)])(torch.zeros(n, height, width, 3), cams)
    return maps.points, maps.confidence, cams.c2w, cams.K


def test_mismatched_camera_count_names_the_argument_and_shape():
    points, conf, c2w, K = _inputs()
    with pytest.raises(SurfelInputError) as err:
        surfels_from_pointmaps(points, conf, c2w[:1], K)
    assert isinstance(err.value, ValueError)
    assert err.value.argument == "c2w" and "[2, 4, 4]" in str(err.value) and "[1, 4, 4]" in str(err.value)
    with pytest.raises(SurfelInputError, match=r"confidence .*\[2, 8, 10\]"):
        surfels_from_pointmaps(points, conf[:, :4], c2w, K)


def test_nan_points_are_refused_with_a_hint():
    points, conf, c2w, K = _inputs()
    points[0, 3, 4, 1] = float("nan")
    with pytest.raises(SurfelInputError, match=r"^points has 1 NaN or infinite values.*low confidence"):
        surfels_from_pointmaps(points, conf, c2w, K)


def test_zero_size_frames_are_refused():
    points, conf, c2w, K = _inputs()
    with pytest.raises(SurfelInputError, match=r"points has shape \[2, 0, 10, 3\].*\[N,H,W,3\]"):
        surfels_from_pointmaps(points[:, :0], conf[:, :0], c2w, K)
    with pytest.raises(SurfelInputError, match=r"points .*\[0, 8, 10, 3\]"):
        surfels_from_pointmaps(points[:0], conf[:0], c2w[:0], K[:0])
    with pytest.raises(SurfelInputError, match=r"^points is \[2, 8, 10\]"):
        surfels_from_pointmaps(points[..., 0], conf, c2w, K)


# ----------------------------------------------------------------------------- providers
def test_analytic_provider_is_exact():
    cams = cameras([(0.0, 0.0, 0.0)], [(0.0, 0.0, 1.0)])
    maps = AnalyticProvider(box_quads([-1, -1, -1], [1, 1, 3]))(blank(cams), cams)
    assert bool((maps.confidence == 1).all())
    assert torch.allclose(maps.depth, maps.points[..., 2])  # camera at the origin looking along +z
    on_face = ((maps.points.abs() - 1).abs() < 1e-5).any(-1) | ((maps.points[..., 2] - 3).abs() < 1e-5)
    assert bool(on_face.all())
    assert torch.isfinite(maps.points).all()
    away = cameras([(0.0, 0.0, 5.0)], [(0.0, 0.0, 6.0)])  # looking out of the box's far side
    assert float(AnalyticProvider([wall(2.0)])(blank(away), away).confidence.sum()) == 0.0


class _Scaled:
    """An estimator that returns the true depth divided by a known factor."""

    def __init__(self, provider, cams, factor):
        self.provider, self.cams, self.factor = provider, cams, factor

    def __call__(self, frames):
        return self.provider(frames, self.cams).depth / self.factor


def test_depth_model_provider_aligns_scale_to_the_memory():
    room = AnalyticProvider(box_quads([-4, -1.5, -4], [4, 1.5, 4]))
    first = cameras([(0.0, 0.0, 0.0), (0.2, 0.0, 0.0)], [(0.0, 0.0, 1.0), (0.5, 0.0, 1.0)])
    memory = SurfelMemory()
    memory.add_frames(room(blank(first), first), first)
    nxt = cameras([(0.3, 0.0, 0.2), (0.3, 0.0, 0.2)], [(0.6, 0.0, 1.0), (0.0, 0.0, 1.0)])
    provider = DepthModelProvider(_Scaled(room, nxt, 2.5), output="depth")
    maps = provider(blank(nxt), nxt, memory)
    truth = room(blank(nxt), nxt)
    assert provider.scale == pytest.approx(2.5, rel=0.02)
    assert torch.allclose(maps.points, truth.points, atol=0.05 * float(truth.depth.max()))
    # disparity models: depth = 1 / disparity, then the same alignment
    inverse = DepthModelProvider(lambda f: 1.0 / (room(f, nxt).depth / 4.0), output="disparity")
    assert inverse(blank(nxt), nxt, memory).depth.sub(truth.depth).abs().max() < 0.05 * float(truth.depth.max())
    # an empty memory keeps the model's own scale
    assert DepthModelProvider(_Scaled(room, nxt, 2.5), output="depth")(blank(nxt), nxt).depth.max() == \
        pytest.approx(float(truth.depth.max()) / 2.5, rel=1e-5)


def test_depth_model_provider_loads_transformers_depth_anything_from_a_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    backbone = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                         intermediate_size=64, image_size=28, patch_size=14,
                                         out_features=["stage1", "stage2", "stage3", "stage4"],
                                         reshape_hidden_states=False)
    config = transformers.DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32],
                                              fusion_hidden_size=16, head_hidden_size=8, reassemble_hidden_size=32)
    transformers.DepthAnythingForDepthEstimation(config).save_pretrained(tmp_path)
    transformers.DPTImageProcessor(size={"height": 28, "width": 28}, keep_aspect_ratio=True,
                                   ensure_multiple_of=14).save_pretrained(tmp_path)
    provider = DepthModelProvider.from_pretrained(tmp_path)
    assert provider.output == "disparity"  # a relative model
    cams = cameras([(0.0, 0.0, 0.0)] * 2, [(0.0, 0.0, 1.0)] * 2, 40, 30)
    maps = provider(torch.rand(2, 30, 40, 3), cams)
    assert maps.points.shape == (2, 30, 40, 3) and maps.confidence.shape == (2, 30, 40)
    assert torch.isfinite(maps.points).all()
    with pytest.raises(OSError):  # nothing there, and no download unless the caller allows it
        DepthModelProvider.from_pretrained(tmp_path / "missing")
