"""Video I/O core: frame rates, probing, reading, writing, output paths."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from consistent_video.nodes.comfy import runtime
from consistent_video.nodes.video import video_io
from consistent_video.nodes.video.video_io import FORMATS, VideoError, VideoWriter

AVAILABLE = [name for name, spec in FORMATS.items() if spec.available]
ALPHA_FORMATS = [name for name in AVAILABLE if FORMATS[name].alpha]
NTSC = Fraction(30000, 1001)
# Largest error per value after encode + decode (8-bit in, lossy 4:2:0 codecs).
TOLERANCE = {"h264-mp4": 0.04, "h265-mp4": 0.05, "prores4444-mov": 0.02, "vp9-webm": 0.05, "png-sequence": 0.003}


@pytest.fixture(autouse=True)
def _folders(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "_standalone",
                        runtime._Standalone(output=tmp_path / "output", input=tmp_path / "input"))
    monkeypatch.setenv("CVS_NO_PROGRESS", "1")


def target(tmp_path: Path, fmt: str, name: str = "clip") -> Path:
    ext = FORMATS[fmt].extension
    return tmp_path / (f"{name}.{ext}" if ext else name)


def indexed_frames(count: int, height: int = 48, width: int = 64, channels: int = 3) -> torch.Tensor:
    """Frame i is flat grey at level i/(count-1): decoded order is readable from the mean."""
    levels = torch.linspace(0.05, 0.95, count)
    frames = levels.view(-1, 1, 1, 1).expand(count, height, width, channels).clone()
    if channels == 4:  # alpha: a horizontal ramp, different per frame
        ramp = torch.linspace(0, 1, width).view(1, 1, width)
        frames[..., 3] = (ramp * 0.5 + levels.view(-1, 1, 1) * 0.5).expand(count, height, width)
    return frames


def write(path, fmt, frames, rate=NTSC, alpha=False, quality=10):
    with VideoWriter(path, rate, fmt, frames.shape[2], frames.shape[1], alpha=alpha, quality=quality) as writer:
        writer.write(frames)
    return path


def decoded_levels(frames: torch.Tensor) -> list[float]:
    return frames[..., :3].mean(dim=(1, 2, 3)).tolist()


# --------------------------------------------------------------------------- frame rates
@pytest.mark.parametrize("value, expected", [
    ("30000/1001", NTSC), ("29.97", NTSC), (29.97, NTSC), ("23.976", Fraction(24000, 1001)),
    ("23.98", Fraction(24000, 1001)), ("59.94", Fraction(60000, 1001)), ("47.952", Fraction(48000, 1001)),
    ("119.88", Fraction(120000, 1001)), ("24", Fraction(24)), (25, Fraction(25)), (" 12.5 ", Fraction(25, 2)),
    (Fraction(24000, 1001), Fraction(24000, 1001)), (30.0, Fraction(30)),
])
def test_parse_fps(value, expected):
    assert video_io.parse_fps(value) == expected


@pytest.mark.parametrize("value", ["0", "-24", "nan", "abc", "", "1/0", float("nan"), float("inf"), -1, True, None])
def test_parse_fps_rejects(value):
    with pytest.raises(ValueError, match="frame rate"):
        video_io.parse_fps(value)


def test_format_fps():
    assert video_io.format_fps(NTSC) == "30000/1001"
    assert video_io.format_fps(Fraction(25)) == "25"
    assert video_io.parse_fps(video_io.format_fps(Fraction(24000, 1001))) == Fraction(24000, 1001)


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("rate", [NTSC, Fraction(25), Fraction(24000, 1001)], ids=str)
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_round_trip_count_order_rate(tmp_path, fmt, rate):
    if not FORMATS[fmt].available:
        pytest.skip(f"this PyAV build has no {FORMATS[fmt].encoder} encoder")
    frames = indexed_frames(12)
    path = write(target(tmp_path, fmt), fmt, frames, rate)
    info = video_io.probe(path)
    assert (info.width, info.height, info.frame_rate) == (64, 48, rate)
    assert info.frame_count == 12
    loaded, loaded_rate = video_io.load_frames(path)
    assert loaded_rate == rate
    assert loaded.shape == (12, 48, 64, 3) and loaded.dtype == torch.float32
    assert decoded_levels(loaded) == pytest.approx(decoded_levels(frames), abs=TOLERANCE[fmt])


@pytest.mark.parametrize("fmt", ALPHA_FORMATS)
def test_alpha_survives(tmp_path, fmt):
    frames = indexed_frames(6, channels=4)
    path = write(target(tmp_path, fmt), fmt, frames, alpha=True)
    assert video_io.probe(path).has_alpha
    loaded, _ = video_io.load_frames(path, alpha=True)
    assert loaded.shape == frames.shape
    assert (loaded - frames).abs().max() <= TOLERANCE[fmt]


@pytest.mark.parametrize("fmt", [f for f in AVAILABLE if not FORMATS[f].alpha])
def test_alpha_is_one_without_source_alpha(tmp_path, fmt):
    path = write(target(tmp_path, fmt), fmt, indexed_frames(3))
    loaded, _ = video_io.load_frames(path, alpha=True)
    assert not video_io.probe(path).has_alpha
    assert loaded.shape[-1] == 4 and torch.all(loaded[..., 3] == 1)


def test_trailing_frames_are_flushed(tmp_path):
    """x264 holds ~40 frames in its lookahead; close() must drain them all."""
    frames = indexed_frames(45)
    path = tmp_path / "long.mp4"
    with VideoWriter(path, NTSC, "h264-mp4", 64, 48) as writer:
        for frame in frames:  # one [H,W,C] frame at a time
            writer.write(frame)
    loaded, _ = video_io.load_frames(path)
    assert loaded.shape[0] == 45
    assert loaded[-1].mean().item() == pytest.approx(0.95, abs=0.03)


def test_conversion_is_exact(tmp_path):
    """Regression for this FFmpeg's swscale: packed RGBA output left the last columns of
    4:2:0 frames unwritten at widths like 100, and 16-bit outputs read white as 255/256."""
    white = torch.ones(2, 20, 100, 4)
    png = write(tmp_path / "white", "png-sequence", white, alpha=True)
    assert torch.all(video_io.load_frames(png, alpha=True)[0] == 1)
    flat = torch.full((3, 20, 100, 4), 0.6)
    for fmt in ("h264-mp4", "vp9-webm"):
        loaded, _ = video_io.load_frames(write(target(tmp_path, fmt), fmt, flat[..., :3]), alpha=True)
        assert (loaded[..., :3] - 0.6).abs().max() < 0.01, fmt
        assert torch.all(loaded[..., 3] == 1), fmt


def test_colour_survives_bt709(tmp_path):
    colour = torch.tensor([0.8, 0.2, 0.3]).expand(4, 32, 32, 3)
    loaded, _ = video_io.load_frames(write(tmp_path / "c.mp4", "h264-mp4", colour, quality=0))
    assert (loaded - colour).abs().max() < 0.02


# --------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("size", [(33, 17), (1, 1)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("fmt", AVAILABLE)
def test_odd_and_tiny_sizes(tmp_path, fmt, size):
    """Odd sizes and 1x1 keep their exact size; only H.265 refuses frames under 32x32."""
    width, height = size
    frames = indexed_frames(4, height, width)
    if min(size) < FORMATS[fmt].min_size:
        with pytest.raises(VideoError, match=f"'{fmt}' needs frames of at least 32x32, got {width}x{height}"):
            write(target(tmp_path, fmt), fmt, frames)
        return
    loaded, _ = video_io.load_frames(write(target(tmp_path, fmt), fmt, frames))
    assert loaded.shape == (4, height, width, 3)
    if size == (1, 1) and fmt == "vp9-webm" and int(av.__version__.split(".")[0]) < 17:
        pytest.xfail("the swscale of PyAV < 17 (FFmpeg 7) converts 1x1 4:2:0 frames from uninitialised memory")
    assert decoded_levels(loaded) == pytest.approx(decoded_levels(frames), abs=TOLERANCE[fmt])


def test_odd_size_h264_uses_444(tmp_path):
    path = write(tmp_path / "odd.mp4", "h264-mp4", indexed_frames(2, 17, 33))
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv444p"
    with av.open(str(write(tmp_path / "even.mp4", "h264-mp4", indexed_frames(2, 18, 32)))) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"


# --------------------------------------------------------------------------- selection
@pytest.fixture
def twenty(tmp_path) -> Path:
    return write(tmp_path / "seq", "png-sequence", indexed_frames(20))


def indices(frames: torch.Tensor) -> list[int]:
    levels = torch.linspace(0.05, 0.95, 20)
    return [int((levels - m).abs().argmin()) for m in decoded_levels(frames)]


@pytest.mark.parametrize("kwargs, expected", [
    ({}, list(range(20))),
    ({"start": 3, "end": 15, "stride": 4}, [3, 7, 11]),
    ({"start": 3, "end": 15, "stride": 4, "max_frames": 2}, [3, 7]),
    ({"start": 18, "end": 100}, [18, 19]),
    ({"stride": 7}, [0, 7, 14]),
    ({"max_frames": 1}, [0]),
])
def test_selection(twenty, kwargs, expected):
    frames = torch.stack(list(video_io.read_frames(twenty, **kwargs)))
    assert indices(frames) == expected


def test_selection_on_a_video_file(tmp_path):
    path = write(tmp_path / "v.mp4", "h264-mp4", indexed_frames(20))
    frames, _ = video_io.load_frames(path, start=5, end=17, stride=5)
    assert indices(frames) == [5, 10, 15]


@pytest.mark.parametrize("size, expected", [((32, 24), (24, 32)), ((32, 0), (24, 32)), ((0, 12), (12, 16)),
                                            ((0, 0), (48, 64)), (None, (48, 64)), ((100, 10), (10, 100))])
def test_resize(twenty, size, expected):
    frame = next(video_io.read_frames(twenty, size=size))
    assert tuple(frame.shape[:2]) == expected
    assert frame.mean().item() == pytest.approx(0.05, abs=0.01)


def test_read_frames_is_lazy_and_checks_arguments_up_front(twenty, tmp_path):
    frames = video_io.read_frames(twenty)
    assert next(frames).shape == (48, 64, 3)
    frames.close()
    with pytest.raises(ValueError, match="stride"):
        video_io.read_frames(twenty, stride=0)
    with pytest.raises(ValueError, match="end"):
        video_io.read_frames(twenty, start=5, end=5)
    with pytest.raises(ValueError, match="start"):
        video_io.read_frames(twenty, start=-1)
    with pytest.raises(VideoError, match="does not exist"):
        video_io.read_frames(tmp_path / "nope.mp4")  # raised by the call, not the first next()


def test_load_frames_with_empty_selection(twenty):
    with pytest.raises(VideoError, match="no frames selected"):
        video_io.load_frames(twenty, start=25)


# --------------------------------------------------------------------------- image folders
def test_image_folder_natural_order_and_sidecar(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in (1, 2, 10, 9):
        Image.fromarray(np.full((8, 12, 3), index * 20, np.uint8)).save(folder / f"f{index}.png")
    Image.fromarray(np.full((8, 12, 3), 250, np.uint8)).save(folder / "f11.jpg")
    (folder / "notes.txt").write_text("ignored")
    info = video_io.probe(folder)
    assert (info.width, info.height, info.frame_count, info.frame_rate) == (12, 8, 5, Fraction(24))
    frames, _ = video_io.load_frames(folder)
    assert [round(v * 255) for v in decoded_levels(frames)] == [20, 40, 180, 200, 250]
    (folder / "sequence.json").write_text(json.dumps({"fps": "30000/1001"}))
    assert video_io.probe(folder).frame_rate == NTSC
    (folder / "sequence.json").write_text("{fps: 30}")
    with pytest.raises(VideoError, match="sequence.json"):
        video_io.probe(folder)


def test_png_sequence_writer_refuses_a_used_folder(tmp_path):
    folder = write(tmp_path / "seq", "png-sequence", indexed_frames(2))
    assert json.loads((folder / "sequence.json").read_text()) == {"fps": "30000/1001"}
    with pytest.raises(VideoError, match="already holds images"):
        write(folder, "png-sequence", indexed_frames(2))


# --------------------------------------------------------------------------- bad input
def test_probe_bad_inputs(tmp_path):
    with pytest.raises(VideoError, match="does not exist"):
        video_io.probe(tmp_path / "missing.mp4")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match="empty file"):
        video_io.probe(empty)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(VideoError, match="not a video FFmpeg can read"):
        video_io.probe(text)
    image_only = tmp_path / "still.png"
    Image.new("RGB", (4, 4)).save(image_only)
    assert video_io.probe(image_only).frame_count == 1  # FFmpeg reads a single image as one frame
    (tmp_path / "nothing").mkdir()
    with pytest.raises(VideoError, match="has no frames"):
        video_io.probe(tmp_path / "nothing")


@pytest.mark.parametrize("fmt", ["h264-mp4", "vp9-webm"])
def test_zero_frame_video(tmp_path, fmt):
    spec = FORMATS[fmt]
    path = target(tmp_path, fmt)
    with av.open(str(path), "w", format=spec.container) as container:  # a header and no frames
        stream = container.add_stream(spec.encoder, rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, spec.pix_fmt
        container.start_encoding()
    assert path.stat().st_size > 0
    with pytest.raises(VideoError, match=r"has no frames|not a video FFmpeg can read"):
        video_io.probe(path)


def test_writer_without_frames_leaves_no_file(tmp_path):
    with VideoWriter(tmp_path / "none.mp4", 24, "h264-mp4", 64, 48):
        pass
    assert not (tmp_path / "none.mp4").exists()


def test_writer_rejects_bad_frames_and_formats(tmp_path):
    with pytest.raises(VideoError, match="unknown video format 'gif'"):
        VideoWriter(tmp_path / "a.gif", 24, "gif", 8, 8)
    with pytest.raises(VideoError, match="cannot store alpha"):
        VideoWriter(tmp_path / "a.mp4", 24, "h264-mp4", 8, 8, alpha=True)
    with pytest.raises(ValueError, match="frame rate"):
        VideoWriter(tmp_path / "a.mp4", "fast", "h264-mp4", 8, 8)
    with pytest.raises(VideoError, match="quality"):
        VideoWriter(tmp_path / "a.mp4", 24, "h264-mp4", 8, 8, quality=60)
    with VideoWriter(tmp_path / "a.mp4", 24, "h264-mp4", 8, 6) as writer:
        with pytest.raises(VideoError, match="4 channels"):
            writer.write(torch.rand(2, 6, 8, 4))
        with pytest.raises(VideoError, match=r"expected frames \[T,6,8,C\]"):
            writer.write(torch.rand(2, 8, 8, 3))
        writer.write(torch.rand(1, 6, 8, 3))
    with pytest.raises(VideoError, match="closed"):
        writer.write(torch.rand(1, 6, 8, 3))
    writer.close()  # a second close does nothing


def test_missing_encoder_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(video_io.av, "codecs_available", set(video_io.av.codecs_available) - {"libx265"})
    with pytest.raises(VideoError, match="'h265-mp4' needs the FFmpeg encoder 'libx265'"):
        VideoWriter(tmp_path / "a.mp4", 24, "h265-mp4", 64, 64)


def test_writer_closes_on_exception(tmp_path):
    path = tmp_path / "partial.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(path, 24, "h264-mp4", 64, 48) as writer:
            writer.write(indexed_frames(5))
            raise RuntimeError("cancelled")
    assert video_io.probe(path).frame_count == 5


def test_grey_matte_and_clamping(tmp_path):
    matte = torch.linspace(-0.5, 1.5, 64).view(1, 1, 64, 1).expand(2, 48, 64, 1)
    loaded, _ = video_io.load_frames(write(tmp_path / "m", "png-sequence", matte))
    assert torch.equal(loaded[..., 0], loaded[..., 1]) and torch.equal(loaded[..., 1], loaded[..., 2])
    assert loaded[0, 0, 0, 0] == 0 and loaded[0, 0, -1, 0] == 1


# --------------------------------------------------------------------------- paths
def test_resolve_input_path(tmp_path):
    runtime.input_dir().mkdir(parents=True)
    (runtime.input_dir() / "clip.mp4").write_bytes(b"x")
    assert video_io.resolve_input_path("clip.mp4") == (runtime.input_dir() / "clip.mp4").resolve()
    assert video_io.resolve_input_path(str(tmp_path / "input" / "clip.mp4")).name == "clip.mp4"
    assert video_io.resolve_input_path(" 'cvs_sample.mp4' ") == video_io.ASSETS_DIR / "cvs_sample.mp4"
    with pytest.raises(VideoError, match=r"'nope.mp4' was not found \(searched: .*input.*assets.*\); expected a file name"):
        video_io.resolve_input_path("nope.mp4")
    with pytest.raises(VideoError, match="no video path"):
        video_io.resolve_input_path("  ")


def test_next_output_path(tmp_path):
    root = runtime.output_dir().resolve()
    first = video_io.next_output_path("ConsistentVideo/video", "mp4")
    assert first == root / "ConsistentVideo" / "video_00001.mp4" and first.parent.is_dir()
    first.write_bytes(b"x")
    (root / "ConsistentVideo" / "video_00002_matte.mp4").write_bytes(b"x")
    (root / "ConsistentVideo" / "video_00007").mkdir()
    (root / "ConsistentVideo" / "videos_00042.mp4").write_bytes(b"x")  # another name
    assert video_io.next_output_path("ConsistentVideo/video", "webm").name == "video_00008.webm"
    assert video_io.next_output_path("ConsistentVideo/video", "").name == "video_00008"
    assert video_io.next_output_path("plain", "mp4") == root / "plain_00001.mp4"
    for bad in ("../escape", "a/../../escape", str(tmp_path / "abs"), "", "  ", "."):
        with pytest.raises(ValueError, match="prefix"):
            video_io.next_output_path(bad, "mp4")


def test_ui_entry():
    root = runtime.output_dir()
    video = write(root / "sub" / "dir" / "v.mp4", "h264-mp4", indexed_frames(2))
    assert video_io.ui_entry(video) == {"filename": "v.mp4", "subfolder": "sub/dir", "type": "output"}
    folder = write(root / "seq", "png-sequence", indexed_frames(2))
    assert video_io.ui_entry(folder) == {"filename": "frame_000000.png", "subfolder": "seq", "type": "output"}
    assert video_io.ui_entry(write(root / "top.webm", "vp9-webm", indexed_frames(2)))["subfolder"] == ""


def test_source_fingerprint_changes(tmp_path):
    path = write(tmp_path / "v.mp4", "h264-mp4", indexed_frames(2))
    before = video_io.source_fingerprint(path)
    assert video_io.source_fingerprint(path) == before
    write(path, "h264-mp4", indexed_frames(3))
    assert video_io.source_fingerprint(path) != before
    folder = write(tmp_path / "seq", "png-sequence", indexed_frames(2))
    before = video_io.source_fingerprint(folder)
    (folder / "sequence.json").write_text(json.dumps({"fps": "25"}))
    assert video_io.source_fingerprint(folder) != before


# --------------------------------------------------------------------------- bundled assets
def test_bundled_sample():
    info = video_io.probe(video_io.ASSETS_DIR / "cvs_sample.mp4")
    assert (info.width, info.height, info.frame_count, info.frame_rate, info.codec) == (320, 180, 48, NTSC, "h264")
    with Image.open(video_io.ASSETS_DIR / "cvs_background.png") as background:
        assert background.size == (320, 180)
    total = sum((video_io.ASSETS_DIR / n).stat().st_size for n in ("cvs_sample.mp4", "cvs_background.png"))
    assert total < 300 * 1024
