"""VideoMV sampling and nodes on smoke weights: families, the DDIM + guidance loop against a
hand-written loop, conditioning of both modes, the nodes end to end, bad input and Cancel."""
import math
import shutil

import pytest
import torch

from consistent_video.nodes.comfy import families, runtime
from consistent_video.nodes.cameras import trajectories
from consistent_video.nodes.comfy import weights as store
from consistent_video.nodes.cameras.formats import VIDEOMV_FOV_DEG, to_videomv_cameras
from consistent_video.nodes.comfy.errors import NodeInputError
from consistent_video.nodes.encoders.vae import SD_SCALING_FACTOR, DiffusersVAECodec
from consistent_video.nodes.video.video_nodes import CVS_LoadImage
from consistent_video.videomv_nodes import family as fam
from consistent_video.videomv_nodes import nodes as N
from consistent_video.videomv_nodes import pipeline as P
from consistent_video.videomv_nodes.lgm import smoke_state as lgm_smoke_state
from consistent_video.videomv_nodes.schedules import NUM_STEPS, i2v_scheduler, t2v_scheduler

RES = 64  # smoke resolution: 8x8 latents


def object_image(height=80, width=100):
    """A random picture with a soft-edged square object and its alpha, as ComfyUI IMAGE / MASK."""
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(1, height, width, 3, generator=gen)
    alpha = torch.zeros(1, height, width)
    alpha[:, 20:60, 30:75] = 1.0
    alpha[:, 19, 30:75] = 0.5
    return image, alpha


# --------------------------------------------------------------------------- families
def test_families_share_one_models_folder_and_need_no_download():
    t2v_family, i2v_family = families.get(fam.T2V), families.get(fam.I2V)
    assert t2v_family.folder_name == i2v_family.folder_name == "videomv"
    assert t2v_family.default_repo == "" and "pretrained_models.zip" in t2v_family.manual_download
    assert fam.VAE_FILE in t2v_family.files and fam.VAE_FILE in i2v_family.files
    assert "NON-COMMERCIAL" in t2v_family.licence and "NON-COMMERCIAL" in i2v_family.licence


def test_unzipped_release_folder_is_found_for_both_modes(smoke_weights_dir, tmp_path, monkeypatch):
    """One unzipped folder under models/videomv/ serves both families; nothing is downloaded."""
    root = tmp_path / "models"
    target = root / "videomv" / fam.ZIP_FOLDER
    shutil.copytree(smoke_weights_dir / fam.T2V, target)
    for name in (fam.UNET_FILES[fam.I2V], fam.OPEN_CLIP_FILES[fam.I2V]):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(smoke_weights_dir / fam.I2V / name, target / name)
    monkeypatch.setattr(runtime._standalone, "models", root)
    for name in fam.FAMILIES:
        assert store.resolve(families.get(name)) == target


def test_missing_weights_say_where_the_zip_is(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime._standalone, "models", tmp_path / "models")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # online or not, there is nothing to download
    with pytest.raises(store.WeightsError) as info:
        store.resolve(families.get(fam.I2V))
    text = str(info.value)
    assert fam.ZIP_URL in text and "not on Hugging Face" in text
    assert str(tmp_path / "models" / "videomv" / fam.ZIP_FOLDER / fam.UNET_FILES[fam.I2V]) in text


def test_smoke_folders_load_strictly_with_sizes_from_the_shapes(t2v, i2v):
    for handle, mode in ((t2v, "t2v"), (i2v, "i2v")):
        assert handle.extra["mode"] == mode and handle.extra["num_views"] == 24 and handle.extra["set_aside"] == len(lgm_smoke_state())
        config = handle.modules["unet"].config
        assert tuple(config.block_out_channels) == (64, 128, 128, 128)
        assert config.cross_attention_dim == handle.modules["text_encoder"].config.hidden_size
    assert "image_encoder" in i2v.modules and "image_encoder" not in t2v.modules


@pytest.mark.parametrize("name", fam.FAMILIES)
def test_loading_works_inside_inference_mode(smoke_weights_dir, name):
    """ComfyUI runs nodes (the loader included) under torch.inference_mode()."""
    with torch.inference_mode():
        handle = families.get(name).load(smoke_weights_dir / name, torch.device("cpu"), torch.float32)
    assert set(handle.modules) >= {"unet", "text_encoder", "vae"}


def test_checkpoint_of_the_other_mode_is_refused(smoke_weights_dir, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(smoke_weights_dir / fam.T2V, folder)
    shutil.copy(smoke_weights_dir / fam.I2V / fam.UNET_FILES[fam.I2V], folder / fam.UNET_FILES[fam.T2V])
    with pytest.raises(store.WeightsError, match=r"image-to-multi-view \(I2V\).*family .videomv_i2v."):
        families.get(fam.T2V).load(folder, torch.device("cpu"), torch.float32)


def test_missing_tokenizer_names_its_source(smoke_weights_dir, tmp_path):
    folder = tmp_path / "no_tokenizer"
    shutil.copytree(smoke_weights_dir / fam.T2V, folder)
    shutil.rmtree(folder / fam.TOKENIZER_DIR)
    with pytest.raises(store.WeightsError, match="laion/CLIP-ViT-H-14"):
        families.get(fam.T2V).load(folder, torch.device("cpu"), torch.float32)


# --------------------------------------------------------------------------- the sampling loop
class RecordingUNet(torch.nn.Module):
    """A stand-in UNet: a fixed function of every input it gets (so the guidance wiring and
    the order of the branches show in the result), recording its calls."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.3))
        self.calls = []

    def forward(self, sample, timestep, camera=None, encoder_hidden_states=None, return_dict=True, **kwargs):
        self.calls.append((float(timestep), sample.shape[0]))
        text = encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)
        cam = camera.sum(-1).view(camera.shape[0], 1, camera.shape[1], 1, 1)
        out = self.scale * sample + 0.1 * text + 0.01 * cam + 1e-4 * float(timestep)
        return (out,)


def hand_ddim(x, model_fn, alphas, steps, prediction):
    """VGen's DDIM (eta 0): timesteps 1 + {0, k, ..., 1000 - k} reversed, the last "previous"
    alpha being alphabar[0]; ``model_fn(x, t)`` is the guided model output."""
    k = 1000 // steps
    timesteps = [1 + k * i for i in range(steps)][::-1]
    for i, t in enumerate(timesteps):
        a_t = alphas[t].double()
        a_prev = alphas[timesteps[i + 1]].double() if i + 1 < steps else alphas[0].double()
        out = model_fn(x, t).double()
        if prediction == "epsilon":
            x0 = (x - (1 - a_t).sqrt() * out) / a_t.sqrt()
            eps = out
        else:
            x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * out
            eps = a_t.sqrt() * out + (1 - a_t).sqrt() * x
        x = (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps).float()
    return x


@pytest.mark.parametrize("mode,make,prediction", [("t2v", t2v_scheduler, "epsilon"),
                                                  ("i2v", i2v_scheduler, "v_prediction")])
def test_sampling_loop_matches_hand_written_ddim_with_guidance(mode, make, prediction):
    views, steps, guidance, seed = 6, 5, 7.5, 11
    unet = RecordingUNet()
    cams = to_videomv_cameras(P.orbit_cameras(views, 15.0, 2.0, resolution=RES))
    tokens = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))  # [cond, uncond]
    settings = P.ViewSettings(guidance=guidance, steps=steps, seed=seed, resolution=RES)
    got = P.sample_latents(unet, mode, {"encoder_hidden_states": tokens}, cams, settings)

    def guided(x, t):
        def branch(i):
            return unet(x, torch.tensor(t), camera=cams[None], encoder_hidden_states=tokens[i:i + 1])[0]
        cond, uncond = branch(0), branch(1)
        return uncond + guidance * (cond - uncond)
    noise = torch.randn((1, 4, views, RES // 8, RES // 8), generator=torch.Generator().manual_seed(seed))
    want = hand_ddim(noise, guided, make().alphas_cumprod, steps, prediction)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_fifty_steps_visit_981_down_to_1_with_both_branches_in_one_batch():
    unet = RecordingUNet()
    cams = to_videomv_cameras(P.orbit_cameras(3, 15.0, 2.0, resolution=RES))
    P.sample_latents(unet, "t2v", {"encoder_hidden_states": torch.zeros(2, 3, 4)}, cams,
                     P.ViewSettings(guidance=9.0, seed=0, resolution=RES))
    assert [t for t, _ in unet.calls] == [981 - 20 * i for i in range(NUM_STEPS)]
    assert {batch for _, batch in unet.calls} == {2}


# --------------------------------------------------------------------------- conditioning
class FakeText:
    dim, length = 4, 3

    def __init__(self):
        self.prompts = []

    def embed(self, prompts):
        self.prompts.append(list(prompts))
        return torch.stack([torch.full((3, 4), float(len(p))) for p in prompts])


class FakeImages:
    dim = 4

    def embed(self, images):
        return images.mean(dim=(1, 2)).repeat(1, 2)[:, :4] + 1.0


def test_t2v_conditioning_appends_3d_asset_and_uses_the_negative_prompt():
    text = FakeText()
    cond = P.t2v_conditioning(text, "  a teapot ", "bad things")
    assert text.prompts == [["a teapot, 3d asset", "bad things"]]
    assert cond["encoder_hidden_states"].shape == (2, 3, 4)
    P.t2v_conditioning(text, "a chair, 3d asset")
    assert text.prompts[-1] == ["a chair, 3d asset", P.NEGATIVE_PROMPT]
    with pytest.raises(ValueError, match="empty"):
        P.t2v_conditioning(text, "   ")


def test_i2v_conditioning_empty_caption_zero_image_embedding_same_latent(i2v):
    text = FakeText()
    codec = DiffusersVAECodec(i2v.modules["vae"])
    image = torch.rand(1, RES, RES, 3)
    cond = P.i2v_conditioning(text, FakeImages(), codec, image)
    assert text.prompts == [["", P.NEGATIVE_PROMPT]]
    emb = cond["image_embeddings"]
    assert emb.shape == (2, 4) and emb[0].abs().sum() > 0 and torch.equal(emb[1], torch.zeros(4))
    latent = cond["image_latents"]
    assert latent.shape == (2, 4, RES // 8, RES // 8) and torch.equal(latent[0], latent[1])
    torch.testing.assert_close(latent[:1], codec.encode(image))


def test_square_image_centre_crops_without_stretching():
    image = torch.zeros(1, 40, 80, 3)
    image[:, :, 20:60] = 1.0  # the centre square is white, the sides black
    out = P.square_image(image, 32)
    assert out.shape == (1, 32, 32, 3) and torch.allclose(out, torch.ones_like(out))
    same = torch.rand(1, 32, 32, 3)
    assert torch.equal(P.square_image(same, 32), same)


# --------------------------------------------------------------------------- nodes
def test_orbit_node_outputs_cameras_and_videomv_matrices():
    cams, data = N.CVS_VideoMVOrbitCameras().build(24, 15.0, 2.0, 30.0, 256)
    assert len(cams) == 24 and data.shape == (24, 16) and cams.width == cams.height == 256
    torch.testing.assert_close(data, to_videomv_cameras(cams))
    centres = cams.c2w[:, :3, 3].double()
    assert torch.allclose(centres.norm(dim=-1), torch.full((24,), 2.0, dtype=torch.float64), atol=1e-5)
    # above the object (OpenCV: y down), every camera looks at the origin
    assert torch.allclose(centres[:, 1], torch.full((24,), -2.0 * math.sin(math.radians(15)), dtype=torch.float64), atol=1e-5)
    forward = cams.c2w[:, :3, 2].double()
    assert torch.allclose(forward, -centres / centres.norm(dim=-1, keepdim=True), atol=1e-5)
    # VideoMV's data: the first view at azimuth 30 sits at (cos 30, sin 30) * cosE * d in its z-up world
    x, y, z = data[0].view(4, 4)[:3, 3].tolist()
    c = 2.0 * math.cos(math.radians(15))
    assert (x, y, z) == pytest.approx((c * math.cos(math.radians(30)), c * math.sin(math.radians(30)),
                                       2.0 * math.sin(math.radians(15))), abs=1e-5)
    with pytest.raises(NodeInputError, match="elevation"):
        N.CVS_VideoMVOrbitCameras().build(24, 90.0, 2.0, 0.0, 256)


def test_prepare_node_centres_the_object_and_outputs_its_mask():
    image, alpha = object_image()
    out, mask = N.CVS_VideoMVPrepareImage().prepare(image, alpha, False, 256, 200 / 256, 1.0)
    assert out.shape == (1, 256, 256, 3) and mask.shape == (1, 256, 256)
    rows, cols = (mask[0] > 0.5).any(1).nonzero(), (mask[0] > 0.5).any(0).nonzero()
    assert int(cols[-1]) - int(cols[0]) + 1 == 200  # the longest side (45 px wide) became 200
    assert abs((int(rows[0]) + int(rows[-1])) / 2 - 127.5) <= 3 and abs((int(cols[0]) + int(cols[-1])) / 2 - 127.5) <= 1
    assert torch.allclose(out[0, :5], torch.ones(5, 256, 3))  # white canvas
    # ComfyUI 'Load Image' masks are inverted alpha
    out_inv, _ = N.CVS_VideoMVPrepareImage().prepare(image, 1.0 - alpha, True, 256, 200 / 256, 1.0)
    torch.testing.assert_close(out_inv, out)


def test_load_image_node_reads_the_bundled_object_with_alpha():
    image, alpha = CVS_LoadImage().load("cvs_object.png")
    assert image.shape == (1, 240, 320, 3) and alpha.shape == (1, 240, 320)
    assert alpha.min() == 0.0 and alpha.max() == 1.0
    with pytest.raises(NodeInputError, match="'image'"):
        CVS_LoadImage().load("no_such_picture.png")


@pytest.mark.parametrize("mode", ["t2v", "i2v"])
def test_nodes_generate_24_views_with_cameras_and_latents(mode, t2v, i2v):
    handle = t2v if mode == "t2v" else i2v
    if mode == "t2v":
        def run(seed):
            return N.CVS_VideoMVTextToViews().generate(handle, "a teapot", seed, 2, 9.0, 15.0, 2.0, RES,
                                                       P.NEGATIVE_PROMPT)
    else:
        image, alpha = object_image()
        prepared, _ = N.CVS_VideoMVPrepareImage().prepare(image, alpha, False, RES, 0.8, 1.0)

        def run(seed):
            return N.CVS_VideoMVImageToViews().generate(handle, prepared, seed, 2, 6.0, 5.0, 1.7, RES,
                                                        P.NEGATIVE_PROMPT)
    images, cams, latent, gaussians = run(5)
    assert images.shape == (24, RES, RES, 3) and 0.0 <= images.min() and images.max() <= 1.0
    assert latent["samples"].shape == (24, 4, RES // 8, RES // 8)
    elevation, distance = (15.0, 2.0) if mode == "t2v" else (5.0, 1.7)
    want = trajectories.orbit(24, elevation, distance, width=RES, height=RES, fov_deg=VIDEOMV_FOV_DEG)
    torch.testing.assert_close(cams.c2w, want.c2w)
    torch.testing.assert_close(cams.K, want.K)
    # the LATENT is ComfyUI's unscaled VAE latent: scaled back and decoded it gives the views
    decoded = DiffusersVAECodec(handle.modules["vae"], chunk_size=8).decode(latent["samples"] * SD_SCALING_FACTOR)
    torch.testing.assert_close(decoded, images)
    again, _, _, _ = run(5)
    other, _, _, _ = run(6)
    assert torch.equal(again, images) and not torch.equal(other, images)


def test_explicit_cameras_are_used(t2v):
    cams, _ = N.CVS_VideoMVOrbitCameras().build(24, 30.0, 2.5, 90.0, 512)
    _, out, _, _ = N.CVS_VideoMVTextToViews().generate(t2v, "a chair", 0, 1, 9.0, 15.0, 2.0, RES,
                                                    P.NEGATIVE_PROMPT, cameras=cams)
    torch.testing.assert_close(out.c2w, cams.c2w)
    assert out.width == out.height == RES


# --------------------------------------------------------------------------- bad input
def test_wrong_number_of_views_for_the_checkpoint(t2v, i2v):
    cams, _ = N.CVS_VideoMVOrbitCameras().build(12, 15.0, 2.0, 0.0, 256)
    with pytest.raises(NodeInputError, match=r"'cameras' has 12 views.*24 cameras"):
        N.CVS_VideoMVTextToViews().generate(t2v, "a chair", 0, 1, 9.0, 15.0, 2.0, RES, P.NEGATIVE_PROMPT,
                                            cameras=cams)
    with pytest.raises(NodeInputError, match=r"'cameras' has 12 views"):
        N.CVS_VideoMVImageToViews().generate(i2v, torch.rand(1, RES, RES, 3), 0, 1, 6.0, 5.0, 1.7, RES,
                                             P.NEGATIVE_PROMPT, cameras=cams)


@pytest.mark.parametrize("prompt", ["", "   \n"])
def test_empty_prompt(t2v, prompt):
    with pytest.raises(NodeInputError, match="CVS VideoMV Text to Views: input 'prompt' is empty"):
        N.CVS_VideoMVTextToViews().generate(t2v, prompt, 0, 1, 9.0, 15.0, 2.0, RES, P.NEGATIVE_PROMPT)


def test_image_without_alpha():
    node = N.CVS_VideoMVPrepareImage()
    image, _ = object_image()
    # what ComfyUI's Load Image gives for a file without alpha: a 64x64 empty mask
    with pytest.raises(NodeInputError, match="'mask' is 64x64 but the image is 100x80.*remove the background"):
        node.prepare(image, torch.zeros(1, 64, 64), True, 256, 0.78125, 1.0)
    # an opaque alpha read as an object mask is fine; the same alpha read as Load Image's inverted mask is empty
    with pytest.raises(NodeInputError, match="'mask' marks no object"):
        node.prepare(image, torch.zeros(1, 80, 100), False, 256, 0.78125, 1.0)
    with pytest.raises(NodeInputError, match="'image' has 4 channels"):
        node.prepare(torch.rand(1, 80, 100, 4), torch.ones(1, 80, 100), False, 256, 0.78125, 1.0)


def test_prepare_background_outside_0_to_1_names_the_input():
    image, alpha = object_image()
    for value in (float("nan"), 1.5, -0.1):
        with pytest.raises(NodeInputError, match="^CVS VideoMV Prepare Image: input 'background' is "):
            N.CVS_VideoMVPrepareImage().prepare(image, alpha, False, RES, 0.8, value)


def test_resolution_is_declared_in_steps_of_8_as_the_network_takes_it(t2v):
    """VideoMV needs a multiple of 8 (the VAE); the UNet passes the skip sizes up for latents that do
    not halve evenly, so 72 (9x9 latents) runs, and the widget steps by 8 like the check."""
    for cls in (N.CVS_VideoMVTextToViews, N.CVS_VideoMVImageToViews):
        options = cls.INPUT_TYPES()["required"]["resolution"][1]
        assert options["step"] == P.LATENT_DOWNSCALE == 8 and options["min"] % 8 == 0
        assert "multiple of 8" in options["tooltip"]
    images, cams, latent, _ = N.CVS_VideoMVTextToViews().generate(t2v, "a teapot", 0, 1, 9.0, 15.0, 2.0, 72,
                                                               P.NEGATIVE_PROMPT)
    assert images.shape == (24, 72, 72, 3) and latent["samples"].shape == (24, 4, 9, 9) and cams.width == 72
    with pytest.raises(NodeInputError, match="'resolution'.*is 68; expected a positive multiple of 8"):
        N.CVS_VideoMVTextToViews().generate(t2v, "a teapot", 0, 1, 9.0, 15.0, 2.0, 68, P.NEGATIVE_PROMPT)


def test_wrong_model_and_batch(t2v, i2v):
    with pytest.raises(NodeInputError, match="'videomv_t2v' model .the text and image modes.*family 'videomv_i2v'"):
        N.CVS_VideoMVImageToViews().generate(t2v, torch.rand(1, RES, RES, 3), 0, 1, 6.0, 5.0, 1.7, RES,
                                             P.NEGATIVE_PROMPT)
    with pytest.raises(NodeInputError, match="'model' got"):
        N.CVS_VideoMVTextToViews().generate("not a model", "a chair", 0, 1, 9.0, 15.0, 2.0, RES, P.NEGATIVE_PROMPT)
    with pytest.raises(NodeInputError, match="'image' has 2 images"):
        N.CVS_VideoMVImageToViews().generate(i2v, torch.rand(2, RES, RES, 3), 0, 1, 6.0, 5.0, 1.7, RES,
                                             P.NEGATIVE_PROMPT)
    with pytest.raises(NodeInputError, match="'resolution'"):
        N.CVS_VideoMVTextToViews().generate(t2v, "a chair", 0, 1, 9.0, 15.0, 2.0, 100, P.NEGATIVE_PROMPT)


def test_cancel_stops_sampling(t2v, cancel_on_call):
    calls = cancel_on_call(t2v.modules["unet"], "forward", 2)
    with pytest.raises(runtime.Interrupted):
        N.CVS_VideoMVTextToViews().generate(t2v, "a chair", 0, 10, 9.0, 15.0, 2.0, RES, P.NEGATIVE_PROMPT)
    assert len(calls) == 2  # stopped at the step after the request, not at the end


@pytest.mark.parametrize("mode", ["t2v", "i2v"])
def test_cancel_inside_the_first_unet_call(mode, t2v, i2v, cancel_inside_network):
    """Cancel pressed while the UNet runs its first down block stops that very call: no up
    block runs (the answer comes within a block, not a whole sampling step)."""
    handle = t2v if mode == "t2v" else i2v
    unet = handle.modules["unet"]
    calls = cancel_inside_network(unet.down_blocks[0], unet.up_blocks[-1])
    with pytest.raises(runtime.Interrupted):
        if mode == "t2v":
            N.CVS_VideoMVTextToViews().generate(handle, "a chair", 0, 10, 9.0, 15.0, 2.0, RES, P.NEGATIVE_PROMPT)
        else:
            N.CVS_VideoMVImageToViews().generate(handle, torch.rand(1, RES, RES, 3), 0, 10, 6.0, 5.0, 1.7, RES,
                                                 P.NEGATIVE_PROMPT)
    assert calls == {"first": 1, "last": 0}
