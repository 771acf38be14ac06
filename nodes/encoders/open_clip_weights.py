"""open_clip checkpoints (``open_clip_pytorch_model.bin``) as transformers CLIP models.

ModelScope-T2V, I2VGen-XL and VideoMV ship OpenCLIP ViT-H-14 (``laion2b_s32b_b79k``) in
open_clip's own layout, a flat state dict::

    token_embedding.weight [V, W]            positional_embedding [77, W]
    transformer.resblocks.{i}.{ln_1, attn.in_proj_weight/bias (fused q;k;v), attn.out_proj,
                               ln_2, mlp.c_fc, mlp.c_proj}.{weight, bias}
    ln_final.{weight, bias}                  text_projection [W, E]       logit_scale []
    visual.conv1.weight [Wv, 3, p, p]        visual.class_embedding [Wv]
    visual.positional_embedding [(224/p)^2 + 1, Wv]                       visual.ln_pre
    visual.transformer.resblocks.{i}.*       (as the text blocks)
    visual.ln_post                           visual.proj [Wv, E]

:func:`open_clip_to_transformers` maps it onto transformers ``CLIPTextModelWithProjection``
and ``CLIPVisionModelWithProjection`` (the names checked against transformers'
``modeling_clip``), :func:`load_open_clip` builds those models strictly, and
:func:`write_smoke_open_clip` writes a tiny file in the same layout. The sizes are read from
the shapes (:func:`infer_size`) except the attention head counts, which are not in the
shapes: they follow ViT-H-14's head widths, 64 for text (16 heads over 1024) and 80 for vision
(16 heads over 1280), as in open_clip's ``ViT-H-14.json``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, NamedTuple, Optional

import torch

from .clip import fill_position_ids
from .clip_text import SMOKE_VOCAB_SIZE
from ..comfy.weights import WeightsError, load_strict, random_tensors, read_checkpoint

if TYPE_CHECKING:  # imported where used
    from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

TEXT_HEAD_WIDTH = 64
VISION_HEAD_WIDTH = 80
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which open_clip uses
DROPPED_KEYS = ("logit_scale",)
"""open_clip keys consumed but not converted: the contrastive temperature, unused for conditioning
(transformers keeps it only in the joint ``CLIPModel``, which is not built here)."""


@dataclass(frozen=True)
class OpenCLIPSize:
    """The sizes of an open_clip CLIP model; the defaults are ViT-H-14 (:data:`VIT_H_14`)."""

    embed_dim: int = 1024        # projection width, text and image
    text_width: int = 1024
    text_layers: int = 24
    text_heads: int = 16
    text_mlp: int = 4096
    context_length: int = 77
    vocab_size: int = 49408
    vision_width: int = 1280
    vision_layers: int = 32
    vision_heads: int = 16
    vision_mlp: int = 5120
    patch_size: int = 14
    image_size: int = 224


VIT_H_14 = OpenCLIPSize()
SMOKE_SIZE = OpenCLIPSize(embed_dim=128, text_width=128, text_layers=2, text_heads=2, text_mlp=256,
                          vocab_size=SMOKE_VOCAB_SIZE, vision_width=160, vision_layers=2, vision_heads=2,
                          vision_mlp=320)
"""Tiny, with ViT-H-14's head widths (so :func:`infer_size` reads it back), 77 tokens, 224 px, patch 14."""


class OpenCLIPTowers(NamedTuple):
    """What :func:`load_open_clip` builds; a tower not asked for is ``None``."""

    text: Optional[CLIPTextModelWithProjection]
    vision: Optional[CLIPVisionModelWithProjection]


# --------------------------------------------------------------------------- sizes and configs
def _heads(width: int, head_width: int, what: str) -> int:
    if width % head_width:
        raise ValueError(f"the {what} width {width} is not a multiple of ViT-H-14's head width {head_width}, "
                         f"so its head count cannot be known; pass the size explicitly")
    return width // head_width


def _count_blocks(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    found = {int(m[1]) for key in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", key))}
    if found != set(range(len(found))) or not found:
        raise ValueError(f"the blocks under {prefix} are not numbered 0..n-1 (found {sorted(found)[:8]})")
    return len(found)


def infer_size(state: Mapping[str, torch.Tensor]) -> OpenCLIPSize:
    """The :class:`OpenCLIPSize` of an open_clip state dict, from its shapes (heads by ViT-H-14's
    head widths, see the module doc). ``ValueError`` when it is not an open_clip CLIP."""
    try:
        patches = state["visual.positional_embedding"].shape[0] - 1
        patch = int(state["visual.conv1.weight"].shape[-1])
        grid = math.isqrt(patches)
        if grid * grid != patches:
            raise ValueError(f"visual.positional_embedding has {patches + 1} rows, not a square grid plus one")
        text_width = int(state["token_embedding.weight"].shape[1])
        vision_width = int(state["visual.conv1.weight"].shape[0])
        return OpenCLIPSize(
            embed_dim=int(state["text_projection"].shape[1]),
            text_width=text_width, text_layers=_count_blocks(state, "transformer.resblocks."),
            text_heads=_heads(text_width, TEXT_HEAD_WIDTH, "text"),
            text_mlp=int(state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
            context_length=int(state["positional_embedding"].shape[0]),
            vocab_size=int(state["token_embedding.weight"].shape[0]),
            vision_width=vision_width, vision_layers=_count_blocks(state, "visual.transformer.resblocks."),
            vision_heads=_heads(vision_width, VISION_HEAD_WIDTH, "vision"),
            vision_mlp=int(state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
            patch_size=patch, image_size=grid * patch)
    except (KeyError, IndexError) as exc:
        raise ValueError(f"not an open_clip CLIP checkpoint: {exc} is missing or malformed") from None


def transformers_configs(size: OpenCLIPSize = VIT_H_14) -> tuple[CLIPTextConfig, CLIPVisionConfig]:
    """transformers configs equal to open_clip's model of ``size`` (exact GELU, LayerNorm eps 1e-5).

    Text: ``max_position_embeddings = context_length``, ``pad_token_id`` 0 (open_clip's padding),
    ``bos/eos_token_id`` the last two ids (``<|startoftext|>`` 49406 / ``<|endoftext|>`` 49407 for
    ViT-H-14; the pooled output is taken at the first end token, which is open_clip's argmax).
    """
    from transformers import CLIPTextConfig, CLIPVisionConfig
    text = CLIPTextConfig(
        vocab_size=size.vocab_size, hidden_size=size.text_width, intermediate_size=size.text_mlp,
        num_hidden_layers=size.text_layers, num_attention_heads=size.text_heads,
        max_position_embeddings=size.context_length, hidden_act="gelu", layer_norm_eps=LAYER_NORM_EPS,
        projection_dim=size.embed_dim, pad_token_id=0, bos_token_id=size.vocab_size - 2,
        eos_token_id=size.vocab_size - 1)
    vision = CLIPVisionConfig(
        hidden_size=size.vision_width, intermediate_size=size.vision_mlp, num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads, patch_size=size.patch_size, image_size=size.image_size,
        num_channels=3, hidden_act="gelu", layer_norm_eps=LAYER_NORM_EPS, projection_dim=size.embed_dim)
    return text, vision


def open_clip_shapes(size: OpenCLIPSize = VIT_H_14) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of an open_clip checkpoint of ``size`` (the layout in the module doc)."""
    def blocks(prefix: str, layers: int, width: int, mlp: int) -> dict[str, tuple[int, ...]]:
        out = {}
        for i in range(layers):
            p = f"{prefix}{i}."
            out.update({p + "ln_1.weight": (width,), p + "ln_1.bias": (width,),
                        p + "attn.in_proj_weight": (3 * width, width), p + "attn.in_proj_bias": (3 * width,),
                        p + "attn.out_proj.weight": (width, width), p + "attn.out_proj.bias": (width,),
                        p + "ln_2.weight": (width,), p + "ln_2.bias": (width,),
                        p + "mlp.c_fc.weight": (mlp, width), p + "mlp.c_fc.bias": (mlp,),
                        p + "mlp.c_proj.weight": (width, mlp), p + "mlp.c_proj.bias": (width,)})
        return out

    text, vision = size.text_width, size.vision_width
    grid = size.image_size // size.patch_size
    return {
        "positional_embedding": (size.context_length, text), "text_projection": (text, size.embed_dim),
        "logit_scale": (), "token_embedding.weight": (size.vocab_size, text),
        **blocks("transformer.resblocks.", size.text_layers, text, size.text_mlp),
        "ln_final.weight": (text,), "ln_final.bias": (text,),
        "visual.class_embedding": (vision,), "visual.positional_embedding": (grid * grid + 1, vision),
        "visual.proj": (vision, size.embed_dim),
        "visual.conv1.weight": (vision, 3, size.patch_size, size.patch_size),
        "visual.ln_pre.weight": (vision,), "visual.ln_pre.bias": (vision,),
        **blocks("visual.transformer.resblocks.", size.vision_layers, vision, size.vision_mlp),
        "visual.ln_post.weight": (vision,), "visual.ln_post.bias": (vision,),
    }


# --------------------------------------------------------------------------- key conversion
_TOP_LEVEL = {  # open_clip key -> (tower, transformers key); "*" = the projections, transposed
    "token_embedding.weight": ("text", "text_model.embeddings.token_embedding.weight"),
    "positional_embedding": ("text", "text_model.embeddings.position_embedding.weight"),
    "ln_final.weight": ("text", "text_model.final_layer_norm.weight"),
    "ln_final.bias": ("text", "text_model.final_layer_norm.bias"),
    "text_projection": ("text", "*text_projection.weight"),
    "visual.conv1.weight": ("vision", "vision_model.embeddings.patch_embedding.weight"),
    "visual.class_embedding": ("vision", "vision_model.embeddings.class_embedding"),
    "visual.positional_embedding": ("vision", "vision_model.embeddings.position_embedding.weight"),
    "visual.ln_pre.weight": ("vision", "vision_model.pre_layrnorm.weight"),  # transformers' spelling
    "visual.ln_pre.bias": ("vision", "vision_model.pre_layrnorm.bias"),
    "visual.ln_post.weight": ("vision", "vision_model.post_layernorm.weight"),
    "visual.ln_post.bias": ("vision", "vision_model.post_layernorm.bias"),
    "visual.proj": ("vision", "*visual_projection.weight"),
}
_BLOCK_KEY = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_PARTS = {  # inside a residual block, besides the fused in_proj
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}


def open_clip_to_transformers(state: Mapping[str, torch.Tensor]
                              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """open_clip CLIP keys -> ``(text_state, vision_state)``. Pure, strict.

    ``text_state`` fits ``CLIPTextModelWithProjection`` (``text_model.*`` + ``text_projection.weight``),
    ``vision_state`` fits ``CLIPVisionModelWithProjection`` (``vision_model.*`` + ``visual_projection.weight``):

    - per block (``transformer.resblocks.{i}`` -> ``text_model.encoder.layers.{i}``, ``visual.`` ->
      ``vision_model.``): fused ``attn.in_proj_weight/bias`` ``[3W, W]`` split in rows into
      ``self_attn.{q,k,v}_proj`` (``nn.MultiheadAttention`` stacks q;k;v), ``attn.out_proj`` ->
      ``self_attn.out_proj``, ``ln_1/ln_2`` -> ``layer_norm1/2``, ``mlp.c_fc/c_proj`` -> ``mlp.fc1/fc2``;
    - ``token_embedding`` / ``positional_embedding`` -> ``text_model.embeddings.{token,position}_embedding``,
      ``ln_final`` -> ``text_model.final_layer_norm``, ``text_projection [W, E]`` -> ``text_projection.weight``
      transposed;
    - ``visual.conv1`` -> ``vision_model.embeddings.patch_embedding``, ``visual.class_embedding`` /
      ``visual.positional_embedding`` -> ``vision_model.embeddings.{class_embedding, position_embedding}``,
      ``visual.ln_pre`` -> ``vision_model.pre_layrnorm``, ``visual.ln_post`` -> ``vision_model.post_layernorm``,
      ``visual.proj [Wv, E]`` -> ``visual_projection.weight`` transposed;
    - :data:`DROPPED_KEYS` (``logit_scale``) consumed and dropped.

    Any other key is a ``ValueError`` naming it. Splits are views; only the two projections are copied.
    """
    towers: dict[str, dict[str, torch.Tensor]] = {"text": {}, "vision": {}}
    unknown = []
    for key, value in state.items():
        if key in DROPPED_KEYS:
            continue
        if key in _TOP_LEVEL:
            tower, new = _TOP_LEVEL[key]
            if new.startswith("*"):
                new, value = new[1:], value.t().contiguous()
            towers[tower][new] = value
            continue
        match = _BLOCK_KEY.match(key)
        if match is None:
            unknown.append(key)
            continue
        tower = "vision" if match[1] else "text"
        prefix = f"{tower}_model.encoder.layers.{match[2]}."
        part = match[3]
        if part in ("attn.in_proj_weight", "attn.in_proj_bias"):
            if value.shape[0] % 3:
                raise ValueError(f"{key} has {value.shape[0]} rows, not three equal q;k;v parts")
            kind = "weight" if part.endswith("weight") else "bias"
            for name, piece in zip("qkv", value.chunk(3, dim=0)):
                towers[tower][f"{prefix}self_attn.{name}_proj.{kind}"] = piece
            continue
        module, _, kind = part.rpartition(".")
        if module in _BLOCK_PARTS and kind in ("weight", "bias"):
            towers[tower][f"{prefix}{_BLOCK_PARTS[module]}.{kind}"] = value
        else:
            unknown.append(key)
    if unknown:
        unknown.sort()
        raise ValueError(f"{len(unknown)} key(s) are not part of an open_clip CLIP model: "
                         f"{', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}")
    return towers["text"], towers["vision"]


# --------------------------------------------------------------------------- loading
def load_open_clip(path: Path, text: bool = True, vision: bool = True,
                   size: Optional[OpenCLIPSize] = None) -> OpenCLIPTowers:
    """Transformers models from an open_clip checkpoint file (``open_clip_pytorch_model.bin``).

    The file is read with ``weights_only=True`` (memory-mapped); its sizes come from the shapes
    (:func:`infer_size`) unless ``size`` is given; every key is converted
    (:func:`open_clip_to_transformers`) and each tower asked for is built on the meta device
    and filled strictly (a tower not asked for is dropped, e.g. ``vision=False`` for text-only
    use). Unknown, missing or mis-shaped keys give a :class:`WeightsError` naming them. The
    models come back in eval mode, without gradients, on the CPU in the dtype of the file.
    """
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection
    if not (text or vision):
        raise ValueError("load_open_clip: ask for the text tower, the vision tower or both")
    path = Path(path)
    what = f"open_clip weights {path}"
    state = read_checkpoint(path, "open_clip weights")
    try:
        size = size or infer_size(state)
        text_state, vision_state = open_clip_to_transformers(state)
    except ValueError as exc:
        raise WeightsError(f"{what}: {exc}") from None
    text_config, vision_config = transformers_configs(size)
    towers = []
    for wanted, cls, config, tower_state, name in (
            (text, CLIPTextModelWithProjection, text_config, text_state, "text"),
            (vision, CLIPVisionModelWithProjection, vision_config, vision_state, "vision")):
        if not wanted:
            towers.append(None)
            continue
        with torch.device("meta"):
            model = cls(config)
        fill_position_ids(model)
        load_strict(model, tower_state, f"{what} ({name} tower)")
        towers.append(model.eval().requires_grad_(False))
    return OpenCLIPTowers(*towers)


# --------------------------------------------------------------------------- smoke weights
def write_smoke_open_clip(path: Path, seed: int = 0, size: OpenCLIPSize = SMOKE_SIZE) -> None:
    """Random weights of ``size`` (tiny by default) as an open_clip checkpoint file: a flat
    state dict in the layout of :func:`open_clip_shapes`, saved with ``torch.save``; ``logit_scale``
    is open_clip's initial ``log(1 / 0.07)``. Pair it with :func:`.clip_text.write_smoke_tokenizer`."""
    path = Path(path)
    state = random_tensors(open_clip_shapes(size), torch.Generator().manual_seed(seed))
    state["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, str(path))
