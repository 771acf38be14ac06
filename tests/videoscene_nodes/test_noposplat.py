"""NoPoSplat in the pack's own code: pieces against independent computations (RoPE as complex
rotations, attention blocks and the DPT fusion written out functionally, the Gaussian adapter's
activations by hand), the release's key layout, strict loading, the smoke round trip, and the
validity of the predicted Gaussians."""
import argparse
import math
import re

import pytest
import torch
import torch.nn.functional as F

from consistent_video.nodes.comfy import families
from consistent_video.nodes.cameras.geometry import quaternion_to_matrix
from consistent_video.nodes.splats.gaussians import GaussianScene
from consistent_video.nodes.comfy.weights import WeightsError
from consistent_video.nodes.networks import croco, dpt
from consistent_video.videoscene_nodes import noposplat as nps
from consistent_video.videoscene_nodes import noposplat_family as fam

TINY = nps.NoPoSplatConfig(patch_size=16, enc_dim=32, enc_depth=2, enc_heads=2, enc_mlp=48, dec_dim=24, dec_depth=4,
                           dec_heads=2, dec_mlp=40, dpt_layer_dims=(4, 6, 8, 10), dpt_features=8, dpt_last_dim=6,
                           sh_degree=2)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    folder = tmp_path_factory.mktemp("noposplat")
    fam.write_smoke_noposplat(folder)
    return folder


@pytest.fixture(scope="module")
def handle(smoke):
    return families.get(fam.NAME).load(smoke, torch.device("cpu"), torch.float32)


def _state_of(folder):
    return torch.load(str(folder / fam.CHECKPOINT), weights_only=True)["state_dict"]


# --------------------------------------------------------------------------- independent references
def rope_complex(x, positions, base=100.0):
    """2-D RoPE as complex multiplication: in each half (row, column) of width h, channel i and
    i + h/2 are the real and imaginary part of z_i, multiplied by exp(1j * pos * base^(-2i/h))."""
    out = []
    for axis, part in enumerate(x.double().chunk(2, dim=-1)):
        h = part.shape[-1]
        z = torch.complex(part[..., :h // 2], part[..., h // 2:])
        freq = base ** (-2.0 * torch.arange(h // 2, dtype=torch.float64) / h)
        z = z * torch.exp(1j * positions[..., axis].double()[:, None, :, None] * freq)
        out.append(torch.cat([z.real, z.imag], -1))
    return torch.cat(out, -1).to(x.dtype)


def attention_reference(q_in, kv_in, weights, heads, qpos, kpos, names):
    """Multi-head attention written out: per head softmax(q k^T / sqrt(d)) v, RoPE on q and k."""
    b, n, c = q_in.shape
    d = c // heads
    if names == "qkv":
        w, bias = weights["qkv.weight"], weights["qkv.bias"]
        q, k, v = (q_in @ w[i * c:(i + 1) * c].T + bias[i * c:(i + 1) * c] for i in range(3))
    else:
        q = q_in @ weights["projq.weight"].T + weights["projq.bias"]
        k = kv_in @ weights["projk.weight"].T + weights["projk.bias"]
        v = kv_in @ weights["projv.weight"].T + weights["projv.bias"]
    split = lambda t: t.reshape(b, -1, heads, d).permute(0, 2, 1, 3)  # noqa: E731
    q, k, v = rope_complex(split(q), qpos), rope_complex(split(k), kpos), split(v)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(d)
    out = torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v).permute(0, 2, 1, 3).reshape(b, n, c)
    return out @ weights["proj.weight"].T + weights["proj.bias"]


def layer_norm(x, weights, name):
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6) * weights[f"{name}.weight"] + weights[f"{name}.bias"]


def mlp(x, weights):
    h = x @ weights["mlp.fc1.weight"].T + weights["mlp.fc1.bias"]
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    return h @ weights["mlp.fc2.weight"].T + weights["mlp.fc2.bias"]


def sub(weights, prefix):
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def bilinear_up2_matrix(n):
    """[2n, n] interpolation weights of 2x bilinear upsampling with aligned corners."""
    m = torch.zeros(2 * n, n, dtype=torch.float64)
    for o in range(2 * n):
        src = o * (n - 1) / (2 * n - 1) if n > 1 else 0.0
        lo = min(int(math.floor(src)), n - 1)
        hi = min(lo + 1, n - 1)
        m[o, lo] += 1 - (src - lo)
        m[o, hi] += src - lo
    return m


# --------------------------------------------------------------------------- pieces
def test_rope_matches_complex_rotation_and_is_relative():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 16, generator=g, dtype=torch.float64)
    pos = torch.randint(0, 9, (2, 7, 2), generator=g)
    assert torch.allclose(croco.rope_2d(x, pos), rope_complex(x, pos), atol=1e-12)
    # scores depend on the position difference only (the point of RoPE)
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)
    p = lambda r, c: torch.tensor([[[r, c]]])  # noqa: E731
    a = (croco.rope_2d(q, p(2, 5)) * croco.rope_2d(k, p(1, 1))).sum()
    b = (croco.rope_2d(q, p(6, 7)) * croco.rope_2d(k, p(5, 3))).sum()
    assert torch.allclose(a, b, atol=1e-12)
    with pytest.raises(ValueError, match="multiple of 4"):
        croco.rope_2d(torch.randn(1, 1, 2, 6), torch.zeros(1, 2, 2, dtype=torch.long))


def test_encoder_block_matches_functional_forward(dense_random_state):
    block = nps.EncoderBlock(32, 2, 48, 100.0).double()
    block.load_state_dict(dense_random_state(block, seed=1))
    w = block.state_dict()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 10, 32, generator=g, dtype=torch.float64)
    pos = torch.randint(0, 5, (2, 10, 2), generator=g)
    h = x + attention_reference(layer_norm(x, w, "norm1"), None, sub(w, "attn."), 2, pos, pos, "qkv")
    expected = h + mlp(layer_norm(h, w, "norm2"), w)
    assert torch.allclose(block(x, pos), expected, atol=1e-10)


def test_decoder_block_matches_functional_forward(dense_random_state):
    block = nps.DecoderBlock(24, 2, 40, 100.0).double()
    block.load_state_dict(dense_random_state(block, seed=3))
    w = block.state_dict()
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(1, 6, 24, generator=g, dtype=torch.float64), torch.randn(1, 9, 24, generator=g,
                                                                                 dtype=torch.float64)
    xpos, ypos = torch.randint(0, 4, (1, 6, 2), generator=g), torch.randint(0, 4, (1, 9, 2), generator=g)
    h = x + attention_reference(layer_norm(x, w, "norm1"), None, sub(w, "attn."), 2, xpos, xpos, "qkv")
    h = h + attention_reference(layer_norm(h, w, "norm2"), layer_norm(y, w, "norm_y"), sub(w, "cross_attn."), 2,
                                xpos, ypos, "proj")
    expected = h + mlp(layer_norm(h, w, "norm3"), w)
    assert torch.allclose(block(x, y, xpos, ypos), expected, atol=1e-10)


def test_dpt_fusion_matches_explicit_bilinear_upsampling(dense_random_state):
    block = dpt.FusionBlock(4).double()
    block.load_state_dict(dense_random_state(block, seed=5))
    w = block.state_dict()
    g = torch.Generator().manual_seed(6)
    x, skip = torch.randn(1, 4, 3, 5, generator=g, dtype=torch.float64), torch.randn(1, 4, 3, 5, generator=g,
                                                                                      dtype=torch.float64)

    def rcu(t, name):
        t1 = F.conv2d(t.clamp_min(0), w[f"{name}.conv1.weight"], w[f"{name}.conv1.bias"], padding=1)
        return t + F.conv2d(t1.clamp_min(0), w[f"{name}.conv2.weight"], w[f"{name}.conv2.bias"], padding=1)

    h = rcu(x + rcu(skip, "resConfUnit1"), "resConfUnit2")
    up = torch.einsum("oh,bchw,pw->bcop", bilinear_up2_matrix(3), h, bilinear_up2_matrix(5))
    expected = torch.einsum("oc,bchw->bohw", w["out_conv.weight"][:, :, 0, 0], up) + w["out_conv.bias"][:, None, None]
    assert torch.allclose(block(x, skip), expected, atol=1e-10)


def test_gaussian_adapter_activations_by_hand():
    from scipy.spatial.transform import Rotation as scipy_rotation  # a test dependency (pyproject [test])
    g = torch.Generator().manual_seed(7)
    degree = 4
    k = (degree + 1) ** 2
    raw = torch.randn(5, 8 + 3 * k, generator=g, dtype=torch.float64) * 3
    raw[0, 1:4] = 500.0  # huge scales hit the 0.3 clamp
    out = nps.gaussians_from_head(raw, degree)
    assert torch.allclose(out["opacities"], 1 / (1 + torch.exp(-raw[:, 0])))
    expected_scales = torch.minimum(0.001 * torch.log1p(torch.exp(raw[:, 1:4])), torch.tensor(0.3, dtype=raw.dtype))
    assert torch.allclose(out["scales"], expected_scales)
    assert torch.allclose(out["scales"][0], torch.full((3,), 0.3, dtype=raw.dtype))
    # the head's quaternion is (x, y, z, w) (scipy order); ours is (w, x, y, z): same rotation
    xyzw = raw[:, 4:8].numpy()
    expected_r = torch.from_numpy(scipy_rotation.from_quat(xyzw).as_matrix())
    assert torch.allclose(quaternion_to_matrix(out["rotations"]), expected_r, atol=1e-9)
    assert torch.allclose(out["rotations"].norm(dim=-1), torch.ones(5, dtype=raw.dtype))
    # SH: channel-major in the head (c * K + i), masked by 1, 0.025, 0.00625, ...
    for i, degree_of_i in [(0, 0), (1, 1), (3, 1), (4, 2), (15, 3), (16, 4), (24, 4)]:
        for c in range(3):
            scale = 1.0 if degree_of_i == 0 else 0.1 * 0.25 ** degree_of_i
            assert torch.allclose(out["sh"][:, i, c], raw[:, 8 + c * k + i] * scale)
    with pytest.raises(ValueError, match="channels"):
        nps.gaussians_from_head(raw[:, :-1], degree)


def test_points_head_exp_mode():
    raw = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    expected = torch.tensor([[0.6 * math.expm1(5), 0.8 * math.expm1(5), 0.0], [0.0, 0.0, 0.0],
                             [0.0, 0.0, -math.expm1(1)]])
    assert torch.allclose(nps.points_from_head(raw), expected)


def test_intrinsics_token_sits_below_the_grid_and_is_dropped_after_decoding(dense_random_state):
    net = nps.NoPoSplat(TINY).eval()
    net.load_state_dict(dense_random_state(net, seed=8))
    images = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(9)) * 2 - 1
    k = torch.tensor(nps.DEFAULT_INTRINSICS)[None]
    tokens, pos = net.backbone.encode(images, k)
    assert tokens.shape == (1, 2 * 3 + 1, 32)
    assert pos[0, -1].tolist() == [2, 0] and pos[0, :-1].tolist() == [[r, c] for r in range(2) for c in range(3)]
    layers1, layers2 = net.backbone(images, images.flip(-1), k, k)
    assert len(layers1) == TINY.dec_depth + 1 and layers1[0].shape == (1, 6, 32)
    assert all(t.shape == (1, 6, 24) for t in layers1[1:] + layers2[1:])
    # the intrinsics reach every output
    with torch.no_grad():
        a = net(images[None].expand(1, 2, 3, 32, 48) * 0.5 + 0.5)
        b = net(images[None].expand(1, 2, 3, 32, 48) * 0.5 + 0.5, nps.default_intrinsics(1) * 1.5)
    assert not torch.allclose(a.means, b.means)


def test_two_views_are_processed_symmetrically(dense_random_state):
    """Swapping the photos and the weights of the two branches (decoders, point heads, Gaussian
    heads) swaps the outputs: each decoder block reads the other view's previous layer. In float64:
    the dense random weights make means of order 1e5, where float32's summation order (which
    differs between CPUs) alone moves them by more than the tolerance."""
    net = nps.NoPoSplat(TINY).eval().double()
    state = dense_random_state(net, seed=11)
    net.load_state_dict(state)
    pairs = (("backbone.dec_blocks.", "backbone.dec_blocks2."), ("downstream_head1.", "downstream_head2."),
             ("gaussian_param_head.", "gaussian_param_head2."))

    def swap(key):
        for a, b in pairs:
            if key.startswith(a):
                return b + key[len(a):]
            if key.startswith(b):
                return a + key[len(b):]
        return key
    swapped = nps.NoPoSplat(TINY).eval().double()
    swapped.load_state_dict({swap(k): v for k, v in state.items()})
    images = torch.rand(1, 2, 3, 32, 32, generator=torch.Generator().manual_seed(12)).double()
    k = torch.stack([torch.tensor(nps.DEFAULT_INTRINSICS), torch.tensor(nps.DEFAULT_INTRINSICS) * 1.1])[None].double()
    with torch.no_grad():
        a, b = net(images, k), swapped(images.flip(1), k.flip(1))
    for name in ("means", "opacities", "scales", "rotations", "sh"):
        assert torch.allclose(getattr(a, name), getattr(b, name).flip(1), atol=1e-5), name


# --------------------------------------------------------------------------- key layout and loading
def test_release_key_layout_and_config_from_shapes():
    with torch.device("meta"):
        release = nps.NoPoSplat()
        tiny = nps.NoPoSplat(fam.SMOKE_CONFIG)
    state = release.state_dict()
    blocks = lambda keys: {re.sub(r"_blocks(2?)\.\d+\.", r"_blocks\1.N.", k) for k in keys}  # noqa: E731
    assert len(state) == 1145 and blocks(state) == blocks(tiny.state_dict())
    for key, shape in {"backbone.patch_embed.proj.weight": (1024, 3, 16, 16), "backbone.mask_token": (1, 1, 768),
                       "backbone.intrinsic_encoder.weight": (1024, 9), "backbone.enc_blocks.23.attn.qkv.weight":
                       (3072, 1024), "backbone.dec_blocks2.11.cross_attn.projk.weight": (768, 768),
                       "downstream_head1.dpt.act_postprocess.0.1.weight": (96, 96, 4, 4),
                       "downstream_head2.dpt.scratch.layer_rn.3.weight": (256, 768, 3, 3),
                       "downstream_head2.dpt.scratch.layer4_rn.weight": (256, 768, 3, 3),
                       "downstream_head1.dpt.head.4.weight": (3, 128, 1, 1),
                       "gaussian_param_head2.dpt.input_merger.0.weight": (256, 3, 7, 7),
                       "gaussian_param_head.dpt.head.4.weight": (83, 256, 1, 1)}.items():
        assert tuple(state[key].shape) == shape, key
    assert "gaussian_param_head.dpt.head.0.bias" not in state
    assert nps.NoPoSplatConfig.from_state_dict(state) == nps.NoPoSplatConfig()
    assert nps.NoPoSplatConfig().hooks == (0, 6, 9, 12)
    assert nps.NoPoSplatConfig.from_state_dict(tiny.state_dict()) == fam.SMOKE_CONFIG


def test_smoke_checkpoint_round_trip(smoke, handle):
    assert families.get(fam.NAME) is fam.FAMILY and fam.FAMILY.default_repo == "botaoye/NoPoSplat"
    assert (smoke / fam.CHECKPOINT).is_file() and handle.is_smoke
    state = _state_of(smoke)
    assert state and all(k.startswith("encoder.") for k in state)
    net = handle.modules["noposplat"]
    assert net.cfg == fam.SMOKE_CONFIG
    loaded = net.state_dict()
    assert all(torch.equal(loaded[k[len("encoder."):]], v) for k, v in state.items())


def test_missing_and_unexpected_keys_are_named(smoke, tmp_path):
    state = _state_of(smoke)
    del state["encoder.backbone.enc_blocks.1.mlp.fc2.bias"]
    state["encoder.backbone.extra_head.weight"] = torch.zeros(2)
    with pytest.raises(WeightsError) as err:
        fam.build_network(state, "test")
    assert "encoder.backbone.enc_blocks.1.mlp.fc2.bias" in str(err.value)
    assert "encoder.backbone.extra_head.weight" in str(err.value)
    # a wrapper key outside the known non-network parts is unexpected too; renderer/loss keys are skipped
    with pytest.raises(WeightsError, match="optimizer_thing"):
        fam.encoder_state({**_state_of(smoke), "optimizer_thing.x": torch.zeros(1)}, "test")
    assert len(fam.encoder_state({**_state_of(smoke), "losses.1.lpips.w": torch.zeros(1)}, "test")) == len(
        _state_of(smoke))


def test_checkpoint_of_another_model_is_refused(tmp_path):
    with pytest.raises(WeightsError, match="not a NoPoSplat checkpoint"):
        fam.encoder_state({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, "test")
    with pytest.raises(WeightsError, match="missing key"):
        fam.build_network({"encoder.backbone.patch_embed.proj.weight": torch.zeros(64, 3, 16, 16)}, "test")
    (tmp_path / fam.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=fam.CHECKPOINT):
        fam.load_noposplat(tmp_path, torch.device("cpu"), torch.float32)


def test_differing_dpt_aliases_are_refused(smoke):
    state = _state_of(smoke)
    state["encoder.downstream_head1.dpt.scratch.layer_rn.2.weight"] = state[
        "encoder.downstream_head1.dpt.scratch.layer3_rn.weight"] + 1
    with pytest.raises(WeightsError, match="layer_rn.2.weight"):
        fam.build_network(state, "test")


def test_pickled_classes_need_the_explicit_converter(smoke, tmp_path):
    data = {"state_dict": _state_of(smoke), "hyper_parameters": argparse.Namespace(lr=1e-4)}
    torch.save(data, str(tmp_path / fam.CHECKPOINT))
    with pytest.raises(WeightsError, match="convert_checkpoint"):
        fam.load_noposplat(tmp_path, torch.device("cpu"), torch.float32)
    written = fam.convert_checkpoint(tmp_path / fam.CHECKPOINT)
    assert written == tmp_path / fam.CONVERTED
    handle = fam.load_noposplat(tmp_path, torch.device("cpu"), torch.float32)
    assert handle.modules["noposplat"].cfg == fam.SMOKE_CONFIG


# --------------------------------------------------------------------------- the network's output
def test_output_shapes_and_gaussian_validity(handle):
    net = handle.modules["noposplat"]
    images = torch.rand(2, 2, 3, 32, 48, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        out = net(images)
    assert out.means.shape == (2, 2, 32, 48, 3) and out.opacities.shape == (2, 2, 32, 48)
    assert out.scales.shape == (2, 2, 32, 48, 3) and out.rotations.shape == (2, 2, 32, 48, 4)
    assert out.sh.shape == (2, 2, 32, 48, 25, 3)
    assert bool((out.scales > 0).all()) and bool((out.scales <= 0.3).all())
    assert torch.allclose(out.rotations.norm(dim=-1), torch.ones(()), atol=1e-5)
    assert bool(((out.opacities > 0) & (out.opacities < 1)).all())
    assert bool((out.means[..., 2] > 0).all())  # smoke points lie in front of view 1
    scene = out.scene(1)
    assert isinstance(scene, GaussianScene) and len(scene) == 2 * 32 * 48 and scene.sh_degree == 3
    assert torch.equal(scene.means, out.means[1].reshape(-1, 3))
    assert torch.equal(scene.sh, out.sh[1, ..., :16, :].reshape(-1, 16, 3))
    half = out.scene(0, min_opacity=float(out.opacities[0].median()))
    assert 0 < len(half) < 2 * 32 * 48
    # batch items are independent
    with torch.no_grad():
        single = net(images[1:])
    assert torch.allclose(single.means[0], out.means[1], atol=1e-5)


def test_backbone_in_half_precision_keeps_float32_heads(handle):
    net = fam.load_noposplat(handle.source, torch.device("cpu"), torch.bfloat16).modules["noposplat"]
    assert net.backbone.patch_embed.proj.weight.dtype == torch.bfloat16
    assert net.gaussian_param_head.dpt.head[0].weight.dtype == torch.float32
    with torch.no_grad():
        out = net(torch.rand(1, 2, 3, 32, 32))
    assert out.means.dtype == torch.float32 and bool(torch.isfinite(out.sh).all())


def test_bad_images_are_refused(handle):
    net = handle.modules["noposplat"]
    with pytest.raises(ValueError, match=r"\[B,2,3,H,W\]"):
        net(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        net(torch.rand(1, 2, 3, 30, 32))


def test_prepare_images_crops_the_centre_square_and_resizes():
    wide = torch.zeros(4, 8, 4)
    wide[:, 2:6, 0] = 1.0  # the centre square is red, the sides black; alpha dropped
    tall = torch.rand(7, 4, 3, generator=torch.Generator().manual_seed(13))
    out = nps.prepare_images(wide, tall, size=4)
    assert out.shape == (1, 2, 3, 4, 4)
    assert torch.equal(out[0, 0, 0], torch.ones(4, 4)) and not out[0, 0, 1:].any()
    assert torch.equal(out[0, 1], tall[1:5].permute(2, 0, 1))  # offset (7 - 4) // 2 = 1, already 4x4
    up = nps.prepare_images(tall, tall, size=8)[0, 0]
    assert torch.allclose(up, F.interpolate(tall[1:5].permute(2, 0, 1)[None], size=(8, 8), mode="bilinear")[0])
    with pytest.raises(ValueError, match="H,W,3"):
        nps.prepare_images(torch.rand(2, 4, 4, 3), tall)
