"""The UI-workflow rules of ComfyUI's frontend (1.27), as the runner applies them.

Each case states what the frontend does with a file (its widget constructors and
``migrateWidgetsValues``, its saved input order), so the runner reads a file the way
the web UI does; tests/test_comfyui_integration.py checks the same against the real
frontend in Chromium.
"""
import pytest

from consistent_video.nodes.comfy.contract import input_specs
from consistent_video.nodes.runner.workflow_format import api_to_ui, load_workflow


class Source:
    RETURN_TYPES = ("IMAGE", "INT")
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}


class Sink:
    RETURN_TYPES = ()
    FUNCTION = "run"
    CATEGORY = "test"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 1, "control_after_generate": False}),
            "mode": (["a", "b", "c"],),
            "image": ("IMAGE",),
            "noise_seed": ("INT", {"default": 2}),
            "count": ("INT", {"default": 3, "control_after_generate": True}),
            "pick": (["x", "y"], {"control_after_generate": True}),
            "scale": ("FLOAT", {"default": 1.0, "control_after_generate": True}),
            "text": ("STRING", {"default": "", "multiline": True}),
            "forced": ("INT", {"default": 5, "forceInput": True}),
        }, "optional": {"flag": ("BOOLEAN", {"default": False})}}


NODES = {"Source": Source, "Sink": Sink}


def test_control_widgets_follow_the_frontend():
    control = {s.name: s.has_control for s in input_specs(Sink)}
    assert control == {"seed": False,  # explicit control_after_generate: False on a seed: none
                       "mode": False, "image": False,
                       "noise_seed": True,  # INT named noise_seed, option absent
                       "count": True, "pick": True,  # option true on INT and COMBO
                       "scale": False,  # FLOAT never gets one
                       "text": False, "forced": False, "flag": False}


def _ui(widgets_values, inputs=()):
    return {"nodes": [{"id": 1, "type": "Source", "mode": 0, "inputs": [], "outputs": [], "widgets_values": []},
                      {"id": 2, "type": "Sink", "mode": 0, "inputs": list(inputs), "outputs": [],
                       "widgets_values": widgets_values}],
            "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 1, 1, 2, 2, "INT"]]}


def test_widget_values_are_positional_with_control_slots():
    values = [7, "b", 8, "fixed", 9, "randomize", "y", "increment", 2.5, "hello", True]
    inputs = [{"name": "image", "type": "IMAGE", "link": 1}, {"name": "forced", "type": "INT", "link": None}]
    prompt = load_workflow(_ui(values, inputs), NODES)
    assert prompt["2"]["inputs"] == {"seed": 7, "mode": "b", "noise_seed": 8, "count": 9, "pick": "y",
                                     "scale": 2.5, "text": "hello", "flag": True, "image": ["1", 0]}


def test_a_stray_control_value_shifts_the_widgets_as_in_the_frontend():
    """The defect of the old VMem files: a 'fixed' after a seed that has no control widget
    lands on the next widget in the frontend, and so it does in the runner."""
    values = [7, "fixed", "b", 8, "fixed", 9, "fixed", "y", "fixed", 2.5, "hello", True]
    prompt = load_workflow(_ui(values), NODES)
    assert prompt["2"]["inputs"]["seed"] == 7
    assert prompt["2"]["inputs"]["mode"] == "fixed"
    assert prompt["2"]["inputs"]["noise_seed"] == "b"


def test_force_input_values_are_dropped_like_migrate_widgets_values():
    """A file that stored a value for a forceInput INT (one value per widget-typed input,
    counting two for seed-like ones) has that value removed before mapping."""
    # legacy inputs: seed(2 slots by the migration's count), mode, noise_seed(2), count(2), pick(2), scale(2),
    # text, forced, flag -> 14 values; values pair with inputs by position, as the frontend zips them.
    legacy = [7, "b", 8, 9, "y", 2.5, "hello", 99, True, "p10", "p11", "p12", "p13", "p14"]
    prompt = load_workflow(_ui(legacy), NODES)
    assert 99 not in prompt["2"]["inputs"].values()


def test_api_to_ui_saves_inputs_in_the_frontends_order():
    prompt = {"1": {"class_type": "Source", "inputs": {}},
              "2": {"class_type": "Sink", "inputs": {"seed": 3, "mode": "c", "image": ["1", 0], "count": ["1", 1],
                                                     "forced": ["1", 1], "text": "t"}}}
    ui = api_to_ui(prompt, NODES)
    sink = next(n for n in ui["nodes"] if n["type"] == "Sink")
    # socket-only inputs first (image, forced), then linked widget inputs (count)
    assert [i["name"] for i in sink["inputs"]] == ["image", "forced", "count"]
    assert sink["inputs"][2]["widget"] == {"name": "count"}
    slots = {link[0]: link[4] for link in ui["links"]}
    assert [slots[i["link"]] for i in sink["inputs"]] == [0, 1, 2]
    # one value per widget, a control value only after noise_seed, count and pick
    assert sink["widgets_values"] == [3, "c", 2, "fixed", 3, "fixed", "x", "fixed", 1.0, "t", False]
    again = load_workflow(ui, NODES)
    assert again["2"]["inputs"] == {**{"noise_seed": 2, "pick": "x", "scale": 1.0, "flag": False},
                                    **prompt["2"]["inputs"]}


def test_api_to_ui_note_and_room_for_previews():
    prompt = {"1": {"class_type": "Source", "inputs": {}},
              "2": {"class_type": "Sink", "inputs": {"image": ["1", 0], "forced": ["1", 1]}}}
    ui = api_to_ui(prompt, NODES, note="**What this does.**")
    note = [n for n in ui["nodes"] if n["type"] == "MarkdownNote"]
    assert len(note) == 1 and note[0]["widgets_values"] == ["**What this does.**"]
    assert ui["last_node_id"] == 3
    graph_nodes = [n for n in ui["nodes"] if n["type"] != "MarkdownNote"]
    assert min(n["pos"][1] for n in graph_nodes) > note[0]["pos"][1] + note[0]["size"][1]
    sink = next(n for n in ui["nodes"] if n["type"] == "Sink")
    assert sink["size"][1] >= 300  # an output node keeps room for its preview
    assert load_workflow(ui, NODES) == load_workflow(api_to_ui(prompt, NODES), NODES)  # notes are not in the prompt


@pytest.mark.parametrize("class_type", ["CVS_VMemNavigate", "CVS_VMemWalk"])
def test_vmem_seeds_have_no_control_widget(class_type):
    from consistent_video import NODE_CLASS_MAPPINGS

    seed = next(s for s in input_specs(NODE_CLASS_MAPPINGS[class_type]) if s.name == "seed")
    assert seed.options.get("control_after_generate") is False and not seed.has_control
