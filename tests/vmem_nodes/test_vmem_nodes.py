"""VMem surfel-memory nodes and the Depth Anything V2 family (tiny, CPU)."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from consistent_video.nodes.comfy import families, runtime
from consistent_video.nodes.cameras.geometry import CameraBatch
from consistent_video.nodes.comfy.errors import NodeInputError
from consistent_video.nodes.comfy.loader_nodes import CVS_ModelLoader
from consistent_video.nodes.comfy.weights import WeightsError
from consistent_video.vmem_nodes import memory as memory_module
from consistent_video.vmem_nodes import nodes as vm
from consistent_video.vmem_nodes.depth_family import FAMILY

H, W = 24, 32


@pytest.fixture(scope="module")
def depth_weights(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights") / FAMILY
    families.get(FAMILY).write_smoke(folder)
    return folder


def cameras(xs) -> CameraBatch:
    """Cameras at ``x`` positions on a line, looking along +z."""
    cams = CameraBatch.identity(len(xs), W, H)
    c2w = cams.c2w.clone()
    c2w[:, 0, 3] = torch.tensor(xs, dtype=torch.float32)
    return CameraBatch(c2w, cams.K, W, H)


def frames(n, value=0.5):
    return torch.full((n, H, W, 3), value)


def plane(n, z=2.0):
    """Z-depth of the plane z = 2 for cameras looking along +z from z = 0."""
    return torch.full((n, H, W), z)


def create(name="walk", reset=False, **kw):
    args = dict(grid_size=8, max_depth_quantile=1.0, radius_scale=0.5, normal_threshold=0.6)
    args.update(kw)
    return vm.CVS_SurfelMemory().open(name, reset, **args)


def add(bank, xs, **kw):
    args = dict(min_confidence=1.0, depth=plane(len(xs)))
    args.update(kw)
    return vm.CVS_SurfelMemoryAddFrames().add(bank, frames(len(xs)), cameras(xs), **args)


# --------------------------------------------------------------------------- depth family
def test_depth_family_smoke_weights_load_strictly(depth_weights):
    assert sorted(p.name for p in depth_weights.iterdir()) == sorted(
        [*families.get(FAMILY).files, families.SMOKE_MARKER])
    (handle,) = CVS_ModelLoader().load(FAMILY, "auto", str(depth_weights), "", "fp32", "cpu")
    assert handle.family == FAMILY and handle.is_smoke
    assert type(handle.modules["depth"]).__name__ == "DepthAnythingForDepthEstimation"
    assert handle.extra["preprocessor"]["image_mean"] == [0.485, 0.456, 0.406]


def test_depth_family_names_a_missing_key(depth_weights, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in depth_weights.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    state = load_file(str(broken / "model.safetensors"))
    del state["head.conv3.weight"]
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(WeightsError, match=r"missing key.*head\.conv3\.weight"):
        families.get(FAMILY).load(broken, torch.device("cpu"), torch.float32)


def test_depth_estimator_preprocesses_like_transformers(depth_weights, monkeypatch):
    """The network input of :func:`depth_estimator` is what transformers' own image processor
    makes of the same frame (up to resampling differences)."""
    import torch.nn.functional as F
    from transformers import AutoImageProcessor

    from consistent_video.vmem_nodes.depth_family import depth_estimator
    handle = families.get(FAMILY).load(depth_weights, torch.device("cpu"), torch.float32)
    model = handle.modules["depth"]
    frame = torch.rand(1, 3, 60, 80, generator=torch.Generator().manual_seed(0))
    frame = F.avg_pool2d(frame, 5, 1, 2).permute(0, 2, 3, 1)  # smooth: resampling filters agree
    expected = AutoImageProcessor.from_pretrained(str(depth_weights))(
        images=[(frame[0] * 255).round().byte().numpy()], return_tensors="pt")["pixel_values"]
    seen, forward = {}, model.forward

    def capture(pixel_values, **kwargs):
        seen["x"] = pixel_values
        return forward(pixel_values=pixel_values, **kwargs)

    monkeypatch.setattr(model, "forward", capture)
    out = depth_estimator(handle)(frame)
    assert out.shape == (1, 60, 80)
    assert seen["x"].shape == expected.shape
    assert (seen["x"] - expected).abs().mean() < 0.02


# --------------------------------------------------------------------------- node chain
def test_create_add_retrieve_preview_undo():
    bank, info = create()
    assert "new and empty" in info and bank.path == runtime.output_dir() / "cvs_memory" / "walk.safetensors"
    bank, report = add(bank, [0.0, 0.3])
    assert "added frames 0..1" in report
    bank, report = add(bank, [1.5, 1.8])
    assert "added frames 2..3" in report and "4 frames in 2 steps" in report

    images, cams, indices, count = vm.CVS_SurfelMemoryRetrieve().retrieve(
        bank, cameras([1.6]), top_k=2, extra_candidates=4, use_nms=False, nms_relax=1.2,
        include_most_recent=False, translation_weight=0.1, query_views=1, render_width=32)
    assert count == 2 and images.shape == (2, H, W, 3) and len(cams) == 2
    assert set(int(i) for i in indices.split(",")) == {2, 3}  # the frames next to the query
    assert torch.allclose(images, torch.full_like(images, 128 / 255), atol=1e-6)

    image, info = vm.CVS_SurfelMemoryPreview().preview(bank, "top", 64, 48, 0.0, 100)
    assert image.shape == (1, 48, 64, 3) and "4 frames" in info
    image, _ = vm.CVS_SurfelMemoryPreview().preview(bank, "front", 64, 48, 0.0, 5, cameras=cameras([3.0]))
    assert image.shape == (1, 48, 64, 3)

    bank, report = vm.CVS_SurfelMemoryUndo().undo(bank, 1)
    assert "removed 2 frame(s)" in report and "2 frames in 1 steps" in report
    assert memory_module.SurfelMemory.load(bank.path).num_frames == 2


def test_same_name_continues_and_reset_starts_anew():
    bank, _ = create()
    add(bank, [0.0, 0.5])
    again, info = create()
    assert again == bank and "2 frames in 1 steps" in info
    _, report = add(again, [1.0])
    assert "added frames 2..2" in report
    _, info = create(grid_size=12)
    assert "keeps the settings" in info
    fresh, info = create(reset=True)
    assert "new and empty" in info and memory_module.SurfelMemory.load(fresh.path).num_frames == 3  # not yet applied
    _, info = vm.CVS_SurfelMemoryPreview().preview(fresh, "top", 32, 32, 0.0, 10)
    assert "0 frames" in info  # the reset memory is empty for every node
    previous = fresh.path.with_name("walk.previous.safetensors")
    assert not previous.exists()
    after, report = add(fresh, [4.0])  # the first store applies the reset
    assert "added frames 0..0" in report and after.reset is None
    assert memory_module.SurfelMemory.load(previous).num_frames == 3
    assert memory_module.SurfelMemory.load(fresh.path).num_frames == 1


def test_empty_memory_preview_and_corrupt_file():
    bank, _ = create()
    image, info = vm.CVS_SurfelMemoryPreview().preview(bank, "perspective", 32, 32, 0.0, 10)
    assert image.shape == (1, 32, 32, 3) and "0 frames" in info
    with pytest.raises(NodeInputError, match=r"Retrieve: input 'memory' holds no frames"):
        vm.CVS_SurfelMemoryRetrieve().retrieve(bank, cameras([0.0]), 4, 10, True, 1.2, False, 0.1, 1, 32)
    bank.path.write_bytes(b"not a memory")
    with pytest.raises(NodeInputError, match=r"CVS Surfel Memory: input 'name' refers to a memory that cannot"):
        create()
    fresh, _ = create(reset=True)
    add(fresh, [0.0])  # applies the reset: the unreadable file is kept as walk.previous
    assert memory_module.SurfelMemory.load(fresh.path).num_frames == 1
    assert fresh.path.with_name("walk.previous.safetensors").read_bytes() == b"not a memory"


def test_bad_name_and_bad_memory_input():
    with pytest.raises(NodeInputError, match=r"CVS Surfel Memory: input 'name'"):
        create(name="../escape")
    with pytest.raises(NodeInputError, match=r"Add Frames: input 'memory'"):
        vm.CVS_SurfelMemoryAddFrames().add("walk", frames(1), cameras([0.0]), 1.0, depth=plane(1))


@pytest.mark.parametrize("case, name", [
    ("counts", "cameras"), ("nan", "depth"), ("neither", "depth"), ("depth_size", "depth"), ("image_size", "images"),
])
def test_failing_add_names_the_input_and_keeps_the_file(case, name):
    bank, _ = create()
    add(bank, [0.0, 0.5])
    before = bank.path.read_bytes()
    node = vm.CVS_SurfelMemoryAddFrames()
    kwargs = {"counts": dict(images=frames(3), cameras=cameras([0, 1]), depth=plane(3)),
              "nan": dict(images=frames(1), cameras=cameras([1]), depth=plane(1).index_fill(1, torch.tensor([3]),
                                                                                           float("nan"))),
              "neither": dict(images=frames(1), cameras=cameras([1])),
              "depth_size": dict(images=frames(1), cameras=cameras([1]), depth=plane(1)[:, :10]),
              "image_size": dict(images=torch.full((1, H + 2, W, 3), 0.5), cameras=cameras([1]),
                                 depth=torch.full((1, H + 2, W), 2.0))}[case]
    with pytest.raises(NodeInputError, match=rf"CVS Surfel Memory Add Frames: input '{name}'"):
        node.add(bank, min_confidence=1.0, **kwargs)
    assert bank.path.read_bytes() == before
    _, report = add(bank, [1.0])
    assert "added frames 2..2" in report


def test_cancel_during_add_keeps_the_file(monkeypatch):
    bank, _ = create()
    add(bank, [0.0])
    before = bank.path.read_bytes()
    original = memory_module.SurfelMemory.add_frames

    def add_then_cancel(self, *args, **kwargs):
        report = original(self, *args, **kwargs)
        runtime.request_interrupt()  # the user presses Cancel while the step is being added
        return report

    monkeypatch.setattr(memory_module.SurfelMemory, "add_frames", add_then_cancel)
    try:
        with pytest.raises(runtime.Interrupted):
            add(bank, [0.5, 1.0])
    finally:
        runtime.clear_interrupt()
    assert bank.path.read_bytes() == before
    _, info = vm.CVS_SurfelMemoryPreview().preview(bank, "top", 32, 32, 0.0, 10)
    assert "1 frames in 1 steps" in info  # the next node sees the file, not the cancelled change


def test_add_with_the_depth_model(depth_weights):
    (handle,) = CVS_ModelLoader().load(FAMILY, "auto", str(depth_weights), "", "fp32", "cpu")
    bank, _ = create()
    bank, report = add(bank, [0.0, 0.5], depth=None, depth_model=handle)
    assert "added frames 0..1" in report
    assert memory_module.SurfelMemory.load(bank.path).num_surfels > 0
    bank, report = add(bank, [1.0], depth=None, depth_model=handle)  # scaled to the memory
    assert "added frames 2..2" in report
    with pytest.raises(NodeInputError, match=r"input 'depth_model'"):
        add(bank, [1.0], depth=None, depth_model="not a model")


# --------------------------------------------------------------------------- reset and undo keep the walk
def previous_of(bank):
    return bank.path.with_name(f"{bank.name}.previous.safetensors")


def test_reset_applies_only_when_a_store_succeeds():
    """Issue 13: 'reset' with a prompt that fails downstream, queued twice, lost the walk."""
    bank, _ = create()
    add(bank, [0.0, 0.5])
    add(bank, [1.0])
    walk = bank.path.read_bytes()
    for _ in range(2):  # two failing queue runs with reset on
        fresh, _ = create(reset=True)
        with pytest.raises(NodeInputError, match=r"Add Frames: input 'depth' has NaN"):
            add(fresh, [2.0], depth=torch.full((1, H, W), float("nan")))
        assert bank.path.read_bytes() == walk and not previous_of(bank).exists()
        assert vm.CVS_SurfelMemoryFrames().frames(bank, 0, 0)[2] == 3  # the walk is all there
    fresh, _ = create(reset=True, grid_size=6)
    first, _ = add(fresh, [5.0])
    second, report = add(fresh, [5.5])  # a second store of the same run continues the new memory
    assert "added frames 1..1" in report and first == second == bank
    assert previous_of(bank).read_bytes() == walk
    memory = memory_module.SurfelMemory.load(bank.path)
    assert memory.num_frames == 2 and memory.surfel_settings.grid_size == 6


def test_an_empty_memory_never_replaces_the_backup():
    bank, _ = create()
    add(bank, [0.0])
    fresh, _ = create(reset=True)
    add(fresh, [1.0])
    vm.CVS_SurfelMemoryUndo().undo(bank, 1)  # now empty; the undone step is the backup
    backup = previous_of(bank).read_bytes()
    assert memory_module.SurfelMemory.load(previous_of(bank)).num_frames == 1
    fresh, _ = create(reset=True)
    add(fresh, [2.0])  # the reset replaces an empty memory: nothing to keep
    assert previous_of(bank).read_bytes() == backup


def test_a_failed_save_while_applying_a_reset_keeps_both_files(monkeypatch):
    bank, _ = create()
    add(bank, [0.0])
    fresh, _ = create(reset=True)
    add(fresh, [1.0])
    walk, backup = bank.path.read_bytes(), previous_of(bank).read_bytes()
    fresh, _ = create(reset=True)

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt  # Cancel / Ctrl-C mid-write

    monkeypatch.setattr(memory_module, "_serialise", crash)
    with pytest.raises(KeyboardInterrupt):
        add(fresh, [2.0])
    assert bank.path.read_bytes() == walk and previous_of(bank).read_bytes() == backup
    assert sorted(p.name for p in bank.path.parent.iterdir()) == ["walk.previous.safetensors", "walk.safetensors"]


def test_undo_refuses_more_steps_than_stored_and_keeps_what_it_removed():
    """Issue 13: Undo with steps 10000 silently emptied the walk, with no backup."""
    bank, _ = create()
    add(bank, [0.0, 0.5])
    add(bank, [1.0])
    walk = bank.path.read_bytes()
    with pytest.raises(NodeInputError, match=r"^CVS Surfel Memory Undo: input 'steps' is 10000, but memory 'walk' "
                                             r"holds 2 step\(s\); expected 1\.\.2$"):
        vm.CVS_SurfelMemoryUndo().undo(bank, 10000)
    assert bank.path.read_bytes() == walk and not previous_of(bank).exists()
    bank, report = vm.CVS_SurfelMemoryUndo().undo(bank, 2)
    assert "removed 3 frame(s) in 2 step(s)" in report and "walk.previous" in report
    assert memory_module.SurfelMemory.load(bank.path).num_frames == 0
    assert previous_of(bank).read_bytes() == walk  # recoverable: copy it back over walk.safetensors
    empty = bank.path.read_bytes()
    with pytest.raises(NodeInputError, match=r"input 'steps' is 1, but memory 'walk' holds 0 step\(s\); expected a "
                                             r"memory with steps to undo"):
        vm.CVS_SurfelMemoryUndo().undo(bank, 1)
    assert bank.path.read_bytes() == empty and previous_of(bank).read_bytes() == walk


def test_add_frames_without_the_walks_vae_names_the_inputs(monkeypatch):
    """A memory that stores latents (a VMem walk) needs the model or VAE to encode new frames."""
    bank, _ = create()
    monkeypatch.setattr(memory_module.SurfelMemory, "stores_latents", property(lambda self: True))
    before = bank.path.read_bytes()
    with pytest.raises(NodeInputError, match=r"^CVS Surfel Memory Add Frames: input 'model' and 'vae' are both "
                                             r"unconnected, but memory 'walk' stores a latent per frame"):
        add(bank, [0.0])
    assert bank.path.read_bytes() == before
