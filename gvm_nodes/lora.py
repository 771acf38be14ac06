"""Merging GVM's PEFT-format LoRA into the UNet weights at load time.

The release ships ``unet/adapter_config.json`` (a PEFT ``LoraConfig``) and
``unet/pytorch_lora_weights.pt`` (a PEFT adapter state dict saved from a ``LoraModel``
wrapping the UNet, keys ``model.<module>.lora_A.weight`` / ``.lora_B.weight``; the
``base_model.model.`` prefix of a ``PeftModel`` and an ``.default`` adapter name are
accepted too). Merging is plain arithmetic, so no PEFT wrapper stays in the network:

    W <- W + s * B @ A                 (Linear: A [r, in], B [out, r])
    W <- W + s * (B[:, :, 0, 0] @ A.flatten(1)).view_as(W)   (Conv2d: A [r, in, kh, kw], B [out, r, 1, 1])

with ``s = lora_alpha / r`` (``lora_alpha / sqrt(r)`` when ``use_rslora``), and per-module
``rank_pattern`` / ``alpha_pattern`` overrides as PEFT defines them.
"""
from __future__ import annotations

import math
import re
from typing import Mapping

import torch

_PREFIXES = ("base_model.model.", "model.")
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")


class LoraError(ValueError):
    pass


def _strip_prefix(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _pattern_value(module: str, pattern: Mapping[str, float], default: float) -> float:
    """PEFT semantics: a pattern key matches when it is a suffix of the module path."""
    for key, value in (pattern or {}).items():
        if module == key or module.endswith("." + key) or re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


def lora_pairs(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Group a PEFT adapter state dict into ``{module_path: (A, B)}``.

    Raises :class:`LoraError` for keys that are not plain LoRA A/B matrices (DoRA
    magnitudes, embedding LoRA, ...) or for an A without its B.
    """
    a_mats: dict[str, torch.Tensor] = {}
    b_mats: dict[str, torch.Tensor] = {}
    for raw_key, tensor in state.items():
        match = _KEY.match(_strip_prefix(raw_key))
        if match is None:
            raise LoraError(f"unexpected key in the LoRA file: '{raw_key}' (only lora_A/lora_B weights are supported)")
        (a_mats if match["ab"] == "A" else b_mats)[match["module"]] = tensor
    if set(a_mats) != set(b_mats):
        odd = sorted(set(a_mats) ^ set(b_mats))
        raise LoraError(f"LoRA A/B matrices do not pair up for: {odd[:5]}")
    return {m: (a_mats[m], b_mats[m]) for m in a_mats}


def lora_delta(weight_shape: torch.Size, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * B @ A`` reshaped to ``weight_shape`` (Linear ``[out,in]`` or Conv2d ``[out,in,kh,kw]``)."""
    a32, b32 = a.float(), b.float()
    if len(weight_shape) == 2:
        delta = b32 @ a32
    elif len(weight_shape) == 4:
        if b32.shape[2:] != (1, 1):
            raise LoraError(f"conv LoRA B must be 1x1, got {list(b32.shape)}")
        delta = (b32[:, :, 0, 0] @ a32.flatten(1)).view(weight_shape)
    else:
        raise LoraError(f"LoRA on a weight of shape {list(weight_shape)} is not supported")
    if tuple(delta.shape) != tuple(weight_shape):
        raise LoraError(f"LoRA delta {list(delta.shape)} does not fit weight {list(weight_shape)}")
    return delta * scale


def merge_lora(state: dict[str, torch.Tensor], adapter: Mapping[str, torch.Tensor], config: Mapping) -> int:
    """Add the LoRA deltas into the network state dict ``state`` in place.

    ``config`` is the parsed ``adapter_config.json``. Returns the number of merged
    layers. Every LoRA module must name a ``<module>.weight`` present in ``state``.
    """
    if config.get("use_dora"):
        raise LoraError("adapter_config.json enables DoRA, which GVM's release does not use")
    r_default = config.get("r")
    alpha_default = config.get("lora_alpha")
    if not r_default or alpha_default is None:
        raise LoraError("adapter_config.json must give 'r' and 'lora_alpha'")
    pairs = lora_pairs(adapter)
    if not pairs:
        raise LoraError("the LoRA file holds no LoRA matrices")
    for module, (a, b) in pairs.items():
        key = f"{module}.weight"
        if key not in state:
            raise LoraError(f"LoRA targets '{module}', which is not a layer of the UNet")
        r = _pattern_value(module, config.get("rank_pattern") or {}, r_default)
        alpha = _pattern_value(module, config.get("alpha_pattern") or {}, alpha_default)
        if a.shape[0] != r:
            raise LoraError(f"LoRA rank of '{module}' is {a.shape[0]}, adapter_config.json says {r}")
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        weight = state[key]
        state[key] = (weight.float() + lora_delta(weight.shape, a, b, scale)).to(weight.dtype)
    return len(pairs)
