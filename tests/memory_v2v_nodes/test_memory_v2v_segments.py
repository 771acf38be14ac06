"""Memory-V2V long-video editing bookkeeping: segment plans, stitching, resuming, segment
retrieval, and the bank's edit turns (source latent, descriptor, video fingerprint, segment)
including reading a version-1 memory file."""
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from consistent_video.memory_v2v_nodes import segments as S
from consistent_video.memory_v2v_nodes.bank import (FORMAT, FORMAT_VERSION, BankFileError, NonFiniteTurn, Turn,
                                                    VideoMemoryBank)
from consistent_video.nodes.cameras.geometry import CameraBatch, intrinsics_from_fov

LATENT = (48, 3, 4, 6)  # LucyEdit's Wan 2.2 VAE: 48 channels; 9 frames -> 3 latent frames


def video(frames=20, h=4, w=5, seed=0):
    return torch.rand(frames, h, w, 3, generator=torch.Generator().manual_seed(seed))


def edit_turn(segment, fp="video-a", descriptor=None, seed=None, shape=LATENT, prompt="make it snow"):
    gen = torch.Generator().manual_seed(segment if seed is None else seed)
    desc = torch.randn(8, generator=gen) if descriptor is None else torch.as_tensor(descriptor, dtype=torch.float32)
    return Turn(torch.randn(*shape, generator=gen), descriptor=desc, prompt=prompt, task="edit",
                source=torch.randn(*shape, generator=gen), video=fp, segment=segment)


def camera_turn(seed=0):
    gen = torch.Generator().manual_seed(seed)
    K = intrinsics_from_fov(60.0, 64, 64)
    cams = CameraBatch(torch.eye(4).expand(3, 4, 4).clone(), K.expand(3, 3, 3), 64, 64)
    return Turn(torch.randn(16, 1, 4, 6, generator=gen), cams, torch.randn(8, generator=gen), f"turn {seed}")


# --------------------------------------------------------------------------- plan
def test_plan_strides_and_aligns_the_last_segment_to_the_end():
    assert S.plan_segments(100, 33, 8) == [(0, 33), (25, 58), (50, 83), (67, 100)]  # last overlaps by 16
    spans = S.plan_segments(250, 81, 16)
    assert all(e - s == 81 for s, e in spans) and spans[0][0] == 0 and spans[-1][1] == 250
    assert [b[0] - a[0] for a, b in zip(spans, spans[1:-1])] == [65] * (len(spans) - 2)
    assert spans[-2][1] - spans[-1][0] >= 16


def test_plan_exact_fit_and_single_segment():
    assert S.plan_segments(13, 5, 1) == [(0, 5), (4, 9), (8, 13)]  # every overlap exactly 1
    assert S.plan_segments(17, 9, 1) == [(0, 9), (8, 17)]
    assert S.plan_segments(81, 81, 0) == [(0, 81)]  # length == frames
    assert S.plan_segments(81, 81, 40) == [(0, 81)]
    assert S.plan_segments(10, 5, 0) == [(0, 5), (5, 10)]  # no overlap: abutting segments
    assert S.plan_segments(11, 5, 0) == [(0, 5), (5, 10), (6, 11)]
    assert S.plan_segments(1, 1, 0) == [(0, 1)]


@pytest.mark.parametrize("args, message", [
    ((0, 1, 0), "frames must be at least 1"),
    ((-5, 1, 0), "frames must be at least 1"),
    ((100, 32, 8), r"length must be 4k \+ 1.*got 32"),
    ((100, 0, 0), r"length must be 4k \+ 1"),
    ((100, 33, -1), "overlap must be 0 or more.*got -1"),
    ((100, 33, 33), "overlap must be smaller than the segment length 33; got 33"),
    ((100, 33, 40), "overlap must be smaller"),
    ((80, 81, 8), "segment longer than the video"),
    ((80.0, 81, 8), "frames must be an int"),
])
def test_plan_errors(args, message):
    with pytest.raises(ValueError, match=message):
        S.plan_segments(*args)


def test_segment_plan_and_fingerprint():
    frames = video(13)
    plan = S.SegmentPlan.create(frames, 5, 1)
    assert plan.spans == ((0, 5), (4, 9), (8, 13)) and plan.count == 3
    assert torch.equal(plan.segment(1), frames[4:9])
    with pytest.raises(IndexError):
        plan.segment(3)
    assert len(plan.fingerprint) == 40
    # stable: same content (any dtype, noise below the uint8 step) -> same fingerprint
    assert S.SegmentPlan.create(frames.clone(), 5, 1).fingerprint == plan.fingerprint
    assert S.fingerprint(frames.double(), 5, 1) == plan.fingerprint
    assert S.fingerprint((frames * 255).round() / 255 + 1e-4, 5, 1) == S.fingerprint((frames * 255).round() / 255, 5, 1)
    # another segmentation or other content -> another fingerprint
    others = {S.fingerprint(frames, 5, 2), S.fingerprint(frames, 9, 1), S.fingerprint(video(13, seed=1), 5, 1),
              S.fingerprint(frames[:12], 5, 1), S.fingerprint(frames.reshape(13, 5, 4, 3), 5, 1)}
    assert plan.fingerprint not in others and len(others) == 5
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        S.SegmentPlan.create(frames[..., :2], 5, 1)
    with pytest.raises(ValueError, match="segment longer than the video"):
        S.SegmentPlan.create(frames, 17, 1)


# --------------------------------------------------------------------------- stitch
def test_stitch_identity_when_segments_are_the_source():
    for frames, length, overlap in ((100, 33, 8), (13, 5, 1), (11, 5, 0), (30, 9, 6), (9, 9, 0)):
        src = video(frames)
        spans = S.plan_segments(frames, length, overlap)
        out = S.stitch([src[s:e] for s, e in spans], spans, frames)
        assert torch.equal(out, src)


def test_stitch_cross_fade_values():
    # 13 frames, segments of 5 overlapping by 1 -> one-frame overlaps: w = 1/2
    spans = S.plan_segments(13, 5, 1)
    segs = [torch.full((5, 2, 2, 3), v) for v in (0.0, 1.0, 0.25)]
    out = S.stitch(segs, spans, 13)
    expected = [0.0] * 4 + [0.5] + [1.0] * 3 + [1.0 + 0.5 * (0.25 - 1.0)] + [0.25] * 4
    assert out.shape == (13, 2, 2, 3)
    assert out[:, 0, 0, 0].tolist() == pytest.approx(expected, abs=1e-7)
    assert bool((out == out[:, :1, :1, :1]).all())  # the same everywhere in a frame

    # 100 frames, 33 / 8: overlaps of 8, 8 and (end-aligned last) 16 frames, w_k = (k + 1) / (n + 1)
    spans = S.plan_segments(100, 33, 8)
    values = (0.0, 1.0, 0.0, 1.0)
    out = S.stitch([torch.full((33, 1, 1, 3), v) for v in values], spans, 100)[:, 0, 0, 0]
    want = torch.empty(100)
    want[:25] = 0.0
    want[25:33] = torch.arange(1, 9) / 9  # 0 -> 1
    want[33:50] = 1.0
    want[50:58] = 1 - torch.arange(1, 9) / 9  # 1 -> 0
    want[58:67] = 0.0
    want[67:83] = torch.arange(1, 17) / 17  # 0 -> 1 across the 16-frame last overlap
    want[83:] = 1.0
    assert torch.allclose(out, want, atol=1e-6, rtol=0)
    # neither end of an overlap is a hard cut
    assert 0 < out[25] < out[32] < 1 and 0 < out[67] < 1 and out[82] < 1


def test_stitch_prefix_and_triple_coverage():
    spans = S.plan_segments(100, 33, 8)
    segs = [torch.full((33, 1, 1, 3), float(v)) for v in range(4)]
    full = S.stitch(segs, spans, 100)
    assert full.shape[0] == 100
    for m in (1, 2, 3):
        prefix = S.stitch(segs[:m], spans, 100)
        assert prefix.shape[0] == spans[m - 1][1]
        if m == 1:
            assert bool((prefix == 0).all())
        # the prefix agrees with the full result where no later segment reaches
        later = spans[m][0]
        assert torch.equal(prefix[:later], full[:later])
    # overlap > length / 2: frame 8 is covered by segments 0, 1 and 2 (sequential cross-fades)
    spans = S.plan_segments(13, 9, 6)  # (0, 9), (3, 12), (4, 13)
    assert spans == [(0, 9), (3, 12), (4, 13)]
    out = S.stitch([torch.full((9, 1, 1, 1), v) for v in (0.0, 1.0, 2.0)], spans, 13)[:, 0, 0, 0]
    after1 = [0, 0, 0] + [k / 7 for k in range(1, 7)] + [1, 1, 1]  # 6-frame overlap of segment 1 on 0
    want = after1[:4] + [a + (k + 1) / 9 * (2 - a) for k, a in enumerate(after1[4:])] + [2]
    assert out.tolist() == pytest.approx(want, abs=1e-6)


def test_stitch_errors():
    spans = S.plan_segments(13, 5, 1)
    seg = torch.zeros(5, 2, 2, 3)
    with pytest.raises(ValueError, match="no segments"):
        S.stitch([], spans, 13)
    with pytest.raises(ValueError, match="4 segments for a 3-span plan"):
        S.stitch([seg] * 4, spans, 13)
    with pytest.raises(ValueError, match=r"segment 1 is \[4, 2, 2, 3\]; expected \[5, 2, 2, 3\]"):
        S.stitch([seg, seg[:4]], spans, 13)
    with pytest.raises(ValueError, match="segment 1 is"):
        S.stitch([seg, torch.zeros(5, 2, 3, 3)], spans, 13)
    with pytest.raises(ValueError, match="not inside"):
        S.stitch([seg], spans, 12)
    with pytest.raises(ValueError, match="does not continue"):
        S.stitch([seg, seg], [(0, 5), (6, 11)], 13)  # a gap
    with pytest.raises(ValueError, match="span 0 starts at frame 1"):
        S.stitch([seg], [(1, 6)], 13)


# --------------------------------------------------------------------------- resume and retrieve
def test_next_segment_and_edited_turns():
    bank = VideoMemoryBank()
    assert S.next_segment(bank, "video-a", 3) == 0 and S.edited_turns(bank, "video-a") == []
    bank.add(camera_turn(0))
    bank.add(edit_turn(0, "video-a"))
    bank.add(edit_turn(0, "video-b"))
    bank.add(edit_turn(1, "video-a"))
    assert S.edited_turns(bank, "video-a") == [1, 3]
    assert S.edited_turns(bank, "video-b") == [2]
    assert S.next_segment(bank, "video-a", 3) == 2
    assert S.next_segment(bank, "video-b", 3) == 1
    bank.add(edit_turn(2, "video-a"))
    assert S.next_segment(bank, "video-a", 3) is None
    with pytest.raises(ValueError, match="only 2"):
        S.next_segment(bank, "video-a", 2)
    # ordered by segment even if stored otherwise
    odd = VideoMemoryBank()
    odd.add(edit_turn(1))
    odd.add(edit_turn(0))
    assert S.edited_turns(odd, "video-a") == [1, 0]
    odd.add(edit_turn(1))
    with pytest.raises(ValueError, match="segment 1 of this video twice"):
        S.edited_turns(odd, "video-a")
    gap = VideoMemoryBank()
    gap.add(edit_turn(0))
    gap.add(edit_turn(2))
    with pytest.raises(ValueError, match=r"segments \[0, 2\] of this video but not segment 1"):
        S.next_segment(gap, "video-a", 3)


def test_retrieval_puts_the_latest_segment_first_then_by_similarity():
    bank = VideoMemoryBank()
    bank.add(edit_turn(0, descriptor=[0.9, 0.1, 0.0]))        # close
    bank.add(edit_turn(0, "video-b", descriptor=[1.0, 0.0, 0.0]))  # identical, but another video
    bank.add(camera_turn(1))                                  # not an edit turn
    bank.add(edit_turn(1, descriptor=[0.0, 1.0, 0.0]))        # orthogonal
    bank.add(edit_turn(2, descriptor=[0.5, 0.5, 0.0]))        # middling
    bank.add(edit_turn(3, descriptor=[-1.0, 0.0, 0.0]))       # opposite, but the latest
    current = torch.tensor([1.0, 0.0, 0.0])
    ranked = S.retrieve_segments(bank, "video-a", current, 10)
    assert [i for i, _ in ranked] == [5, 0, 4, 3]
    assert [s for _, s in ranked] == pytest.approx([-1.0, 0.9 / math.sqrt(0.82), math.sqrt(0.5), 0.0])
    assert [i for i, _ in S.retrieve_segments(bank, "video-a", current, 2)] == [5, 0]
    assert [i for i, _ in S.retrieve_segments(bank, "video-a", current, 1)] == [5]
    assert S.retrieve_segments(bank, "video-a", current, 0) == []
    assert S.retrieve_segments(bank, "video-c", current, 3) == []
    assert [i for i, _ in S.retrieve_segments(bank, "video-b", current, 3)] == [1]
    # only segments before the one being edited; the latest of those first
    assert [i for i, _ in S.retrieve_segments(bank, "video-a", current, 10, segment=2)] == [3, 0]
    assert S.retrieve_segments(bank, "video-a", current, 10, segment=0) == []
    with pytest.raises(ValueError, match="top_k"):
        S.retrieve_segments(bank, "video-a", current, -1)
    with pytest.raises(ValueError, match=r"descriptor must be \[D\]"):
        S.retrieve_segments(bank, "video-a", current[None], 3)


def test_retrieval_skips_mismatched_latents_and_descriptors():
    bank = VideoMemoryBank()
    bank.add(edit_turn(0, descriptor=[1.0, 0.0, 0.0]))
    bank.add(edit_turn(1, descriptor=[0.0, 1.0, 0.0], shape=(16, 3, 4, 6)))  # another VAE
    bank.add(edit_turn(2, descriptor=[1.0, 0.0, 0.0, 0.0]))  # another DINOv2 size
    current = torch.tensor([0.0, 1.0, 0.0])
    assert [i for i, _ in S.retrieve_segments(bank, "video-a", current, 5)] == [1, 0]
    assert [i for i, _ in S.retrieve_segments(bank, "video-a", current, 5, latent_shape=LATENT)] == [0]
    assert [i for i, _ in S.retrieve_segments(bank, "video-a", torch.ones(4), 5)] == [2]


# --------------------------------------------------------------------------- bank edit turns
def test_edit_turn_validation():
    latent = torch.zeros(LATENT)
    desc = torch.zeros(8)
    Turn(latent, task="edit")  # a version-1 style edit turn: no segment identity
    with pytest.raises(ValueError, match="a camera turn needs its cameras"):
        Turn(latent)
    with pytest.raises(ValueError, match="belong to edit turns"):
        Turn(torch.zeros(16, 1, 4, 6), camera_turn().cameras, desc, source=torch.zeros(16, 1, 4, 6))
    with pytest.raises(ValueError, match="source latent must have its latent's shape"):
        Turn(latent, None, desc, "", "edit", torch.zeros(48, 2, 4, 6), "v", 0)
    with pytest.raises(ValueError, match="go together"):
        Turn(latent, None, desc, "", "edit", latent, "v", None)
    with pytest.raises(ValueError, match="needs its source"):
        Turn(latent, None, desc, "", "edit", None, "v", 0)
    with pytest.raises(ValueError, match="needs its descriptor"):
        Turn(latent, None, None, "", "edit", latent, "v", 0)
    with pytest.raises(ValueError, match="segment must be an int index"):
        Turn(latent, None, desc, "", "edit", latent, "v", -1)
    with pytest.raises(ValueError, match="fingerprint string"):
        Turn(latent, None, desc, "", "edit", latent, "", 0)
    assert edit_turn(0).frames == 9 and camera_turn().frames == 3


def test_bank_round_trip_of_edit_turns(tmp_path):
    bank = VideoMemoryBank()
    bank.add(camera_turn(0))
    for s in range(3):
        bank.add(edit_turn(s, prompt=f"segment {s}"))
    assert bank.turns[1].source.dtype == torch.float16 and bank.turns[1].latent.dtype == torch.float16
    assert bank.turns[1].descriptor.dtype == torch.float32
    path = bank.save(tmp_path / "memory.safetensors")
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["version"] == str(FORMAT_VERSION) == "2"
    loaded = VideoMemoryBank.load(path)
    assert len(loaded) == 4 and VideoMemoryBank.stored_turns(path) == 4
    assert loaded.turns[0].cameras is not None and torch.equal(loaded.turns[0].cameras.c2w, bank.turns[0].cameras.c2w)
    assert (loaded.turns[0].source, loaded.turns[0].video, loaded.turns[0].segment) == (None, None, None)
    for a, b in zip(bank.turns[1:], loaded.turns[1:]):
        assert b.cameras is None and b.task == "edit"
        assert torch.equal(a.latent, b.latent) and torch.equal(a.source, b.source) and b.source.dtype == torch.float16
        assert torch.equal(a.descriptor, b.descriptor)
        assert (a.prompt, a.video, a.segment) == (b.prompt, b.video, b.segment)
    assert S.next_segment(loaded, "video-a", 3) is None


def test_reads_a_version_1_file(tmp_path):
    """A memory written by the previous release (every turn with cameras; no source / segment)."""
    gen = torch.Generator().manual_seed(0)
    K = intrinsics_from_fov(60.0, 64, 48)
    c2w = torch.eye(4).expand(5, 4, 4).clone()
    c2w[:, 0, 3] = torch.arange(5.0)
    tensors = {"turn.0.latent": torch.randn(16, 2, 4, 6, generator=gen).half(), "turn.0.c2w": c2w,
               "turn.0.K": K.expand(5, 3, 3).contiguous(),
               "turn.1.latent": torch.randn(16, 2, 4, 6, generator=gen).half(), "turn.1.c2w": c2w.clone(),
               "turn.1.K": K.expand(5, 3, 3).contiguous(), "turn.1.descriptor": torch.randn(8, generator=gen)}
    turns = [{"width": 64, "height": 48, "prompt": "orbit", "task": "camera"},
             {"width": 64, "height": 48, "prompt": "old edit", "task": "edit"}]
    path = tmp_path / "v1.safetensors"
    save_file(tensors, str(path), metadata={"format": FORMAT, "version": "1", "turns": json.dumps(turns)})
    assert VideoMemoryBank.stored_turns(path) == 2
    bank = VideoMemoryBank.load(path)
    assert [(t.task, t.prompt, t.video, t.segment, t.source) for t in bank.turns] == [
        ("camera", "orbit", None, None, None), ("edit", "old edit", None, None, None)]
    assert torch.equal(bank.turns[0].latent, tensors["turn.0.latent"])
    assert torch.equal(bank.turns[1].cameras.c2w, c2w) and bank.turns[1].cameras.width == 64
    assert bank.turns[0].descriptor is None and torch.equal(bank.turns[1].descriptor, tensors["turn.1.descriptor"])
    # an old-style edit turn belongs to no segmented video; saving upgrades the file to version 2
    assert S.edited_turns(bank, "video-a") == []
    again = VideoMemoryBank.load(bank.save(tmp_path / "v2.safetensors"))
    assert [(t.task, t.prompt) for t in again.turns] == [("camera", "orbit"), ("edit", "old edit")]
    assert torch.equal(again.turns[1].cameras.K, bank.turns[1].cameras.K)


def test_inconsistent_version_2_files_are_refused(tmp_path):
    base = {"turn.0.latent": torch.zeros(LATENT, dtype=torch.float16)}
    cases = [
        (dict(base, **{"turn.0.c2w": torch.eye(4)[None]}),
         [{"prompt": "", "task": "camera", "video": None, "segment": None}]),  # cameras without K / size
        (base, [{"prompt": "", "task": "camera", "video": None, "segment": None}]),  # camera turn, no cameras
        (dict(base, **{"turn.0.descriptor": torch.zeros(8)}),
         [{"prompt": "", "task": "edit", "video": "v", "segment": 0}]),  # segment without source
        (dict(base, **{"turn.0.descriptor": torch.zeros(8), "turn.0.source": base["turn.0.latent"].clone()}),
         [{"prompt": "", "task": "edit", "video": "v", "segment": "0"}]),  # segment not an int
        (dict(base, **{"turn.1.source": torch.zeros(1)}),
         [{"prompt": "", "task": "edit", "video": None, "segment": None}]),  # a tensor of no turn
    ]
    for i, (tensors, turns) in enumerate(cases):
        path = tmp_path / f"bad{i}.safetensors"
        save_file(tensors, str(path), metadata={"format": FORMAT, "version": "2", "turns": json.dumps(turns)})
        with pytest.raises(BankFileError, match="inconsistent video memory file"):
            VideoMemoryBank.load(path)


def test_non_finite_source_is_never_stored():
    bank = VideoMemoryBank()
    bank.add(edit_turn(0))
    bad = edit_turn(1)
    bad.source[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteTurn, match=r"source latent \(as float16\) has 1 NaN or infinite value\(s\)"):
        bank.add(bad)
    overflow = edit_turn(1)
    overflow.source[1, 1, 1, 1] = 1e6  # inf as float16
    with pytest.raises(NonFiniteTurn, match="source latent"):
        bank.add(overflow)
    assert len(bank) == 1 and S.next_segment(bank, "video-a", 3) == 1
    assert torch.equal(bank.turns[0].source, edit_turn(0).source.half())


def test_the_bank_keeps_its_own_copies(tmp_path):
    """A source that is the latent itself, or one tensor in two turns, still saves (no shared memory)."""
    latent = torch.randn(LATENT).half()
    bank = VideoMemoryBank()
    bank.add(Turn(latent, None, torch.zeros(8), "identity edit", "edit", latent, "video-a", 0))
    bank.add(Turn(latent, None, torch.zeros(8), "again", "edit", latent, "video-a", 1))
    latent.zero_()  # the caller's tensor changes later: the bank does not
    loaded = VideoMemoryBank.load(bank.save(tmp_path / "memory.safetensors"))
    assert torch.equal(loaded.turns[1].source, bank.turns[0].latent) and bool(bank.turns[0].latent.any())
