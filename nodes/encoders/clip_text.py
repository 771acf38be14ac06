"""OpenCLIP ViT-H-14 text conditioning as SD 2.x, ModelScope-T2V and VideoMV use it.

The prompt is tokenised to 77 tokens with the CLIP BPE (``<|startoftext|>``, the text,
``<|endoftext|>``, then id 0 as padding -- open_clip pads with 0, not with the end token,
and the padded positions are part of the conditioning), run through the text transformer
**without its last block**, and the result normalised by the final layer norm (open_clip's
``ln_final``): ``[N, 77, 1024]`` tokens (VideoMV's ``FrozenOpenCLIPTtxtVisualEmbedder``,
``layer="penultimate"``; in transformers: ``final_layer_norm(hidden_states[-2])``). There is
no attention mask besides the causal one.

- :class:`TextEmbedder` ``prompts -> [N, length, dim]``, implemented by
  :class:`TransformersCLIPTextEmbedder` (a transformers ``CLIPTextModel(WithProjection)`` and a
  ``CLIPTokenizer``) and :class:`ComfyCLIPTextEmbedder` (ComfyUI's ``comfy.sd.CLIP`` of an
  SD 2.x checkpoint, duck-typed).

The tokenizer: an open_clip checkpoint holds no vocabulary, and the pack ships none. The
BPE files come from the laion release (:data:`TOKENIZER_REPO`; the same BPE as every CLIP)::

    tokenizer/vocab.json
    tokenizer/merges.txt

:data:`TOKENIZER_OPTIONAL_FILES` lists them in the form of ``Family.optional_files``, so the
shared loader downloads them next to the weights when online.
"""
from __future__ import annotations

import abc
import json
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, Union

import torch

from ..comfy.runtime import module_place
from .checks import check_chunk_size
from ..comfy.weights import WeightsError

if TYPE_CHECKING:  # imported where used
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

CONTEXT_LENGTH = 77
OPEN_CLIP_PAD_ID = 0  # open_clip's tokenizer pads with 0 ("!"); so do SD 2.x and ComfyUI's SD2 tokenizer
VIT_H_TEXT_DIM = 1024  # token width of OpenCLIP ViT-H-14's text transformer
TOKENIZER_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
TOKENIZER_OPTIONAL_FILES = {f"tokenizer/{name}": f"{TOKENIZER_REPO}:{name}" for name in TOKENIZER_FILES}
"""``{path in a weights folder: "repo:path"}`` for ``Family.optional_files``."""

Prompts = Union[str, Sequence[str]]


def _prompt_list(prompts: Prompts) -> list[str]:
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not items:
        raise ValueError("expected at least one prompt, got none")
    bad = [type(p).__name__ for p in items if not isinstance(p, str)]
    if bad:
        raise ValueError(f"prompts must be strings, got {', '.join(sorted(set(bad)))}")
    return items


# --------------------------------------------------------------------------- interface
class TextEmbedder(abc.ABC):
    """Prompts -> CLIP text tokens (the cross-attention context of a text-conditioned UNet).

    ``embed(prompts: str | list[str]) -> [N, length, dim]`` float32 on the CPU.
    """

    dim: int
    length: int

    @abc.abstractmethod
    def embed(self, prompts: Prompts) -> torch.Tensor:
        """``N`` prompts -> ``[N, length, dim]`` float32 on the CPU."""


# --------------------------------------------------------------------------- tokenizer
def load_clip_tokenizer(folder: Path) -> CLIPTokenizer:
    """The CLIP BPE tokenizer of a folder holding ``vocab.json`` and ``merges.txt``.

    Missing files give a :class:`WeightsError` naming them and where to get them
    (:data:`TOKENIZER_REPO`, files at the repository root).
    """
    from transformers import CLIPTokenizer
    folder = Path(folder)
    missing = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
    if missing:
        raise WeightsError(
            f"the CLIP tokenizer is missing {', '.join(str(folder / name) for name in missing)}. An open_clip "
            f"checkpoint holds no vocabulary: download {' and '.join(TOKENIZER_FILES)} from "
            f"https://huggingface.co/{TOKENIZER_REPO} (repository root) into {folder}.")
    try:
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # tokenizers / transformers raise their own types for malformed files
        raise WeightsError(f"the CLIP tokenizer in {folder} could not be read ({type(exc).__name__}: {exc})") from None


def tokenize(tokenizer: CLIPTokenizer, prompts: Prompts, length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """open_clip's tokenisation with a transformers ``CLIPTokenizer``: ``[N, length]`` int64.

    Each row is ``<|startoftext|>``, the BPE tokens, ``<|endoftext|>``, then
    :data:`OPEN_CLIP_PAD_ID` up to ``length``; a longer prompt is cut so that the row still
    ends with ``<|endoftext|>`` (open_clip: ``tokens[:length]``, last set to the end token).
    """
    rows = tokenizer(_prompt_list(prompts), truncation=True, max_length=length)["input_ids"]
    out = torch.full((len(rows), length), OPEN_CLIP_PAD_ID, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out


# --------------------------------------------------------------------------- adapters
class TransformersCLIPTextEmbedder(TextEmbedder):
    """:class:`TextEmbedder` over a transformers ``CLIPTextModelWithProjection`` or ``CLIPTextModel``.

    ``embed`` tokenises with :func:`tokenize` to ``length = max_position_embeddings`` (77) and
    returns ``final_layer_norm(hidden_states[-2])`` -- the penultimate block's output through
    the final layer norm (see the module doc) -- ``[N, length, hidden_size]`` (1024 for
    ViT-H-14) as float32 on the CPU. The projection, if any, is not used. The model runs on
    its own device and dtype, ``chunk_size`` prompts at a time.
    """

    def __init__(self, model: CLIPTextModelWithProjection | CLIPTextModel, tokenizer: CLIPTokenizer,
                 chunk_size: int = 8) -> None:
        self.model = model
        self.text_model = getattr(model, "text_model", model)
        config = self.text_model.config
        if config.num_hidden_layers < 2:
            raise ValueError("the penultimate-layer convention needs a text transformer of at least 2 blocks")
        if len(tokenizer) > config.vocab_size:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the text model only {config.vocab_size} "
                             f"embeddings: they do not belong together")
        self.tokenizer = tokenizer
        self.dim = int(config.hidden_size)
        self.length = int(config.max_position_embeddings)
        self.chunk_size = check_chunk_size(chunk_size)

    @torch.no_grad()
    def embed(self, prompts: Prompts) -> torch.Tensor:
        """``N`` prompts -> ``final_layer_norm(hidden_states[-2])``, ``[N, length, dim]`` float32 on the CPU."""
        ids = tokenize(self.tokenizer, prompts, self.length)
        device, _ = module_place(self.model)
        out = []
        for chunk in ids.split(self.chunk_size):
            hidden = self.text_model(input_ids=chunk.to(device), output_hidden_states=True).hidden_states[-2]
            out.append(self.text_model.final_layer_norm(hidden).float().cpu())
        return torch.cat(out)


class ComfyCLIPTextEmbedder(TextEmbedder):
    """:class:`TextEmbedder` over ComfyUI's ``comfy.sd.CLIP`` (what a CLIP socket carries), duck-typed.

    Calls ``clip.encode_from_tokens(clip.tokenize(prompt))`` per prompt and keeps the first
    ``length`` tokens. For an SD 2.x checkpoint's CLIP (``comfy/sd2_clip.py``: OpenCLIP
    ViT-H-14, ``layer="penultimate"`` = hidden layer 23 through the final layer norm, start
    49406, end 49407, padding 0, no attention mask) that is exactly this module's convention.
    Differences: ComfyUI's prompt weighting syntax ``(word:1.2)`` applies; a prompt longer than
    75 tokens is split by ComfyUI into 77-token chunks at word boundaries and only the first
    chunk is kept (VideoMV cuts the token list, so the first chunk may end a few tokens
    earlier); a ``CLIP Set Last Layer`` node changes the layer, which this adapter cannot see.

    Checks (``ValueError``): the object has ``tokenize`` and ``encode_from_tokens``; the tokens
    are ``expected_dim`` wide (an SD 1.x CLIP gives 768, SDXL 2048) and at least ``length`` long.
    """

    def __init__(self, clip: Any, expected_dim: int = VIT_H_TEXT_DIM, length: int = CONTEXT_LENGTH) -> None:
        if not callable(getattr(clip, "tokenize", None)) or not callable(getattr(clip, "encode_from_tokens", None)):
            raise ValueError(f"expected a ComfyUI CLIP (with tokenize and encode_from_tokens), got {type(clip).__name__}")
        self.clip = clip
        self.dim = int(expected_dim)
        self.length = int(length)

    @torch.no_grad()
    def embed(self, prompts: Prompts) -> torch.Tensor:
        """``N`` prompts -> ``[N, length, dim]`` float32 on the CPU (see the class doc)."""
        out = []
        for prompt in _prompt_list(prompts):
            cond = self.clip.encode_from_tokens(self.clip.tokenize(prompt))
            if isinstance(cond, (tuple, list)):  # (cond, pooled) with return_pooled=True
                cond = cond[0]
            if cond.dim() != 3 or cond.shape[-1] != self.dim:
                hint = {768: " (an SD 1.x CLIP)", 2048: " (an SDXL CLIP)"}.get(int(cond.shape[-1]), "")
                raise ValueError(f"this CLIP gives {int(cond.shape[-1])}-wide tokens{hint}; the {self.dim}-wide "
                                 f"OpenCLIP ViT-H-14 text encoder of an SD 2.x checkpoint is needed")
            if cond.shape[1] < self.length:
                raise ValueError(f"this CLIP gives {cond.shape[1]} tokens per prompt; {self.length} are needed")
            out.append(cond[:, :self.length].float().cpu())
        return torch.cat(out)


# --------------------------------------------------------------------------- smoke tokenizer
_SMOKE_CHARACTERS = string.ascii_lowercase + string.digits + string.punctuation
_SMOKE_MERGES = (("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"))


def _smoke_vocab() -> dict[str, int]:
    tokens = list(_SMOKE_CHARACTERS) + [c + "</w>" for c in _SMOKE_CHARACTERS]
    tokens += [a + b for a, b in _SMOKE_MERGES] + ["<|startoftext|>", "<|endoftext|>"]  # specials last, as in CLIP
    return {token: i for i, token in enumerate(tokens)}


SMOKE_VOCAB_SIZE = len(_smoke_vocab())
"""Size of :func:`write_smoke_tokenizer`'s vocabulary (the smoke text model's ``vocab_size``)."""


def write_smoke_tokenizer(folder: Path) -> None:
    """A tiny CLIP BPE tokenizer in the release layout (``vocab.json`` + ``merges.txt``): lower-case
    letters, digits and punctuation, each also as a word end (``</w>``), four merges, and the two
    special tokens last (:data:`SMOKE_VOCAB_SIZE` tokens). Other characters become ``<|endoftext|>``
    (CLIP's unknown token)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(_smoke_vocab()), encoding="utf-8")
    merges = "".join(f"{a} {b}\n" for a, b in _SMOKE_MERGES)
    (folder / "merges.txt").write_text("#version: 0.2\n" + merges, encoding="utf-8")
