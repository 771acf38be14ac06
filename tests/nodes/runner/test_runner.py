"""Headless runner: UI -> API conversion, API -> UI, validation, execution, overrides, cancel."""
import json

import pytest

from consistent_video.nodes.comfy import runtime
from consistent_video.nodes.runner.execution import (NodeExecutionError, WorkflowError, api_to_ui, apply_overrides,
                                                     load_workflow, parse_override, run_workflow)
from consistent_video.nodes.runner.workflow_format import normalize_api

RAN = []  # node ids in the order the fake nodes ran


class _Fake:
    FUNCTION = "run"
    CATEGORY = "Tests"


class Source(_Fake):
    """An INT and a STRING from widgets; ``seed`` gets a control widget by its name."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 1, "min": 0, "max": 100}),
                             "seed": ("INT", {"default": 0}),
                             "mode": (["a", "b"], {})},
                "optional": {"label": ("STRING", {"default": ""})},
                "hidden": {"node_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("INT", "STRING")

    def run(self, value, seed, mode, label="", node_id=None):
        RAN.append(node_id)
        return value + seed, mode + label


class Add(_Fake):
    """``a`` is a socket; ``b`` has a control widget by option; ``scale`` is optional."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT", {"forceInput": True}),
                             "b": ("INT", {"default": 0, "min": -10, "max": 10, "control_after_generate": True})},
                "optional": {"scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 4.0})},
                "hidden": {"node_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("INT",)

    def run(self, a, b, scale=1.0, node_id=None):
        RAN.append(node_id)
        return (int((a + b) * scale),)


class Show(_Fake):
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True})},
                "optional": {"text": ("STRING", {"forceInput": True})},
                "hidden": {"node_id": "UNIQUE_ID"}}

    def run(self, value, text=None, node_id=None):
        RAN.append(node_id)
        return {"ui": {"value": [value]}, "result": ()}


class SaveText(_Fake):
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"forceInput": True}),
                             "filename_prefix": ("STRING", {"default": "out"})}}

    def run(self, text, filename_prefix):
        folder = runtime.output_dir() / "texts"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{filename_prefix}.txt").write_text(text)
        return {"ui": {"images": [{"filename": f"{filename_prefix}.txt", "subfolder": "texts", "type": "output"}]}}


class Even(_Fake):
    """Validates ``value`` itself, which turns off the built-in min/max check for it."""

    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 2, "min": 0, "max": 10})}}

    @classmethod
    def VALIDATE_INPUTS(cls, value):
        return True if value % 2 == 0 else "must be even"

    def run(self, value):
        return {"ui": {"value": [value]}}


class Numbers(_Fake):
    OUTPUT_IS_LIST = (True,)
    RETURN_TYPES = ("INT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        return ([1, 2, 3],)


class Total(_Fake):
    OUTPUT_NODE = True
    INPUT_IS_LIST = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"values": ("INT", {"forceInput": True})}}

    def run(self, values):
        return {"ui": {"total": [sum(values)], "count": [len(values)]}}


class Stop(_Fake):
    """Cancels itself the way a user's Cancel reaches a running loop."""

    RETURN_TYPES = ("INT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True})}}

    def run(self, value):
        runtime.request_interrupt()
        with runtime.Progress(3, "stop") as progress:
            progress.update()
        return (value,)


class Boom(_Fake):
    RETURN_TYPES = ("INT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True})}}

    def run(self, value):
        raise RuntimeError("kaboom")


NODES = {c.__name__: c for c in (Source, Add, Show, SaveText, Even, Numbers, Total, Stop, Boom)}


@pytest.fixture(autouse=True)
def _clear_ran():
    RAN.clear()


# --------------------------------------------------------------------------- UI helpers
def ui_node(node_id, node_type, widgets=None, inputs=(), outputs=(), mode=0, title=None):
    node = {"id": node_id, "type": node_type, "mode": mode, "pos": [0, 0], "size": [300, 100], "flags": {},
            "order": 0, "properties": {}, "widgets_values": widgets if widgets is not None else [],
            "inputs": [dict(i) for i in inputs], "outputs": [dict(o) for o in outputs]}
    if title:
        node["title"] = title
    return node


def sock(name, type_, link, widget=False):
    entry = {"name": name, "type": type_, "link": link}
    if widget:
        entry["widget"] = {"name": name}
    return entry


def out(name, type_, links):
    return {"name": name, "type": type_, "links": links}


def ui(nodes, links):
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def chain(mid_type="Add", mid_mode=0, mid_widgets=(3, "fixed", 2.0)):
    """Source #1 -> <mid> #2 -> Show #3 (links 1 and 2)."""
    return ui([
        ui_node(1, "Source", [5, 42, "randomize", "b", "hi"], outputs=[out("INT", "INT", [1]), out("STRING", "STRING", [])]),
        ui_node(2, mid_type, list(mid_widgets), inputs=[sock("a", "INT", 1)], outputs=[out("INT", "INT", [2])],
                mode=mid_mode, title="Adder"),
        ui_node(3, "Show", inputs=[sock("value", "INT", 2), sock("text", "STRING", None)]),
    ], [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 0, "INT"]])


# --------------------------------------------------------------------------- UI -> API
def test_widgets_map_in_order_skipping_control_values():
    prompt = load_workflow(chain(), NODES)
    assert prompt["1"] == {"class_type": "Source", "_meta": {"title": "Source"},
                           "inputs": {"value": 5, "seed": 42, "mode": "b", "label": "hi"}}
    assert prompt["2"] == {"class_type": "Add", "_meta": {"title": "Adder"},
                           "inputs": {"a": ["1", 0], "b": 3, "scale": 2.0}}
    assert prompt["3"]["inputs"] == {"value": ["2", 0]}


def test_missing_control_value_shifts_like_the_frontend():
    """The frontend maps widgets_values by position, a seed taking two slots: a file
    without the control value is read shifted (and then fails validation), not guessed."""
    workflow = chain(mid_widgets=(3, 2.0))
    workflow["nodes"][0]["widgets_values"] = [5, 42, "b", "hi"]
    prompt = load_workflow(workflow, NODES)
    assert prompt["1"]["inputs"] == {"value": 5, "seed": 42, "mode": "hi"}
    assert "scale" not in prompt["2"]["inputs"]  # 2.0 sits in b's control slot


def test_linked_widget_takes_the_link_and_dict_links_are_read():
    workflow = chain()
    workflow["nodes"][1]["inputs"].append(sock("b", "INT", 3, widget=True))
    workflow["links"] = [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), link))
                         for link in workflow["links"] + [[3, 1, 0, 2, 1, "INT"]]]
    prompt = load_workflow(workflow, NODES)
    assert prompt["2"]["inputs"] == {"a": ["1", 0], "b": ["1", 0], "scale": 2.0}


def test_dict_widgets_values_match_by_name():
    workflow = chain()
    workflow["nodes"][0]["widgets_values"] = {"mode": "a", "value": 9, "seed": 1, "preview": {"hidden": True}}
    assert load_workflow(workflow, NODES)["1"]["inputs"] == {"value": 9, "seed": 1, "mode": "a"}


def test_reroutes_are_followed_and_notes_dropped():
    workflow = chain()
    workflow["links"][1] = [2, 2, 0, 10, 0, "*"]
    workflow["links"] += [[3, 10, 0, 11, 0, "*"], [4, 11, 0, 3, 0, "INT"]]
    workflow["nodes"][2]["inputs"][0]["link"] = 4
    workflow["nodes"] += [ui_node(10, "Reroute", inputs=[sock("", "*", 2)], outputs=[out("", "*", [3])]),
                          ui_node(11, "Reroute", inputs=[sock("", "*", 3)], outputs=[out("", "*", [4])]),
                          ui_node(12, "Note", ["remember"]), ui_node(13, "MarkdownNote", ["# hi"])]
    prompt = load_workflow(workflow, NODES)
    assert sorted(prompt) == ["1", "2", "3"]
    assert prompt["3"]["inputs"]["value"] == ["2", 0]


def test_primitive_node_value_goes_into_its_target():
    workflow = chain()
    workflow["nodes"][1]["inputs"].append(sock("b", "INT", 3, widget=True))
    workflow["nodes"].append(ui_node(20, "PrimitiveNode", [7, "fixed"], outputs=[out("INT", "INT", [3])]))
    workflow["links"].append([3, 20, 0, 2, 1, "INT"])
    prompt = load_workflow(workflow, NODES)
    assert "20" not in prompt
    assert prompt["2"]["inputs"]["b"] == 7


def test_muted_node_is_dropped_with_its_links():
    prompt = load_workflow(chain(mid_mode=2), NODES)
    assert sorted(prompt) == ["1", "3"]
    assert prompt["3"]["inputs"] == {}


def test_stale_link_counts_as_unlinked_like_in_the_editor():
    workflow = chain()
    workflow["links"].pop()
    assert load_workflow(workflow, NODES)["3"]["inputs"] == {}


def test_bypassed_node_passes_its_matching_input_through():
    prompt = load_workflow(chain(mid_mode=4), NODES)
    assert sorted(prompt) == ["1", "3"]
    assert prompt["3"]["inputs"]["value"] == ["1", 0]


def test_bypassed_node_without_matching_input_leaves_the_input_unset():
    workflow = chain(mid_mode=4)
    workflow["nodes"][1]["outputs"][0]["type"] = "STRING"
    assert load_workflow(workflow, NODES)["3"]["inputs"] == {}


def test_unknown_node_type_names_node_and_type():
    workflow = chain(mid_type="WanVideoSampler")
    with pytest.raises(WorkflowError, match=r"node #2 has unknown type 'WanVideoSampler'"):
        load_workflow(workflow, NODES)


def test_unknown_type_of_a_muted_node_is_ignored():
    assert sorted(load_workflow(chain(mid_type="Missing", mid_mode=2), NODES)) == ["1", "3"]


def test_subgraphs_are_rejected_clearly():
    workflow = chain(mid_type="3f2a-subgraph")
    workflow["definitions"] = {"subgraphs": [{"id": "3f2a-subgraph"}]}
    with pytest.raises(WorkflowError, match="subgraph"):
        load_workflow(workflow, NODES)


def test_workflow_file_errors(tmp_path):
    with pytest.raises(WorkflowError, match="does not exist"):
        load_workflow(tmp_path / "nope.json", NODES)
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(WorkflowError, match="not valid JSON"):
        load_workflow(tmp_path / "bad.json", NODES)


# --------------------------------------------------------------------------- API -> UI
API = {
    "1": {"class_type": "Source", "inputs": {"value": 4, "seed": 3, "mode": "b", "label": "x"},
          "_meta": {"title": "Numbers in"}},
    "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["1", 0], "scale": 0.5}, "_meta": {"title": "Add"}},
    "5": {"class_type": "Show", "inputs": {"value": ["2", 0], "text": ["1", 1]}, "_meta": {"title": "Result"}},
    "7": {"class_type": "SaveText", "inputs": {"text": ["1", 1], "filename_prefix": "run"},
          "_meta": {"title": "SaveText"}},
}


def test_api_to_ui_round_trip_is_identity():
    workflow = json.loads(json.dumps(api_to_ui(API, NODES)))
    assert workflow["version"] == 0.4 and workflow["last_node_id"] == 7
    assert load_workflow(workflow, NODES) == API


def test_api_to_ui_layout_links_and_widgets():
    workflow = api_to_ui(API, NODES)
    nodes = {n["id"]: n for n in workflow["nodes"]}
    assert nodes[1]["pos"][0] < nodes[2]["pos"][0] < nodes[5]["pos"][0]
    assert nodes[1]["widgets_values"] == [4, 3, "fixed", "b", "x"]
    assert nodes[2]["widgets_values"] == [0, "fixed", 0.5]
    assert nodes[2]["inputs"] == [{"name": "a", "type": "INT", "link": 1},
                                  {"name": "b", "type": "INT", "link": 2, "widget": {"name": "b"}}]
    assert nodes[1]["outputs"][1] == {"name": "STRING", "type": "STRING", "links": [3, 5], "slot_index": 1}
    assert [1, 1, 0, 2, 0, "INT"] in workflow["links"] and nodes[1]["title"] == "Numbers in"
    assert "title" not in nodes[7]


# --------------------------------------------------------------------------- execution
def test_runs_only_what_outputs_need_in_dependency_order(capsys):
    prompt = {**API, "9": {"class_type": "Source", "inputs": {"value": 1000}}}  # unused and invalid
    result = run_workflow(prompt, node_classes=NODES)
    assert result.executed[:3] == ["1", "2", "5"] and sorted(result.executed) == ["1", "2", "5", "7"]
    assert RAN == ["1", "2", "5"]
    assert result.outputs["1"] == (7, "bx") and result.outputs["2"] == (7,)
    assert result.ui["5"] == {"value": [7]}
    assert "[2/4] Add #2 ... done in" in capsys.readouterr().err


def test_files_written_by_output_nodes(tmp_path):
    result = run_workflow(API, node_classes=NODES, output_dir=tmp_path / "here")
    assert result.files == [tmp_path / "here" / "texts" / "run.txt"]
    assert result.files[0].read_text() == "bx"


def test_list_outputs_map_over_nodes_and_list_inputs_collect():
    prompt = {"1": {"class_type": "Numbers", "inputs": {}},
              "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 10}},
              "3": {"class_type": "Total", "inputs": {"values": ["2", 0]}}}
    result = run_workflow(prompt, node_classes=NODES)
    assert result.outputs["2"] == ([11, 12, 13],)
    assert result.ui["3"] == {"total": [36], "count": [3]}


def test_validation_reports_every_problem_naming_node_and_input():
    prompt = {"1": {"class_type": "Source", "inputs": {"value": 101, "seed": 0, "mode": "c"}, "_meta": {"title": "In"}},
              "2": {"class_type": "Add", "inputs": {"a": ["1", 1], "b": -11}},
              "3": {"class_type": "Show", "inputs": {"text": ["1", 1]}},
              "4": {"class_type": "Show", "inputs": {"value": ["8", 0]}},
              "5": {"class_type": "Show", "inputs": {"value": ["2", 3]}}}
    with pytest.raises(WorkflowError) as info:
        run_workflow(prompt, node_classes=NODES)
    message = str(info.value)
    assert "node #1 'In' (Source): input 'value' is 101, above the maximum 100" in message
    assert "node #1 'In' (Source): input 'mode' is 'c', which is not one of ['a', 'b']" in message
    assert "node #2 (Add): input 'a' expects INT but is linked to a STRING output" in message
    assert "node #2 (Add): input 'b' is -11, below the minimum -10" in message
    assert "node #3 (Show): input 'value' is required but missing" in message
    assert "node #4 (Show): input 'value' is linked to node #8, which is not in the workflow" in message
    assert "node #5 (Show): input 'value' is linked to output 3 of node #2 (Add), which has 1 output(s)" in message
    assert RAN == []


def test_literals_are_coerced_and_validate_inputs_is_used():
    prompt = {"1": {"class_type": "Even", "inputs": {"value": "12"}}}  # above max, but Even validates it
    assert run_workflow(prompt, node_classes=NODES).ui["1"] == {"value": [12]}
    prompt["1"]["inputs"]["value"] = 3
    with pytest.raises(WorkflowError, match=r"node #1 \(Even\): inputs \(value\) rejected: must be even"):
        run_workflow(prompt, node_classes=NODES)
    prompt["1"]["inputs"]["value"] = "two"
    with pytest.raises(WorkflowError, match="input 'value' has value 'two', which is not a INT"):
        run_workflow(prompt, node_classes=NODES)


@pytest.mark.parametrize("value", [float("nan"), "inf", float("-inf")])
def test_non_finite_floats_are_refused_at_validation(value):
    """NaN passes every min/max comparison, so ComfyUI's own checks let it through (issue 13)."""
    prompt = {"1": {"class_type": "Source", "inputs": {"value": 1, "seed": 0, "mode": "a"}},
              "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 0, "scale": value}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    shown = float(value)
    with pytest.raises(WorkflowError, match=rf"node #2 \(Add\): input 'scale' is {shown}; expected a finite number "
                                            r"between 0\.0 and 4\.0"):
        run_workflow(prompt, node_classes=NODES)
    assert RAN == []


def test_workflow_without_output_node_is_refused():
    with pytest.raises(WorkflowError, match="no output node"):
        run_workflow({"1": {"class_type": "Numbers", "inputs": {}}}, node_classes=NODES)


def test_node_failure_names_the_node():
    prompt = {"1": {"class_type": "Numbers", "inputs": {}}, "2": {"class_type": "Boom", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}, "_meta": {"title": "Out"}}}
    with pytest.raises(NodeExecutionError, match=r"node #2 \(Boom\) failed: RuntimeError: kaboom") as info:
        run_workflow(prompt, node_classes=NODES)
    assert info.value.node_id == "2" and isinstance(info.value.__cause__, RuntimeError)


def test_cancel_stops_the_run_and_the_next_run_works(capsys):
    prompt = {"1": {"class_type": "Numbers", "inputs": {}}, "2": {"class_type": "Stop", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "Total", "inputs": {"values": ["2", 0]}}}
    with pytest.raises(runtime.Interrupted):
        run_workflow(prompt, node_classes=NODES)
    assert "Stop #2 ... cancelled" in capsys.readouterr().err
    assert run_workflow(API, node_classes=NODES).executed


# --------------------------------------------------------------------------- overrides
@pytest.mark.parametrize("text, expected", [
    ("3.value=5", ("3", "value", 5)),
    ("Numbers in.label=hello world", ("Numbers in", "label", "hello world")),
    ("v1.2.scale=0.5", ("v1.2", "scale", 0.5)),
    ('a.b="7"', ("a", "b", "7")),
    ("a.b=[1, 2]", ("a", "b", [1, 2])),
    ("a.b={\"k\": 1}", ("a", "b", {"k": 1})),
    ("a.b=true", ("a", "b", True)),
    ("a.b=x=y", ("a", "b", "x=y")),
    ("a.b=", ("a", "b", "")),
])
def test_parse_override(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["novalue", "nodot=3", ".b=1", "a.=1"])
def test_parse_override_rejects_malformed(text):
    with pytest.raises(WorkflowError, match="NODE.INPUT=VALUE"):
        parse_override(text)


def test_overrides_find_nodes_by_id_title_or_unique_class():
    prompt = apply_overrides(normalize_api(API), ["1.value=9", "Result.text=\"t\"", "Add.scale=2",
                                                  "SaveText.filename_prefix=x"], NODES)
    assert prompt["1"]["inputs"]["value"] == 9 and prompt["5"]["inputs"]["text"] == "t"
    assert prompt["2"]["inputs"]["scale"] == 2 and prompt["7"]["inputs"]["filename_prefix"] == "x"
    result = run_workflow(API, overrides={"Add.b": 1, "1.label": "!"}, node_classes=NODES)
    assert result.outputs["2"] == (4,) and result.outputs["1"] == (7, "b!")


def test_override_errors_are_clear():
    prompt = normalize_api({**API, "8": {"class_type": "Show", "inputs": {"value": ["2", 0]}}})
    with pytest.raises(WorkflowError, match="no node 'Nope'.*#1 'Numbers in' \\(Source\\)"):
        apply_overrides(prompt, ["Nope.value=1"], NODES)
    with pytest.raises(WorkflowError, match="'Show' is the class_type of 2 nodes \\(#5, #8\\)"):
        apply_overrides(prompt, ["Show.value=1"], NODES)
    with pytest.raises(WorkflowError, match="node #2 \\(Add\\) has no input 'c'; its inputs are: a, b, scale"):
        apply_overrides(prompt, ["2.c=1"], NODES)
    with pytest.raises(WorkflowError, match="must be \\[node_id, output_slot\\], got \\[1, 2, 3\\]"):
        apply_overrides(prompt, ["2.a=[1, 2, 3]"], NODES)


def test_override_can_relink_an_input():
    result = run_workflow(API, overrides=["Result.value=[1, 0]"], node_classes=NODES)
    assert result.ui["5"] == {"value": [7]} and "2" not in result.executed
