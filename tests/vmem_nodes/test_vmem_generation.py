"""VMem generation: sampler, conditioning, checkpoint layouts, navigation steps, nodes."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from consistent_video.nodes.comfy import runtime
from consistent_video.nodes.cameras.geometry import CameraBatch, intrinsics_from_fov, plucker_rays, project
from consistent_video.nodes.encoders.clip import TransformersCLIPEmbedder
from consistent_video.nodes.comfy.errors import NodeInputError
from consistent_video.nodes.cameras.trajectories import navigate
from consistent_video.nodes.encoders.vae import DiffusersVAECodec
from consistent_video.nodes.comfy.weights import WeightsError
from consistent_video.vmem_nodes import family as vmem_family
from consistent_video.vmem_nodes.depth_family import write_smoke_depth_anything
from consistent_video.vmem_nodes.memory import SurfelMemory
from consistent_video.vmem_nodes.navigation import (NavigationSettings, Navigator, crop_region, fit_square,
                                                    square_cameras)
from consistent_video.vmem_nodes.pipeline import (GenerationError, GenerationSettings, build_conditioning,
                                                  normalised_cameras, sample_latents)
from consistent_video.vmem_nodes.pointmaps import AnalyticProvider, box_quads
from consistent_video.vmem_nodes.retrieval import RetrievalSettings
from consistent_video.vmem_nodes.sampling import (DDPMSchedule, EpsDenoiser, euler_sample, guidance_scales)

CPU = torch.device("cpu")
SIZE = 128  # smoke walks: 128 x 128 frames, 16 x 16 latents


# ----------------------------------------------------------------------------- sampler
def test_sigma_schedule_matches_published_values_at_full_size():
    """50 steps: indices 19, 39, ..., 999; sigma 84.9 -> 0.163 (then 0), recomputed in numpy."""
    schedule = DDPMSchedule()
    indices = schedule.step_indices(50)
    assert indices.tolist() == list(range(19, 1000, 20))
    betas = np.linspace(math.sqrt(5e-6), math.sqrt(0.012), 1000, dtype=np.float64) ** 2
    abar = np.cumprod(1 - betas)
    steps = np.linspace(999, 0, 50, endpoint=False).astype(int)[::-1]
    expected = (np.sqrt((1 - abar[steps]) / abar[steps]) * np.exp(2.4))[::-1]
    sigmas = schedule.sampling_sigmas(50)
    assert sigmas.shape == (51,) and sigmas[-1] == 0
    np.testing.assert_allclose(sigmas[:-1].numpy(), expected, rtol=1e-6)
    assert sigmas[0].item() == pytest.approx(84.9, abs=0.05)
    assert sigmas[-2].item() == pytest.approx(0.163, abs=0.0005)
    assert torch.all(sigmas[:-1][1:] < sigmas[:-1][:-1])  # strictly decreasing


def test_step_indices_other_counts_and_limits():
    schedule = DDPMSchedule()
    for n in (1, 7, 25, 999):
        expected = np.linspace(999, 0, n, endpoint=False).astype(int)[::-1]
        assert schedule.step_indices(n).tolist() == expected.tolist()
    assert schedule.step_indices(1000).tolist() == list(range(1000))
    with pytest.raises(ValueError):
        schedule.step_indices(0)


def test_denoiser_replaces_context_snaps_sigma_and_scales():
    denoiser = EpsDenoiser()
    seen = {}

    def network(x, index, cond):
        seen.update(x=x.clone(), index=index.clone(), cond=cond)
        return torch.ones_like(x)

    x = torch.randn(3, 4, 2, 2)
    latents = torch.full((3, 4, 2, 2), 7.0)
    mask = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1, 1).expand(3, 1, 2, 2)
    sigma = denoiser.sigmas[500] * 1.0001  # snapped to index 500
    out = denoiser(network, x, sigma.expand(3), {"replace": torch.cat([latents, mask], 1), "other": 1})
    s = denoiser.sigmas[500]
    replaced = x.clone()
    replaced[0] = 7.0
    assert seen["index"].tolist() == [500, 500, 500]
    assert "replace" not in seen["cond"] and seen["cond"]["other"] == 1
    torch.testing.assert_close(seen["x"], replaced / torch.sqrt(s ** 2 + 1))
    torch.testing.assert_close(out, replaced - s)


def _cams(c2w: torch.Tensor, fov: float = 54.0) -> CameraBatch:
    return CameraBatch(c2w, intrinsics_from_fov(fov, SIZE, SIZE).expand(len(c2w), 3, 3), SIZE, SIZE)


def test_multiview_guidance_uses_cfg_min_only_for_near_duplicate_cameras():
    start = _cams(torch.eye(4)[None])
    turned5 = navigate([("turn_left", 5)], 1, start=start)
    turned20 = navigate([("turn_left", 20)], 1, start=start)
    moved = navigate([("move_forward", 0.1)], 1, start=start)
    cams = CameraBatch.cat([start, start, turned5, turned20, moved])
    K = cams.K.clone()
    mask = torch.tensor([True, False, False, False, False])
    scales = guidance_scales("multiview", 2.0, 1.2, cams.c2w, K, mask)
    assert scales.tolist() == pytest.approx([1.2, 1.2, 1.2, 2.0, 2.0])
    K[1, 0, 0] += 1e-3  # another K: not a duplicate
    assert guidance_scales("multiview", 2.0, 1.2, cams.c2w, K, mask)[1] == pytest.approx(2.0)
    assert guidance_scales("vanilla", 2.0, 1.2, cams.c2w, K, mask).tolist() == [2.0] * 5


def test_temporal_guidance_ramps_with_frame_distance():
    c2w = torch.eye(4).expand(5, 4, 4).clone()
    c2w[:, 0, 3] = torch.arange(5.0)  # all cameras distinct
    K = intrinsics_from_fov(54, SIZE, SIZE).expand(5, 3, 3)
    mask = torch.tensor([True, False, False, False, True])
    scales = guidance_scales("multiview_temporal", 3.0, 1.0, c2w, K, mask)
    # distances to the nearest context frame 0,1,2,1,0 -> normalised by 2
    assert scales.tolist() == pytest.approx([1.0, 2.0, 3.0, 2.0, 1.0])


def test_euler_sampler_reaches_the_denoised_target_and_applies_guidance():
    sigmas = DDPMSchedule().sampling_sigmas(10)
    target = torch.randn(2, 3)

    def denoise(x, sigma):
        return target - 1.0, target + 1.0  # uncond, cond

    scale = torch.tensor([1.0, 0.5])
    out = euler_sample(denoise, torch.randn(2, 3), sigmas, scale)
    expected = torch.stack([target[0] + 1.0, target[1] + 0.0])  # uncond + s * (cond - uncond)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    steps = []
    euler_sample(denoise, torch.randn(2, 3), sigmas, scale, on_step=steps.append)
    assert steps == list(range(1, 11))


# ----------------------------------------------------------------------------- conditioning
def test_conditioning_layout_pluckers_and_camera_normalisation():
    start = _cams(torch.eye(4)[None])
    targets = navigate([("move_forward", 0.4)], 3, start=start)
    cams = CameraBatch.cat([start, targets])
    latents = torch.randn(1, 4, 6, 6)
    embeddings = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.tensor([True, False, False, False])
    cond = build_conditioning(cams, mask, latents, embeddings, camera_scale=2.0)
    c, u = cond.cond, cond.uncond
    assert c["concat"].shape == (4, 7, 6, 6) and c["dense_vector"].shape == (4, 6, 6, 6)
    assert c["crossattn"].shape == (4, 1, 3) and torch.equal(c["crossattn"][:, 0], embeddings.expand(4, 3))
    assert torch.equal(c["concat"][:, 0, 0, 0], mask.float()) and not u["concat"][:, 0].any()
    torch.testing.assert_close(c["replace"][0, :4], latents[0])
    assert torch.equal(c["replace"][:, 4, 0, 0], mask.float()) and not c["replace"][1:].any()
    assert not u["replace"].any() and not u["crossattn"].any()
    assert torch.equal(u["concat"][:, 1:], c["concat"][:, 1:]) and torch.equal(u["dense_vector"], c["dense_vector"])
    # cameras: centred on the mean position, the first at camera_scale (+0.01 on the factor)
    centres = cams.centers()
    centred = centres - centres.mean(0)
    factor = 2.0 / centred[0].norm() + 0.01
    torch.testing.assert_close(cond.cameras.centers(), centred * factor)
    # Plücker maps of the normalised cameras relative to frame 0 (identity rotation here)
    torch.testing.assert_close(c["dense_vector"], plucker_rays(cond.cameras, 6, 6, reference=0))


def test_normalised_cameras_of_a_pure_rotation_keep_scale():
    start = _cams(torch.eye(4)[None])
    cams = CameraBatch.cat([start, navigate([("turn_left", 30)], 3, start=start)])
    assert torch.allclose(normalised_cameras(cams, 2.0).centers(), torch.zeros(4, 3))


def test_fit_square_and_square_cameras_agree_on_projections():
    """A world point projects to the same picture content before and after squaring."""
    W, H = 96, 64
    cams = CameraBatch(torch.eye(4)[None], intrinsics_from_fov(60, W, H)[None], W, H)
    point = torch.tensor([[0.3, -0.2, 2.0]])
    uv, _ = project(point, cams)
    for mode in ("crop", "pad"):
        sq = square_cameras(cams, 48, mode)
        uv_sq, _ = project(point, sq)
        side = min(W, H) if mode == "crop" else max(W, H)
        offset = torch.tensor([(side - W) / 2, (side - H) / 2])
        torch.testing.assert_close(uv_sq[0, 0], (uv[0, 0] + offset) * 48 / side)
    image = torch.rand(1, H, W, 3)
    square, region = fit_square(image, 48, "pad")
    assert square.shape == (1, 48, 48, 3) and region == (8, 0, 32, 48)
    assert crop_region(square, region).shape == (1, 32, 48, 3)
    square, region = fit_square(image, 48, "crop")
    assert square.shape == (1, 48, 48, 3) and region == (0, 0, 48, 48)


# ----------------------------------------------------------------------------- weights
@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vmem_weights")
    out = {}
    for fam in (vmem_family.VMEM_FAMILY, vmem_family.SEVA_FAMILY):
        fam.write_smoke(root / fam.name)
        out[fam.name] = root / fam.name
    write_smoke_depth_anything(root / "depth")
    out["depth"] = root / "depth"
    return out


@pytest.fixture(scope="module")
def handle(weights):
    return vmem_family.VMEM_FAMILY.load(weights["vmem"], CPU, torch.float32)


def test_both_checkpoint_layouts_load_strictly(weights, handle):
    assert set(handle.modules) == {"unet", "vae", "image_encoder"} and handle.is_smoke
    seva = vmem_family.SEVA_FAMILY.load(weights["seva"], CPU, torch.float32)
    assert (weights["seva"] / "model.safetensors").is_file() and (weights["vmem"] / "vmem_weights.pth").is_file()
    assert seva.modules["unet"].params == handle.modules["unet"].params
    assert not any(p.is_meta for m in handle.modules.values() for p in m.parameters())


def test_module_prefix_is_stripped_and_optional_parts_are_optional(weights, tmp_path):
    folder = tmp_path / "vmem"
    shutil.copytree(weights["vmem"], folder)
    state = torch.load(folder / "vmem_weights.pth", weights_only=True)
    torch.save({f"module.{k}": v for k, v in state.items()}, folder / "vmem_weights.pth")
    shutil.rmtree(folder / "vae")
    loaded = vmem_family.VMEM_FAMILY.load(folder, CPU, torch.float32)
    assert set(loaded.modules) == {"unet", "image_encoder"}


def test_checkpoint_of_another_model_is_rejected(weights, tmp_path):
    folder = tmp_path / "seva"
    shutil.copytree(weights["seva"], folder)
    shutil.copyfile(weights["depth"] / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(WeightsError, match="SEVA"):
        vmem_family.SEVA_FAMILY.load(folder, CPU, torch.float32)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="model.safetensors"):
        vmem_family.SEVA_FAMILY.load(folder, CPU, torch.float32)


def test_incomplete_vae_folder_is_named(weights, tmp_path):
    folder = tmp_path / "vmem"
    shutil.copytree(weights["vmem"], folder)
    (folder / "vae/diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(WeightsError, match="vae/diffusion_pytorch_model.safetensors"):
        vmem_family.VMEM_FAMILY.load(folder, CPU, torch.float32)


# ----------------------------------------------------------------------------- navigation
SCENE = box_quads([-3.0, -2.0, -3.0], [3.0, 1.5, 4.0])


def _navigator(handle, progress=None, steps=2, seed=7) -> Navigator:
    settings = NavigationSettings(GenerationSettings(steps=steps), RetrievalSettings(), seed=seed)
    return Navigator(handle.modules["unet"], DiffusersVAECodec(handle.modules["vae"]),
                     TransformersCLIPEmbedder(handle.modules["image_encoder"]), AnalyticProvider(SCENE), CPU,
                     torch.float32, settings, progress=progress)


def _start(navigator: Navigator) -> SurfelMemory:
    memory = SurfelMemory()
    image = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0))
    navigator.start(memory, image, _cams(torch.eye(4)[None]))
    return memory


def _last(memory: SurfelMemory) -> CameraBatch:
    return memory.cameras(torch.tensor([memory.num_frames - 1]))


def test_first_step_pads_targets_and_adds_only_real_frames(handle):
    navigator = _navigator(handle)
    memory = _start(navigator)
    targets = navigate([("turn_left", 10)], 4, start=_last(memory))
    assert navigator.targets_per_call(memory) == 7
    result = navigator.step(memory, targets)
    assert result.images.shape == (4, SIZE, SIZE, 3) and result.latents.shape == (4, 4, SIZE // 8, SIZE // 8)
    assert result.context.tolist() == [0]
    assert memory.num_frames == 5 and memory.num_steps == 2
    assert torch.isfinite(result.images).all()


def test_three_step_walk_with_revisit_retrieves_the_views_of_that_place(handle):
    navigator = _navigator(handle)
    memory = _start(navigator)
    used = []
    for action in (("turn_left", 40), ("turn_right", 80), ("turn_left", 40)):
        targets = navigate([action], 4, start=_last(memory))
        used.append(navigator.step(memory, targets).context.tolist())
    assert memory.num_frames == 13 and len(used[1]) == 4 and len(used[2]) == 4
    # yaw of the frames: 0 | 10 20 30 40 | 20 0 -20 -40 | -30 -20 -10 0. The last step ends where the
    # walk began, and its nearest context view is one of the two earlier views of that place.
    assert used[2][0] in (0, 6)


def test_cancelled_step_leaves_memory_unchanged(handle, tmp_path):
    calls = []

    def progress(n):
        calls.append(n)
        if len(calls) == 3:
            raise runtime.Interrupted()

    memory = _start(_navigator(handle))
    path = memory.save(tmp_path / "walk.safetensors")
    before = path.read_bytes()
    frames, surfels = memory.num_frames, memory.num_surfels
    with pytest.raises(runtime.Interrupted):
        _navigator(handle, progress=progress).step(memory, navigate([("turn_left", 10)], 4, start=_last(memory)))
    assert (memory.num_frames, memory.num_surfels) == (frames, surfels)
    assert path.read_bytes() == before


def test_saved_and_reloaded_walk_continues_identically(handle, tmp_path):
    navigator = _navigator(handle)
    memory = _start(navigator)
    navigator.step(memory, navigate([("turn_left", 20)], 4, start=_last(memory)))
    memory.save(tmp_path / "walk.safetensors")
    reloaded = SurfelMemory.load(tmp_path / "walk.safetensors")
    a = navigator.step(memory, navigate([("move_forward", 0.3)], 4, start=_last(memory)))
    b = _navigator(handle).step(reloaded, navigate([("move_forward", 0.3)], 4, start=_last(reloaded)))
    assert torch.equal(a.context, b.context)
    torch.testing.assert_close(a.latents, b.latents, rtol=0, atol=0)
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)


def test_generation_is_deterministic_for_a_seed(handle):
    start = _cams(torch.eye(4)[None])
    cams = CameraBatch.cat([start, navigate([("turn_left", 10)], 7, start=start)])
    cond = build_conditioning(cams, torch.arange(8) < 1, torch.randn(1, 4, 16, 16), torch.randn(1, 16))
    unet = handle.modules["unet"]
    a = sample_latents(unet, cond, GenerationSettings(steps=2), 3, CPU, torch.float32)
    b = sample_latents(unet, cond, GenerationSettings(steps=2), 3, CPU, torch.float32)
    c = sample_latents(unet, cond, GenerationSettings(steps=2), 4, CPU, torch.float32)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(GenerationError, match="num_frames"):
        sample_latents(unet, cond, GenerationSettings(steps=2, num_frames=6), 3, CPU, torch.float32)


def test_plan_splits_long_paths_into_calls(handle):
    navigator = _navigator(handle)
    memory = _start(navigator)
    path = navigate([("turn_left", 60)], 13, start=_last(memory))
    calls = navigator.plan(memory, [path[:11], path[11:]])
    assert [(i, len(c)) for i, c in calls] == [(0, 7), (0, 4), (1, 2)]
    assert torch.equal(CameraBatch.cat([c for _, c in calls]).c2w, path.c2w)


# ----------------------------------------------------------------------------- nodes
from consistent_video.vmem_nodes import navigation as navigation_module  # noqa: E402
from consistent_video.vmem_nodes.depth_family import load_depth_anything  # noqa: E402
from consistent_video.vmem_nodes.navigate_nodes import CVS_VMemNavigate, CVS_VMemWalk  # noqa: E402
from consistent_video.vmem_nodes.nodes import (CVS_SurfelMemory, CVS_SurfelMemoryAddFrames,  # noqa: E402
                                               CVS_SurfelMemoryFrames, CVS_SurfelMemoryUndo)

KNOBS = dict(steps=2, cfg=2.0, cfg_min=1.2, guider="multiview", seed=42, resolution=SIZE, fit="pad", fov=54.0,
             context_views=4, camera_scale=2.0, start_depth=2.0)
PICTURE = torch.rand(1, 72, 128, 3, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def depth(weights):
    return load_depth_anything(weights["depth"], CPU, torch.float32)


def _bank(name="walk", reset=True):
    return CVS_SurfelMemory().open(name, reset, 25, 0.999, 0.5, 0.6)[0]


def _navigate(handle, depth, bank, action="turn_left", image=PICTURE, **overrides):
    knobs = {**KNOBS, **overrides}
    return CVS_VMemNavigate().navigate(handle, depth, bank, action=action, angle=10.0, distance=0.25,
                                       poses_per_action=4, image=image, **knobs)


def test_navigate_node_continues_the_walk_across_runs_and_undo(handle, depth):
    bank = _bank()
    images, cams, _, info = _navigate(handle, depth, bank)
    assert images.shape == (5, 72, 128, 3) and len(cams) == 5  # start + 4 views, cut back to the picture
    assert info.startswith("started the walk")
    images, cams, _, info = _navigate(handle, depth, bank, action="move_forward", image=None)
    assert images.shape == (4, SIZE, SIZE, 3)  # no image connected: the square frames
    assert "9 frames in 3 steps" in info
    frames, frame_cams, count = CVS_SurfelMemoryFrames().frames(bank, 0, 0)
    assert count == 9 and frames.shape == (9, SIZE, SIZE, 3)
    assert torch.allclose(frame_cams.c2w[-4:], cams.c2w)
    # the move went forward from the turned camera
    assert (frame_cams.centers()[-1] - frame_cams.centers()[4]).norm().item() == pytest.approx(0.25, abs=1e-5)
    CVS_SurfelMemoryUndo().undo(bank, 1)
    assert CVS_SurfelMemoryFrames().frames(bank, -2, 0)[2] == 2


def test_cancelled_navigation_keeps_the_bank_file(handle, depth, monkeypatch):
    bank = _bank()
    _navigate(handle, depth, bank)
    before = bank.path.read_bytes()
    real = navigation_module.sample_latents

    def cancel_then_sample(*args, **kwargs):
        runtime.request_interrupt()  # the user presses Cancel while sampling
        return real(*args, **kwargs)

    monkeypatch.setattr(navigation_module, "sample_latents", cancel_then_sample)
    with pytest.raises(runtime.Interrupted):
        _navigate(handle, depth, bank)
    runtime.clear_interrupt()
    assert bank.path.read_bytes() == before
    monkeypatch.setattr(navigation_module, "sample_latents", real)
    assert "9 frames in 3 steps" in _navigate(handle, depth, bank)[3]


@pytest.mark.parametrize("node", ["navigate", "walk"])
def test_cancel_inside_the_first_unet_call_keeps_the_bank_file(handle, depth, node, cancel_inside_network):
    """Cancel pressed while the UNet runs its first block stops that very call (no later block
    runs), not the step after it; the bank file stays as it was."""
    bank = _bank(node)
    _navigate(handle, depth, bank)
    before = bank.path.read_bytes()
    unet = handle.modules["unet"]
    calls = cancel_inside_network(unet.input_blocks[0], unet.output_blocks[-1])
    with pytest.raises(runtime.Interrupted):
        if node == "navigate":
            _navigate(handle, depth, bank)
        else:
            CVS_VMemWalk().walk(handle, depth, bank, actions="turn_left 20", poses_per_action=4, image=PICTURE,
                                **KNOBS)
    assert calls == {"first": 1, "last": 0}
    assert bank.path.read_bytes() == before


def test_walk_node_actions_and_planned_path(handle, depth):
    images, cams, _, info = CVS_VMemWalk().walk(handle, depth, _bank("actions"), actions="turn_left 20\nturn_right 20",
                                                poses_per_action=4, image=PICTURE, **KNOBS)
    assert images.shape[0] == 9 and len(cams) == 9 and "in 2 call(s)" in info
    path = navigate([("turn_left", 30), ("move_forward", 0.5)], 5, include_start=True, width=160, height=90)
    images, cams, _, info = CVS_VMemWalk().walk(handle, depth, _bank("path"), actions="", poses_per_action=4,
                                                image=PICTURE, path=path, **KNOBS)
    assert images.shape[0] == len(path) == 11 and "in 2 call(s)" in info  # 7 + 3 targets after the start
    assert torch.allclose(cams.c2w, path.c2w)


def test_the_walk_settings_reach_the_navigator_and_the_start(handle, depth):
    """The core gets each knob of the node's one settings object: the navigation settings and
    start_depth in the navigator, fov in the starting camera."""
    from consistent_video.vmem_nodes import navigate_nodes
    knobs = {**KNOBS, "steps": 3, "seed": 7, "context_views": 3, "camera_scale": 1.5, "start_depth": 3.5}
    settings = navigate_nodes._walk_settings(**knobs, poses_per_action=4)
    navigator = navigate_nodes._prepare("test", settings, handle, depth)
    assert navigator.settings == settings.navigation
    assert navigator.settings.retrieval.num_views == 3 and navigator.settings.generation.camera_scale == 1.5
    assert navigator.provider.start_depth == 3.5
    cams = _navigate(handle, depth, _bank("fov"), fov=70.0)[1]
    assert torch.allclose(cams.K[0], intrinsics_from_fov(70.0, SIZE, SIZE))


def test_generation_nodes_reject_bad_input(handle, depth, weights):
    bank = _bank()
    with pytest.raises(NodeInputError, match="'image'.*starting image"):
        _navigate(handle, depth, bank, image=None)
    with pytest.raises(NodeInputError, match="'model'.*vmem"):
        _navigate(depth, depth, bank)
    with pytest.raises(NodeInputError, match="'depth_model'"):
        _navigate(handle, handle, bank)
    with pytest.raises(NodeInputError, match="'resolution'.*multiple of 64"):
        _navigate(handle, depth, bank, resolution=100)
    with pytest.raises(NodeInputError, match="'actions'"):
        CVS_VMemWalk().walk(handle, depth, bank, actions="jump 3", poses_per_action=4, image=PICTURE, **KNOBS)
    with pytest.raises(NodeInputError, match="'context_views'"):
        _navigate(handle, depth, bank, context_views=8)
    with pytest.raises(NodeInputError, match="holds no frames"):  # nothing was stored by the failed runs
        CVS_SurfelMemoryFrames().frames(bank, 0, 0)
    _navigate(handle, depth, bank)
    with pytest.raises(NodeInputError, match="'resolution'.*started with"):
        _navigate(handle, depth, bank, resolution=192)
    # a memory filled without latents (by the plain memory nodes) cannot be walked on
    other = _bank("plain")
    CVS_SurfelMemoryAddFrames().add(other, torch.rand(1, SIZE, SIZE, 3), CameraBatch.identity(1, SIZE, SIZE), 0.5,
                                    depth=torch.full((1, SIZE, SIZE), 2.0))
    with pytest.raises(NodeInputError, match="'memory'.*latents"):
        _navigate(handle, depth, other)


def test_add_frames_continues_a_walk_with_the_frames_encoded(handle, depth):
    """Issue 13: Add Frames asked for a 'latents' input it does not have when the memory was a walk's."""
    bank = _bank("mixed")
    _navigate(handle, depth, bank)  # the start and 4 views, each memorised with its latent
    before = bank.path.read_bytes()
    add = CVS_SurfelMemoryAddFrames().add
    photo = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(5))
    last = CVS_SurfelMemoryFrames().frames(bank, -1, 1)[1]
    with pytest.raises(NodeInputError, match=r"^CVS Surfel Memory Add Frames: input 'model' and 'vae' are both "
                                             r"unconnected, but memory 'mixed' stores a latent per frame"):
        add(bank, photo, last, 0.5, depth_model=depth)
    with pytest.raises(NodeInputError, match=r"Add Frames: input 'cameras' refer to 64x64 images; expected the "
                                             r"memory's camera size 128x128"):
        add(bank, photo[:, :64, :64], last.with_size(64, 64), 0.5, depth_model=depth, model=handle)
    with pytest.raises(NodeInputError, match=r"Add Frames: input 'model' got a 'depth_anything_v2' model"):
        add(bank, photo, last, 0.5, depth_model=depth, model=depth)
    assert bank.path.read_bytes() == before
    bank, report = add(bank, photo, last, 0.5, depth_model=depth, model=handle)
    assert "added frames 5..5 (1) with their latents" in report
    stored = SurfelMemory.load(bank.path)
    assert torch.equal(stored.latents(torch.tensor([5])), DiffusersVAECodec(handle.modules["vae"]).encode(photo))
    info = _navigate(handle, depth, bank, image=None)[3]  # the walk goes on, with the added frame in memory
    assert "10 frames in 4 steps" in info


def test_frames_added_with_the_model_start_a_walk(handle, depth):
    bank = _bank("photos")
    photo = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(6))
    _, report = CVS_SurfelMemoryAddFrames().add(bank, photo, CameraBatch.identity(1, SIZE, SIZE), 0.5,
                                                 depth_model=depth, model=handle)
    assert "with their latents" in report and SurfelMemory.load(bank.path).stores_latents  # a walk can start here


def test_non_finite_generation_is_never_memorised(handle, depth, monkeypatch):
    bank = _bank("finite")
    before = bank.path.read_bytes()
    with pytest.raises(NodeInputError, match=r"^CVS VMem Navigate: input 'cfg' is nan; expected a finite number "
                                             r"between 0\.1 and 30\.0$"):
        _navigate(handle, depth, bank, cfg=float("nan"))
    real = navigation_module.sample_latents
    monkeypatch.setattr(navigation_module, "sample_latents",
                        lambda *args, **kwargs: torch.full_like(real(*args, **kwargs), float("nan")))
    with pytest.raises(NodeInputError, match=r"^CVS VMem Navigate: input 'model' generated NaN or infinite latents"):
        _navigate(handle, depth, bank)  # the start is memorised only with the first step's views
    assert bank.path.read_bytes() == before


def test_navigate_names_the_input_of_a_non_finite_camera(handle, depth):
    """A NaN angle (FLOAT) or a camera batch holding NaN is refused naming the node and the input,
    before the walk is touched (not 'camera c2w has NaN' from deep inside)."""
    bank = _bank("nan")
    with pytest.raises(NodeInputError, match="^CVS VMem Navigate: input 'angle' is nan"):
        CVS_VMemNavigate().navigate(handle, depth, bank, action="turn_left", angle=float("nan"), distance=0.25,
                                    poses_per_action=4, image=PICTURE, **KNOBS)
    targets = navigate([("turn_left", 10)], 4, width=SIZE, height=SIZE)
    targets.c2w[2, 1, 3] = float("nan")
    with pytest.raises(NodeInputError, match=r"^CVS VMem Navigate: input 'cameras' is not a valid camera batch: "
                                             r"camera c2w has NaN or infinite values \(camera 2\)"):
        _navigate(handle, depth, bank, cameras=targets)
    with pytest.raises(NodeInputError, match="^CVS VMem Walk: input 'path' is not a valid camera batch"):
        CVS_VMemWalk().walk(handle, depth, bank, actions="", poses_per_action=4, image=PICTURE, path=targets, **KNOBS)
    with pytest.raises(NodeInputError, match="holds no frames"):  # nothing was stored
        CVS_SurfelMemoryFrames().frames(bank, 0, 0)


def test_missing_weights_error_names_every_file_and_source(tmp_path, monkeypatch):
    from consistent_video.nodes.comfy.weights import resolve
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runtime.configure_standalone(models=tmp_path / "models")
    with pytest.raises(WeightsError) as info:
        resolve(vmem_family.VMEM_FAMILY)
    text = str(info.value)
    for expected in ("vmem_weights.pth", "liguang0115/vmem", "vae/diffusion_pytorch_model.safetensors",
                     "stabilityai/stable-diffusion-2-1-base", "image_encoder/model.safetensors",
                     "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"):
        assert expected in text


def test_optional_parts_are_downloaded_into_place(tmp_path, monkeypatch):
    """Online, the loader fetches the VAE and image encoder from their own repos into the folder."""
    import huggingface_hub
    from consistent_video.nodes.comfy.weights import fetch_optional
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    asked = []

    def fake_download(repo_id, filename, local_dir):
        asked.append((repo_id, filename))
        if repo_id.startswith("laion/"):
            raise OSError("gated")
        path = Path(local_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{repo_id}/{filename}")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    folder = tmp_path / "vmem"
    folder.mkdir()
    missing = fetch_optional(vmem_family.VMEM_FAMILY, folder)
    assert missing == ["image_encoder/config.json", "image_encoder/model.safetensors"]
    assert (folder / "vae/config.json").read_text() == "stabilityai/stable-diffusion-2-1-base/vae/config.json"
    assert ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "model.safetensors") in asked
    assert not (folder / ".cvs_download").exists()
