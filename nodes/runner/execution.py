"""Headless execution of ComfyUI workflows made of this pack's nodes.

The engine behind ``python -m consistent_video run``; also a Python API::

    result = run_workflow("example_workflows/gvm_matte.json", overrides=["4.steps=2"])
    result.files      # files the output nodes wrote

Semantics follow ComfyUI's executor: only nodes that an ``OUTPUT_NODE`` needs run, in
dependency order, after the whole graph is validated (required inputs, combo values,
min/max, finite FLOATs, link targets and types, ``VALIDATE_INPUTS``). Inputs and outputs travel as
lists so ``INPUT_IS_LIST``/``OUTPUT_IS_LIST`` work as in ComfyUI: a node without
``INPUT_IS_LIST`` is called once per element of its longest list input. Lazy inputs
are evaluated eagerly; node expansion (``"expand"``) is not supported.
"""
from __future__ import annotations

import inspect
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from ..comfy import runtime
from ..comfy.input_guard import finite_expectation, non_finite
from ..comfy.contract import input_specs
from .workflow_format import WorkflowError, api_to_ui, load_workflow, node_label, package_nodes, types_match

__all__ = ["RunResult", "WorkflowError", "NodeExecutionError", "load_workflow", "api_to_ui",
           "parse_override", "apply_overrides", "find_node", "validate_prompt", "run_workflow"]

_FILE_KEYS = ("images", "gifs", "videos", "cvs_files")  # cvs_files: non-media files (.ply, .json)
_COERCE = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


class NodeExecutionError(WorkflowError):
    """A node raised while running; ``node_id`` says which, ``__cause__`` holds the error."""

    def __init__(self, message: str, node_id: str):
        super().__init__(message)
        self.node_id = node_id


@dataclass
class RunResult:
    """What a run produced.

    ``outputs[id]``: one value per output slot of each executed node (a list where the
    slot is ``OUTPUT_IS_LIST`` or the node was called over a list); ``ui[id]``: the
    ``ui`` dicts nodes returned; ``files``: files the output nodes reported writing;
    ``executed``: node ids in execution order; ``seconds[id]``: time per node.
    """

    outputs: dict[str, tuple] = field(default_factory=dict)
    ui: dict[str, dict] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[str, str, Any]:
    """``"node.input=value"`` -> ``(node, input, value)``; the value is JSON when it parses."""
    target, sep, raw = text.partition("=")
    node_ref, dot, name = target.rpartition(".")
    if not sep or not dot or not node_ref.strip() or not name.strip():
        raise WorkflowError(f"bad override '{text}': expected NODE.INPUT=VALUE, where NODE is a node id, "
                            "a node title or a class_type that occurs once")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return node_ref.strip(), name.strip(), value


def find_node(prompt: Mapping, ref: str) -> str:
    """The id of the node that ``ref`` names: an id, a title, or a class_type occurring once."""
    if ref in prompt:
        return ref

    def title(node: Mapping) -> Optional[str]:  # a default title (= class_type) is matched as class_type
        return node["_meta"].get("title") if node["_meta"].get("title") != node["class_type"] else None

    for key, what in ((title, "title"), (lambda n: n["class_type"], "class_type")):
        hits = [i for i, n in prompt.items() if key(n) == ref]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise WorkflowError(f"'{ref}' is the {what} of {len(hits)} nodes ({', '.join('#' + h for h in hits)}); "
                                "use a node id")
    listing = ", ".join(node_label(i, n).removeprefix("node ") for i, n in prompt.items())
    raise WorkflowError(f"no node '{ref}' in the workflow (give an id, a title or a class_type that occurs "
                        f"once); nodes: {listing}")


def apply_overrides(prompt: dict, overrides: Iterable[str] | Mapping[str, Any],
                    node_classes: Mapping[str, type]) -> dict:
    """Set inputs in ``prompt`` (in place, and returned).

    ``overrides``: ``"node.input=value"`` strings (see :func:`parse_override`), or a
    mapping ``{"node.input": value}`` whose values are used as they are. A list value
    ``[node_id, output_slot]`` links the input to another node's output.
    """
    if isinstance(overrides, Mapping):
        items = []
        for key, value in overrides.items():
            node_ref, _, name = key.rpartition(".")
            items.append((node_ref, name, value))
    else:
        items = [parse_override(text) for text in overrides]
    for node_ref, name, value in items:
        node_id = find_node(prompt, node_ref)
        node = prompt[node_id]
        cls = node_classes.get(node["class_type"])
        known = [s.name for s in input_specs(cls)] if cls is not None else list(node["inputs"])
        if name not in known:
            raise WorkflowError(f"override {node_ref}.{name}: {node_label(node_id, node)} has no input "
                                f"'{name}'; its inputs are: {', '.join(known) or 'none'}")
        if isinstance(value, list):  # a list is a link in API prompts
            if len(value) != 2 or not isinstance(value[1], int):
                raise WorkflowError(f"override {node_ref}.{name}: a list value is a link and must be "
                                    f"[node_id, output_slot], got {value}")
            value = [str(value[0]), value[1]]
        node["inputs"][name] = value
    return prompt


# --------------------------------------------------------------------------- validation
def _execution_order(prompt: Mapping, node_classes: Mapping[str, type]) -> list[str]:
    """Ids of the nodes the output nodes need, each after the nodes it reads from."""
    outputs = [i for i, n in prompt.items() if getattr(node_classes[n["class_type"]], "OUTPUT_NODE", False) is True]
    if not outputs:
        raise WorkflowError("the workflow has no output node (a node that saves or previews a result), "
                            "so nothing would run")
    order: list[str] = []
    done: set[str] = set()

    def visit(node_id: str, stack: tuple) -> None:
        if node_id in done:
            return
        if node_id in stack:
            raise WorkflowError(f"the workflow has a cycle through {node_label(node_id, prompt[node_id])}")
        for value in prompt[node_id]["inputs"].values():
            if isinstance(value, list) and value[0] in prompt:
                visit(value[0], stack + (node_id,))
        done.add(node_id)
        order.append(node_id)

    for node_id in outputs:
        visit(node_id, ())
    return order


def _validate_node(node_id: str, prompt: dict, node_classes: Mapping[str, type]) -> list[str]:
    """Problems of one node's inputs (coercing literal values in place, like ComfyUI)."""
    node = prompt[node_id]
    cls = node_classes[node["class_type"]]
    inputs = node["inputs"]
    custom = getattr(cls, "VALIDATE_INPUTS", None)
    params = inspect.signature(custom).parameters if custom else {}
    custom_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    errors, received = [], {}

    def error(name: str, problem: str) -> None:
        errors.append(f"{node_label(node_id, node)}: input '{name}' {problem}")

    for spec in input_specs(cls):
        if spec.name not in inputs:
            if spec.required:
                error(spec.name, "is required but missing")
            continue
        value = inputs[spec.name]
        if isinstance(value, list):
            src, slot = value
            if src not in prompt:
                error(spec.name, f"is linked to node #{src}, which is not in the workflow")
                continue
            returns = node_classes[prompt[src]["class_type"]].RETURN_TYPES
            if not 0 <= slot < len(returns):
                error(spec.name, f"is linked to output {slot} of {node_label(src, prompt[src])}, "
                                 f"which has {len(returns)} output(s)")
                continue
            received[spec.name] = returns[slot]
            if "input_types" not in params and not types_match(returns[slot], spec.type):
                error(spec.name, f"expects {spec.type_name} but is linked to a {returns[slot]} output of "
                                 f"{node_label(src, prompt[src])}")
            continue
        if isinstance(spec.type, str) and spec.type in _COERCE:
            try:
                value = inputs[spec.name] = _COERCE[spec.type](value)
            except (TypeError, ValueError):
                error(spec.name, f"has value {value!r}, which is not a {spec.type}")
                continue
        if spec.type == "FLOAT" and non_finite(value) is not None:  # NaN passes every min/max comparison
            error(spec.name, f"is {value}; expected {finite_expectation(spec.options)}")
            continue
        if spec.name in params or custom_all:
            continue
        if "min" in spec.options and value < spec.options["min"]:
            error(spec.name, f"is {value}, below the minimum {spec.options['min']}")
        elif "max" in spec.options and value > spec.options["max"]:
            error(spec.name, f"is {value}, above the maximum {spec.options['max']}")
        elif spec.choices is not None and value not in spec.choices:
            shown = spec.choices if len(spec.choices) <= 20 else f"{len(spec.choices)} choices"
            error(spec.name, f"is {value!r}, which is not one of {shown}")
    if custom and not errors:
        kwargs = {name: (None if isinstance(v, list) else v) for name, v in inputs.items()
                  if name in params or custom_all}
        if "input_types" in params:
            kwargs["input_types"] = received
        try:
            verdict = getattr(cls(), "VALIDATE_INPUTS")(**kwargs)
        except Exception as exc:  # a broken validator is still this node's validation error
            verdict = f"VALIDATE_INPUTS raised {type(exc).__name__}: {exc}"
        if verdict is not True:
            names = ", ".join(n for n in kwargs if n != "input_types") or "-"
            errors.append(f"{node_label(node_id, node)}: inputs ({names}) rejected"
                          + (f": {verdict}" if verdict is not False else ""))
    return errors


def validate_prompt(prompt: dict, node_classes: Mapping[str, type]) -> list[str]:
    """Check ``prompt`` and return the ids to execute, in order; raise listing every problem.

    Literal values of INT/FLOAT/STRING/BOOLEAN inputs are converted in place.
    """
    unknown = [f"node #{i} has unknown type '{n['class_type']}'" for i, n in prompt.items()
               if n["class_type"] not in node_classes]
    if unknown:
        raise WorkflowError("; ".join(unknown) + f" (known: {', '.join(sorted(node_classes)) or 'none'})")
    order = _execution_order(prompt, node_classes)
    errors = [e for node_id in order for e in _validate_node(node_id, prompt, node_classes)]
    if errors:
        raise WorkflowError("the workflow is invalid:\n  " + "\n  ".join(errors))
    return order


# --------------------------------------------------------------------------- execution
def _hidden_value(kind: str, node_id: str, prompt: dict) -> Any:
    """Hidden inputs: ``UNIQUE_ID`` and ``PROMPT``; others (``EXTRA_PNGINFO``, ...) are ``None``."""
    return {"UNIQUE_ID": node_id, "PROMPT": prompt}.get(kind)


def _execute(node_id: str, prompt: dict, cls: type, values: dict) -> tuple[list[list], dict]:
    """Call one node; return its outputs (one list per slot) and its merged ``ui`` dict."""
    inputs = prompt[node_id]["inputs"]
    args: dict[str, list] = {}
    for spec in input_specs(cls):
        if spec.name in inputs:
            value = inputs[spec.name]
            args[spec.name] = values[value[0]][value[1]] if isinstance(value, list) else [value]
    for name, kind in (cls.INPUT_TYPES().get("hidden") or {}).items():
        args[name] = [_hidden_value(kind, node_id, prompt)]
    if getattr(cls, "INPUT_IS_LIST", False):
        calls = [args]
    else:
        count = 0 if any(len(v) == 0 for v in args.values()) else max((len(v) for v in args.values()), default=1)
        calls = [{k: v[min(i, len(v) - 1)] for k, v in args.items()} for i in range(count)]
    function = getattr(cls(), cls.FUNCTION)
    list_outputs = getattr(cls, "OUTPUT_IS_LIST", None) or (False,) * len(cls.RETURN_TYPES)
    outputs: list[list] = [[] for _ in cls.RETURN_TYPES]
    ui: dict = {}
    for kwargs in calls:
        returned = function(**kwargs)
        if isinstance(returned, dict):
            if "expand" in returned:
                raise WorkflowError("node expansion ('expand') is not supported by the headless runner")
            for key, entries in (returned.get("ui") or {}).items():
                ui[key] = ui.get(key, []) + list(entries) if isinstance(entries, (list, tuple)) else entries
            returned = returned.get("result", ())
        returned = () if returned is None else returned
        if not isinstance(returned, (tuple, list)):
            raise WorkflowError(f"returned {type(returned).__name__}, expected a tuple of outputs")
        if len(returned) != len(cls.RETURN_TYPES):
            raise WorkflowError(f"returned {len(returned)} value(s) but RETURN_TYPES declares "
                                f"{len(cls.RETURN_TYPES)}")
        for slot, value in enumerate(returned):
            if list_outputs[slot]:
                outputs[slot].extend(value)
            else:
                outputs[slot].append(value)
    return outputs, ui


def _files(ui: Mapping) -> list[Path]:
    """Output files named in a node's ``ui`` (``images``/``gifs``/``videos``/``cvs_files`` entries)."""
    found = []
    for key in _FILE_KEYS:
        for entry in ui.get(key) or []:
            if isinstance(entry, Mapping) and entry.get("filename") and entry.get("type", "output") == "output":
                found.append(runtime.output_dir() / entry.get("subfolder", "") / entry["filename"])
    return found


class _StatusLine:
    """One line per node on stderr: ``[2/5] CVS_X #4 ... done in 1.2s``."""

    def __init__(self, index: int, total: int, node_id: str, class_type: str):
        self.text = f"[{index}/{total}] {class_type} #{node_id} ..."
        self.tty = sys.stderr.isatty()
        if self.tty:  # shown while the node runs; nodes' progress bars overwrite and clear it
            print(self.text, end="", file=sys.stderr, flush=True)

    def end(self, status: str) -> None:
        print(("\r" if self.tty else "") + f"{self.text} {status}", file=sys.stderr, flush=True)


def run_workflow(workflow: str | os.PathLike | Mapping,
                 overrides: Optional[Iterable[str] | Mapping[str, Any]] = None,
                 output_dir: Optional[str | os.PathLike] = None,
                 node_classes: Optional[Mapping[str, type]] = None) -> RunResult:
    """Validate and execute a workflow (path or dict, UI or API format).

    ``overrides``: see :func:`apply_overrides`; ``output_dir``: where output nodes write
    (``runtime.configure_standalone(output=...)``); ``node_classes``: defaults to the
    pack's ``NODE_CLASS_MAPPINGS``. Raises :class:`WorkflowError` for an invalid
    workflow, :class:`NodeExecutionError` when a node fails, and ``runtime.Interrupted``
    (or ``KeyboardInterrupt``) when cancelled.
    """
    node_classes = package_nodes() if node_classes is None else node_classes
    prompt = load_workflow(workflow, node_classes)
    apply_overrides(prompt, overrides or (), node_classes)
    order = validate_prompt(prompt, node_classes)
    if output_dir is not None:
        runtime.configure_standalone(output=output_dir)
    runtime.output_dir().mkdir(parents=True, exist_ok=True)
    runtime.clear_interrupt()
    result, values = RunResult(), {}
    for index, node_id in enumerate(order, 1):
        node = prompt[node_id]
        cls = node_classes[node["class_type"]]
        status, start = _StatusLine(index, len(order), node_id, node["class_type"]), time.perf_counter()
        try:
            outputs, ui = _execute(node_id, prompt, cls, values)
        except (runtime.Interrupted, KeyboardInterrupt):
            status.end("cancelled")
            raise
        except Exception as exc:
            status.end("failed")
            raise NodeExecutionError(f"{node_label(node_id, node)} failed: {type(exc).__name__}: {exc}",
                                     node_id) from exc
        seconds = time.perf_counter() - start
        status.end(f"done in {seconds:.1f}s")
        values[node_id] = outputs
        flags = getattr(cls, "OUTPUT_IS_LIST", None) or (False,) * len(outputs)
        result.outputs[node_id] = tuple(v[0] if len(v) == 1 and not flags[s] else v for s, v in enumerate(outputs))
        result.executed.append(node_id)
        result.seconds[node_id] = seconds
        if ui:
            result.ui[node_id] = ui
            result.files.extend(f for f in _files(ui) if f not in result.files)
    return result
