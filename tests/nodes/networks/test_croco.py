"""The CroCo-family blocks of nodes/networks/croco.py against independent computations: RoPE as
explicit 2x2 rotations of channel pairs with the frequencies written out, attention as a loop
over heads, LayerNorm and GELU by their formulas, the patch embedding as a dot product per patch.
Non-default RoPE bases, LayerNorm epsilons, head counts and bias-free projections are used, so the
generic parameters are exercised and not only NoPoSplat's values."""
import math

import pytest
import torch

from consistent_video.nodes.networks import croco

F64 = torch.float64


# --------------------------------------------------------------------------- independent references
def rotate_pairs(x, positions, base):
    """2-D RoPE written out pair by pair. Channels ``[0, d/2)`` encode the row, ``[d/2, d)`` the
    column; in a half of width h, channel i (< h/2) and i + h/2 form a pair rotated by the angle
    pos * base ** (-2 i / h): (a, b) -> (a cos - b sin, a sin + b cos)."""
    out = x.clone()
    d = x.shape[-1]
    h = d // 2
    for axis in range(2):
        p = positions[..., axis].to(F64)[:, None, :]  # [B, 1, N]
        for i in range(h // 2):
            a_idx, b_idx = axis * h + i, axis * h + i + h // 2
            angle = p * base ** (-2.0 * i / h)
            a, b = x[..., a_idx], x[..., b_idx]
            out[..., a_idx] = a * torch.cos(angle) - b * torch.sin(angle)
            out[..., b_idx] = a * torch.sin(angle) + b * torch.cos(angle)
    return out


def layer_norm(x, w, name, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w[f"{name}.weight"] + w[f"{name}.bias"]


def linear(x, w, name):
    out = x @ w[f"{name}.weight"].T
    return out + w[f"{name}.bias"] if f"{name}.bias" in w else out


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def mlp(x, w):
    return linear(gelu(linear(x, w, "mlp.fc1")), w, "mlp.fc2")


def attention(q, k, v, heads, qpos, kpos, base):
    """Multi-head softmax attention, one head at a time, RoPE on each head's q and k."""
    b, n, c = q.shape
    d = c // heads
    outs = []
    for head in range(heads):
        cols = slice(head * d, (head + 1) * d)
        qh = rotate_pairs(q[:, None, :, cols], qpos, base)[:, 0]
        kh = rotate_pairs(k[:, None, :, cols], kpos, base)[:, 0]
        weights = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(d), dim=-1)
        outs.append(weights @ v[..., cols])
    return torch.cat(outs, -1)


def self_attention(x, w, heads, pos, base):
    c = x.shape[-1]
    qkv = linear(x, w, "qkv")
    q, k, v = qkv[..., :c], qkv[..., c:2 * c], qkv[..., 2 * c:]
    return linear(attention(q, k, v, heads, pos, pos, base), w, "proj")


def cross_attention(x, y, w, heads, xpos, ypos, base):
    q, k, v = linear(x, w, "projq"), linear(y, w, "projk"), linear(y, w, "projv")
    return linear(attention(q, k, v, heads, xpos, ypos, base), w, "proj")


def sub(w, prefix):
    return {k[len(prefix):]: v for k, v in w.items() if k.startswith(prefix)}


def randomised(module, seed):
    """``module`` in float64 with every parameter random (LayerNorm weights near 1)."""
    g = torch.Generator().manual_seed(seed)
    module = module.double()
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=F64)
            p.copy_(1 + 0.1 * noise if "norm" in name and name.endswith("weight") else
                    noise / math.sqrt(p.shape[-1]) if p.dim() > 1 else 0.1 * noise)
    return module


# --------------------------------------------------------------------------- RoPE
@pytest.mark.parametrize("base", [100.0, 10000.0])
def test_rope_is_a_rotation_of_channel_pairs(base):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 16, generator=g, dtype=F64)
    pos = torch.randint(-2, 9, (2, 5, 2), generator=g)  # negative positions too (CUT3R's pose token: -1)
    expected = rotate_pairs(x, pos, base)
    out = croco.rope_2d(x, pos) if base == croco.ROPE_BASE else croco.rope_2d(x, pos, base)
    assert torch.allclose(out, expected, atol=1e-12)
    assert torch.allclose(out.norm(dim=-1), x.norm(dim=-1), atol=1e-12)  # a rotation keeps lengths


def test_rope_frequencies_written_out_for_head_width_8():
    """d = 8: the row half is channels 0..3, pairs (0, 2) at frequency 1 and (1, 3) at base^-1/2;
    the column half is the same on channels 4..7."""
    base = 25.0
    x = torch.zeros(1, 1, 1, 8, dtype=F64)
    x[..., 1] = 1.0  # unit vector on the second row pair, first channel
    x[..., 4] = 1.0  # unit vector on the first column pair, first channel
    out = croco.rope_2d(x, torch.tensor([[[3, 2]]]), base)[0, 0, 0]
    row_angle, col_angle = 3 * 25.0 ** -0.5, 2 * 1.0
    expected = torch.zeros(8, dtype=F64)
    expected[1], expected[3] = math.cos(row_angle), math.sin(row_angle)
    expected[4], expected[6] = math.cos(col_angle), math.sin(col_angle)
    assert torch.allclose(out, expected, atol=1e-12)
    # at the origin nothing moves; another base moves the row pair by another angle
    assert torch.equal(croco.rope_2d(x, torch.zeros(1, 1, 2, dtype=torch.long), base), x)
    assert not torch.allclose(croco.rope_2d(x, torch.tensor([[[3, 2]]]), 100.0)[0, 0, 0], expected)


def test_patch_positions_are_row_major():
    pos = croco.patch_positions(2, 2, 3)
    assert pos.shape == (2, 6, 2) and pos.dtype == torch.long
    assert pos[1].tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]


# --------------------------------------------------------------------------- layers
def test_mlp_is_exact_gelu_between_two_linears():
    layer = randomised(croco.Mlp(6, 11), seed=1)
    w = {f"mlp.{k}": v for k, v in layer.state_dict().items()}
    x = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(2), dtype=F64)
    assert torch.allclose(layer(x), mlp(x, w), atol=1e-12)


def test_self_attention_without_qkv_bias_and_another_base():
    layer = randomised(croco.SelfAttention(32, 4, rope_base=1000.0, qkv_bias=False), seed=3)
    w = layer.state_dict()
    assert set(w) == {"qkv.weight", "proj.weight", "proj.bias"}
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 7, 32, generator=g, dtype=F64)
    pos = torch.randint(0, 6, (2, 7, 2), generator=g)
    assert torch.allclose(layer(x, pos), self_attention(x, w, 4, pos, 1000.0), atol=1e-10)
    # the base is really used: the default base gives another result with the same weights
    default = croco.SelfAttention(32, 4, qkv_bias=False).double()
    default.load_state_dict(w)
    assert not torch.allclose(default(x, pos), layer(x, pos), atol=1e-6)


# --------------------------------------------------------------------------- blocks
@pytest.mark.parametrize("kwargs", [{}, {"rope_base": 500.0, "norm_eps": 1e-2, "qkv_bias": False}])
def test_encoder_block_is_pre_norm_attention_then_mlp(kwargs):
    heads, base, eps = 4, kwargs.get("rope_base", 100.0), kwargs.get("norm_eps", 1e-6)
    block = randomised(croco.EncoderBlock(32, heads, 40, **kwargs), seed=5)
    w = block.state_dict()
    assert {"norm1.weight", "attn.qkv.weight", "attn.proj.bias", "norm2.bias", "mlp.fc1.weight",
            "mlp.fc2.bias"} <= set(w) and ("attn.qkv.bias" in w) == kwargs.get("qkv_bias", True)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 9, 32, generator=g, dtype=F64) * 0.3  # small variance: the eps matters
    pos = torch.randint(0, 5, (2, 9, 2), generator=g)
    h = x + self_attention(layer_norm(x, w, "norm1", eps), sub(w, "attn."), heads, pos, base)
    expected = h + mlp(layer_norm(h, w, "norm2", eps), w)
    assert torch.allclose(block(x, pos), expected, atol=1e-10)


def test_decoder_block_cross_attends_to_the_other_view():
    heads, base, eps = 2, 40.0, 1e-3
    block = randomised(croco.DecoderBlock(16, heads, 24, rope_base=base, norm_eps=eps), seed=7)
    w = block.state_dict()
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(1, 5, 16, generator=g, dtype=F64), torch.randn(1, 8, 16, generator=g, dtype=F64)
    xpos, ypos = torch.randint(0, 4, (1, 5, 2), generator=g), torch.randint(0, 4, (1, 8, 2), generator=g)
    h = x + self_attention(layer_norm(x, w, "norm1", eps), sub(w, "attn."), heads, xpos, base)
    h = h + cross_attention(layer_norm(h, w, "norm2", eps), layer_norm(y, w, "norm_y", eps), sub(w, "cross_attn."),
                            heads, xpos, ypos, base)
    expected = h + mlp(layer_norm(h, w, "norm3", eps), w)
    out = block(x, y, xpos, ypos)
    assert torch.allclose(out, expected, atol=1e-10)
    # the other view is a set: permuting its tokens with their positions changes nothing ...
    perm = torch.randperm(8, generator=g)
    assert torch.allclose(block(x, y[:, perm], xpos, ypos[:, perm]), out, atol=1e-10)
    # ... but its content and its positions both matter
    assert not torch.allclose(block(x, y.flip(1), xpos, ypos), out, atol=1e-6)
    assert not torch.allclose(block(x, y, xpos, ypos + 1 - 2 * (ypos % 2)), out, atol=1e-6)


def test_cross_attention_to_a_single_token_is_its_projected_value():
    """With one key the softmax is 1: every query gets proj(projv(memory)), whatever RoPE does."""
    layer = randomised(croco.CrossAttention(16, 4, rope_base=7.0), seed=9)
    w = layer.state_dict()
    g = torch.Generator().manual_seed(10)
    x, memory = torch.randn(2, 6, 16, generator=g, dtype=F64), torch.randn(2, 1, 16, generator=g, dtype=F64)
    expected = linear(linear(memory, w, "projv"), w, "proj").expand(2, 6, 16)
    out = layer(x, memory, torch.randint(0, 9, (2, 6, 2), generator=g), torch.tensor([[[-1, -1]]] * 2))
    assert torch.allclose(out, expected, atol=1e-12)


def test_patch_embed_is_one_dot_product_per_patch():
    embed = randomised(croco.PatchEmbed(4, 5), seed=11)
    images = torch.randn(2, 3, 8, 12, generator=torch.Generator().manual_seed(12), dtype=F64)
    tokens, pos = embed(images)
    assert tokens.shape == (2, 6, 5) and pos.shape == (2, 6, 2)
    weight, bias = embed.proj.weight.reshape(5, -1), embed.proj.bias
    for n, (r, c) in enumerate(pos[0].tolist()):
        assert (r, c) == divmod(n, 3)
        patch = images[:, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4].reshape(2, -1)
        assert torch.allclose(tokens[:, n], patch @ weight.T + bias, atol=1e-12)
