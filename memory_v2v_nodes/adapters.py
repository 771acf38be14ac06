"""Trained Memory-V2V adapter weights: coarse patch embedders and token-merge convolutions.

Memory-V2V trains its 1x4x4 / 1x8x8 tokenizers and its merge module; no weights are
released, so by default the pack derives the tokenizers from Wan's patch embedding and merges
by averaging (:mod:`.memory_forward`). A user who has trained adapters gives one
``.safetensors`` file with any of these keys (D = the DiT width, C = latent channels)::

    coarse_embedding.1x4x4.weight   [D, C, 1, 4, 4]    coarse_embedding.1x4x4.bias   [D]
    coarse_embedding.1x8x8.weight   [D, C, 1, 8, 8]    coarse_embedding.1x8x8.bias   [D]
    token_merge.<block>.weight      [D, D, 2, 2]       token_merge.<block>.bias      [D]

(``<block>`` a 0-based block index where merging happens, e.g. 10 and 20). Parts that are
absent keep the parameter-free defaults. Any other key, or a wrong shape, is refused.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..nodes.comfy.weights import WeightsError, read_state_dict
from .memory_forward import SCALES

_EMBED = re.compile(r"^coarse_embedding\.(1x4x4|1x8x8)\.(weight|bias)$")
_MERGE = re.compile(r"^token_merge\.(\d+)\.(weight|bias)$")


def load_adapters(path: Path, model) -> tuple[dict[int, nn.Conv3d], dict[int, nn.Conv2d]]:
    """``(embedders by scale, mergers by block)`` from ``path`` for ``model`` (module doc)."""
    path = Path(path)
    state = read_state_dict(path, "Memory-V2V adapter weights")
    dim, channels = model.patch_embedding.weight.shape[:2]
    dtype = model.patch_embedding.weight.dtype
    groups: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _EMBED.match(key) or _MERGE.match(key)
        if m is None:
            raise WeightsError(f"{path}: '{key}' is not a Memory-V2V adapter key (coarse_embedding.1x4x4/1x8x8.*, "
                               "token_merge.<block>.*)")
        kind = "embed" if key.startswith("coarse") else "merge"
        groups.setdefault((kind, m.group(1)), {})[m.group(2)] = value
    embedders, mergers = {}, {}
    for (kind, name), tensors in sorted(groups.items()):
        if set(tensors) != {"weight", "bias"}:
            raise WeightsError(f"{path}: {kind} '{name}' needs both weight and bias")
        if kind == "embed":
            scale = SCALES[name]
            module = nn.Conv3d(channels, dim, (1, 2 * scale, 2 * scale), stride=(1, 2 * scale, 2 * scale))
        else:
            if int(name) >= len(model.blocks):
                raise WeightsError(f"{path}: token_merge.{name} refers to block {name}; the DiT has "
                                   f"{len(model.blocks)}")
            module = nn.Conv2d(dim, dim, 2, stride=2)
        for part, value in tensors.items():
            want = tuple(getattr(module, part).shape)
            if tuple(value.shape) != want:
                raise WeightsError(f"{path}: {kind} '{name}' {part} has shape {list(value.shape)}, expected {list(want)}")
        module.load_state_dict(tensors)
        module = module.to(dtype).eval().requires_grad_(False)
        if kind == "embed":
            embedders[SCALES[name]] = module
        else:
            mergers[int(name)] = module
    return embedders, mergers
