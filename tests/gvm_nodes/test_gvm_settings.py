"""GVM Matte Video File hands its inputs to the core as settings objects.

Every setting input gets a value other than its default; the matter (``_matter``) must get
them all in its MatteSettings, and the streaming body (``_stream``) the video's frame rate
and size and the chosen format in its WriteSettings, so an input the node forgets fails here.
"""
from fractions import Fraction

import torch

from consistent_video.gvm_nodes import nodes as gvm_nodes
from consistent_video.gvm_nodes.foreground import parse_color
from consistent_video.gvm_nodes.nodes import CVS_GVMMatteVideoFile
from consistent_video.gvm_nodes.pipeline import MatteSettings
from consistent_video.nodes.comfy import runtime
from consistent_video.nodes.video import video_io

CHANGED = dict(size=256, max_resolution=512, frames_per_window=6, overlap=1, refine_steps=2, decode_chunk_size=3,
               clamp=True, clamp_low=0.2, clamp_high=0.8)


def test_file_node_passes_every_input_to_the_matter_and_the_writers(tmp_path, monkeypatch):
    required = CVS_GVMMatteVideoFile.INPUT_TYPES()["required"]
    assert set(CHANGED) == set(gvm_nodes.SETTING_INPUTS)
    for name, value in {**CHANGED, "format": "png-sequence"}.items():
        assert required[name][1]["default"] != value, name
    runtime.configure_standalone(output=tmp_path / "out")
    clip = tmp_path / "clip.mp4"
    with video_io.VideoWriter(clip, "30000/1001", "h264-mp4", 48, 32) as out:
        out.write(torch.rand(6, 32, 48, 3, generator=torch.Generator().manual_seed(3)))
    seen = {}

    def fake_matter(node, model, settings):
        seen["matter"] = (node, model, settings)
        return "matter"

    def fake_stream(frames, matter, s, total, out_paths, output, bg):
        seen["stream"] = dict(matter=matter, s=s, total=total, out_paths=out_paths, output=output, bg=bg)
        return total

    monkeypatch.setattr(gvm_nodes, "_matter", fake_matter)
    monkeypatch.setattr(CVS_GVMMatteVideoFile, "_stream", staticmethod(fake_stream))
    model = object()
    result = CVS_GVMMatteVideoFile().run(model, str(clip), max_frames=4, format="png-sequence", write_foreground=True,
                                         write_composite=True, background_color="#ff0000",
                                         filename_prefix="gvm/settings", **CHANGED)
    node, got_model, settings = seen["matter"]
    assert node == CVS_GVMMatteVideoFile.DISPLAY_NAME and got_model is model
    assert settings == MatteSettings(**CHANGED)
    stream = seen["stream"]
    assert stream["matter"] == "matter" and stream["s"] == settings and stream["total"] == 4
    assert stream["output"] == video_io.WriteSettings(Fraction(30000, 1001), "png-sequence", 48, 32)
    assert stream["output"].alpha and list(stream["out_paths"]) == ["alpha", "foreground", "composite"]
    assert stream["bg"] == parse_color("#ff0000") == (1.0, 0.0, 0.0)
    assert result["result"][1] == 4
