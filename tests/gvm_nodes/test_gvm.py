"""GVM: strict loading, the procedure against stock diffusers + PEFT, windows, bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from consistent_video.gvm_nodes import family as gvm_family
from consistent_video.gvm_nodes.foreground import box_blur, composite, estimate_foreground, parse_color
from consistent_video.gvm_nodes.lora import LoraError, merge_lora
from consistent_video.gvm_nodes.nodes import CVS_GVMMatte, CVS_MatteComposite
from consistent_video.gvm_nodes.pipeline import (GVMMatter, MatteSettings, matte_frames, matte_stream,
                                                 window_count, working_size)
from consistent_video.nodes.comfy import runtime
from consistent_video.nodes.comfy.errors import NodeInputError
from consistent_video.nodes.comfy.weights import WeightsError, read_state_dict, resolve

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights") / "gvm"
    gvm_family.write_smoke_gvm(folder)
    return folder


@pytest.fixture(scope="module")
def handle(smoke_dir):
    return gvm_family.load_gvm(smoke_dir, CPU, torch.float32)


def _copy(smoke_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "gvm"
    shutil.copytree(smoke_dir, target)
    return target


# ----------------------------------------------------------------------------- loading
def test_official_layout_loads_strictly(handle, smoke_dir):
    assert set(handle.modules) == {"unet", "vae"}
    assert handle.is_smoke
    assert handle.extra["scheduler"].config.num_train_timesteps == 1000
    assert handle.modules["unet"].context_dim == 24  # from the config, not a hard-coded 1024
    # every parameter is real (nothing left on the meta device)
    assert not any(p.is_meta for m in handle.modules.values() for p in m.parameters())


def test_lora_is_merged_like_peft(handle, smoke_dir):
    """Our merge equals PEFT's LoraModel + merge_and_unload on the stock diffusers UNet."""
    peft = pytest.importorskip("peft")
    from diffusers import UNetSpatioTemporalConditionModel
    from peft.utils import set_peft_model_state_dict

    stock = _stock_unet(smoke_dir, merge=False)
    config = peft.LoraConfig.from_pretrained(str(smoke_dir / "unet"))
    wrapped = peft.LoraModel(stock, config, "default")
    result = set_peft_model_state_dict(wrapped, torch.load(smoke_dir / "unet/pytorch_lora_weights.pt",
                                                           weights_only=True))
    assert not result.unexpected_keys
    merged = wrapped.merge_and_unload()
    assert isinstance(merged, UNetSpatioTemporalConditionModel)
    ours = handle.modules["unet"].state_dict()
    theirs = {k: v for k, v in merged.state_dict().items() if not k.startswith("add_embedding")}
    assert set(ours) == set(theirs)
    changed = 0
    for key, value in ours.items():
        torch.testing.assert_close(value, theirs[key], rtol=1e-5, atol=1e-6)
        base = read_state_dict(smoke_dir / "unet/diffusion_pytorch_model.safetensors", "x")[key]
        changed += int(not torch.equal(base, value))
    assert changed >= 5  # the LoRA really changed weights (q, k, v, out, conv_in)


def _stock_unet(smoke_dir: Path, merge: bool = True):
    """Stock diffusers SVD UNet with the GVM weights and a zeroed added-time embedding."""
    from diffusers import UNetSpatioTemporalConditionModel
    cfg = json.loads((smoke_dir / "unet/config.json").read_text())
    keep = {"down_block_types", "up_block_types", "block_out_channels", "layers_per_block",
            "num_attention_heads", "cross_attention_dim", "transformer_layers_per_block",
            "in_channels", "out_channels"}
    unet = UNetSpatioTemporalConditionModel(**{k: v for k, v in cfg.items() if k in keep},
                                            addition_time_embed_dim=8, projection_class_embeddings_input_dim=24)
    state = read_state_dict(smoke_dir / "unet/diffusion_pytorch_model.safetensors", "unet")
    if merge:
        merge_lora(state, torch.load(smoke_dir / "unet/pytorch_lora_weights.pt", weights_only=True),
                   json.loads((smoke_dir / "unet/adapter_config.json").read_text()))
    missing, unexpected = unet.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("add_embedding") for k in missing)
    torch.nn.init.zeros_(unet.add_embedding.linear_2.weight)
    torch.nn.init.zeros_(unet.add_embedding.linear_2.bias)
    return unet.eval()


def test_procedure_matches_stock_diffusers_step_by_step(handle, smoke_dir):
    from diffusers import AutoencoderKLTemporalDecoder
    settings = MatteSettings(size=64, max_resolution=256, frames_per_window=5, decode_chunk_size=3, refine_steps=1)
    matter = GVMMatter(handle.modules["unet"], handle.modules["vae"], 1000, settings)
    frames = torch.rand(5, 64, 96, 3, generator=torch.Generator().manual_seed(1))
    ours = matter.matte_window(frames)

    unet = _stock_unet(smoke_dir)
    vae = AutoencoderKLTemporalDecoder.from_pretrained(str(smoke_dir / "vae")).eval()
    with torch.no_grad():
        x = frames.permute(0, 3, 1, 2) * 2 - 1  # 64x96: already the working size, a multiple of 32
        latents = torch.cat([vae.encode(c).latent_dist.mode() for c in x.split(3)]) * vae.config.scaling_factor
        context = torch.zeros(1, 1, 24)
        current = torch.zeros_like(latents)
        for _ in range(2):  # one step + one refinement, both at t = 999
            inp = torch.cat([current, latents], dim=1).unsqueeze(0)
            current = unet(inp, torch.tensor([999]), context, added_time_ids=torch.zeros(1, 3)).sample[0]
        decoded = torch.cat([vae.decode(c / vae.config.scaling_factor, num_frames=c.shape[0]).sample
                             for c in current.split(3)])
        expected = (decoded.mean(dim=1) * 0.5 + 0.5).clamp(0, 1)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=2e-4)  # float32 rounding of two merges


def test_resize_pad_and_crop_back(handle):
    """Odd input sizes: resized to the working size, reflect-padded to 32, cropped and resized back."""
    settings = MatteSettings(size=64, max_resolution=256, frames_per_window=2, overlap=0)
    matter = GVMMatter(handle.modules["unet"], handle.modules["vae"], 1000, settings)
    frames = torch.rand(2, 33, 47, 3, generator=torch.Generator().manual_seed(2))
    out = matter.matte_window(frames)
    assert out.shape == (2, 33, 47)
    hw = working_size(33, 47, 64, 256)
    assert hw == (64, 91)
    x = F.interpolate(frames.permute(0, 3, 1, 2), size=hw, mode="bilinear", align_corners=False)
    x = F.pad(x, (0, 5, 0, 0), mode="reflect") * 2 - 1  # 91 -> 96
    alpha = matter.decode_alpha(matter.predict(matter.encode(x)))[:, :64, :91]
    expected = F.interpolate(alpha[:, None], size=(33, 47), mode="bilinear", align_corners=False,
                             antialias=True)[:, 0].clamp(0, 1)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("h,w,size,cap,expected", [
    (1080, 1920, 720, 960, (540, 960)),    # the GVM README example
    (1080, 1920, 720, 1024, (576, 1024)),
    (720, 1280, 720, 2000, (720, 1280)),
    (180, 320, 720, 4000, (720, 1280)),    # small videos are upscaled
    (1920, 1080, 720, 960, (960, 540)),    # portrait
    (1, 1, 64, 128, (64, 64)),
])
def test_working_size_follows_torchvision_rule(h, w, size, cap, expected):
    assert working_size(h, w, size, cap) == expected


def test_wrong_checkpoint_is_named(smoke_dir, tmp_path):
    folder = _copy(smoke_dir, tmp_path)
    shutil.copy(folder / "vae/diffusion_pytorch_model.safetensors", folder / "unet/diffusion_pytorch_model.safetensors")
    with pytest.raises(WeightsError, match=r"missing key\(s\).*\n.*unexpected key\(s\)"):
        gvm_family.load_gvm(folder, CPU, torch.float32)


def test_stock_svd_unet_checkpoint_is_rejected(smoke_dir, tmp_path):
    """A stock SVD UNet has add_embedding weights GVM's network does not."""
    from safetensors.torch import save_file
    folder = _copy(smoke_dir, tmp_path)
    state = read_state_dict(folder / "unet/diffusion_pytorch_model.safetensors", "x")
    state["add_embedding.linear_1.weight"] = torch.zeros(1280, 768)
    save_file(state, str(folder / "unet/diffusion_pytorch_model.safetensors"))
    with pytest.raises(WeightsError, match="unexpected key.*add_embedding.linear_1.weight"):
        gvm_family.load_gvm(folder, CPU, torch.float32)


def test_truncated_file(smoke_dir, tmp_path):
    folder = _copy(smoke_dir, tmp_path)
    target = folder / "vae/diffusion_pytorch_model.safetensors"
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        gvm_family.load_gvm(folder, CPU, torch.float32)


def test_missing_lora_config_lists_files(smoke_dir, tmp_path):
    folder = _copy(smoke_dir, tmp_path)
    (folder / "unet/adapter_config.json").unlink()
    with pytest.raises(WeightsError, match=r"missing 1 file\(s\): unet/adapter_config.json") as err:
        resolve(gvm_family.GVM_FAMILY, path=str(folder))
    assert "unet/pytorch_lora_weights.pt" in str(err.value)  # the full expected list is shown


def test_lora_of_another_model(smoke_dir, tmp_path):
    folder = _copy(smoke_dir, tmp_path)
    torch.save({"model.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 8),
                "model.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(8, 4)},
               folder / "unet/pytorch_lora_weights.pt")
    with pytest.raises(WeightsError, match="not a layer of the UNet"):
        gvm_family.load_gvm(folder, CPU, torch.float32)


def test_pickle_needing_code_is_refused(smoke_dir, tmp_path):
    folder = _copy(smoke_dir, tmp_path)
    torch.save({"weights": torch.zeros(1), "cfg": Path("x")}, folder / "unet/pytorch_lora_weights.pt")
    with pytest.raises(WeightsError, match="weights-only"):
        gvm_family.load_gvm(folder, CPU, torch.float32)


def test_folder_without_weights_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runtime.configure_standalone(models=tmp_path / "models")
    with pytest.raises(WeightsError) as err:
        resolve(gvm_family.GVM_FAMILY)
    message = str(err.value)
    for name in gvm_family.FILES:
        assert name in message
    assert str(tmp_path / "models" / "gvm") in message


def test_merge_lora_rank_mismatch():
    state = {"a.weight": torch.zeros(6, 5)}
    lora = {"model.a.lora_A.weight": torch.zeros(3, 5), "model.a.lora_B.weight": torch.zeros(6, 3)}
    with pytest.raises(LoraError, match="rank"):
        merge_lora(state, lora, {"r": 4, "lora_alpha": 4})


def test_merge_lora_conv_and_rslora_arithmetic():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 5, 3, 3, generator=g)
    a, b = torch.randn(2, 5, 3, 3, generator=g), torch.randn(6, 2, 1, 1, generator=g)
    state = {"c.weight": w.clone()}
    merge_lora(state, {"base_model.model.c.lora_A.weight": a, "base_model.model.c.lora_B.weight": b},
               {"r": 2, "lora_alpha": 4, "use_rslora": True})
    # conv of x with the merged kernel == conv with w + scale * conv1x1(B, conv(A, x))
    x = torch.randn(1, 5, 8, 8, generator=g)
    scale = 4 / 2 ** 0.5
    ref = F.conv2d(x, w, padding=1) + scale * F.conv2d(F.conv2d(x, a, padding=1), b)
    torch.testing.assert_close(F.conv2d(x, state["c.weight"], padding=1), ref, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- windows
def _reference_blend(values_per_window, n, w, o):
    """Independent weighted average: trapezoid weights over an explicit window plan."""
    starts = [0]
    while starts[-1] + w < n:
        starts.append(starts[-1] + w - o)
    starts[-1] = max(0, min(starts[-1], n - w))
    total, weight = torch.zeros(n), torch.zeros(n)
    covered = 0
    for k, s in enumerate(starts):
        e = min(s + w, n)
        for i in range(s, e):
            wt = 1.0
            if i < covered:
                wt = min(wt, (i - s + 1) / (covered - s + 1))
            if k + 1 < len(starts) and i >= e - o:
                wt = min(wt, (e - i) / (o + 1))
            total[i] += wt * values_per_window[k]
            weight[i] += wt
        covered = e
    return total / weight, len(starts)


@pytest.mark.parametrize("n,w,o", [(1, 4, 1), (4, 4, 1), (5, 4, 1), (10, 4, 2), (23, 8, 2), (17, 5, 0), (9, 3, 2)])
def test_stream_blending_matches_reference(n, w, o):
    calls = []

    def window_fn(frames):
        calls.append(frames[:, 0, 0, 0].tolist())
        return torch.full((frames.shape[0], 1, 1), float(len(calls)))

    frames = [torch.full((1, 1, 3), float(i)) for i in range(n)]
    out = list(matte_stream(iter(frames), window_fn, w, o))
    assert [f[0, 0, 0].item() for f, _ in out] == list(range(n))  # order kept, nothing lost
    expected, n_windows = _reference_blend([k + 1.0 for k in range(len(calls))], n, w, o)
    assert len(calls) == n_windows == window_count(n, w, o)
    assert all(len(c) == min(w, n) for c in calls)  # every window is full length
    torch.testing.assert_close(torch.stack([a[0, 0] for _, a in out]), expected)


def test_stream_holds_at_most_one_window():
    read = []

    def source():
        for i in range(200):
            read.append(i)
            yield torch.zeros(2, 2, 3)

    emitted, worst = 0, 0
    for _ in matte_stream(source(), lambda f: torch.zeros(f.shape[:3]), 8, 2):
        emitted += 1
        worst = max(worst, len(read) - emitted)
    assert emitted == 200 and worst <= 2 * 8 - 2 + 1


def test_no_seam_on_static_scene(handle):
    """A static clip: hard window cuts leave seams larger than the network's own frame-to-frame
    variation inside one window; the cross-faded windows do not."""
    settings = MatteSettings(size=64, max_resolution=128, frames_per_window=4, overlap=2, decode_chunk_size=4)
    matter = GVMMatter(handle.modules["unet"], handle.modules["vae"], 1000, settings)
    frames = torch.rand(1, 40, 56, 3, generator=torch.Generator().manual_seed(4)).expand(14, -1, -1, -1)

    def jumps(alpha):
        return (alpha[1:] - alpha[:-1]).abs().amax(dim=(1, 2))

    within = jumps(matter.matte_window(frames[:4])).max()  # variation inside a single window
    hard = matte_frames(frames, matter.matte_window, 4, 0)
    assert jumps(hard)[3::4].max() > within  # without blending the borders show
    blended = matte_frames(frames, matter.matte_window, 4, 2)
    assert jumps(blended).max() <= within + 1e-6


# ----------------------------------------------------------------------------- foreground
def test_box_blur_matches_avg_pool():
    x = torch.rand(2, 3, 17, 23, generator=torch.Generator().manual_seed(5))
    ref = F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    torch.testing.assert_close(box_blur(x, 2), ref, rtol=1e-5, atol=1e-6)


def test_foreground_estimate_gives_cleaner_composites():
    """A solid foreground, a soft edge band and background (I = a*F + (1-a)*B, flat F and B):
    composited over a new background, the estimated foreground is far closer to the true
    composite than the raw pixels are."""
    alpha = ((64 - torch.arange(96.0)) / 32).clamp(0, 1).view(1, 1, 96).expand(1, 32, 96).contiguous()
    fg, bg = torch.tensor([0.9, 0.2, 0.1]), torch.tensor([0.0, 0.6, 0.3])
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    new_bg = (0.0, 0.0, 1.0)
    truth = composite(fg.expand_as(image), alpha, new_bg)
    naive_error = (composite(image, alpha, new_bg) - truth).abs().max()
    error = (composite(estimate_foreground(image, alpha), alpha, new_bg) - truth).abs().max()
    assert naive_error > 0.2
    assert error < naive_error / 4
    # where alpha is 1 the foreground is the image itself
    est = estimate_foreground(image, alpha)
    torch.testing.assert_close(est[alpha == 1], image[alpha == 1], atol=1e-4, rtol=0)


def test_parse_color():
    assert parse_color("#FF0080") == (1.0, 0.0, 128 / 255)
    assert parse_color("0,255,0") == (0.0, 1.0, 0.0)
    assert parse_color("0.5, 0.5, 1") == (0.5, 0.5, 1.0)
    for bad in ("green", "#12345", "1,2", "300,0,0"):
        with pytest.raises(ValueError):
            parse_color(bad)


# ----------------------------------------------------------------------------- nodes
SMALL = dict(size=64, max_resolution=128, frames_per_window=4, overlap=1, refine_steps=0, decode_chunk_size=4,
             clamp=False, clamp_low=0.1, clamp_high=0.9)


def test_matte_node_outputs(handle):
    images = torch.rand(6, 30, 50, 3, generator=torch.Generator().manual_seed(6))
    alpha, fg, comp = CVS_GVMMatte().matte(handle, images, True, "#00FF00", **SMALL)
    assert alpha.shape == (6, 30, 50) and fg.shape == comp.shape == images.shape
    assert 0 <= alpha.min() and alpha.max() <= 1
    assert len(torch.unique(alpha)) > 10  # soft, never binarised
    low, high = alpha.quantile(0.3).item(), alpha.quantile(0.7).item()
    clamped, _, _ = CVS_GVMMatte().matte(handle, images, False, "#00FF00", **{**SMALL, "clamp": True,
                                                                               "clamp_low": low, "clamp_high": high})
    assert torch.all(clamped[alpha <= low] == 0) and torch.all(clamped[alpha >= high] == 1)
    middle = (alpha > low) & (alpha < high)
    assert middle.any() and torch.equal(clamped[middle], alpha[middle])


def test_matte_node_with_background_clip(handle):
    images = torch.rand(3, 20, 20, 3)
    background = torch.rand(2, 40, 80, 3)
    alpha, fg, comp = CVS_GVMMatte().matte(handle, images, False, "#000000", background=background, **SMALL)
    assert comp.shape == images.shape


@pytest.mark.parametrize("shape", [(2, 1, 1, 3), (2, 33, 17, 3)])
def test_matte_node_tiny_and_odd_frames(handle, shape):
    alpha, _, _ = CVS_GVMMatte().matte(handle, torch.rand(shape), False, "#000000", **SMALL)
    assert alpha.shape == shape[:3]


@pytest.mark.parametrize("images,needle", [
    (torch.rand(0, 16, 16, 3), "has 0 frames"),
    (torch.rand(2, 16, 16), "is a MASK, not an IMAGE"),
    (torch.rand(2, 16, 16, 4), "RGBA"),
    ("not a tensor", "got a str"),
])
def test_matte_node_bad_images(handle, images, needle):
    with pytest.raises(NodeInputError, match=needle) as err:
        CVS_GVMMatte().matte(handle, images, False, "#000000", **SMALL)
    assert "CVS GVM Video Matte: input 'images'" in str(err.value)


def test_matte_node_bad_settings_and_model(handle):
    images = torch.rand(2, 16, 16, 3)
    with pytest.raises(NodeInputError, match="input 'overlap'"):
        CVS_GVMMatte().matte(handle, images, False, "#000000", **{**SMALL, "overlap": 4})
    with pytest.raises(NodeInputError, match="input 'background_color'"):
        CVS_GVMMatte().matte(handle, images, False, "blue", **SMALL)
    other = type(handle)(family="vmem", source=Path("."), modules={}, device=CPU, dtype=torch.float32)
    with pytest.raises(NodeInputError, match="input 'model'.*'vmem' model"):
        CVS_GVMMatte().matte(other, images, False, "#000000", **SMALL)


def test_composite_node_checks_mask_shape():
    node = CVS_MatteComposite()
    with pytest.raises(NodeInputError, match="input 'alpha'"):
        node.run(torch.rand(2, 8, 8, 3), torch.rand(3, 8, 8), True, "#000000")
    fg, comp = node.run(torch.rand(2, 8, 8, 3), torch.ones(2, 8, 8), False, "#000000")
    torch.testing.assert_close(comp, fg)


def test_cancel_stops_matting(handle):
    images = torch.rand(12, 16, 16, 3)
    runtime.request_interrupt()
    try:
        with pytest.raises(runtime.Interrupted):
            CVS_GVMMatte().matte(handle, images, False, "#000000", **SMALL)
    finally:
        runtime.clear_interrupt()


def test_cancel_inside_the_unet_call(handle, cancel_inside_network):
    """Cancel pressed while the UNet runs its first down block stops the window there."""
    unet = handle.modules["unet"]
    calls = cancel_inside_network(unet.down_blocks[0], unet.up_blocks[-1])
    with pytest.raises(runtime.Interrupted):
        CVS_GVMMatte().matte(handle, torch.rand(12, 16, 16, 3), False, "#000000", **SMALL)
    assert calls == {"first": 1, "last": 0}


# ----------------------------------------------------------------------------- file to file
FILE_ARGS = dict(max_frames=0, format="png-sequence", write_foreground=True, write_composite=True,
                 background_color="#000000", filename_prefix="gvm/test.clip", **SMALL)


def test_file_node_streams_every_frame(handle, tmp_path):
    from consistent_video.gvm_nodes.nodes import CVS_GVMMatteVideoFile
    from consistent_video.nodes.video import video_io
    runtime.configure_standalone(output=tmp_path / "out")
    clip = tmp_path / "clip.mp4"
    with video_io.VideoWriter(clip, "30000/1001", "h264-mp4", 48, 32) as out:
        out.write(torch.rand(11, 32, 48, 3, generator=torch.Generator().manual_seed(7)))
    result = CVS_GVMMatteVideoFile().run(handle, str(clip), **FILE_ARGS)
    paths = result["result"][0].splitlines()
    assert result["result"][1] == 11 and len(paths) == 3
    assert [Path(p).name for p in paths] == ["test.clip_00001_alpha", "test.clip_00001_foreground",
                                             "test.clip_00001_composite"]
    for p in paths:
        info = video_io.probe(p)
        assert (info.frame_count, info.width, info.height) == (11, 48, 32)
        assert info.frame_rate == video_io.parse_fps("30000/1001")
    assert video_io.probe(paths[1]).has_alpha


def test_file_node_bad_input_and_cancel_leave_nothing(handle, tmp_path, cancel_on_call):
    from consistent_video.gvm_nodes.nodes import CVS_GVMMatteVideoFile
    from consistent_video.nodes.video import video_io
    runtime.configure_standalone(output=tmp_path / "out")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(NodeInputError, match="CVS GVM Matte Video File: input 'video'"):
        CVS_GVMMatteVideoFile().run(handle, str(text), **FILE_ARGS)
    with pytest.raises(NodeInputError, match="input 'filename_prefix'"):
        CVS_GVMMatteVideoFile().run(handle, "cvs_sample.mp4", **{**FILE_ARGS, "filename_prefix": "../x"})
    clip = tmp_path / "clip.mp4"
    with video_io.VideoWriter(clip, 25, "h264-mp4", 32, 32) as out:
        out.write(torch.rand(9, 32, 32, 3))
    calls = cancel_on_call(GVMMatter, "matte_window", 3)  # the first windows' frames are written by then
    try:
        with pytest.raises(runtime.Interrupted):
            CVS_GVMMatteVideoFile().run(handle, str(clip), **{**FILE_ARGS, "frames_per_window": 2, "overlap": 0,
                                                              "format": "h264-mp4"})
    finally:
        runtime.clear_interrupt()
    assert len(calls) == 3
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))
