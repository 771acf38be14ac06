"""``python -m consistent_video run|smoke-weights|demo`` through ``cli.main``."""
import json
import runpy
import sys
from pathlib import Path

import pytest

import consistent_video
from consistent_video.nodes.runner import cli
from consistent_video.nodes.comfy import families, runtime
from consistent_video.nodes.comfy.families import SMOKE_MARKER, Family
from consistent_video.nodes.runner.execution import api_to_ui, load_workflow, run_workflow
from consistent_video.nodes.comfy.contract import input_specs


class _Fake:
    FUNCTION = "run"
    CATEGORY = "Tests"


class Number(_Fake):
    RETURN_TYPES = ("INT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 1, "min": 0, "max": 10})}}

    def run(self, value):
        if value == 7:
            raise ValueError("seven is unlucky")
        if value == 8:
            runtime.request_interrupt()
            runtime.check_interrupt()
        return (value,)


class SaveNumber(_Fake):
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True}), "name": ("STRING", {"default": "n"})}}

    def run(self, value, name):
        runtime.output_dir().mkdir(parents=True, exist_ok=True)
        (runtime.output_dir() / f"{name}.txt").write_text(str(value))
        return {"ui": {"images": [{"filename": f"{name}.txt", "subfolder": "", "type": "output"}]}}


class ToyLoader(_Fake):
    """Stands in for CVS_ModelLoader: same inputs that the demo reads, returns the folder it found."""

    RETURN_TYPES = ("STRING",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (["toy"], {}), "weights": (["auto", "mine"], {}),
                             "path": ("STRING", {"default": ""}), "repo_id": ("STRING", {"default": ""})}}

    def run(self, family, weights, path, repo_id):
        from consistent_video.nodes.comfy import weights as weights_module
        return (str(weights_module.resolve(families.get(family), weights, path, repo_id, allow_download=False)),)


class SaveText(_Fake):
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"forceInput": True})}}

    def run(self, text):
        runtime.output_dir().mkdir(parents=True, exist_ok=True)
        (runtime.output_dir() / "where.txt").write_text(text)
        return {"ui": {"images": [{"filename": "where.txt", "subfolder": "", "type": "output"}]}}


FAKES = {"Number": Number, "SaveNumber": SaveNumber, "CVS_ModelLoader": ToyLoader, "SaveText": SaveText}
NUMBER_PROMPT = {"1": {"class_type": "Number", "inputs": {"value": 3}, "_meta": {"title": "N"}},
                 "2": {"class_type": "SaveNumber", "inputs": {"value": ["1", 0], "name": "n"}}}


@pytest.fixture
def fake_nodes(monkeypatch):
    """Register the fake nodes in the pack's mapping for the duration of a test."""
    for name, cls in FAKES.items():
        monkeypatch.setitem(consistent_video.NODE_CLASS_MAPPINGS, name, cls)


def _write_toy(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "toy.bin").write_bytes(b"\0" * 8)
    (folder / SMOKE_MARKER).write_text("smoke")


@pytest.fixture
def toy_family(monkeypatch):
    family = Family(name="toy", display_name="Toy", default_repo="nobody/toy", files=("toy.bin",),
                    licence="none", load=None, write_smoke=_write_toy)
    monkeypatch.setitem(families._FAMILIES, "toy", family)
    return family


def _workflow_file(tmp_path: Path, prompt: dict, name: str = "wf.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(prompt))
    return path


# --------------------------------------------------------------------------- help, smoke-weights
def test_module_help_lists_the_commands(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["python -m consistent_video", "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module("consistent_video", run_name="__main__")
    assert done.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "smoke-weights", "demo"):
        assert command in out


def test_smoke_weights_writes_every_family_layout(tmp_path, capsys):
    assert cli.main(["smoke-weights", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert families.names()
    for name in families.names():
        family = families.get(name)
        assert not [f for f in family.files if not (tmp_path / name / f).is_file()], name
        assert (tmp_path / name / SMOKE_MARKER).is_file()
        assert f"({name})" in printed


def test_smoke_weights_for_named_family_only(tmp_path, toy_family, capsys):
    assert cli.main(["smoke-weights", str(tmp_path), "--family", "toy"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]
    assert "toy.bin  (8 bytes)" in capsys.readouterr().out
    assert cli.main(["smoke-weights", str(tmp_path), "--family", "nope"]) == 1
    assert "unknown model family 'nope'" in capsys.readouterr().err


# --------------------------------------------------------------------------- run
def test_run_writes_outputs_and_applies_overrides(tmp_path, fake_nodes, capsys):
    workflow = _workflow_file(tmp_path, NUMBER_PROMPT)
    out = tmp_path / "out"
    assert cli.main(["run", str(workflow), "--output", str(out), "--set", "N.value=5", "--set", "2.name=five"]) == 0
    assert (out / "five.txt").read_text() == "5"
    assert str(out / "five.txt") in capsys.readouterr().out


def test_run_ui_format_workflow(tmp_path, fake_nodes):
    workflow = _workflow_file(tmp_path, api_to_ui(NUMBER_PROMPT, FAKES))
    assert cli.main(["run", str(workflow), "--output", str(tmp_path)]) == 0
    assert (tmp_path / "n.txt").read_text() == "3"


def test_run_bad_workflow_path_exits_1_without_traceback(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "missing.json")]) == 1
    err = capsys.readouterr().err
    assert "error: workflow file" in err and "does not exist" in err and "Traceback" not in err


def test_run_node_error_exits_1_naming_the_node(tmp_path, fake_nodes, capsys):
    workflow = _workflow_file(tmp_path, NUMBER_PROMPT)
    assert cli.main(["run", str(workflow), "--set", "1.value=7"]) == 1
    err = capsys.readouterr().err
    assert "error: node #1 'N' (Number) failed: ValueError: seven is unlucky" in err and "Traceback" not in err
    assert cli.main(["run", str(workflow), "--set", "1.value=7", "--verbose"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_run_invalid_input_exits_1(tmp_path, fake_nodes, capsys):
    assert cli.main(["run", str(_workflow_file(tmp_path, NUMBER_PROMPT)), "--set", "1.value=11"]) == 1
    assert "input 'value' is 11, above the maximum 10" in capsys.readouterr().err


def test_run_cancel_exits_130(tmp_path, fake_nodes, capsys):
    assert cli.main(["run", str(_workflow_file(tmp_path, NUMBER_PROMPT)), "--set", "1.value=8"]) == 130
    assert "cancelled" in capsys.readouterr().err


def _prompt_node(node_type, **inputs):
    """An API node of a registered class with every widget at its default, then ``inputs``."""
    cls = consistent_video.NODE_CLASS_MAPPINGS[node_type]
    widgets = {s.name: s.default() for s in input_specs(cls) if s.is_widget}
    return {"class_type": node_type, "inputs": {**widgets, **inputs}}


def test_run_real_nodes_on_smoke_weights(tmp_path, smoke_weights_dir, capsys):
    """Loader -> GVM video-file matte, the pack's own nodes only, through ``run``."""
    if "CVS_GVMMatteVideoFile" not in consistent_video.NODE_CLASS_MAPPINGS:
        pytest.skip("CVS_GVMMatteVideoFile is not registered yet")
    import torch
    from consistent_video.nodes.video import video_io
    with video_io.VideoWriter(tmp_path / "in.mp4", 8, "h264-mp4", 64, 48) as writer:
        writer.write(torch.rand(3, 48, 64, 3))
    prompt = {"1": _prompt_node("CVS_ModelLoader", family="gvm", path=str(smoke_weights_dir / "gvm"),
                                precision="fp32", device="cpu"),
              "2": _prompt_node("CVS_GVMMatteVideoFile", model=["1", 0], video=str(tmp_path / "in.mp4"),
                                size=64, max_resolution=64, frames_per_window=2, overlap=0, format="png-sequence",
                                write_foreground=False, filename_prefix="t/gvm")}
    assert cli.main(["run", str(_workflow_file(tmp_path, prompt)), "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "wrote 1 file(s):"
    written = Path(out[1].strip())
    assert written.is_file() and written.is_relative_to(tmp_path / "out" / "t") and "alpha" in str(written)


# --------------------------------------------------------------------------- demo
LOADER_PROMPT = {"1": {"class_type": "CVS_ModelLoader", "_meta": {"title": "Load"},
                       "inputs": {"family": "toy", "weights": "mine", "path": "", "repo_id": ""}},
                 "2": {"class_type": "SaveText", "inputs": {"text": ["1", 0]}}}


@pytest.fixture
def examples(tmp_path, monkeypatch, fake_nodes, toy_family):
    """A private example_workflows folder with one UI workflow using the (fake) loader."""
    folder = tmp_path / "examples"
    folder.mkdir()
    _workflow_file(folder, api_to_ui(LOADER_PROMPT, FAKES), "toy_demo.json")
    monkeypatch.setattr(cli, "EXAMPLES_DIR", folder)
    return folder


def test_demo_uses_smoke_weights_when_real_ones_are_missing(tmp_path, examples, capsys):
    args = ["demo", "--output", str(tmp_path / "demo"), "--smoke-dir", str(tmp_path / "smoke"),
            "--models", str(tmp_path / "models")]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    assert "SMOKE WEIGHTS (random)" in captured.err and "NOISE" in captured.err
    assert (tmp_path / "demo" / "toy_demo" / "where.txt").read_text() == str(tmp_path / "smoke" / "toy")
    assert str(tmp_path / "demo" / "toy_demo" / "where.txt") in captured.out
    assert "demo: 1 of 1 workflow(s) ran, 0 failed; SMOKE WEIGHTS were used" in captured.out


def test_demo_prefers_real_weights(tmp_path, examples, capsys):
    real = tmp_path / "models" / "toy" / "mine"
    real.mkdir(parents=True)
    (real / "toy.bin").write_bytes(b"real")
    assert cli.main(["demo", "--output", str(tmp_path / "demo"), "--models", str(tmp_path / "models")]) == 0
    captured = capsys.readouterr()
    assert "SMOKE" not in captured.err + captured.out
    assert (tmp_path / "demo" / "toy_demo" / "where.txt").read_text() == str(real)


def test_demo_exits_nonzero_when_a_workflow_fails(tmp_path, examples, capsys):
    _workflow_file(examples, api_to_ui({**NUMBER_PROMPT, "1": {**NUMBER_PROMPT["1"], "inputs": {"value": 7}}},
                                       FAKES), "broken.json")
    assert cli.main(["demo", "--output", str(tmp_path / "demo"), "--smoke-dir", str(tmp_path / "smoke")]) == 1
    out = capsys.readouterr().out
    assert "broken.json: FAILED: node #1 'N' (Number) failed" in out
    assert "demo: 1 of 2 workflow(s) ran, 1 failed" in out


SMALL = {"size": 64, "max_resolution": 64, "frames_per_window": 2, "overlap": 0, "max_frames": 3}
"""Settings that make the bundled examples run in seconds on CPU (they are saved at real sizes)."""


@pytest.mark.parametrize("path", sorted(cli.EXAMPLES_DIR.glob("*.json")), ids=lambda p: p.name)
def test_bundled_example_runs_on_smoke_weights(path, tmp_path, smoke_weights_dir):
    """Each example workflow runs headless on smoke weights (DESIGN tests, layer 4), shrunk to tiny sizes."""
    prompt = load_workflow(path)
    overrides = cli.smoke_overrides(prompt, smoke_weights_dir, written={})
    assert overrides, "every example loads a model, so smoke weights must be used here"
    small = {f"{node_id}.{name}": value for node_id, node in prompt.items()
             for name, value in SMALL.items() if name in node["inputs"]}
    overrides.update({key: value for key, value in small.items() if key not in overrides})  # the family's win
    result = run_workflow(prompt, overrides=overrides, output_dir=tmp_path)
    assert result.files and all(f.exists() for f in result.files)
