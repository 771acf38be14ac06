"""Wan2.1 text conditioning: umT5-XXL encoder tokens, from transformers or from ComfyUI.

Wan's convention (diffusers ``WanPipeline._get_t5_prompt_embeds``): the prompt is tokenised to
at most 512 tokens (with the end token), encoded by ``UMT5EncoderModel``, the tokens past
the prompt's length are set to **zero**, and the result is ``[N, 512, 4096]``.

- :func:`load_text_encoder` reads ``text_encoder/`` (transformers ``UMT5EncoderModel``) and
  ``tokenizer/`` from a weights folder (the layout of ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``).
- :func:`from_conditioning` takes ComfyUI's CONDITIONING (``[[tokens [1, L, 4096], {...}], ...]``
  from CLIP Text Encode with Wan's umT5 loaded by core Load CLIP, type "wan"), padded or cut
  to 512 tokens the same way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..nodes.comfy.runtime import module_place
from ..nodes.comfy.weights import WeightsError

TEXT_LENGTH = 512
TEXT_FILES = ("text_encoder/config.json", "tokenizer/tokenizer_config.json")


def load_text_encoder(folder: Path):
    """``(UMT5EncoderModel, tokenizer)`` from ``folder/text_encoder`` and ``folder/tokenizer``
    (eval mode, no gradients, CPU, the stored dtype). Missing or unreadable parts raise
    :class:`WeightsError` naming them."""
    from transformers import AutoTokenizer, UMT5EncoderModel
    folder = Path(folder)
    missing = [name for name in TEXT_FILES if not (folder / name).is_file()]
    if missing:
        raise WeightsError(f"{folder} has no umT5 text encoder ({', '.join(missing)} missing): download text_encoder/ "
                           "and tokenizer/ from Wan-AI/Wan2.1-T2V-1.3B-Diffusers into it, or connect a "
                           "CONDITIONING from ComfyUI's CLIP Text Encode (Load CLIP: umt5_xxl, type wan)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
        model = UMT5EncoderModel.from_pretrained(str(folder / "text_encoder"), local_files_only=True)
    except Exception as exc:  # transformers raises its own types for malformed files
        raise WeightsError(f"the umT5 text encoder in {folder} could not be read ({type(exc).__name__}: {exc})") from None
    return model.eval().requires_grad_(False), tokenizer


def load_optional_text_encoder(folder: Path, text_dim: int, owner: str):
    """``(UMT5EncoderModel or None, tokenizer or None)``: the encoder when ``folder`` holds
    ``text_encoder/`` and ``tokenizer/`` (prompts may come as CONDITIONING instead). Its width
    must be ``text_dim``, the width ``owner`` (e.g. "the DiT") reads, else :class:`WeightsError`."""
    if not all((Path(folder) / f).is_file() for f in TEXT_FILES):
        return None, None
    model, tokenizer = load_text_encoder(folder)
    if model.config.d_model != text_dim:
        raise WeightsError(f"{folder}/text_encoder gives {model.config.d_model}-wide tokens; {owner} expects "
                           f"{text_dim}")
    return model, tokenizer


@torch.no_grad()
def encode_prompts(model, tokenizer, prompts: Sequence[str], length: int = TEXT_LENGTH) -> torch.Tensor:
    """``[N, length, dim]`` float32 on the CPU, tokens past each prompt's length zeroed (module doc)."""
    batch = tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True,
                      add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    device, _ = module_place(model)
    mask = batch.attention_mask.to(device)
    hidden = model(batch.input_ids.to(device), mask).last_hidden_state.float()
    return (hidden * mask[..., None].to(hidden.dtype)).cpu()


def fit_length(tokens: torch.Tensor, length: int = TEXT_LENGTH) -> torch.Tensor:
    """``[N, L, D]`` zero-padded or cut to ``length`` tokens."""
    if tokens.shape[1] >= length:
        return tokens[:, :length]
    return torch.nn.functional.pad(tokens, (0, 0, 0, length - tokens.shape[1]))


def from_conditioning(conditioning: Any, width: int, length: int = TEXT_LENGTH) -> torch.Tensor:
    """ComfyUI CONDITIONING -> ``[1, length, width]`` float32 (the first entry's tokens).

    Raises ``ValueError`` for anything else, or tokens of another width (e.g. a CLIP-L 768)."""
    try:
        tokens = conditioning[0][0]
    except (TypeError, IndexError, KeyError):
        raise ValueError("expected ComfyUI CONDITIONING (a list of [tokens, options]) from CLIP Text Encode") from None
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3:
        raise ValueError("expected ComfyUI CONDITIONING whose tokens are a [1, L, D] tensor")
    if tokens.shape[-1] != width:
        raise ValueError(f"its tokens are {tokens.shape[-1]} wide; the model needs {width} (Wan's umT5-XXL: load "
                         "umt5_xxl with core Load CLIP, type 'wan')")
    return fit_length(tokens[:1].float().cpu(), length)


# --------------------------------------------------------------------------- smoke files
_SMOKE_PIECES = list("▁abcdefghijklmnopqrstuvwxyz0123456789,.!?'-") + ["▁a", "▁the"]


def write_smoke_text_encoder(folder: Path, width: int, seed: int = 0) -> None:
    """A tiny random ``UMT5EncoderModel`` (``d_model = width``) in ``folder/text_encoder`` and a
    tiny Unigram tokenizer (lower-case letters, digits, punctuation) in ``folder/tokenizer``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel
    folder = Path(folder)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(p, -1.0) for p in _SMOKE_PIECES]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    (folder / "tokenizer").mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer" / "tokenizer.json"))
    T5TokenizerFast(tokenizer_file=str(folder / "tokenizer" / "tokenizer.json"), eos_token="</s>", pad_token="<pad>",
                    unk_token="<unk>", extra_ids=0).save_pretrained(str(folder / "tokenizer"))
    config = UMT5Config(vocab_size=len(vocab), d_model=width, d_kv=8, d_ff=2 * width, num_layers=1, num_heads=2,
                        relative_attention_num_buckets=8, relative_attention_max_distance=16,
                        feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(seed)
    UMT5EncoderModel(config).save_pretrained(str(folder / "text_encoder"))
