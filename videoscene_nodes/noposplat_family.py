"""The NoPoSplat model family: the 512x512 two-view Gaussian predictor VideoScene's demo uses.

Layout (``models/noposplat/<any folder>/``, from the Hugging Face repo ``botaoye/NoPoSplat``)::

    mixRe10kDl3dv_512x512.ckpt       a PyTorch Lightning checkpoint; its ['state_dict'] holds the
                                     network as encoder.* keys (see noposplat.py), read with
                                     torch.load(weights_only=True)
    mixRe10kDl3dv_512x512.safetensors (optional) the same network written by
                                     :func:`convert_checkpoint`; preferred when present

Loading: every ``encoder.*`` key must match the network built from the checkpoint's own shapes
(missing, unexpected and mis-shaped keys are named). Keys of the training wrapper's other parts
(``decoder.``, ``losses.``, ``distiller.``) are not part of the network and are skipped; any other
key is refused as unexpected. A file without ``encoder.*`` keys is refused as another model's.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..nodes.comfy import families
from ..nodes.comfy.weights import WeightsError, check_state_dict, is_smoke, load_strict, random_state, read_checkpoint
from .noposplat import NoPoSplat, NoPoSplatConfig, duplicate_key_pairs

log = logging.getLogger("consistent_video")

NAME = "noposplat"
REPO = "botaoye/NoPoSplat"
CHECKPOINT = "mixRe10kDl3dv_512x512.ckpt"
CONVERTED = "mixRe10kDl3dv_512x512.safetensors"
FILES = (CHECKPOINT,)
PREFIX = "encoder."
SKIPPED_PREFIXES = ("decoder.", "losses.", "distiller.")
"""Parts of the Lightning ``ModelWrapper`` that are not the network (renderer, loss networks)."""
LICENCE = ("NoPoSplat code: MIT (cvg/NoPoSplat LICENSE). The checkpoint states no licence of its own; it is "
           "fine-tuned from MASt3R/DUSt3R/CroCo weights, which are CC BY-NC-SA 4.0 (non-commercial), and the "
           "CroCo/DUSt3R code it builds on is CC BY-NC-SA 4.0: treat the weights as non-commercial.")


class _Lightning(torch.nn.Module):
    """The checkpoint's nesting (``encoder.<network key>``), so errors name keys as in the file."""

    def __init__(self, network: NoPoSplat):
        super().__init__()
        self.encoder = network


def encoder_state(state: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """The ``encoder.*`` entries of a Lightning ``state_dict`` (keys kept). Raises :class:`WeightsError`
    when there are none (another model's file) or when keys outside the known wrapper parts remain."""
    network = {k: v for k, v in state.items() if k.startswith(PREFIX)}
    if not network:
        raise WeightsError(f"{what}: no '{PREFIX}*' keys (found e.g. {', '.join(sorted(state)[:4]) or 'nothing'}). "
                           "This is not a NoPoSplat checkpoint (cvg/NoPoSplat Lightning .ckpt).")
    other = sorted(k for k in state if not k.startswith((PREFIX, *SKIPPED_PREFIXES)))
    if other:
        raise WeightsError(f"{what}: the checkpoint does not match the network\n  {len(other)} unexpected key(s): "
                           f"{', '.join(other[:5])}\n  Is this a checkpoint of a different model?")
    return network


def build_network(state: dict[str, torch.Tensor], what: str) -> NoPoSplat:
    """A :class:`NoPoSplat` sized from, and strictly loaded with, ``state`` (``encoder.*`` keys)."""
    inner = {k[len(PREFIX):]: v for k, v in state.items()}
    try:
        cfg = NoPoSplatConfig.from_state_dict(inner)
    except ValueError as exc:
        with torch.device("meta"):
            reference = _Lightning(NoPoSplat())
        check_state_dict(reference, state, what)  # names missing/unexpected keys against the release
        raise WeightsError(f"{what}: {exc}") from None
    with torch.device("meta"):
        wrapper = _Lightning(NoPoSplat(cfg))
    check_state_dict(wrapper, state, what)
    differing = [b for a, b in duplicate_key_pairs(state) if not torch.equal(state[a], state[b])]
    if differing:
        raise WeightsError(f"{what}: {len(differing)} DPT projection(s) differ from their alias "
                           f"(e.g. {differing[0]}); the two names are one module in NoPoSplat. Corrupt file?")
    load_strict(wrapper, state, what)
    return wrapper.encoder


def _read(folder: Path) -> tuple[dict[str, torch.Tensor], str]:
    converted, checkpoint = folder / CONVERTED, folder / CHECKPOINT
    path = converted if converted.is_file() else checkpoint
    what = f"NoPoSplat {path.name}"
    try:
        return read_checkpoint(path, what), what
    except WeightsError as exc:
        if path == checkpoint and "unsafe unpickling" in str(exc):
            raise WeightsError(f"{exc}\n  If you trust this file, convert it once with "
                               "`python -c \"from consistent_video.videoscene_nodes.noposplat_family import "
                               f"convert_checkpoint; convert_checkpoint('{checkpoint}')\"`; that writes {CONVERTED} "
                               "next to it, which the loader then reads instead.") from None
        raise


def load_noposplat(folder: Path, device: torch.device, dtype: torch.dtype) -> families.ModelHandle:
    """The network from ``folder``: backbone in ``dtype``, the DPT heads kept in float32 (as the
    release runs them, outside autocast), all resting on the CPU."""
    folder = Path(folder)
    state, what = _read(folder)
    network = build_network(encoder_state(state, what), what)
    network.eval().requires_grad_(False)
    network.backbone.to(dtype=dtype)
    log.info("NoPoSplat: %s loaded (%s)", what, network.cfg)
    return families.ModelHandle(family=NAME, source=folder, modules={"noposplat": network}, device=device,
                                dtype=dtype, extra={"config": network.cfg}, is_smoke=is_smoke(folder))


def convert_checkpoint(src: str | Path, dst: str | Path | None = None) -> Path:
    """One-time conversion of a Lightning ``.ckpt`` that ``torch.load(weights_only=True)`` refuses
    (it pickles classes): **unpickles ``src`` with arbitrary code execution** (use only on a file
    you trust), keeps the ``encoder.*`` tensors and writes them to ``dst`` (default: ``src`` with the
    suffix ``.safetensors``). Returns ``dst``."""
    from safetensors.torch import save_file
    src = Path(src)
    dst = Path(dst) if dst else src.with_suffix(".safetensors")
    data = torch.load(str(src), map_location="cpu", weights_only=False)  # explicit, user-requested unsafe load
    state = data.get("state_dict", data) if isinstance(data, dict) else data
    network = encoder_state({k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, f"NoPoSplat {src.name}")
    aliases = {alias for _, alias in duplicate_key_pairs(network)}  # one module under two names: own copies
    save_file({k: v.clone() if k in aliases else v.contiguous() for k, v in network.items()}, str(dst))
    return dst


# --------------------------------------------------------------------------- smoke weights
SMOKE_CONFIG = NoPoSplatConfig(enc_dim=128, enc_depth=2, enc_heads=2, enc_mlp=256, dec_dim=64, dec_depth=4,
                               dec_heads=1, dec_mlp=128, dpt_layer_dims=(8, 8, 16, 16), dpt_features=16,
                               dpt_last_dim=8, sh_degree=4)
"""The release's structure (patch 16, RoPE, intrinsics token, DPT heads, SH degree 4), tiny."""
SMOKE_DISTANCE_RAW = 1.1
"""Smoke points-head bias along z: ``expm1(1.1) ~ 2``, so smoke Gaussians lie in front of the cameras."""


def write_smoke_noposplat(folder: Path, seed: int = 0) -> None:
    """Tiny random weights as a Lightning checkpoint in the release's layout (``encoder.*`` keys)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    state = random_state(_Lightning(NoPoSplat(SMOKE_CONFIG)), generator)
    for key, alias in duplicate_key_pairs(state):
        state[alias] = state[key]
    for head in ("downstream_head1", "downstream_head2"):  # points about 2 units in front of view 1
        state[f"{PREFIX}{head}.dpt.head.4.bias"] = torch.tensor([0.0, 0.0, SMOKE_DISTANCE_RAW])
    torch.save({"epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.4.0", "state_dict": state},
               str(folder / CHECKPOINT))
    families.mark_smoke(folder, "NoPoSplat")


SMOKE_OVERRIDES = {"CVS_VideoSceneTwoPhotos": {"size": 64, "refine_steps": 4}}
"""A CPU-sized demo run on smoke weights: 64x64 working size, 4 refinement steps per view."""

FAMILY = families.register(families.Family(
    name=NAME, display_name="NoPoSplat (two photos to 3D Gaussians)", default_repo=REPO, files=FILES,
    licence=LICENCE, load=load_noposplat, write_smoke=write_smoke_noposplat, smoke_overrides=SMOKE_OVERRIDES))

__all__ = ["FAMILY", "NAME", "load_noposplat", "build_network", "encoder_state", "convert_checkpoint",
           "write_smoke_noposplat", "SMOKE_CONFIG"]
