"""Memory-V2V on ReCamMaster at tiny size: checkpoint conversion and strict loading, the call
without memory against an independent ReCamMaster computation, RoPE, dynamic tokenization,
responsiveness scores and token merging."""
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from consistent_video.memory_v2v_nodes import memory_forward as MF
from consistent_video.memory_v2v_nodes import model as M
from consistent_video.nodes.comfy.weights import WeightsError


def tiny_config(layers=3):
    config = M.config_for_release()
    config.update(num_attention_heads=2, ffn_dim=64, num_layers=layers, text_dim=16, in_channels=4, out_channels=4)
    return config


@pytest.fixture(scope="module")
def tiny(dense_random_state):
    model = M.ReCamMasterTransformer(**tiny_config())
    model.load_state_dict(dense_random_state(model, seed=1))
    return model.eval()


def inputs(frames=3, height=8, width=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(2, 4, frames, height, width, generator=gen)
    source = torch.randn(1, 4, frames, height, width, generator=gen)
    text = torch.randn(2, 5, 16, generator=gen)
    cams = torch.randn(frames, 12, generator=gen)
    return target, source, text, cams


# --------------------------------------------------------------------------- checkpoints
def test_original_keys_round_trip_through_diffusers_converter(tiny):
    state = tiny.state_dict()
    original = M.to_original(state)
    for key in ("head.modulation", "head.head.weight", "blocks.0.modulation", "blocks.0.self_attn.q.weight",
                "blocks.0.self_attn.norm_q.weight", "blocks.0.cross_attn.o.bias", "blocks.0.norm3.weight",
                "blocks.0.ffn.0.weight", "time_projection.1.weight", "text_embedding.2.bias",
                "patch_embedding.weight", "blocks.2.cam_encoder.weight", "blocks.2.projector.bias"):
        assert key in original, key
    back = M.convert_checkpoint({"model.diffusion_model." + k: v for k, v in original.items()})
    assert set(back) == set(state) and all(back[k] is state[k] for k in state)
    assert M.infer_config(back) == {**tiny_config(), "patch_size": (1, 2, 2)}


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_recammaster_checkpoint_loads_strictly(tiny, tmp_path, fmt):
    original = M.to_original(tiny.state_dict())
    if fmt == "ckpt":
        path = tmp_path / "step20000.ckpt"
        torch.save(original, path)
    else:  # the single-file bf16 variant common in ComfyUI
        from safetensors.torch import save_file
        path = tmp_path / "Wan2_1_kwai_recammaster_1_3B_step20000_bf16.safetensors"
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in original.items()}, str(path))
    model, has_camera = M.load_transformer(path)
    assert has_camera
    loaded = model.state_dict()
    for key, value in tiny.state_dict().items():
        torch.testing.assert_close(loaded[key], value.to(loaded[key].dtype).float() if fmt == "ckpt" else
                                   value.to(torch.bfloat16).float())


def test_plain_wan_gets_recammasters_initial_camera_layers_and_a_warning(tiny, tmp_path, caplog):
    original = {k: v for k, v in M.to_original(tiny.state_dict()).items() if "cam_encoder" not in k
                and "projector" not in k}
    torch.save(original, tmp_path / "wan2.1_t2v_1.3B.pth")
    with caplog.at_level(logging.WARNING, logger="consistent_video"):
        model, has_camera = M.load_transformer(tmp_path / "wan2.1_t2v_1.3B.pth")
    assert not has_camera and "no camera layers" in caplog.text
    for block in model.blocks:
        assert torch.equal(block.cam_encoder.weight, torch.zeros_like(block.cam_encoder.weight))
        assert torch.equal(block.projector.weight, torch.eye(block.projector.weight.shape[0]))
    # with the initial camera layers, the camera input changes nothing
    target, source, text, cams = inputs()
    t = torch.tensor([500.0, 500.0])
    a = MF.denoise(model, target, t, text, cams, source, merge_ratio=0)
    b = MF.denoise(model, target, t, text, torch.zeros_like(cams), source, merge_ratio=0)
    torch.testing.assert_close(a, b)


def test_partial_or_foreign_checkpoints_are_refused(tiny, tmp_path):
    original = M.to_original(tiny.state_dict())
    del original["blocks.1.projector.weight"]
    torch.save(original, tmp_path / "partial.ckpt")
    with pytest.raises(WeightsError, match="camera layers are missing"):
        M.load_transformer(tmp_path / "partial.ckpt")
    torch.save({"encoder.conv1.weight": torch.zeros(3)}, tmp_path / "vae.pth")
    with pytest.raises(WeightsError, match="not a Wan2.1 / ReCamMaster DiT"):
        M.load_transformer(tmp_path / "vae.pth")


# --------------------------------------------------------------------------- independent ReCamMaster
def _rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rotate(x, positions, head_dim):
    """RoPE with complex numbers: each interleaved pair (a, b) is a + ib turned by pos * freq."""
    h_dim = w_dim = 2 * (head_dim // 6)
    dims = (head_dim - 2 * h_dim, h_dim, w_dim)
    freqs = torch.cat([positions[:, a:a + 1] * (1.0 / 10000 ** (torch.arange(0, d, 2).double() / d))[None]
                       for a, d in enumerate(dims)], -1)  # [N, head_dim / 2]
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous())
    z = z * torch.polar(torch.ones_like(freqs), freqs)[None, :, None]
    return torch.view_as_real(z).reshape(x.shape).float()


def _attention(q, k, v):
    weights = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("bhqk,bkhd->bqhd", weights.softmax(-1), v).flatten(2)


def recammaster_reference(model, target, source, timestep, text, cams):
    """ReCamMaster's call as its code does it: target and source latents concatenated on the
    frame axis, RoPE positions 0..2T-1, the target camera embedding added to both halves,
    every block written out with explicit attention, the output taken from the target half."""
    batch, _, frames, height, width = target.shape
    x = torch.cat([target, source.expand(batch, -1, -1, -1, -1)], 2)
    tokens = model.patch_embedding(x).flatten(2).transpose(1, 2)
    h, w = height // 2, width // 2
    grid = torch.stack(torch.meshgrid(torch.arange(2 * frames), torch.arange(h), torch.arange(w), indexing="ij"),
                       -1).reshape(-1, 3).double()
    cam_rows = cams.repeat(2, 1).repeat_interleave(h * w, 0)
    temb, proj, ctx, _ = model.condition_embedder(timestep, text, None)
    proj = proj.unflatten(1, (6, -1))
    heads, hd = model.config.num_attention_heads, model.config.attention_head_dim
    for block in model.blocks:
        shift, scale, gate, c_shift, c_scale, c_gate = (block.scale_shift_table + proj).chunk(6, 1)
        a = block.attn1
        x_in = F.layer_norm(tokens, (tokens.shape[-1],), eps=1e-6) * (1 + scale) + shift
        x_in = x_in + block.cam_encoder(cam_rows)[None]
        q = _rms(a.to_q(x_in), a.norm_q.weight, 1e-6).unflatten(2, (heads, hd))
        k = _rms(a.to_k(x_in), a.norm_k.weight, 1e-6).unflatten(2, (heads, hd))
        v = a.to_v(x_in).unflatten(2, (heads, hd))
        out = a.to_out[0](_attention(_rotate(q, grid, hd), _rotate(k, grid, hd), v))
        tokens = tokens + gate * block.projector(out)
        c = block.attn2
        y = F.layer_norm(tokens, (tokens.shape[-1],), block.norm2.weight, block.norm2.bias, eps=1e-6)
        q = _rms(c.to_q(y), c.norm_q.weight, 1e-6).unflatten(2, (heads, hd))
        k = _rms(c.to_k(ctx), c.norm_k.weight, 1e-6).unflatten(2, (heads, hd))
        tokens = tokens + c.to_out[0](_attention(q, k, c.to_v(ctx).unflatten(2, (heads, hd))))
        y = F.layer_norm(tokens, (tokens.shape[-1],), eps=1e-6) * (1 + c_scale) + c_shift
        ffn = block.ffn.net
        tokens = tokens + c_gate * ffn[2](F.gelu(ffn[0].proj(y), approximate="tanh"))
    tokens = tokens[:, :frames * h * w]
    shift, scale = (model.scale_shift_table + temb.unsqueeze(1)).chunk(2, 1)
    out = model.proj_out(F.layer_norm(tokens, (tokens.shape[-1],), eps=1e-6) * (1 + scale) + shift)
    out = out.reshape(batch, frames, h, w, 1, 2, 2, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return out.flatten(6, 7).flatten(4, 5).flatten(2, 3)


@torch.no_grad()
def test_without_memory_the_call_is_recammasters(tiny):
    target, source, text, cams = inputs()
    t = torch.tensor([700.0, 700.0])
    want = recammaster_reference(tiny, target, source, t, text, cams)
    report = MF.CallReport()
    got = MF.denoise(tiny, target, t, text, cams, source, merge_blocks=(1, 2), report=report)
    torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-4)
    assert report.tokens == {"target": 3 * 4 * 6, "user": 3 * 4 * 6, "memory": 0}
    # without memory videos nothing is merged
    assert report.merges == [] and report.lengths == [144] * 3


@torch.no_grad()
def test_camera_changes_the_output(tiny):
    target, source, text, cams = inputs()
    t = torch.tensor([500.0, 500.0])
    a = MF.denoise(tiny, target, t, text, cams, source, merge_ratio=0)
    b = MF.denoise(tiny, target, t, text, cams.flip(0), source, merge_ratio=0)
    assert (a - b).abs().max() > 1e-3


# --------------------------------------------------------------------------- tokens and RoPE
def test_rope_equals_diffusers_table_at_integer_positions(tiny):
    x = torch.zeros(1, 4, 3, 8, 12)
    cos, sin = tiny.rope(x)
    grid = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(4), torch.arange(6), indexing="ij"),
                       -1).reshape(-1, 3).double()
    ours_cos, ours_sin = MF.rope(grid, tiny.config.attention_head_dim)
    torch.testing.assert_close(ours_cos, cos.float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours_sin, sin.float(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale", [2, 4])
def test_coarse_tokens_are_means_of_native_tokens_at_the_centre(tiny, scale):
    latent = torch.randn(1, 4, 2, 16, 16, generator=torch.Generator().manual_seed(3))
    cams = torch.zeros(2, 12)
    native = MF.tokenize(tiny, latent, 1, 0, cams, "memory")
    coarse = MF.tokenize(tiny, latent, scale, 10, cams, "memory")
    n = 8 // scale  # coarse grid side
    assert [(f.h, f.w) for f in coarse.frames] == [(n, n)] * 2 and coarse.length == 2 * n * n
    grid = native.x.reshape(1, 2, 8, 8, -1).permute(0, 1, 4, 2, 3).flatten(0, 1)
    pooled = F.avg_pool2d(grid, scale).reshape(2, -1, n * n).permute(0, 2, 1).reshape(1, 2 * n * n, -1)
    torch.testing.assert_close(coarse.x, pooled, rtol=1e-4, atol=1e-5)
    # positions: the centre of the covered native tokens, time from t_start
    assert coarse.pos[0].tolist() == [10.0, (scale - 1) / 2, (scale - 1) / 2]
    assert coarse.pos[1].tolist() == [10.0, (scale - 1) / 2, scale + (scale - 1) / 2]
    assert coarse.pos[-1, 0] == 11.0


def test_odd_sizes_are_padded_by_repeating_the_edge(tiny):
    latent = torch.randn(1, 4, 1, 10, 14)
    tokens = MF.tokenize(tiny, latent, 4, 0, torch.zeros(1, 12), "memory")
    assert (tokens.frames[0].h, tokens.frames[0].w) == (2, 2)  # ceil(10 / 8), ceil(14 / 8)


def test_token_budget_at_480x832_matches_the_reference_table():
    """1x2x2: 1560 tokens per latent frame; 1x4x4: 390; 1x8x8: 104 (padded) -- for a 60x104 latent."""
    for scale, per_frame in ((1, 1560), (2, 390), (4, 104)):
        assert math.ceil(60 / (2 * scale)) * math.ceil(104 / (2 * scale)) == per_frame


# --------------------------------------------------------------------------- responsiveness
def test_frame_scores_on_a_hand_made_case():
    """Two target queries, three conditioning frames of 2 tokens each, one head, d = 2."""
    q = torch.tensor([[[[4.0, 0.0]], [[-4.0, 0.0]]]])  # [B=1, Nq=2, H=1, d=2]
    k = torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]],   # frame 0: mean (1, 0)
                       [[0.0, 1.0]], [[0.0, -1.0]],  # frame 1: mean (0, 0)
                       [[-1.0, 0.0]], [[-1.0, 0.0]]]])  # frame 2: mean (-1, 0)
    scores = MF.frame_scores(q, k, [(0, 2), (2, 2), (4, 2)])
    # query 0: logits (4, 0, -4) / sqrt(2); query 1: the reverse; max over queries per frame
    first = (torch.tensor([4.0, 0.0, -4.0]) / math.sqrt(2)).softmax(0)
    want = torch.maximum(first, first.flip(0))
    torch.testing.assert_close(scores, want)
    assert scores[1] < 0.06 and 0.9 < scores[0] and abs(scores[0] - scores[2]) < 1e-6  # nobody attends to frame 1
    assert MF.choose_frames(scores, 0.5) == [1] and MF.choose_frames(scores, 1.0) == [0, 1, 2]
    assert MF.choose_frames(scores, 0.0) == []
    # counting tokens: frame 1 (lowest) holds 10 of 12 tokens, more than half, so nothing is taken;
    # a small frame 1 is taken, then frame 0 (next, earlier on the tie with 2) would exceed half: stop
    assert MF.choose_frames(scores, 0.5, [1, 10, 1]) == []
    assert MF.choose_frames(scores, 0.5, [10, 1, 1]) == [1]
    assert MF.choose_frames(scores, 0.5, [1, 1, 10]) == [0, 1]


# --------------------------------------------------------------------------- merging
def _tokens_for_merge(frames=4, h=3, w=5):
    gen = torch.Generator().manual_seed(5)
    parts = [MF.Tokens(torch.randn(1, 6, 8, generator=gen), torch.zeros(6, 3, dtype=torch.float64),
                       torch.zeros(6, 12), [MF.FrameSpan("target", 0, 0, 0, 2, 3)])]
    for f in range(frames):
        n = h * w
        pos = torch.stack(torch.meshgrid(torch.tensor([float(f)], dtype=torch.float64), torch.arange(h).double(),
                                         torch.arange(w).double(), indexing="ij"), -1).reshape(-1, 3)
        parts.append(MF.Tokens(torch.randn(1, n, 8, generator=gen), pos, torch.full((n, 12), float(f)),
                               [MF.FrameSpan("memory", 0, f, 0, h, w)]))
    return MF.concat(parts)


def test_merge_lengths_and_untouched_frames():
    tokens = _tokens_for_merge()
    merged = MF.merge(tokens, [2, 4])  # spans: target, then memory frames 0..3
    assert [(f.h, f.w) for f in merged.frames] == [(2, 3), (3, 5), (2, 3), (3, 5), (2, 3)]
    assert merged.length == 6 + 15 + 6 + 15 + 6 and merged.count("target") == 6
    # target and unchosen frames are bit-identical, cameras stay with their frames
    assert torch.equal(merged.x[:, :6], tokens.x[:, :6])
    assert torch.equal(merged.x[:, 6:21], tokens.x[:, 6:21])
    assert torch.equal(merged.cam[21:27], torch.full((6, 12), 1.0))


def test_merging_everything_reduces_to_averages():
    tokens = _tokens_for_merge(frames=2, h=3, w=5)
    merged = MF.merge(tokens, [1, 2])
    with pytest.raises(ValueError, match="target"):
        MF.merge(tokens, [0])
    frame = tokens.x[:, 6:21].reshape(1, 3, 5, 8)
    first = merged.x[:, 6:12].reshape(1, 2, 3, 8)
    torch.testing.assert_close(first[0, 0, 0], frame[0, :2, :2].mean((0, 1)))
    torch.testing.assert_close(first[0, 0, 2], frame[0, :2, 4].mean(0))  # cut by the edge: 2 tokens
    torch.testing.assert_close(first[0, 1, 2], frame[0, 2, 4])  # the corner alone
    pos = merged.pos[6:12].reshape(2, 3, 3)
    assert pos[0, 0].tolist() == [0.0, 0.5, 0.5] and pos[1, 2].tolist() == [0.0, 2.0, 4.0]


def test_a_high_scoring_frame_is_never_merged(tiny):
    """In a whole call: the frame with the top score at the merge block keeps its tokens."""
    target, source, text, cams = inputs(frames=2)
    memory = [MF.MemoryVideo(torch.randn(1, 4, 2, 8, 12), torch.randn(2, 12), "1x4x4"),
              MF.MemoryVideo(torch.randn(1, 4, 2, 8, 12), torch.randn(2, 12), "1x8x8")]
    report = MF.CallReport()
    MF.denoise(tiny, target, torch.tensor([300.0, 300.0]), text, cams, source, memory, merge_blocks=(1,),
               merge_ratio=0.5, report=report)
    merge = report.merges[0]
    scores = torch.tensor(merge["scores"])
    assert len(scores) == 2 + 2 + 2  # user frames + two memory videos of 2 frames
    sizes = [24, 24, 6, 6, 2, 2]  # user frames (1x2x2), memory 0 (1x4x4), memory 1 (1x8x8)
    assert sum(sizes[i] for i in merge["merged"]) <= 32  # at most half of the conditioning tokens
    assert int(scores.argmax()) not in merge["merged"]
    kept = set(range(6)) - set(merge["merged"])
    assert all(float(scores[i]) <= float(scores[j]) for i in merge["merged"] for j in kept)
    assert report.tokens == {"target": 2 * 24, "user": 2 * 24, "memory": 2 * 6 + 2 * 2}
    assert report.lengths[1] < report.lengths[0]


def test_learned_merger_is_used_when_given():
    tokens = _tokens_for_merge(frames=1, h=2, w=2)
    conv = torch.nn.Conv2d(8, 8, 2, 2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(7.0)
    merged = MF.merge(tokens, [1], conv)
    assert torch.equal(merged.x[:, 6:], torch.full((1, 1, 8), 7.0))
