"""The shared frozen encoders: the SD autoencoder (nodes/encoders/vae.py) and the CLIP image encoder (nodes/encoders/clip.py).

Smoke weights in every supported layout load strictly (diffusers folder, LDM checkpoint,
transformers CLIP folder in both layouts); the codecs and embedders match direct calls of the
networks; the key conversions drop exactly what they should and name what they cannot use;
the ComfyUI adapters behave like ours against fakes that mirror ComfyUI's objects (and, with
``COMFYUI_PATH`` set, against ComfyUI's real ``comfy.sd.VAE`` and ``comfy.clip_vision.ClipVisionModel``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from consistent_video.nodes.encoders import clip as clip_module
from consistent_video.nodes.encoders.clip import (ComfyCLIPVisionEmbedder, TransformersCLIPEmbedder, load_image_encoder,
                                                  vision_keys, write_smoke_image_encoder)
from consistent_video.nodes.encoders.vae import (SMOKE_LDM_VAE_CONFIG, ComfyVAECodec, DiffusersVAECodec,
                                                 convert_ldm_vae, diffusers_to_ldm_vae, ldm_vae_config, load_ldm_vae,
                                                 load_vae, write_smoke_ldm_vae, write_smoke_vae)
from consistent_video.nodes.comfy.weights import WeightsError, random_state, read_checkpoint, read_state_dict

SCALE = 0.18215
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("encoders")
    write_smoke_vae(root / "vae")
    write_smoke_image_encoder(root / "image_encoder")
    write_smoke_image_encoder(root / "image_encoder_vision", full_clip=False)
    return root


@pytest.fixture(scope="module")
def vae(weights):
    return load_vae(weights / "vae")


@pytest.fixture(scope="module")
def clip(weights):
    return load_image_encoder(weights / "image_encoder")


def _images(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, height, width, 3, generator=torch.Generator().manual_seed(seed))


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


# --------------------------------------------------------------------------- autoencoder
def test_smoke_vae_is_in_the_official_layout_and_loads_strictly(weights, vae):
    config = json.loads((weights / "vae/config.json").read_text())
    assert config["_class_name"] == "AutoencoderKL" and "_diffusers_version" in config
    assert config["latent_channels"] == 4 and config["scaling_factor"] == SCALE
    assert len(config["down_block_types"]) == len(config["up_block_types"]) == 4
    state = read_state_dict(weights / "vae/diffusion_pytorch_model.safetensors", "test")
    assert set(state) == set(vae.state_dict())
    assert not any(t.is_meta for t in vae.state_dict().values())
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())


@torch.no_grad()
def test_encode_is_the_scaled_posterior_mean(vae):
    images = _images(3, 64, 48)
    latents = DiffusersVAECodec(vae).encode(images)
    assert latents.shape == (3, 4, 8, 6) and latents.dtype == torch.float32 and latents.device.type == "cpu"
    direct = vae.encode(images.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean * SCALE
    torch.testing.assert_close(latents, direct, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_decode_divides_by_the_scale_and_maps_to_unit_range(vae):
    latents = torch.randn(2, 4, 8, 6, generator=torch.Generator().manual_seed(1)) * 0.5
    images = DiffusersVAECodec(vae).decode(latents)
    assert images.shape == (2, 64, 48, 3) and images.dtype == torch.float32
    direct = ((vae.decode(latents / SCALE).sample + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    torch.testing.assert_close(images, direct, rtol=1e-5, atol=1e-5)
    assert images.min() >= 0 and images.max() <= 1


def test_chunk_size_does_not_change_results_and_progress_runs_per_chunk(vae):
    images = _images(5, 16, 16, seed=2)
    reference = DiffusersVAECodec(vae, chunk_size=1).encode(images)
    calls: list[int] = []
    codec = DiffusersVAECodec(vae, chunk_size=2, progress=calls.append)
    latents = codec.encode(images)
    torch.testing.assert_close(latents, reference, rtol=1e-5, atol=1e-6)
    assert calls == [2, 2, 1]
    calls.clear()
    decoded = codec.decode(latents)
    torch.testing.assert_close(decoded, DiffusersVAECodec(vae, chunk_size=5).decode(latents), rtol=1e-5, atol=1e-5)
    assert calls == [2, 2, 1]


def test_codec_rejects_bad_input(vae):
    codec = DiffusersVAECodec(vae)
    with pytest.raises(ValueError, match="multiple of 8"):
        codec.encode(_images(1, 60, 64))
    with pytest.raises(ValueError, match=r"\[N,H,W,3\]"):
        codec.encode(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\[N,4,h,w\]"):
        codec.decode(torch.rand(1, 16, 8, 8))
    with pytest.raises(ValueError, match="chunk_size"):
        DiffusersVAECodec(vae, chunk_size=0)


def test_codec_rejects_an_autoencoder_that_is_not_sd_family():
    from diffusers import AutoencoderKL
    flux_like = AutoencoderKL(latent_channels=16, block_out_channels=(8, 8, 8, 8), norm_num_groups=4,
                              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    with pytest.raises(ValueError, match="16 channels"):
        DiffusersVAECodec(flux_like)


def test_load_vae_refuses_other_models(weights, tmp_path):
    folder = _copy(weights / "vae", tmp_path / "vae")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "_class_name": "AutoencoderKLTemporalDecoder"}))
    with pytest.raises(WeightsError, match="AutoencoderKLTemporalDecoder"):
        load_vae(folder)
    (folder / "config.json").write_text(json.dumps({**config, "latent_channels": 16}))
    with pytest.raises(WeightsError, match="16 latent channels"):
        load_vae(folder)
    (folder / "config.json").write_text(json.dumps(config))
    from safetensors.torch import save_file
    state = read_state_dict(folder / "diffusion_pytorch_model.safetensors", "test")
    save_file({**state, "encoder.extra.weight": torch.zeros(1)}, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(WeightsError, match="encoder.extra.weight"):
        load_vae(folder)


# --------------------------------------------------------------------------- LDM-layout autoencoder
def _tiny_diffusers_vae(seed: int = 3):
    from diffusers import AutoencoderKL
    vae = AutoencoderKL.from_config(SMOKE_LDM_VAE_CONFIG)
    vae.load_state_dict(random_state(vae, torch.Generator().manual_seed(seed)))
    return vae.eval()


def test_the_inverse_mapping_writes_ldm_names():
    ldm = diffusers_to_ldm_vae(_tiny_diffusers_vae().state_dict())
    for key in ("encoder.down.0.block.0.norm1.weight", "encoder.down.2.downsample.conv.weight",
                "encoder.mid.block_2.conv2.bias", "encoder.norm_out.weight", "quant_conv.weight",
                "decoder.up.3.upsample.conv.weight", "decoder.up.0.block.1.conv1.weight",
                "decoder.mid.attn_1.proj_out.bias", "post_quant_conv.bias"):
        assert key in ldm, key
    assert ldm["encoder.mid.attn_1.q.weight"].shape == (32, 32, 1, 1)  # LDM attention is 1x1 convolutions
    assert "encoder.down.3.downsample.conv.weight" not in ldm and "decoder.up.0.upsample.conv.weight" not in ldm


@torch.no_grad()
def test_an_ldm_checkpoint_loads_into_the_same_network(tmp_path):
    reference = _tiny_diffusers_vae()
    state = reference.state_dict()
    path = tmp_path / "VQGAN_autoencoder.pth"
    torch.save(diffusers_to_ldm_vae(state), path)  # a bare LDM autoencoder state dict
    vae = load_ldm_vae(path)
    loaded = vae.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    assert vae.config.scaling_factor == SCALE and not vae.training
    images = _images(2, 32, 24, seed=11)
    ours, theirs = DiffusersVAECodec(vae), DiffusersVAECodec(reference)
    latents = ours.encode(images)
    torch.testing.assert_close(latents, theirs.encode(images), rtol=0, atol=0)
    torch.testing.assert_close(ours.decode(latents), theirs.decode(latents), rtol=0, atol=0)


def test_a_full_ldm_checkpoint_gives_its_first_stage_model(tmp_path):
    reference = _tiny_diffusers_vae(seed=4)
    ldm = diffusers_to_ldm_vae(reference.state_dict())
    full = {**{"first_stage_model." + k: v for k, v in ldm.items()},
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2), "cond_stage_model.model.ln_final.bias": torch.zeros(2)}
    torch.save({"state_dict": full, "step": 7}, tmp_path / "full.pth")  # VGen / LDM training wrapper
    assert set(read_checkpoint(tmp_path / "full.pth", "test")) == set(full)
    loaded = load_ldm_vae(tmp_path / "full.pth").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in reference.state_dict().items())


def test_smoke_ldm_vae_is_wrapped_like_the_release_and_loads(tmp_path):
    write_smoke_ldm_vae(tmp_path / "VQGAN_autoencoder.pth")
    raw = torch.load(tmp_path / "VQGAN_autoencoder.pth", weights_only=True)
    assert set(raw) == {"state_dict"} and all(k.startswith("first_stage_model.") for k in raw["state_dict"])
    vae = load_ldm_vae(tmp_path / "VQGAN_autoencoder.pth")
    assert list(vae.config.block_out_channels) == [32, 32, 32, 32] and vae.config.latent_channels == 4
    assert DiffusersVAECodec(vae).encode(_images(1, 16, 16)).shape == (1, 4, 2, 2)


def test_the_videomv_autoencoder_config_is_read_from_the_shapes():
    from diffusers import AutoencoderKL
    with torch.device("meta"):  # the SD / ModelScope autoencoder at its real size, shapes only
        real = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    ldm = diffusers_to_ldm_vae(real.state_dict())
    config = ldm_vae_config(ldm)
    assert config["block_out_channels"] == [128, 256, 512, 512]  # ch 128, ch_mult [1, 2, 4, 4]
    assert config["layers_per_block"] == 2 and config["latent_channels"] == 4 and config["norm_num_groups"] == 32
    assert config["scaling_factor"] == SCALE and config["in_channels"] == config["out_channels"] == 3
    converted = convert_ldm_vae(ldm, config)
    expected = real.state_dict()
    assert set(converted) == set(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)


def test_ldm_conversion_is_pure_and_places_views_of_the_tensors():
    ldm = diffusers_to_ldm_vae(_tiny_diffusers_vae().state_dict())
    before = {k: v.clone() for k, v in ldm.items()}
    converted = convert_ldm_vae(ldm, ldm_vae_config(ldm))
    assert set(ldm) == set(before) and all(torch.equal(ldm[k], before[k]) for k in ldm)
    assert converted["encoder.mid_block.attentions.0.to_q.weight"].data_ptr() == ldm["encoder.mid.attn_1.q.weight"].data_ptr()
    assert converted["decoder.up_blocks.0.upsamplers.0.conv.weight"].data_ptr() == \
        ldm["decoder.up.3.upsample.conv.weight"].data_ptr()


def test_ldm_conversion_works_inside_inference_mode():
    """ComfyUI runs nodes under torch.inference_mode(), where torch does not record views' bases."""
    ldm = diffusers_to_ldm_vae(_tiny_diffusers_vae().state_dict())
    outside = convert_ldm_vae(ldm, ldm_vae_config(ldm))
    with torch.inference_mode():
        inside = convert_ldm_vae(ldm, ldm_vae_config(ldm))
    assert set(inside) == set(outside) and all(torch.equal(inside[k], outside[k]) for k in outside)


def test_ldm_loading_is_strict(tmp_path):
    ldm = diffusers_to_ldm_vae(_tiny_diffusers_vae().state_dict())
    torch.save({**ldm, "encoder.extra.weight": torch.zeros(1), "loss.logvar": torch.zeros(())}, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"2 key\(s\).*encoder\.extra\.weight, loss\.logvar"):
        load_ldm_vae(tmp_path / "extra.pth")
    torch.save({k: v for k, v in ldm.items() if k != "decoder.conv_out.bias"}, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="missing key.*decoder.conv_out.bias"):
        load_ldm_vae(tmp_path / "missing.pth")
    torch.save({"token_embedding.weight": torch.zeros(4, 2)}, tmp_path / "clip.pth")
    with pytest.raises(WeightsError, match="not an LDM-layout autoencoder"):
        load_ldm_vae(tmp_path / "clip.pth")
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(1)}, "optimizer": [1, 2]}, tmp_path / "odd.pth")
    with pytest.raises(WeightsError, match="not an LDM-layout autoencoder"):
        load_ldm_vae(tmp_path / "odd.pth")


# --------------------------------------------------------------------------- image encoder
def _gaussian_2d(sigma: float, size: int) -> torch.Tensor:
    g = torch.exp(-(torch.arange(size, dtype=torch.float32) - size // 2) ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)


def _hand_preprocess(images: torch.Tensor) -> torch.Tensor:
    """SEVA's CLIP preprocessing for a square frame larger than 224, written out by hand: a 2-D
    Gaussian blur (sigma (f-1)/2, kernel int(max(4 sigma, 3)) made odd, reflect padding), bicubic
    align_corners=True to 224, then the OpenAI mean/std."""
    x = images.permute(0, 3, 1, 2)
    sigma = (x.shape[-1] / 224 - 1) / 2
    size = int(max(4 * sigma, 3))
    size += 1 - size % 2
    kernel = _gaussian_2d(sigma, size).expand(3, 1, size, size)
    x = F.conv2d(F.pad(x, (size // 2,) * 4, mode="reflect"), kernel, groups=3)
    x = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=True)
    return (x - MEAN) / STD


def test_smoke_image_encoders_are_in_the_official_layouts_and_load_strictly(weights, clip):
    full = json.loads((weights / "image_encoder/config.json").read_text())
    assert full["model_type"] == "clip" and {"text_config", "vision_config"} <= set(full)
    assert full["projection_dim"] == 16
    state = read_state_dict(weights / "image_encoder/model.safetensors", "test")
    assert any(k.startswith("text_model.") for k in state) and "logit_scale" in state
    assert "text_projection.weight" in state and "visual_projection.weight" in state
    vision_only = json.loads((weights / "image_encoder_vision/config.json").read_text())
    assert vision_only["model_type"] == "clip_vision_model"
    assert set(read_state_dict(weights / "image_encoder_vision/model.safetensors", "test")) == set(clip.state_dict())
    assert clip.config.projection_dim == 16 and type(clip).__name__ == "CLIPVisionModelWithProjection"
    assert not any(t.is_meta for t in list(clip.parameters()) + list(clip.buffers()))
    assert torch.equal(clip.vision_model.embeddings.position_ids, torch.arange(257).unsqueeze(0))


@torch.no_grad()
def test_embed_is_the_seva_preprocessing_then_image_embeds(clip):
    embedder = TransformersCLIPEmbedder(clip)
    assert embedder.dim == 16
    images = _images(3, 576, 576, seed=3)
    embeds = embedder.embed(images)
    assert embeds.shape == (3, 16) and embeds.dtype == torch.float32
    direct = clip(pixel_values=_hand_preprocess(images)).image_embeds
    torch.testing.assert_close(embeds, direct, rtol=1e-5, atol=1e-6)
    assert (embeds[0] - embeds[1]).abs().max() > 1e-3  # the inputs matter at this tolerance
    small = _images(2, 224, 224, seed=4)  # already 224: no resize at all
    torch.testing.assert_close(embedder.embed(small),
                               clip(pixel_values=(small.permute(0, 3, 1, 2) - MEAN) / STD).image_embeds,
                               rtol=1e-5, atol=1e-6)
    context = embedder.embed(images).mean(dim=0, keepdim=True)  # SEVA averages over the context views
    assert context.shape == (1, embedder.dim)


def test_both_layouts_give_the_same_encoder(weights, clip):
    vision_only = load_image_encoder(weights / "image_encoder_vision")
    images = _images(2, 256, 320, seed=5)  # non-square: the whole frame is resized to 224x224
    torch.testing.assert_close(TransformersCLIPEmbedder(vision_only).embed(images),
                               TransformersCLIPEmbedder(clip).embed(images), rtol=0, atol=0)


def test_resize_is_kornias_antialiased_bicubic():
    kornia = pytest.importorskip("kornia")
    x = torch.rand(2, 3, 300, 500, generator=torch.Generator().manual_seed(6))
    ours = clip_module._seva_resize(x)
    theirs = kornia.geometry.transform.resize(x, (224, 224), interpolation="bicubic", align_corners=True,
                                              antialias=True)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_bilinear_resize_is_pils(clip):
    """VideoMV's CLIP input: its 256x256 image resized to 224 with PIL's BILINEAR."""
    import numpy as np
    from PIL import Image
    pixels = (torch.rand(256, 256, 3, generator=torch.Generator().manual_seed(7)) * 255).round().byte()
    resized = Image.fromarray(pixels.numpy()).resize((224, 224), Image.BILINEAR)
    want = torch.from_numpy(np.array(resized)).float().div(255).permute(2, 0, 1)[None]
    got = clip_module._clip_pixels(pixels.float().div(255)[None], torch.device("cpu"), "bilinear")
    assert (got * STD + MEAN - want).abs().max() < 1.5 / 255  # PIL rounds its result to 8 bits
    embedder = TransformersCLIPEmbedder(clip, resize="bilinear")
    torch.testing.assert_close(embedder.embed(pixels.float().div(255)[None]), clip(pixel_values=got).image_embeds)
    with pytest.raises(ValueError, match="resize"):
        TransformersCLIPEmbedder(clip, resize="nearest")


def test_vision_keys_drops_exactly_the_text_side():
    state = {"text_model.embeddings.token_embedding.weight": 1, "text_model.final_layer_norm.bias": 2,
             "text_projection.weight": 3, "logit_scale": 4, "vision_model.post_layernorm.weight": 5,
             "visual_projection.weight": 6, "something_else": 7, "logit_scale_extra": 8}
    kept = vision_keys(state)
    assert kept == {"vision_model.post_layernorm.weight": 5, "visual_projection.weight": 6,
                    "something_else": 7, "logit_scale_extra": 8}
    assert len(state) == 8  # pure


def _rewrite(folder: Path, **extra: torch.Tensor) -> None:
    from safetensors.torch import save_file
    state = read_state_dict(folder / "model.safetensors", "test")
    save_file({**state, **extra}, str(folder / "model.safetensors"))


@pytest.mark.parametrize("layout", ["image_encoder", "image_encoder_vision"])
def test_unknown_keys_fail_the_strict_load(weights, tmp_path, layout):
    folder = _copy(weights / layout, tmp_path / layout)
    _rewrite(folder, **{"vision_model.extra_head.weight": torch.zeros(2)})
    with pytest.raises(WeightsError, match="vision_model.extra_head.weight"):
        load_image_encoder(folder)


def test_position_ids_of_old_checkpoints_are_accepted_only_when_they_are_the_arange(weights, tmp_path):
    folder = _copy(weights / "image_encoder", tmp_path / "old")
    _rewrite(folder, **{"vision_model.embeddings.position_ids": torch.arange(257).unsqueeze(0),
                        "text_model.embeddings.position_ids": torch.arange(16).unsqueeze(0)})
    load_image_encoder(folder)
    _rewrite(folder, **{"vision_model.embeddings.position_ids": torch.arange(257).flip(0).unsqueeze(0)})
    with pytest.raises(WeightsError, match="vision_model.embeddings.position_ids"):
        load_image_encoder(folder)


def test_a_config_of_another_model_type_is_refused(weights, tmp_path):
    folder = _copy(weights / "image_encoder_vision", tmp_path / "siglip")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "siglip_vision_model"}))
    with pytest.raises(WeightsError, match=r"config\.json describes a 'siglip_vision_model' model"):
        load_image_encoder(folder)
    (folder / "config.json").write_text(json.dumps({**config, "num_attention_heads": 3}))
    with pytest.raises(WeightsError, match="not a valid clip_vision_model config"):
        load_image_encoder(folder)


# --------------------------------------------------------------------------- ComfyUI adapters (fakes)
class FakeComfyVAE:
    """Mirrors ``comfy.sd.VAE`` for an SD 1.x/2.x VAE (comfy/sd.py):

    - ``__init__`` defaults: ``downscale_ratio = upscale_ratio = 8``, ``latent_channels = 4``,
      ``latent_dim = 2``, ``process_input = x * 2 - 1``, ``process_output = clamp((x + 1) / 2, 0, 1)``;
    - ``spacial_compression_encode()``: ``downscale_ratio[-1]``, or ``downscale_ratio`` if not indexable;
    - ``encode(pixel_samples [B,H,W,C])``: ``vae_encode_crop_pixels`` (centre crop to multiples of
      8), ``movedim(-1, 1)``, ``process_input``, ``first_stage_model.encode(...)`` whose
      ``DiagonalGaussianRegularizer(sample=False)`` returns ``posterior.mode()`` = the mean,
      unscaled (comfy/ldm/models/autoencoder.py), ``.float()``;
    - ``decode(samples [B,4,h,w])``: ``process_output(first_stage_model.decode(samples).float())``
      then ``movedim(1, -1)``.
    ``first_stage_model`` here runs a diffusers AutoencoderKL (ComfyUI would run its own copy).
    """

    def __init__(self, vae, latent_channels=4, downscale_ratio=8, latent_dim=2):
        self.vae = vae
        self.first_stage_model = vae
        self.latent_channels = latent_channels
        self.downscale_ratio = self.upscale_ratio = downscale_ratio
        self.latent_dim = latent_dim
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def spacial_compression_encode(self):
        try:
            return self.downscale_ratio[-1]
        except TypeError:
            return self.downscale_ratio

    @torch.no_grad()
    def encode(self, pixel_samples):
        self.calls.append(("encode", tuple(pixel_samples.shape)))
        ratio = self.spacial_compression_encode()
        for d, size in enumerate(pixel_samples.shape[1:-1]):
            keep = (size // ratio) * ratio
            if keep != size:
                pixel_samples = pixel_samples.narrow(d + 1, (size % ratio) // 2, keep)
        x = pixel_samples.movedim(-1, 1) * 2.0 - 1.0
        return self.vae.encode(x).latent_dist.mode().float()

    @torch.no_grad()
    def decode(self, samples_in):
        self.calls.append(("decode", tuple(samples_in.shape)))
        out = torch.clamp((self.vae.decode(samples_in).sample.float() + 1.0) / 2.0, min=0.0, max=1.0)
        return out.movedim(1, -1)


def test_comfy_vae_codec_produces_what_the_diffusers_codec_produces(vae):
    images = _images(3, 32, 24, seed=7)
    fake = FakeComfyVAE(vae)
    calls: list[int] = []
    codec = ComfyVAECodec(fake, chunk_size=2, progress=calls.append)
    ours = DiffusersVAECodec(vae)
    latents = codec.encode(images)
    torch.testing.assert_close(latents, ours.encode(images), rtol=1e-5, atol=1e-6)
    assert latents.shape == (3, 4, 4, 3) and calls == [2, 1]
    torch.testing.assert_close(codec.decode(latents), ours.decode(latents), rtol=1e-5, atol=1e-5)
    assert fake.calls == [("encode", (2, 32, 24, 3)), ("encode", (1, 32, 24, 3)),
                          ("decode", (2, 4, 4, 3)), ("decode", (1, 4, 4, 3))]
    with pytest.raises(ValueError, match="multiple of 8"):  # never left to ComfyUI's silent crop
        codec.encode(_images(1, 36, 32))


def test_comfy_vae_codec_refuses_vaes_that_are_not_sd_family(vae):
    with pytest.raises(ValueError, match="16 latent channels"):  # SD3 / Flux
        ComfyVAECodec(FakeComfyVAE(vae, latent_channels=16))
    wan = FakeComfyVAE(vae, latent_channels=16, downscale_ratio=(lambda a: max(0, (a + 3) // 4), 8, 8), latent_dim=3)
    with pytest.raises(ValueError, match="3-D latents"):
        ComfyVAECodec(wan)
    with pytest.raises(ValueError, match="32x downscale"):  # Stable Cascade stage A/C style
        ComfyVAECodec(FakeComfyVAE(vae, downscale_ratio=32))
    empty = FakeComfyVAE(vae)
    empty.first_stage_model = None  # what comfy.sd.VAE keeps when it found no weights
    with pytest.raises(ValueError, match="empty"):
        ComfyVAECodec(empty)


class FakeOutput:
    """``comfy.clip_vision.Output``: attributes, also readable with ``[]``."""

    def __getitem__(self, key):
        return getattr(self, key)


class FakeComfyCLIPVision:
    """Mirrors ``comfy.clip_vision.ClipVisionModel`` (comfy/clip_vision.py):

    - ``image_size``, ``image_mean``, ``image_std`` from its JSON config (defaults 224 and the
      OpenAI CLIP mean/std), ``model`` a ``CLIPVisionModelProjection`` with a ``visual_projection``
      Linear (comfy/clip_model.py);
    - ``encode_image(image, crop=True)``: ``clip_preprocess`` -- take 3 channels, ``movedim(-1, 1)``;
      if not already ``size x size``: with ``crop`` scale the short side to ``size`` (rounded) and
      centre-crop, without it resize to ``size x size``; ``interpolate(bicubic, antialias=True)``;
      then ``clip(255 x, 0, 255).round() / 255`` and ``(x - mean) / std`` -- then the model, and
      ``image_embeds`` = the projected pooled output.
    """

    def __init__(self, model, image_mean=(0.48145466, 0.4578275, 0.40821073),
                 image_std=(0.26862954, 0.26130258, 0.27577711), image_size=224):
        self.model = model
        self.image_size, self.image_mean, self.image_std = image_size, list(image_mean), list(image_std)
        self.crops: list[bool] = []

    def _preprocess(self, image, crop):
        image = image[:, :, :, :3].movedim(-1, 1)
        size = self.image_size
        if not (image.shape[2] == size and image.shape[3] == size):
            if crop:
                scale = size / min(image.shape[2], image.shape[3])
                target = (round(scale * image.shape[2]), round(scale * image.shape[3]))
            else:
                target = (size, size)
            image = F.interpolate(image, size=target, mode="bicubic", antialias=True)
            top, left = (image.shape[2] - size) // 2, (image.shape[3] - size) // 2
            image = image[:, :, top:top + size, left:left + size]
        image = torch.clip(255.0 * image, 0, 255).round() / 255.0
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        return (image - mean) / std

    @torch.no_grad()
    def encode_image(self, image, crop=True):
        self.crops.append(crop)
        out = FakeOutput()
        out.image_embeds = self.model(pixel_values=self._preprocess(image, crop).float()).image_embeds
        return out


def test_comfy_clip_vision_embedder_matches_ours_on_8bit_224px_frames(clip):
    fake = FakeComfyCLIPVision(clip)
    embedder = ComfyCLIPVisionEmbedder(fake, expected_dim=16)
    assert embedder.dim == 16
    frames = torch.randint(0, 256, (2, 224, 224, 3), generator=torch.Generator().manual_seed(8)) / 255.0
    torch.testing.assert_close(embedder.embed(frames), TransformersCLIPEmbedder(clip).embed(frames),
                               rtol=1e-5, atol=1e-6)
    wide = _images(1, 256, 448, seed=9)  # the whole frame, as ours, not a centre crop
    embeds = embedder.embed(wide)
    assert embeds.shape == (1, 16) and fake.crops == [False, False]
    torch.testing.assert_close(embeds, TransformersCLIPEmbedder(clip).embed(wide), rtol=0, atol=2e-2)


def test_comfy_clip_vision_embedder_refuses_other_image_encoders(clip):
    with pytest.raises(ValueError, match="16-d image embeddings"):
        ComfyCLIPVisionEmbedder(FakeComfyCLIPVision(clip))  # expects ViT-H's 1024

    class ViTL(torch.nn.Module):  # a ViT-L/14 CLIP_VISION: 768-d, no projection module to inspect
        def forward(self, pixel_values):
            out = FakeOutput()
            out.image_embeds = torch.zeros(pixel_values.shape[0], 768)
            return out

    vit_l = ComfyCLIPVisionEmbedder(FakeComfyCLIPVision(ViTL()))
    with pytest.raises(ValueError, match="768-d image embeddings.*ViT-L"):
        vit_l.embed(_images(1, 224, 224))
    with pytest.raises(ValueError, match="image_mean"):  # SigLIP normalises with 0.5
        ComfyCLIPVisionEmbedder(FakeComfyCLIPVision(clip, image_mean=(0.5, 0.5, 0.5)), expected_dim=16)
    with pytest.raises(ValueError, match="384px"):
        ComfyCLIPVisionEmbedder(FakeComfyCLIPVision(clip, image_size=384), expected_dim=16)


# --------------------------------------------------------------------------- ComfyUI adapters (real)
_REAL_COMFY = textwrap.dedent("""
    import json, sys, tempfile
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options
    comfy.options.enable_args_parsing()
    import torch
    import comfy.clip_vision, comfy.sd
    from diffusers import AutoencoderKL
    from consistent_video.nodes.encoders import clip as C, vae as V

    torch.manual_seed(0)
    # comfy.sd.VAE builds the SD 1.x/2.x network at its real size, so this one is random at that size
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4).eval()
    comfy_vae = comfy.sd.VAE(sd={k: v.clone() for k, v in vae.state_dict().items()})  # diffusers keys, converted there
    images = torch.rand(2, 64, 48, 3)
    ours, theirs = V.DiffusersVAECodec(vae), V.ComfyVAECodec(comfy_vae)
    z = ours.encode(images)
    err_enc = (theirs.encode(images) - z).abs().max().item()
    err_dec = (theirs.decode(z) - ours.decode(z)).abs().max().item()

    folder = Path(tempfile.mkdtemp())
    C.write_smoke_image_encoder(folder, full_clip=False)
    config = json.loads((folder / "config.json").read_text())
    # ComfyUI stores CLIP vision weights in fp16 (text_encoder_dtype; layer norms stay fp32) and computes
    # in fp32: both get the same fp16-representable weights, so only the computation is compared
    model = C.load_image_encoder(folder).half().float()
    comfy_clip = comfy.clip_vision.ClipVisionModel(str(folder / "config.json"))
    missing, unexpected = comfy_clip.load_sd(model.state_dict())
    frames = torch.randint(0, 256, (2, 224, 224, 3)) / 255.0
    err_clip = (C.ComfyCLIPVisionEmbedder(comfy_clip, expected_dim=config["projection_dim"]).embed(frames)
                - C.TransformersCLIPEmbedder(model).embed(frames)).abs().max().item()
    print(json.dumps({"encode": err_enc, "decode": err_dec, "clip": err_clip,
                      "missing": list(missing), "unexpected": [k for k in unexpected if "position_ids" not in k]}))
""")


@pytest.mark.skipif(not os.environ.get("COMFYUI_PATH", "").strip(),
                    reason="COMFYUI_PATH is not set (a ComfyUI checkout for the real VAE / CLIP_VISION objects)")
def test_adapters_against_real_comfyui_objects():
    comfy_path = Path(os.environ["COMFYUI_PATH"]).expanduser().resolve()
    if not (comfy_path / "comfy" / "sd.py").is_file():
        pytest.skip(f"COMFYUI_PATH={comfy_path} has no comfy/sd.py")
    run = subprocess.run([sys.executable, "-c", _REAL_COMFY, str(comfy_path)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["missing"] == [] and result["unexpected"] == [], result
    assert result["encode"] < 1e-4 and result["decode"] < 1e-4 and result["clip"] < 1e-5, result
