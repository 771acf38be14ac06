"""The DPT head of nodes/networks/dpt.py against independent computations: 2x bilinear upsampling
with aligned corners as interpolation matrices and on hand values, 3x3 convolutions as sums of
shifted images, the fusion step and the whole adapter written out functionally from the state
dict's names, on non-default hooks, layer widths and a non-square image."""
import math

import pytest
import torch
import torch.nn.functional as F

from consistent_video.nodes.networks import dpt

F64 = torch.float64


# --------------------------------------------------------------------------- independent references
def up2_matrix(n):
    """``[2n, n]`` weights of 2x linear interpolation with aligned corners: output o samples the
    input at o (n - 1) / (2n - 1)."""
    m = torch.zeros(2 * n, n, dtype=F64)
    for o in range(2 * n):
        src = o * (n - 1) / (2 * n - 1) if n > 1 else 0.0
        lo = min(int(math.floor(src)), n - 1)
        hi = min(lo + 1, n - 1)
        m[o, lo] += 1 - (src - lo)
        m[o, hi] += src - lo
    return m


def up2(x):
    return torch.einsum("oh,bchw,pw->bcop", up2_matrix(x.shape[2]), x, up2_matrix(x.shape[3]))


def conv3x3(x, weight, bias=None):
    """Zero-padded 3x3 convolution as a sum of nine shifted images."""
    h, w = x.shape[2:]
    padded = F.pad(x, (1, 1, 1, 1))
    out = sum(torch.einsum("oc,bchw->bohw", weight[:, :, dy, dx], padded[:, :, dy:dy + h, dx:dx + w])
              for dy in range(3) for dx in range(3))
    return out if bias is None else out + bias[:, None, None]


def conv1x1(x, weight, bias):
    return torch.einsum("oc,bchw->bohw", weight[:, :, 0, 0], x) + bias[:, None, None]


def rcu(x, w, prefix):
    t = conv3x3(x.clamp_min(0), w[f"{prefix}conv1.weight"], w[f"{prefix}conv1.bias"])
    return x + conv3x3(t.clamp_min(0), w[f"{prefix}conv2.weight"], w[f"{prefix}conv2.bias"])


def fusion(x, skip, w, prefix=""):
    if skip is not None:
        x = x + rcu(skip, w, f"{prefix}resConfUnit1.")
    x = up2(rcu(x, w, f"{prefix}resConfUnit2."))
    return conv1x1(x, w[f"{prefix}out_conv.weight"], w[f"{prefix}out_conv.bias"])


def randomised(module, seed):
    g = torch.Generator().manual_seed(seed)
    module = module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) / math.sqrt(p[0].numel() if p.dim() > 1 else 10))
    return module


# --------------------------------------------------------------------------- pieces
def test_upsampling_hand_values():
    """A 2x2 ramp 2 r + c sampled at r, c in {0, 1/3, 2/3, 1} (aligned corners) stays the ramp."""
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=F64)[None, None]
    t = torch.arange(4, dtype=F64) / 3
    assert torch.allclose(dpt.upsample2x(x)[0, 0], 2 * t[:, None] + t[None, :], atol=1e-12)
    assert torch.equal(dpt.Upsample2x()(x), dpt.upsample2x(x))
    y = torch.randn(1, 2, 3, 5, dtype=F64)
    assert torch.allclose(dpt.upsample2x(y), up2(y), atol=1e-12)


def test_residual_conv_unit_is_pre_activation_residual():
    unit = randomised(dpt.ResidualConvUnit(3), seed=1)
    x = torch.randn(2, 3, 4, 6, generator=torch.Generator().manual_seed(2), dtype=F64)
    assert torch.allclose(unit(x), rcu(x, unit.state_dict(), ""), atol=1e-12)


@pytest.mark.parametrize("with_skip", [True, False])
def test_fusion_block_against_manual_conv_and_upsampling(with_skip):
    block = randomised(dpt.FusionBlock(4), seed=3)
    g = torch.Generator().manual_seed(4)
    x, skip = torch.randn(1, 4, 3, 2, generator=g, dtype=F64), torch.randn(1, 4, 3, 2, generator=g, dtype=F64)
    out = block(x, skip) if with_skip else block(x)
    assert out.shape == (1, 4, 6, 4)
    assert torch.allclose(out, fusion(x, skip if with_skip else None, block.state_dict()), atol=1e-12)


# --------------------------------------------------------------------------- the adapter
def adapter_reference(layers, w, hooks, image_size):
    """DUSt3R's DPT adapter from its state dict: tokens to a row-major grid, the four reassembly
    paths (x4, x2, x1, /2), projections, fusion from the coarsest level, regression head."""
    gh, gw = image_size[0] // 16, image_size[1] // 16
    maps = []
    for i, hook in enumerate(hooks):
        tokens = layers[hook]
        grid = torch.zeros(tokens.shape[0], tokens.shape[2], gh, gw, dtype=F64)
        for n in range(tokens.shape[1]):
            grid[:, :, n // gw, n % gw] = tokens[:, n]
        a = f"act_postprocess.{i}."
        t = conv1x1(grid, w[a + "0.weight"], w[a + "0.bias"])
        if i == 0:
            t = F.conv_transpose2d(t, w[a + "1.weight"], w[a + "1.bias"], stride=4)
        elif i == 1:
            t = F.conv_transpose2d(t, w[a + "1.weight"], w[a + "1.bias"], stride=2)
        elif i == 3:
            t = F.conv2d(t, w[a + "1.weight"], w[a + "1.bias"], stride=2, padding=1)
        maps.append(conv3x3(t, w[f"scratch.layer{i + 1}_rn.weight"]))
    path = fusion(maps[3], None, w, "scratch.refinenet4.")[:, :, :maps[2].shape[2], :maps[2].shape[3]]
    for level in (3, 2, 1):
        path = fusion(path, maps[level - 1], w, f"scratch.refinenet{level}.")
    path = up2(conv3x3(path, w["head.0.weight"], w["head.0.bias"]))
    path = conv3x3(path, w["head.2.weight"], w["head.2.bias"]).clamp_min(0)
    return conv1x1(path, w["head.4.weight"], w["head.4.bias"])


def test_dpt_adapter_against_functional_forward_with_other_hooks_and_widths():
    hooks, dims_in = (1, 3, 4, 6), (12, 10, 10, 14)
    adapter = randomised(dpt.DPTAdapter(dims_in, (3, 5, 6, 7), 8, hooks, last_dim=5, out_channels=2), seed=5)
    w = adapter.state_dict()
    g = torch.Generator().manual_seed(6)
    layers = [torch.randn(2, 6, dims_in[hooks.index(i)] if i in hooks else 9, generator=g, dtype=F64)
              for i in range(7)]
    out = adapter(layers, (32, 48))  # a 2 x 3 patch grid
    assert out.shape == (2, 2, 32, 48)
    assert torch.allclose(out, adapter_reference(layers, w, hooks, (32, 48)), atol=1e-10)
    assert adapter.fuse(layers, (32, 48)).shape == (2, 8, 16, 24)
    # only the hooked layers are read
    others = [t if i in hooks else torch.zeros_like(t) for i, t in enumerate(layers)]
    assert torch.equal(adapter(others, (32, 48)), out)
    # the head wrapper adds the checkpoints' ``dpt.`` level and nothing else
    head = dpt.PixelHead(adapter)
    assert list(head.state_dict()) == [f"dpt.{k}" for k in w]
    assert torch.equal(head(layers, (32, 48)), out)


def test_dpt_projection_aliases_are_one_module():
    trunk = dpt.DPTTrunk((8, 8, 8, 8), (2, 3, 4, 5), 6, (0, 1, 2, 3))
    state = trunk.state_dict()
    for i in range(4):
        assert trunk.scratch.layer_rn[i] is getattr(trunk.scratch, f"layer{i + 1}_rn")
        assert state[f"scratch.layer_rn.{i}.weight"].shape == (6, (2, 3, 4, 5)[i], 3, 3)
        assert f"scratch.layer{i + 1}_rn.weight" in state and f"scratch.layer{i + 1}_rn.bias" not in state
    assert not any(k.startswith("head.") for k in state)
    with pytest.raises(ValueError, match="4 entries"):
        dpt.DPTTrunk((8, 8, 8), (2, 3, 4, 5), 6, (0, 1, 2, 3))
