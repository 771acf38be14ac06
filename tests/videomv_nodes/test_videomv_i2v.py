"""VideoMV I2V UNet: VGen-layout conversion, the folded double image-concat, strict loading.

The converted diffusers network is checked against an independent functional forward of
VGen's ``UNetSD_I2VGen`` written here over a VGen-layout state dict: the image-concat
branch (three convs, a one-layer pre-norm transformer over frames with a fused qkv) whose
features are ADDED TWICE to the input, the time + fps embeddings, the camera MLP after the
per-frame repeat, and the context of text, image-latent and global CLIP-image tokens. It
uses neither diffusers nor the key conversion.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from consistent_video.nodes.comfy.weights import WeightsError, load_strict
from consistent_video.videomv_nodes.convert import (IMAGE_CONCAT_ADDS, convert_i2v, convert_t2v, fold_image_concat,
                                                    i2v_module_table, load_i2v_unet, load_t2v_unet, to_vgen,
                                                    to_vgen_i2v)
from consistent_video.videomv_nodes.model import (TARGET_FPS, VideoMVI2VUNet, VideoMVT2VUNet, config_for_tests,
                                                  i2v_config_for_release, i2v_config_for_tests,
                                                  image_latents_for_frames)

CFG = i2v_config_for_tests()
B, FRAMES, H, W, L = 2, 3, 8, 8, 5
D = CFG["cross_attention_dim"]


@pytest.fixture(scope="module")
def state(dense_random_state) -> dict[str, torch.Tensor]:
    """A diffusers-layout state of the tiny network (as the converter produces it: folded)."""
    return dense_random_state(VideoMVI2VUNet(**CFG))


@pytest.fixture(scope="module")
def vgen(state) -> dict[str, torch.Tensor]:
    """The same weights in the release's VGen layout."""
    return to_vgen_i2v(state, CFG)


@pytest.fixture(scope="module")
def model(state) -> VideoMVI2VUNet:
    with torch.device("meta"):
        net = VideoMVI2VUNet(**CFG)
    return load_strict(net, state, "test").eval()


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(1)
    return {
        "sample": torch.randn(B, 4, FRAMES, H, W, generator=gen),
        "timestep": torch.tensor([981, 381]),
        "text": torch.randn(B, L, D, generator=gen),
        "latent": torch.randn(B, 4, H, W, generator=gen),  # the image's VAE latent
        "clip": torch.randn(B, 1, D, generator=gen),  # VGen's ``image`` [B, 1, D]
        "camera": torch.randn(B, FRAMES, 16, generator=gen),
    }


def _ours(model, inputs, **overrides):
    args = dict(image_latents=inputs["latent"], image_embeddings=inputs["clip"],
                encoder_hidden_states=inputs["text"], camera=inputs["camera"])
    args.update(overrides)
    with torch.no_grad():
        return model(inputs["sample"], inputs["timestep"], **args).sample


# ----------------------------------------------------------------------------- independent reference
class _VGenI2V:
    """``UNetSD_I2VGen.forward`` (VideoMV, ``use_camera_condition``) as plain functions over a
    VGen-layout state dict; ``image_concat_adds`` is how often the image features are added
    to the input (2 in the original)."""

    def __init__(self, sd: dict[str, torch.Tensor], groups: int, head_dim: int, image_concat_adds: int = 2):
        self.sd, self.groups, self.head_dim, self.adds = sd, groups, head_dim, image_concat_adds

    def w(self, name):
        return self.sd[name]

    def has(self, prefix):
        return any(k.startswith(prefix + ".") for k in self.sd)

    def lin(self, x, prefix):
        return x @ self.w(f"{prefix}.weight").T + self.w(f"{prefix}.bias")

    def conv(self, x, prefix, stride=1):
        return F.conv2d(x, self.w(f"{prefix}.weight"), self.w(f"{prefix}.bias"), stride=stride, padding=1)

    def gn(self, x, prefix, eps):
        return F.group_norm(x, self.groups, self.w(f"{prefix}.weight"), self.w(f"{prefix}.bias"), eps)

    def ln(self, x, prefix):
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5) * self.w(f"{prefix}.weight") + self.w(f"{prefix}.bias")

    @staticmethod
    def softmax_attention(q, k, v, heads):
        """q [n, i, heads*d], k/v [n, j, heads*d] -> [n, i, heads*d], explicit softmax."""
        n, i, inner = q.shape
        d = inner // heads
        q, k, v = (t.reshape(n, t.shape[1], heads, d).permute(0, 2, 1, 3) for t in (q, k, v))
        logits = torch.einsum("nhid,nhjd->nhij", q, k) / math.sqrt(d)
        logits = logits - logits.amax(-1, keepdim=True)
        weights = logits.exp() / logits.exp().sum(-1, keepdim=True)
        return torch.einsum("nhij,nhjd->nhid", weights, v).permute(0, 2, 1, 3).reshape(n, i, inner)

    # -- UNet body (ModelScope / VGen modules)
    def attention(self, x, prefix, context=None):
        context = x if context is None else context
        q = x @ self.w(f"{prefix}.to_q.weight").T
        k = context @ self.w(f"{prefix}.to_k.weight").T
        v = context @ self.w(f"{prefix}.to_v.weight").T
        return self.lin(self.softmax_attention(q, k, v, q.shape[-1] // self.head_dim), f"{prefix}.to_out.0")

    def block(self, x, prefix, context):
        x = self.attention(self.ln(x, f"{prefix}.norm1"), f"{prefix}.attn1") + x
        x = self.attention(self.ln(x, f"{prefix}.norm2"), f"{prefix}.attn2", context) + x
        value, gate = self.lin(self.ln(x, f"{prefix}.norm3"), f"{prefix}.ff.net.0.proj").chunk(2, dim=-1)
        return self.lin(value * F.gelu(gate), f"{prefix}.ff.net.2") + x

    def resblock(self, x, prefix, emb, batch):
        h = self.conv(F.silu(self.gn(x, f"{prefix}.in_layers.0", 1e-5)), f"{prefix}.in_layers.2")
        h = h + self.lin(F.silu(emb), f"{prefix}.emb_layers.1")[:, :, None, None]
        h = self.conv(F.silu(self.gn(h, f"{prefix}.out_layers.0", 1e-5)), f"{prefix}.out_layers.3")
        if self.has(f"{prefix}.skip_connection"):
            x = F.conv2d(x, self.w(f"{prefix}.skip_connection.weight"), self.w(f"{prefix}.skip_connection.bias"))
        h = x + h
        video = h.reshape(batch, -1, *h.shape[1:]).permute(0, 2, 1, 3, 4)  # b c f h w
        t = video
        for stage, index in ((1, 2), (2, 3), (3, 3), (4, 3)):
            name = f"{prefix}.temopral_conv.conv{stage}"
            t = F.conv3d(F.silu(self.gn(t, f"{name}.0", 1e-5)), self.w(f"{name}.{index}.weight"),
                         self.w(f"{name}.{index}.bias"), padding=(1, 0, 0))
        return (video + t).permute(0, 2, 1, 3, 4).reshape(h.shape)

    def spatial(self, x, prefix, context):
        n, c, hh, ww = x.shape
        h = self.gn(x, f"{prefix}.norm", 1e-6).flatten(2).transpose(1, 2)
        h = self.lin(self.block(self.lin(h, f"{prefix}.proj_in"), f"{prefix}.transformer_blocks.0", context),
                     f"{prefix}.proj_out")
        return h.transpose(1, 2).reshape(n, c, hh, ww) + x

    def temporal(self, x, prefix, batch):
        n, c, hh, ww = x.shape
        video = x.reshape(batch, n // batch, c, hh, ww).permute(0, 2, 1, 3, 4)  # b c f h w
        h = self.gn(video, f"{prefix}.norm", 1e-6).permute(0, 3, 4, 1, 2).reshape(-1, c, n // batch)
        h = F.conv1d(h, self.w(f"{prefix}.proj_in.weight"), self.w(f"{prefix}.proj_in.bias")).transpose(1, 2)
        h = self.block(h, f"{prefix}.transformer_blocks.0", None)  # self-attention only
        h = F.conv1d(h.transpose(1, 2), self.w(f"{prefix}.proj_out.weight"), self.w(f"{prefix}.proj_out.bias"))
        h = h.reshape(batch, hh, ww, c, n // batch).permute(0, 3, 4, 1, 2) + video
        return h.permute(0, 2, 1, 3, 4).reshape(n, c, hh, ww)

    def module(self, x, prefix, emb, context, batch):
        if self.has(f"{prefix}.in_layers"):
            return self.resblock(x, prefix, emb, batch)
        if self.has(f"{prefix}.transformer_blocks"):
            if self.w(f"{prefix}.proj_in.weight").dim() == 3:
                return self.temporal(x, prefix, batch)
            return self.spatial(x, prefix, context)
        if self.has(f"{prefix}.op"):
            return self.conv(x, f"{prefix}.op", stride=2)
        if self.has(f"{prefix}.conv"):
            return self.conv(x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3), f"{prefix}.conv")
        return self.conv(x, prefix)

    def entry(self, x, prefix, emb, context, batch):
        if not self.has(f"{prefix}.0"):
            return self.module(x, prefix, emb, context, batch)
        i = 0
        while self.has(f"{prefix}.{i}"):
            x = self.module(x, f"{prefix}.{i}", emb, context, batch)
            i += 1
        return x

    def count(self, name):
        i = 0
        while self.has(f"{name}.{i}"):
            i += 1
        return i

    # -- I2V pieces
    def sinusoid(self, values, dim):
        half = dim // 2
        angles = values.to(torch.float64)[:, None] * torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()

    def mlp(self, x, prefix):
        return self.lin(F.silu(self.lin(x, f"{prefix}.0")), f"{prefix}.2")

    def temporal_encoder(self, x):
        """TransformerV2 (depth 1): x + attn(LayerNorm(x)) with a fused bias-free qkv and 2 heads,
        then x + ff(x) (no norm before the feed-forward)."""
        p = "local_temporal_encoder.layers.0"
        q, k, v = (self.ln(x, f"{p}.0.norm") @ self.w(f"{p}.0.fn.to_qkv.weight").T).chunk(3, dim=-1)
        x = self.lin(self.softmax_attention(q, k, v, heads=2), f"{p}.0.fn.to_out.0") + x
        return self.lin(F.gelu(self.lin(x, f"{p}.1.net.0.0")), f"{p}.1.net.2") + x

    def image_concat(self, local_image, frames):
        """``_ximg``: [first latent, planes of (t+1)/(f-1)] -> convs -> temporal encoder, b c f h w."""
        batch, c, _, hh, ww = local_image.shape
        planes = [local_image[:, :, :1]] + [torch.ones_like(local_image[:, :, :1]) * ((t + 1) / (frames - 1))
                                            for t in range(frames - 1)]
        x = torch.cat(planes, dim=2).permute(0, 2, 1, 3, 4).reshape(batch * frames, c, hh, ww)
        x = self.conv(F.silu(self.conv(F.silu(self.conv(x, "local_image_concat.0")), "local_image_concat.2")),
                      "local_image_concat.4")
        out = x.shape[1]
        x = x.reshape(batch, frames, out, hh, ww).permute(0, 3, 4, 1, 2).reshape(batch * hh * ww, frames, out)
        x = self.temporal_encoder(x)
        return x.reshape(batch, hh, ww, frames, out).permute(0, 4, 3, 1, 2)

    def __call__(self, x, t, y, local_image, image, camera, fps):
        batch, c, frames, hh, ww = x.shape
        local_image = local_image[:, :, None]  # b c 1 h w
        # [Concat]: the image features, added `adds` times (twice in the original)
        ximg = self.image_concat(local_image, frames)
        concat = x.new_zeros(batch, ximg.shape[1], frames, hh, ww)
        for _ in range(self.adds):
            concat = concat + ximg
        # [Embeddings]: time + fps, repeated per frame, then the camera MLP per view
        dim = self.w("time_embed.0.weight").shape[1]
        emb = self.mlp(self.sinusoid(t, dim), "time_embed") + self.mlp(self.sinusoid(fps, dim), "fps_embedding")
        emb = emb.repeat_interleave(frames, dim=0) + self.mlp(camera.reshape(batch * frames, -1), "camera_embedding")
        # [Context]: text, local image (64 tokens), global image (4 tokens), repeated per frame
        local = F.adaptive_avg_pool2d(F.silu(self.conv(local_image[:, :, 0], "local_image_embedding.0")), (32, 32))
        local = self.conv(F.silu(self.conv(local, "local_image_embedding.3", stride=2)), "local_image_embedding.5",
                          stride=2)
        local = local.flatten(2).transpose(1, 2)
        width = y.shape[-1]
        image_tokens = self.mlp(image, "context_embedding").reshape(batch, -1, width)
        context = torch.cat([y, local, image_tokens], dim=1).repeat_interleave(frames, dim=0)
        # UNet
        h = torch.cat([x, concat], dim=1).permute(0, 2, 1, 3, 4).reshape(batch * frames, -1, hh, ww)
        skips = []
        for i in range(self.count("input_blocks")):
            h = self.entry(h, f"input_blocks.{i}", emb, context, batch)
            skips.append(h)
        for i in range(self.count("middle_block")):
            h = self.module(h, f"middle_block.{i}", emb, context, batch)
        for i in range(self.count("output_blocks")):
            h = self.entry(torch.cat([h, skips.pop()], dim=1), f"output_blocks.{i}", emb, context, batch)
        assert not skips
        h = self.conv(F.silu(self.gn(h, "out.0", 1e-5)), "out.2")
        return h.reshape(batch, frames, *h.shape[1:]).permute(0, 2, 1, 3, 4)


@pytest.fixture(scope="module")
def reference_output(vgen, inputs):
    reference = _VGenI2V(vgen, CFG["norm_num_groups"], CFG["attention_head_dim"])
    with torch.no_grad():
        return reference(inputs["sample"], inputs["timestep"], inputs["text"], inputs["latent"], inputs["clip"],
                         inputs["camera"], torch.full((B,), 8))


# ----------------------------------------------------------------------------- conversion
def test_round_trip_in_the_release_layout(state, vgen):
    for key in ("time_embed.2.bias", "fps_embedding.0.weight", "fps_embedding.2.bias", "context_embedding.2.weight",
                "camera_embedding.2.weight", "local_image_concat.0.weight", "local_image_concat.4.bias",
                "local_image_embedding.3.weight", "local_image_embedding.5.bias",
                "local_temporal_encoder.layers.0.0.norm.weight", "local_temporal_encoder.layers.0.0.fn.to_qkv.weight",
                "local_temporal_encoder.layers.0.0.fn.to_out.0.bias", "local_temporal_encoder.layers.0.1.net.0.0.weight",
                "local_temporal_encoder.layers.0.1.net.2.bias", "input_blocks.0.0.weight", "input_blocks.0.1.proj_in.weight",
                "input_blocks.1.0.temopral_conv.conv4.3.weight", "middle_block.2.transformer_blocks.0.attn1.to_q.weight",
                "output_blocks.11.2.norm.weight", "out.2.bias"):
        assert key in vgen, key
    assert not any(".to_q." in k or ".to_k." in k for k in vgen if k.startswith("local_temporal_encoder"))
    assert "local_temporal_encoder.layers.0.0.fn.to_qkv.bias" not in vgen  # the fused qkv has no bias
    assert len(vgen) == len(state) - 2  # q, k, v -> one fused tensor
    # fused rows are q, k, v; 2 heads of width 4 over the 4 image channels
    fused = vgen["local_temporal_encoder.layers.0.0.fn.to_qkv.weight"]
    assert fused.shape == (3 * 8, 4)
    assert torch.equal(fused[8:16], state["image_latents_temporal_encoder.attn1.to_k.weight"])
    # the release's input conv takes [noisy latent, image features] and holds HALF our image columns
    conv = vgen["input_blocks.0.0.weight"]
    assert conv.shape == (16, 8, 3, 3)
    assert torch.equal(conv[:, :4], state["conv_in.weight"][:, :4])
    assert torch.equal(2 * conv[:, 4:], state["conv_in.weight"][:, 4:])

    back, aside = convert_i2v(vgen, CFG)
    assert aside == {} and set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)  # x0.5 then x2: exact
    with torch.device("meta"):
        net = VideoMVI2VUNet(**CFG)
    load_strict(net, back, "round trip")
    table = i2v_module_table(CFG)
    assert table["local_image_concat.2"] == ("image_latents_proj_in.2", "param")
    assert table["input_blocks.0.1"] == ("transformer_in", "temporal")


def test_fold_image_concat_is_exact_and_reversible(state):
    folded = fold_image_concat(state, 4)
    assert set(folded) == set(state)
    assert all(folded[k] is state[k] for k in state if k != "conv_in.weight")  # only conv_in changes
    assert torch.equal(folded["conv_in.weight"][:, :4], state["conv_in.weight"][:, :4])
    assert torch.equal(folded["conv_in.weight"][:, 4:], IMAGE_CONCAT_ADDS * state["conv_in.weight"][:, 4:])
    assert torch.equal(fold_image_concat(folded, 4, 1 / IMAGE_CONCAT_ADDS)["conv_in.weight"], state["conv_in.weight"])
    # the folded conv of one addition is the original conv of the double addition, bit for bit
    gen = torch.Generator().manual_seed(3)
    x, ximg = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    bias = state["conv_in.bias"]
    original = F.conv2d(torch.cat([x, ximg + ximg], 1), state["conv_in.weight"], bias, padding=1)
    diffusers_way = F.conv2d(torch.cat([x, ximg], 1), folded["conv_in.weight"], bias, padding=1)
    torch.testing.assert_close(diffusers_way, original, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="8 input channels"):
        fold_image_concat({"conv_in.weight": torch.zeros(16, 4, 3, 3)}, 4)


# ----------------------------------------------------------------------------- against the original's forward
def test_matches_independent_vgen_reference(model, inputs, reference_output):
    ours = _ours(model, inputs)  # fps defaults to VideoMV's 8
    assert ours.shape == (B, 4, FRAMES, H, W)
    assert reference_output.abs().mean() > 0.1
    torch.testing.assert_close(ours, reference_output, atol=1e-4, rtol=1e-4)
    # the diffusers calling convention gives the same: all frames of image_latents, fps as [B],
    # the CLIP embedding as [B, D]
    full = image_latents_for_frames(inputs["latent"], FRAMES)
    same = _ours(model, inputs, image_latents=full, fps=torch.tensor([TARGET_FPS] * B),
                 image_embeddings=inputs["clip"][:, 0])
    assert torch.equal(same, ours)


def test_the_double_addition_is_folded_both_ways(state, vgen, inputs, reference_output):
    """Without the fold the diffusers model computes the single addition, not the original."""
    unfolded = fold_image_concat(state, 4, 1 / IMAGE_CONCAT_ADDS)
    with torch.device("meta"):
        net = VideoMVI2VUNet(**CFG)
    plain = _ours(load_strict(net, unfolded, "unfolded").eval(), inputs)
    assert (plain - reference_output).abs().max() > 1e-2  # differs from the original well beyond tolerance
    once = _VGenI2V(vgen, CFG["norm_num_groups"], CFG["attention_head_dim"], image_concat_adds=1)
    with torch.no_grad():
        single = once(inputs["sample"], inputs["timestep"], inputs["text"], inputs["latent"], inputs["clip"],
                      inputs["camera"], torch.full((B,), 8))
    torch.testing.assert_close(plain, single, atol=1e-4, rtol=1e-4)  # ... it is the single addition


def test_every_input_matters(model, inputs):
    base = _ours(model, inputs)
    for name, changed in (("latent", inputs["latent"] + 1.0), ("clip", -inputs["clip"]),
                          ("camera", inputs["camera"].roll(1, dims=1)), ("text", -inputs["text"])):
        assert (_ours(model, inputs, **{{"latent": "image_latents", "clip": "image_embeddings", "camera": "camera",
                                         "text": "encoder_hidden_states"}[name]: changed}) - base).abs().max() > 1e-3, name
    assert (_ours(model, inputs, fps=16) - base).abs().max() > 1e-3
    # without a CLIP embedding the 4 global tokens are left out (VGen's image=None)
    with torch.no_grad():
        context = model.context_tokens(inputs["text"], image_latents_for_frames(inputs["latent"], FRAMES), None)
        full_context = model.context_tokens(inputs["text"], image_latents_for_frames(inputs["latent"], FRAMES),
                                            inputs["clip"])
    assert context.shape == (B, L + 64, D) and full_context.shape == (B, L + 64 + 4, D)
    assert torch.equal(full_context[:, : L + 64], context)
    with pytest.raises(ValueError, match="image_latents must be"):
        _ours(model, inputs, image_latents=torch.zeros(B, 4, FRAMES - 1, H, W))
    with pytest.raises(ValueError, match="needs encoder_hidden_states"):
        _ours(model, inputs, image_latents=None)
    with pytest.raises(ValueError, match="image_embeddings must be"):
        _ours(model, inputs, image_embeddings=torch.zeros(B, 2, D))
    with pytest.raises(ValueError, match="camera must be"):
        _ours(model, inputs, camera=inputs["camera"][:, :2])


def test_image_latents_for_frames():
    latent = torch.randn(2, 4, 3, 3)
    frames = image_latents_for_frames(latent, 5)
    assert frames.shape == (2, 4, 5, 3, 3)
    assert torch.equal(frames[:, :, 0], latent)
    for k in range(1, 5):
        assert torch.equal(frames[:, :, k], torch.full_like(latent, k / 4))
    assert torch.equal(image_latents_for_frames(latent[:, :, None], 1), latent[:, :, None])


# ----------------------------------------------------------------------------- camera and fps embedding
def test_zero_camera_layer_equals_stock_i2vgen_xl(state, inputs):
    from diffusers import I2VGenXLUNet

    fresh = VideoMVI2VUNet(**CFG)
    assert torch.count_nonzero(fresh.camera_embedding[2].weight) == 0
    assert fresh.camera_embedding[0].weight.shape == (4 * 16, 16)
    zeroed = dict(state)
    for key in ("camera_embedding.2.weight", "camera_embedding.2.bias"):
        zeroed[key] = torch.zeros_like(state[key])
    ours = VideoMVI2VUNet(**CFG)
    ours.load_state_dict(zeroed)
    ours.eval()
    stock = I2VGenXLUNet(**{k: v for k, v in CFG.items() if k != "camera_dim"})
    stock.load_state_dict({k: v for k, v in zeroed.items() if not k.startswith("camera_embedding")})
    stock.eval()
    full = image_latents_for_frames(inputs["latent"], FRAMES)
    with torch.no_grad():
        expected = stock(inputs["sample"], inputs["timestep"], fps=torch.tensor([8, 8]), image_latents=full,
                         image_embeddings=inputs["clip"][:, 0], encoder_hidden_states=inputs["text"]).sample
    assert torch.equal(_ours(ours, inputs), expected)
    assert torch.equal(_ours(ours, inputs, camera=None), expected)


def test_camera_is_added_per_view_after_the_repeat(model, inputs):
    timestep, camera = inputs["timestep"], inputs["camera"]
    with torch.no_grad():
        emb = model.frame_embedding(timestep, B, FRAMES, camera)
        plain = model.frame_embedding(timestep, B, FRAMES)
        mlp = model.camera_embedding(camera.reshape(B * FRAMES, 16))
        per_item = model.time_embedding(model.time_proj(timestep)) + model.fps_embedding(
            model.time_proj(torch.tensor([8, 8])))
    torch.testing.assert_close(emb, plain + mlp, atol=0, rtol=0)
    torch.testing.assert_close(plain, per_item.repeat_interleave(FRAMES, dim=0), atol=0, rtol=0)
    seen = []
    hook = model.up_blocks[-1].resnets[-1].register_forward_hook(lambda mod, args, out: seen.append(args[1]))
    try:
        out = _ours(model, inputs)
    finally:
        hook.remove()
    assert torch.equal(seen[0], emb)
    change = (_ours(model, inputs, camera=camera.roll(1, dims=1)) - out).abs().amax(dim=(0, 1, 3, 4))
    assert (change > 1e-3).all() and len({round(float(c), 4) for c in change}) == FRAMES


# ----------------------------------------------------------------------------- bad checkpoints
def test_unconsumed_keys_are_named_and_lgm_set_aside(state, vgen):
    lgm = {"lgm_big.unet.conv_in.weight": torch.zeros(2, 9, 3, 3), "lgm_big.conv.bias": torch.zeros(14)}
    unet, aside = convert_i2v({**vgen, **lgm}, CFG)
    assert set(aside) == set(lgm) and set(unet) == set(state)
    for extra in ("local_temporal_encoder.layers.0.0.fn.to_qkv.bias", "local_temporal_encoder.layers.1.0.norm.weight",
                  "local_image_concat.6.weight", "local_image_embedding.1.weight", "y_embedding.0.weight",
                  "input_blocks.1.0.bogus.weight"):
        with pytest.raises(ValueError, match=extra.replace(".", r"\.")):
            convert_i2v({**vgen, extra: torch.zeros(1)}, CFG)
    with pytest.raises(ValueError, match=r"to_qkv\.weight must be"):
        convert_i2v({**vgen, "local_temporal_encoder.layers.0.0.fn.to_qkv.weight": torch.zeros(10, 4)}, CFG)
    incomplete, _ = convert_i2v({k: v for k, v in vgen.items() if k != "fps_embedding.2.bias"}, CFG)
    with torch.device("meta"):
        net = VideoMVI2VUNet(**CFG)
    with pytest.raises(WeightsError, match=r"fps_embedding\.2\.bias"):
        load_strict(net, incomplete, "test")
    with pytest.raises(ValueError, match="all of"):
        to_vgen_i2v({k: v for k, v in state.items() if not k.endswith("attn1.to_v.weight")}, CFG)


def test_t2v_i2v_and_diffusers_checkpoints_are_told_apart(state, vgen):
    t2v_cfg = config_for_tests()
    t2v = to_vgen(VideoMVT2VUNet(**t2v_cfg).state_dict(), t2v_cfg)
    with pytest.raises(ValueError, match="not VideoMV's I2V checkpoint"):
        convert_i2v(t2v, CFG)
    with pytest.raises(ValueError, match="I2V.*load_i2v_unet"):
        convert_t2v(vgen, t2v_cfg)
    with pytest.raises(ValueError, match="diffusers-layout.*I2V"):
        convert_i2v(state, CFG)
    with pytest.raises(ValueError, match="not a VGen-layout"):
        convert_i2v({"encoder.layer.0.weight": torch.zeros(2)}, CFG)


def test_loader_reads_wrapped_bare_and_safetensors(state, vgen, tmp_path):
    from safetensors.torch import save_file

    lgm = {"lgm_big.conv.weight": torch.ones(14, 14, 1, 1)}
    wrapped, bare, safe = tmp_path / "i2v_00882000.pth", tmp_path / "bare.pth", tmp_path / "i2v.safetensors"
    torch.save({"state_dict": {**vgen, **lgm}, "step": 882000}, wrapped)
    torch.save(vgen, bare)
    save_file({k: v.contiguous() for k, v in vgen.items()}, str(safe))
    for path, expect_aside in ((wrapped, lgm), (bare, {}), (safe, {})):
        net, aside = load_i2v_unet(path, torch.float32, CFG)
        assert isinstance(net, VideoMVI2VUNet) and not net.training
        assert not any(p.is_meta or p.requires_grad for p in net.parameters())
        assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # folded on load
        assert set(aside) == set(expect_aside)
    half, _ = load_i2v_unet(bare, torch.float16, CFG)
    assert half.dtype == torch.float16

    with pytest.raises(WeightsError, match="bare.pth.*load_i2v_unet"):
        load_t2v_unet(bare, torch.float32, config_for_tests())
    t2v = tmp_path / "t2v.pth"
    torch.save({"state_dict": to_vgen(VideoMVT2VUNet(**config_for_tests()).state_dict(), config_for_tests()),
                "step": 1}, t2v)
    with pytest.raises(WeightsError, match="t2v.pth.*load_t2v_unet"):
        load_i2v_unet(t2v, torch.float32, CFG)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": vgen, "cfg": _Opaque()}, unsafe)
    with pytest.raises(WeightsError, match="weights-only"):
        load_i2v_unet(unsafe, torch.float32, CFG)
    with pytest.raises(WeightsError, match="missing"):
        load_i2v_unet(tmp_path / "absent.pth", torch.float32, CFG)
    with pytest.raises(WeightsError, match="(?s)does not match.*shape mismatch"):
        load_i2v_unet(bare, torch.float32, dict(CFG, block_out_channels=(32, 32, 32, 32)))


class _Opaque:
    """A pickled object that weights_only loading must refuse."""


# ----------------------------------------------------------------------------- full size
def test_release_size_on_meta():
    from diffusers import I2VGenXLUNet

    config = i2v_config_for_release()
    with torch.device("meta"):
        net = VideoMVI2VUNet(**config)
        stock = I2VGenXLUNet(**{k: v for k, v in config.items() if k != "camera_dim"})
    count = sum(p.numel() for p in net.parameters())
    assert count == 1_422_130_664  # stock I2VGenXLUNet 1,420,469,224 + camera MLP 1,661,440
    assert count - sum(p.numel() for p in stock.parameters()) == 16 * 1280 + 1280 + 1280 * 1280 + 1280
    assert net.conv_in.weight.shape == (320, 8, 3, 3)
    assert net.context_embedding[2].weight.shape == (4 * 1024, 1280)
    assert net.image_latents_context_embedding[5].weight.shape == (1024, 64, 3, 3)
    keys = set(net.state_dict())
    vgen_keys = to_vgen_i2v({k: torch.empty(1, 8, 1, 1) if k == "conv_in.weight" else torch.empty(0) for k in keys},
                            config)
    assert len(vgen_keys) == len(keys) - 2
    modules = {name for name, _ in net.named_modules()}
    assert all(target in modules for target, _ in i2v_module_table(config).values())
