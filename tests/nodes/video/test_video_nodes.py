"""Video nodes: contract, behaviour on small tensors, and error messages."""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from consistent_video.nodes.comfy import runtime
from consistent_video.nodes.video import video_io, video_nodes
from consistent_video.nodes.comfy.errors import NodeInputError
from consistent_video.nodes.video.video_nodes import CVS_ImagesToVideo, CVS_LoadVideo, CVS_SaveVideo, CVS_VideoToImages


@pytest.fixture(autouse=True)
def _folders(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "_standalone",
                        runtime._Standalone(output=tmp_path / "output", input=tmp_path / "input"))
    monkeypatch.setenv("CVS_NO_PROGRESS", "1")


def clip(frames: int = 6, height: int = 32, width: int = 48) -> torch.Tensor:
    levels = torch.linspace(0.1, 0.9, frames).view(-1, 1, 1, 1)
    ramp = torch.linspace(0, 1, width).view(1, 1, width, 1)
    return (0.5 * levels + 0.5 * ramp).expand(frames, height, width, 3).contiguous()


def matte(frames: int = 6, height: int = 32, width: int = 48) -> torch.Tensor:
    return torch.linspace(0, 1, height).view(1, height, 1).expand(frames, height, width).contiguous()


def save(**kwargs):
    args = {"fps": "30000/1001", "format": "h264-mp4", "filename_prefix": "test/video", "quality": 10} | kwargs
    return CVS_SaveVideo().save(**args)


# --------------------------------------------------------------------------- contract
@pytest.mark.parametrize("cls", list(video_nodes.NODE_CLASS_MAPPINGS.values()), ids=lambda c: c.__name__)
def test_node_contract(cls):
    assert cls.__name__.startswith("CVS_")
    assert video_nodes.NODE_CLASS_MAPPINGS[cls.__name__] is cls
    assert video_nodes.NODE_DISPLAY_NAME_MAPPINGS[cls.__name__] == cls.DISPLAY_NAME
    assert cls.CATEGORY == "Consistent Video/Video" and cls.DESCRIPTION
    assert callable(getattr(cls, cls.FUNCTION))
    assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
    inputs = cls.INPUT_TYPES()
    assert set(inputs) <= {"required", "optional"}
    for section in inputs.values():
        for name, spec in section.items():
            assert spec[1]["tooltip"], f"{cls.__name__}.{name} has no tooltip"


def test_video_nodes_registered():
    assert set(video_nodes.NODE_CLASS_MAPPINGS) == {
        "CVS_LoadVideo", "CVS_LoadImage", "CVS_SaveVideo", "CVS_VideoToImages", "CVS_ImagesToVideo"}
    assert CVS_SaveVideo.OUTPUT_NODE
    assert CVS_SaveVideo.INPUT_TYPES()["required"]["format"][0] == list(video_io.FORMATS)


# --------------------------------------------------------------------------- load
def test_load_bundled_sample():
    images, count, fps, fraction = CVS_LoadVideo().load("cvs_sample.mp4", 0, -1, 1, 0, 0, 0)
    assert images.shape == (48, 180, 320, 3) and count == 48
    assert fraction == "30000/1001" and fps == pytest.approx(29.97, abs=1e-3)


def test_load_selection_resize_and_stride_rate():
    images, count, fps, fraction = CVS_LoadVideo().load("cvs_sample.mp4", 4, 40, 2, 5, 160, 0)
    assert images.shape == (5, 90, 160, 3) and count == 5
    assert fraction == "15000/1001" and fps == pytest.approx(14.985, abs=1e-3)


def test_load_from_input_folder(tmp_path):
    folder = runtime.input_dir() / "shots" / "take1"
    with video_io.VideoWriter(folder, "25", "png-sequence", 48, 32) as writer:
        writer.write(clip())
    images, count, _, fraction = CVS_LoadVideo().load("shots/take1", 0, -1, 1, 0, 0, 0)
    assert images.shape == (6, 32, 48, 3) and count == 6 and fraction == "25"


@pytest.mark.parametrize("kwargs, input_name, text", [
    ({"video": "missing.mp4"}, "video", "was not found"),
    ({"end_frame": 3, "start_frame": 3}, "end_frame", "not after start_frame=3"),
    ({"start_frame": 48}, "start_frame", "the video has 48 frames"),
])
def test_load_errors_name_node_and_input(kwargs, input_name, text):
    args = {"video": "cvs_sample.mp4", "start_frame": 0, "end_frame": -1, "stride": 1,
            "max_frames": 0, "width": 0, "height": 0} | kwargs
    with pytest.raises(NodeInputError, match=f"^CVS Load Video: input '{input_name}' .*{text}"):
        CVS_LoadVideo().load(**args)


def test_load_rejects_a_text_file(tmp_path):
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    with pytest.raises(NodeInputError, match="CVS Load Video: input 'video' .*not a video FFmpeg can read"):
        CVS_LoadVideo().load(str(fake), 0, -1, 1, 0, 0, 0)


def test_load_sizes_are_ones_ffmpeg_can_scale_to(tmp_path):
    """16384 x 16384 used to reach FFmpeg ("Invalid argument returned 22"): the declared maximum is
    now a size every width/height pair up to which FFmpeg scales, and a size that follows the
    aspect ratio past FFmpeg's limit is refused naming the input."""
    import av
    import numpy as np
    spec = CVS_LoadVideo.INPUT_TYPES()["required"]
    assert spec["width"][1]["max"] == spec["height"][1]["max"] == video_io.MAX_SIDE
    assert video_io.scalable(video_io.MAX_SIDE, video_io.MAX_SIDE) and not video_io.scalable(16384, 16384)
    # the rule is FFmpeg's: just past it, its scaler refuses with EINVAL
    frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
    assert video_io.scalable(16, 1864007) and not video_io.scalable(16, 1864008)
    with pytest.raises(av.error.ArgumentError):
        frame.to_ndarray(format="gbrap", width=16, height=1864008)
    args = {"video": "cvs_sample.mp4", "start_frame": 0, "end_frame": -1, "stride": 1, "max_frames": 1}
    with pytest.raises(NodeInputError, match=r"^CVS Load Video: input 'width' is 16384; expected 0 \(keep\) or a "
                                             r"size up to 8192 pixels"):
        CVS_LoadVideo().load(**args, width=16384, height=16384)
    tall = tmp_path / "tall"
    with video_io.VideoWriter(tall, "24", "png-sequence", 2, 600) as writer:
        writer.write(clip(1, 600, 2))
    with pytest.raises(NodeInputError, match=r"^CVS Load Video: input 'width' resizing the 2x600 frames to "
                                             r"8192x2457600 is more than FFmpeg can scale"):
        CVS_LoadVideo().load(**(args | {"video": str(tall)}), width=8192, height=0)
    images = CVS_LoadVideo().load(**args, width=0, height=64)[0]
    assert images.shape == (1, 64, 114, 3)


def test_load_image_errors_speak_of_an_image(tmp_path):
    from consistent_video.nodes.video.video_nodes import CVS_LoadImage
    fake = tmp_path / "fake.png"
    fake.write_text("not a picture")
    for name, text in (("missing.png", "image 'missing.png' was not found"), ("", "no image path was given"),
                       (str(fake), ".*fake.png' is not an image or video FFmpeg can read")):
        with pytest.raises(NodeInputError, match=f"^CVS Load Image: input 'image' {text}") as err:
            CVS_LoadImage().load(name)
        assert "video '" not in str(err.value) and "no video" not in str(err.value)


def test_is_changed(tmp_path):
    path = tmp_path / "v.mp4"
    with video_io.VideoWriter(path, 24, "h264-mp4", 48, 32) as writer:
        writer.write(clip(2))
    first = CVS_LoadVideo.IS_CHANGED(str(path), start_frame=0)
    assert CVS_LoadVideo.IS_CHANGED(str(path)) == first
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert CVS_LoadVideo.IS_CHANGED(str(path)) != first
    missing = CVS_LoadVideo.IS_CHANGED("missing.mp4")
    assert missing != missing  # NaN: never cached, the run reports the error


# --------------------------------------------------------------------------- save
def read_back(path: str, alpha: bool = False) -> tuple[torch.Tensor, Fraction]:
    return video_io.load_frames(path, alpha=alpha)


def test_save_images_only():
    out = save(images=clip())
    (path,) = out["result"][0].splitlines()
    assert Path(path).is_absolute() and path.endswith("test/video_00001.mp4")
    assert out["ui"] == {"images": [{"filename": "video_00001.mp4", "subfolder": "test", "type": "output"}],
                         "animated": [True]}
    frames, rate = read_back(path)
    assert frames.shape == (6, 32, 48, 3) and rate == Fraction(30000, 1001)
    assert (frames - clip()).abs().max() < 0.05


def test_save_mask_only_is_a_grey_matte():
    (path,) = save(mask=matte(), format="png-sequence")["result"][0].splitlines()
    frames, _ = read_back(path)
    assert torch.equal(frames[..., 0], frames[..., 2])
    assert (frames[..., 0] - matte()).abs().max() < 0.003


@pytest.mark.parametrize("fmt", ["prores4444-mov", "vp9-webm", "png-sequence"])
def test_save_images_and_mask_alpha_format(fmt):
    out = save(images=clip(), mask=matte(), format=fmt)
    (path,) = out["result"][0].splitlines()
    frames, _ = read_back(path, alpha=True)
    assert frames.shape == (6, 32, 48, 4)
    assert (frames[..., 3] - matte()).abs().max() < 0.05
    assert (frames[..., :3] - clip()).abs().max() < 0.1  # VP9 4:2:0 colour is the loosest
    if fmt == "png-sequence":
        assert out["ui"]["images"][0] == {"filename": "frame_000000.png", "subfolder": "test/video_00001",
                                          "type": "output"}


def test_save_images_and_mask_non_alpha_format_writes_matte_file():
    out = save(images=clip(), mask=matte(), format="h264-mp4")
    colour, alpha = out["result"][0].splitlines()
    assert colour.endswith("video_00001.mp4") and alpha.endswith("video_00001_matte.mp4")
    assert [entry["filename"] for entry in out["ui"]["images"]] == ["video_00001.mp4", "video_00001_matte.mp4"]
    assert not video_io.probe(colour).has_alpha
    frames, _ = read_back(alpha)
    assert (frames[..., 1] - matte()).abs().max() < 0.05
    second = save(images=clip())["result"][0]
    assert second.endswith("video_00002.mp4")


def test_save_accepts_a_single_unbatched_mask():
    (path,) = save(mask=matte(1)[0], format="png-sequence")["result"][0].splitlines()
    assert video_io.probe(path).frame_count == 1


@pytest.mark.parametrize("kwargs, input_name, text", [
    ({}, "images", "both unconnected"),
    ({"images": matte()}, "images", "which is a MASK, not an IMAGE"),
    ({"mask": clip()}, "mask", "which is an IMAGE, not a MASK"),
    ({"images": clip(6), "mask": matte(5)}, "mask", "has 5 frames of 48x32 but 'images' has 6 frames of 48x32"),
    ({"images": clip(), "mask": matte(6, 32, 40)}, "mask", "frames of 40x32"),
    ({"images": clip(), "fps": "fast"}, "fps", "frame rate 'fast'"),
    ({"images": clip(), "fps": "0"}, "fps", "frame rate '0'"),
    ({"images": clip(), "format": "gif"}, "format", "is 'gif'"),
    ({"images": clip(), "filename_prefix": "../outside"}, "filename_prefix", "outside the output folder"),
    ({"images": clip(6, 16, 48), "format": "h265-mp4"}, "format", "at least 32x32, got 48x16"),
])
def test_save_errors_name_node_and_input(kwargs, input_name, text):
    with pytest.raises(NodeInputError, match=f"^CVS Save Video: input '{input_name}' .*{text}"):
        save(**kwargs)
    assert not any(runtime.output_dir().rglob("*.mp4"))  # nothing half-written


def test_save_honours_cancel():
    runtime.request_interrupt()
    with pytest.raises(runtime.Interrupted):
        save(images=clip())


# --------------------------------------------------------------------------- VIDEO conversions
def test_images_to_video_and_back():
    (video,) = CVS_ImagesToVideo().combine(clip(), "24000/1001")
    assert runtime.is_video(video)
    images, count, fps, fraction = CVS_VideoToImages().split(video)
    assert torch.equal(images, clip()) and count == 6
    assert fraction == "24000/1001" and fps == pytest.approx(23.976, abs=1e-3)


def test_video_to_images_rejects_non_video():
    with pytest.raises(NodeInputError, match="^CVS Video to Images: input 'video' got a Tensor"):
        CVS_VideoToImages().split(clip())


def test_images_to_video_rejects_mask_and_bad_fps():
    with pytest.raises(NodeInputError, match="^CVS Images to Video: input 'images' .*MASK, not an IMAGE"):
        CVS_ImagesToVideo().combine(matte(), "24")
    with pytest.raises(NodeInputError, match="^CVS Images to Video: input 'fps' "):
        CVS_ImagesToVideo().combine(clip(), "-5")
