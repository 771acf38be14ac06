"""VideoScene on smoke weights: the size/frame mapping, the one-step pass against an independent
computation with stock diffusers modules, strict loading of a partial refiner over the base, the
node end to end, bad input and Cancel."""
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline
from safetensors.torch import load_file, save_file

from consistent_video.nodes.comfy import families, runtime
from consistent_video.nodes.comfy.errors import NodeInputError
from consistent_video.nodes.comfy.weights import WeightsError
from consistent_video.videoscene_nodes import family as fam
from consistent_video.videoscene_nodes import nodes as N
from consistent_video.videoscene_nodes import pipeline as P
from consistent_video.videoscene_nodes.fit import Placement, model_frame_indices, output_frame_indices


@pytest.fixture(scope="module")
def handle(smoke_weights_dir):
    return families.get(fam.NAME).load(smoke_weights_dir / fam.NAME, torch.device("cpu"), torch.float32)


def clip(frames=5, height=40, width=50, seed=0):
    return torch.rand(frames, height, width, 3, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- frames and sizes
@pytest.mark.parametrize("model_frames", [9, 49])
def test_frame_mapping_round_trips_exactly_up_to_the_model_length(model_frames):
    for frames in range(2, model_frames + 1):
        shown = model_frame_indices(frames, model_frames)
        assert shown[0] == 0 and shown[-1] == frames - 1 and set(shown.tolist()) == set(range(frames))
        assert torch.equal(shown[output_frame_indices(frames, model_frames)], torch.arange(frames))


def test_longer_videos_take_the_nearest_refined_frame():
    back = output_frame_indices(100, 49)
    assert back[0] == 0 and back[-1] == 48 and bool((back.diff() >= 0).all())
    shown = model_frame_indices(100, 49)
    assert (shown[back] - torch.arange(100)).abs().max() <= 1


def test_fewer_than_two_frames_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        model_frame_indices(1, 49)


def test_docs_say_how_the_original_fails_on_short_videos():
    """The original's reader raises decord's IndexError on fewer than 49 frames; it does not hang."""
    from consistent_video.videoscene_nodes import fit
    readme = (Path(fit.__file__).parent.parent / "docs" / "videoscene.md").read_text(encoding="utf-8")
    for text in (fit.__doc__, readme):
        assert "IndexError" in text
        assert "loops forever" not in text and "hangs on videos" not in text


def test_pad_never_stretches_and_round_trips_exactly_at_scale_one():
    frames = torch.rand(3, 3, 64, 64)
    place = Placement.plan(64, 64, 64, 96, "pad")
    assert (place.scaled_h, place.scaled_w, place.top, place.left) == (64, 64, 0, 16)
    canvas = place.to_model(frames)
    assert canvas.shape == (3, 3, 64, 96) and canvas[..., :16].abs().max() == 0 and canvas[..., 80:].abs().max() == 0
    assert torch.equal(place.from_model(canvas), frames)
    square = Placement.plan(512, 512, 480, 720, "pad")
    assert (square.scaled_h, square.scaled_w) == (480, 480)  # a square render stays square
    wide = Placement.plan(100, 400, 480, 720, "pad")
    assert (wide.scaled_h, wide.scaled_w) == (180, 720) and wide.top == 150


def test_crop_covers_the_model_size_and_keeps_the_uncut_border():
    frames = torch.full((2, 3, 64, 64), 0.7)
    place = Placement.plan(64, 64, 32, 48, "crop")
    assert (place.scaled_h, place.scaled_w, place.top, place.left) == (48, 48, -8, 0)
    refined = torch.zeros(2, 3, 32, 48)
    back = place.from_model(refined, frames)
    assert back.shape == frames.shape
    assert torch.allclose(back[..., :4, :], frames[..., :4, :], atol=1e-5)  # border rows: the input's pixels
    assert back[..., 16:48, 8:56].abs().max() < 1e-6  # the refined centre
    with pytest.raises(ValueError, match="original"):
        place.from_model(refined)


# --------------------------------------------------------------------------- the one-step pass
def test_one_step_equals_an_independent_computation(handle):
    transformer, vae = handle.modules["transformer"], handle.modules["vae"]
    shape = P.geometry(transformer, vae)
    video = torch.rand(shape.frames, 3, shape.height, shape.width, generator=torch.Generator().manual_seed(1)) * 2 - 1
    first, last = video[0] * 0.9, video[-1] * 0.8
    t, seed = 459, 7
    with torch.no_grad():
        ours = P.refine(transformer, vae, handle.extra["scheduler"], handle.extra["prompt_embeds"], video, first, last,
                        t, seed)

        # the same pass written out with stock diffusers parts, in VideoScene's order of random draws
        gen = torch.Generator().manual_seed(seed)
        sf = vae.config.scaling_factor
        z0 = vae.encode(video.permute(1, 0, 2, 3)[None]).latent_dist.sample(gen) * sf
        sigma = torch.exp(torch.normal(-3.0, 0.5, (1,), generator=gen))
        ends = [vae.encode((img + torch.randn(img.shape, generator=gen) * sigma)[None, :, None]).latent_dist.sample(gen)
                * sf for img in (first, last)]
        z0, ends = z0.permute(0, 2, 1, 3, 4), [e.permute(0, 2, 1, 3, 4) for e in ends]
        condition = torch.cat([ends[0], torch.zeros(1, z0.shape[1] - 2, *z0.shape[2:]), ends[1]], 1)
        scheduler = CogVideoXDDIMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction",
                                           rescale_betas_zero_snr=True, snr_shift_scale=1.0, timestep_spacing="trailing")
        noise = torch.randn(z0.shape, generator=gen)
        ts = torch.tensor([t])
        z_t = scheduler.add_noise(z0, noise, ts)
        pipe = CogVideoXImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                                             scheduler=scheduler)
        rotary = pipe._prepare_rotary_positional_embeddings(shape.height, shape.width, z0.shape[1], torch.device("cpu"))
        v = transformer(hidden_states=torch.cat([z_t, condition], 2), encoder_hidden_states=handle.extra["prompt_embeds"],
                        timestep=ts, image_rotary_emb=rotary, return_dict=False)[0]
        x0 = scheduler.get_velocity(v, z_t, ts)  # VideoScene's call: sqrt(a) * z_t - sqrt(1 - a) * v
        expected = vae.decode((x0 / sf).permute(0, 2, 1, 3, 4)).sample[0].permute(1, 0, 2, 3)
    assert ours.shape == expected.shape == video.shape
    assert torch.allclose(ours, expected, atol=1e-4), (ours - expected).abs().max()
    # the timestep matters and the seed decides
    with torch.no_grad():
        other = P.refine(transformer, vae, handle.extra["scheduler"], handle.extra["prompt_embeds"], video, first, last,
                         t, seed + 1)
    assert not torch.allclose(ours, other, atol=1e-3)


def test_the_scheduler_matches_the_releases_alphas():
    built = P.make_scheduler()
    a = P.alpha_bar(built, 999)
    assert a < 1e-6  # zero terminal SNR
    assert abs(P.alpha_bar(built, 0) - (1 - 0.00085)) < 1e-6


# --------------------------------------------------------------------------- loading
def test_partial_refiner_over_the_sharded_base_loads(handle, smoke_weights_dir):
    report = handle.extra["report"]
    assert report["from_refiner"] > 0 and report["from_base"] > 0 and report["missing"] == 0
    assert handle.extra["prompt_embeds"].shape == (1, 8, 32)
    refiner = load_file(str(smoke_weights_dir / fam.NAME / fam.REFINER_FILE))
    for key, value in refiner.items():  # the refiner's tensors win over the base
        assert torch.equal(handle.modules["transformer"].state_dict()[key], value)


def _copy(smoke_weights_dir, tmp_path):
    folder = tmp_path / "vs"
    shutil.copytree(smoke_weights_dir / fam.NAME, folder)
    return folder


def test_a_refiner_of_another_model_is_refused(smoke_weights_dir, tmp_path):
    folder = _copy(smoke_weights_dir, tmp_path)
    state = load_file(str(folder / fam.REFINER_FILE))
    save_file({**state, "unet.conv_in.weight": torch.zeros(3)}, str(folder / fam.REFINER_FILE))
    with pytest.raises(WeightsError, match="unet.conv_in.weight"):
        fam.load_videoscene(folder, torch.device("cpu"), torch.float32)
    key = next(iter(state))
    save_file({**state, key: torch.zeros(1, 2, 3)}, str(folder / fam.REFINER_FILE))
    with pytest.raises(WeightsError, match="shape mismatch"):
        fam.load_videoscene(folder, torch.device("cpu"), torch.float32)


def test_a_partial_refiner_without_the_base_names_what_to_download(smoke_weights_dir, tmp_path):
    folder = _copy(smoke_weights_dir, tmp_path)
    for shard in (folder / "transformer").glob("*.safetensors*"):
        shard.unlink()
    with pytest.raises(WeightsError, match="CogvideoX-Interpolation") as err:
        fam.load_videoscene(folder, torch.device("cpu"), torch.float32)
    assert "patch_embed" in str(err.value)


def test_a_complete_refiner_needs_no_base_weights(handle, smoke_weights_dir, tmp_path):
    folder = _copy(smoke_weights_dir, tmp_path)
    save_file({k: v.contiguous() for k, v in handle.modules["transformer"].state_dict().items()},
              str(folder / fam.REFINER_FILE))
    for shard in (folder / "transformer").glob("*.safetensors*"):
        shard.unlink()
    loaded = fam.load_videoscene(folder, torch.device("cpu"), torch.float32)
    assert loaded.extra["report"]["from_base"] == 0


def test_bad_prompt_embeddings_are_refused(smoke_weights_dir, tmp_path):
    folder = _copy(smoke_weights_dir, tmp_path)
    torch.save(torch.zeros(1, 8, 31), str(folder / fam.PROMPT_FILE))
    with pytest.raises(WeightsError, match=r"\[1, 8, 32\]"):
        fam.load_videoscene(folder, torch.device("cpu"), torch.float32)
    torch.save({"embeds": [1, 2]}, str(folder / fam.PROMPT_FILE))
    with pytest.raises(WeightsError, match="not a tensor"):
        fam.load_videoscene(folder, torch.device("cpu"), torch.float32)
    (folder / fam.PROMPT_FILE).write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="weights-only"):
        fam.load_videoscene(folder, torch.device("cpu"), torch.float32)


def test_missing_base_config_names_the_repository(smoke_weights_dir, tmp_path):
    folder = _copy(smoke_weights_dir, tmp_path)
    (folder / "vae/config.json").unlink()
    with pytest.raises(WeightsError, match="vae/config.json"):
        fam.load_videoscene(folder, torch.device("cpu"), torch.float32)


# --------------------------------------------------------------------------- the node
def test_node_refines_any_length_and_aspect(handle):
    video = clip(5, 40, 50)
    out, info = N.CVS_VideoSceneRefine().refine(handle, video, 459, 0, "pad", True)
    assert out.shape == video.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert "5 frames" in info and "SMOKE" in info
    long = clip(12, 30, 90, seed=1)
    out, _ = N.CVS_VideoSceneRefine().refine(handle, long, 300, 1, "crop", False, long[:1], long[-1:])
    assert out.shape == long.shape


def test_node_rejects_bad_input(handle):
    node = N.CVS_VideoSceneRefine()
    with pytest.raises(NodeInputError, match="'video' has 1 frame"):
        node.refine(handle, clip(1), 459, 0, "pad", True)
    with pytest.raises(NodeInputError, match="first_image"):
        node.refine(handle, clip(3), 459, 0, "pad", True, first_image=clip(1, 20, 20))
    with pytest.raises(NodeInputError, match="timestep"):
        node.refine(handle, clip(3), 1000, 0, "pad", True)
    with pytest.raises(NodeInputError, match="'model'"):
        node.refine("not a model", clip(3), 459, 0, "pad", True)
    with pytest.raises(NodeInputError, match="'video'"):
        node.refine(handle, torch.rand(3, 20, 20), 459, 0, "pad", True)


def test_cancel_stops_the_pass(handle, cancel_on_call):
    calls = cancel_on_call(P, "decode", 1)
    with pytest.raises(runtime.Interrupted):
        N.CVS_VideoSceneRefine().refine(handle, clip(3), 459, 0, "pad", True)
    assert len(calls) == 1


def test_cancel_inside_the_transformer_pass(handle, cancel_inside_network):
    """Cancel pressed while the first transformer block runs stops the one pass there: the last
    block never runs (the answer comes within a block, not after the whole pass)."""
    blocks = handle.modules["transformer"].transformer_blocks
    calls = cancel_inside_network(blocks[0], blocks[-1])
    with pytest.raises(runtime.Interrupted):
        N.CVS_VideoSceneRefine().refine(handle, clip(3), 459, 0, "pad", True)
    assert calls == {"first": 1, "last": 0}
