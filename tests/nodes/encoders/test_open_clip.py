"""open_clip checkpoints as transformers CLIP (nodes/encoders/open_clip_weights.py) and the text
conditioning (nodes/encoders/clip_text.py).

The reference is an open_clip-style CLIP written here from open_clip's architecture with
PyTorch's own ``nn.MultiheadAttention`` (so its state dict *is* the open_clip layout, fused
``in_proj`` included): converted weights must make transformers models compute what it
computes -- image embeddings, text embeddings, all tokens, and VideoMV's penultimate-layer
tokens. Real-size (ViT-H-14) checks run on the meta device.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import replace

import pytest
import torch
from torch import nn

from consistent_video.nodes.encoders.clip import TransformersCLIPEmbedder
from consistent_video.nodes.encoders.clip_text import (OPEN_CLIP_PAD_ID, TOKENIZER_OPTIONAL_FILES,
                                                       ComfyCLIPTextEmbedder, TransformersCLIPTextEmbedder,
                                                       load_clip_tokenizer, tokenize, write_smoke_tokenizer)
from consistent_video.nodes.encoders.open_clip_weights import (DROPPED_KEYS, SMOKE_SIZE, VIT_H_14, OpenCLIPSize,
                                                               infer_size, load_open_clip, open_clip_shapes,
                                                               open_clip_to_transformers, transformers_configs,
                                                               write_smoke_open_clip)
from consistent_video.nodes.comfy.weights import WeightsError, check_state_dict, load_strict, random_tensors

# small but with several heads and blocks; 56 px keeps the vision tower cheap (4x4 patches)
TINY = replace(SMOKE_SIZE, context_length=16, image_size=56)


# --------------------------------------------------------------------------- the reference
class Block(nn.Module):
    """open_clip's ``ResidualAttentionBlock`` (pre-norm, exact GELU, no layer scale)."""

    def __init__(self, width: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, mlp)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(mlp, width))]))

    def forward(self, x: torch.Tensor, mask=None) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(Block(width, heads, mlp) for _ in range(layers))


class Visual(nn.Module):
    def __init__(self, s: OpenCLIPSize) -> None:
        super().__init__()
        grid = s.image_size // s.patch_size
        self.conv1 = nn.Conv2d(3, s.vision_width, s.patch_size, s.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(s.vision_width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, s.vision_width))
        self.ln_pre = nn.LayerNorm(s.vision_width)
        self.transformer = Transformer(s.vision_width, s.vision_layers, s.vision_heads, s.vision_mlp)
        self.ln_post = nn.LayerNorm(s.vision_width)
        self.proj = nn.Parameter(torch.zeros(s.vision_width, s.embed_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + self.positional_embedding
        x = self.ln_pre(x)
        for block in self.transformer.resblocks:
            x = block(x)
        return self.ln_post(x[:, 0]) @ self.proj


class OpenCLIPReference(nn.Module):
    """open_clip's ``CLIP`` with the parts conditioning uses."""

    def __init__(self, s: OpenCLIPSize) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(s.vocab_size, s.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(s.context_length, s.text_width))
        self.transformer = Transformer(s.text_width, s.text_layers, s.text_heads, s.text_mlp)
        self.ln_final = nn.LayerNorm(s.text_width)
        self.text_projection = nn.Parameter(torch.zeros(s.text_width, s.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(0.0))
        self.visual = Visual(s)

    def text_tokens(self, ids: torch.Tensor, skip_last: int = 0) -> torch.Tensor:
        """All tokens after ``ln_final``; ``skip_last=1`` is VideoMV's ``layer="penultimate"``."""
        x = self.token_embedding(ids) + self.positional_embedding
        mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)
        blocks = self.transformer.resblocks
        for block in list(blocks)[:len(blocks) - skip_last]:
            x = block(x, mask)
        return self.ln_final(x)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.text_tokens(ids)
        return x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ self.text_projection


def _reference(size: OpenCLIPSize, seed: int = 0) -> tuple[OpenCLIPReference, dict]:
    state = random_tensors(open_clip_shapes(size), torch.Generator().manual_seed(seed))
    model = OpenCLIPReference(size)
    model.load_state_dict(state, strict=True)  # open_clip_shapes is exactly this layout
    return model.eval(), state


def _ids(size: OpenCLIPSize, lengths: list[int], seed: int = 1) -> torch.Tensor:
    """open_clip token rows: start, random text tokens, end, 0-padding (end = the largest id)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), size.context_length, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, 0] = size.vocab_size - 2
        ids[row, 1:n + 1] = torch.randint(1, size.vocab_size - 2, (n,), generator=g)
        ids[row, n + 1] = size.vocab_size - 1
    return ids


def _transformers_models(size: OpenCLIPSize, state: dict):
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection
    text_config, vision_config = transformers_configs(size)
    text_state, vision_state = open_clip_to_transformers(state)
    text = CLIPTextModelWithProjection(text_config)
    vision = CLIPVisionModelWithProjection(vision_config)
    load_strict(text, text_state, "text")
    load_strict(vision, vision_state, "vision")
    return text.eval(), vision.eval()


# --------------------------------------------------------------------------- sizes and conversion
def test_sizes_are_read_back_from_the_shapes():
    for size in (VIT_H_14, SMOKE_SIZE, TINY):
        shapes = open_clip_shapes(size)
        assert infer_size({k: torch.empty(s, device="meta") for k, s in shapes.items()}) == size


def test_the_vit_h_14_configs():
    text, vision = transformers_configs(VIT_H_14)
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.max_position_embeddings,
            text.vocab_size, text.intermediate_size, text.projection_dim) == (1024, 24, 16, 77, 49408, 4096, 1024)
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, vision.patch_size,
            vision.image_size, vision.intermediate_size, vision.projection_dim) == (1280, 32, 16, 14, 224, 5120, 1024)
    assert text.hidden_act == vision.hidden_act == "gelu" and text.layer_norm_eps == vision.layer_norm_eps == 1e-5
    assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (49406, 49407, 0)


def test_every_vit_h_14_key_lands_on_a_transformers_parameter():
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection
    state = {k: torch.empty(s, device="meta") for k, s in open_clip_shapes(VIT_H_14).items()}
    assert len(state) == (4 + 2 + 24 * 12) + (4 + 2 + 2 + 32 * 12)  # text: 4 tensors, ln_final, blocks; vision
    text_state, vision_state = open_clip_to_transformers(state)
    # each fused in_proj pair becomes six tensors; logit_scale is dropped
    assert len(text_state) + len(vision_state) == len(state) - len(DROPPED_KEYS) + 4 * (24 + 32)
    text_config, vision_config = transformers_configs(VIT_H_14)
    with torch.device("meta"):
        text, vision = CLIPTextModelWithProjection(text_config), CLIPVisionModelWithProjection(vision_config)
    check_state_dict(text, text_state, "text")  # same keys and shapes, or it raises naming them
    check_state_dict(vision, vision_state, "vision")
    assert vision_state["visual_projection.weight"].shape == (1024, 1280)
    assert "vision_model.pre_layrnorm.weight" in vision_state and "logit_scale" not in text_state


@torch.no_grad()
def test_converted_towers_compute_what_open_clip_computes():
    reference, state = _reference(TINY)
    text, vision = _transformers_models(TINY, state)
    pixels = torch.randn(2, 3, TINY.image_size, TINY.image_size, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(vision(pixel_values=pixels).image_embeds, reference.visual(pixels), rtol=1e-5, atol=1e-5)
    ids = _ids(TINY, [3, 9])
    out = text(input_ids=ids)
    torch.testing.assert_close(out.text_embeds, reference.encode_text(ids), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.last_hidden_state, reference.text_tokens(ids), rtol=1e-5, atol=1e-5)


def test_conversion_is_strict_and_pure():
    _, state = _reference(TINY)
    with pytest.raises(ValueError, match=r"2 key\(s\).*visual\.attn_pool\.weight, visual\.transformer\.resblocks\.0\.ls_1\.gamma"):
        open_clip_to_transformers({**state, "visual.attn_pool.weight": torch.zeros(1),
                                   "visual.transformer.resblocks.0.ls_1.gamma": torch.zeros(1)})
    with pytest.raises(ValueError, match=rf"{len(state)} key\(s\).*module\.ln_final\.bias"):  # a DDP-prefixed state
        open_clip_to_transformers({"module." + k: v for k, v in state.items()})
    before = {k: v.clone() for k, v in state.items()}
    text_state, _ = open_clip_to_transformers(state)
    assert all(torch.equal(state[k], before[k]) for k in state)
    fused = state["transformer.resblocks.1.attn.in_proj_weight"]
    width = TINY.text_width
    for i, name in enumerate("qkv"):
        piece = text_state[f"text_model.encoder.layers.1.self_attn.{name}_proj.weight"]
        assert torch.equal(piece, fused[i * width:(i + 1) * width]) and piece.data_ptr() == fused[i * width:].data_ptr()


def test_load_open_clip_names_what_is_wrong(tmp_path):
    _, state = _reference(TINY)
    torch.save({**state, "visual.attn_pool.weight": torch.zeros(1)}, tmp_path / "extra.bin")
    with pytest.raises(WeightsError, match="visual.attn_pool.weight"):
        load_open_clip(tmp_path / "extra.bin")
    torch.save({k: v for k, v in state.items() if k != "transformer.resblocks.1.ln_2.bias"}, tmp_path / "missing.bin")
    with pytest.raises(WeightsError, match=r"(?s)text tower.*missing key.*text_model\.encoder\.layers\.1\.layer_norm2\.bias"):
        load_open_clip(tmp_path / "missing.bin")
    load_open_clip(tmp_path / "missing.bin", text=False)  # the vision tower alone is complete
    torch.save({**state, "transformer.resblocks.1.mlp.c_fc.weight": torch.zeros(7, TINY.text_width)},
               tmp_path / "shape.bin")
    with pytest.raises(WeightsError, match=r"(?s)shape mismatch.*text_model\.encoder\.layers\.1\.mlp\.fc1\.weight"):
        load_open_clip(tmp_path / "shape.bin", vision=False)
    with pytest.raises(WeightsError, match=r"(?s)shape mismatch.*visual_projection\.weight"):  # an explicit size
        load_open_clip(tmp_path / "missing.bin", text=False, size=replace(TINY, embed_dim=64))
    torch.save({"encoder.conv_in.weight": torch.zeros(1)}, tmp_path / "vae.bin")
    with pytest.raises(WeightsError, match="not an open_clip CLIP checkpoint"):
        load_open_clip(tmp_path / "vae.bin")


# --------------------------------------------------------------------------- tokenizer
@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    write_smoke_tokenizer(folder)
    return load_clip_tokenizer(folder)


def test_tokenize_follows_open_clip(tokenizer):
    vocab = tokenizer.get_vocab()
    start, end = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    assert (start, end) == (len(vocab) - 2, len(vocab) - 1) == (SMOKE_SIZE.vocab_size - 2, SMOKE_SIZE.vocab_size - 1)
    ids = tokenize(tokenizer, ["The  cat", ""], length=12)
    words = [vocab["the</w>"], vocab["c"], vocab["a"], vocab["t</w>"]]  # "the" merges, "cat" does not
    assert ids[0].tolist() == [start, *words, end] + [OPEN_CLIP_PAD_ID] * 6
    assert ids[1].tolist() == [start, end] + [OPEN_CLIP_PAD_ID] * 10
    long = tokenize(tokenizer, "a " * 100)  # cut so that the row still ends with the end token
    assert long.shape == (1, 77) and long[0, 0] == start and long[0, -1] == end and (long[0, 1:-1] == vocab["a</w>"]).all()
    with pytest.raises(ValueError, match="strings"):
        tokenize(tokenizer, ["ok", 3])


def test_a_missing_tokenizer_says_which_files_and_where_from(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0}))
    with pytest.raises(WeightsError, match=r"merges\.txt.*laion/CLIP-ViT-H-14-laion2B-s32B-b79K"):
        load_clip_tokenizer(tmp_path)
    assert TOKENIZER_OPTIONAL_FILES == {
        "tokenizer/vocab.json": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K:vocab.json",
        "tokenizer/merges.txt": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K:merges.txt"}


# --------------------------------------------------------------------------- text and image embedders
@pytest.fixture(scope="module")
def smoke(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("open_clip")
    write_smoke_open_clip(folder / "open_clip_pytorch_model.bin")
    return load_open_clip(folder / "open_clip_pytorch_model.bin"), torch.load(
        folder / "open_clip_pytorch_model.bin", weights_only=True)


@torch.no_grad()
def test_text_tokens_are_the_penultimate_layer_through_the_final_norm(smoke, tokenizer):
    towers, state = smoke
    embedder = TransformersCLIPTextEmbedder(towers.text, tokenizer, chunk_size=2)
    prompts = ["the cat", "", "and the dog!"]
    tokens = embedder.embed(prompts)
    assert tokens.shape == (3, 77, SMOKE_SIZE.text_width) and tokens.dtype == torch.float32
    assert (embedder.dim, embedder.length) == (SMOKE_SIZE.text_width, 77)
    ids = tokenize(tokenizer, prompts)
    text_model = towers.text.text_model
    direct = text_model.final_layer_norm(text_model(input_ids=ids, output_hidden_states=True).hidden_states[-2])
    torch.testing.assert_close(tokens, direct, rtol=1e-5, atol=1e-5)
    reference = OpenCLIPReference(SMOKE_SIZE)
    reference.load_state_dict(state)
    torch.testing.assert_close(tokens, reference.eval().text_tokens(ids, skip_last=1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(tokens, reference.text_tokens(ids), atol=1e-3)  # not the last layer
    torch.testing.assert_close(TransformersCLIPTextEmbedder(text_model, tokenizer).embed("the cat"), tokens[:1],
                               rtol=0, atol=0)  # a plain CLIPTextModel works too


@torch.no_grad()
def test_the_image_tower_feeds_the_image_embedder(smoke):
    towers, state = smoke
    reference = OpenCLIPReference(SMOKE_SIZE)
    reference.load_state_dict(state)
    images = torch.rand(2, 224, 224, 3, generator=torch.Generator().manual_seed(3))
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    expected = reference.eval().visual((images.permute(0, 3, 1, 2) - mean) / std)
    torch.testing.assert_close(TransformersCLIPEmbedder(towers.vision).embed(images), expected, rtol=1e-5, atol=1e-5)


def test_text_embedder_checks(smoke, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel
    towers, _ = smoke
    with pytest.raises(ValueError, match="at least one prompt"):
        TransformersCLIPTextEmbedder(towers.text, tokenizer).embed([])

    def tiny(vocab: int, layers: int):
        return CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=8, intermediate_size=16, num_attention_heads=2,
                                            num_hidden_layers=layers, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                                            pad_token_id=0))

    with pytest.raises(ValueError, match="do not belong together"):
        TransformersCLIPTextEmbedder(tiny(10, 2), tokenizer)
    with pytest.raises(ValueError, match="at least 2 blocks"):
        TransformersCLIPTextEmbedder(tiny(SMOKE_SIZE.vocab_size, 1), tokenizer)


def test_only_the_towers_asked_for_are_built(tmp_path):
    write_smoke_open_clip(tmp_path / "model.bin", seed=5)
    towers = load_open_clip(tmp_path / "model.bin", vision=False)
    assert towers.vision is None and towers.text is not None and not towers.text.training
    assert not any(p.requires_grad for p in towers.text.parameters())
    assert load_open_clip(tmp_path / "model.bin", text=False).text is None
    with pytest.raises(ValueError, match="ask for"):
        load_open_clip(tmp_path / "model.bin", text=False, vision=False)


# --------------------------------------------------------------------------- ComfyUI CLIP (fake)
class FakeComfyCLIP:
    """Mirrors ``comfy.sd.CLIP`` of an SD 2.x checkpoint (comfy/sd2_clip.py, comfy/sd1_clip.py):

    - ``tokenize(text)`` -> ``{"h": [chunk, ...]}``, each chunk 77 ``(token, weight)`` pairs: start,
      up to 75 text tokens, end, then padding with 0 (``pad_with_end=False``);
    - ``encode_from_tokens(tokens)`` -> ``[1, 77 * chunks, width]``: hidden layer 23 of 24 (the
      penultimate, ``layer="penultimate"``) through the final layer norm, chunks concatenated.
    """

    def __init__(self, text_model, tokenizer, width=None):
        self.text_model, self.tokenizer, self.width = text_model, tokenizer, width
        vocab = tokenizer.get_vocab()
        self.start, self.end = vocab["<|startoftext|>"], vocab["<|endoftext|>"]

    def tokenize(self, text):
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        chunks = [ids[i:i + 75] for i in range(0, len(ids), 75)] or [[]]
        return {"h": [[(self.start, 1.0)] + [(t, 1.0) for t in c] + [(self.end, 1.0)] + [(0, 1.0)] * (75 - len(c))
                      for c in chunks]}

    @torch.no_grad()
    def encode_from_tokens(self, tokens):
        ids = torch.tensor([[t for t, _ in chunk] for chunk in tokens["h"]])
        hidden = self.text_model(input_ids=ids, output_hidden_states=True).hidden_states[-2]
        out = self.text_model.final_layer_norm(hidden).reshape(1, -1, hidden.shape[-1])
        return out if self.width is None else torch.zeros(1, out.shape[1], self.width)


def test_comfy_clip_text_embedder_matches_ours(smoke, tokenizer):
    towers, _ = smoke
    fake = FakeComfyCLIP(towers.text.text_model, tokenizer)
    ours = TransformersCLIPTextEmbedder(towers.text, tokenizer)
    comfy = ComfyCLIPTextEmbedder(fake, expected_dim=SMOKE_SIZE.text_width)
    prompts = ["the cat", ""]
    torch.testing.assert_close(comfy.embed(prompts), ours.embed(prompts), rtol=1e-5, atol=1e-5)
    long = "and " * 100  # two ComfyUI chunks; the first one is kept
    assert comfy.embed(long).shape == (1, 77, SMOKE_SIZE.text_width)
    torch.testing.assert_close(comfy.embed(long), ours.embed(long), rtol=1e-5, atol=1e-5)


def test_comfy_clip_text_embedder_refuses_other_text_encoders(smoke, tokenizer):
    towers, _ = smoke
    with pytest.raises(ValueError, match=r"768-wide tokens \(an SD 1.x CLIP\)"):
        ComfyCLIPTextEmbedder(FakeComfyCLIP(towers.text.text_model, tokenizer, width=768)).embed("a")
    with pytest.raises(ValueError, match="tokenize and encode_from_tokens"):
        ComfyCLIPTextEmbedder(object())


def test_smoke_open_clip_file_is_the_release_layout(smoke):
    _, state = smoke
    assert set(state) == set(open_clip_shapes(SMOKE_SIZE))
    assert math.isclose(float(state["logit_scale"]), math.log(1 / 0.07), rel_tol=1e-6)
