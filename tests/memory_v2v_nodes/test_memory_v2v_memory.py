"""Memory-V2V memory: VideoFOV scores on cameras with known overlaps, DINOv2 ranking on
constructed descriptors, and the bank's persistence (save / load / failed save)."""
import math

import pytest
import torch

from consistent_video.memory_v2v_nodes import retrieval as R
from consistent_video.memory_v2v_nodes.bank import BankFileError, NonFiniteTurn, Turn, VideoMemoryBank
from consistent_video.nodes.cameras.geometry import CameraBatch, intrinsics_from_fov

GRID = (90, 180)  # coarser than the default for speed; the geometry is the same


def cams(yaws_deg, fov=60.0, size=(64, 64), position=(0.0, 0.0, 0.0)):
    """Cameras at ``position`` turned about the vertical (y) axis by each yaw, OpenCV axes."""
    c2w = []
    for yaw in yaws_deg:
        a = math.radians(yaw)
        m = torch.eye(4)
        m[:3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
        m[:3, 3] = torch.tensor(position)
        c2w.append(m)
    K = intrinsics_from_fov(fov, *size)
    return CameraBatch(torch.stack(c2w), K.expand(len(yaws_deg), 3, 3), *size)


def test_identical_videos_score_one():
    target = cams([0, 10, 20])
    (index, score), = R.rank_by_fov(target, [cams([0, 10, 20])], k=1, grid=GRID)
    assert index == 0 and score == pytest.approx(1.0)


def test_disjoint_videos_score_zero():
    target = cams([0], fov=40)
    (_, score), = R.rank_by_fov(target, [cams([180], fov=40)], k=1, grid=GRID)
    assert score == 0.0


def test_contained_video_scores_half_iou_plus_half():
    target = cams([0], fov=30)
    wide = cams([0], fov=90)
    reference = target.c2w[0]
    small, big = R.fov_mask(target, reference, grid=GRID), R.fov_mask(wide, reference, grid=GRID)
    assert bool((small & ~big).sum() == 0) and small.sum() < big.sum()  # contained
    score, = R.fov_scores(small, [big])
    assert score == pytest.approx(0.5 * float(small.sum()) / float(big.sum()) + 0.5)
    # the other way round: the wide target is only partly covered by the narrow memory
    reverse, = R.fov_scores(big, [small])
    assert reverse == pytest.approx(0.5 * float(small.sum()) / float(big.sum()) * 2)


def test_union_over_frames_and_ranking_order():
    target = cams([0, 30, 60], fov=40)
    memory = [cams([180, 200], fov=40), cams([30], fov=40), cams([0, 30, 60], fov=40), cams([60, 90], fov=40)]
    ranked = R.rank_by_fov(target, memory, k=3, grid=GRID)
    # 2 is the same video; 1 lies inside the target's FOV (IoU = containment); 3 shares one view
    # with the target but adds area outside it (same overlap, lower IoU); 0 looks the other way
    assert [i for i, _ in ranked] == [2, 1, 3]
    assert ranked[0][1] == pytest.approx(1.0) and ranked[1][1] > ranked[2][1] > 0
    everything = R.rank_by_fov(target, memory, k=10, grid=GRID)
    assert len(everything) == 4 and everything[-1] == (0, 0.0)


def test_poses_are_relative_to_the_targets_first_camera():
    """Moving every camera by the same rigid motion changes nothing."""
    target, memory = cams([0, 20], fov=50), [cams([40, 60], fov=50), cams([10], fov=50)]
    base = R.rank_by_fov(target, memory, k=2, grid=GRID)
    shift = torch.eye(4)
    shift[:3, 3] = torch.tensor([3.0, -1.0, 2.0])
    rot = cams([77]).c2w[0]

    def moved(c):
        return CameraBatch(shift @ rot @ c.c2w, c.K, c.width, c.height)
    again = R.rank_by_fov(moved(target), [moved(m) for m in memory], k=2, grid=GRID)
    assert [i for i, _ in again] == [i for i, _ in base]
    assert [s for _, s in again] == pytest.approx([s for _, s in base], abs=2e-3)


def test_appearance_ranking_puts_the_most_recent_first():
    current = torch.tensor([1.0, 0.0, 0.0])
    descriptors = [torch.tensor([0.0, 1.0, 0.0]),   # orthogonal
                   torch.tensor([0.9, 0.1, 0.0]),   # close
                   torch.tensor([-1.0, 0.0, 0.0]),  # opposite
                   torch.tensor([0.5, 0.5, 0.0])]   # the most recent, middling
    ranked = R.rank_by_appearance(current, descriptors, k=3, recent=3)
    assert [i for i, _ in ranked] == [3, 1, 0]
    assert ranked[1][1] == pytest.approx(0.9 / math.sqrt(0.82))
    assert [i for i, _ in R.rank_by_appearance(current, descriptors, k=4)] == [1, 3, 0, 2]
    assert R.rank_by_appearance(current, [], k=3) == []
    with pytest.raises(ValueError, match="recent"):
        R.rank_by_appearance(current, descriptors, k=2, recent=7)


# --------------------------------------------------------------------------- bank
def turn(seed, task="camera", descriptor=True):
    gen = torch.Generator().manual_seed(seed)
    return Turn(torch.randn(16, 3, 4, 6, generator=gen), cams([seed, seed + 10, seed + 20]),
                torch.randn(8, generator=gen) if descriptor else None, f"turn {seed}", task)


def test_bank_round_trip(tmp_path):
    bank = VideoMemoryBank()
    for i, desc in ((0, True), (1, False), (2, True)):
        bank.add(turn(i, "edit" if i == 2 else "camera", desc))
    path = bank.save(tmp_path / "memory.safetensors")
    loaded = VideoMemoryBank.load(path)
    assert len(loaded) == 3
    for a, b in zip(bank.turns, loaded.turns):
        assert torch.equal(a.latent, b.latent) and a.latent.dtype == torch.float16
        assert torch.equal(a.cameras.c2w, b.cameras.c2w) and torch.equal(a.cameras.K, b.cameras.K)
        assert (a.cameras.width, a.cameras.height, a.prompt, a.task) == (b.cameras.width, b.cameras.height,
                                                                       b.prompt, b.task)
        assert (a.descriptor is None) == (b.descriptor is None)
        if a.descriptor is not None:
            assert torch.equal(a.descriptor, b.descriptor)


def test_failed_save_leaves_the_file_as_it_was(tmp_path):
    bank = VideoMemoryBank()
    bank.add(turn(0))
    path = bank.save(tmp_path / "memory.safetensors")
    before = path.read_bytes()
    bank.add(turn(1))

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt  # what Cancel / Ctrl-C looks like mid-write
    with pytest.raises(KeyboardInterrupt):
        bank.save(path, writer=crash)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["memory.safetensors"]
    assert len(VideoMemoryBank.load(path)) == 1


def test_bad_files_are_refused(tmp_path):
    with pytest.raises(BankFileError, match="does not exist"):
        VideoMemoryBank.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BankFileError, match="truncated or corrupt"):
        VideoMemoryBank.load(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"format": "something"})
    with pytest.raises(BankFileError, match="is not a video memory file"):
        VideoMemoryBank.load(tmp_path / "other.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "future.safetensors"),
              metadata={"format": "consistent_video.video_memory", "version": "99", "turns": "[]"})
    with pytest.raises(BankFileError, match="version 99"):
        VideoMemoryBank.load(tmp_path / "future.safetensors")


def test_non_finite_turns_are_never_stored():
    """A NaN turn would poison every later turn that retrieves it (issue 13)."""
    bank = VideoMemoryBank()
    bank.add(turn(0))
    nan_latent = turn(1)
    nan_latent.latent[0, 1, 2, 3] = float("nan")
    overflow = turn(2)
    overflow.latent[3, 0, 0, 0] = 1e6  # finite in float32, inf as the float16 that is stored
    nan_descriptor = turn(3)
    nan_descriptor.descriptor[0] = float("inf")
    for bad, what in ((nan_latent, r"latent \(as float16\) has 1 NaN"), (overflow, r"latent \(as float16\) has 1 NaN"),
                      (nan_descriptor, "descriptor has 1 NaN")):
        with pytest.raises(NonFiniteTurn, match=what + r" or infinite value\(s\); it was not stored"):
            bank.add(bad)
        assert len(bank) == 1  # unchanged (the nodes save only after a successful add)
    assert torch.equal(bank.turns[0].latent, turn(0).latent.half())


def test_turn_validation():
    with pytest.raises(ValueError, match=r"\[C, F, H, W\]"):
        Turn(torch.zeros(16, 4, 6), cams([0]))
    with pytest.raises(ValueError, match="task"):
        Turn(torch.zeros(16, 1, 4, 6), cams([0]), task="paint")
    bank = VideoMemoryBank()
    with pytest.raises(IndexError):
        bank.remove_last()
