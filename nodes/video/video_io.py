"""Video files and image sequences in and out, as float frames (PyAV + PIL).

Conventions
-----------
* A frame is a ``torch.Tensor [H,W,C]`` float32 in 0..1, channels last: C=3 RGB, C=4
  RGBA (straight, not premultiplied alpha), C=1 a grey matte (writing only). A batch
  is ``[T,H,W,C]``, which is ComfyUI's IMAGE layout.
* Frame rates are exact ``Fraction`` values (NTSC is ``30000/1001``, never 29.97).
* A "video" is a file FFmpeg can read, or a folder holding a PNG/JPG sequence (sorted
  naturally, so ``f2.png`` comes before ``f10.png``) with an optional ``sequence.json``
  ``{"fps": "30000/1001"}``; without it a sequence plays at 24 fps.
* YUV files are written with BT.709 colour and tagged as such; reading converts with
  the colourspace the file is tagged with (FFmpeg's default when untagged).
* Only the first video stream is read; audio is ignored.
"""
from __future__ import annotations

import hashlib
import json
import re
from contextlib import closing
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import chain, islice
from pathlib import Path
from typing import Iterator, Optional

import av
import numpy as np
import torch
from av.video.reformatter import Colorspace
from PIL import Image

from ..comfy import runtime

__all__ = [
    "VideoError", "VideoInfo", "VideoFormat", "FORMATS", "parse_fps", "format_fps",
    "probe", "resolve_input_path", "output_size", "read_frames", "load_frames", "source_fingerprint",
    "input_fingerprint", "VideoWriter", "WriteSettings", "DEFAULT_QUALITY", "next_output_path", "ui_entry",
    "ASSETS_DIR", "MAX_SIDE",
]

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
SEQUENCE_SIDECAR = "sequence.json"
DEFAULT_FPS = Fraction(24)  # a sequence without sidecar, a file that states no rate
_NTSC_RATES = tuple(Fraction(n * 1000, 1001) for n in (24, 30, 48, 60, 120))
# PyAV 17+ converts pixel formats on several threads, which races in its FFmpeg 8 swscale
# (random wrong pixels); older PyAV converts on one thread and has no such argument.
_ONE_THREAD = {"threads": 1} if int(av.__version__.split(".")[0]) >= 17 else {}
MAX_SIDE = 8192  # the largest width or height a resize asks for; any pair up to it is scalable


class VideoError(ValueError):
    """A video cannot be found, read or written; the message names the file and why."""


# --------------------------------------------------------------------------- frame rates
def parse_fps(value) -> Fraction:
    """Exact frame rate from a Fraction, int, float or string (``"30000/1001"``, ``"29.97"``, ``"24"``).

    Decimal spellings of NTSC rates (23.976/23.98, 29.97, 47.952, 59.94, 119.88) become
    the exact ``n*1000/1001`` fractions. Raises ``ValueError`` naming the value for
    zero, negative, NaN, infinite or unparsable input.
    """
    problem = f"frame rate {value!r} is not usable; expected a positive number or fraction like '24', '29.97' or '30000/1001'"
    if isinstance(value, bool):
        raise ValueError(problem)
    try:
        rate = Fraction(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        raise ValueError(problem) from None
    if rate <= 0:
        raise ValueError(problem)
    return next((ntsc for ntsc in _NTSC_RATES if abs(rate - ntsc) < Fraction(1, 200)), rate)


def format_fps(rate: Fraction) -> str:
    """``"30000/1001"`` for fractional rates, ``"25"`` for whole ones (parse_fps reads both)."""
    return str(Fraction(rate))


# --------------------------------------------------------------------------- probing
@dataclass
class VideoInfo:
    """What :func:`probe` found. ``frame_count_exact`` is False when the container does not
    store a frame count (WebM, some MKV) and it was estimated from the duration."""

    width: int
    height: int
    frame_rate: Fraction
    frame_count: int
    frame_count_exact: bool
    codec: str
    has_alpha: bool


def resolve_input_path(name: str, kind: str = "video") -> Path:
    """Find a file given by the user: an absolute or existing path as is, else a name
    relative to ComfyUI's input folder, else one of the pack's bundled ``assets/``
    (so ``cvs_sample.mp4`` works anywhere). Raises :class:`VideoError` listing the
    places searched; ``kind`` ("video", "image", "camera file", ...) names what it is in
    the messages."""
    text = str(name).strip().strip('"').strip("'")
    if not text:
        raise VideoError(f"no {kind} path was given; expected a file name in ComfyUI's input folder, one of the pack's bundled assets, or a full path")
    path = Path(text).expanduser()
    candidates = [path] if path.is_absolute() else [path, runtime.input_dir() / path, ASSETS_DIR / path]
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    searched = ", ".join(str(c.resolve()) for c in candidates)
    raise VideoError(f"{kind} '{text}' was not found (searched: {searched}); expected a file name in ComfyUI's input folder, one of the pack's bundled assets, or a full path")


def probe(path, kind: str = "video") -> VideoInfo:
    """Size, exact frame rate, frame count, codec and alpha of a video file or image folder.

    Decodes the first frame, so a file that opens but holds no decodable frame is
    rejected. Raises :class:`VideoError` for a missing, empty, non-video or frameless input;
    ``kind`` ("video" or "image") names what was expected in the messages.
    """
    path = Path(path)
    if not path.exists():
        raise VideoError(f"{kind} '{path}' does not exist")
    if path.is_dir():
        return _probe_sequence(path)
    if path.stat().st_size == 0:
        raise VideoError(f"{kind} '{path}' is an empty file (0 bytes)")
    readable = "a video" if kind == "video" else f"an {kind} or video" if kind[0] in "aeiou" else f"a {kind} or video"
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"'{path}' has no frames (it holds no video stream)")
            stream = container.streams.video[0]
            first = next(container.decode(stream), None)
            rate = parse_fps(stream.average_rate or stream.guessed_rate or DEFAULT_FPS)
            count, exact = stream.frames, stream.frames > 0
            if not exact:
                seconds = (float(stream.duration * stream.time_base) if stream.duration
                           else (container.duration or 0) / av.time_base)
                count = max(1, round(seconds * rate))
            codec = stream.codec_context.name
            has_alpha = stream.metadata.get("alpha_mode") == "1"
    except av.error.FFmpegError as exc:
        raise VideoError(f"'{path}' is not {readable} FFmpeg can read ({exc})") from None
    if first is None:
        raise VideoError(f"{kind} '{path}' has no frames")
    has_alpha = has_alpha or any(c.is_alpha for c in first.format.components)
    return VideoInfo(first.width, first.height, rate, count, exact, codec, has_alpha)


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _sequence_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _sequence_rate(folder: Path) -> Fraction:
    sidecar = folder / SEQUENCE_SIDECAR
    if not sidecar.exists():
        return DEFAULT_FPS
    try:
        return parse_fps(json.loads(sidecar.read_text())["fps"])
    except (ValueError, KeyError, TypeError) as exc:
        raise VideoError(f"'{sidecar}' must be JSON like {{\"fps\": \"30000/1001\"}} ({exc})") from None


def _probe_sequence(folder: Path) -> VideoInfo:
    files = _sequence_files(folder)
    if not files:
        raise VideoError(f"folder '{folder}' has no frames (no {'/'.join(IMAGE_SUFFIXES)} images)")
    try:
        with Image.open(files[0]) as image:
            width, height, codec = image.width, image.height, (image.format or "image").lower()
            has_alpha = "A" in image.getbands() or "transparency" in image.info
    except OSError as exc:
        raise VideoError(f"'{files[0]}' is not a readable image ({exc})") from None
    return VideoInfo(width, height, _sequence_rate(folder), len(files), True, codec, has_alpha)


def source_fingerprint(path) -> str:
    """Changes whenever the video changes: size and mtime of the file, or of every frame
    and the sidecar of an image folder (for ComfyUI's IS_CHANGED)."""
    path = Path(path)
    files = [*_sequence_files(path), path / SEQUENCE_SIDECAR] if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        if file.exists():
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def input_fingerprint(name: str) -> str | float:
    """``IS_CHANGED`` of a node that reads a file the user names (:func:`resolve_input_path`):
    its :func:`source_fingerprint`, or NaN (never cached) when it cannot be found, so the run
    reports the error."""
    try:
        return source_fingerprint(resolve_input_path(name))
    except VideoError:
        return float("nan")


# --------------------------------------------------------------------------- reading
def scalable(width: int, height: int) -> bool:
    """Whether FFmpeg's scaler takes a ``width x height`` picture: libavutil's image size check
    wants ``8 (width + 128) (height + 128) < 2^31`` (about 16128 x 16128 for a square; any
    size up to :data:`MAX_SIDE` on both sides passes)."""
    return 8 * (width + 128) * (height + 128) < 2**31 - 1


def output_size(info: VideoInfo, size) -> tuple[int, int]:
    """The ``(width, height)`` frames are read at: ``size=(width, height)`` with a 0 following
    the aspect ratio of ``info``, or ``None`` / ``(0, 0)`` for the source size. Raises
    ``ValueError`` for a negative size and :class:`VideoError` for a resize larger than FFmpeg
    can scale to (:func:`scalable`; image folders follow the same rule)."""
    if not size or tuple(size) == (0, 0):
        return info.width, info.height
    width, height = (int(s) for s in size)
    if width < 0 or height < 0:
        raise ValueError(f"size must be (width, height) >= 0, got {tuple(size)}")
    if width == 0:
        width = max(1, round(height * info.width / info.height))
    if height == 0:
        height = max(1, round(width * info.height / info.width))
    if not scalable(width, height):
        raise VideoError(f"resizing the {info.width}x{info.height} frames to {width}x{height} is more than FFmpeg "
                         f"can scale (it needs 8 (width + 128) (height + 128) < 2^31: up to {MAX_SIDE} on both "
                         "sides always works, about 16128x16128 at most)")
    return width, height


def _check_selection(start: int, end: Optional[int], stride: int, max_frames: int) -> None:
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if end is not None and end <= start:
        raise ValueError(f"end (exclusive) must be greater than start={start}, got {end}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if max_frames < 0:
        raise ValueError(f"max_frames must be >= 0 (0 = all), got {max_frames}")


def _decoded_frames(path: Path, alpha: bool) -> Iterator[av.VideoFrame]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            if alpha and stream.codec_context.name == "vp9" and stream.metadata.get("alpha_mode") == "1":
                # FFmpeg's native VP9 decoder drops the alpha plane; libvpx reads it.
                decoder = av.CodecContext.create("libvpx-vp9", "r")
                for packet in container.demux(stream):
                    yield from decoder.decode(packet)
            else:
                yield from container.decode(stream)
        except av.error.FFmpegError as exc:
            raise VideoError(f"decoding '{path}' failed ({exc})") from None


def _to_tensor(item, size: tuple[int, int], alpha: bool) -> torch.Tensor:
    """An image file (read with PIL) or a decoded frame as ``[H,W,3|4]`` float 0..1 at ``size``."""
    width, height = size
    if isinstance(item, Path):
        with Image.open(item) as image:
            image = image.convert("RGBA")
            if image.size != size:
                image = image.resize(size, Image.Resampling.BOX if width < image.width else Image.Resampling.BICUBIC)
            array = np.array(image)
    else:
        # 8-bit planar GBRA: FFmpeg 8's swscale leaves the last columns of packed RGBA
        # unwritten at some widths and reads white as 255/256 in 16-bit and float outputs
        # (tests/test_video_io.py::test_conversion_is_exact). BT.709 is named explicitly,
        # with an RGB target, because PyAV < 17 ignores the frame's colourspace tag.
        array = item.to_ndarray(format="gbrap", width=width, height=height, **_ONE_THREAD,
                                src_colorspace=Colorspace.ITU709 if item.colorspace == 1 else None,
                                dst_colorspace=Colorspace.DEFAULT,
                                interpolation="AREA" if width < item.width else "BICUBIC")
    return torch.from_numpy(array[..., :4 if alpha else 3]).float() / 255.0


def _frames(path: Path, start, end, stride, max_frames, out_size, alpha) -> Iterator[torch.Tensor]:
    source = (p for p in _sequence_files(path)) if path.is_dir() else _decoded_frames(path, alpha)
    with closing(source):
        selected = islice(source, start, end, stride)
        for item in islice(selected, max_frames) if max_frames else selected:
            yield _to_tensor(item, out_size, alpha)


def read_frames(path, start: int = 0, end: Optional[int] = None, stride: int = 1, max_frames: int = 0,
                size: Optional[tuple[int, int]] = None, alpha: bool = False) -> Iterator[torch.Tensor]:
    """Decode frames one at a time (the video is never held in memory as a whole).

    Yields ``[H,W,3]`` float32 0..1 frames, or ``[H,W,4]`` with ``alpha=True`` (alpha 1
    where the source has none). Selection: frame indices ``range(start, end, stride)``
    (``end`` exclusive, ``None`` = to the end), at most ``max_frames`` (0 = all); decoding
    runs sequentially from the first frame. ``size=(width, height)`` resizes every frame
    (area filter when shrinking, bicubic when enlarging); a 0 in one of them keeps the
    aspect ratio, ``None`` or ``(0, 0)`` keeps the size. Frames whose size differs from
    the first one (a size change mid-stream, a mixed image folder) are resized to it.
    The path is probed and the arguments checked when called, before the first frame.
    """
    _check_selection(start, end, stride, max_frames)
    path = Path(path)
    out_size = output_size(probe(path), size)
    return _frames(path, start, end, stride, max_frames, out_size, alpha)


def load_frames(path, start: int = 0, end: Optional[int] = None, stride: int = 1, max_frames: int = 0,
                size: Optional[tuple[int, int]] = None, alpha: bool = False,
                kind: str = "video") -> tuple[torch.Tensor, Fraction]:
    """All selected frames as one ``[T,H,W,C]`` float32 tensor, and the exact frame rate.

    Same arguments as :func:`read_frames` (``kind`` as in :func:`probe`). Reports progress and
    honours Cancel through ``runtime.Progress``. Raises :class:`VideoError` when the selection
    holds no frame.
    """
    _check_selection(start, end, stride, max_frames)
    path = Path(path)
    info = probe(path, kind)
    frames = _frames(path, start, end, stride, max_frames, output_size(info, size), alpha)
    first = next(frames, None)
    if first is None:
        raise VideoError(f"no frames selected from '{path}': it has {info.frame_count} frames, "
                         f"start={start}, end={end}, stride={stride}")
    expected = len(range(start, min(end or info.frame_count, info.frame_count), stride))
    with runtime.Progress(min(expected, max_frames) if max_frames else expected, "Loading video") as bar:
        def counted() -> Iterator[np.ndarray]:
            for frame in chain([first], frames):
                yield frame.numpy()
                bar.update()
        array = np.fromiter(counted(), dtype=np.dtype((np.float32, tuple(first.shape))))
    return torch.from_numpy(array), info.frame_rate


# --------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class VideoFormat:
    """A writer format. ``extension`` "" means a folder; ``alpha_pix_fmt`` None means no alpha.

    ``odd_pix_fmt`` replaces ``pix_fmt`` when width or height is odd (4:2:0 encoders
    that need even sizes switch to 4:4:4, so the file keeps the exact frame size).
    ``quality_option`` receives the writer's ``quality`` (a CRF: lower is better).
    """

    extension: str
    container: Optional[str]
    encoder: Optional[str]
    pix_fmt: str
    alpha_pix_fmt: Optional[str] = None
    odd_pix_fmt: Optional[str] = None
    min_size: int = 1
    quality_option: Optional[str] = None
    options: dict = field(default_factory=dict)
    codec_tag: Optional[str] = None

    @property
    def alpha(self) -> bool:
        return self.alpha_pix_fmt is not None

    @property
    def available(self) -> bool:
        """Whether this PyAV build includes the encoder."""
        return self.encoder is None or self.encoder in av.codecs_available


FORMATS: dict[str, VideoFormat] = {
    "h264-mp4": VideoFormat("mp4", "mp4", "libx264", "yuv420p", odd_pix_fmt="yuv444p",
                            quality_option="crf", options={"preset": "medium"}),
    # x265 rejects frames under 16 px and corrupts memory on frames under 32 px high.
    "h265-mp4": VideoFormat("mp4", "mp4", "libx265", "yuv420p", odd_pix_fmt="yuv444p", min_size=32,
                            quality_option="crf", options={"preset": "medium", "x265-params": "log-level=error"},
                            codec_tag="hvc1"),
    "prores4444-mov": VideoFormat("mov", "mov", "prores_ks", "yuv444p10le", "yuva444p10le",
                                  options={"profile": "4444", "vendor": "apl0"}),
    "vp9-webm": VideoFormat("webm", "webm", "libvpx-vp9", "yuv420p", "yuva420p", quality_option="crf",
                            options={"b": "0", "row-mt": "1", "cpu-used": "4"}),
    "png-sequence": VideoFormat("", None, None, "rgb24", "rgba"),
}
DEFAULT_QUALITY = 18


class _ContainerSink:
    """Encodes frames into a video file with an exact frame rate."""

    def __init__(self, path: Path, spec: VideoFormat, rate: Fraction, width: int, height: int,
                 alpha: bool, quality: int):
        pix_fmt = spec.alpha_pix_fmt if alpha else spec.pix_fmt
        if spec.odd_pix_fmt and (width % 2 or height % 2):
            pix_fmt = spec.odd_pix_fmt
        options = dict(spec.options)
        if spec.quality_option:
            options[spec.quality_option] = str(quality)
        container_options = {"movflags": "+faststart"} if spec.container in ("mp4", "mov") else {}
        self._container = av.open(str(path), "w", format=spec.container, options=container_options)
        try:
            stream = self._container.add_stream(spec.encoder, rate=rate, options=options)
            stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
            codec = stream.codec_context
            codec.time_base = 1 / rate
            codec.colorspace = codec.color_primaries = codec.color_trc = 1  # BT.709
            codec.color_range = 1  # limited ("TV") range
            if spec.codec_tag:
                codec.codec_tag = spec.codec_tag
            self._stream = stream
            self._pix_fmt = pix_fmt
            self._index = 0
        except BaseException:
            self._container.close()
            raise

    def write(self, array: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(array, format="rgba" if array.shape[-1] == 4 else "rgb24")
        frame = frame.reformat(format=self._pix_fmt, dst_colorspace=Colorspace.ITU709, **_ONE_THREAD)
        frame.pts = self._index
        self._index += 1
        self._container.mux(self._stream.encode(frame))

    def close(self) -> None:
        try:
            self._container.mux(self._stream.encode(None))  # flush delayed frames
        finally:
            self._container.close()


class _PngSink:
    """Writes ``frame_000000.png``... into a folder, with ``sequence.json`` for the rate."""

    def __init__(self, folder: Path, rate: Fraction):
        folder.mkdir(parents=True, exist_ok=True)
        if _sequence_files(folder):
            raise VideoError(f"folder '{folder}' already holds images; write a sequence into a new folder")
        (folder / SEQUENCE_SIDECAR).write_text(json.dumps({"fps": format_fps(rate)}))
        self._folder = folder
        self._index = 0

    def write(self, array: np.ndarray) -> None:
        Image.fromarray(array).save(self._folder / f"frame_{self._index:06d}.png")
        self._index += 1

    def close(self) -> None:
        pass


class VideoWriter:
    """Context manager that writes float frames to a video file or PNG folder.

    ``VideoWriter(path, frame_rate, format, width, height, alpha=False, quality=18)``:
    ``format`` is a key of :data:`FORMATS` (the container is chosen by it, whatever the
    path's extension); ``alpha=True`` needs an alpha format and stores RGBA;
    ``quality`` is a CRF (0 best .. 51 smallest; ignored by ProRes and PNG). The frame rate is
    stored exactly (reading back gives the same ``Fraction``). Odd sizes keep their
    exact size: H.264/H.265 switch from 4:2:0 to 4:4:4 for them (High 4:4:4 profile,
    which browsers and QuickTime may not play; use even sizes for delivery).

    ``write`` takes ``[H,W,C]`` or ``[T,H,W,C]`` float 0..1 (C=1 grey, 3 RGB, 4 RGBA only
    with ``alpha=True``; RGB into an alpha writer gets alpha 1), quantised to 8 bits per
    channel (ProRes stores them in 10 bits). ``close`` (also run by
    ``__exit__``, exceptions included) flushes the encoder so no trailing frame is lost.
    A writer closed before its first frame leaves no video file (a PNG sequence: only
    its ``sequence.json``).
    """

    def __init__(self, path, frame_rate, format: str, width: int, height: int,
                 alpha: bool = False, quality: int = DEFAULT_QUALITY):
        if format not in FORMATS:
            raise VideoError(f"unknown video format '{format}'; choose one of {', '.join(FORMATS)}")
        spec = FORMATS[format]
        if not spec.available:
            raise VideoError(f"format '{format}' needs the FFmpeg encoder '{spec.encoder}', which this "
                             f"PyAV build does not include; available formats: "
                             f"{', '.join(n for n, f in FORMATS.items() if f.available)}")
        if alpha and not spec.alpha:
            raise VideoError(f"format '{format}' cannot store alpha; use one of "
                             f"{', '.join(n for n, f in FORMATS.items() if f.alpha)}")
        if min(width, height) < spec.min_size:
            raise VideoError(f"format '{format}' needs frames of at least {spec.min_size}x{spec.min_size}, "
                             f"got {width}x{height}")
        if not 0 <= quality <= 51:
            raise VideoError(f"quality must be a CRF between 0 and 51, got {quality}")
        self.path, self.width, self.height, self.alpha = Path(path), width, height, alpha
        self.frame_rate = parse_fps(frame_rate)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if spec.container is None:
            self._sink = _PngSink(self.path, self.frame_rate)
        else:
            self._sink = _ContainerSink(self.path, spec, self.frame_rate, width, height, alpha, quality)

    def write(self, frames: torch.Tensor) -> None:
        """Append one ``[H,W,C]`` frame or a ``[T,H,W,C]`` batch (float 0..1)."""
        if self._sink is None:
            raise VideoError(f"writer for '{self.path}' is closed")
        if frames.dim() == 3:
            frames = frames.unsqueeze(0)
        if frames.dim() != 4 or tuple(frames.shape[1:3]) != (self.height, self.width):
            raise VideoError(f"expected frames [T,{self.height},{self.width},C], got {list(frames.shape)}")
        channels = frames.shape[-1]
        if channels not in (1, 3, 4) or (channels == 4 and not self.alpha):
            raise VideoError(f"frames have {channels} channels; expected 1 (grey), 3 (RGB)"
                             + (" or 4 (RGBA)" if self.alpha else " (4 only for a writer opened with alpha=True)"))
        array = torch.nan_to_num(frames.detach().float().cpu()).clamp(0, 1).numpy()
        if channels == 1:
            array = np.repeat(array, 3, axis=-1)
        if self.alpha and array.shape[-1] == 3:
            array = np.concatenate([array, np.ones_like(array[..., :1])], axis=-1)
        pixels = np.rint(array * 255).astype(np.uint8)
        try:
            for frame in pixels:
                self._sink.write(frame)
        except av.error.FFmpegError as exc:
            raise VideoError(f"encoding '{self.path}' failed ({exc})") from None

    def close(self) -> None:
        """Flush and finalise the file; calling it again does nothing."""
        sink, self._sink = self._sink, None
        if sink is not None:
            try:
                sink.close()
            except av.error.FFmpegError as exc:
                raise VideoError(f"finishing '{self.path}' failed ({exc})") from None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class WriteSettings:
    """How a node writes its output videos, one object for all of them: ``frame_rate`` in
    frames per second (an exact ``Fraction``, or anything :func:`parse_fps` takes),
    ``format`` a key of :data:`FORMATS`, and the frame size ``width`` x ``height`` in pixels."""

    frame_rate: Fraction
    format: str
    width: int
    height: int

    @property
    def alpha(self) -> bool:
        """Whether ``format`` can store an alpha channel."""
        return FORMATS[self.format].alpha

    def writer(self, path, alpha: bool = False) -> VideoWriter:
        """A :class:`VideoWriter` of ``path`` with these settings (``alpha``: RGBA frames)."""
        return VideoWriter(path, self.frame_rate, self.format, self.width, self.height, alpha=alpha)


def next_output_path(prefix: str, ext: str) -> Path:
    """Next free ``<output_dir>/<subfolder>/<name>_00001.<ext>`` for ``prefix="subfolder/name"``.

    The counter continues after the highest one already used by any file or folder
    named ``<name>_NNNNN...`` (so ``_matte`` companions and other extensions count);
    ``ext=""`` gives a folder name. The subfolder is created. Prefixes that are
    absolute or climb out of the output folder with ``..`` raise ``ValueError``.
    """
    root = runtime.output_dir().resolve()
    if not prefix or not prefix.strip() or Path(prefix).is_absolute():
        raise ValueError(f"filename prefix must be a relative name like 'ConsistentVideo/video', got '{prefix}'")
    target = (root / prefix.strip()).resolve()
    if target == root or not target.is_relative_to(root):
        raise ValueError(f"filename prefix '{prefix}' points outside the output folder '{root}'")
    target.parent.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"{re.escape(target.name)}_(\d+)(?:[._]|$)")
    used = [int(m.group(1)) for p in target.parent.iterdir() if (m := pattern.match(p.name))]
    suffix = f".{ext}" if ext else ""
    return target.parent / f"{target.name}_{max(used, default=0) + 1:05d}{suffix}"


def ui_entry(path) -> dict:
    """ComfyUI's preview entry ``{"filename", "subfolder", "type": "output"}`` for a file
    written under the output folder; a PNG-sequence folder is shown by its first frame."""
    path = Path(path).resolve()
    frames = _sequence_files(path) if path.is_dir() else []
    shown = frames[0] if frames else path
    subfolder = shown.parent.relative_to(runtime.output_dir().resolve()).as_posix()
    return {"filename": shown.name, "subfolder": "" if subfolder == "." else subfolder, "type": "output"}
