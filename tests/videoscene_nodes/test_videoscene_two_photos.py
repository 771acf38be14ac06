"""CVS VideoScene Two Photos to Gaussians: the demo's procedure (crop, NoPoSplat, PnP + refinement
of both views) end to end on smoke weights, pose recovery against a stand-in network whose
Gaussians are a known surface seen from two known cameras, Cancel, and each bad input."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from consistent_video.nodes.comfy import families, runtime
from consistent_video.nodes.cameras.camera_nodes import CVS_CameraPathBetween
from consistent_video.nodes.cameras.geometry import CameraBatch, unproject
from consistent_video.nodes.comfy.errors import NodeInputError
from consistent_video.nodes.splats.gaussians import GaussianScene, rgb_to_sh_dc
from consistent_video.nodes.splats.splat_nodes import CVS_RenderSplats
from consistent_video.nodes.splats.render import render
from consistent_video.videoscene_nodes import noposplat as nps
from consistent_video.videoscene_nodes import noposplat_family as fam
from consistent_video.videoscene_nodes import pose, two_photos
from consistent_video.videoscene_nodes.nodes import CVS_VideoSceneTwoPhotos

ASSETS = Path(__file__).resolve().parents[2] / "assets"
NODE = CVS_VideoSceneTwoPhotos.DISPLAY_NAME
S = 64
K = torch.tensor(nps.DEFAULT_INTRINSICS)


def photo(name: str, width: int = 96, height: int = 64) -> torch.Tensor:
    """A bundled photo resized to ``width x height`` as IMAGE ``[1,H,W,3]``."""
    image = Image.open(ASSETS / name).convert("RGB").resize((width, height), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]


def run(model, image_a, image_b, **overrides):
    values = {"size": S, "refine_steps": 4, "learning_rate": 0.005, "opacity_threshold": 0.3, **overrides}
    return CVS_VideoSceneTwoPhotos().predict(model, image_a, image_b, **values)


@pytest.fixture(scope="module")
def smoke_handle(smoke_weights_dir):
    return families.get(fam.NAME).load(smoke_weights_dir / fam.NAME, torch.device("cpu"), torch.float32)


# ------------------------------------------------------------------ a stand-in with known geometry
SECOND = torch.tensor([[0.9950, 0.0, 0.0998, 0.25], [0.0, 1.0, 0.0, 0.02], [-0.0998, 0.0, 0.9950, 0.05],
                       [0.0, 0.0, 0.0, 1.0]])
"""View 2's c2w in view 1's frame: 0.25 to the right, turned 5.7 degrees about y."""


def surface_depth(c2w: torch.Tensor) -> torch.Tensor:
    """z-depth ``[S,S]`` at which the camera ``c2w`` sees the plane z = 2.5 + 0.2 x (view 1's frame)."""
    rays = unproject(torch.ones(1, S, S), CameraBatch(c2w[None], K[None], S, S))[0] - c2w[:3, 3]
    origin = c2w[:3, 3]
    # (o + t r).z = 2.5 + 0.2 (o + t r).x  ->  t = (2.5 + 0.2 o.x - o.z) / (r.z - 0.2 r.x); rays have unit z-depth
    return (2.5 + 0.2 * origin[0] - origin[2]) / (rays[..., 2] - 0.2 * rays[..., 0])


def texture(points: torch.Tensor) -> torch.Tensor:
    """A colour that depends on the 3-D position only (so both views agree)."""
    x, y = points[..., 0], points[..., 1]
    return torch.stack([0.5 + 0.4 * torch.sin(9 * x), 0.5 + 0.4 * torch.cos(7 * y), 0.5 + 0.3 * torch.sin(5 * (x + y))],
                       -1)


class KnownScene(torch.nn.Module):
    """Returns per-pixel Gaussians of a textured plane seen from the identity (view 1) and
    :data:`SECOND` (view 2), in NoPoSplat's output format; records the inputs it was given."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
        views = [torch.eye(4), SECOND]
        means = torch.stack([unproject(surface_depth(c)[None], CameraBatch(c[None], K[None], S, S))[0] for c in views])
        opacities = torch.full((2, S, S), 0.95)
        opacities[1, ::4, ::4] = 0.001  # invisible ones: dropped from the result
        depth = means[..., 2:].clamp_min(1.0)
        self.out = nps.NoPoSplatOutput(
            means=means[None], opacities=opacities[None], scales=(0.8 * depth / (0.8 * S)).expand(2, S, S, 3)[None],
            rotations=torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(2, S, S, 4)[None],
            sh=rgb_to_sh_dc(texture(means))[..., None, :][None])
        self.calls = []

    def forward(self, images, intrinsics=None):
        self.calls.append((images.clone(), intrinsics.clone()))
        return self.out

    def photos(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What each camera sees of the Gaussians (IMAGE ``[1,S,S,3]`` each)."""
        scene = self.out.scene(0, two_photos.MIN_OPACITY)
        rgb = render(scene, CameraBatch(torch.stack([torch.eye(4), SECOND]), K.expand(2, 3, 3), S, S))[0]
        return rgb[:1], rgb[1:]


def known_handle(network=None) -> families.ModelHandle:
    return families.ModelHandle(family=fam.NAME, source=Path("known"), modules={"noposplat": network or KnownScene()},
                                device=torch.device("cpu"), dtype=torch.float32)


def pose_error(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    R = a[:3, :3].double().T @ b[:3, :3].double()
    return (math.degrees(math.acos(max(-1.0, min(1.0, float((R.trace() - 1) / 2))))),
            float((a[:3, 3] - b[:3, 3]).norm()))


# ------------------------------------------------------------------------------------------- tests
def test_smoke_end_to_end_outputs_are_valid_and_renderable(smoke_handle):
    gaussians, cameras, info = run(smoke_handle, photo("cvs_photo_left.png"), photo("cvs_photo_right.png"))
    assert isinstance(gaussians, GaussianScene) and 0 < len(gaussians) <= 2 * S * S
    assert all(torch.isfinite(t).all() for t in (gaussians.means, gaussians.scales, gaussians.opacities,
                                                 gaussians.sh))
    assert isinstance(cameras, CameraBatch) and len(cameras) == 2 and (cameras.width, cameras.height) == (S, S)
    assert torch.allclose(cameras.K, K.expand(2, 3, 3))
    assert "SMOKE" in info and "view 1" in info and "view 2" in info and "PnP" in info
    path = CVS_CameraPathBetween().build(cameras, 5, "cosine", "pivot")[0]
    images, alpha, _, _ = CVS_RenderSplats().render(gaussians, path, 0.0, 0.0, 0.0, 0.01, "torch")
    assert images.shape == (5, S, S, 3) and torch.isfinite(images).all()


def test_the_demo_procedure_recovers_both_poses_and_feeds_the_network_as_the_release():
    network = KnownScene()
    image_a, image_b = network.photos()
    gaussians, cameras, info = run(known_handle(network), image_a, image_b, refine_steps=3)
    images, intrinsics = network.calls[0]
    assert images.shape == (1, 2, 3, S, S) and torch.allclose(images[0].permute(0, 2, 3, 1),
                                                              torch.cat([image_a, image_b]), atol=1e-6)
    assert torch.allclose(intrinsics, K.expand(1, 2, 3, 3))  # fx = fy = 0.8, cx = cy = 0.5
    rot0, trans0 = pose_error(cameras.c2w[0], torch.eye(4))  # view 1 re-estimated, like the demo
    rot1, trans1 = pose_error(cameras.c2w[1], SECOND)
    assert rot0 < 0.5 and trans0 < 0.02 and rot1 < 0.5 and trans1 < 0.02, info
    assert len(gaussians) == 2 * S * S - (S // 4) ** 2  # the 0.001-opacity ones are left out
    assert "PnP 4096/4096 inliers" in info  # every opaque pixel of view 1 fits
    assert "PnP 3840/3840 inliers" in info and "loss" in info and "SMOKE" not in info


def test_size_crops_the_centre_square_without_stretching():
    network = KnownScene()
    wide = torch.rand(1, 40, 100, 3)
    run(known_handle(network), wide, wide.flip(2), refine_steps=0)
    images = network.calls[0][0][0, 0].permute(1, 2, 0)
    expected = torch.nn.functional.interpolate(wide[:, :, 30:70].permute(0, 3, 1, 2), size=(S, S), mode="bilinear",
                                               align_corners=False)[0].permute(1, 2, 0)
    assert torch.allclose(images, expected, atol=1e-6)


def test_progress_covers_all_stages_and_cancel_stops(smoke_handle, monkeypatch, cancel_on_call):
    totals, updates = [], []
    original = runtime.Progress

    class Recording(original):
        def __init__(self, total, desc=""):
            totals.append(total)
            super().__init__(total, desc)

        def update(self, n=1):
            updates.append(n)
            super().update(n)
    monkeypatch.setattr(runtime, "Progress", Recording)
    network = KnownScene()
    run(known_handle(network), *network.photos(), refine_steps=3)
    assert totals == [1 + 2 * (1 + 3)] and sum(updates) == totals[0]
    calls = cancel_on_call(pose, "refine_pose", 1)
    with pytest.raises(runtime.Interrupted):
        run(known_handle(network), *network.photos(), refine_steps=3)
    assert len(calls) == 1  # stopped during view 2's refinement: view 1 never started


def test_cancel_inside_the_network(smoke_handle, cancel_inside_network):
    network = smoke_handle.modules["noposplat"]
    calls = cancel_inside_network(network.backbone.enc_blocks[0], network.gaussian_param_head2)
    with pytest.raises(runtime.Interrupted):
        run(smoke_handle, photo("cvs_photo_left.png"), photo("cvs_photo_right.png"))
    assert calls == {"first": 1, "last": 0}


@pytest.mark.parametrize("case,name,match", [
    ("missing", "image_b", "is missing"),
    ("batch_a", "image_a", "has 2 images; expected exactly one photo"),
    ("batch_b", "image_b", "has 2 images"),
    ("identical", "image_b", "the two photos are identical; expected two photos of one place from different "
                             "viewpoints"),
    ("sizes", "image_b", "is 80x64 but image_a is 96x64; expected two photos of the same size"),
    ("mask", "image_b", "MASK, not an IMAGE"),
    ("family", "model", "family 'noposplat'"),
    ("size", "size", "is 72; expected a multiple of 16"),
    ("threshold", "opacity_threshold", "gave no usable pose for view 2: PnP failed"),
])
def test_bad_inputs_name_the_node_and_the_input(case, name, match):
    a, b = photo("cvs_photo_left.png"), photo("cvs_photo_right.png")
    model, over = known_handle(), {}
    if case == "missing":
        b = None
    elif case == "batch_a":
        a = torch.cat([a, b])
    elif case == "batch_b":
        b = torch.cat([a, b])
    elif case == "identical":
        b = a.clone()
    elif case == "sizes":
        b = photo("cvs_photo_right.png", 80, 64)
    elif case == "mask":
        b = b[..., 0]
    elif case == "family":
        model = families.ModelHandle(family="videoscene", source=Path("x"), modules={}, device=torch.device("cpu"),
                                     dtype=torch.float32)
    elif case == "size":
        over = {"size": 72}
    elif case == "threshold":
        over = {"opacity_threshold": 1.0}
    with pytest.raises(NodeInputError, match=match) as err:
        run(model, a, b, **over)
    assert err.value.node == NODE and err.value.input_name == name


def test_refinement_moves_view_2_towards_where_its_photo_was_taken():
    """image_b is taken 4 cm right of where the Gaussians put view 2: PnP (on the Gaussians) lands on
    SECOND, the photometric refinement moves the camera towards the photo's real position (on a
    plane, part of the shift is explained by a turn, so the loss and the direction are checked)."""
    network = KnownScene()
    taken = SECOND.clone()
    taken[0, 3] += 0.04
    scene = network.out.scene(0, two_photos.MIN_OPACITY)
    image_b = render(scene, CameraBatch(taken[None], K[None], S, S))[0]
    _, cameras, info = run(known_handle(network), network.photos()[0], image_b, refine_steps=25, learning_rate=0.002)
    start, end = (float(x) for x in info.split("view 2:")[1].split("loss ")[1].split(" over")[0].split(" -> "))
    assert end - 0.02 < 0.5 * (start - 0.02), info  # 0.02: the loss's floor (structure clamped at 0.98)
    assert float(cameras.c2w[1, 0, 3]) > SECOND[0, 3] + 0.005, info  # moved right (rotation takes up some)


def test_the_node_hands_every_number_to_the_core_in_one_settings_object(monkeypatch):
    """Each numeric input, changed from its default, reaches the TwoPhotoSettings the core gets
    (a learning rate of 0 means no refinement steps)."""
    from consistent_video.videoscene_nodes import nodes as videoscene_nodes

    class Stop(Exception):
        pass
    seen = []

    def capture(network, image_a, image_b, settings, **kwargs):
        seen.append(settings)
        raise Stop
    monkeypatch.setattr(videoscene_nodes, "two_photos_to_gaussians", capture)
    values = dict(size=80, refine_steps=7, learning_rate=0.02, opacity_threshold=0.45)
    required = CVS_VideoSceneTwoPhotos.INPUT_TYPES()["required"]
    assert all(required[name][1]["default"] != value for name, value in values.items())
    network = KnownScene()
    for over in ({}, {"learning_rate": 0.0}):
        with pytest.raises(Stop):
            CVS_VideoSceneTwoPhotos().predict(known_handle(network), *network.photos(), **{**values, **over})
    assert seen == [two_photos.TwoPhotoSettings(size=80, steps=7, lr=0.02, threshold=0.45),
                    two_photos.TwoPhotoSettings(size=80, steps=0, lr=0.0, threshold=0.45)]
