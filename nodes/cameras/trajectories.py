"""Camera trajectories: orbits, navigation actions, concatenation, keyframe paths and the
path between two views (VideoScene's rotation about the views' focus point).

All poses are OpenCV camera-to-world (see :mod:`.geometry`). The world's **up direction is
-y** (:data:`WORLD_UP`): the identity camera (VMem's first view) stands level, looking
along +z with the image's up pointing to world -y. Orbits and turns use that axis.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import torch

from .geometry import CameraBatch, axis_angle_to_matrix, interpolate_poses, intrinsics_from_fov, look_at

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


# ---- the path between two views ----------------------------------------------------------------
PATH_RULES = ("pivot", "straight")
_PARALLEL_EPS = 1e-4  # | |cos(angle between the optical axes)| - 1 | below this: parallel (about 0.8 degrees)


def _are_parallel(a: torch.Tensor, b: torch.Tensor, eps: float = _PARALLEL_EPS) -> bool:
    return abs(abs(float(a @ b)) - 1.0) < eps


def focus_point(c2w0: torch.Tensor, c2w1: torch.Tensor, eps: float = _PARALLEL_EPS) -> tuple[torch.Tensor, bool]:
    """The point where the optical axes of two cameras (OpenCV c2w ``[4,4]``; axis = the line
    through the camera centre along camera +z) meet: ``(point [3] float64, parallel)``.

    For axes that are not parallel this is the **least-squares intersection** of the two lines,
    the point with the least summed squared distance to both: the midpoint of their closest
    points (their exact intersection when they cross). The axes are lines, not rays, so the
    point can lie behind a camera, as in the original.

    Fallback: axes within ``eps`` of parallel or anti-parallel (``||cos| - 1| < eps``, about
    0.8 degrees for the default 1e-4, the original's threshold) have no such point (or one
    far away); then the **midpoint of the two camera centres** is returned with ``parallel``
    True. Same rule as NoPoSplat/VideoScene ``interpolate_extrinsics`` (see
    :func:`path_between`).
    """
    c2w0, c2w1 = c2w0.to(torch.float64), c2w1.to(torch.float64)
    a, b = c2w0[:3, 2] / c2w0[:3, 2].norm(), c2w1[:3, 2] / c2w1[:3, 2].norm()
    o0, o1 = c2w0[:3, 3], c2w1[:3, 3]
    if _are_parallel(a, b, eps):
        return (o0 + o1) / 2, True
    # closest points o0 + s a and o1 + u b: the segment between them is perpendicular to both lines
    c, w = a @ b, o0 - o1
    aw, bw = a @ w, b @ w
    s = (c * bw - aw) / (1 - c * c)
    u = (bw - c * aw) / (1 - c * c)
    return ((o0 + s * a) + (o1 + u * b)) / 2, False


def _pivot_frame(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """Columns ``[x, y, z]``: y the unit normal of the plane of the optical axes a and b (the
    axis the camera swings about), z = a, x = y cross z. A b parallel to a is first replaced
    by world +z, then (if still parallel) world +y, to pick some plane."""
    for fallback in ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0)):
        if _are_parallel(a, b, eps):
            b = torch.tensor(fallback, dtype=a.dtype)
    y = torch.linalg.cross(a, b)
    y = y / y.norm()
    return torch.stack([torch.linalg.cross(y, a), y, a], -1)


def _local_frame(axis: torch.Tensor, look: torch.Tensor) -> torch.Tensor:
    """Columns ``[axis x look, axis, look]`` (``[...,3,3]``): where the camera-to-pivot offset is measured."""
    axis = axis.expand_as(look)
    return torch.stack([torch.linalg.cross(axis, look, dim=-1), axis, look], -1)


def _rot_y(angle: torch.Tensor) -> torch.Tensor:
    c, s, o, z = torch.cos(angle), torch.sin(angle), torch.ones_like(angle), torch.zeros_like(angle)
    return torch.stack([c, z, s, z, o, z, -s, z, c], -1).reshape(*angle.shape, 3, 3)


def _rot_z(angle: torch.Tensor) -> torch.Tensor:
    c, s, o, z = torch.cos(angle), torch.sin(angle), torch.ones_like(angle), torch.zeros_like(angle)
    return torch.stack([c, -s, z, s, c, z, z, z, o], -1).reshape(*angle.shape, 3, 3)


def _interpolate_angle(a: float, b: float, t: torch.Tensor) -> torch.Tensor:
    """From angle a to angle b (radians) the short way round: both are taken modulo 2 pi and a
    is shifted by -2 pi, 0 or +2 pi, whichever leaves b closest (a tie of exactly pi goes to
    +2 pi, as in the original), then lerp."""
    tau = 2 * math.pi
    a, b = a % tau, b % tau
    d, d_left, d_right = abs(b - a), abs(b - (a - tau)), abs(b - (a + tau))
    if d < d_left and d < d_right:
        start = a
    elif d_left < d_right:
        start = a - tau
    else:
        start = a + tau
    return start + (b - start) * t


def interpolate_about_focus(c2w0: torch.Tensor, c2w1: torch.Tensor, t: torch.Tensor,
                            eps: float = _PARALLEL_EPS) -> torch.Tensor:
    """Poses ``[T,4,4]`` (float64, OpenCV c2w) from ``c2w0`` to ``c2w1`` (``[4,4]``) at fractions
    ``t [T]``, swinging about the optical axes' :func:`focus_point` ``p``.

    Each end pose becomes 5 numbers (in float64):

    - the offset ``p - centre`` in the camera's local frame ``[n x look, n, look]``, with ``n``
      the unit normal of the plane of both optical axes (distance to ``p`` across, along the
      swing axis ``n``, and along the view direction);
    - two angles of the rotation ``F^T R`` relative to the pivot frame ``F = [n x a, n, a]``
      (``a`` the first camera's optical axis): intrinsic Euler ``Y-X-Z`` angles, of which the
      Y angle (swing about ``n``) and the Z angle (roll about the view direction) are kept; the
      X angle is zero because every view direction here is perpendicular to ``n``.

    The offsets are lerped, the two angles interpolated the short way round; then the
    rotation is rebuilt as ``F Ry(swing) Rz(roll)`` and the centre as ``p - L(t) offset(t)``.
    So a camera looking at ``p`` keeps looking at it, its distance to ``p`` lerps, and it
    moves on an arc about ``p`` (a spiral when the distances differ). Parallel axes: ``p`` is
    the midpoint of the centres and ``n`` comes from world +z (or +y), which makes the centre
    move on the straight line between them with the roll interpolated. Views looking in
    exactly opposite directions make a half turn about that ``n``; which way round is then a
    tie decided by rounding (in the original too).
    """
    c2w0, c2w1 = c2w0.to(torch.float64).cpu(), c2w1.to(torch.float64).cpu()
    t = torch.as_tensor(t, dtype=torch.float64).cpu()
    pivot, _ = focus_point(c2w0, c2w1, eps)
    looks = [c2w[:3, 2] / c2w[:3, 2].norm() for c2w in (c2w0, c2w1)]
    frame = _pivot_frame(looks[0], looks[1], eps)
    axis = frame[:, 1]
    offsets, angles = [], []
    for c2w, look in zip((c2w0, c2w1), looks):
        offsets.append(_local_frame(axis, look).T @ (pivot - c2w[:3, 3]))
        m = frame.T @ c2w[:3, :3]
        angles.append((math.atan2(float(m[0, 2]), float(m[2, 2])), math.atan2(float(m[1, 0]), float(m[1, 1]))))
    offset = offsets[0] + (offsets[1] - offsets[0]) * t[:, None]  # [T,3]
    swing = _interpolate_angle(angles[0][0], angles[1][0], t)
    roll = _interpolate_angle(angles[0][1], angles[1][1], t)
    rotation = frame @ _rot_y(swing) @ _rot_z(roll)  # [T,3,3]
    local = _local_frame(axis, rotation[:, :, 2])
    out = torch.eye(4, dtype=torch.float64).repeat(len(t), 1, 1)
    out[:, :3, :3] = rotation
    out[:, :3, 3] = pivot - (local @ offset[:, :, None])[:, :, 0]
    return out


def same_view(a: CameraBatch, b: CameraBatch, atol: float = 1e-6) -> bool:
    """Whether the first cameras of ``a`` and ``b`` have the same pose and intrinsics (within
    ``atol``): a path between them would stand still."""
    c2w_b, K_b = b.c2w[0].to(a.device), b.K[0].to(a.device)
    return bool(torch.allclose(a.c2w[0], c2w_b, atol=atol) and torch.allclose(a.K[0], K_b, atol=atol))


def path_between(views: CameraBatch, frames: int = 49, easing: str = "cosine", rule: str = "pivot") -> CameraBatch:
    """A camera path of ``frames`` cameras from ``views[0]`` to ``views[1]`` (a batch of exactly
    2 cameras, OpenCV c2w ``[2,4,4]``, normalised K ``[2,3,3]``), VideoScene's render path.

    Fractions ``t_k = ease(k / (frames - 1), easing)``, k = 0..frames-1 (both ends included;
    ``cosine`` is VideoScene's ``(cos(pi (t + 1)) + 1) / 2``, with 49 frames its demo). Per
    frame, normalised intrinsics are lerped and the pose follows ``rule``:

    - ``"pivot"``: :func:`interpolate_about_focus`, the rule of NoPoSplat's
      ``interpolate_extrinsics`` as used by VideoScene (hanyang-21/VideoScene at 70e9c84,
      ``noposplat/src/visualization/camera_trajectory/interpolation.py``:
      ``interpolate_extrinsics`` lines 207-255 with the focus point at 223-240 and
      ``intersect_rays`` 19-48, the pivot frame ``generate_rotation_coordinate_frame`` 64-82,
      the pivot parameters 107-159, the offset lerp and short-way angle interpolation 162-204,
      the intrinsics lerp 8-16; the timing and 49 frames in
      ``noposplat/src/model/model_wrapper.py`` lines 676-680). Computed in float64 throughout
      (the original rebuilds the poses in float32).
    - ``"straight"``: the camera centre on the straight line between the two, the rotation by
      slerp (as :func:`keyframe_path`).

    The two input cameras are returned exactly as the first and last frame. Returns a
    :class:`CameraBatch` ``[frames]`` with the views' image size. Raises ``ValueError`` for
    fewer than 2 frames, an unknown easing or rule, or a batch that is not 2 cameras.
    """
    if len(views) != 2:
        raise ValueError(f"path_between needs a batch of exactly 2 cameras (start and end), got {len(views)}")
    if frames < 2:
        raise ValueError(f"path_between needs at least 2 frames (the two views), got {frames}")
    if easing not in EASINGS:
        raise ValueError(f"unknown easing '{easing}'; expected one of {', '.join(EASINGS)}")
    if rule not in PATH_RULES:
        raise ValueError(f"unknown path rule '{rule}'; expected one of {', '.join(PATH_RULES)}")
    c2w_in, K_in = views.c2w.cpu(), views.K.cpu()
    t = ease(torch.linspace(0.0, 1.0, frames, dtype=torch.float64), easing)
    if rule == "pivot":
        c2w = interpolate_about_focus(c2w_in[0], c2w_in[1], t).float()
    else:
        c2w = interpolate_poses(c2w_in[0], c2w_in[1], t.float())
    K = ((1 - t)[:, None, None] * K_in[0].double() + t[:, None, None] * K_in[1].double()).float()
    for k, which in ((0, 0), (-1, 1)):  # the inputs themselves at both ends, bit for bit
        c2w[k], K[k] = c2w_in[which], K_in[which]
    return CameraBatch(c2w, K, views.width, views.height)
