"""Camera conversions at the edges: other conventions and file formats <-> :class:`CameraBatch`.

Inside the pack cameras are always OpenCV camera-to-world with normalised intrinsics
(see :mod:`.geometry`). Everything that speaks another convention goes through here:

=====================  ====================================================================
OpenGL / Blender       camera x right, y **up**, z **backward** (looks along -z). Same world,
                       camera y and z axes flipped: ``c2w_cv = c2w_gl @ diag(1,-1,-1,1)``.
RealEstate10K ``.txt`` first line: the video URL; then one line per frame:
                       ``timestamp_us fx fy cx cy 0 0 w2c(3x4, row-major)`` (19 numbers),
                       intrinsics normalised, w2c in OpenCV. No image size in the file.
nerfstudio             ``transforms.json``: OpenGL c2w in ``frames[i].transform_matrix``;
``transforms.json``    pixel ``fl_x fl_y cx cy w h`` globally or per frame (``camera_angle_x``
                       of the Blender/instant-ngp variant is accepted too).
ReCamMaster json       ``{"frame0": {"cam01": "[r r r 0] [r r r 0] [r r r 0] [x y z 1]", ...}, ...}``:
                       Unreal Engine poses (x forward, y right, z up, left-handed, centimetres)
                       written in the row-vector convention (translation in the last row).
                       ReCamMaster reads them as ``M.T[:, [1,2,0,3]]``, negates column 1 and
                       divides the translation by 100, which gives OpenCV camera axes in a
                       left-handed world; here the world y axis is negated as well, so the
                       world is right-handed (z up, metres). Relative poses, which is all
                       ReCamMaster feeds its network, are unchanged by that world flip. No
                       intrinsics in the file.
plain JSON (ours)      ``{"format": "cvs_cameras", "version": 1, "width": W, "height": H,
                       "frames": [{"c2w": 4x4, "K": 3x3}, ...]}``: OpenCV c2w, normalised K.
                       Readers also accept ``"convention": "opengl"`` (c2w in OpenGL/Blender
                       axes) and ``"fov_deg"`` (vertical) instead of ``"K"`` per frame.
=====================  ====================================================================

Every loader returns a :class:`CameraBatch`; every saver writes one. Parse errors raise
:class:`CameraFormatError` (a ``ValueError``) saying what is wrong and where.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from .geometry import CameraBatch, intrinsics_from_fov, look_at, normalize_intrinsics, rigid_inverse

FORMATS = ("cvs_json", "realestate10k_txt", "nerfstudio_json", "recammaster_json")
_GL_FLIP = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


class CameraFormatError(ValueError):
    """A camera file or text that cannot be read (message names the place and the problem)."""


# ---- conventions -------------------------------------------------------------------------
def opengl_to_opencv(c2w: torch.Tensor) -> torch.Tensor:
    """OpenGL/Blender c2w ``[...,4,4]`` (x right, y up, looks along -z) to OpenCV (x right,
    y down, z forward): flip the camera's y and z axes (columns 1 and 2). Its own inverse."""
    return c2w.to(torch.float32) @ _GL_FLIP.to(c2w.device)


def opencv_to_opengl(c2w: torch.Tensor) -> torch.Tensor:
    """OpenCV c2w ``[...,4,4]`` to OpenGL/Blender axes (the same flip as :func:`opengl_to_opencv`)."""
    return opengl_to_opencv(c2w)


def from_opengl(c2w_gl: torch.Tensor, K: torch.Tensor, width: int, height: int) -> CameraBatch:
    """A :class:`CameraBatch` from OpenGL/Blender c2w ``[N,4,4]`` and normalised K ``[N,3,3]``."""
    return CameraBatch(opengl_to_opencv(torch.as_tensor(c2w_gl)), K, width, height)


def to_opengl(cams: CameraBatch) -> torch.Tensor:
    """The batch's c2w in OpenGL/Blender axes ``[N,4,4]``."""
    return opencv_to_opengl(cams.c2w)


# ---- helpers -------------------------------------------------------------------------------
def _matrix(value, shape: tuple[int, int], where: str) -> torch.Tensor:
    try:
        t = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError):
        raise CameraFormatError(f"{where} is not a numeric {shape[0]}x{shape[1]} matrix") from None
    if shape == (4, 4) and tuple(t.shape) == (3, 4):
        t = torch.cat([t, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=t.dtype)])
    if tuple(t.shape) != shape:
        raise CameraFormatError(f"{where} has shape {list(t.shape)}, expected {shape[0]}x{shape[1]}")
    return t


def _batch(c2w: torch.Tensor, K: torch.Tensor, width: int, height: int, source: str) -> CameraBatch:
    try:
        return CameraBatch(c2w.float(), K.float(), width, height)
    except ValueError as exc:
        raise CameraFormatError(f"{source}: {exc}") from None


def _read_json(path) -> object:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CameraFormatError(f"{path} is not valid JSON: {exc}") from None


def _write_text(path, text: str) -> Path:
    """Write ``text`` atomically (temporary file then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def _rows(t: torch.Tensor) -> list:
    return [[float(x) for x in row] for row in t.tolist()]


# ---- plain JSON (ours) --------------------------------------------------------------------
def cameras_to_dict(cams: CameraBatch) -> dict:
    """The plain JSON form of a batch (OpenCV c2w, normalised K)."""
    return {"format": "cvs_cameras", "version": 1, "convention": "opencv",
            "width": cams.width, "height": cams.height,
            "frames": [{"c2w": _rows(c), "K": _rows(k)} for c, k in zip(cams.c2w.cpu(), cams.K.cpu())]}


def cameras_from_dict(data, source: str = "camera JSON") -> CameraBatch:
    """Read the plain JSON form (see the module docstring); ``source`` names it in errors."""
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise CameraFormatError(f"{source}: expected an object with a 'frames' list")
    try:
        width, height = int(data["width"]), int(data["height"])
    except (KeyError, TypeError, ValueError):
        raise CameraFormatError(f"{source}: 'width' and 'height' (integers, pixels) are required") from None
    convention = str(data.get("convention", "opencv")).lower()
    if convention not in ("opencv", "opengl", "blender"):
        raise CameraFormatError(f"{source}: 'convention' is '{convention}', expected 'opencv' or 'opengl'")
    frames = data["frames"]
    if not frames:
        raise CameraFormatError(f"{source}: 'frames' is empty; expected at least one camera")
    c2ws, Ks = [], []
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict) or "c2w" not in frame:
            raise CameraFormatError(f"{source}: frame {i} has no 'c2w' 4x4 matrix")
        c2ws.append(_matrix(frame["c2w"], (4, 4), f"{source}: frame {i} 'c2w'"))
        if "K" in frame:
            Ks.append(_matrix(frame["K"], (3, 3), f"{source}: frame {i} 'K'"))
        elif "fov_deg" in frame:
            try:
                Ks.append(intrinsics_from_fov(float(frame["fov_deg"]), width, height).double())
            except (TypeError, ValueError) as exc:
                raise CameraFormatError(f"{source}: frame {i} 'fov_deg': {exc}") from None
        else:
            raise CameraFormatError(f"{source}: frame {i} has neither 'K' (normalised 3x3) nor 'fov_deg'")
    c2w = torch.stack(c2ws)
    if convention != "opencv":
        c2w = opengl_to_opencv(c2w.float()).double()
    return _batch(c2w, torch.stack(Ks), width, height, source)


def load_cvs_json(path) -> CameraBatch:
    """Load the plain JSON form from ``path``."""
    return cameras_from_dict(_read_json(path), str(path))


def save_cvs_json(cams: CameraBatch, path) -> Path:
    """Write the plain JSON form to ``path``."""
    return _write_text(path, json.dumps(cameras_to_dict(cams), indent=1))


def keyframes_from_text(text: str, width: int, height: int, fov_deg: float = 54.0,
                        up=(0.0, -1.0, 0.0)) -> CameraBatch:
    """Keyframe cameras from JSON text: a list of keyframes, ``{"frames": [...]}``, or a whole
    plain cvs_cameras document (which then also sets width and height).

    Each keyframe is an object with either ``"c2w"`` (OpenCV 4x4 or 3x4) or ``"position"``
    and ``"look_at"`` (3 numbers each; optional ``"up"``, default world up -y), and
    optionally ``"K"`` (normalised 3x3) or ``"fov_deg"`` (vertical; default ``fov_deg``).
    Example: ``[{"position": [0,0,0], "look_at": [0,0,1]}, {"position": [1,0,0], "look_at": [0,0,2]}]``.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CameraFormatError(f"keyframes are not valid JSON ({exc}); expected a JSON list such as "
                                '[{"position": [0, 0, 0], "look_at": [0, 0, 1]}, {"position": [1, 0, 0], "look_at": [0, 0, 2]}]') from None
    if isinstance(data, dict) and "width" in data and "height" in data:
        return cameras_from_dict(data, "keyframes")
    frames = data.get("frames") if isinstance(data, dict) else data
    if not isinstance(frames, list) or not frames:
        raise CameraFormatError("keyframes must be a non-empty JSON list of objects (or {'frames': [...]})")
    c2ws, Ks = [], []
    for i, kf in enumerate(frames):
        where = f"keyframe {i}"
        if not isinstance(kf, dict):
            raise CameraFormatError(f"{where} is a {type(kf).__name__}, expected an object")
        if "c2w" in kf:
            c2w = _matrix(kf["c2w"], (4, 4), f"{where} 'c2w'").float()
        elif "position" in kf and "look_at" in kf:
            pos = _matrix([kf["position"]], (1, 3), f"{where} 'position'")[0].float()
            tgt = _matrix([kf["look_at"]], (1, 3), f"{where} 'look_at'")[0].float()
            kf_up = _matrix([kf.get("up", list(up))], (1, 3), f"{where} 'up'")[0].float()
            if not (torch.isfinite(pos).all() and torch.isfinite(tgt).all()):
                raise CameraFormatError(f"{where} has NaN or infinite values")
            if (tgt - pos).norm() < 1e-9:
                raise CameraFormatError(f"{where}: 'look_at' equals 'position'")
            try:
                c2w = look_at(pos, tgt, kf_up)
            except ValueError as exc:
                raise CameraFormatError(f"{where}: {exc}") from None
        else:
            raise CameraFormatError(f"{where} needs 'c2w' or both 'position' and 'look_at'")
        c2ws.append(c2w)
        if "K" in kf:
            Ks.append(_matrix(kf["K"], (3, 3), f"{where} 'K'").float())
        else:
            try:
                Ks.append(intrinsics_from_fov(float(kf.get("fov_deg", fov_deg)), width, height))
            except (TypeError, ValueError) as exc:
                raise CameraFormatError(f"{where} 'fov_deg': {exc}") from None
    return _batch(torch.stack(c2ws), torch.stack(Ks), width, height, "keyframes")


# ---- RealEstate10K -------------------------------------------------------------------------
def load_realestate10k(path, width: int, height: int) -> CameraBatch:
    """Load a RealEstate10K camera file (see the module docstring).

    Lines that do not hold 19 numbers (the URL line, blank lines) are skipped. The file has
    no image size, so ``width`` and ``height`` say which size the cameras refer to.
    """
    c2ws, Ks = [], []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if len(parts) != 19:
            if lineno > 1 and parts:
                raise CameraFormatError(f"{path}:{lineno}: expected 19 numbers "
                                        f"(timestamp fx fy cx cy 0 0 and a 3x4 w2c), got {len(parts)}")
            continue
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise CameraFormatError(f"{path}:{lineno}: not all of the 19 fields are numbers") from None
        fx, fy, cx, cy = values[1:5]
        Ks.append(torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64))
        w2c = torch.eye(4, dtype=torch.float64)
        w2c[:3] = torch.tensor(values[7:19], dtype=torch.float64).view(3, 4)
        c2ws.append(torch.linalg.inv(w2c))
    if not c2ws:
        raise CameraFormatError(f"{path}: no camera lines (timestamp fx fy cx cy 0 0 w2c[12]) were found")
    return _batch(torch.stack(c2ws), torch.stack(Ks), width, height, str(path))


def save_realestate10k(cams: CameraBatch, path, url: str = "https://www.youtube.com/watch?v=unknown",
                       fps: float = 30.0) -> Path:
    """Write a RealEstate10K camera file. Timestamps are ``round(i * 1e6 / fps)``
    microseconds; the first line is ``url``. Skew and the image size are not stored."""
    w2c = rigid_inverse(cams.c2w.double().cpu())
    K = cams.K.double().cpu()
    lines = [url]
    for i in range(len(cams)):
        nums = [K[i, 0, 0], K[i, 1, 1], K[i, 0, 2], K[i, 1, 2], 0.0, 0.0, *w2c[i, :3].reshape(-1).tolist()]
        lines.append(" ".join([str(round(i * 1e6 / fps))] + [repr(float(x)) for x in nums]))
    return _write_text(path, "\n".join(lines) + "\n")


# ---- nerfstudio --------------------------------------------------------------------------
def _ns_intrinsics(frame: dict, meta: dict, where: str, width: int | None, height: int | None):
    def get(key):
        return frame.get(key, meta.get(key))
    w, h = get("w"), get("h")
    w = int(w) if w is not None else width
    h = int(h) if h is not None else height
    if w is None or h is None:
        raise CameraFormatError(f"{where}: no image size ('w', 'h') in the file; give width and height")
    fl_x, fl_y = get("fl_x"), get("fl_y")
    if fl_x is None and get("camera_angle_x") is not None:
        fl_x = 0.5 * w / math.tan(0.5 * float(get("camera_angle_x")))
    if fl_y is None and get("camera_angle_y") is not None:
        fl_y = 0.5 * h / math.tan(0.5 * float(get("camera_angle_y")))
    if fl_x is None and fl_y is None:
        raise CameraFormatError(f"{where}: no focal length ('fl_x'/'fl_y' or 'camera_angle_x')")
    fl_x = float(fl_x if fl_x is not None else fl_y)
    fl_y = float(fl_y if fl_y is not None else fl_x)
    cx = float(get("cx")) if get("cx") is not None else w / 2.0
    cy = float(get("cy")) if get("cy") is not None else h / 2.0
    Kp = torch.tensor([[fl_x, 0.0, cx], [0.0, fl_y, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return normalize_intrinsics(Kp, w, h), w, h


def load_nerfstudio(path, width: int | None = None, height: int | None = None) -> CameraBatch:
    """Load a nerfstudio / instant-ngp ``transforms.json`` (OpenGL c2w, pixel intrinsics).

    Per-frame intrinsics override the global ones. The batch refers to the first frame's
    image size (``width``/``height`` are used only when the file has no ``w``/``h``).
    Distortion coefficients are ignored (pinhole cameras).
    """
    meta = _read_json(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise CameraFormatError(f"{path}: expected an object with a non-empty 'frames' list")
    c2ws, Ks, size = [], [], None
    for i, frame in enumerate(meta["frames"]):
        where = f"{path}: frame {i}"
        if not isinstance(frame, dict) or "transform_matrix" not in frame:
            raise CameraFormatError(f"{where} has no 'transform_matrix'")
        c2ws.append(_matrix(frame["transform_matrix"], (4, 4), f"{where} 'transform_matrix'"))
        K, w, h = _ns_intrinsics(frame, meta, where, width, height)
        Ks.append(K)
        size = size or (w, h)
    c2w = opengl_to_opencv(torch.stack(c2ws).float()).double()
    return _batch(c2w, torch.stack(Ks), size[0], size[1], str(path))


def save_nerfstudio(cams: CameraBatch, path, image_pattern: str = "images/frame_{:05d}.png") -> Path:
    """Write a nerfstudio ``transforms.json`` (camera_model PINHOLE, OpenGL c2w). Shared
    intrinsics go to the top level, otherwise to every frame. ``file_path`` entries follow
    ``image_pattern`` with 1-based frame numbers."""
    Kp = cams.pixel_K().double().cpu()
    c2w_gl = opencv_to_opengl(cams.c2w.cpu()).double()

    def intr(k):
        return {"fl_x": float(k[0, 0]), "fl_y": float(k[1, 1]), "cx": float(k[0, 2]), "cy": float(k[1, 2])}

    shared = bool((Kp - Kp[0]).abs().max() < 1e-9)
    meta: dict = {"camera_model": "PINHOLE", "w": cams.width, "h": cams.height}
    if shared:
        meta.update(intr(Kp[0]))
    frames = []
    for i in range(len(cams)):
        frame = {"file_path": image_pattern.format(i + 1), "transform_matrix": _rows(c2w_gl[i])}
        if not shared:
            frame.update(intr(Kp[i]))
        frames.append(frame)
    meta["frames"] = frames
    return _write_text(path, json.dumps(meta, indent=1))


# ---- ReCamMaster -------------------------------------------------------------------------
_UE_ROW = re.compile(r"\[([^\[\]]*)\]")
# With T the column-vector UE camera-to-world (the file's matrix transposed):
# ours = S @ T @ A (translation divided by the unit), where A picks the camera axes
# (ours x = UE y "right", ours y = -UE z "down", ours z = UE x "forward") and S negates
# the world y axis to make the world right-handed.
_UE_AXES = torch.tensor([[0.0, 0.0, 1.0, 0.0],
                         [1.0, 0.0, 0.0, 0.0],
                         [0.0, -1.0, 0.0, 0.0],
                         [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
_WORLD_FLIP = torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=torch.float64))


def _parse_ue_matrix(text, where: str) -> torch.Tensor:
    if not isinstance(text, str):
        raise CameraFormatError(f"{where}: expected a matrix string '[a b c d] [e f g h] ...', "
                                f"got {type(text).__name__}")
    rows = _UE_ROW.findall(text)
    try:
        m = torch.tensor([[float(x) for x in row.replace(",", " ").split()] for row in rows], dtype=torch.float64)
    except (ValueError, TypeError):
        raise CameraFormatError(f"{where}: matrix string has non-numeric entries: {text[:80]!r}") from None
    if tuple(m.shape) != (4, 4):
        raise CameraFormatError(f"{where}: expected 4 rows of 4 numbers, got {text[:80]!r}")
    return m


def recammaster_cameras(path) -> list[str]:
    """Camera names in a ReCamMaster json (the keys of ``frame0``, e.g. ``cam01``)."""
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("frame0"), dict):
        raise CameraFormatError(f"{path}: expected an object with 'frame0', 'frame1', ... keys")
    return sorted(data["frame0"])


def load_recammaster(path, camera: str = "", width: int = 832, height: int = 480, fov_deg: float = 50.0,
                     units_per_meter: float = 100.0, frame_stride: int = 1) -> CameraBatch:
    """Load one camera's trajectory from a ReCamMaster ``camera_extrinsics.json``.

    The poses are the file's **absolute** Unreal Engine poses converted to the pack's axes
    (module docstring): OpenCV camera-to-world ``[N,4,4]`` in a right-handed z-up world, in
    metres (the file's translation divided by ``units_per_meter``). ReCamMaster feeds its
    network each pose relative to the path's first camera; the Memory-V2V re-render does
    that where it builds the camera embedding
    (:func:`consistent_video.memory_v2v_nodes.pipeline.camera_rows`), so the batch is not
    re-expressed here and other nodes keep the file's world.

    Args:
        camera: key such as ``"cam01"`` (``""`` = the first camera in ``frame0``).
        width, height, fov_deg: image size and vertical field of view (the file has no
            intrinsics).
        units_per_meter: the file's translation unit (Unreal: centimetres, 100).
        frame_stride: keep frames ``0, s, 2s, ...`` (ReCamMaster conditions on every 4th).
    """
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("frame0"), dict):
        raise CameraFormatError(f"{path}: expected an object with 'frame0', 'frame1', ... keys")
    camera = camera or sorted(data["frame0"])[0]
    count = 0
    while f"frame{count}" in data:
        count += 1
    mats = []
    for i in range(0, count, max(1, int(frame_stride))):
        entry = data[f"frame{i}"]
        if not isinstance(entry, dict) or camera not in entry:
            raise CameraFormatError(f"{path}: 'frame{i}' has no camera '{camera}' "
                                    f"(cameras in frame0: {', '.join(sorted(data['frame0']))})")
        T = _parse_ue_matrix(entry[camera], f"{path}: frame{i}/{camera}").T
        c2w = _WORLD_FLIP @ T @ _UE_AXES
        c2w[:3, 3] /= units_per_meter
        mats.append(c2w)
    K = intrinsics_from_fov(fov_deg, width, height).double()
    return _batch(torch.stack(mats), K, width, height, str(path))


def save_recammaster(cams: CameraBatch, path, camera: str = "cam01", units_per_meter: float = 100.0) -> Path:
    """Write the batch as one camera (``camera``) of a ReCamMaster json, one ``frame{i}``
    per camera (the inverse of :func:`load_recammaster`; intrinsics are not stored)."""
    data = {}
    inv_axes = torch.linalg.inv(_UE_AXES)
    for i, c2w in enumerate(cams.c2w.double().cpu()):
        c = c2w.clone()
        c[:3, 3] *= units_per_meter
        T = _WORLD_FLIP @ c @ inv_axes
        rows = T.T.tolist()
        data[f"frame{i}"] = {camera: " ".join("[" + " ".join(repr(float(x)) for x in r) + "]" for r in rows)}
    return _write_text(path, json.dumps(data, indent=1))


# ---- dispatch -----------------------------------------------------------------------------
def detect_format(path) -> str:
    """Guess the format of a camera file from its extension and top-level keys."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        return "realestate10k_txt"
    data = _read_json(path)
    if isinstance(data, dict):
        if isinstance(data.get("frame0"), dict):
            return "recammaster_json"
        frames = data.get("frames")
        first = frames[0] if isinstance(frames, list) and frames and isinstance(frames[0], dict) else {}
        if data.get("format") == "cvs_cameras" or "c2w" in first or {"width", "height"} <= set(data):
            return "cvs_json"
        if "transform_matrix" in first or {"fl_x", "camera_angle_x"} & set(data):
            return "nerfstudio_json"
    raise CameraFormatError(f"{path}: cannot tell the camera format (expected a RealEstate10K .txt, a nerfstudio "
                            f"transforms.json, a ReCamMaster json or the plain cvs_cameras JSON)")


def load_cameras(path, format: str = "auto", width: int = 832, height: int = 480, fov_deg: float = 50.0,
                 camera: str = "") -> CameraBatch:
    """Load any supported format (``"auto"`` detects it). ``width``/``height`` are used by
    formats without an image size (RealEstate10K, ReCamMaster, nerfstudio without w/h),
    ``fov_deg`` and ``camera`` only by ReCamMaster."""
    if format == "auto":
        format = detect_format(path)
    if format == "cvs_json":
        return load_cvs_json(path)
    if format == "realestate10k_txt":
        return load_realestate10k(path, width, height)
    if format == "nerfstudio_json":
        return load_nerfstudio(path, width, height)
    if format == "recammaster_json":
        return load_recammaster(path, camera, width, height, fov_deg)
    raise CameraFormatError(f"unknown camera format '{format}'; expected auto or one of {', '.join(FORMATS)}")


EXTENSIONS = {"cvs_json": "json", "realestate10k_txt": "txt", "nerfstudio_json": "json", "recammaster_json": "json"}


def save_cameras(cams: CameraBatch, path, format: str) -> Path:
    """Save in one of :data:`FORMATS` (the extension is not changed)."""
    if format == "cvs_json":
        return save_cvs_json(cams, path)
    if format == "realestate10k_txt":
        return save_realestate10k(cams, path)
    if format == "nerfstudio_json":
        return save_nerfstudio(cams, path)
    if format == "recammaster_json":
        return save_recammaster(cams, path)
    raise CameraFormatError(f"unknown camera format '{format}'; expected one of {', '.join(FORMATS)}")


# ---- VideoMV camera data -------------------------------------------------------------------
# VideoMV's UNet gets, per view, its 4x4 camera-to-world flattened row-major (16 floats).
# Those matrices keep OpenGL camera axes but live in a world reached from ours by
#   S       = diag(1, -1, -1): our world -> VideoMV's OpenGL y-up world, (x, y, z) -> (x, -y, -z)
#   flip_yz = [[1,0,0],[0,0,-1],[0,1,0]]: OpenGL y-up -> Blender z-up, (x, y, z) -> (x, -z, y)
#   P       = [[0,-1,0],[1,0,0],[0,0,1]]: the entrance scripts' "negate row 1, swap rows 0 and 1",
#             (x, y, z) -> (-y, x, z), a +90 degree rotation about z
# applied in that order, i.e. _VIDEOMV_WORLD = P @ flip_yz @ S: (x, y, z) -> (-z, x, -y).
_VIDEOMV_WORLD = torch.tensor([[0.0, 0.0, -1.0, 0.0],
                               [1.0, 0.0, 0.0, 0.0],
                               [0.0, -1.0, 0.0, 0.0],
                               [0.0, 0.0, 0.0, 1.0]])
VIDEOMV_FOV_DEG = 39.6  # vertical field of view of VideoMV's LGM cameras (core/options.py, fovy)


def to_videomv_cameras(cams: CameraBatch) -> torch.Tensor:
    """The 16 floats per view that VideoMV's UNet camera MLP gets: ``[N,16]`` float32.

    VideoMV (``utils/camera_utils.get_camera`` and the inference entrance scripts) builds
    each view's camera-to-world ``M`` as an OpenGL look-at with world up +y -- camera at
    ``d (cosE sinA, sinE, cosE cosA)``, ``forward = normalise(target - position)``,
    ``right = normalise(forward x up)``, ``up' = right x forward``, columns ``[right, up',
    -forward]`` (camera x right, y up, z backward) -- then left-multiplies ``flip_yz``
    (OpenGL y-up world to Blender z-up), then negates row 1 and swaps rows 0 and 1 (a +90
    degree world rotation about z), and flattens ``M`` row-major, ``[0,0,0,1]`` row included.

    Our batch is OpenCV c2w in a world that is VideoMV's OpenGL world mapped by
    ``(x, y, z) -> (x, -y, -z)`` (see :func:`trajectories.orbit`, whose orbit is exactly
    VideoMV's: same azimuth start and direction), so::

        M = W @ c2w_cv @ G,   G = diag(1, -1, -1, 1)  (OpenCV -> OpenGL camera axes)
        W = P @ flip_yz @ S = [[0, 0,-1, 0],           S       = diag(1, -1, -1, 1)
                               [1, 0, 0, 0],           flip_yz = [[1,0,0,0],[0,0,-1,0],[0,1,0,0],[0,0,0,1]]
                               [0,-1, 0, 0],           P       = [[0,-1,0,0],[1,0,0,0],[0,0,1,0],[0,0,0,1]]
                               [0, 0, 0, 1]]

    ``W`` maps our world point ``(x, y, z)`` to ``(-z, x, -y)``: VideoMV's final world is
    z-up and its azimuth-0 camera sits on the +x axis. Translations are passed in scene
    units unchanged; VideoMV was trained at distance 2.0 (T2V) and 1.7 (I2V) from the
    origin. Intrinsics and image size are not part of the data.
    """
    world = _VIDEOMV_WORLD.to(cams.device)
    return (world @ cams.c2w @ _GL_FLIP.to(cams.device)).reshape(len(cams), 16)


def from_videomv_cameras(data, width: int = 256, height: int = 256,
                         fov_deg: float = VIDEOMV_FOV_DEG) -> CameraBatch:
    """The inverse of :func:`to_videomv_cameras`: VideoMV camera data ``[N,16]`` (or one
    ``[16]``) to a :class:`CameraBatch` (``c2w_cv = W^T @ M @ G``, same matrices).

    The data carries no intrinsics, so every camera gets :func:`intrinsics_from_fov`
    (``fov_deg`` vertical, default VideoMV's LGM field of view) at ``width x height``.
    Raises :class:`CameraFormatError` for a wrong shape or a matrix that is not rigid.
    """
    m = torch.as_tensor(data, dtype=torch.float64)
    if m.dim() == 1:
        m = m.unsqueeze(0)
    if m.dim() != 2 or m.shape[1] != 16 or m.shape[0] < 1:
        raise CameraFormatError(f"VideoMV camera data must have shape [N,16] (a row-major 4x4 per view), "
                                f"got {list(m.shape)}")
    world_t = _VIDEOMV_WORLD.to(m.device, torch.float64).T
    c2w = world_t @ m.reshape(-1, 4, 4) @ _GL_FLIP.to(m.device, torch.float64)
    K = intrinsics_from_fov(fov_deg, width, height).double()
    return _batch(c2w, K, width, height, "VideoMV camera data")
