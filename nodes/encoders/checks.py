"""Input checks shared by the encoder adapters (:mod:`.vae`, :mod:`.clip`, :mod:`.clip_text`).

Each raises ``ValueError`` with a message that says what was expected and what came.
"""
from __future__ import annotations

import torch


def check_images(images: torch.Tensor, multiple: int = 1) -> None:
    """Require a non-empty ComfyUI IMAGE batch ``[N,H,W,3]`` whose H and W are multiples of ``multiple``."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] != 3:
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected images [N,H,W,3] (ComfyUI IMAGE layout), got {shape}")
    if images.shape[0] == 0:
        raise ValueError("expected at least one image, got an empty batch")
    height, width = images.shape[1:3]
    if height % multiple or width % multiple:
        raise ValueError(f"image size {height}x{width} is not a multiple of {multiple} (the autoencoder's "
                         f"downscale); resize or crop the frames first")


def check_latents(latents: torch.Tensor, channels: int) -> None:
    """Require a non-empty image-latent batch ``[N,channels,h,w]``."""
    if not isinstance(latents, torch.Tensor) or latents.dim() != 4 or latents.shape[1] != channels:
        shape = list(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(f"expected latents [N,{channels},h,w], got {shape}")
    if latents.shape[0] == 0:
        raise ValueError("expected at least one latent, got an empty batch")


def check_chunk_size(chunk_size: int) -> int:
    """``chunk_size`` as an int, at least 1."""
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    return int(chunk_size)
