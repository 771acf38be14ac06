"""VideoMV Text / Image to Views with the 3D-aware option (issue 15) on smoke weights: the plain
loop is unchanged, the 3D-aware run differs and gives renderable Gaussians, bad step lists and a
missing LGM are named, Cancel stops inside LGM."""
import copy
import shutil

import pytest
import torch

from consistent_video.nodes.comfy import families, runtime
from consistent_video.nodes.encoders.clip_text import TransformersCLIPTextEmbedder
from consistent_video.nodes.comfy.errors import NodeInputError
from consistent_video.nodes.splats.gaussians import GaussianScene
from consistent_video.nodes.splats.splat_nodes import CVS_RenderSplats
from consistent_video.nodes.encoders.vae import SD_SCALING_FACTOR, DiffusersVAECodec
from consistent_video.videomv_nodes import family as fam, nodes as N, pipeline as P
from consistent_video.videomv_nodes.lgm import LGM

RES = 64


def text_run(handle, steps=3, **kw):
    return N.CVS_VideoMVTextToViews().generate(handle, "a teapot", 0, steps, 9.0, 15.0, 2.0, RES,
                                               P.NEGATIVE_PROMPT, **kw)


def image_run(handle, steps=3, **kw):
    return N.CVS_VideoMVImageToViews().generate(handle, torch.rand(1, RES, RES, 3, generator=torch.Generator()
                                                                   .manual_seed(1)), 0, steps, 6.0, 5.0, 1.7,
                                                RES, P.NEGATIVE_PROMPT, **kw)


def without_lgm(handle):
    other = copy.copy(handle)
    other.modules = {k: v for k, v in handle.modules.items() if k != "lgm"}
    other.extra = dict(handle.extra, lgm_source="no LGM (test)")
    return other


def test_inputs_and_output_are_appended_at_the_end():
    for cls in (N.CVS_VideoMVTextToViews, N.CVS_VideoMVImageToViews):
        optional = list(cls.INPUT_TYPES()["optional"])
        assert optional == ["cameras", "denoise_3d", "denoise_3d_steps"]
        assert cls.INPUT_TYPES()["optional"]["denoise_3d"][1]["default"] is False
        assert cls.INPUT_TYPES()["optional"]["denoise_3d_steps"][1]["default"] == "20, 30, 40"
        assert cls.RETURN_TYPES[0] == "IMAGE" and cls.RETURN_TYPES[2:] == ("LATENT", "CVS_GAUSSIANS")
        assert cls.RETURN_NAMES[-1] == "gaussians"


def test_loader_builds_lgm_from_the_checkpoint(t2v, i2v):
    for handle, name in ((t2v, fam.T2V), (i2v, fam.I2V)):
        assert isinstance(handle.modules["lgm"], LGM)
        assert "lgm_big" in handle.extra["lgm_source"] and fam.UNET_FILES[name] in handle.extra["lgm_source"]


def _strip_lgm(folder):
    path = folder / fam.UNET_FILES[fam.T2V]
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("lgm_big.")}
    torch.save(ckpt, path)


def test_loader_falls_back_to_model_safetensors_then_to_none(smoke_weights_dir, tmp_path):
    folder = tmp_path / "t2v"
    shutil.copytree(smoke_weights_dir / fam.T2V, folder)
    _strip_lgm(folder)
    handle = families.get(fam.T2V).load(folder, torch.device("cpu"), torch.float32)
    assert isinstance(handle.modules["lgm"], LGM) and fam.LGM_FILE in handle.extra["lgm_source"]
    (folder / fam.LGM_FILE).unlink()
    handle = families.get(fam.T2V).load(folder, torch.device("cpu"), torch.float32)
    assert "lgm" not in handle.modules and "no LGM" in handle.extra["lgm_source"]


def test_off_equals_the_plain_pipeline(t2v):
    images, _, latent, scene = text_run(t2v, steps=2, denoise_3d=False)
    # the plain loop by hand (what the node did before the option existed)
    codec = DiffusersVAECodec(t2v.modules["vae"], chunk_size=4)
    text = TransformersCLIPTextEmbedder(t2v.modules["text_encoder"], t2v.extra["tokenizer"])
    cams = P.orbit_cameras(24, 15.0, 2.0, 0.0, RES)
    views = P.generate(t2v.modules["unet"], "t2v", P.t2v_conditioning(text, "a teapot"), cams, codec,
                       P.ViewSettings(guidance=9.0, steps=2, seed=0, resolution=RES))
    assert torch.equal(images, views.images)
    assert torch.equal(latent["samples"], views.latents / SD_SCALING_FACTOR)
    default = text_run(t2v, steps=2)
    assert torch.equal(default[0], images)
    assert isinstance(scene, GaussianScene) and len(scene) > 0  # LGM once on the final views


@pytest.mark.parametrize("mode", ["t2v", "i2v"])
def test_on_differs_is_finite_and_gives_renderable_gaussians(mode, t2v, i2v):
    run = text_run if mode == "t2v" else image_run
    handle = t2v if mode == "t2v" else i2v
    off = run(handle, denoise_3d=False, denoise_3d_steps="1")
    images, cams, latent, scene = run(handle, denoise_3d=True, denoise_3d_steps="1")
    assert images.shape == off[0].shape and torch.isfinite(images).all()
    assert torch.isfinite(latent["samples"]).all()
    assert not torch.equal(images, off[0])
    assert isinstance(scene, GaussianScene) and len(scene) > 0 and torch.isfinite(scene.means).all()
    rgb, alpha, depth, info = CVS_RenderSplats().render(scene, cams, 0.5, 0.5, 0.5, 0.01, "torch")
    assert rgb.shape == (24, RES, RES, 3) and torch.isfinite(rgb).all()
    again = run(handle, denoise_3d=True, denoise_3d_steps="1")
    assert torch.equal(again[0], images)  # deterministic


@pytest.mark.parametrize("text, words", [("a", "not a list of integers"), ("99", "99"), ("", "empty"),
                                         ("-1", "-1")])
def test_bad_steps_are_named(t2v, text, words):
    with pytest.raises(NodeInputError) as err:
        text_run(t2v, denoise_3d=True, denoise_3d_steps=text)
    assert "denoise_3d_steps" in str(err.value) and words in str(err.value)



@pytest.mark.parametrize("text", ["a", "99"])
def test_bad_steps_are_named_by_image_to_views(i2v, text):
    with pytest.raises(NodeInputError) as err:
        image_run(i2v, denoise_3d=True, denoise_3d_steps=text)
    assert "CVS VideoMV Image to Views" in str(err.value) and "denoise_3d_steps" in str(err.value)


def test_range_is_not_checked_when_off(t2v):
    """The default '20, 30, 40' with a 3-step smoke run is fine while denoise_3d is off."""
    images = text_run(t2v, steps=1)[0]
    assert images.shape[0] == 24


def test_cancel_inside_lgm_during_a_3d_step(t2v, cancel_inside_network):
    lgm = t2v.modules["lgm"]
    calls = cancel_inside_network(lgm.unet.conv_in, lgm.conv)
    with pytest.raises(runtime.Interrupted):
        text_run(t2v, denoise_3d=True, denoise_3d_steps="1")
    assert calls == {"first": 1, "last": 0}


def test_missing_lgm(t2v):
    handle = without_lgm(t2v)
    with pytest.raises(NodeInputError) as err:
        text_run(handle, denoise_3d=True, denoise_3d_steps="1")
    message = str(err.value)
    assert "denoise_3d" in message and fam.LGM_FILE in message
    images, _, _, scene = text_run(handle, steps=1)  # off: runs, empty Gaussians
    assert len(scene) == 0 and images.shape[0] == 24


@pytest.mark.parametrize("use_3d", [False, True])
def test_one_bar_ends_at_its_total(t2v, monkeypatch, use_3d):
    bars = []
    original = runtime.Progress.__init__

    def init(self, total, desc=""):
        original(self, total, desc)
        bars.append(self)
    monkeypatch.setattr(runtime.Progress, "__init__", init)
    text_run(t2v, denoise_3d=use_3d, denoise_3d_steps="0, 2")
    bar = next(b for b in bars if b.total and b.total > 24)
    assert bar.n == bar.total == 3 + (4 if use_3d else 1) + 24
