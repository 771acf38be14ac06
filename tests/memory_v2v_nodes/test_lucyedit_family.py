"""The LucyEdit family on smoke weights: the release layout (sharded or single-file transformer),
strict loading, refusal of other models by name, the forward against diffusers' own loader,
the Wan2.2 VAE through the shared codec, and the scheduler built from its config."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import (AutoencoderKLWan, DDIMScheduler, FlowMatchEulerDiscreteScheduler, LucyEditPipeline,
                       UniPCMultistepScheduler, WanTransformer3DModel)
from safetensors.torch import save_file

from consistent_video.nodes.comfy import families
from consistent_video.nodes.comfy.weights import (COMPONENT_INDEX, COMPONENT_WEIGHTS, WeightsError, missing_files,
                                                  random_state, read_component_weights, write_component_weights)
from consistent_video.memory_v2v_nodes import lucy_family as L
from consistent_video.memory_v2v_nodes.text import write_smoke_text_encoder

CPU = torch.device("cpu")


def load(folder, dtype=torch.float32):
    return families.get(L.NAME).load(Path(folder), CPU, dtype)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lucy") / L.NAME
    families.get(L.NAME).write_smoke(folder)
    return folder


@pytest.fixture(scope="module")
def handle(smoke):
    return load(smoke)


@pytest.fixture(scope="module")
def state(smoke):
    return read_component_weights(smoke / "transformer", "smoke")


def copy_release(smoke: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(smoke, target)
    return target


def write_transformer(folder: Path, shards: int = 1, **changes) -> dict:
    """A random transformer of the smoke config with ``changes`` into ``folder/transformer`` (replacing it)."""
    shutil.rmtree(folder / "transformer", ignore_errors=True)
    config = {**L.smoke_transformer_config(), **changes}
    with torch.device("meta"):
        model = WanTransformer3DModel(**config)
    model.save_config(str(folder / "transformer"))
    weights = random_state(model, torch.Generator().manual_seed(3))
    write_component_weights(folder / "transformer", weights, shards)
    return weights


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


# --------------------------------------------------------------------------- the family and its smoke weights
def test_family_is_registered_with_the_release_layout_and_licence():
    family = families.get("lucyedit")
    assert family is L.FAMILY and family.default_repo == "decart-ai/Lucy-Edit-Dev"
    assert family.folder_name == "lucyedit"
    assert {"model_index.json", "transformer/config.json", "vae/config.json",
            "scheduler/scheduler_config.json"} <= set(family.files)
    assert "non-commercial" in family.licence.lower() and "Apache-2.0" in family.licence
    assert family.smoke_overrides is L.SMOKE_OVERRIDES  # filled by the edit nodes (short CPU runs)
    assert set(L.SMOKE_OVERRIDES) == {"CVS_MemoryV2VEditSegments", "CVS_LucyEditEdit", "CVS_LoadVideo",
                                      "CVS_SplitVideoSegments"}
    split = L.SMOKE_OVERRIDES["CVS_SplitVideoSegments"]  # the shortened clip still splits into 3 segments
    frames = L.SMOKE_OVERRIDES["CVS_LoadVideo"]["max_frames"]
    assert frames == split["segment_length"] + 2 * (split["segment_length"] - split["overlap"])


def test_smoke_weights_use_the_release_layout_with_a_sharded_transformer(smoke):
    assert not missing_files(L.FAMILY, smoke)
    index = json.loads((smoke / "transformer" / COMPONENT_INDEX).read_text())
    assert sorted(set(index["weight_map"].values())) == [
        "diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors"]
    assert not (smoke / "transformer" / COMPONENT_WEIGHTS).exists()
    model_index = json.loads((smoke / "model_index.json").read_text())
    assert model_index["_class_name"] == "LucyEditPipeline" and model_index["expand_timesteps"] is True
    size = sum(p.stat().st_size for p in smoke.rglob("*") if p.is_file())
    assert size < 12e6, size


def test_smoke_weights_load_through_the_family(handle):
    assert handle.family == "lucyedit" and handle.is_smoke
    assert set(handle.modules) == {"transformer", "vae", "text_encoder"}
    transformer, vae = handle.modules["transformer"], handle.modules["vae"]
    assert isinstance(transformer, WanTransformer3DModel) and isinstance(vae, AutoencoderKLWan)
    config = transformer.config
    assert (config.in_channels, config.out_channels, config.num_layers) == (96, 48, 30)
    assert tuple(config.patch_size) == (1, 2, 2)
    assert vae.config.z_dim == 48 and vae.config.is_residual and vae.config.patch_size == 2
    assert not transformer.training and not any(p.requires_grad for p in transformer.parameters())
    assert set(handle.extra) == {"tokenizer", "scheduler_config", "expand_timesteps"}
    assert handle.extra["expand_timesteps"] is True and handle.extra["tokenizer"] is not None
    assert handle.extra["scheduler_config"]["_class_name"] == "UniPCMultistepScheduler"
    assert handle.modules["text_encoder"].config.d_model == config.text_dim == L.SMOKE_TEXT_WIDTH


def test_smoke_folder_is_a_diffusers_lucy_edit_pipeline(smoke):
    pipe = LucyEditPipeline.from_pretrained(str(smoke))
    assert isinstance(pipe.transformer, WanTransformer3DModel) and isinstance(pipe.vae, AutoencoderKLWan)
    assert isinstance(pipe.scheduler, UniPCMultistepScheduler) and pipe.config.expand_timesteps


def test_forward_equals_diffusers_from_pretrained_on_the_same_folder(handle, smoke):
    reference = WanTransformer3DModel.from_pretrained(str(smoke), subfolder="transformer").eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 96, 3, 4, 6, generator=gen)
    text = torch.randn(1, 5, L.SMOKE_TEXT_WIDTH, generator=gen)
    timestep = torch.full((1, 3 * 2 * 3), 700.0)  # expand_timesteps: one per token
    with torch.no_grad():
        ours = handle.modules["transformer"](x, timestep, text, return_dict=False)[0]
        theirs = reference(x, timestep, text, return_dict=False)[0]
    assert ours.shape == (1, 48, 3, 4, 6)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_bf16_keeps_the_parts_diffusers_keeps_in_float32(smoke):
    ours = load(smoke, torch.bfloat16).modules["transformer"]
    reference = WanTransformer3DModel.from_pretrained(str(smoke), subfolder="transformer", torch_dtype=torch.bfloat16)
    theirs = dict(reference.named_parameters())
    assert {n: p.dtype for n, p in ours.named_parameters()} == {n: p.dtype for n, p in theirs.items()}
    assert ours.scale_shift_table.dtype == torch.float32 and ours.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert ours.rope.freqs_cos.dtype == reference.rope.freqs_cos.dtype
    torch.testing.assert_close(ours.rope.freqs_cos, reference.rope.freqs_cos, rtol=0, atol=0)


def test_sharded_and_single_file_layouts_load_identical_weights(smoke, tmp_path):
    single = tmp_path / "single"
    L.write_smoke(single, shards=1)
    assert (single / "transformer" / COMPONENT_WEIGHTS).is_file()
    assert not (single / "transformer" / COMPONENT_INDEX).exists()
    a = L.load_transformer(smoke).state_dict()
    b = L.load_transformer(single).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_index_next_to_a_single_file_wins_as_in_diffusers(smoke, tmp_path, state):
    folder = copy_release(smoke, tmp_path)
    save_file({k: torch.zeros_like(v) for k, v in state.items()}, str(folder / "transformer" / COMPONENT_WEIGHTS))
    loaded = L.load_transformer(folder).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


# --------------------------------------------------------------------------- strict loading
@pytest.mark.parametrize("change, named", [
    ("missing", "1 missing key(s): blocks.7.attn1.to_k.weight"),
    ("extra", "1 unexpected key(s): blocks.7.cam_encoder.weight"),
    ("shape", "shape mismatch: blocks.7.ffn.net.0.proj.weight [128, 48] vs [256, 48]"),
])
def test_strict_loading_names_missing_extra_and_misshaped_keys(smoke, tmp_path, state, change, named):
    folder = copy_release(smoke, tmp_path)
    broken = dict(state)
    if change == "missing":
        del broken["blocks.7.attn1.to_k.weight"]
    elif change == "extra":
        broken["blocks.7.cam_encoder.weight"] = torch.zeros(48, 12)
    else:
        broken["blocks.7.ffn.net.0.proj.weight"] = torch.zeros(128, 48)
    shutil.rmtree(folder / "transformer")
    (folder / "transformer").mkdir()
    shutil.copy(smoke / "transformer" / "config.json", folder / "transformer" / "config.json")
    write_component_weights(folder / "transformer", broken)
    with pytest.raises(WeightsError) as err:
        load(folder)
    assert named in str(err.value) and "LucyEdit transformer" in str(err.value)


def test_a_missing_or_corrupt_shard_is_named(smoke, tmp_path):
    folder = copy_release(smoke, tmp_path)
    shard = folder / "transformer" / "diffusion_pytorch_model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="00002-of-00002.safetensors is not a readable safetensors file"):
        load(folder)
    shard.unlink()
    with pytest.raises(WeightsError, match="00002-of-00002.safetensors is missing"):
        load(folder)


def test_shards_that_disagree_with_their_index_are_refused(smoke, tmp_path):
    folder = copy_release(smoke, tmp_path)
    index_path = folder / "transformer" / COMPONENT_INDEX
    index = json.loads(index_path.read_text())
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = "diffusion_pytorch_model-00002-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(WeightsError, match=f"does not match {COMPONENT_INDEX}.*{key}"):
        load(folder)
    index_path.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(WeightsError, match="no valid weight_map"):
        load(folder)


def test_no_transformer_weights_at_all_says_what_is_expected(smoke, tmp_path):
    folder = copy_release(smoke, tmp_path)
    for path in (folder / "transformer").glob("*.safetensors*"):
        path.unlink()
    with pytest.raises(WeightsError, match=f"neither {COMPONENT_WEIGHTS} nor the sharded {COMPONENT_INDEX}"):
        load(folder)


# --------------------------------------------------------------------------- other models in the folder
def test_a_wan21_recammaster_shaped_transformer_is_refused_as_the_wrong_model(smoke, tmp_path):
    folder = copy_release(smoke, tmp_path)
    write_transformer(folder, in_channels=16, out_channels=16)
    with pytest.raises(WeightsError, match=r"16 input and 16 output latent channels: a Wan2\.1 DiT .*ReCamMaster.*"
                                           r"not LucyEdit"):
        load(folder)


def test_a_plain_wan22_ti2v_transformer_is_refused_as_the_wrong_model(smoke, tmp_path):
    folder = copy_release(smoke, tmp_path)
    write_transformer(folder, in_channels=48, out_channels=48)
    with pytest.raises(WeightsError, match=r"48 input and 48 output .*plain Wan2\.2 TI2V-5B DiT.*not LucyEdit"):
        load(folder)


def test_wan21_weights_under_a_lucyedit_config_are_named_by_shape(smoke, tmp_path):
    folder = copy_release(smoke, tmp_path)
    wan21 = tmp_path / "wan21"
    weights = write_transformer(wan21, in_channels=16, out_channels=16)
    for path in (folder / "transformer").glob("*.safetensors*"):
        path.unlink()
    write_component_weights(folder / "transformer", weights)
    with pytest.raises(WeightsError, match=r"shape mismatch: .*patch_embedding\.weight \[48, 16, 1, 2, 2\] vs "
                                           r"\[48, 96, 1, 2, 2\]"):
        load(folder)


def test_another_pipeline_or_transformer_class_is_refused_by_name(smoke, tmp_path):
    folder = copy_release(smoke, tmp_path)
    edit_json(folder / "model_index.json", _class_name="WanPipeline")
    with pytest.raises(WeightsError, match="names the pipeline 'WanPipeline', not LucyEditPipeline"):
        load(folder)
    edit_json(folder / "model_index.json", _class_name="LucyEditPipeline")
    edit_json(folder / "transformer" / "config.json", _class_name="CogVideoXTransformer3DModel")
    with pytest.raises(WeightsError, match="describes a CogVideoXTransformer3DModel, not a WanTransformer3DModel"):
        load(folder)


def test_a_wan21_vae_is_refused(smoke, tmp_path):
    folder = copy_release(smoke, tmp_path)
    edit_json(folder / "vae" / "config.json", z_dim=16)
    with pytest.raises(WeightsError, match="z_dim 16.*Wan2.2 VAE"):
        load(folder)


@pytest.mark.parametrize("channels, expected", [
    ((96, 48, 48), None), ((32, 16, 48), "the transformer and the VAE come from different models"),
    ((16, 16, 48), "Wan2.1"), ((48, 48, 48), "plain Wan2.2 TI2V-5B"), ((36, 16, 48), "not LucyEdit"),
])
def test_lucy_shape_problem(channels, expected):
    problem = L.lucy_shape_problem(*channels)
    assert problem is None if expected is None else expected in problem


def test_without_text_encoder_the_handle_has_none_and_a_mismatched_one_is_refused(smoke, tmp_path):
    folder = copy_release(smoke, tmp_path)
    shutil.rmtree(folder / "text_encoder")
    shutil.rmtree(folder / "tokenizer")
    bare = load(folder)
    assert "text_encoder" not in bare.modules and bare.extra["tokenizer"] is None
    write_smoke_text_encoder(folder, 16)
    with pytest.raises(WeightsError, match="16-wide tokens; the transformer expects 32"):
        load(folder)


# --------------------------------------------------------------------------- codec and scheduler
def test_wan22_vae_through_the_shared_codec(handle):
    vae = handle.modules["vae"]
    assert next(vae.parameters()).dtype == torch.float32
    video = torch.rand(9, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    codec = L.codec(handle)
    latent = codec.encode(video)
    assert latent.shape == (48, 3, 4, 4)
    # LucyEditPipeline's convention, computed directly: posterior mode, (z - mean) * (1 / std)
    mean = torch.tensor(vae.config.latents_mean).view(48, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(48, 1, 1, 1)
    with torch.no_grad():
        z = vae.encode(video.permute(3, 0, 1, 2)[None] * 2 - 1).latent_dist.mode()[0]
        pixels = vae.decode((latent * std + mean)[None]).sample[0]
    torch.testing.assert_close(latent, (z - mean) * (1.0 / std))
    decoded = codec.decode(latent)
    assert decoded.shape == (9, 64, 64, 3)
    torch.testing.assert_close(decoded, ((pixels + 1) / 2).clamp(0, 1).permute(1, 2, 3, 0))


def test_scheduler_is_built_fresh_from_the_release_config(handle):
    first, second = L.make_scheduler(handle), L.make_scheduler(handle.extra["scheduler_config"])
    assert isinstance(first, UniPCMultistepScheduler) and first is not second
    config = first.config
    assert (config.flow_shift, config.prediction_type, config.use_flow_sigmas, config.num_train_timesteps) == (
        5.0, "flow_prediction", True, 1000)
    first.set_timesteps(4)
    assert len(first.timesteps) == 4 and bool((first.timesteps.diff() < 0).all()) and first.sigmas[-1] == 0
    assert second.num_inference_steps is None  # untouched by the first one's set_timesteps


def test_other_flow_schedulers_are_accepted_and_others_refused(smoke, tmp_path):
    assert isinstance(L.make_scheduler({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 5.0}),
                      FlowMatchEulerDiscreteScheduler)
    dpm = L.make_scheduler({"_class_name": "DPMSolverMultistepScheduler", "prediction_type": "flow_prediction",
                            "use_flow_sigmas": True, "flow_shift": 5.0})
    assert dpm.config.use_flow_sigmas
    with pytest.raises(WeightsError, match="not set up for flow matching"):
        L.make_scheduler({"_class_name": "UniPCMultistepScheduler", "prediction_type": "epsilon"})
    folder = copy_release(smoke, tmp_path)
    DDIMScheduler().save_pretrained(str(folder / "scheduler"))
    with pytest.raises(WeightsError, match=r"scheduler_config\.json: the scheduler 'DDIMScheduler' is not a "
                                           "flow-matching scheduler"):
        load(folder)


def test_download_fetches_the_transformer_and_text_encoder_too(tmp_path, monkeypatch):
    """The transformer (one file or shards) and umT5 are not in `files` (their names vary); a download
    still fetches them through the family's download patterns."""
    import huggingface_hub
    from consistent_video.nodes.comfy import runtime, weights
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(runtime._standalone, "models", tmp_path / "models")
    asked = {}

    def fake_snapshot(repo_id, local_dir, allow_patterns):
        asked.update(repo=repo_id, patterns=list(allow_patterns))
        L.write_smoke(Path(local_dir))
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    folder = weights.resolve(L.FAMILY)
    assert asked["repo"] == "decart-ai/Lucy-Edit-Dev"
    assert set(L.FILES) <= set(asked["patterns"])
    assert {"transformer/*", "text_encoder/*", "tokenizer/*"} <= set(asked["patterns"])
    assert not missing_files(L.FAMILY, folder)
