"""SurfelMemory: adding (transactional), undo (exact), save/load (atomic, versioned), bad input."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from consistent_video.nodes.cameras.geometry import CameraBatch, intrinsics_from_fov, look_at
from consistent_video.vmem_nodes import memory as memory_module
from consistent_video.vmem_nodes.memory import FORMAT, MemoryFileError, SurfelMemory
from consistent_video.vmem_nodes.pointmaps import AnalyticProvider, box_quads
from consistent_video.vmem_nodes.retrieval import RetrievalSettings
from consistent_video.vmem_nodes.surfel_index import SurfelIndex
from consistent_video.vmem_nodes.surfels import Pointmaps, SurfelInputError

UP = torch.tensor([0.0, -1.0, 0.0])
ROOM = AnalyticProvider(box_quads([-4, -1.5, -4], [4, 1.5, 4]) + box_quads([-1, 0.5, 1], [0, 1.5, 2]))
W, H = 40, 30


def cameras(yaws_deg, x=0.0) -> CameraBatch:
    yaw = torch.tensor(yaws_deg, dtype=torch.float32).deg2rad()
    eye = torch.stack([torch.full_like(yaw, x), torch.zeros_like(yaw), torch.zeros_like(yaw)], -1)
    target = eye + torch.stack([yaw.sin(), torch.zeros_like(yaw), yaw.cos()], -1)
    return CameraBatch(look_at(eye, target, UP), intrinsics_from_fov(54.0, W, H).expand(len(yaw), 3, 3), W, H)


def step(k: int):
    """Step k of a slow turn in place: 4 frames, 8 degrees apart, with images and latents."""
    cams = cameras([32.0 * k + 8.0 * j for j in range(4)], x=0.1 * k)
    images = torch.rand(4, H, W, 3, generator=torch.Generator().manual_seed(k))
    latents = torch.randn(4, 4, 5, 5, generator=torch.Generator().manual_seed(100 + k)).half()
    return ROOM(images, cams), cams, images, latents


def add(memory: SurfelMemory, k: int):
    maps, cams, images, latents = step(k)
    return memory.add_frames(maps, cams, images=images, latents=latents)


def state(memory: SurfelMemory) -> dict:
    """Everything a memory holds, for exact comparisons (the hash included)."""
    index = memory.index
    tensors = index.tensors()
    if memory.num_frames:
        tensors["c2w"], tensors["K"] = memory.cameras().c2w, memory.cameras().K
        everything = torch.arange(memory.num_frames)
        tensors["images"], tensors["latents"] = memory.images(everything), memory.latents(everything)
    probe = index.position + 0.01
    tensors["nearest"] = index.nearest(probe, index.normal) if index.num_surfels else torch.zeros(0)
    return {"tensors": tensors, "steps": list(memory._steps), "merge_distance": memory.merge_distance,
            "camera_size": memory.camera_size}


def assert_same(a: dict, b: dict) -> None:
    assert a["steps"] == b["steps"] and a["merge_distance"] == b["merge_distance"]
    assert a["camera_size"] == b["camera_size"]
    assert a["tensors"].keys() == b["tensors"].keys()
    for key in a["tensors"]:
        assert torch.equal(a["tensors"][key], b["tensors"][key]), key


QUERIES = [cameras([yaw], x=0.2) for yaw in (10.0, 95.0, 200.0, 300.0)]


def retrievals(memory: SurfelMemory) -> list:
    out = []
    for q in QUERIES:
        found = memory.retrieve(q, RetrievalSettings(num_views=3))
        out.append((found.indices.tolist(), found.retrieval.votes))
    return out


def assert_same_retrievals(a: list, b: list) -> None:
    for (ia, va), (ib, vb) in zip(a, b):
        assert ia == ib and torch.equal(va, vb)


# ----------------------------------------------------------------------------- adding
def test_add_stores_frames_and_reports():
    memory = SurfelMemory()
    report = add(memory, 0)
    assert report.frames.tolist() == [0, 1, 2, 3]
    assert report.added == memory.num_surfels > 0 and report.merged > 0  # the 4 views overlap
    assert report.observations == memory.index.num_pairs
    report = add(memory, 1)
    assert report.frames.tolist() == [4, 5, 6, 7] and memory.num_steps == 2
    _, cams, images, latents = step(1)
    pick = torch.tensor([5, 7])
    assert torch.equal(memory.cameras(pick).c2w, cams.c2w[[1, 3]])
    assert (memory.images(pick) - images[[1, 3]]).abs().max() <= 0.5 / 255 + 1e-6  # stored as uint8
    assert torch.equal(memory.latents(pick), latents[[1, 3]])
    counts = memory.index.observation_counts()
    assert int(counts.sum()) == memory.index.num_pairs and int(counts.min()) >= 1


def test_pairs_are_unique_and_merging_finds_the_nearest():
    memory = SurfelMemory()
    for k in range(3):
        add(memory, k)
    pairs = memory.index.pair_surfel * memory.num_frames + memory.index.pair_frame
    assert pairs.unique().numel() == pairs.numel()
    index = memory.index
    query = index.position[:50] + 0.3 * index.merge_distance
    found = index.nearest(query, index.normal[:50])
    distance = (query[:, None] - index.position[None]).norm(dim=-1)
    agree = (index.normal[:50] @ index.normal.T) > index.settings.normal_threshold
    distance[~agree | (distance > index.merge_distance)] = float("inf")
    expected = torch.where(distance.min(1).values.isinf(), torch.tensor(-1), distance.argmin(1))
    assert torch.equal(found, expected)


def test_retrieval_returns_views_with_their_data():
    memory = SurfelMemory()
    for k in range(3):
        add(memory, k)
    views = memory.retrieve(cameras([20.0]), RetrievalSettings(num_views=3))
    assert len(set(views.indices.tolist())) == 3
    assert torch.equal(views.cameras.c2w, memory.cameras(views.indices).c2w)
    assert views.images.shape == (3, H, W, 3) and views.latents.shape == (3, 4, 5, 5)
    assert views.latents.dtype == torch.float16
    small = SurfelMemory()
    add(small, 0)
    assert sorted(small.retrieve(cameras([0.0]), RetrievalSettings(num_views=6)).indices.tolist()) == [0, 1, 2, 3]


def test_preview_colours_by_observation_count():
    memory = SurfelMemory()
    for k in range(2):
        add(memory, k)
    points, colours, counts = memory.preview()
    assert points.shape == (memory.num_surfels, 3) and colours.shape == points.shape
    assert float(colours.min()) >= 0 and float(colours.max()) <= 1
    once, most = counts == 1, counts == counts.max()
    assert torch.allclose(colours[once], memory_module._RAMP[0].expand(int(once.sum()), 3))
    assert torch.allclose(colours[most], memory_module._RAMP[-1].expand(int(most.sum()), 3))


# ----------------------------------------------------------------------------- undo, transactions
def test_undo_restores_exactly_the_previous_state():
    memory = SurfelMemory()
    add(memory, 0)
    add(memory, 1)
    before = state(memory)
    add(memory, 2)
    assert memory.undo() == 4
    assert_same(state(memory), before)
    add(memory, 3)  # continuing after the undo is as if step 2 never happened
    never = SurfelMemory()
    for k in (0, 1, 3):
        add(never, k)
    assert_same(state(memory), state(never))
    assert_same_retrievals(retrievals(memory), retrievals(never))
    while memory.undo():
        pass
    assert_same(state(memory), state(SurfelMemory()))
    assert memory.merge_distance is None and memory.camera_size is None


def test_a_failing_add_leaves_the_memory_unchanged(monkeypatch):
    memory = SurfelMemory()
    add(memory, 0)
    add(memory, 1)
    before = state(memory)
    link = SurfelIndex._link
    calls = []

    def fail_on_third_frame(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # e.g. a cancel in the middle of the step
        return link(self, *args)

    monkeypatch.setattr(SurfelIndex, "_link", fail_on_third_frame)
    with pytest.raises(KeyboardInterrupt):
        add(memory, 2)
    monkeypatch.setattr(SurfelIndex, "_link", link)
    assert_same(state(memory), before)
    add(memory, 2)
    reference = SurfelMemory()
    for k in range(3):
        add(reference, k)
    assert_same(state(memory), state(reference))


# ----------------------------------------------------------------------------- persistence
def test_save_load_continue_matches_never_saving(tmp_path):
    kept, path = SurfelMemory(), tmp_path / "walk.safetensors"
    for k in range(3):
        add(kept, k)
    kept.save(path)
    loaded = SurfelMemory.load(path)
    assert_same(state(loaded), state(kept))
    for k in (3, 4):
        add(kept, k)
        add(loaded, k)
    assert_same(state(loaded), state(kept))
    assert_same_retrievals(retrievals(loaded), retrievals(kept))
    loaded.undo()
    kept.undo()
    assert_same(state(loaded), state(kept))


def test_an_empty_memory_round_trips(tmp_path):
    SurfelMemory().save(tmp_path / "empty.safetensors")
    loaded = SurfelMemory.load(tmp_path / "empty.safetensors")
    assert loaded.num_frames == 0 and loaded.num_surfels == 0 and loaded.num_steps == 0
    add(loaded, 0)
    assert loaded.num_frames == 4


def test_an_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):
    memory, path = SurfelMemory(), tmp_path / "walk.safetensors"
    add(memory, 0)
    memory.save(path)
    saved = state(memory)
    add(memory, 1)
    real = memory_module._serialise

    def crash_halfway(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:  # a partial file, then the process dies
            f.truncate(os.path.getsize(filename) // 2)
        raise OSError("disk full")

    monkeypatch.setattr(memory_module, "_serialise", crash_halfway)
    with pytest.raises(OSError, match="disk full"):
        memory.save(path)
    assert_same(state(SurfelMemory.load(path)), saved)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["walk.safetensors"]  # no partial file left

    def refuse(*args, **kwargs):
        raise RuntimeError("serialiser failed")

    monkeypatch.setattr(memory_module, "_serialise", refuse)
    with pytest.raises(RuntimeError):
        memory.save(path)
    assert_same(state(SurfelMemory.load(path)), saved)
    monkeypatch.setattr(memory_module, "_serialise", real)
    memory.save(path)
    assert SurfelMemory.load(path).num_frames == 8


def test_unreadable_files_give_clear_errors(tmp_path):
    with pytest.raises(MemoryFileError, match="does not exist"):
        SurfelMemory.load(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 not a memory")
    with pytest.raises(MemoryFileError, match="not a readable surfel memory file"):
        SurfelMemory.load(garbage)
    other = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, other)
    with pytest.raises(MemoryFileError, match="is not a surfel memory file"):
        SurfelMemory.load(other)
    memory, path = SurfelMemory(), tmp_path / "walk.safetensors"
    add(memory, 0)
    memory.save(path)
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    save_file(tensors, tmp_path / "newer.safetensors", metadata={**metadata, "version": "99"})
    with pytest.raises(MemoryFileError, match="version 99.*Update the pack"):
        SurfelMemory.load(tmp_path / "newer.safetensors")
    broken = dict(tensors, **{"observation.frame": tensors["observation.frame"] + 50})
    save_file(broken, tmp_path / "broken.safetensors", metadata=metadata)
    with pytest.raises(MemoryFileError, match="observation.frame refers to entries outside"):
        SurfelMemory.load(tmp_path / "broken.safetensors")
    assert metadata["format"] == FORMAT and json.loads(metadata["state"])["steps"] == [[0, 0, 0]]


# ----------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_and_nothing_changes():
    memory = SurfelMemory()
    add(memory, 0)
    before = state(memory)
    maps, cams, images, latents = step(1)
    cases = [
        (dict(pointmaps=maps, cameras=cams[[0, 1, 2]]), "cameras", r"3 cameras for 4 pointmaps.*\[4, 30, 40, 3\]"),
        (dict(pointmaps=Pointmaps(maps.points.clone().index_fill_(1, torch.tensor([3]), float("nan")), maps.depth,
                                  maps.confidence), cameras=cams), "points", "NaN"),
        (dict(pointmaps=Pointmaps(maps.points[:, :0], maps.depth[:, :0], maps.confidence[:, :0]), cameras=cams),
         "points", r"\[4, 0, 40, 3\].*\[N,H,W,3\]"),
        (dict(pointmaps=Pointmaps(maps.points, maps.depth, maps.confidence[:, :, :7]), cameras=cams),
         "confidence", r"\[4, 30, 40\]"),
        (dict(pointmaps=maps, cameras=cams, images=images[:3], latents=latents), "images", r"\[4,H,W,3\]"),
        (dict(pointmaps=maps, cameras=cams, latents=latents), "images", "missing"),
        (dict(pointmaps=maps, cameras=cams, images=images, latents=latents.float()), "latents", "float16"),
        (dict(pointmaps=maps, cameras=cams, images=images, latents=latents.index_fill(1, torch.tensor([2]), float("nan"))),
         "latents", r"has 100 NaN or infinite value\(s\); expected finite latents"),
        (dict(pointmaps=maps, cameras=cams, images=images, latents=latents.clone().fill_(float("inf"))),
         "latents", "NaN or infinite"),
        (dict(pointmaps=maps, cameras=cams.with_size(80, 60), images=images, latents=latents), "cameras", "40x30"),
        (dict(pointmaps=maps.points, cameras=cams), "pointmaps", "a Pointmaps"),
    ]
    for kwargs, argument, message in cases:
        with pytest.raises(SurfelInputError, match=message) as err:
            memory.add_frames(**kwargs)
        assert err.value.argument == argument and isinstance(err.value, ValueError)
    assert_same(state(memory), before)


def test_retrieving_from_an_empty_memory_is_an_error():
    with pytest.raises(SurfelInputError, match="memory holds no frames"):
        SurfelMemory().retrieve(cameras([0.0]))
