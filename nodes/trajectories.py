"""Camera trajectories: orbits, navigation actions, concatenation and keyframe paths.

All poses are OpenCV camera-to-world (see :mod:`cameras`). The world's **up direction is
-y** (:data:`WORLD_UP`): the identity camera (VMem's first view) stands level, looking
along +z with the image's up pointing to world -y. Orbits and turns use that axis.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import torch

from .cameras import (CameraBatch, axis_angle_to_matrix, interpolate_poses, intrinsics_from_fov, look_at)

WORLD_UP = torch.tensor([0.0, -1.0, 0.0])

# action name -> (kind, sign); kind: "yaw" (world up), "pitch" (camera x), or a move axis
ACTIONS = {
    "turn_left": ("yaw", 1.0), "turn_right": ("yaw", -1.0),
    "look_up": ("pitch", 1.0), "look_down": ("pitch", -1.0),
    "move_forward": ("forward", 1.0), "move_backward": ("forward", -1.0), "move_back": ("forward", -1.0),
    "move_right": ("right", 1.0), "move_left": ("right", -1.0),
    "move_up": ("up", 1.0), "move_down": ("up", -1.0),
}
ANGLE_ACTIONS = tuple(k for k, (kind, _) in ACTIONS.items() if kind in ("yaw", "pitch"))
EASINGS = ("linear", "ease_in_out", "ease_in", "ease_out", "cosine")


def orbit(views: int, elevation_deg: float, distance: float, azimuth_start_deg: float = 0.0,
          azimuth_range_deg: float = 360.0, width: int = 576, height: int = 576, fov_deg: float = 54.0,
          target: Sequence[float] = (0.0, 0.0, 0.0)) -> CameraBatch:
    """``views`` cameras on a circle around ``target``, all looking at it, level (no roll).

    Camera ``i`` sits at azimuth ``A_i`` and elevation ``E`` (above the target for E > 0)::

        position = target + distance * (cosE sinA, -sinE, -cosE cosA)

    which is VideoMV's orbit (OpenGL y-up: ``(cosE sinA, sinE, cosE cosA)``) with the world
    turned into the OpenCV frame ``(x, -y, -z)``. So azimuth 0, elevation 0 is the identity
    rotation at ``(0, 0, -distance)``, and as the azimuth grows the camera moves to its
    right. A full turn (``|range| == 360``) spaces the views ``range / views`` apart without
    repeating the start; any other range includes both ends.
    """
    if views < 1:
        raise ValueError(f"orbit needs at least 1 view, got {views}")
    if not abs(elevation_deg) < 90.0:
        raise ValueError(f"orbit elevation must be strictly between -90 and 90 degrees, got {elevation_deg}")
    if not distance > 0:
        raise ValueError(f"orbit distance must be positive, got {distance}")
    full = math.isclose(abs(azimuth_range_deg), 360.0)
    if full or views == 1:
        steps = torch.arange(views, dtype=torch.float64) * (azimuth_range_deg / views)
    else:
        steps = torch.linspace(0.0, azimuth_range_deg, views, dtype=torch.float64)
    az = torch.deg2rad(azimuth_start_deg + steps)
    el = math.radians(elevation_deg)
    offset = torch.stack([math.cos(el) * torch.sin(az), torch.full_like(az, -math.sin(el)),
                          -math.cos(el) * torch.cos(az)], -1).float() * distance
    centre = torch.tensor(target, dtype=torch.float32)
    c2w = look_at(centre + offset, centre, WORLD_UP)
    K = intrinsics_from_fov(fov_deg, width, height)
    return CameraBatch(c2w, K.expand(views, 3, 3), width, height)


def parse_actions(text: str) -> list[tuple[str, float]]:
    """Parse ``"turn_left 30, move_forward 0.5"`` into ``[("turn_left", 30.0), ...]``.

    Actions are separated by commas, semicolons or new lines; each is a name from
    :data:`ACTIONS` and an amount (degrees for turns and looks, scene units for moves).
    Raises ``ValueError`` naming the bad item.
    """
    items = [s.strip() for s in re.split(r"[,;\n]", text or "") if s.strip()]
    if not items:
        raise ValueError("no actions were given; write e.g. 'turn_left 30, move_forward 0.5'")
    out = []
    for item in items:
        parts = item.split()
        name = parts[0].lower()
        if name not in ACTIONS:
            raise ValueError(f"unknown action '{parts[0]}' in '{item}'; expected one of {', '.join(ACTIONS)}")
        if len(parts) != 2:
            raise ValueError(f"action '{item}' needs exactly one amount, e.g. '{name} "
                             f"{'30' if name in ANGLE_ACTIONS else '0.5'}'")
        try:
            amount = float(parts[1])
        except ValueError:
            raise ValueError(f"amount '{parts[1]}' of action '{item}' is not a number") from None
        if not math.isfinite(amount):
            raise ValueError(f"amount of action '{item}' is not finite")
        out.append((name, amount))
    return out


def _action_poses(c2w: torch.Tensor, name: str, amount: float, count: int) -> torch.Tensor:
    """``count`` poses ``[count,4,4]`` from one action, ending at its full amount."""
    kind, sign = ACTIONS[name]
    t = torch.arange(1, count + 1, dtype=torch.float32) / count
    if kind in ("yaw", "pitch"):
        # the rotation by t * angle about a fixed axis: the slerp path between the start and
        # end orientations (and it keeps the requested direction for turns over 180 degrees)
        angle = torch.deg2rad(torch.tensor(sign * amount, dtype=torch.float32)) * t
        out = c2w.expand(count, 4, 4).clone()
        if kind == "yaw":
            out[:, :3, :3] = axis_angle_to_matrix(WORLD_UP.expand(count, 3), angle) @ c2w[:3, :3]
        else:
            out[:, :3, :3] = c2w[:3, :3] @ axis_angle_to_matrix(torch.tensor([1.0, 0.0, 0.0]).expand(count, 3), angle)
        return out
    direction = {"forward": c2w[:3, 2], "right": c2w[:3, 0], "up": WORLD_UP}[kind]
    end = c2w.clone()
    end[:3, 3] = c2w[:3, 3] + sign * amount * direction
    return interpolate_poses(c2w, end, t)


def navigate(actions: Sequence[tuple[str, float]], poses_per_action: int = 4, start: CameraBatch | None = None,
             include_start: bool = False, width: int = 576, height: int = 576,
             fov_deg: float = 54.0) -> CameraBatch:
    """Walk a camera through navigation actions (VMem's controls), ``poses_per_action``
    poses each, interpolated from the previous pose (translation by lerp, rotation along
    the slerp path).

    - ``turn_left/right A``: yaw by A degrees about the world up axis through the camera
      centre (turn_left turns the view to the left).
    - ``look_up/down A``: pitch by A degrees about the camera's own x axis.
    - ``move_forward/backward D``: along the optical axis (camera +z); ``move_left/right D``
      along camera x; ``move_up/down D`` along the world up axis.

    Starts from the **last** camera of ``start`` (its K and size are kept) or, without one,
    an identity camera with ``fov_deg`` at ``width x height``. Returns the new poses
    (``len(actions) * poses_per_action``), preceded by the start pose if ``include_start``.
    """
    if poses_per_action < 1:
        raise ValueError(f"poses_per_action must be at least 1, got {poses_per_action}")
    if start is None:
        start = CameraBatch.identity(1, width, height, fov_deg)
    current = start.c2w[-1].cpu()
    K = start.K[-1].cpu()
    poses = [current[None]] if include_start else []
    for name, amount in actions:
        if name not in ACTIONS:
            raise ValueError(f"unknown action '{name}'; expected one of {', '.join(ACTIONS)}")
        new = _action_poses(current, name, float(amount), poses_per_action)
        poses.append(new)
        current = new[-1]
    if not poses:
        raise ValueError("navigate: no actions and include_start is off, so there is no camera to return")
    c2w = torch.cat(poses)
    return CameraBatch(c2w, K.expand(len(c2w), 3, 3), start.width, start.height)


def concatenate(batches: Sequence[CameraBatch], skip_repeated_joint: bool = True, atol: float = 1e-5) -> CameraBatch:
    """Join batches in order. With ``skip_repeated_joint`` the first camera of a batch is
    dropped when it equals the previous batch's last camera (pose and K within ``atol``),
    so joined paths do not stall for a frame. All batches must share the image size."""
    batches = list(batches)
    if not batches:
        raise ValueError("concatenate needs at least one camera batch")
    parts = [batches[0]]
    for b in batches[1:]:
        prev = parts[-1]
        if (skip_repeated_joint and torch.allclose(b.c2w[0], prev.c2w[-1].to(b.device), atol=atol)
                and torch.allclose(b.K[0], prev.K[-1].to(b.device), atol=atol)):
            if len(b) == 1:
                continue  # nothing but the repeated camera
            b = b[1:]
        parts.append(b)
    return CameraBatch.cat(parts)


def ease(t: torch.Tensor, easing: str) -> torch.Tensor:
    """Map fractions ``t`` in [0, 1] through an easing curve of :data:`EASINGS`
    (``ease_in_out`` is the smoothstep ``3t^2 - 2t^3``; ``cosine`` is ``(1 - cos(pi t)) / 2``, the
    timing of VideoScene's interpolated render paths)."""
    if easing == "linear":
        return t
    if easing == "ease_in_out":
        return t * t * (3 - 2 * t)
    if easing == "ease_in":
        return t * t
    if easing == "ease_out":
        return 1 - (1 - t) ** 2
    if easing == "cosine":
        return (1 - torch.cos(math.pi * t)) / 2
    raise ValueError(f"unknown easing '{easing}'; expected one of {', '.join(EASINGS)}")


def keyframe_path(keyframes: CameraBatch, frames_per_segment: int, easing: str = "linear") -> CameraBatch:
    """A path through every keyframe: between consecutive keyframes, ``frames_per_segment``
    poses at eased fractions ``ease(k / frames_per_segment)``, k = 0..S-1 (rotation by
    slerp, centre and normalised K by lerp), then the last keyframe. Returns
    ``(len(keyframes) - 1) * frames_per_segment + 1`` cameras; each keyframe appears exactly.
    """
    if frames_per_segment < 1:
        raise ValueError(f"frames_per_segment must be at least 1, got {frames_per_segment}")
    if easing not in EASINGS:
        raise ValueError(f"unknown easing '{easing}'; expected one of {', '.join(EASINGS)}")
    c2w_in, K_in = keyframes.c2w.cpu(), keyframes.K.cpu()
    t = ease(torch.arange(frames_per_segment, dtype=torch.float32) / frames_per_segment, easing)
    c2ws, Ks = [], []
    for j in range(len(keyframes) - 1):
        c2ws.append(interpolate_poses(c2w_in[j], c2w_in[j + 1], t))
        Ks.append((1 - t)[:, None, None] * K_in[j] + t[:, None, None] * K_in[j + 1])
    c2ws.append(c2w_in[-1:])
    Ks.append(K_in[-1:])
    return CameraBatch(torch.cat(c2ws), torch.cat(Ks), keyframes.width, keyframes.height)
