"""Errors that name the node, the input and what was expected.

ComfyUI shows an exception's message in the UI, the headless runner prints it; both
read best when the message says *which node*, *which input* and *what was expected*.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch


class NodeInputError(ValueError):
    """Bad input to a node: ``"<node>: input '<input>' <problem>; expected <expected>"``."""

    def __init__(self, node: str, input_name: str, problem: str, expected: str | None = None):
        self.node, self.input_name, self.problem, self.expected = node, input_name, problem, expected
        msg = f"{node}: input '{input_name}' {problem}"
        if expected:
            msg += f"; expected {expected}"
        super().__init__(msg)


def input_error(node: str, exc: Exception, expected: Mapping[str, str],
                aliases: Optional[Mapping[str, str]] = None) -> NodeInputError:
    """A core check's ``ValueError`` as a :class:`NodeInputError` for the input it names.

    The core's text starts with a parameter name (``"overlap must be ...; got 5"``); ``aliases``
    maps core names to the node's input names where they differ (``{"length": "segment_length"}``).
    ``expected`` maps the node's input names to what each accepts; its first name is used when
    the text starts with none of them.
    """
    text = str(exc)
    names = {**{n: n for n in expected}, **(aliases or {})}
    core = next((n for n in names if text.startswith(n + " ")), None)
    name = names[core] if core else next(iter(expected))
    problem = text[len(core) + 1:] if core else text
    return NodeInputError(node, name, problem, expected[name])


def describe(value: Any) -> str:
    """Short description of a value for error messages (type and shape)."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)} ({str(value.dtype).replace('torch.', '')})"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(value)[:6]}"
    return f"a {type(value).__name__}"


def check_image(node: str, name: str, value: Any, *, min_frames: int = 1) -> torch.Tensor:
    """Validate a ComfyUI IMAGE ``[B,H,W,3]`` float 0..1 and return it.

    A MASK (``[B,H,W]``) or an RGBA image gets a message that says how to fix it.
    """
    expected = "an IMAGE tensor [frames, height, width, 3] with values 0..1"
    if not isinstance(value, torch.Tensor):
        raise NodeInputError(node, name, f"got {describe(value)}", expected)
    if value.dim() == 3:
        raise NodeInputError(node, name, f"got {describe(value)}, which is a MASK, not an IMAGE",
                             expected + " (convert with a 'Convert Mask to Image' node)")
    if value.dim() != 4 or value.shape[-1] not in (3, 4):
        raise NodeInputError(node, name, f"got {describe(value)}", expected)
    if value.shape[-1] == 4:
        raise NodeInputError(node, name, "has 4 channels (RGBA)",
                             expected + " (split the alpha into a MASK first)")
    if value.shape[0] < min_frames:
        raise NodeInputError(node, name, f"has {value.shape[0]} frames", f"at least {min_frames}")
    if value.shape[1] < 1 or value.shape[2] < 1:
        raise NodeInputError(node, name, f"has an empty frame size {value.shape[2]}x{value.shape[1]}", expected)
    if not torch.is_floating_point(value):
        raise NodeInputError(node, name, f"has integer dtype {value.dtype}", expected)
    return value


def check_mask(node: str, name: str, value: Any) -> torch.Tensor:
    """Validate a ComfyUI MASK ``[B,H,W]`` (a single ``[H,W]`` mask is given a batch axis)."""
    expected = "a MASK tensor [frames, height, width] with values 0..1"
    if not isinstance(value, torch.Tensor):
        raise NodeInputError(node, name, f"got {describe(value)}", expected)
    if value.dim() == 2:
        value = value.unsqueeze(0)
    if value.dim() == 4 and value.shape[-1] in (1, 3):
        raise NodeInputError(node, name, f"got {describe(value)}, which is an IMAGE, not a MASK",
                             expected + " (convert with a 'Convert Image to Mask' node)")
    if value.dim() != 3 or value.shape[0] < 1 or value.shape[1] < 1 or value.shape[2] < 1:
        raise NodeInputError(node, name, f"got {describe(value)}", expected)
    return value
