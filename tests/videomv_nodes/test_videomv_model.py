"""VideoMV T2V UNet: VGen-layout conversion, strict loading, and the per-view camera embedding.

The model is checked against an independent functional forward written here from VGen's
module structure (ResBlock + temporal conv, spatial and temporal transformers, up/down
sampling, the [cos, sin] time sinusoid, the camera MLP added after the per-frame repeat),
working directly on a VGen-layout state dict.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from consistent_video.nodes.comfy.weights import WeightsError, load_strict
from consistent_video.videomv_nodes.convert import (convert_t2v, load_t2v_unet, module_table, to_vgen)
from consistent_video.videomv_nodes.model import VideoMVT2VUNet, config_for_release, config_for_tests

CFG = config_for_tests()
B, FRAMES, H, W, L = 2, 3, 8, 8, 5


@pytest.fixture(scope="module")
def state(dense_random_state) -> dict[str, torch.Tensor]:
    return dense_random_state(VideoMVT2VUNet(**CFG))


@pytest.fixture(scope="module")
def model(state) -> VideoMVT2VUNet:
    with torch.device("meta"):
        net = VideoMVT2VUNet(**CFG)
    return load_strict(net, state, "test").eval()


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(B, 4, FRAMES, H, W, generator=gen)
    timestep = torch.tensor([981, 381])
    context = torch.randn(B, L, CFG["cross_attention_dim"], generator=gen)
    camera = torch.randn(B, FRAMES, 16, generator=gen)
    return sample, timestep, context, camera


# ----------------------------------------------------------------------------- independent reference
class _VGenReference:
    """VGen's T2V UNet forward as plain functions over a VGen-layout state dict.

    The module kinds are recognised from the keys (as VGen dispatches on module types);
    nothing here uses diffusers or the key conversion.
    """

    def __init__(self, sd: dict[str, torch.Tensor], groups: int, head_dim: int):
        self.sd, self.groups, self.head_dim = sd, groups, head_dim

    def p(self, name: str) -> torch.Tensor:
        return self.sd[name]

    def has(self, prefix: str) -> bool:
        return any(k.startswith(prefix + ".") for k in self.sd)

    def linear(self, x, prefix):
        return F.linear(x, self.p(f"{prefix}.weight"), self.p(f"{prefix}.bias"))

    def group_norm(self, x, prefix, eps):
        return F.group_norm(x, self.groups, self.p(f"{prefix}.weight"), self.p(f"{prefix}.bias"), eps)

    def layer_norm(self, x, prefix):
        return F.layer_norm(x, x.shape[-1:], self.p(f"{prefix}.weight"), self.p(f"{prefix}.bias"), 1e-5)

    # -- pieces
    def attention(self, x, prefix, context=None):
        context = x if context is None else context
        q = x @ self.p(f"{prefix}.to_q.weight").T
        k = context @ self.p(f"{prefix}.to_k.weight").T
        v = context @ self.p(f"{prefix}.to_v.weight").T
        heads = q.shape[-1] // self.head_dim

        def split(t):
            return t.reshape(t.shape[0], t.shape[1], heads, self.head_dim).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.linear(out, f"{prefix}.to_out.0")

    def transformer_block(self, x, prefix, context):
        x = self.attention(self.layer_norm(x, f"{prefix}.norm1"), f"{prefix}.attn1") + x
        x = self.attention(self.layer_norm(x, f"{prefix}.norm2"), f"{prefix}.attn2", context) + x
        value, gate = self.linear(self.layer_norm(x, f"{prefix}.norm3"), f"{prefix}.ff.net.0.proj").chunk(2, dim=-1)
        return self.linear(value * F.gelu(gate), f"{prefix}.ff.net.2") + x

    def resblock(self, x, prefix, emb, batch):
        h = F.conv2d(F.silu(self.group_norm(x, f"{prefix}.in_layers.0", 1e-5)),
                     self.p(f"{prefix}.in_layers.2.weight"), self.p(f"{prefix}.in_layers.2.bias"), padding=1)
        h = h + self.linear(F.silu(emb), f"{prefix}.emb_layers.1")[:, :, None, None]
        h = F.conv2d(F.silu(self.group_norm(h, f"{prefix}.out_layers.0", 1e-5)),
                     self.p(f"{prefix}.out_layers.3.weight"), self.p(f"{prefix}.out_layers.3.bias"), padding=1)
        if self.has(f"{prefix}.skip_connection"):
            x = F.conv2d(x, self.p(f"{prefix}.skip_connection.weight"), self.p(f"{prefix}.skip_connection.bias"))
        h = x + h
        # temporal conv on [b, c, f, h, w]: four GroupNorm-SiLU-Conv3d(3,1,1) stages, residual
        video = h.reshape(batch, -1, *h.shape[1:]).transpose(1, 2)
        t = video
        for stage, conv in ((1, 2), (2, 3), (3, 3), (4, 3)):
            name = f"{prefix}.temopral_conv.conv{stage}"
            t = F.conv3d(F.silu(self.group_norm(t, f"{name}.0", 1e-5)), self.p(f"{name}.{conv}.weight"),
                         self.p(f"{name}.{conv}.bias"), padding=(1, 0, 0))
        video = video + t
        return video.transpose(1, 2).reshape(h.shape)

    def spatial_transformer(self, x, prefix, context):
        n, c, hh, ww = x.shape
        h = self.group_norm(x, f"{prefix}.norm", 1e-6).reshape(n, c, hh * ww).transpose(1, 2)
        h = self.linear(h, f"{prefix}.proj_in")
        h = self.transformer_block(h, f"{prefix}.transformer_blocks.0", context)
        h = self.linear(h, f"{prefix}.proj_out")
        return h.transpose(1, 2).reshape(n, c, hh, ww) + x

    def temporal_transformer(self, x, prefix, batch):
        n, c, hh, ww = x.shape
        frames = n // batch
        video = x.reshape(batch, frames, c, hh, ww).transpose(1, 2)  # b c f h w
        h = self.group_norm(video, f"{prefix}.norm", 1e-6)
        h = h.permute(0, 3, 4, 1, 2).reshape(batch * hh * ww, c, frames)  # (b h w) c f
        h = F.conv1d(h, self.p(f"{prefix}.proj_in.weight"), self.p(f"{prefix}.proj_in.bias")).transpose(1, 2)
        h = self.transformer_block(h, f"{prefix}.transformer_blocks.0", None)  # self-attention only
        h = F.conv1d(h.transpose(1, 2), self.p(f"{prefix}.proj_out.weight"), self.p(f"{prefix}.proj_out.bias"))
        h = h.reshape(batch, hh, ww, c, frames).permute(0, 3, 4, 1, 2) + video
        return h.transpose(1, 2).reshape(n, c, hh, ww)

    def module(self, x, prefix, emb, context, batch):
        """One VGen module, recognised by its keys (VGen's ``_forward_single``)."""
        if self.has(f"{prefix}.in_layers"):
            return self.resblock(x, prefix, emb, batch)
        if self.has(f"{prefix}.transformer_blocks"):
            if self.p(f"{prefix}.proj_in.weight").dim() == 3:  # Conv1d projections: TemporalTransformer
                return self.temporal_transformer(x, prefix, batch)
            return self.spatial_transformer(x, prefix, context)
        if self.has(f"{prefix}.op"):  # Downsample
            return F.conv2d(x, self.p(f"{prefix}.op.weight"), self.p(f"{prefix}.op.bias"), stride=2, padding=1)
        if self.has(f"{prefix}.conv"):  # Upsample
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            return F.conv2d(x, self.p(f"{prefix}.conv.weight"), self.p(f"{prefix}.conv.bias"), padding=1)
        return F.conv2d(x, self.p(f"{prefix}.weight"), self.p(f"{prefix}.bias"), padding=1)  # plain conv

    def entry(self, x, prefix, emb, context, batch):
        """An ``input_blocks.N`` / ``output_blocks.N`` entry: a list of modules, or one module."""
        if self.has(f"{prefix}.0"):
            i = 0
            while self.has(f"{prefix}.{i}"):
                x = self.module(x, f"{prefix}.{i}", emb, context, batch)
                i += 1
            return x
        return self.module(x, prefix, emb, context, batch)

    def count(self, name):
        i = 0
        while self.has(f"{name}.{i}"):
            i += 1
        return i

    def __call__(self, x, t, context, camera):
        batch, _, frames = x.shape[:3]
        dim = self.p("time_embed.0.weight").shape[1]
        half = dim // 2
        freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
        angles = t.to(torch.float64)[:, None] * freqs[None]
        sinusoid = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).to(x.dtype)
        emb = self.linear(F.silu(self.linear(sinusoid, "time_embed.0")), "time_embed.2")
        emb = emb.repeat_interleave(frames, dim=0)
        camera = camera.reshape(batch * frames, -1)
        emb = emb + self.linear(F.silu(self.linear(camera, "camera_embedding.0")), "camera_embedding.2")
        context = context.repeat_interleave(frames, dim=0)

        h = x.transpose(1, 2).reshape(batch * frames, *x.shape[1:2], *x.shape[3:])
        skips = []
        for i in range(self.count("input_blocks")):
            h = self.entry(h, f"input_blocks.{i}", emb, context, batch)
            skips.append(h)
        for i in range(self.count("middle_block")):
            h = self.module(h, f"middle_block.{i}", emb, context, batch)
        for i in range(self.count("output_blocks")):
            h = self.entry(torch.cat([h, skips.pop()], dim=1), f"output_blocks.{i}", emb, context, batch)
        assert not skips
        h = F.conv2d(F.silu(self.group_norm(h, "out.0", 1e-5)), self.p("out.2.weight"), self.p("out.2.bias"),
                     padding=1)
        return h.reshape(batch, frames, *h.shape[1:]).transpose(1, 2)


# ----------------------------------------------------------------------------- conversion
def test_round_trip_and_strict_load(state):
    vgen = to_vgen(state, CFG)
    # the VGen layout: names of the release's structure
    for key in ("time_embed.0.weight", "camera_embedding.2.bias", "input_blocks.0.0.weight",
                "input_blocks.0.1.proj_in.weight", "input_blocks.1.0.temopral_conv.conv4.3.weight",
                "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", "input_blocks.1.2.proj_out.weight",
                "input_blocks.3.op.weight", "input_blocks.4.0.skip_connection.weight", "input_blocks.11.0.in_layers.2.bias",
                "middle_block.0.emb_layers.1.weight", "middle_block.2.transformer_blocks.0.ff.net.2.weight",
                "middle_block.3.temopral_conv.conv1.2.weight", "output_blocks.2.1.conv.weight",
                "output_blocks.5.3.conv.weight", "output_blocks.11.2.norm.weight", "out.0.weight", "out.2.bias"):
        assert key in vgen, key
    assert vgen["input_blocks.1.2.proj_in.weight"].shape == (16, 16, 1)  # Conv1d kernel dim restored
    assert vgen["input_blocks.0.1.proj_in.weight"].shape == (8 * CFG["attention_head_dim"], 16, 1)
    assert not any(k.startswith("output_blocks.12") or k.startswith("middle_block.4") for k in vgen)

    back, aside = convert_t2v(vgen, CFG)
    assert aside == {}
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)
    with torch.device("meta"):
        net = VideoMVT2VUNet(**CFG)
    load_strict(net, back, "round trip")
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_matches_independent_vgen_reference(state, model, inputs):
    sample, timestep, context, camera = inputs
    vgen = to_vgen(state, CFG)
    reference = _VGenReference(vgen, CFG["norm_num_groups"], CFG["attention_head_dim"])
    with torch.no_grad():
        expected = reference(sample, timestep, context, camera)
        ours = model(sample, timestep, context, camera=camera).sample
    assert ours.shape == (B, 4, FRAMES, H, W)
    assert expected.abs().mean() > 0.1  # a real signal, not a vanishing one
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    # the camera matters in both: a different camera moves the output well beyond the tolerance
    with torch.no_grad():
        other = reference(sample, timestep, context, camera.flip(1))
    assert (other - expected).abs().max() > 1e-2


# ----------------------------------------------------------------------------- camera embedding
def test_zero_camera_layer_equals_stock_unet(state, inputs):
    from diffusers import UNet3DConditionModel

    fresh = VideoMVT2VUNet(**CFG)
    assert torch.count_nonzero(fresh.camera_embedding[2].weight) == 0
    assert torch.count_nonzero(fresh.camera_embedding[2].bias) == 0
    assert fresh.camera_embedding[0].weight.shape == (4 * 16, 16)

    zeroed = dict(state)
    zeroed["camera_embedding.2.weight"] = torch.zeros_like(state["camera_embedding.2.weight"])
    zeroed["camera_embedding.2.bias"] = torch.zeros_like(state["camera_embedding.2.bias"])
    ours = VideoMVT2VUNet(**CFG)
    ours.load_state_dict(zeroed)
    ours.eval()  # TemporalConvLayer has dropout
    stock_cfg = {k: v for k, v in CFG.items() if k != "camera_dim"}
    stock = UNet3DConditionModel(**stock_cfg)
    stock.load_state_dict({k: v for k, v in zeroed.items() if not k.startswith("camera_embedding")})
    stock.eval()
    sample, timestep, context, camera = inputs
    with torch.no_grad():
        expected = stock(sample, timestep, context).sample
        assert torch.equal(ours(sample, timestep, context, camera=camera).sample, expected)
        assert torch.equal(ours(sample, timestep, context).sample, expected)  # camera=None
        # scalar timestep, as the parent accepts it
        assert torch.equal(ours(sample, 500, context, camera=camera).sample, stock(sample, 500, context).sample)


def test_camera_is_added_per_view_after_the_repeat(model, inputs):
    sample, timestep, context, camera = inputs
    with torch.no_grad():
        emb = model.frame_embedding(timestep, B, FRAMES, camera)
        plain = model.frame_embedding(timestep, B, FRAMES)
        mlp = model.camera_embedding(camera.reshape(B * FRAMES, 16))
    assert emb.shape == (B * FRAMES, 4 * 16)
    torch.testing.assert_close(emb, plain + mlp, atol=0, rtol=0)
    for b in range(B):  # rows b*F + f: item b's time embedding, view f's camera
        for f in range(FRAMES):
            assert torch.equal(plain[b * FRAMES + f], plain[b * FRAMES])
    # the embedding every ResBlock sees is this per-view one
    seen = []
    hook = model.down_blocks[0].resnets[0].register_forward_hook(lambda mod, args, out: seen.append(args[1]))
    try:
        with torch.no_grad():
            out = model(sample, timestep, context, camera=camera).sample
            flat = model(sample, timestep, context, camera=camera.reshape(B * FRAMES, 16)).sample
    finally:
        hook.remove()
    assert torch.equal(seen[0], emb)
    assert torch.equal(out, flat)  # [B, F, 16] and [B*F, 16] mean the same
    # different cameras change every view's output, and each view differently
    with torch.no_grad():
        swapped = model(sample, timestep, context, camera=camera.roll(1, dims=1)).sample
    change = (swapped - out).abs().amax(dim=(0, 1, 3, 4))
    assert (change > 1e-3).all()
    assert len({round(float(c), 4) for c in change}) == FRAMES
    with pytest.raises(ValueError, match="camera must be"):
        model(sample, timestep, context, camera=camera[:, :2])


# ----------------------------------------------------------------------------- bad checkpoints
def test_unconsumed_keys_are_named_and_lgm_set_aside(state):
    vgen = to_vgen(state, CFG)
    lgm = {"lgm_big.unet.conv_in.weight": torch.zeros(2, 9, 3, 3), "lgm_big.conv.bias": torch.zeros(14)}
    unet, aside = convert_t2v({**vgen, **lgm}, CFG)
    assert set(aside) == set(lgm) and set(unet) == set(state)
    for extra in ("input_blocks.1.0.bogus.weight", "middle_block.1.transformer_blocks.0.attn3.to_q.weight",
                  "fps_embedding.0.weight", "input_blocks.1.0.temopral_conv.conv5.3.weight"):
        with pytest.raises(ValueError, match=extra.replace(".", r"\.")):
            convert_t2v({**vgen, extra: torch.zeros(1)}, CFG)
    # a missing key is found by the strict load
    incomplete, _ = convert_t2v({k: v for k, v in vgen.items() if k != "out.2.bias"}, CFG)
    with torch.device("meta"):
        net = VideoMVT2VUNet(**CFG)
    with pytest.raises(WeightsError, match="conv_out.bias"):
        load_strict(net, incomplete, "test")


def test_other_models_are_refused(state):
    from diffusers import UNetSpatioTemporalConditionModel

    svd = UNetSpatioTemporalConditionModel(
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 64), layers_per_block=1, num_attention_heads=(2, 4), cross_attention_dim=24)
    with pytest.raises(ValueError, match="diffusers-layout"):
        convert_t2v(svd.state_dict(), CFG)
    with pytest.raises(ValueError, match="diffusers-layout"):
        convert_t2v(state, CFG)  # our own keys are not the release layout either
    with pytest.raises(ValueError, match="not a VGen-layout"):
        convert_t2v({"encoder.layer.0.weight": torch.zeros(2)}, CFG)
    # a VGen UNet of other sizes: converted, then refused by the strict load with shapes named
    bigger = dict(CFG, block_out_channels=(32, 32, 32, 32))
    other = to_vgen(VideoMVT2VUNet(**bigger).state_dict(), bigger)
    unet, _ = convert_t2v(other, CFG)
    with torch.device("meta"):
        net = VideoMVT2VUNet(**CFG)
    with pytest.raises(WeightsError, match="shape mismatch"):
        load_strict(net, unet, "test")


def test_loader_reads_wrapped_bare_and_safetensors(state, tmp_path):
    from safetensors.torch import save_file

    vgen = to_vgen(state, CFG)
    lgm = {"lgm_big.conv.weight": torch.ones(14, 14, 1, 1)}
    wrapped, bare, safe = tmp_path / "t2v_00333000.pth", tmp_path / "bare.pth", tmp_path / "t2v.safetensors"
    torch.save({"state_dict": {**vgen, **lgm}, "step": 333000}, wrapped)
    torch.save(vgen, bare)
    save_file({k: v.contiguous() for k, v in vgen.items()}, str(safe))
    for path, expect_aside in ((wrapped, lgm), (bare, {}), (safe, {})):
        net, aside = load_t2v_unet(path, torch.float32, CFG)
        assert isinstance(net, VideoMVT2VUNet) and not net.training
        assert not any(p.is_meta or p.requires_grad for p in net.parameters())
        assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
        assert set(aside) == set(expect_aside)
    half, _ = load_t2v_unet(bare, torch.float16, CFG)
    assert half.dtype == torch.float16

    # errors are WeightsErrors naming the file and the problem
    foreign = tmp_path / "svd.pth"
    torch.save({"state_dict": {"down_blocks.0.resnets.0.conv1.weight": torch.zeros(1)}, "step": 1}, foreign)
    with pytest.raises(WeightsError, match="svd.pth.*diffusers-layout"):
        load_t2v_unet(foreign, torch.float32, CFG)
    extra = tmp_path / "extra.pth"
    torch.save({**vgen, "input_blocks.1.0.bogus.weight": torch.zeros(1)}, extra)
    with pytest.raises(WeightsError, match=r"input_blocks\.1\.0\.bogus\.weight"):
        load_t2v_unet(extra, torch.float32, CFG)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": vgen, "cfg": _Opaque()}, unsafe)
    with pytest.raises(WeightsError, match="weights-only"):
        load_t2v_unet(unsafe, torch.float32, CFG)
    with pytest.raises(WeightsError, match="missing"):
        load_t2v_unet(tmp_path / "absent.pth", torch.float32, CFG)
    with pytest.raises(WeightsError, match="(?s)does not match.*shape mismatch"):
        load_t2v_unet(bare, torch.float32, dict(CFG, block_out_channels=(32, 32, 32, 32)))


class _Opaque:
    """A pickled object that weights_only loading must refuse."""


# ----------------------------------------------------------------------------- full size
def test_release_size_on_meta():
    with torch.device("meta"):
        net = VideoMVT2VUNet(**config_for_release())
    count = sum(p.numel() for p in net.parameters())
    assert count == 1_412_895_300  # stock UNet3DConditionModel 1,411,233,860 + camera MLP 1,661,440
    assert net.camera_embedding[0].weight.shape == (1280, 16)
    assert net.camera_embedding[2].weight.shape == (1280, 1280)
    camera = sum(p.numel() for p in net.camera_embedding.parameters())
    assert camera == 16 * 1280 + 1280 + 1280 * 1280 + 1280
    # the release's VGen layout has one key per parameter, and the table covers them all
    keys = set(net.state_dict())
    modules = {name for name, _ in net.named_modules()}
    assert all(target in modules for target, _ in module_table(config_for_release()).values())
    vgen_keys = to_vgen({k: torch.empty(0) for k in keys}, config_for_release())
    assert len(vgen_keys) == len(keys)
    assert sum(k.startswith("middle_block.") for k in vgen_keys) > 0
    assert max(int(k.split(".")[1]) for k in vgen_keys if k.startswith("input_blocks.")) == 11
    assert max(int(k.split(".")[1]) for k in vgen_keys if k.startswith("output_blocks.")) == 11


def test_loader_refuses_a_wrapper_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "t2v.pth"
    for content in ({"state_dict": {"a": torch.zeros(1), "b": 3}, "step": 1}, [1, 2]):
        torch.save(content, path)
        with pytest.raises(WeightsError, match="flat dict of tensors"):
            load_t2v_unet(path, config=CFG)
