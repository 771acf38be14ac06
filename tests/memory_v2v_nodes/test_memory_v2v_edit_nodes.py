"""Memory-V2V long-video editing on LucyEdit: the sampler against diffusers' LucyEditPipeline, and the
split / edit segments / stitch / plain-edit nodes on smoke weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from consistent_video.memory_v2v_nodes import edit_nodes as N
from consistent_video.memory_v2v_nodes import edit_pipeline as E
from consistent_video.memory_v2v_nodes import lucy_family as L
from consistent_video.memory_v2v_nodes.bank import VideoMemoryBank
from consistent_video.memory_v2v_nodes.nodes import CVS_VideoMemory
from consistent_video.memory_v2v_nodes.segments import stitch
from consistent_video.nodes.comfy import families, runtime
from consistent_video.nodes.comfy.errors import NodeInputError

SIZE = 64  # smoke working size: latent 4 x 4


@pytest.fixture(scope="module")
def lucy(smoke_weights_dir):
    return families.get(L.NAME).load(smoke_weights_dir / L.NAME, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def dino(smoke_weights_dir):
    return families.get("dinov2").load(smoke_weights_dir / "dinov2", torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def recammaster(smoke_weights_dir):
    return families.get("recammaster").load(smoke_weights_dir / "recammaster", torch.device("cpu"), torch.float32)


def _video(frames: int = 21, seed: int = 0) -> torch.Tensor:
    """A moving gradient with noise, quantised to 8 bits (PIL round trips it exactly)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, frames)[:, None, None, None]
    y = torch.linspace(0, 1, SIZE)[None, :, None, None]
    x = torch.linspace(0, 1, SIZE)[None, None, :, None]
    shape = (frames, SIZE, SIZE, 1)
    base = torch.cat([((x + t) % 1).expand(shape), y.expand(shape), ((x * y + 0.5 * t) % 1).expand(shape)], -1)
    video = (0.8 * base + 0.2 * torch.rand(frames, SIZE, SIZE, 3, generator=g)).clamp(0, 1)
    return (video * 255).round() / 255


def _edit(lucy, dino, memory, plan, run="next segment", top_k=6, **kw):
    args = dict(prompt="make it red", negative_prompt="", seed=0, steps=2, cfg=5.0, width=SIZE, height=SIZE,
                top_k=top_k, merge_ratio=0.5, run=run)
    args.update(kw)
    return N.CVS_MemoryV2VEditSegments().edit(lucy, memory, plan, dino, **args)


def _memory(name="edit", reset=True):
    return CVS_VideoMemory().open(name, reset)[0]


# --------------------------------------------------------------------------- the sampler
def test_plain_edit_equals_diffusers_lucy_edit_pipeline(lucy):
    """No memory: the pack's LucyEdit sampler gives diffusers' LucyEditPipeline's latents (same VAE
    encoding of the source, same noise, per-token timesteps, UniPC, CFG 5)."""
    from diffusers import LucyEditPipeline
    video = _video(9)
    settings = E.EditSettings(steps=3, cfg=5.0, width=SIZE, height=SIZE)
    codec = L.codec(lucy)
    source = codec.encode(video)
    prompt = torch.randn(1, 16, L.SMOKE_TEXT_WIDTH, generator=torch.Generator().manual_seed(1))
    negative = torch.randn(1, 16, L.SMOKE_TEXT_WIDTH, generator=torch.Generator().manual_seed(2))
    ours = E.sample_edit(lucy.modules["transformer"], L.make_scheduler(lucy), source, torch.cat([prompt, negative]),
                         [], settings, seed=7)
    pipe = LucyEditPipeline(tokenizer=lucy.extra["tokenizer"], text_encoder=lucy.modules["text_encoder"],
                            vae=lucy.modules["vae"], scheduler=L.make_scheduler(lucy),
                            transformer=lucy.modules["transformer"], expand_timesteps=True)
    noise = torch.randn((1,) + tuple(source.shape), generator=torch.Generator().manual_seed(7))
    frames = [Image.fromarray((f.numpy() * 255).round().astype(np.uint8)) for f in video]
    theirs = pipe(video=frames, prompt_embeds=prompt, negative_prompt_embeds=negative, height=SIZE, width=SIZE,
                  num_frames=9, num_inference_steps=3, guidance_scale=5.0, latents=noise.clone(),
                  output_type="latent").frames[0]
    torch.testing.assert_close(ours, theirs.float(), atol=2e-4, rtol=1e-4)


def test_memory_segments_roles_and_tokenizers():
    bank = VideoMemoryBank()
    latent = torch.zeros(48, 2, 4, 4)
    for segment in range(5):
        bank.add(E.make_edit_turn(latent, latent, torch.ones(8), "p", "v", segment))
    picked = [(4, 1.0), (1, 0.9), (2, 0.8), (0, 0.7), (3, 0.6)]
    memory = E.memory_segments(bank, picked, 5)
    assert [m.role for m in memory] == ["prev", "memory", "memory", "memory", "memory"]
    assert [m.tokenizer for m in memory] == ["1x4x4", "1x4x4", "1x4x4", "1x8x8", "1x8x8"]
    # the most recent stored segment is not the previous one (e.g. one was skipped): no 'prev' range
    assert E.memory_segments(bank, [(2, 1.0)], 5)[0].role == "memory"


# --------------------------------------------------------------------------- the nodes
def test_split_names_bad_inputs():
    split = N.CVS_SplitVideoSegments().split
    plan, count, info = split(_video(21), 9, 4)
    assert count == 4 and plan.spans == ((0, 9), (5, 14), (10, 19), (12, 21)) and "0-8" in info
    with pytest.raises(NodeInputError, match="segment_length.*longer than the video"):
        split(_video(7), 9, 4)
    with pytest.raises(NodeInputError, match="overlap"):
        split(_video(21), 9, 9)
    with pytest.raises(NodeInputError, match="segment_length.*4k \\+ 1"):
        split(_video(21), 8, 2)
    with pytest.raises(NodeInputError, match="'video'"):
        split(torch.zeros(0, SIZE, SIZE, 3), 9, 4)


def test_one_segment_per_run_then_all_and_stitch(lucy, dino):
    video = _video(21)
    plan, count, _ = N.CVS_SplitVideoSegments().split(video, 9, 4)
    memory = _memory()
    edited, memory, info = _edit(lucy, dino, memory, plan)
    assert edited.shape == (9, SIZE, SIZE, 3) and "segment 0" in info and "1 of 4" in info
    assert len(VideoMemoryBank.load(memory.path)) == 1
    edited, memory, info = _edit(lucy, dino, memory, plan, run="all remaining segments")
    assert edited.shape == (27, SIZE, SIZE, 3) and "4 of 4" in info
    # segment 1 is conditioned on segment 0 as 'prev'; segment 3 on all three, the latest first
    lines = info.splitlines()
    assert "memory segment 0 (prev, DINOv2" in lines[0] and "prev 3," in lines[0]  # 3 latent frames x 1 token
    assert lines[2].split("memory ", 1)[1].startswith("segment 2 (")
    bank = VideoMemoryBank.load(memory.path)
    assert [t.segment for t in bank.turns] == [0, 1, 2, 3] and all(t.source is not None for t in bank.turns)
    again, _, info = _edit(lucy, dino, memory, plan)  # nothing left: nothing changes
    assert again.shape[0] == 1 and "already edited" in info and len(VideoMemoryBank.load(memory.path)) == 4
    video_out, done, text = N.CVS_StitchEditedSegments().stitch(lucy, memory, plan)
    assert done == 4 and video_out.shape == (21, SIZE, SIZE, 3) and "frames 0-20" in text
    codec = L.codec(lucy)
    decoded = [codec.decode(t.latent.float()) for t in bank.turns]
    torch.testing.assert_close(video_out, stitch(decoded, plan.spans, 21))


def test_memory_changes_the_edit_and_top_k_0_is_plain_lucyedit(lucy, dino):
    plan, _, _ = N.CVS_SplitVideoSegments().split(_video(13), 9, 4)
    first, with_memory, alone = _memory("a"), _memory("b"), _memory("c")
    _, first, _ = _edit(lucy, dino, first, plan)
    bank = VideoMemoryBank.load(first.path)
    bank.save(with_memory.path)
    bank.save(alone.path)
    with_memory = CVS_VideoMemory().open("b", False)[0]
    alone = CVS_VideoMemory().open("c", False)[0]
    a, _, info_a = _edit(lucy, dino, with_memory, plan, top_k=6)
    b, _, info_b = _edit(lucy, dino, alone, plan, top_k=0)
    assert "memory segment 0" in info_a and "memory none" in info_b
    assert (a - b).abs().max() > 1e-4
    # top_k 0: segment 1 edited exactly as plain LucyEdit on its frames (seed + 1)
    (plain,) = N.CVS_LucyEditEdit().edit(lucy, plan.segment(1), "make it red", "", 9, 1, 2, 5.0, SIZE, SIZE)
    torch.testing.assert_close(b, plain)


def test_cancel_keeps_the_segments_stored_before(lucy, dino, monkeypatch):
    plan, _, _ = N.CVS_SplitVideoSegments().split(_video(21), 9, 4)
    memory = _memory("cancel")
    calls = []
    real = E.sample_edit

    def cancel_in_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            runtime.request_interrupt()
        return real(*args, **kwargs)
    monkeypatch.setattr(E, "sample_edit", cancel_in_third)
    with pytest.raises(runtime.Interrupted):
        _edit(lucy, dino, memory, plan, run="all remaining segments")
    runtime.clear_interrupt()
    bank = VideoMemoryBank.load(memory.path)
    assert [t.segment for t in bank.turns] == [0, 1]  # the cancelled segment 2 added nothing
    _, _, info = _edit(lucy, dino, CVS_VideoMemory().open("cancel", False)[0], plan)  # resumes at segment 2
    assert info.startswith("segment 2")


def test_conditioning_is_accepted_and_a_wrong_width_is_named(lucy, dino):
    plan, _, _ = N.CVS_SplitVideoSegments().split(_video(9), 9, 0)
    tokens = torch.randn(1, 7, L.SMOKE_TEXT_WIDTH)
    edited, _, _ = _edit(lucy, dino, _memory("cond"), plan, positive=[[tokens, {}]], negative=[[-tokens, {}]])
    assert edited.shape == (9, SIZE, SIZE, 3)
    with pytest.raises(NodeInputError, match="'positive'.*wide"):
        _edit(lucy, dino, _memory("cond2"), plan, positive=[[torch.randn(1, 7, 768), {}]])


def test_bad_inputs_are_named(lucy, dino, recammaster):
    plan, _, _ = N.CVS_SplitVideoSegments().split(_video(9), 9, 0)
    memory = _memory("bad")
    with pytest.raises(NodeInputError, match="'model'.*lucyedit"):
        _edit(recammaster, dino, memory, plan)
    with pytest.raises(NodeInputError, match="'dinov2'"):
        _edit(lucy, lucy, memory, plan)
    with pytest.raises(NodeInputError, match="'segments'"):
        _edit(lucy, dino, memory, _video(9))
    with pytest.raises(NodeInputError, match="'width'.*multiple of 32"):
        _edit(lucy, dino, memory, plan, width=48)
    with pytest.raises(NodeInputError, match="'memory'.*no edited segment"):
        N.CVS_StitchEditedSegments().stitch(lucy, memory, plan)
    with pytest.raises(NodeInputError, match="'frames'"):
        N.CVS_LucyEditEdit().edit(lucy, _video(9), "x", "", 8, 0, 1, 5.0, SIZE, SIZE)
    with pytest.raises(NodeInputError, match="'video'.*at least"):
        N.CVS_LucyEditEdit().edit(lucy, _video(5), "x", "", 9, 0, 1, 5.0, SIZE, SIZE)
    assert len(VideoMemoryBank.load(memory.path)) == 0  # nothing was stored by any of them
