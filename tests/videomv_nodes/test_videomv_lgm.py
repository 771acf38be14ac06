"""LGM (VideoMV's reconstruction network): architecture, strict loading of both key layouts,
output activations and the conversion to GaussianScene.

The network is checked against an independent functional forward written here from LGM's
key layout (ResNets, multi-view attention with a fused qkv, stride-2 downsampling convs,
nearest x2 + conv upsampling, the skip stack, the 1x1 head), working directly on a state dict.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from consistent_video.nodes.splats.gaussians import GaussianScene, sh_to_rgb
from consistent_video.nodes.comfy.weights import WeightsError, random_state
from consistent_video.videomv_nodes import family as fam
from consistent_video.videomv_nodes.convert import load_t2v_unet
from consistent_video.videomv_nodes.lgm import (
    LGM, RELEASE, VIDEOMV_PREFIX, LGMConfig, LGMMultiViewAttention, LGMResnetBlock, activate, infer_config,
    lgm_input, load_lgm, smoke_config, smoke_state, to_gaussian_scene)

GROUPS, HEADS, S = 32, 16, 0.5 ** 0.5


# ----------------------------------------------------------------------------- independent reference
def _gn(sd, p, x):
    return F.group_norm(x, GROUPS, sd[p + "weight"], sd[p + "bias"], eps=1e-5)


def _conv(sd, p, x, stride=1):
    w = sd[p + "weight"]
    return F.conv2d(x, w, sd[p + "bias"], stride=stride, padding=w.shape[-1] // 2)


def ref_resnet(sd, p, x):
    h = _conv(sd, p + "conv1.", F.silu(_gn(sd, p + "norm1.", x)))
    h = _conv(sd, p + "conv2.", F.silu(_gn(sd, p + "norm2.", h)))
    res = _conv(sd, p + "shortcut.", x) if p + "shortcut.weight" in sd else x
    return (h + res) * S


def ref_attention(sd, p, x, views):
    """Self-attention over the pixels of all ``views`` views of each object, explicit softmax."""
    bv, c, h, w = x.shape
    t = _gn(sd, p + "norm.", x).view(bv // views, views, c, h, w)
    t = torch.einsum("bvchw->bvhwc", t).reshape(bv // views, views * h * w, c)
    wq, wk, wv = sd[p + "attn.qkv.weight"].chunk(3, dim=0)
    d = c // HEADS
    q, k, v = ((t @ m.T).unflatten(-1, (HEADS, d)) for m in (wq, wk, wv))
    weights = torch.softmax(torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(d), dim=-1)
    out = torch.einsum("bhnm,bmhd->bnhd", weights, v).flatten(2)
    out = out @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
    out = torch.einsum("bvhwc->bvchw", out.view(bv // views, views, h, w, c)).reshape(bv, c, h, w)
    return (out + x) * S


def _count(sd, p):
    return len({k[len(p):].split(".")[0] for k in sd if k.startswith(p)})


def ref_down(sd, p, x, views):
    skips = []
    for j in range(_count(sd, p + "nets.")):
        x = ref_resnet(sd, f"{p}nets.{j}.", x)
        if f"{p}attns.{j}.norm.weight" in sd:
            x = ref_attention(sd, f"{p}attns.{j}.", x, views)
        skips.append(x)
    if p + "downsample.weight" in sd:
        x = _conv(sd, p + "downsample.", x, stride=2)
        skips.append(x)
    return x, skips


def ref_up(sd, p, x, skips, views):
    for j in range(_count(sd, p + "nets.")):
        x = ref_resnet(sd, f"{p}nets.{j}.", torch.cat([x, skips.pop()], 1))
        if f"{p}attns.{j}.norm.weight" in sd:
            x = ref_attention(sd, f"{p}attns.{j}.", x, views)
    if p + "upsample.weight" in sd:
        x = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        x = _conv(sd, p + "upsample.", x)
    return x


def ref_lgm(sd, images):
    """Raw LGM features [B, V, 14, h, w] of images [B, V, 9, H, W] from a state dict with LGM's keys."""
    b, views = images.shape[:2]
    x = _conv(sd, "unet.conv_in.", images.flatten(0, 1))
    skips = [x]
    for i in range(_count(sd, "unet.down_blocks.")):
        x, new = ref_down(sd, f"unet.down_blocks.{i}.", x, views)
        skips += new
    x = ref_resnet(sd, "unet.mid_block.nets.0.", x)
    if "unet.mid_block.attns.0.norm.weight" in sd:
        x = ref_attention(sd, "unet.mid_block.attns.0.", x, views)
    x = ref_resnet(sd, "unet.mid_block.nets.1.", x)
    for i in range(_count(sd, "unet.up_blocks.")):
        x = ref_up(sd, f"unet.up_blocks.{i}.", x, skips, views)
    x = _conv(sd, "unet.conv_out.", F.silu(_gn(sd, "unet.norm_out.", x)))
    x = _conv(sd, "conv.", x)
    return x.view(b, views, *x.shape[1:])


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def state(dense_random_state):
    return dense_random_state(LGM(smoke_config()))


@pytest.fixture(scope="module")
def model(state):
    return load_lgm(state)


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 4, 9, 16, 16, generator=torch.Generator().manual_seed(3))


# ----------------------------------------------------------------------------- architecture
def test_release_architecture_has_videomvs_lgm_key_count_and_size():
    with torch.device("meta"):
        net = LGM(RELEASE)
    sd = net.state_dict()
    assert len(sd) == 376 and sum(t.numel() for t in sd.values()) == 415_042_848
    assert infer_config(sd) == RELEASE and RELEASE.output_size(256) == 128
    assert tuple(sd["unet.down_blocks.5.attns.1.attn.qkv.weight"].shape) == (3072, 1024)
    assert "unet.down_blocks.5.downsample.weight" not in sd and "unet.down_blocks.4.downsample.weight" in sd
    assert "unet.up_blocks.3.attns.0.norm.weight" not in sd and "unet.up_blocks.2.attns.2.norm.weight" in sd
    assert tuple(sd["unet.up_blocks.4.nets.2.conv1.weight"].shape) == (128, 128 + 64, 3, 3)  # last skip: 64
    assert "unet.up_blocks.4.upsample.weight" not in sd and tuple(sd["conv.weight"].shape) == (14, 14, 1, 1)


def test_resnet_block_matches_reference():
    gen = torch.Generator().manual_seed(0)
    for cin, cout in ((32, 64), (64, 64)):
        block = LGMResnetBlock(cin, cout, GROUPS)
        sd = {f"p.{k}": v for k, v in random_state(block, gen).items()}
        block.load_state_dict({k[2:]: v for k, v in sd.items()})
        x = torch.randn(3, cin, 6, 5, generator=gen)
        torch.testing.assert_close(block(x), ref_resnet(sd, "p.", x), rtol=1e-5, atol=1e-5)
        assert ("p.shortcut.weight" in sd) == (cin != cout)


def test_multiview_attention_matches_reference_and_mixes_views():
    gen = torch.Generator().manual_seed(1)
    attn = LGMMultiViewAttention(64, HEADS, GROUPS)
    sd = {f"p.{k}": v * 8 if v.dim() == 2 else v for k, v in random_state(attn, gen).items()}
    attn.load_state_dict({k[2:]: v for k, v in sd.items()})
    x = torch.randn(2 * 4, 64, 3, 3, generator=gen)
    out = attn(x, 4)
    torch.testing.assert_close(out, ref_attention(sd, "p.", x, 4), rtol=1e-5, atol=1e-5)
    changed = x.clone()
    changed[3] = torch.randn(64, 3, 3, generator=gen)  # last view of object 0
    moved = (attn(changed, 4) - out).abs().flatten(1).amax(1)
    assert moved[0] > 1e-4 and moved[4:].max() == 0  # other views of object 0 see it; object 1 does not


def test_down_and_up_blocks_match_reference(model, state):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 32, 8, 8, generator=gen)
    out, skips = model.unet.down_blocks[1](x, 4)
    ref_out, ref_skips = ref_down(state, "unet.down_blocks.1.", x, 4)
    assert out.shape == (4, 64, 4, 4) and len(skips) == 3 and skips[1].shape == (4, 64, 8, 8)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for a, b in zip(skips, ref_skips):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    y = torch.randn(4, 64, 2, 2, generator=gen)
    stack = [torch.randn(4, 64, 2, 2, generator=gen) for _ in range(3)]
    up = model.unet.up_blocks[0](y, list(stack), 4)
    assert up.shape == (4, 64, 4, 4)
    torch.testing.assert_close(up, ref_up(state, "unet.up_blocks.0.", y, list(stack), 4), rtol=1e-5, atol=1e-5)


def test_whole_tiny_network_matches_reference(model, state, images):
    raw = model(images)
    assert raw.shape == (2, 4, 14, 8, 8)
    torch.testing.assert_close(raw, ref_lgm(state, images), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model(images[1:]), raw[1:], rtol=1e-4, atol=1e-5)  # objects independent
    with pytest.raises(ValueError, match="divisible by 4"):
        model(images[..., :14, :14])
    with pytest.raises(ValueError, match="9"):
        model(images[:, :, :8])


# ----------------------------------------------------------------------------- activations, scenes
def test_activations_and_gaussian_layout():
    raw = torch.randn(2, 4, 14, 3, 5, generator=torch.Generator().manual_seed(4)) * 5
    g = activate(raw)
    assert g.shape == (2, 4 * 3 * 5, 14)
    # Gaussian n of object b is pixel (view, row, col) in view-row-column order
    v, r, c = 2, 1, 3
    raw_px, g_px = raw[1, v, :, r, c], g[1, (v * 3 + r) * 5 + c]
    torch.testing.assert_close(g_px[0:3], raw_px[0:3].clamp(-1, 1))
    torch.testing.assert_close(g_px[3], torch.sigmoid(raw_px[3]))
    torch.testing.assert_close(g_px[4:7], 0.1 * torch.log1p(torch.exp(raw_px[4:7])))
    torch.testing.assert_close(g_px[7:11], raw_px[7:11] / raw_px[7:11].norm())
    torch.testing.assert_close(g_px[11:14], (torch.tanh(raw_px[11:14]) + 1) / 2)
    assert g[..., 0:3].abs().max() <= 1 and (g[..., 3] > 0).all() and (g[..., 3] < 1).all()
    assert (g[..., 4:7] > 0).all() and torch.allclose(g[..., 7:11].norm(dim=-1), torch.ones(2, 60))
    assert g[..., 11:].min() >= 0 and g[..., 11:].max() <= 1


def test_gaussian_scene_keeps_lgm_values_and_colours(model, images):
    g = model.forward_gaussians(images)
    assert g.shape == (2, 4 * 8 * 8, 14) and torch.isfinite(g).all()
    scene = to_gaussian_scene(g[0])
    assert isinstance(scene, GaussianScene) and len(scene) == 256 and scene.sh_degree == 0
    torch.testing.assert_close(scene.means, g[0, :, 0:3])
    torch.testing.assert_close(scene.scales, g[0, :, 4:7])
    torch.testing.assert_close(scene.rotations, g[0, :, 7:11])  # (w, x, y, z) in both
    torch.testing.assert_close(scene.opacities, g[0, :, 3])
    dirs = torch.randn(256, 3, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(sh_to_rgb(scene.sh, dirs), g[0, :, 11:14], rtol=1e-5, atol=1e-6)
    kept = to_gaussian_scene(g[0], min_opacity=float(g[0, :, 3].median()))
    assert 0 < len(kept) < 256 and (kept.opacities >= g[0, :, 3].median()).all()
    with pytest.raises(ValueError, match=r"\[N, 14\]"):
        to_gaussian_scene(g)


def test_lgm_input_normalises_rgb_and_appends_rays():
    rgb = torch.full((1, 4, 3, 2, 2), 0.5)
    rays = torch.randn(1, 4, 6, 2, 2)
    x = lgm_input(rgb, rays)
    assert x.shape == (1, 4, 9, 2, 2) and torch.equal(x[:, :, 3:], rays)
    torch.testing.assert_close(x[0, 0, :3, 0, 0], torch.tensor([(0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224,
                                                               (0.5 - 0.406) / 0.225]))


# ----------------------------------------------------------------------------- weights
def test_both_key_layouts_load_strictly_to_the_same_network(state, images, model, tmp_path):
    ref = model(images)
    videomv = load_lgm({VIDEOMV_PREFIX + k: v for k, v in state.items()})
    torch.testing.assert_close(videomv(images), ref)
    path = tmp_path / "model.safetensors"
    save_file({k: v.half() for k, v in state.items()}, str(path))
    standalone = load_lgm(path)
    assert next(standalone.parameters()).dtype == torch.float32 and not next(standalone.parameters()).requires_grad
    assert standalone.config == smoke_config() and not standalone.training
    torch.testing.assert_close(standalone(images), ref, rtol=0.05, atol=0.02)  # fp16 weights
    assert next(load_lgm(path, dtype=torch.float16).parameters()).dtype == torch.float16


def test_missing_unexpected_misshaped_and_foreign_keys_are_named(state):
    config = smoke_config()
    missing = {k: v for k, v in state.items() if k != "unet.up_blocks.0.attns.1.attn.proj.bias"}
    with pytest.raises(WeightsError, match=r"missing key.*unet\.up_blocks\.0\.attns\.1\.attn\.proj\.bias"):
        load_lgm(missing, config=config)
    with pytest.raises(WeightsError, match=r"unexpected key.*unet\.extra\.weight"):
        load_lgm({**state, "unet.extra.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match=r"unexpected key.*input_blocks\.0\.0\.weight"):
        load_lgm({**{VIDEOMV_PREFIX + k: v for k, v in state.items()}, "input_blocks.0.0.weight": torch.zeros(1)})
    bad = dict(state, **{"conv.weight": torch.zeros(14, 14, 3, 3)})
    with pytest.raises(WeightsError, match=r"shape mismatch.*conv\.weight"):
        load_lgm(bad)
    with pytest.raises(WeightsError, match="14 channels per Gaussian, got 3"):
        load_lgm(dict(state, **{"unet.conv_out.weight": torch.zeros(3, 64, 3, 3)}))
    with pytest.raises(WeightsError, match="not an LGM state dict.*input_blocks"):
        load_lgm({"input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3), "out.2.weight": torch.zeros(4)})


def test_release_level_count_names_missing_attention_tensors():
    """With the release's 6 down / 5 up levels the attention pattern is the release's, so a
    checkpoint without one level's attention is refused by name, not loaded as attention-free."""
    small = LGMConfig(down_channels=(32,) * 6, up_channels=(32,) * 5)
    with torch.device("meta"):
        sd = LGM(small).state_dict()
    sd = {k: torch.empty(v.shape) for k, v in sd.items() if not k.startswith("unet.down_blocks.3.attns.")}
    with pytest.raises(WeightsError, match=r"missing key.*unet\.down_blocks\.3\.attns\.0\.attn\.proj\.bias"):
        load_lgm(sd)


def test_smoke_release_folder_carries_a_strictly_loadable_lgm_in_both_layouts(tmp_path):
    fam.write_smoke_unet(tmp_path / "t2v.pth", fam.T2V)
    _, aside = load_t2v_unet(tmp_path / "t2v.pth")
    assert set(aside) == {VIDEOMV_PREFIX + k for k in smoke_state()}
    from_unet = load_lgm(aside)
    save_file(smoke_state(dtype=torch.float16), str(tmp_path / fam.LGM_FILE))
    standalone = load_lgm(tmp_path / fam.LGM_FILE)
    x = torch.randn(1, 4, 9, 16, 16, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(standalone(x), from_unet(x), rtol=0.05, atol=0.02)
