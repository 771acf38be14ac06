"""The VideoMV model families: text-to-multi-view (``videomv_t2v``) and image-to-multi-view (``videomv_i2v``).

VideoMV's weights are one zip (``pretrained_models.zip``, linked from the alibaba/VideoMV
README; not on Hugging Face). Unzipped, it is the folder both families read, so it is
stored once, under ``models/videomv/``::

    models/videomv/pretrained_models/
        t2v_00333000.pth                                   T2V UNet (VGen layout, {'state_dict', 'step'})
        i2v_00882000.pth                                   I2V UNet (VGen layout)
        model.safetensors                                  LGM 'big' alone (fp16; LGM's own keys)
        modelscope_t2v/open_clip_pytorch_model.bin         OpenCLIP ViT-H-14 (T2V's text encoder)
        modelscope_t2v/VQGAN_autoencoder.pth               the SD-style VAE (LDM checkpoint), both modes
        modelscope_i2v/I2VGen-XL/open_clip_pytorch_model.bin   OpenCLIP ViT-H-14 (I2V's text + image encoder)
        tokenizer/vocab.json, tokenizer/merges.txt         CLIP BPE (not in the zip: from
                                                           laion/CLIP-ViT-H-14-laion2B-s32B-b79K, fetched
                                                           automatically when online)

The UNets' widths are read from the checkpoint shapes (head width 64 and 32 norm groups as
released; :func:`.convert.infer_config`). The paths are the ones VideoMV's configs name (``configs/*_train.yaml``,
``tools/modules/config.py``). LGM's standalone ``model.safetensors`` (fp16; the smoke folders
have a tiny one) is not read by the family loader (:func:`.lgm.load_lgm` reads it or the
``lgm_big.*`` tensors); the ModelScope / I2VGen-XL base checkpoints are not read. The UNets load strictly through the
VGen -> diffusers key conversion (:mod:`.convert`); their ``lgm_big.*`` keys (VideoMV's
reconstruction network, for the 3D-aware loop) are set aside and loaded strictly as LGM
(``modules["lgm"]``); without them the folder's ``model.safetensors`` is the fallback, and with
neither the handle has no ``lgm`` (``extra["lgm_source"]`` says which source was used).

A loaded handle holds ``unet``, ``text_encoder`` (transformers ``CLIPTextModelWithProjection``),
``vae`` (diffusers ``AutoencoderKL``) and, for I2V, ``image_encoder``
(``CLIPVisionModelWithProjection``); ``extra`` has the ``tokenizer``, the ``mode``
("t2v"/"i2v"), ``num_views`` (24: the view count the networks were trained on) and
``set_aside`` (how many ``lgm_big`` tensors were skipped).
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ..nodes.comfy import families
from ..nodes.encoders.clip_text import TOKENIZER_OPTIONAL_FILES, load_clip_tokenizer, write_smoke_tokenizer
from ..nodes.encoders.open_clip_weights import SMOKE_SIZE, load_open_clip, write_smoke_open_clip
from ..nodes.encoders.vae import load_ldm_vae, write_smoke_ldm_vae
from ..nodes.comfy.weights import WeightsError, is_smoke, random_state
from .convert import load_i2v_unet, load_t2v_unet, to_vgen, to_vgen_i2v
from .lgm import VIDEOMV_PREFIX, load_lgm, smoke_state as lgm_smoke_state
from .model import VideoMVI2VUNet, VideoMVT2VUNet, config_for_release, i2v_config_for_release
from .schedules import NUM_VIEWS

T2V, I2V = "videomv_t2v", "videomv_i2v"
FAMILIES = (T2V, I2V)
MODES = {T2V: "t2v", I2V: "i2v"}
MODELS_FOLDER = "videomv"
ZIP_FOLDER = "pretrained_models"
ZIP_URL = "https://virutalbuy-public.oss-cn-hangzhou.aliyuncs.com/share/aigc3d/pretrained_models.zip"
UNET_FILES = {T2V: "t2v_00333000.pth", I2V: "i2v_00882000.pth"}
OPEN_CLIP_FILES = {T2V: "modelscope_t2v/open_clip_pytorch_model.bin",
                   I2V: "modelscope_i2v/I2VGen-XL/open_clip_pytorch_model.bin"}
VAE_FILE = "modelscope_t2v/VQGAN_autoencoder.pth"
TOKENIZER_DIR = "tokenizer"
LGM_FILE = "model.safetensors"  # LGM 'big' standalone, fp16 (VideoMV's lgm_pretrain; smoke: a tiny LGM)
MANUAL_DOWNLOAD = (f"VideoMV's weights are not on Hugging Face: download {ZIP_URL} (linked from the "
                   f"alibaba/VideoMV README) and unzip it, which gives the folder '{ZIP_FOLDER}'")
LICENCES = {
    T2V: ("VideoMV code: MIT. The VideoMV checkpoints state no licence; the T2V network is a fine-tune of "
          "ModelScope-T2V (CC BY-NC 4.0, research only): treat t2v_00333000.pth and its VAE as NON-COMMERCIAL. "
          "OpenCLIP ViT-H-14: MIT."),
    I2V: ("VideoMV code: MIT. The VideoMV checkpoints state no licence; the I2V network is a fine-tune of "
          "I2VGen-XL (MIT), its VAE comes from ModelScope-T2V (CC BY-NC 4.0): treat the set as NON-COMMERCIAL "
          "unless the authors say otherwise. OpenCLIP ViT-H-14: MIT."),
}


def _loader(family: str):
    mode = MODES[family]

    def load(folder: Path, device: torch.device, dtype: torch.dtype) -> families.ModelHandle:
        """UNet, OpenCLIP tower(s), VAE and tokenizer, strictly; networks rest on the CPU in ``dtype``."""
        folder = Path(folder)
        tokenizer = load_clip_tokenizer(folder / TOKENIZER_DIR)
        unet_loader = load_t2v_unet if mode == "t2v" else load_i2v_unet
        unet, set_aside = unet_loader(folder / UNET_FILES[family], dtype=dtype)
        towers = load_open_clip(folder / OPEN_CLIP_FILES[family], text=True, vision=mode == "i2v")
        modules = {"unet": unet, "text_encoder": towers.text, "vae": load_ldm_vae(folder / VAE_FILE)}
        if towers.vision is not None:
            modules["image_encoder"] = towers.vision
        _check_widths(folder, family, modules)
        lgm, lgm_source = _load_lgm(folder, family, set_aside)
        if lgm is not None:
            modules["lgm"] = lgm
        if len(tokenizer) > towers.text.config.vocab_size:
            raise WeightsError(f"{folder / TOKENIZER_DIR}: the tokenizer has {len(tokenizer)} tokens but "
                               f"{OPEN_CLIP_FILES[family]} only {towers.text.config.vocab_size} embeddings: they "
                               "do not belong together")
        for module in modules.values():
            torch.nn.Module.to(module, dtype=dtype).eval().requires_grad_(False)
        return families.ModelHandle(
            family=family, source=folder, modules=modules, device=device, dtype=dtype, is_smoke=is_smoke(folder),
            extra={"tokenizer": tokenizer, "mode": mode, "num_views": NUM_VIEWS, "set_aside": len(set_aside),
                   "lgm_source": lgm_source})
    return load


def _load_lgm(folder: Path, family: str, set_aside: dict):
    """VideoMV's LGM (for the 3D-aware loop and the Gaussians output), strictly: the checkpoint's
    ``lgm_big.*`` tensors, else the release's standalone :data:`LGM_FILE`; ``(None, why)`` if
    neither is there. Returns ``(network or None, a sentence naming the source)``."""
    if set_aside:
        what = f"{folder / UNET_FILES[family]} (lgm_big.*)"
        return load_lgm(set_aside, what=what), f"LGM from {what}"
    if (folder / LGM_FILE).is_file():
        return load_lgm(folder / LGM_FILE), f"LGM from {folder / LGM_FILE}"
    return None, (f"no LGM: {UNET_FILES[family]} has no lgm_big.* tensors and {folder / LGM_FILE} is missing")


def _check_widths(folder: Path, family: str, modules: dict) -> None:
    """The text tokens (and image embedding) must be as wide as the UNet's context."""
    width = modules["unet"].config.cross_attention_dim
    text = modules["text_encoder"].config.hidden_size
    if text != width:
        raise WeightsError(f"{folder / OPEN_CLIP_FILES[family]} gives {text}-wide text tokens but "
                           f"{UNET_FILES[family]} expects {width}: the files are not from the same release")
    if "image_encoder" in modules and modules["image_encoder"].config.projection_dim != width:
        raise WeightsError(f"{folder / OPEN_CLIP_FILES[family]} gives "
                           f"{modules['image_encoder'].config.projection_dim}-d image embeddings but "
                           f"{UNET_FILES[family]} expects {width}")


# --------------------------------------------------------------------------- smoke weights
def smoke_unet_config(family: str) -> dict:
    """The small UNet of the smoke weights: the release's structure, head width (64) and norm
    groups (32), so the loader reads its sizes back from the shapes; 64/128/128/128 channels
    and a context as wide as the smoke OpenCLIP's text tokens."""
    config = config_for_release() if family == T2V else i2v_config_for_release()
    config.update(block_out_channels=(64, 128, 128, 128), cross_attention_dim=SMOKE_SIZE.text_width)
    return config


def write_smoke_unet(path: Path, family: str, seed: int = 0) -> None:
    """A tiny random UNet as a VGen-layout checkpoint ``{'state_dict': ..., 'step': 0}`` plus a tiny
    LGM under ``lgm_big.*`` (like the release, whose LGM keys the UNet loader sets aside;
    :func:`.lgm.load_lgm` loads them strictly)."""
    config = smoke_unet_config(family)
    network, back = (VideoMVT2VUNet, to_vgen) if family == T2V else (VideoMVI2VUNet, to_vgen_i2v)
    with torch.device("meta"):
        unet = network(**config)
    state = back(random_state(unet, torch.Generator().manual_seed(seed)), config)
    state.update(lgm_smoke_state(seed, VIDEOMV_PREFIX))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "step": 0}, str(path))


def _smoke_writer(family: str):
    def write(folder: Path, seed: int = 0) -> None:
        folder = Path(folder)
        write_smoke_unet(folder / UNET_FILES[family], family, seed)
        save_file(lgm_smoke_state(seed, dtype=torch.float16), str(folder / LGM_FILE))
        write_smoke_open_clip(folder / OPEN_CLIP_FILES[family], seed=seed)
        write_smoke_ldm_vae(folder / VAE_FILE, seed=seed)
        write_smoke_tokenizer(folder / TOKENIZER_DIR)
        families.mark_smoke(folder, f"VideoMV {MODES[family].upper()}")
    return write


# On a CPU the smoke demo samples 24 views at 64 x 64 pixels with a few steps.
# On a CPU: 64 px views, 3 steps (the 3D-aware one at loop index 1), a 12-view turntable at 64 px.
SMOKE_OVERRIDES = {node: {"resolution": 64, "steps": 3, "denoise_3d_steps": "1"}
                   for node in ("CVS_VideoMVTextToViews", "CVS_VideoMVImageToViews")}
SMOKE_OVERRIDES["CVS_VideoMVOrbitCameras"] = {"views": 12, "resolution": 64}


def _family(family: str, display_name: str) -> families.Family:
    return families.register(families.Family(
        name=family, display_name=display_name, default_repo="",
        files=(UNET_FILES[family], OPEN_CLIP_FILES[family], VAE_FILE), licence=LICENCES[family],
        load=_loader(family), write_smoke=_smoke_writer(family), smoke_overrides=SMOKE_OVERRIDES,
        optional_files=TOKENIZER_OPTIONAL_FILES, models_folder=MODELS_FOLDER, manual_download=MANUAL_DOWNLOAD,
        default_entry=ZIP_FOLDER))


T2V_FAMILY = _family(T2V, "VideoMV text-to-multi-view (ModelScope-T2V + camera MLP)")
I2V_FAMILY = _family(I2V, "VideoMV image-to-multi-view (I2VGen-XL + camera MLP)")
