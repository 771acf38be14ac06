"""Memory-V2V on LucyEdit (diffusers' plain WanTransformer3DModel, source concatenated on
channels, a timestep per token) at tiny size: the call without memory against diffusers'
forward, memory segments against diffusers' own blocks run over the concatenated sequence,
token layout (roles, coarse tokenizers and padding, reversed RoPE ranges, per-token
timesteps), merging at blocks 10 and 20, input checks and Cancel points."""
import pytest
import torch
from diffusers import WanTransformer3DModel

from consistent_video.memory_v2v_nodes import memory_forward as MF
from consistent_video.nodes.comfy import runtime


def wan(in_channels=8, out_channels=4, layers=3, seed=1, dense_random_state=None):
    """A tiny Wan2.2-style DiT: 2 heads of 12, FFN 32, text width 16, random weights."""
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                  in_channels=in_channels, out_channels=out_channels, text_dim=16, freq_dim=32,
                                  ffn_dim=32, num_layers=layers, cross_attn_norm=True,
                                  qk_norm="rms_norm_across_heads", eps=1e-6)
    model.load_state_dict(dense_random_state(model, seed=seed))
    return model.eval()


@pytest.fixture(scope="module")
def small(dense_random_state):
    return wan(dense_random_state=dense_random_state)


@pytest.fixture(scope="module")
def lucy_shape(dense_random_state):
    """LucyEdit's channel layout: 96 in (noisy 48 + source 48), 48 out."""
    return wan(96, 48, layers=2, seed=2, dense_random_state=dense_random_state)


@pytest.fixture(scope="module")
def deep(dense_random_state):
    """21 blocks, so that blocks 10 and 20 exist."""
    return wan(layers=21, seed=3, dense_random_state=dense_random_state)


def latents(channels=4, frames=2, height=10, width=14, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(batch, channels, frames, height, width, generator=gen)
    source = torch.randn(1, channels, frames, height, width, generator=gen)
    text = torch.randn(batch, 5, 16, generator=gen)
    return target, source, text


def segment(channels=4, frames=2, height=10, width=14, tokenizer="1x4x4", role="memory", seed=7):
    gen = torch.Generator().manual_seed(seed)
    return MF.MemorySegment(torch.randn(channels, frames, height, width, generator=gen),
                            torch.randn(channels, frames, height, width, generator=gen), tokenizer, role)


def lucy_timesteps(t: float, batch: int, frames: int, height: int, width: int) -> torch.Tensor:
    """What LucyEditPipeline passes with expand_timesteps: ``(mask[0][0][:, ::2, ::2] * t).flatten()`` per item."""
    mask = torch.ones(1, 1, frames, height, width)
    return (mask[0][0][:, ::2, ::2] * t).flatten().unsqueeze(0).expand(batch, -1)


# --------------------------------------------------------------------------- no memory: diffusers' forward
@pytest.mark.parametrize("form", ["batch", "per token", "per token, first frame clean"])
@pytest.mark.parametrize("net", ["small", "lucy_shape"])
@torch.no_grad()
def test_without_memory_the_call_is_diffusers_forward(request, net, form):
    model = request.getfixturevalue(net)
    channels = model.config.in_channels // 2
    target, source, text = latents(channels)
    if form == "batch":
        t = torch.tensor([700.0, 700.0])
    else:
        t = lucy_timesteps(700.0, 2, 2, 10, 14)
        if form.endswith("clean"):  # per token means per token: Wan2.2 TI2V's clean first frame
            t = t.clone()
            t[:, :35] = 0.0
    want = model(hidden_states=torch.cat([target, source.expand(2, -1, -1, -1, -1)], 1), timestep=t,
                 encoder_hidden_states=text, return_dict=False)[0]
    report = MF.CallReport()
    got = MF.denoise_edit(model, target, t, text, source, merge_blocks=(0, 1), report=report)
    assert got.shape == (2, model.config.out_channels, 2, 10, 14)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert report.tokens == {"target": 2 * 5 * 7, "prev": 0, "memory": 0}
    assert report.merges == [] and report.lengths == [70] * len(model.blocks)


# --------------------------------------------------------------------------- memory: diffusers' blocks
def _diffusers_rope(model, pos):
    """cos / sin at integer positions from diffusers' own WanRotaryPosEmbed table."""
    rope = model.rope
    cos = rope.freqs_cos.split([rope.t_dim, rope.h_dim, rope.w_dim], 1)
    sin = rope.freqs_sin.split([rope.t_dim, rope.h_dim, rope.w_dim], 1)
    index = pos.long()
    pick = lambda parts: torch.cat([parts[a][index[:, a]] for a in range(3)], -1)[None, :, None].float()
    return pick(cos), pick(sin)


@torch.no_grad()
def test_memory_call_is_diffusers_blocks_over_the_concatenated_sequence(lucy_shape):
    """1x2x2 memory (integer positions), no merging: diffusers' own blocks over
    ``target | prev | memory`` with the reversed ranges and per-token timesteps (memory 0)."""
    model = lucy_shape
    target, source, text = latents(48)
    prev, other = segment(48, frames=3, tokenizer="1x2x2", role="prev"), segment(48, tokenizer="1x2x2", seed=8)
    t = torch.tensor([600.0, 600.0])
    got = MF.denoise_edit(model, target, t, text, source, [prev, other], merge_ratio=0)

    embed = lambda x: model.patch_embedding(x).flatten(2).transpose(1, 2)
    x = torch.cat([embed(torch.cat([target, source.expand(2, -1, -1, -1, -1)], 1)),
                   embed(torch.cat([prev.latent, prev.source])[None]).expand(2, -1, -1),
                   embed(torch.cat([other.latent, other.source])[None]).expand(2, -1, -1)], 1)
    grid = lambda times: torch.stack(torch.meshgrid(torch.tensor(times), torch.arange(5), torch.arange(7),
                                                    indexing="ij"), -1).reshape(-1, 3)
    pos = torch.cat([grid([0, 1]), grid([4, 3, 2]), grid([5, 4])])  # prev from T = 2, others from 2T = 4, reversed
    steps = torch.cat([torch.full((70,), 600.0), torch.zeros(105 + 70)]).expand(2, -1)
    temb, proj, ctx, _ = model.condition_embedder(steps.flatten(), text, None, timestep_seq_len=steps.shape[1])
    proj = proj.unflatten(2, (6, -1))
    rotary = _diffusers_rope(model, pos)
    for block in model.blocks:
        x = block(x, ctx, proj, rotary)
    shift, scale = (model.scale_shift_table[None] + temb[:, :70, None]).chunk(2, dim=2)
    out = model.proj_out(model.norm_out(x[:, :70]) * (1 + scale.squeeze(2)) + shift.squeeze(2))
    want = out.reshape(2, 2, 5, 7, 1, 2, 2, -1).permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5)
    torch.testing.assert_close(got, want.flatten(2, 3), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_a_memory_segment_changes_the_target_output(small):
    target, source, text = latents()
    t = torch.tensor([500.0, 500.0])
    plain = MF.denoise_edit(small, target, t, text, source)
    with_memory = MF.denoise_edit(small, target, t, text, source, [segment(role="prev")], merge_ratio=0)
    assert with_memory.shape == plain.shape
    assert (with_memory - plain).abs().max() > 1e-3
    # the edited half matters, not only its source
    edited = segment(role="prev")
    other = MF.MemorySegment(edited.latent + 1.0, edited.source, edited.tokenizer, "prev")
    assert (MF.denoise_edit(small, target, t, text, source, [other], merge_ratio=0) - with_memory).abs().max() > 1e-3


# --------------------------------------------------------------------------- token layout
def test_token_counts_per_role_with_coarse_tokenizers_and_padding(small):
    """A 10 x 14 latent: 1x2x2 -> 5 x 7 tokens per frame; 1x4x4 -> ceil(10/4) x ceil(14/4) = 3 x 4
    (padded); 1x8x8 -> 2 x 2 (padded)."""
    target, source, text = latents()
    memory = [segment(frames=3, role="prev"), segment(seed=8), segment(frames=3, tokenizer="1x8x8", seed=9)]
    tokens = MF.edit_tokens(small, target, source, memory, torch.tensor([500.0, 500.0]))
    assert [(f.role, f.video, f.frame, f.h, f.w) for f in tokens.frames] == (
        [("target", 0, j, 5, 7) for j in range(2)] + [("prev", 0, j, 3, 4) for j in range(3)]
        + [("memory", 1, j, 3, 4) for j in range(2)] + [("memory", 2, j, 2, 2) for j in range(3)])
    assert {role: tokens.count(role) for role in MF.EDIT_ROLES} == {"target": 70, "prev": 36, "memory": 24 + 12}
    assert tokens.x.shape == (2, 142, small.config.num_attention_heads * small.config.attention_head_dim)
    assert tokens.cam is None
    report = MF.CallReport()
    MF.denoise_edit(small, target, torch.tensor([500.0, 500.0]), text, source, memory, merge_ratio=0, report=report)
    assert report.tokens == {"target": 70, "prev": 36, "memory": 36} and report.lengths == [142] * 3


def test_rope_positions_of_prev_and_other_memory_are_reversed_ranges(small):
    target, source, _ = latents()  # T = 2
    memory = [segment(frames=3, role="prev"), segment(frames=2, seed=8), segment(frames=3, tokenizer="1x8x8", seed=9)]
    tokens = MF.edit_tokens(small, target, source, memory, torch.tensor([500.0, 500.0]))
    times = {}
    for f in tokens.frames:
        rows = tokens.pos[f.start:f.start + f.length]
        assert torch.all(rows[:, 0] == rows[0, 0])  # one time per frame
        times.setdefault((f.role, f.video), []).append(float(rows[0, 0]))
    assert times == {("target", 0): [0.0, 1.0],
                     ("prev", 0): [4.0, 3.0, 2.0],  # T .. T + F - 1, the last frame nearest the target
                     ("memory", 1): [5.0, 4.0],  # 2T .. 2T + F - 1, reversed
                     ("memory", 2): [6.0, 5.0, 4.0]}
    # spatial: the centres of the covered native tokens (1x4x4: s = 2; 1x8x8: s = 4)
    prev = tokens.frames[2]
    grid = tokens.pos[prev.start:prev.start + prev.length, 1:].reshape(3, 4, 2)
    assert grid[0, 0].tolist() == [0.5, 0.5] and grid[2, 3].tolist() == [4.5, 6.5]
    coarse = tokens.frames[-1]
    assert tokens.pos[coarse.start, 1:].tolist() == [1.5, 1.5]
    assert tokens.pos[coarse.start + 3, 1:].tolist() == [5.5, 5.5]


def test_memory_tokens_get_timestep_zero(small):
    target, source, _ = latents()
    memory = [segment(role="prev"), segment(tokenizer="1x8x8", seed=8)]
    tokens = MF.edit_tokens(small, target, source, memory, torch.tensor([800.0, 800.0]))
    assert tokens.t.shape == (2, tokens.length)
    assert torch.all(tokens.t[:, :70] == 800.0) and torch.all(tokens.t[:, 70:] == 0.0)
    # LucyEditPipeline's per-token form is kept token by token
    per_token = lucy_timesteps(800.0, 2, 2, 10, 14).clone()
    per_token[:, :35] = 0.0
    tokens = MF.edit_tokens(small, target, source, memory, per_token)
    assert torch.equal(tokens.t[:, :70], per_token) and torch.all(tokens.t[:, 70:] == 0.0)
    # without memory: per-token only when the timestep is
    assert MF.edit_tokens(small, target, source, (), torch.tensor([800.0, 800.0])).t is None
    assert torch.equal(MF.edit_tokens(small, target, source, (), per_token).t, per_token)
    # merging averages per-token timesteps; memory stays clean, the target is untouched
    merged = MF.merge(tokens, [2, 4])
    assert merged.t.shape == (2, merged.length) and merged.length == tokens.length - (12 - 4) - (4 - 1)
    assert torch.equal(merged.t[:, :70], per_token) and torch.all(merged.t[:, 70:] == 0.0)


# --------------------------------------------------------------------------- merging at blocks 10 and 20
@torch.no_grad()
def test_merging_at_blocks_10_and_20_keeps_the_output_shape(deep):
    target, source, text = latents()
    memory = [segment(frames=3, role="prev"), segment(seed=8), segment(frames=3, tokenizer="1x8x8", seed=9)]
    report = MF.CallReport()
    out = MF.denoise_edit(deep, target, lucy_timesteps(400.0, 2, 2, 10, 14), text, source, memory, report=report)
    assert out.shape == target.shape and torch.isfinite(out).all()
    assert [m["block"] for m in report.merges] == [10, 20]
    lengths = report.lengths
    assert len(lengths) == 21 and lengths[0] == 142
    assert len(set(lengths[:10])) == 1 and len(set(lengths[10:20])) == 1
    assert lengths[10] < lengths[9] and lengths[20] <= lengths[19]
    first = report.merges[0]
    assert len(first["scores"]) == 3 + 2 + 3  # every memory frame (prev included), no target frame
    sizes = [12, 12, 12, 12, 12, 4, 4, 4]
    assert sum(sizes[i] for i in first["merged"]) <= 36  # at most half of the conditioning tokens
    assert all(role in ("prev", "memory") for role, _, _ in first["frames"])
    # a frame 3 x 4 merged 2 x 2 becomes 2 x 2: the sequence shrinks by exactly that
    saved = sum({12: 8, 4: 3}[sizes[i]] for i in first["merged"])
    assert lengths[10] == 142 - saved
    # with merging off the output is the unmerged call's and differs from the merged one
    unmerged = MF.denoise_edit(deep, target, lucy_timesteps(400.0, 2, 2, 10, 14), text, source, memory,
                               merge_ratio=0)
    assert unmerged.shape == out.shape and not torch.equal(unmerged, out)


# --------------------------------------------------------------------------- input checks
def test_shape_errors_are_clear(small):
    target, source, text = latents()
    t = torch.tensor([500.0, 500.0])
    with pytest.raises(ValueError, match=r"memory segment 0 has a latent of 10 x 16 .* target is 10 x 14"):
        MF.denoise_edit(small, target, t, text, source, [segment(width=16, role="prev")])
    with pytest.raises(ValueError, match="its edited latent is .* and its source"):
        bad = segment()
        MF.denoise_edit(small, target, t, text, source, [MF.MemorySegment(bad.latent, bad.source[:, :1])])
    with pytest.raises(ValueError, match="only the first memory segment"):
        MF.denoise_edit(small, target, t, text, source, [segment(), segment(role="prev")])
    with pytest.raises(ValueError, match="input channels"):
        MF.denoise_edit(small, target, t, text, source[:, :3])
    with pytest.raises(ValueError, match="source segment latent"):
        MF.denoise_edit(small, target, t, text, source[:, :, :1])
    with pytest.raises(ValueError, match="per-token timestep must be"):
        MF.denoise_edit(small, target, torch.zeros(2, 69), text, source)


# --------------------------------------------------------------------------- Cancel
def test_cancel_points_fire_inside_the_edit_call(small):
    target, source, text = latents()
    ran = []
    handles = [block.attn1.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
               for i, block in enumerate(small.blocks)]
    handles.append(small.blocks[0].ffn.register_forward_hook(lambda m, a, o: runtime.request_interrupt()))
    try:
        with pytest.raises(runtime.Interrupted):
            with runtime.interruptible(small):
                MF.denoise_edit(small, target, torch.tensor([500.0, 500.0]), text, source, [segment(role="prev")])
    finally:
        for handle in handles:
            handle.remove()
        runtime.clear_interrupt()
    assert ran == [0]  # block 1 never ran


def test_trained_coarse_embedders_take_the_96_channel_pair(lucy_shape):
    """A trained 1x4x4 embedder sees ``cat([edited, its source])`` (96 channels) and replaces the tiled kernel."""
    target, source, _ = latents(48)
    width = lucy_shape.config.num_attention_heads * lucy_shape.config.attention_head_dim
    embedder = torch.nn.Conv3d(96, width, (1, 4, 4), stride=(1, 4, 4))
    with torch.no_grad():
        embedder.weight.zero_()
        embedder.weight[:, 48:] = 1.0  # only the source half
        embedder.bias.zero_()
    memory = [segment(48, role="prev")]
    tokens = MF.edit_tokens(lucy_shape, target, source, memory, torch.tensor([500.0, 500.0]), {2: embedder})
    rows = tokens.x[0, 70:]
    src = memory[0].source
    padded = torch.nn.functional.pad(src[None], (0, 2, 0, 2, 0, 0), mode="replicate")[0]  # 10 x 14 -> 12 x 16
    want = padded.sum(0).unfold(1, 4, 4).unfold(2, 4, 4).sum((-1, -2)).flatten()  # [frames * 3 * 4]
    torch.testing.assert_close(rows, want[:, None].expand(-1, width), rtol=1e-4, atol=1e-4)
