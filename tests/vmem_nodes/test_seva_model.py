"""The SEVA multi-view UNet: key names, sizes, an independent functional forward, frame coupling."""
import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from consistent_video.vmem_nodes.model import (
    SevaParams,
    SevaUNet,
    infer_params,
    strip_prefix,
)

# Official checkpoint size (SevaParams() defaults), counted once: 1,263,968,004 parameters.
FULL_PARAMETERS = 1_263_968_004

# Tiny model: two levels, attention on both, depth 2 at the last level (so in the middle),
# joint attention in the middle and in the ds2 output layers, per-frame elsewhere.
TINY = SevaParams(
    model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2, 1),
    num_head_channels=8, transformer_depth=(1, 2), context_dim=12, num_frames=3,
    unflatten_names=("middle_ds2", "output_ds2"), norm_groups=4,
)
BATCH, LATENT, TOKENS = 2, 8, 2


@pytest.fixture(scope="module")
def full_model() -> SevaUNet:
    with torch.device("meta"):
        return SevaUNet(SevaParams())


def randomise(model: SevaUNet, seed: int = 0) -> SevaUNet:
    """Non-zero weights everywhere (no zero-initialised layers), unit-ish activations."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim > 1:
                p.copy_(noise / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
    return model


def tiny_model(params: SevaParams = TINY, seed: int = 0) -> SevaUNet:
    return randomise(SevaUNet(params), seed).eval()


def tiny_inputs(params: SevaParams = TINY, seed: int = 1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    n = BATCH * params.num_frames
    x = torch.randn(n, params.in_channels, LATENT, LATENT, generator=gen)
    t = torch.randint(0, 1000, (n,), generator=gen)
    context = torch.randn(n, TOKENS, params.context_dim, generator=gen)
    dense = torch.randn(n, params.dense_in_channels, 6, 6, generator=gen)
    return x.to(dtype), t, context.to(dtype), dense.to(dtype)


# ----------------------------------------------------------------------------- full size


def test_full_size_parameter_count(full_model):
    count = sum(p.numel() for p in full_model.parameters())
    assert 1.2e9 < count < 1.4e9
    assert count == FULL_PARAMETERS


def test_full_size_keys_and_shapes(full_model):
    sd = full_model.state_dict()
    shapes = {
        "time_embed.0.weight": (1280, 320),
        "time_embed.2.weight": (1280, 1280),
        "input_blocks.0.0.weight": (320, 11, 3, 3),
        "input_blocks.1.0.dense_emb_layers.0.weight": (640, 6, 1, 1),
        "input_blocks.1.0.emb_layers.1.weight": (320, 1280),
        "input_blocks.1.1.time_mix_blocks.0.ff_in.net.0.proj.weight": (2560, 320),
        "input_blocks.1.1.time_mix_blocks.0.ff.net.2.weight": (320, 1280),
        "input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "input_blocks.4.1.transformer_blocks.0.ff.net.0.proj.weight": (5120, 640),
        "input_blocks.6.0.op.weight": (640, 640, 3, 3),
        "input_blocks.7.1.proj_in.weight": (1280, 1280),
        "input_blocks.9.0.op.weight": (1280, 1280, 3, 3),
        "input_blocks.11.0.out_layers.3.weight": (1280, 1280, 3, 3),
        "middle_block.0.in_layers.0.weight": (1280,),
        "middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 1024),
        "middle_block.1.time_mix_blocks.0.attn2.to_v.weight": (1280, 1024),
        "middle_block.1.norm.weight": (1280,),
        "middle_block.2.out_layers.3.weight": (1280, 1280, 3, 3),
        "output_blocks.0.0.in_layers.0.weight": (2560,),
        "output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.3.1.proj_out.weight": (1280, 1280),
        "output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.8.0.skip_connection.weight": (640, 960, 1, 1),
        "output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        "output_blocks.11.1.time_mix_blocks.0.norm3.weight": (320,),
        "out.0.weight": (320,),
        "out.2.weight": (4, 320, 3, 3),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert len(full_model.input_blocks) == 12 and len(full_model.output_blocks) == 12
    for absent in ("input_blocks.10.1.", "input_blocks.11.1.", "output_blocks.0.1.",
                   "output_blocks.2.2.", "output_blocks.11.2.", "input_blocks.12."):
        assert not [k for k in sd if k.startswith(absent)], absent
    for key in sd:
        if any(f".{name}." in key for name in ("to_q", "to_k", "to_v")):
            assert key.endswith(".weight"), key
    assert "middle_block.1.transformer_blocks.0.attn1.to_out.0.bias" in sd
    assert "output_blocks.3.1.time_mix_blocks.0.attn2.to_out.0.bias" in sd
    assert "input_blocks.1.0.skip_connection.weight" not in sd  # identity when 320 -> 320


def test_full_size_heads_and_joint_layers(full_model):
    def transformer(block):
        return block[1]

    heads = {i: transformer(full_model.input_blocks[i]).transformer_blocks[0].attn1.heads for i in (1, 4, 7)}
    assert heads == {1: 5, 4: 10, 7: 20}
    assert transformer(full_model.middle_block).name == "middle_ds8"
    names = {i: transformer(b).name for i, b in enumerate(full_model.output_blocks) if i >= 3}
    assert names == {i: f"output_ds{4 if i < 6 else 2 if i < 9 else 1}" for i in range(3, 12)}
    joint = [i for i in range(3, 12) if transformer(full_model.output_blocks[i]).joint]
    assert joint == list(range(3, 9)) and transformer(full_model.middle_block).joint
    assert not any(transformer(full_model.input_blocks[i]).joint for i in (1, 2, 4, 5, 7, 8))


# ----------------------------------------------------------------- functional reference


class Functional:
    """The whole UNet as torch.nn.functional calls on the state dict (float64).

    The block layout is read from the key names; attention is explicit softmax(q k^T / sqrt(d)) v.
    """

    def __init__(self, sd: dict, params: SevaParams):
        self.sd = {k: v.double() for k, v in sd.items()}
        self.p = params

    def has(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.sd)

    def lin(self, x, pre):
        return F.linear(x, self.sd[f"{pre}.weight"], self.sd.get(f"{pre}.bias"))

    def ln(self, x, pre):
        return F.layer_norm(x, x.shape[-1:], self.sd[f"{pre}.weight"], self.sd[f"{pre}.bias"])

    def gn(self, x, pre, eps=1e-5):
        return F.group_norm(x, self.p.norm_groups, self.sd[f"{pre}.weight"], self.sd[f"{pre}.bias"], eps)

    def conv(self, x, pre, stride=1):
        w = self.sd[f"{pre}.weight"]
        return F.conv2d(x, w, self.sd[f"{pre}.bias"], stride=stride, padding=w.shape[-1] // 2)

    def attention(self, x, context, pre):
        q, k, v = (self.lin(src, f"{pre}.{name}") for src, name in
                   ((x, "to_q"), (context, "to_k"), (context, "to_v")))
        d = self.p.num_head_channels
        heads = q.shape[-1] // d
        q, k, v = (z.reshape(z.shape[0], z.shape[1], heads, d) for z in (q, k, v))
        weights = torch.softmax(torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d), dim=-1)
        out = torch.einsum("bhij,bjhd->bihd", weights, v).reshape(x.shape[0], x.shape[1], heads * d)
        return self.lin(out, f"{pre}.to_out.0")

    def ff(self, x, pre):
        a, gate = self.lin(x, f"{pre}.net.0.proj").chunk(2, dim=-1)
        return self.lin(a * F.gelu(gate), f"{pre}.net.2")

    def resblock(self, x, emb, dense, pre):
        h = F.silu(self.gn(x, f"{pre}.in_layers.0"))
        d = F.interpolate(dense, size=h.shape[2:], mode="bilinear", align_corners=True)
        d = F.conv2d(d, self.sd[f"{pre}.dense_emb_layers.0.weight"], self.sd[f"{pre}.dense_emb_layers.0.bias"])
        c = x.shape[1]
        h = h * (1 + d[:, :c]) + d[:, c:]
        h = self.conv(h, f"{pre}.in_layers.2")
        h = h + self.lin(F.silu(emb), f"{pre}.emb_layers.1")[:, :, None, None]
        h = self.conv(F.silu(self.gn(h, f"{pre}.out_layers.0")), f"{pre}.out_layers.3")
        skip = self.conv(x, f"{pre}.skip_connection") if f"{pre}.skip_connection.weight" in self.sd else x
        return skip + h

    def transformer(self, x, context, pre, joint):
        n, c, hh, ww = x.shape
        frames = self.p.num_frames
        b, s = n // frames, hh * ww
        first = context.reshape(b, frames, *context.shape[1:])[:, 0]           # [b, L, cd]
        time_context = first[:, None].expand(b, s, *first.shape[1:]).reshape(b * s, *first.shape[1:])
        z = self.gn(x, f"{pre}.norm", eps=1e-6).reshape(n, c, s).transpose(1, 2)
        z = self.lin(z, f"{pre}.proj_in")
        k = 0
        while self.has(f"{pre}.transformer_blocks.{k}."):
            bp, mp = f"{pre}.transformer_blocks.{k}", f"{pre}.time_mix_blocks.{k}"
            y, ctx = (z.reshape(b, frames * s, -1), first) if joint else (z, context)
            y = self.attention(self.ln(y, f"{bp}.norm1"), self.ln(y, f"{bp}.norm1"), f"{bp}.attn1") + y
            y = self.attention(self.ln(y, f"{bp}.norm2"), ctx, f"{bp}.attn2") + y
            y = self.ff(self.ln(y, f"{bp}.norm3"), f"{bp}.ff") + y
            z = y.reshape(n, s, -1)
            m = z.reshape(b, frames, s, -1).permute(0, 2, 1, 3).reshape(b * s, frames, -1)
            m = self.ff(self.ln(m, f"{mp}.norm_in"), f"{mp}.ff_in") + m
            m = self.attention(self.ln(m, f"{mp}.norm1"), self.ln(m, f"{mp}.norm1"), f"{mp}.attn1") + m
            m = self.attention(self.ln(m, f"{mp}.norm2"), time_context, f"{mp}.attn2") + m
            m = self.ff(self.ln(m, f"{mp}.norm3"), f"{mp}.ff")
            z = z + m.reshape(b, s, frames, -1).permute(0, 2, 1, 3).reshape(n, s, -1)
            k += 1
        z = self.lin(z, f"{pre}.proj_out").transpose(1, 2).reshape(n, c, hh, ww)
        return z + x

    def block(self, h, emb, context, dense, pre, kind, ds):
        m = 0
        while self.has(f"{pre}.{m}."):
            sub = f"{pre}.{m}"
            if f"{sub}.op.weight" in self.sd:
                h = self.conv(h, f"{sub}.op", stride=2)
            elif f"{sub}.conv.weight" in self.sd:
                h = self.conv(h.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3), f"{sub}.conv")
            elif f"{sub}.in_layers.0.weight" in self.sd:
                h = self.resblock(h, emb, dense, sub)
            elif f"{sub}.proj_in.weight" in self.sd:
                h = self.transformer(h, context, sub, f"{kind}_ds{ds(h)}" in self.p.unflatten_names)
            else:
                h = self.conv(h, sub)  # the input convolution
            m += 1
        return h

    def __call__(self, x, t, context, dense):
        x, context, dense = x.double(), context.double(), dense.double()
        half = self.p.model_channels // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
        args = t.double()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
        emb = self.lin(F.silu(self.lin(emb, "time_embed.0")), "time_embed.2")

        def ds(h):
            return x.shape[2] // h.shape[2]

        h, skips, i = x, [], 0
        while self.has(f"input_blocks.{i}."):
            h = self.block(h, emb, context, dense, f"input_blocks.{i}", "input", ds)
            skips.append(h)
            i += 1
        h = self.block(h, emb, context, dense, "middle_block", "middle", ds)
        i = 0
        while self.has(f"output_blocks.{i}."):
            h = self.block(torch.cat([h, skips.pop()], dim=1), emb, context, dense,
                           f"output_blocks.{i}", "output", ds)
            i += 1
        assert not skips
        return self.conv(F.silu(self.gn(h, "out.0")), "out.2")


def test_tiny_forward_matches_functional_reference():
    model = tiny_model()
    names = {m.name: m.joint for m in model.modules() if hasattr(m, "joint")}
    # Both joint and per-frame layers are covered.
    assert names == {"input_ds1": False, "input_ds2": False, "middle_ds2": True,
                     "output_ds2": True, "output_ds1": False}
    assert len(model.middle_block[1].transformer_blocks) == 2
    x, t, context, dense = tiny_inputs()
    with torch.no_grad():
        out = model(x, t, context, dense)
    reference = Functional(model.state_dict(), TINY)(x, t, context, dense)
    assert out.shape == (BATCH * TINY.num_frames, TINY.out_channels, LATENT, LATENT)
    assert out.dtype == torch.float32
    assert reference.abs().max() > 0.1
    torch.testing.assert_close(out.double(), reference, atol=1e-4, rtol=1e-4)
    # Float timesteps give the same result as the integer DDPM index.
    with torch.no_grad():
        torch.testing.assert_close(model(x, t.float(), context, dense), out)


# ------------------------------------------------------------------------ frame coupling


def changed_rows(model, inputs, which: str, row: int) -> list[int]:
    x, t, context, dense = (z.clone() for z in inputs)
    target = {"x": x, "context": context, "dense": dense}[which]
    with torch.no_grad():
        before = model(x, t, context, dense)
        target[row] += 1.0
        after = model(x, t, context, dense)
    diff = (after - before).flatten(1).abs().amax(dim=1)
    return [i for i, d in enumerate(diff.tolist()) if d > 1e-6]


def zero_time_mix(model: torch.nn.Module) -> None:
    """Zero the last layer of every time-mix block, so the temporal branch adds nothing."""
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "time_mix_blocks"):
                for mix in m.time_mix_blocks:
                    mix.ff.net[2].weight.zero_()
                    mix.ff.net[2].bias.zero_()


def test_frames_independent_without_temporal_and_joint_attention():
    params = replace(TINY, unflatten_names=())
    model = tiny_model(params)
    zero_time_mix(model)
    inputs = tiny_inputs(params)
    for which in ("x", "context", "dense"):
        assert changed_rows(model, inputs, which, 1) == [1], which
        assert changed_rows(model, inputs, which, 4) == [4], which
    # The time mix cross-attends the first frame's context, but its update is zeroed here.
    assert changed_rows(model, inputs, "context", 0) == [0]


def test_temporal_and_joint_attention_couple_frames_of_one_item_only():
    frames = TINY.num_frames
    inputs = tiny_inputs()
    # Time mix only (no joint layers): a frame reaches the other frames of its item.
    params = replace(TINY, unflatten_names=())
    model = tiny_model(params)
    assert changed_rows(model, inputs, "x", 1) == list(range(frames))
    # Time-mix cross-attention reads the first frame's context: it reaches every frame,
    # a later frame's context reaches the others only through the temporal self-attention.
    assert changed_rows(model, inputs, "context", frames) == list(range(frames, 2 * frames))
    # Joint layers only (time mix zeroed): coupling within the item, never across items.
    model = tiny_model()
    zero_time_mix(model)
    assert changed_rows(model, inputs, "x", frames + 2) == list(range(frames, 2 * frames))
    # Joint layers cross-attend only the first frame's context: another frame's context
    # then acts through its own per-frame layers, and spreads via joint self-attention.
    assert changed_rows(model, inputs, "context", 1) == list(range(frames))


def test_joint_context_is_first_frame_only():
    """With joint layers and no time mix, the context of later frames only matters in per-frame layers."""
    params = replace(TINY, attention_resolutions=(2,),
                     unflatten_names=("input_ds2", "middle_ds2", "output_ds2"))
    model = tiny_model(params)
    zero_time_mix(model)
    inputs = tiny_inputs(params)
    assert changed_rows(model, inputs, "context", 1) == []
    assert changed_rows(model, inputs, "context", 0) == list(range(params.num_frames))


# ----------------------------------------------------------------- params and state dicts


ROUND_TRIP = [
    TINY,
    SevaParams(in_channels=5, model_channels=8, out_channels=3, num_frames=4, num_res_blocks=2,
               attention_resolutions=(2,), channel_mult=(1, 2, 3), num_head_channels=8,
               transformer_depth=(1, 3, 2), context_dim=7, dense_in_channels=4,
               unflatten_names=("middle_ds4",), norm_groups=4),
    SevaParams(model_channels=8, channel_mult=(1, 1, 2), num_res_blocks=1, attention_resolutions=(),
               num_head_channels=4, transformer_depth=(1, 1, 2), context_dim=5, norm_groups=2,
               unflatten_names=()),
    SevaParams(model_channels=8, channel_mult=(2,), num_res_blocks=3, attention_resolutions=(1,),
               num_head_channels=8, transformer_depth=(2,), context_dim=6, norm_groups=8),
]


def infer_like(sd, p: SevaParams) -> SevaParams:
    return infer_params(sd, num_frames=p.num_frames, num_head_channels=p.num_head_channels,
                        norm_groups=p.norm_groups, unflatten_names=p.unflatten_names)


@pytest.mark.parametrize("params", ROUND_TRIP, ids=range(len(ROUND_TRIP)))
def test_infer_params_round_trip(params):
    with torch.device("meta"):
        sd = SevaUNet(params).state_dict()
    assert infer_like(sd, params) == params
    prefixed = {f"module.{k}": v for k, v in sd.items()}
    assert infer_like(prefixed, params) == params


def test_infer_params_full_size(full_model):
    assert infer_params(full_model.state_dict()) == SevaParams()


def test_tiny_state_dict_loads_strictly_into_inferred_model():
    sd = {f"module.{k}": v for k, v in tiny_model().state_dict().items()}
    clean = strip_prefix(sd)
    model = SevaUNet(infer_like(clean, TINY))
    model.load_state_dict(clean, strict=True)
    x, t, context, dense = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, context, dense), tiny_model()(x, t, context, dense))


@pytest.mark.parametrize("keys", [
    ("conv_in.weight", "down_blocks.0.resnets.0.conv1.weight", "time_embedding.linear_1.weight"),
    ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.time_embed.0.weight"),
])
def test_infer_params_rejects_other_unets(keys):
    state = {k: torch.zeros(4, 4) for k in keys}
    with pytest.raises(ValueError, match="does not look like a SEVA/VMem UNet") as err:
        infer_params(state)
    assert sorted(keys)[0] in str(err.value)


def test_infer_params_rejects_unet_without_dense_conditioning():
    with torch.device("meta"):
        sd = SevaUNet(TINY).state_dict()
    sd = {k: v for k, v in sd.items() if "dense_emb_layers" not in k}
    with pytest.raises(ValueError, match="dense_emb_layers"):
        infer_params(sd)


def test_strip_prefix():
    t = torch.zeros(1)
    assert strip_prefix({"module.a.weight": t, "module.b": t}) == {"a.weight": t, "b": t}
    mixed = {"module.a": t, "b": t}
    assert strip_prefix(mixed) is mixed
    plain = {"a.module.x": t}
    assert strip_prefix(plain) is plain
    assert strip_prefix({"module.module.a": t}) == {"module.a": t}
    assert strip_prefix({}) == {}


def test_params_dict_round_trip_and_validation():
    data = json.loads(json.dumps(TINY.to_dict()))
    assert data["channel_mult"] == [1, 2]
    assert SevaParams.from_dict(data) == TINY
    assert SevaParams().validate() == SevaParams()
    with pytest.raises(ValueError, match="bogus"):
        SevaParams.from_dict({**data, "bogus": 1})
    bad = [
        ({"model_channels": 0}, "model_channels"),
        ({"channel_mult": ()}, "channel_mult"),
        ({"transformer_depth": (1, 1)}, "transformer_depth"),
        ({"attention_resolutions": (3,)}, "attention_resolutions"),
        ({"norm_groups": 7}, "norm_groups"),
        ({"num_head_channels": 48}, "num_head_channels"),
        ({"dropout": 1.5}, "dropout"),
        ({"unflatten_names": ("middle_ds8", 3)}, "unflatten_names"),
    ]
    for change, field in bad:
        with pytest.raises(ValueError, match=field):
            SevaUNet(replace(SevaParams(), **change))


def test_forward_rejects_bad_shapes():
    model = tiny_model()
    x, t, context, dense = tiny_inputs()
    with pytest.raises(ValueError, match="num_frames"):
        model(x, t, context, dense, num_frames=4)
    with pytest.raises(ValueError, match="divisible"):
        model(x[..., :7, :7], t, context, dense)
    with pytest.raises(ValueError, match="rows"):
        model(x, t[:-1], context, dense)


# ---------------------------------------------------------------------------- dtypes


def test_bfloat16_on_cpu():
    model = tiny_model()
    x, t, context, dense = tiny_inputs()
    with torch.no_grad():
        reference = model(x, t, context, dense)
        out = model.to(torch.bfloat16)(*tiny_inputs(dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    error = (out.float() - reference).norm() / reference.norm()
    assert error < 0.05
