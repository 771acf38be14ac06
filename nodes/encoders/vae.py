"""The SD 1.x/2.x image autoencoder shared by several capabilities: adapters, loaders, smoke files.

VMem (SEVA) uses the Stable Diffusion 2.1 autoencoder, VideoMV the same architecture from
ModelScope-T2V (``VQGAN_autoencoder.pth``, an LDM-layout checkpoint). Both work in its latent
space scaled by 0.18215. The network sits behind a tiny interface so a pipeline can use either
our own loaded diffusers ``AutoencoderKL`` or ComfyUI's native VAE:

- :class:`LatentCodec` ``images [N,H,W,3] 0..1 <-> latents [N,4,H/8,W/8]`` (scaled), implemented
  by :class:`DiffusersVAECodec` (a diffusers ``AutoencoderKL``) and :class:`ComfyVAECodec`
  (ComfyUI's ``comfy.sd.VAE``, duck-typed).

Weights layouts::

    vae/config.json                          diffusers AutoencoderKL (:func:`load_vae`; e.g.
    vae/diffusion_pytorch_model.safetensors  stabilityai/stable-diffusion-2-1-base, subfolder vae)
    VQGAN_autoencoder.pth                    LDM layout (:func:`load_ldm_vae`): encoder.*, decoder.*,
                                             quant_conv, post_quant_conv; bare, or inside a full
                                             LDM checkpoint {'state_dict': {'first_stage_model.*', ...}}

Nothing here imports ComfyUI; the Comfy adapter only calls the methods named in its doc.
The codecs run wherever their network is; moving it to the GPU (``runtime.load_to_device``
here, ComfyUI's model management inside ComfyUI's own objects) is the caller's business.
"""
from __future__ import annotations

import abc
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import torch

from ..comfy.jsonfile import write_json
from ..comfy.runtime import module_place
from .checks import check_chunk_size, check_images, check_latents
from ..comfy.weights import WeightsError, load_strict, random_state, read_checkpoint, read_json, read_state_dict

if TYPE_CHECKING:  # imported where used
    from diffusers import AutoencoderKL

SD_SCALING_FACTOR = 0.18215
"""SD 1.x/2.x latent scale (diffusers' default; ComfyUI's ``latent_formats.SD15``; VGen's ``scale_factor``)."""
LATENT_CHANNELS = 4
DOWNSCALE = 8
LDM_NORM_GROUPS = 32  # the LDM autoencoder's ``Normalize`` is GroupNorm(32, eps 1e-6), not in the checkpoint
LDM_VAE_PREFIX = "first_stage_model."
_VAE_CLASS = "AutoencoderKL"

_Progress = Optional[Callable[[int], None]]


# --------------------------------------------------------------------------- interface
class LatentCodec(abc.ABC):
    """Images <-> SD latents (posterior mean times the scaling factor, 0.18215 for SD 1.x/2.x).

    ``encode(images [N,H,W,3] float 0..1) -> [N,4,H/8,W/8]`` float32 on the CPU;
    ``decode(latents [N,4,h,w]) -> [N,8h,8w,3]`` float32 0..1 on the CPU. ``H`` and ``W``
    must be multiples of :attr:`downscale` (no silent crop).
    """

    latent_channels: int = LATENT_CHANNELS
    downscale: int = DOWNSCALE

    @abc.abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``[N,H,W,3]`` 0..1 -> scaled latents ``[N,4,H/8,W/8]``, float32 on the CPU."""

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[N,4,h,w]`` -> images ``[N,8h,8w,3]`` 0..1, float32 on the CPU."""


# --------------------------------------------------------------------------- adapters
class DiffusersVAECodec(LatentCodec):
    """:class:`LatentCodec` over a diffusers ``AutoencoderKL`` (SEVA's ``AutoEncoder``).

    Encoding maps 0..1 to [-1,1], takes the posterior **mean** and multiplies it by the
    config's ``scaling_factor`` (0.18215 for SD 2.1); decoding divides by it, decodes and
    maps [-1,1] back to 0..1 (clamped). Work runs ``chunk_size`` images at a time on the
    module's device and in its dtype (read at every call, so the module may be moved
    between calls); results come back as float32 on the CPU. ``progress(n)`` is called
    after each chunk with the number of images it held (progress bars; raising there,
    e.g. on Cancel, stops the loop).
    """

    def __init__(self, vae: AutoencoderKL, chunk_size: int = 1, progress: _Progress = None) -> None:
        config = vae.config
        channels = int(getattr(config, "latent_channels", LATENT_CHANNELS))
        downscale = 2 ** (len(getattr(config, "block_out_channels", (64,))) - 1)
        if channels != LATENT_CHANNELS or downscale != DOWNSCALE:
            raise ValueError(f"an SD-family autoencoder is needed ({LATENT_CHANNELS} latent channels, "
                             f"{DOWNSCALE}x downscale); this one has {channels} channels and {downscale}x")
        self.vae = vae
        self.scaling_factor = float(getattr(config, "scaling_factor", None) or SD_SCALING_FACTOR)
        self.chunk_size = check_chunk_size(chunk_size)
        self.progress = progress

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``[N,H,W,3]`` 0..1 -> ``vae.encode(2x-1).latent_dist.mean * scaling_factor``,
        ``[N,4,H/8,W/8]`` float32 on the CPU."""
        check_images(images, self.downscale)
        device, dtype = module_place(self.vae)
        out = []
        for chunk in images.split(self.chunk_size):
            x = chunk.to(device=device, dtype=torch.float32).permute(0, 3, 1, 2) * 2.0 - 1.0
            mean = self.vae.encode(x.to(dtype)).latent_dist.mean
            out.append(mean.float().cpu() * self.scaling_factor)
            if self.progress is not None:
                self.progress(len(chunk))
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``[N,4,h,w]`` scaled latents -> ``clamp((vae.decode(z / scaling_factor) + 1) / 2, 0, 1)``,
        ``[N,8h,8w,3]`` float32 on the CPU."""
        check_latents(latents, self.latent_channels)
        device, dtype = module_place(self.vae)
        out = []
        for chunk in latents.split(self.chunk_size):
            z = chunk.to(device=device, dtype=torch.float32) / self.scaling_factor
            x = self.vae.decode(z.to(dtype)).sample.float()
            out.append(((x + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).cpu())
            if self.progress is not None:
                self.progress(len(chunk))
        return torch.cat(out)


class ComfyVAECodec(LatentCodec):
    """:class:`LatentCodec` over ComfyUI's ``comfy.sd.VAE`` (what a VAE socket carries), duck-typed.

    What ComfyUI's object does (``comfy/sd.py`` ``VAE.encode`` / ``VAE.decode``,
    ``comfy/ldm/models/autoencoder.py``): ``encode(pixels [B,H,W,C] 0..1)`` maps to [-1,1]
    (``process_input``), runs ``AutoencoderKL.encode`` whose ``DiagonalGaussianRegularizer``
    (``sample=False``) returns the posterior **mode = mean**, **unscaled** (the 0.18215 is the
    diffusion model's ``latent_format.process_in``, not the VAE's), ``[B,4,H/8,W/8]`` on
    ComfyUI's intermediate device; it centre-crops H and W to multiples of 8 first (we
    require multiples, so it never does). ``decode(latents [B,4,h,w])`` expects unscaled
    latents and returns ``clamp((x + 1) / 2, 0, 1)`` as ``[B,H,W,3]``. This adapter multiplies
    by ``scaling_factor`` after encoding and divides before decoding, so for the same network
    it produces what :class:`DiffusersVAECodec` produces (up to the dtype ComfyUI runs it in).

    The object must report ``latent_channels == 4``, ``spacial_compression_encode() == 8``
    (or ``downscale_ratio == 8`` on older ComfyUI) and ``latent_dim == 2``, else ``ValueError``.
    An SDXL VAE passes that check but has another latent space (and scale); use an SD 1.x/2.x VAE.
    """

    def __init__(self, vae: Any, chunk_size: int = 1, progress: _Progress = None,
                 scaling_factor: float = SD_SCALING_FACTOR) -> None:
        if getattr(vae, "first_stage_model", True) is None:
            raise ValueError("the VAE is empty (ComfyUI found no VAE weights in that file)")
        channels = getattr(vae, "latent_channels", None)
        if callable(getattr(vae, "spacial_compression_encode", None)):
            downscale = vae.spacial_compression_encode()
        else:
            downscale = getattr(vae, "downscale_ratio", None)
        latent_dim = getattr(vae, "latent_dim", 2)
        if channels != LATENT_CHANNELS or downscale != DOWNSCALE or latent_dim != 2:
            raise ValueError(
                f"an SD 1.x/2.x-family image VAE is needed ({LATENT_CHANNELS} latent channels, {DOWNSCALE}x "
                f"downscale, 2-D latents); this VAE has {channels} latent channels, {downscale}x downscale and "
                f"{latent_dim}-D latents (e.g. an SD3/Flux or video VAE). Load an SD 1.x/2.x VAE "
                f"(e.g. stabilityai/stable-diffusion-2-1-base vae) instead.")
        self.vae = vae
        self.scaling_factor = float(scaling_factor)
        self.chunk_size = check_chunk_size(chunk_size)
        self.progress = progress

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``[N,H,W,3]`` 0..1 -> ``vae.encode(images) * scaling_factor``, ``[N,4,H/8,W/8]`` float32 on the CPU."""
        check_images(images, self.downscale)
        out = []
        for chunk in images.split(self.chunk_size):
            out.append(self.vae.encode(chunk).float().cpu() * self.scaling_factor)
            if self.progress is not None:
                self.progress(len(chunk))
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``[N,4,h,w]`` scaled latents -> ``vae.decode(latents / scaling_factor)``, ``[N,8h,8w,3]``
        0..1 float32 on the CPU."""
        check_latents(latents, self.latent_channels)
        out = []
        for chunk in latents.split(self.chunk_size):
            out.append(self.vae.decode(chunk.float() / self.scaling_factor).float().cpu())
            if self.progress is not None:
                self.progress(len(chunk))
        return torch.cat(out)


# --------------------------------------------------------------------------- diffusers folder
def load_vae(folder: Path) -> AutoencoderKL:
    """The diffusers ``AutoencoderKL`` of a ``vae/`` folder (``config.json`` +
    ``diffusion_pytorch_model.safetensors``), built on the meta device and filled strictly.

    The config must name ``_class_name`` ``"AutoencoderKL"`` with 4 latent channels and four
    blocks (8x downscale), else :class:`WeightsError`. The network comes back in eval mode,
    without gradients, on the CPU in the dtype stored in the file.
    """
    from diffusers import AutoencoderKL
    folder = Path(folder)
    config_path = folder / "config.json"
    config = read_json(config_path, "VAE config")
    name = config.get("_class_name")
    if name != _VAE_CLASS:
        raise WeightsError(f"{config_path} describes a '{name}', not an '{_VAE_CLASS}'. An SD 1.x/2.x VAE is "
                           f"needed (e.g. stabilityai/stable-diffusion-2-1-base, subfolder vae).")
    channels = config.get("latent_channels", LATENT_CHANNELS)
    downscale = 2 ** (len(config.get("block_out_channels", [64])) - 1)
    if channels != LATENT_CHANNELS or downscale != DOWNSCALE:
        raise WeightsError(f"{config_path} describes an autoencoder with {channels} latent channels and {downscale}x "
                           f"downscale; an SD 1.x/2.x VAE ({LATENT_CHANNELS} channels, {DOWNSCALE}x) is needed.")
    state = read_state_dict(folder / "diffusion_pytorch_model.safetensors", "VAE weights")
    try:
        with torch.device("meta"):
            vae = AutoencoderKL.from_config(config)
    except (TypeError, ValueError, KeyError) as exc:
        raise WeightsError(f"{config_path} is not a valid AutoencoderKL config: {exc}") from None
    load_strict(vae, state, f"VAE {folder / 'diffusion_pytorch_model.safetensors'}")
    return vae.eval().requires_grad_(False)


# --------------------------------------------------------------------------- LDM checkpoint
def ldm_vae_part(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The autoencoder keys of an LDM-layout checkpoint, without prefix. Pure.

    A full LDM / Stable Diffusion checkpoint holds the autoencoder under ``first_stage_model.``
    next to the UNet and the text encoder: then exactly those keys are returned, prefix removed,
    and the other parts are left out (as VGen / VideoMV's own ``init_from_ckpt`` does). A bare
    autoencoder state dict (``encoder.*``, ``decoder.*``, ...) is returned whole, so that a
    strict conversion names any key that does not belong.
    """
    if any(key.startswith(LDM_VAE_PREFIX) for key in state):
        return {key[len(LDM_VAE_PREFIX):]: value for key, value in state.items() if key.startswith(LDM_VAE_PREFIX)}
    return dict(state)


def ldm_vae_config(state: Mapping[str, torch.Tensor], scaling_factor: float = SD_SCALING_FACTOR) -> dict:
    """The diffusers ``AutoencoderKL`` config of an LDM-layout autoencoder, read from its shapes.

    LDM's ``ddconfig`` maps as ``ch * ch_mult[i] -> block_out_channels[i]`` (read from
    ``encoder.down.{i}.block.0.conv2``), ``num_res_blocks -> layers_per_block`` (the blocks of
    ``encoder.down.0``), ``z_channels`` / ``embed_dim -> latent_channels`` (``post_quant_conv``
    input), ``in_channels`` / ``out_ch`` from ``encoder.conv_in`` / ``decoder.conv_out``. Not in
    the shapes: the group norms (always 32 groups in LDM) and the latent ``scaling_factor``
    (the diffusion model's ``scale_factor``; 0.18215 for SD 1.x/2.x and ModelScope / VideoMV).
    ModelScope's ``VQGAN_autoencoder.pth`` gives ch 128, mult [1,2,4,4], 2 blocks, z 4.
    Raises ``ValueError`` when ``state`` is not an LDM autoencoder.
    """
    try:
        levels = sorted({int(key.split(".")[2]) for key in state if key.startswith("encoder.down.")})
        if not levels or levels != list(range(len(levels))):
            raise KeyError("encoder.down.0")
        widths = [int(state[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in levels]
        blocks = len({key.split(".")[4] for key in state if key.startswith("encoder.down.0.block.")})
        config = {
            "_class_name": _VAE_CLASS, "act_fn": "silu",
            "in_channels": int(state["encoder.conv_in.weight"].shape[1]),
            "out_channels": int(state["decoder.conv_out.weight"].shape[0]),
            "block_out_channels": widths, "layers_per_block": blocks,
            "down_block_types": ["DownEncoderBlock2D"] * len(widths),
            "up_block_types": ["UpDecoderBlock2D"] * len(widths),
            "latent_channels": int(state["post_quant_conv.weight"].shape[1]),
            "norm_num_groups": LDM_NORM_GROUPS, "sample_size": 256, "scaling_factor": float(scaling_factor),
        }
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"not an LDM-layout autoencoder (encoder.*, decoder.*, quant_conv, post_quant_conv): "
                         f"{exc} is missing or malformed") from None
    return config


def convert_ldm_vae(state: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """LDM autoencoder keys -> diffusers ``AutoencoderKL`` keys, with diffusers' own converter. Pure, strict.

    ``diffusers.loaders.single_file_utils.convert_ldm_vae_checkpoint`` decides the mapping
    (``down.{i}.block.{j}`` -> ``down_blocks.{i}.resnets.{j}``, ``up.{i}`` -> ``up_blocks.{n-1-i}``,
    ``mid.block_{1,2}`` / ``mid.attn_1`` -> ``mid_block``, 1x1-conv attention -> linear, ...).
    It silently skips keys it does not know, so it runs first on shape-only meta copies of the
    tensors: each result is traced back to the key it came from, every key must be used
    (``ValueError`` naming the others), and the real tensors are then placed (reshaped
    views, no copies). ``state`` without prefix (see :func:`ldm_vae_part`).

    The tracing follows views back to their base tensor, which torch records only outside
    inference mode, so it runs with inference mode off (ComfyUI executes nodes inside it).
    """
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    with torch.inference_mode(False):
        probes = {key: torch.empty(tuple(value.shape), device="meta") for key, value in state.items()}
        converted = convert_ldm_vae_checkpoint(probes, dict(config))
    source = {id(probe): key for key, probe in probes.items()}
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for new_key, probe in converted.items():
        key = source.get(id(probe if probe._base is None else probe._base))
        if key is None:
            raise ValueError(f"diffusers' converter produced {new_key} from no key of the checkpoint")
        out[new_key] = state[key].reshape(probe.shape)
        used.add(key)
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"{len(unused)} key(s) are not part of an LDM autoencoder of this shape: "
                         f"{', '.join(unused[:5])}{', ...' if len(unused) > 5 else ''}")
    return out


def load_ldm_vae(path: Path, scaling_factor: float = SD_SCALING_FACTOR) -> AutoencoderKL:
    """A diffusers ``AutoencoderKL`` from an LDM-layout checkpoint file (e.g. ``VQGAN_autoencoder.pth``).

    The file is read with ``weights_only=True`` (memory-mapped), unwrapped from
    ``{'state_dict': ...}`` when wrapped, reduced to its ``first_stage_model.*`` part when it is
    a full LDM checkpoint (:func:`ldm_vae_part`); the config comes from the shapes
    (:func:`ldm_vae_config`), the keys from diffusers' converter (:func:`convert_ldm_vae`), and
    the network is built on the meta device and filled strictly. Any key left over or missing
    is a :class:`WeightsError` naming it. The network comes back in eval mode, without
    gradients, on the CPU in the dtype stored in the file.
    """
    from diffusers import AutoencoderKL
    path = Path(path)
    what = f"LDM autoencoder {path}"
    state = ldm_vae_part(read_checkpoint(path, "LDM autoencoder weights"))
    try:
        config = ldm_vae_config(state, scaling_factor)
        converted = convert_ldm_vae(state, config)
    except ValueError as exc:
        raise WeightsError(f"{what}: {exc}") from None
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(config)
    load_strict(vae, converted, what)
    return vae.eval().requires_grad_(False)


_LDM_RENAMES = (  # diffusers AutoencoderKL -> LDM, applied in order to each key (see diffusers_to_ldm_vae)
    (r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out."),
    (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2."),
    (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
    (r"^(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.mid.attn_1."),
    (r"\.attn_1\.group_norm\.", ".attn_1.norm."),
    (r"\.attn_1\.to_([qkv])\.", r".attn_1.\1."),
    (r"\.attn_1\.to_out\.0\.", ".attn_1.proj_out."),
    (r"\.conv_shortcut\.", ".nin_shortcut."),
)


def diffusers_to_ldm_vae(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Diffusers ``AutoencoderKL`` keys -> the LDM layout (the inverse of :func:`convert_ldm_vae`). Pure.

    Written independently of diffusers' converter (used for smoke files and to test that
    converter's use): ``down_blocks.{i}.resnets.{j}`` -> ``down.{i}.block.{j}``,
    ``up_blocks.{i}`` -> ``up.{n-1-i}`` (LDM numbers decoder levels from the lowest
    resolution), ``mid_block.resnets.{j}`` -> ``mid.block_{j+1}``, ``mid_block.attentions.0``
    -> ``mid.attn_1`` with ``norm/q/k/v/proj_out`` as 1x1 convolutions ``[C,C,1,1]``,
    ``conv_norm_out`` -> ``norm_out``, ``conv_shortcut`` -> ``nin_shortcut``.
    """
    ups = 1 + max((int(key.split(".")[2]) for key in state if key.startswith("decoder.up_blocks.")), default=-1)
    out = {}
    for key, value in state.items():
        new = key
        for pattern, replacement in _LDM_RENAMES:
            new = re.sub(pattern, replacement, new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.",
                     lambda m: f"decoder.up.{ups - 1 - int(m[1])}."
                               + (f"block.{m[3]}." if m[2] == "resnets" else "upsample."), new)
        new = re.sub(r"\.mid_block\.resnets\.(\d+)\.", lambda m: f".mid.block_{int(m[1]) + 1}.", new)
        if ".attn_1." in new and new.endswith(".weight") and value.dim() == 2:
            value = value.reshape(*value.shape, 1, 1)
        out[new] = value
    return out


# --------------------------------------------------------------------------- smoke weights
_SMOKE_VAE_CONFIG = {  # the SD 2.1 file's keys; four blocks keep the real 8x downscale, widths are tiny
    "_class_name": _VAE_CLASS, "_diffusers_version": "0.8.0", "act_fn": "silu",
    "block_out_channels": [32, 32, 32, 32], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3, "latent_channels": LATENT_CHANNELS, "layers_per_block": 1, "norm_num_groups": 8,
    "out_channels": 3, "sample_size": 64, "scaling_factor": SD_SCALING_FACTOR,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SMOKE_LDM_VAE_CONFIG = {**_SMOKE_VAE_CONFIG, "norm_num_groups": LDM_NORM_GROUPS, "sample_size": 256}
"""The diffusers config :func:`write_smoke_ldm_vae` draws from (LDM's 32 norm groups; width 32)."""


def write_smoke_vae(folder: Path, seed: int = 0) -> None:
    """Tiny random ``AutoencoderKL`` in the diffusers ``vae/`` layout (``config.json`` +
    ``diffusion_pytorch_model.safetensors``): 4 latent channels, a real 8x downscale, width 32.
    The family's writer marks the weights folder as smoke weights."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file
    folder = Path(folder)
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(_SMOKE_VAE_CONFIG)
    write_json(folder / "config.json", _SMOKE_VAE_CONFIG)
    state = random_state(vae, torch.Generator().manual_seed(seed))
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))


def write_smoke_ldm_vae(path: Path, seed: int = 0) -> None:
    """Tiny random autoencoder as an LDM checkpoint file (the ``VQGAN_autoencoder.pth`` layout):
    ``{'state_dict': {'first_stage_model.<LDM key>': tensor}}`` drawn from
    :data:`SMOKE_LDM_VAE_CONFIG` (4 latent channels, 8x downscale, width 32, 32 norm groups)."""
    from diffusers import AutoencoderKL
    path = Path(path)
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(SMOKE_LDM_VAE_CONFIG)
    state = diffusers_to_ldm_vae(random_state(vae, torch.Generator().manual_seed(seed)))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {LDM_VAE_PREFIX + key: value for key, value in state.items()}}, str(path))
