"""The V1 node contract for every registered node, and the example workflows."""
import json
from pathlib import Path

import pytest

import consistent_video
from consistent_video.nodes.comfy.errors import NodeInputError, input_error
from consistent_video.nodes.runner.execution import load_workflow
from consistent_video.nodes.comfy.contract import input_specs
from consistent_video.nodes.runner.workflow_format import is_ui_format

NODES = consistent_video.NODE_CLASS_MAPPINGS
EXAMPLES = Path(consistent_video.__file__).parent / "example_workflows"
HIDDEN_KINDS = {"UNIQUE_ID", "PROMPT", "EXTRA_PNGINFO", "DYNPROMPT"}


def test_pack_registers_nodes_with_display_names():
    assert NODES, "the pack registers no nodes"
    assert "CVS_ModelLoader" in NODES
    assert set(consistent_video.NODE_DISPLAY_NAME_MAPPINGS) == set(NODES)


@pytest.mark.parametrize("node_id", sorted(NODES))
def test_node_contract(node_id):
    cls = NODES[node_id]
    assert node_id.startswith("CVS_")
    assert consistent_video.NODE_DISPLAY_NAME_MAPPINGS.get(node_id), "no display name"
    sections = cls.INPUT_TYPES()
    assert isinstance(sections, dict) and "required" in sections
    assert set(sections) <= {"required", "optional", "hidden"}, f"unknown sections {set(sections)}"
    for section in ("required", "optional"):
        for name, spec in (sections.get(section) or {}).items():
            assert isinstance(spec, tuple) and len(spec) == 2, f"input '{name}' is not (type, options)"
            kind, options = spec
            assert isinstance(kind, (str, list)) and isinstance(options, dict), f"input '{name}'"
            assert isinstance(options.get("tooltip"), str) and options["tooltip"].strip(), f"input '{name}' has no tooltip"
    assert set((sections.get("hidden") or {}).values()) <= HIDDEN_KINDS
    assert isinstance(cls.RETURN_TYPES, tuple) and all(isinstance(t, str) for t in cls.RETURN_TYPES)
    assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
    assert callable(getattr(cls, cls.FUNCTION, None)), f"FUNCTION '{cls.FUNCTION}' is not a method"
    assert cls.CATEGORY.startswith("Consistent Video/")
    assert isinstance(cls.DESCRIPTION, str) and cls.DESCRIPTION.strip()


@pytest.mark.parametrize("node_id", sorted(NODES))
def test_defaults_are_valid(node_id):
    for spec in input_specs(NODES[node_id]):
        if "default" not in spec.options:
            continue
        default = spec.options["default"]
        if spec.type in ("INT", "FLOAT"):
            assert spec.options.get("min", default) <= default <= spec.options.get("max", default), spec.name
        if spec.choices is not None:
            assert default in spec.choices, f"default of '{spec.name}' is not one of its choices"


FLOAT_INPUTS = [(node_id, spec) for node_id in sorted(NODES) for spec in input_specs(NODES[node_id])
                if spec.type == "FLOAT"]


@pytest.mark.parametrize("node_id, spec", FLOAT_INPUTS, ids=[f"{n}.{s.name}" for n, s in FLOAT_INPUTS])
def test_every_float_input_refuses_non_finite_numbers_before_any_work(node_id, spec, output_dir):
    """ComfyUI's /prompt validation lets NaN through every min/max check (issue 13): every FLOAT
    input of every node rejects NaN and +-inf, naming the node and the input, before anything runs."""
    cls = NODES[node_id]
    display = consistent_video.NODE_DISPLAY_NAME_MAPPINGS[node_id]
    expected = f"a finite number between {spec.options['min']} and {spec.options['max']}"
    for bad in (float("nan"), float("inf"), float("-inf")):
        # every other input is junk: the node body would fail on it, so the guard must come first
        kwargs = {s.name: (s.options.get("default") if s.type == "FLOAT" else object()) for s in input_specs(cls)}
        kwargs[spec.name] = bad
        with pytest.raises(NodeInputError) as info:
            getattr(cls(), cls.FUNCTION)(**kwargs)
        assert str(info.value) == f"{display}: input '{spec.name}' is {bad}; expected {expected}"
    assert not output_dir.exists() or not any(output_dir.rglob("*"))


def test_the_float_guard_reads_positional_arguments_and_wraps_once():
    from consistent_video.nodes.comfy.input_guard import guard_float_inputs
    from consistent_video.vmem_nodes.nodes import CVS_SurfelMemory
    function = CVS_SurfelMemory.open
    assert guard_float_inputs(CVS_SurfelMemory, "again").open is function
    with pytest.raises(NodeInputError, match=r"^CVS Surfel Memory: input 'radius_scale' is nan"):
        CVS_SurfelMemory().open("walk", False, 8, 1.0, float("nan"), 0.6)


def test_input_error_names_the_input_a_core_check_names_and_what_it_expects():
    expected = {"segment_length": "4k + 1 frames", "overlap": "fewer frames than segment_length"}
    error = input_error("CVS Split", ValueError("overlap must be smaller than 5; got 5"), expected)
    assert str(error) == "CVS Split: input 'overlap' must be smaller than 5; got 5; expected fewer frames than " \
                         "segment_length"
    error = input_error("CVS Split", ValueError("length 6 is not 4k + 1"), expected, aliases={"length": "segment_length"})
    assert error.input_name == "segment_length" and error.problem == "6 is not 4k + 1"
    error = input_error("CVS Split", ValueError("something else"), expected)  # the first input, whole text
    assert (error.input_name, error.problem, error.expected) == ("segment_length", "something else", "4k + 1 frames")
    assert input_error("N", ValueError("overlapping"), expected).input_name == "segment_length"  # whole words only


def test_there_are_example_workflows():
    assert sorted(EXAMPLES.glob("*.json")), f"no example workflows in {EXAMPLES}"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_example_workflow_converts_with_registered_nodes(path):
    workflow = json.loads(path.read_text(encoding="utf-8"))
    assert is_ui_format(workflow), "example workflows are saved in the UI format"
    prompt = load_workflow(workflow, NODES)
    assert prompt and {n["class_type"] for n in prompt.values()} <= set(NODES)
    assert path.with_suffix(".jpg").is_file(), f"{path.name} has no thumbnail {path.with_suffix('.jpg').name}"
