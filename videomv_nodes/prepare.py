"""Input preparation for VideoMV's image-to-multiview mode (its ``utils/recenter_i2v.py``):
crop the object to its alpha bounding box, scale it so the longest side is 200 px, and
centre it on a white 256 x 256 canvas.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ALPHA_THRESHOLD = 0.5 / 255.0  # alpha above this is object: any alpha that is not 0 in 8 bits


def prepare_object_image(image, alpha, size: int = 256, object_size: int = 200,
                         background: float = 1.0) -> torch.Tensor:
    """The RGB part of :func:`prepare_object`: ``[size,size,3]``."""
    return prepare_object(image, alpha, size, object_size, background)[0]


def prepare_object(image, alpha, size: int = 256, object_size: int = 200,
                   background: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Recentre an object for VideoMV's I2V mode.

    Args:
        image: ``[H,W,3]`` RGB in 0..1 (tensor or array), straight (not premultiplied) colour.
        alpha: ``[H,W]`` object opacity in 0..1.
        size: side of the square output canvas in pixels.
        object_size: length in pixels of the object's longest side after scaling
            (``1 <= object_size <= size``).
        background: grey level 0..1 of the canvas and of the object's transparent parts
            (VideoMV: white, 1.0).
    Returns:
        ``([size,size,3], [size,size])`` float32 on the input's device: the RGB in 0..1, and
        the object's opacity on the canvas (0 outside the pasted object).

    Steps: the bounding box of ``alpha > ALPHA_THRESHOLD`` (both ends included) is cropped;
    premultiplied colour and alpha are resized together with antialiased bilinear
    interpolation (a triangle filter widened by the scale factor when shrinking, like PIL's
    BILINEAR; plain bilinear when enlarging) so that the longest side is exactly
    ``object_size`` and the other ``round(side * scale)`` (at least 1); the result is
    composited over ``background`` (``rgb * a + background * (1 - a)``) and pasted with its
    top-left corner at ``((size - h) // 2, (size - w) // 2)``. VideoMV itself resizes the
    straight RGBA with bicubic, drops the box's last row and column and truncates the
    scaled size; premultiplying keeps the removed background from bleeding into the edges.

    Raises ``ValueError`` for wrong shapes or sizes and for an empty mask.
    """
    image = torch.as_tensor(image)
    alpha = torch.as_tensor(alpha, device=image.device)
    if image.dim() != 3 or image.shape[-1] != 3:
        raise ValueError(f"prepare_object: image must be [H,W,3] RGB, got shape {list(image.shape)}")
    if alpha.dim() != 2 or tuple(alpha.shape) != tuple(image.shape[:2]):
        raise ValueError(f"prepare_object: alpha must be [H,W] = {list(image.shape[:2])} like the image, "
                         f"got shape {list(alpha.shape)}")
    if not 1 <= object_size <= size:
        raise ValueError(f"prepare_object: object_size must be between 1 and size ({size}), got {object_size}")
    if not 0.0 <= background <= 1.0:
        raise ValueError(f"prepare_object: background must be a grey level in 0..1, got {background}")
    image = image.to(torch.float32)
    alpha = alpha.to(torch.float32).clamp(0.0, 1.0)
    rows = (alpha > ALPHA_THRESHOLD).any(1).nonzero()
    cols = (alpha > ALPHA_THRESHOLD).any(0).nonzero()
    if len(rows) == 0:
        raise ValueError("prepare_object: no object: the mask is empty")
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    a = alpha[y0:y1, x0:x1]
    rgba = torch.cat([image[y0:y1, x0:x1] * a[..., None], a[..., None]], -1)  # premultiplied
    h, w = y1 - y0, x1 - x0
    scale = object_size / max(h, w)
    new_h = object_size if h >= w else max(1, round(h * scale))
    new_w = object_size if w > h else max(1, round(w * scale))
    rgba = F.interpolate(rgba.permute(2, 0, 1)[None], size=(new_h, new_w), mode="bilinear",
                         align_corners=False, antialias=True)[0].permute(1, 2, 0).clamp(0.0, 1.0)
    canvas = torch.zeros(size, size, 4, dtype=torch.float32, device=image.device)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = rgba
    return canvas[..., :3] + background * (1.0 - canvas[..., 3:]), canvas[..., 3]
