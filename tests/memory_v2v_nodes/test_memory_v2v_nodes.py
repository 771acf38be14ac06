"""Memory-V2V turns on smoke weights: the sampler against a hand-written flow-matching loop,
text and VAE conventions, three turns through the nodes, Cancel and bad input."""
import json

import numpy as np
import pytest
import torch

from consistent_video.memory_v2v_nodes import family as fam
from consistent_video.memory_v2v_nodes import memory_forward as MF
from consistent_video.memory_v2v_nodes import nodes as N
from consistent_video.memory_v2v_nodes import pipeline as P
from consistent_video.memory_v2v_nodes import text as T
from consistent_video.memory_v2v_nodes.bank import VideoMemoryBank
from consistent_video.nodes.comfy import families, runtime
from consistent_video.nodes.cameras import trajectories
from consistent_video.nodes.cameras.camera_nodes import CVS_LoadCameras
from consistent_video.nodes.cameras.geometry import CameraBatch
from consistent_video.nodes.comfy.errors import NodeInputError

FRAMES, W, H = 9, 64, 48


@pytest.fixture(scope="module")
def handle(smoke_weights_dir):
    return families.get(fam.RECAMMASTER).load(smoke_weights_dir / fam.RECAMMASTER, torch.device("cpu"), torch.float32)


def video(frames=12, seed=0):
    return torch.rand(frames, 60, 80, 3, generator=torch.Generator().manual_seed(seed))


def path(actions, frames=FRAMES):
    return trajectories.navigate(actions, frames - 1, include_start=True, width=W, height=H)


def test_both_checkpoint_layouts_load_through_the_loader(smoke_weights_dir):
    for name in fam.FAMILIES:
        h = families.get(name).load(smoke_weights_dir / name, torch.device("cpu"), torch.float32)
        assert h.extra["has_camera_layers"] and set(h.modules) == {"transformer", "vae", "text_encoder"}
        assert len(h.modules["transformer"].blocks) == 30
    assert families.get(fam.RECAMMASTER).folder_name == families.get(fam.RECAMMASTER_BF16).folder_name


# --------------------------------------------------------------------------- conventions
def test_text_tokens_past_the_prompt_are_zero_and_conditioning_is_padded(handle):
    tokens = T.encode_prompts(handle.modules["text_encoder"], handle.extra["tokenizer"], ["a red car", "the"])
    assert tokens.shape == (2, 512, fam.SMOKE_TEXT_WIDTH)
    lengths = (tokens.abs().sum(-1) > 0).sum(1).tolist()
    assert lengths[0] > lengths[1] > 0 and tokens[:, max(lengths):].abs().sum() == 0
    cond = [[torch.ones(1, 7, fam.SMOKE_TEXT_WIDTH), {"pooled_output": None}]]
    fitted = T.from_conditioning(cond, fam.SMOKE_TEXT_WIDTH)
    assert fitted.shape == (1, 512, fam.SMOKE_TEXT_WIDTH) and fitted[:, :7].eq(1).all() and fitted[:, 7:].eq(0).all()
    with pytest.raises(ValueError, match="768 wide"):
        T.from_conditioning([[torch.ones(1, 7, 768), {}]], fam.SMOKE_TEXT_WIDTH)


def test_wan_codec_normalises_with_the_vae_statistics(handle):
    vae = handle.modules["vae"]
    clip = torch.rand(FRAMES, H, W, 3, generator=torch.Generator().manual_seed(2))
    latent = P.WanCodec(vae).encode(clip)
    assert latent.shape == (16, 3, H // 8, W // 8)
    raw = vae.encode(clip.permute(3, 0, 1, 2)[None] * 2 - 1).latent_dist.mode()[0]
    mean = torch.tensor(vae.config.latents_mean).view(-1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(-1, 1, 1, 1)
    torch.testing.assert_close(latent, (raw - mean) / std)
    assert P.WanCodec(vae).decode(latent).shape == (FRAMES, H, W, 3)


def test_fit_video_crops_never_stretches():
    clip = torch.zeros(10, 40, 100, 3)
    clip[:, :, 25:75] = 1.0  # a centre band wider than the 1:1 crop: only the band remains
    out = P.fit_video(clip, P.TurnSettings(frames=9, width=32, height=32))
    assert out.shape == (9, 32, 32, 3) and torch.allclose(out, torch.ones_like(out))
    with pytest.raises(ValueError, match="has 10 frames"):
        P.fit_video(clip, P.TurnSettings(frames=13, width=32, height=32))


def test_camera_rows_take_every_fourth_frame():
    cams = path([("turn_left", 20)])
    rows = P.camera_rows(cams, FRAMES)
    assert rows.shape == (3, 12)
    torch.testing.assert_close(rows[1], cams.c2w[4, :3, :4].reshape(12))
    with pytest.raises(ValueError, match="one camera per output frame"):
        P.camera_rows(cams[:5], FRAMES)


# ReCamMaster's camera_extrinsics.json: "frame<i>" -> {"cam<NN>": "[a b c d] [e f g h] [i j k l] [x y z 1] "},
# Unreal Engine poses (x forward, y right, z up, centimetres) in the row-vector layout (the
# file's matrix is the transpose of the column-vector camera-to-world), every camera starting
# at the same pose in frame0, 81 frames.
UE_START = np.array([3390.0, 1380.0, 240.0])


def _ue_pose(yaw_deg, pitch_deg, move_cm):
    """A column-vector UE camera-to-world: yaw about z, then pitch about y, moved from UE_START."""
    a, b = np.radians(yaw_deg), np.radians(pitch_deg)
    yaw = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    pitch = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    pose = np.eye(4)
    pose[:3, :3] = yaw @ pitch
    pose[:3, 3] = UE_START + np.asarray(move_cm)
    return pose


def write_recammaster_json(file, frames=81):
    """cam01 arcs: turns 30 degrees left while moving 2 m right; cam02 tilts down 15 degrees
    while moving 1.5 m forward and 0.5 m up."""
    data = {}
    for i in range(frames):
        s = i / (frames - 1)
        poses = {"cam01": _ue_pose(-30 * s, 0, [0, 200 * s, 0]), "cam02": _ue_pose(0, 15 * s, [150 * s, 0, 50 * s])}
        data[f"frame{i}"] = {name: " ".join("[" + " ".join(f"{v:g}" for v in row) + "]" for row in pose.T) + " "
                             for name, pose in poses.items()}
    file.write_text(json.dumps(data, indent=4))
    return file


def recammaster_rows(file, camera, frames=81):
    """The 12 numbers per latent frame that ReCamMaster's inference script feeds its DiT, by its
    procedure: parse the matrix string, transpose, reorder the columns to (y, z, x, t), negate
    column 1, centimetres to metres, then every 4th frame relative to frame 0 (inv(c2w_0) @ c2w_i),
    the top three rows flattened row-major."""
    data = json.loads(file.read_text())
    c2ws = []
    for i in range(0, frames, 4):
        text = data[f"frame{i}"][camera].strip()
        m = np.array([[float(v) for v in row.replace("[", "").replace("]", "").split()] for row in text.split("] [")])
        c2w = m.T[:, [1, 2, 0, 3]]
        c2w[:3, 1] *= -1.0
        c2w[:3, 3] /= 100.0
        c2ws.append(c2w)
    rows = [(np.linalg.inv(c2ws[0]) @ c2w)[:3, :].reshape(12) for c2w in c2ws]
    return torch.from_numpy(np.array(rows, dtype=np.float32))


def test_camera_rows_of_a_recammaster_file_are_the_originals(tmp_path):
    file = write_recammaster_json(tmp_path / "camera_extrinsics.json")
    for camera in ("cam01", "cam02"):
        cams, count = CVS_LoadCameras().load(str(file), "auto", 832, 480, 50.0, camera)
        assert count == 81
        want = recammaster_rows(file, camera)
        assert want.shape == (21, 12)
        rows = P.camera_rows(cams, 81)
        torch.testing.assert_close(rows, want, rtol=0, atol=1e-5)
        torch.testing.assert_close(rows[0], torch.tensor([1.0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0]))
        # the loaded batch keeps the file's world: fed as is, the translations would be off by ~34 m
        absolute = cams.c2w[::4, :3, :4].reshape(21, 12)
        assert (absolute - want).abs().max() > 30
    # cam01 turns left (camera -x) and moves to its right (+x): ReCamMaster's OpenCV axes
    last = recammaster_rows(file, "cam01")[-1].view(3, 4)
    assert last[0, 3] > 1.9 and last[0, 2] < 0


def test_every_video_gets_cameras_relative_to_the_target_start(handle, tmp_path, monkeypatch):
    """Through the re-render node: the target rows are ReCamMaster's for the target camera, and a
    retrieved turn's rows are its own path relative to the same first camera (here both paths
    start at the user video's camera, so they equal what that turn was rendered with)."""
    file = write_recammaster_json(tmp_path / "camera_extrinsics.json", FRAMES)  # the 81-frame layout, shortened
    seen = []
    sample = P.sample
    monkeypatch.setattr(P, "sample", lambda model, user, rows, text, memory, *args, **kwargs: (
        seen.append((rows, [m.cams for m in memory])), sample(model, user, rows, text, memory, *args, **kwargs))[1])
    memory, _ = N.CVS_VideoMemory().open("recammaster", True)
    source, _ = _encode(handle)
    for turn, camera in enumerate(("cam01", "cam02")):
        cams, _ = CVS_LoadCameras().load(str(file), "auto", W, H, 50.0, camera)
        N.CVS_MemoryV2VRerender().rerender(handle, memory, source, cams, "", "", turn, 1, 5.0, 6, 0.0)
    (first, none), (second, (memory_rows,)) = seen
    assert none == [] and first.shape == (3, 12)
    torch.testing.assert_close(first, recammaster_rows(file, "cam01", FRAMES), rtol=0, atol=1e-5)
    torch.testing.assert_close(second, recammaster_rows(file, "cam02", FRAMES), rtol=0, atol=1e-5)
    torch.testing.assert_close(memory_rows, recammaster_rows(file, "cam01", FRAMES), rtol=0, atol=1e-5)
    # a path moved as a whole (another world) gives the same rows: only relative poses reach the DiT
    cams, _ = CVS_LoadCameras().load(str(file), "auto", W, H, 50.0, "cam02")
    shifted = CameraBatch(torch.tensor([[0.0, -1, 0, 5], [1, 0, 0, -2], [0, 0, 1, 7], [0, 0, 0, 1]]) @ cams.c2w,
                          cams.K, W, H)
    torch.testing.assert_close(P.camera_rows(shifted, FRAMES), second, rtol=0, atol=1e-5)


def test_sampler_is_flow_matching_euler_with_guidance(handle):
    """``sample`` equals a hand-written loop: shifted sigmas, x += (s_next - s) * (u + cfg (c - u))."""
    model = handle.modules["transformer"]
    gen = torch.Generator().manual_seed(4)
    user = torch.randn(16, 3, H // 8, W // 8, generator=gen)
    text = torch.randn(2, 512, fam.SMOKE_TEXT_WIDTH, generator=gen)
    rows = P.camera_rows(path([("turn_right", 10)]), FRAMES)
    settings = P.TurnSettings(steps=3, cfg=4.0, shift=5.0, seed=7, frames=FRAMES, width=W, height=H)
    got = P.sample(model, user, rows, text, [], settings)
    base = np.linspace(1.0, 0.0, settings.steps + 1)[:-1]
    sigmas = list(5.0 * base / (1 + 4.0 * base)) + [0.0]
    x = torch.randn((1, 16, 3, H // 8, W // 8), generator=torch.Generator().manual_seed(7))
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        t = torch.tensor([s * 1000.0] * 2)
        out = MF.denoise(model, torch.cat([x, x]), t, text, rows, user[None])
        c, u = out.chunk(2)
        x = x + (s_next - s) * (u + 4.0 * (c - u))
    torch.testing.assert_close(got, x[0], rtol=1e-3, atol=1e-4)  # float32 sigmas in the scheduler


# --------------------------------------------------------------------------- nodes
def _encode(handle, frames=FRAMES):
    return N.CVS_MemoryV2VEncodeSource().encode(handle, video(), frames, W, H)


def test_three_turns_remember_each_other(handle):
    memory, info = N.CVS_VideoMemory().open("three", True)
    assert info.startswith("0 turn")
    source, fitted = _encode(handle)
    assert fitted.shape == (FRAMES, H, W, 3) and source.latent.shape == (16, 3, H // 8, W // 8)
    infos = []
    for turn, actions in enumerate(([("turn_left", 10)], [("turn_right", 10)], [("turn_left", 5)])):
        out_video, cams, memory, text = N.CVS_MemoryV2VRerender().rerender(
            handle, memory, source, path(actions), "a street", "", turn, 2, 5.0, 6, 0.5)
        assert out_video.shape == (FRAMES, H, W, 3) and len(cams) == FRAMES
        infos.append(text)
        assert len(VideoMemoryBank.load(memory.path)) == turn + 1
    assert "retrieved 0 of 0" in infos[0] and "memory 0" in infos[0]
    assert "retrieved 1 of 1" in infos[1] and "retrieved 2 of 2" in infos[2]
    assert "block 10: merged" in infos[2] and "block 20: merged" in infos[2]
    # the third path (half of the first) finds the first turn best
    assert infos[2].splitlines()[1].startswith("  turn 0:")
    summary, preview = N.CVS_VideoMemoryPreview().preview(memory, 6, path([("turn_left", 10)]))
    assert "3 turn(s)" in summary and "score 1.000" in summary and preview.shape[-1] == 3
    # reset starts anew when the next turn is stored, keeping the three turns as three.previous
    three = memory.path.read_bytes()
    previous = memory.path.with_name("three.previous.safetensors")
    memory, info = N.CVS_VideoMemory().open("three", True)
    assert info.startswith("0 turn(s)") and "kept as three.previous" in info
    for _ in range(2):  # issue 13: failing runs with reset on must not move the memory away
        with pytest.raises(NodeInputError, match="'cameras' has 5 cameras"):
            N.CVS_MemoryV2VRerender().rerender(handle, memory, source, path([("turn_left", 10)], frames=5), "", "",
                                               0, 1, 5.0, 6, 0.5)
        assert memory.path.read_bytes() == three and not previous.exists()
    assert N.CVS_VideoMemoryPreview().preview(memory, 6)[0].startswith("0 turn(s)")
    _, _, after, text = N.CVS_MemoryV2VRerender().rerender(handle, memory, source, path([("turn_left", 10)]), "", "",
                                                           0, 1, 5.0, 6, 0.5)
    assert "retrieved 0 of 0" in text and after.reset is None
    assert len(VideoMemoryBank.load(memory.path)) == 1 and previous.read_bytes() == three


def test_cancelled_turn_adds_nothing(handle, cancel_on_call):
    memory, _ = N.CVS_VideoMemory().open("cancel", True)
    source, _ = _encode(handle)
    N.CVS_MemoryV2VRerender().rerender(handle, memory, source, path([("turn_left", 10)]), "", "", 0, 1, 5.0, 6, 0.5)
    before = memory.path.read_bytes()
    calls = cancel_on_call(P, "denoise", 2)
    with pytest.raises(runtime.Interrupted):
        N.CVS_MemoryV2VRerender().rerender(handle, memory, source, path([("turn_right", 10)]), "", "", 1, 5, 5.0, 6,
                                           0.5)
    assert len(calls) == 2 and memory.path.read_bytes() == before
    assert len(VideoMemoryBank.load(memory.path)) == 1


def test_cancel_inside_the_first_transformer_call_adds_nothing(handle, cancel_inside_network):
    """Cancel pressed while the first block of the first DiT call runs stops that very call (the
    last block never runs), and the memory file is left as it was."""
    memory, _ = N.CVS_VideoMemory().open("cancel_inside", True)
    source, _ = _encode(handle)
    N.CVS_MemoryV2VRerender().rerender(handle, memory, source, path([("turn_left", 10)]), "", "", 0, 1, 5.0, 6, 0.5)
    before = memory.path.read_bytes()
    blocks = handle.modules["transformer"].blocks
    calls = cancel_inside_network(blocks[0].ffn, blocks[-1].ffn)  # the blocks' parts run as modules
    with pytest.raises(runtime.Interrupted):
        N.CVS_MemoryV2VRerender().rerender(handle, memory, source, path([("turn_right", 10)]), "", "", 1, 5, 5.0, 6,
                                           0.5)
    assert calls == {"first": 1, "last": 0} and memory.path.read_bytes() == before
    assert len(VideoMemoryBank.load(memory.path)) == 1


def test_non_finite_cfg_and_turns_never_reach_the_memory(handle, monkeypatch):
    """Issue 13: cfg NaN passed ComfyUI's validation, wrote black frames and stored an all-NaN turn."""
    memory, _ = N.CVS_VideoMemory().open("finite", False)
    source, _ = _encode(handle)
    rerender = N.CVS_MemoryV2VRerender().rerender
    rerender(handle, memory, source, path([("turn_left", 10)]), "", "", 0, 1, 5.0, 6, 0.5)
    before = memory.path.read_bytes()
    with pytest.raises(NodeInputError, match=r"^CVS Memory-V2V Re-render Turn: input 'cfg' is nan; expected a finite "
                                             r"number between 0\.0 and 30\.0$"):
        rerender(handle, memory, source, path([("turn_right", 10)]), "", "", 0, 1, float("nan"), 6, 0.5)
    real = P.sample
    monkeypatch.setattr(P, "sample", lambda *a, **k: torch.full_like(real(*a, **k), float("nan")))
    with pytest.raises(NodeInputError, match=r"^CVS Memory-V2V Re-render Turn: input 'model' produced a turn with NaN "
                                             r"or infinite values .*memory 'finite' is unchanged"):
        rerender(handle, memory, source, path([("turn_right", 10)]), "", "", 0, 1, 5.0, 6, 0.5)
    assert memory.path.read_bytes() == before
    monkeypatch.setattr(P, "sample", real)
    video_out, _, _, _ = rerender(handle, memory, source, path([("turn_right", 10)]), "", "", 0, 1, 5.0, 6, 0.5)
    assert torch.isfinite(video_out).all() and len(VideoMemoryBank.load(memory.path)) == 2


def test_bad_input(handle):
    memory, _ = N.CVS_VideoMemory().open("bad", True)
    source, _ = _encode(handle)
    rerender = N.CVS_MemoryV2VRerender().rerender
    with pytest.raises(NodeInputError, match="'cameras' has 5 cameras for a 9-frame source"):
        rerender(handle, memory, source, path([("turn_left", 10)], frames=5), "", "", 0, 1, 5.0, 6, 0.5)
    with pytest.raises(NodeInputError, match="'model' got"):
        rerender("model", memory, source, path([("turn_left", 10)]), "", "", 0, 1, 5.0, 6, 0.5)
    with pytest.raises(NodeInputError, match="'source' got"):
        rerender(handle, memory, torch.zeros(3), path([("turn_left", 10)]), "", "", 0, 1, 5.0, 6, 0.5)
    with pytest.raises(NodeInputError, match="'positive'.*768 wide"):
        rerender(handle, memory, source, path([("turn_left", 10)]), "", "", 0, 1, 5.0, 6, 0.5,
                 positive=[[torch.zeros(1, 5, 768), {}]])
    encode = N.CVS_MemoryV2VEncodeSource().encode
    with pytest.raises(NodeInputError, match="'frames'.*4k \\+ 1"):
        encode(handle, video(), 8, W, H)
    with pytest.raises(NodeInputError, match="'video' .*has 12 frames"):
        encode(handle, video(), 13, W, H)
    with pytest.raises(NodeInputError, match="'width'"):
        encode(handle, video(), FRAMES, 60, H)
    with pytest.raises(NodeInputError, match="'video' got"):
        encode(handle, torch.zeros(9, 48, 64), FRAMES, W, H)  # a MASK, not an IMAGE
    with pytest.raises(NodeInputError, match="'name'"):
        N.CVS_VideoMemory().open("../escape", False)
    # a memory of another video size
    rerender(handle, memory, source, path([("turn_left", 10)]), "", "", 0, 1, 5.0, 6, 0.5)
    other, _ = N.CVS_MemoryV2VEncodeSource().encode(handle, video(), FRAMES, 32, 32)
    cams = trajectories.navigate([("turn_left", 10)], FRAMES - 1, include_start=True, width=32, height=32)
    with pytest.raises(NodeInputError, match="'memory' .*one video size"):
        rerender(handle, memory, other, cams, "", "", 0, 1, 5.0, 6, 0.5)
    memory.path.write_bytes(b"garbage")
    with pytest.raises(NodeInputError, match="'memory' cannot be read"):
        N.CVS_VideoMemoryPreview().preview(memory, 6)


# --------------------------------------------------------------------------- appearance retrieval
@pytest.fixture(scope="module")
def dino(smoke_weights_dir):
    return families.get("dinov2").load(smoke_weights_dir / "dinov2", torch.device("cpu"), torch.float32)


def test_segment_descriptor_is_the_mean_cls_embedding(dino):
    from consistent_video.memory_v2v_nodes import dinov2 as D
    frames = torch.rand(5, 90, 160, 3, generator=torch.Generator().manual_seed(3))
    pixels = D.preprocess(frames)
    assert pixels.shape == (5, 3, 224, 224)
    model = dino.modules["model"]
    want = model(pixel_values=pixels).pooler_output.mean(0)
    torch.testing.assert_close(D.segment_descriptor(model, frames), want)
    # long segments: at most MAX_FRAMES evenly spaced frames
    many = torch.rand(40, 32, 32, 3)
    picked = many[torch.linspace(0, 39, D.MAX_FRAMES).round().long()]
    torch.testing.assert_close(D.segment_descriptor(model, many), D.segment_descriptor(model, picked))


def test_appearance_retrieval_puts_the_latest_turn_first(handle, dino):
    memory, _ = N.CVS_VideoMemory().open("appearance", True)
    source, _ = _encode(handle)
    rerender = N.CVS_MemoryV2VRerender().rerender
    for turn in range(2):
        rerender(handle, memory, source, path([("turn_left", 5 * turn)]), "", "", turn, 1, 5.0, 6, 0.5,
                 retrieval="appearance (DINOv2)", dinov2=dino)
    bank = VideoMemoryBank.load(memory.path)
    assert all(t.descriptor is not None and t.descriptor.shape == (32,) for t in bank.turns)
    _, _, _, info = rerender(handle, memory, source, path([("turn_right", 5)]), "", "", 2, 1, 5.0, 6, 0.5,
                             retrieval="appearance (DINOv2)", dinov2=dino)
    lines = info.splitlines()
    assert lines[0] == "retrieved 2 of 2 turn(s)" and lines[1].startswith("  turn 1: DINOv2 cosine")
    with pytest.raises(NodeInputError, match="'dinov2' is not connected but retrieval is by appearance"):
        rerender(handle, memory, source, path([("turn_right", 5)]), "", "", 0, 1, 5.0, 6, 0.5, "appearance (DINOv2)")
    with pytest.raises(NodeInputError, match="'dinov2' got"):
        rerender(handle, memory, source, path([("turn_right", 5)]), "", "", 0, 1, 5.0, 6, 0.5, dinov2=handle)


# --------------------------------------------------------------------------- trained adapters
def test_trained_adapters_load_and_are_used(handle, tmp_path):
    from safetensors.torch import save_file
    from consistent_video.memory_v2v_nodes.adapters import load_adapters
    model = handle.modules["transformer"]
    dim = model.patch_embedding.weight.shape[0]
    gen = torch.Generator().manual_seed(9)
    weights = {"coarse_embedding.1x4x4.weight": torch.randn(dim, 16, 1, 4, 4, generator=gen) * 0.05,
               "coarse_embedding.1x4x4.bias": torch.zeros(dim),
               "token_merge.10.weight": torch.zeros(dim, dim, 2, 2), "token_merge.10.bias": torch.full((dim,), 0.5)}
    save_file(weights, str(tmp_path / "adapters.safetensors"))
    embedders, mergers = load_adapters(tmp_path / "adapters.safetensors", model)
    assert set(embedders) == {2} and set(mergers) == {10}
    assert torch.equal(embedders[2].weight, weights["coarse_embedding.1x4x4.weight"])
    # used in a call: a memory video at 1x4x4 is embedded by the trained kernel
    latent = torch.randn(1, 16, 3, H // 8, W // 8, generator=gen)
    ours = MF.tokenize(model, latent, 2, 0, torch.zeros(3, 12), "memory", embedder=embedders[2])
    padded = torch.nn.functional.pad(latent, (0, 0, 0, 2, 0, 0), mode="replicate")  # 6 rows -> 8 (edge repeated)
    theirs = torch.nn.functional.conv3d(padded, weights["coarse_embedding.1x4x4.weight"], stride=(1, 4, 4))
    torch.testing.assert_close(ours.x, theirs.flatten(2).transpose(1, 2))
    # through the node, with memory present, the result differs from the parameter-free defaults
    memory, _ = N.CVS_VideoMemory().open("adapters", True)
    source, _ = _encode(handle)
    rerender = N.CVS_MemoryV2VRerender().rerender
    rerender(handle, memory, source, path([("turn_left", 10)]), "", "", 0, 1, 5.0, 6, 0.5)
    plain = rerender(handle, memory, source, path([("turn_left", 5)]), "", "", 1, 1, 5.0, 6, 0.5)[0]
    memory, _ = N.CVS_VideoMemory().open("adapters", True)
    rerender(handle, memory, source, path([("turn_left", 10)]), "", "", 0, 1, 5.0, 6, 0.5)
    trained = rerender(handle, memory, source, path([("turn_left", 5)]), "", "", 1, 1, 5.0, 6, 0.5,
                       adapter_weights=str(tmp_path / "adapters.safetensors"))[0]
    assert not torch.equal(plain, trained)


def test_bad_adapter_files_are_refused(handle, tmp_path):
    from safetensors.torch import save_file
    from consistent_video.memory_v2v_nodes.adapters import load_adapters
    from consistent_video.nodes.comfy.weights import WeightsError
    model = handle.modules["transformer"]
    dim = model.patch_embedding.weight.shape[0]
    cases = {
        "unknown": ({"something.weight": torch.zeros(1)}, "not a Memory-V2V adapter key"),
        "shape": ({"token_merge.10.weight": torch.zeros(dim, dim, 3, 3), "token_merge.10.bias": torch.zeros(dim)},
                  "expected"),
        "half": ({"coarse_embedding.1x8x8.weight": torch.zeros(dim, 16, 1, 8, 8)}, "both weight and bias"),
        "block": ({"token_merge.99.weight": torch.zeros(dim, dim, 2, 2), "token_merge.99.bias": torch.zeros(dim)},
                  "block 99"),
    }
    for name, (tensors, message) in cases.items():
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
        with pytest.raises(WeightsError, match=message):
            load_adapters(tmp_path / f"{name}.safetensors", model)
    memory, _ = N.CVS_VideoMemory().open("bad_adapters", True)
    source, _ = _encode(handle)
    with pytest.raises(NodeInputError, match="'adapter_weights'"):
        N.CVS_MemoryV2VRerender().rerender(handle, memory, source, path([("turn_left", 10)]), "", "", 0, 1, 5.0, 6,
                                           0.5, adapter_weights=str(tmp_path / "missing.safetensors"))
