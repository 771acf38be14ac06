"""Foreground colour estimation and compositing for soft mattes.

Compositing the *original* pixels with a soft alpha leaves a fringe of the old
background in hair and motion blur. :func:`estimate_foreground` estimates the pure
foreground colour F with blur-fusion (Forte & Pitie, "Approximate Fast Foreground
Colour Estimation", ICIP 2021): local, alpha-weighted means of F and B are corrected
so that ``alpha*F + (1-alpha)*B`` reproduces the image, once with a large and once with
a small radius. Box blurs use summed-area tables, so the cost does not depend on the
radius.

Shapes: images ``[N,H,W,3]`` float 0..1, alpha ``[N,H,W]`` 0..1.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

_EPS = 1e-5


def _box_1d(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Mean over a window of ``2*radius+1`` along ``dim``, shrunk at the borders."""
    n = x.shape[dim]
    csum = torch.cumsum(x.double(), dim=dim)
    csum = torch.cat([torch.zeros_like(csum.narrow(dim, 0, 1)), csum], dim=dim)
    idx = torch.arange(n, device=x.device)
    hi = (idx + radius + 1).clamp(max=n)
    lo = (idx - radius).clamp(min=0)
    total = csum.index_select(dim, hi) - csum.index_select(dim, lo)
    shape = [1] * x.dim()
    shape[dim] = n
    return (total / (hi - lo).view(shape).to(total.dtype)).to(x.dtype)


def box_blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Box blur of ``[..., H, W]`` with a ``(2r+1)^2`` window (normalised at the borders)."""
    if radius <= 0:
        return x
    return _box_1d(_box_1d(x, radius, -1), radius, -2)


def _fusion_step(image, fg, bg, alpha, radius):
    """One blur-fusion step; all ``[N,C,H,W]`` (alpha ``[N,1,H,W]``)."""
    blurred_alpha = box_blur(alpha, radius)
    blurred_fg = box_blur(fg * alpha, radius) / (blurred_alpha + _EPS)
    blurred_bg = box_blur(bg * (1 - alpha), radius) / ((1 - blurred_alpha) + _EPS)
    fg = blurred_fg + alpha * (image - alpha * blurred_fg - (1 - alpha) * blurred_bg)
    return fg.clamp(0.0, 1.0), blurred_bg


@torch.no_grad()
def estimate_foreground(image: torch.Tensor, alpha: torch.Tensor, radii: Sequence[int] = (90, 6)) -> torch.Tensor:
    """Foreground colours ``[N,H,W,3]`` for ``image`` ``[N,H,W,3]`` with matte ``alpha`` ``[N,H,W]``.

    Where alpha is 1 the result is the image; where alpha is 0 it is an extrapolation of
    nearby foreground colours (invisible after compositing).
    """
    img = image.permute(0, 3, 1, 2).float()
    a = alpha.unsqueeze(1).float()
    fg, bg = img, img
    for radius in radii:
        fg, bg = _fusion_step(img, fg, bg, a, int(radius))
    return fg.permute(0, 2, 3, 1).to(image.dtype)


def parse_color(text: str) -> tuple[float, float, float]:
    """``"#00FF00"``, ``"0,255,0"`` or ``"0,1,0"`` (all <= 1) -> RGB floats 0..1."""
    s = text.strip()
    try:
        if s.startswith("#") and len(s) == 7:
            return tuple(int(s[i:i + 2], 16) / 255.0 for i in (1, 3, 5))
        parts = [float(p) for p in s.replace(" ", "").split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or any(p < 0 for p in parts):
        raise ValueError(f"colour '{text}' is not '#RRGGBB' or 'r,g,b'")
    scale = 1.0 if all(p <= 1.0 for p in parts) else 255.0
    if any(p > scale for p in parts):
        raise ValueError(f"colour '{text}' has components above 255")
    return tuple(p / scale for p in parts)


def fit_background(background: torch.Tensor, count: int, height: int, width: int, first: int = 0) -> torch.Tensor:
    """Background IMAGE ``[M,h,w,3]`` -> frames ``first .. first+count-1`` as ``[count,H,W,3]``:
    scaled to cover, centre-cropped (never stretched); one frame repeats, a clip loops."""
    bg = background.permute(0, 3, 1, 2).float()
    scale = max(height / bg.shape[-2], width / bg.shape[-1])
    hw = (max(height, round(bg.shape[-2] * scale)), max(width, round(bg.shape[-1] * scale)))
    if hw != tuple(bg.shape[-2:]):
        bg = F.interpolate(bg, size=hw, mode="bilinear", align_corners=False, antialias=scale < 1)
    top, left = (hw[0] - height) // 2, (hw[1] - width) // 2
    bg = bg[:, :, top:top + height, left:left + width].permute(0, 2, 3, 1)
    index = (torch.arange(count) + first) % bg.shape[0]
    return bg[index]


def composite(foreground: torch.Tensor, alpha: torch.Tensor, background, first: int = 0) -> torch.Tensor:
    """``alpha*F + (1-alpha)*B``; ``background`` an RGB tuple or an IMAGE batch (fitted,
    its frame ``first`` under the first frame)."""
    n, h, w = alpha.shape
    if isinstance(background, torch.Tensor):
        bg = fit_background(background, n, h, w, first).to(foreground.dtype)
    else:
        bg = torch.tensor(background, dtype=foreground.dtype).view(1, 1, 1, 3)
    a = alpha.unsqueeze(-1).to(foreground.dtype)
    return (a * foreground + (1 - a) * bg).clamp(0.0, 1.0)
