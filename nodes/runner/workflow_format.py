"""The two workflow formats and conversion between them.

*API prompt* (what ComfyUI's ``/prompt`` takes, what the runner executes)::

    {"<id>": {"class_type": "CVS_X", "inputs": {name: literal | [source_id, output_slot]},
              "_meta": {"title": "..."}}}

Any list value is a link. *UI workflow* (what the editor saves, version 0.4): top-level
``nodes`` and ``links``; each node has ``id``, ``type``, ``mode``, ``inputs``
(``{name, type, link}``), ``outputs`` and positional ``widgets_values``; each link is
``[link_id, from_node, from_slot, to_node, to_slot, type]``.

Mapping ``widgets_values`` to input names needs the node definitions (``INPUT_TYPES``),
so both conversions take the node classes.
"""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Any, Mapping, Optional

from ..comfy.contract import SEED_NAMES, InputSpec, input_specs
from ..comfy.jsonfile import read_json_object

UI_ONLY_TYPES = ("Note", "MarkdownNote")
MUTED, BYPASSED = 2, 4
_ABSENT = object()


class WorkflowError(ValueError):
    """A workflow that cannot be converted, validated or run; the message says where."""


def types_match(output_type: Any, input_type: Any) -> bool:
    """ComfyUI's link rule: ``*`` matches anything, otherwise the comma-separated sets overlap.

    A combo input (a list of choices) accepts ``COMBO`` outputs.
    """
    if isinstance(input_type, (list, tuple)):
        input_type = "COMBO"
    if isinstance(output_type, (list, tuple)):
        output_type = "COMBO"
    if output_type == "*" or input_type == "*" or output_type == input_type:
        return True
    return bool({t.strip() for t in str(output_type).split(",")} & {t.strip() for t in str(input_type).split(",")})


def node_label(node_id: str, node: Mapping) -> str:
    """``node #4 'My title' (CVS_X)`` for messages (the title only when it says more)."""
    class_type = node.get("class_type", "?")
    title = (node.get("_meta") or {}).get("title")
    named = f" '{title}'" if title and title != class_type else ""
    return f"node #{node_id}{named} ({class_type})"


# --------------------------------------------------------------------------- loading
def is_ui_format(data: Mapping) -> bool:
    return isinstance(data.get("nodes"), list) and "links" in data


def load_workflow(source: str | os.PathLike | Mapping, node_classes: Optional[Mapping[str, type]] = None) -> dict:
    """Read a workflow (a file path or an already parsed dict) and return an API prompt.

    UI-format workflows are converted with :func:`ui_to_api` using ``node_classes``
    (default: the pack's ``NODE_CLASS_MAPPINGS``); API prompts are normalised (string
    ids, ``[str id, int slot]`` links, a ``_meta.title`` on every node). Always returns
    a new dict, so callers may edit it.
    """
    if isinstance(source, Mapping):
        data = source
    else:
        data = read_json_object(source, "workflow file", WorkflowError)
    if is_ui_format(data):
        return ui_to_api(data, package_nodes() if node_classes is None else node_classes)
    return normalize_api(data)


def package_nodes() -> Mapping[str, type]:
    """The pack's registered node classes."""
    from ... import NODE_CLASS_MAPPINGS
    return NODE_CLASS_MAPPINGS


def normalize_api(prompt: Mapping) -> dict:
    """A checked copy of an API prompt with string ids, ``[str, int]`` links and titles."""
    out = {}
    for node_id, node in prompt.items():
        if not isinstance(node, Mapping) or not isinstance(node.get("class_type"), str):
            raise WorkflowError(f"node #{node_id} has no class_type; is this an API prompt or a UI workflow?")
        inputs = {}
        for name, value in (node.get("inputs") or {}).items():
            if isinstance(value, list):
                if len(value) != 2 or not isinstance(value[1], int) or isinstance(value[1], bool):
                    raise WorkflowError(f"{node_label(node_id, node)}: input '{name}' is a bad link {value}; "
                                        "expected [node_id, output_slot]")
                value = [str(value[0]), value[1]]
            inputs[name] = value
        meta = dict(node.get("_meta") or {})
        meta.setdefault("title", node["class_type"])
        out[str(node_id)] = {"class_type": node["class_type"], "inputs": inputs, "_meta": meta}
    return out


# --------------------------------------------------------------------------- UI -> API
def _parse_links(raw_links: list) -> dict:
    """``{link_id: (from_node, from_slot, to_node, to_slot, type)}`` from list or dict links."""
    links = {}
    for link in raw_links or []:
        if isinstance(link, Mapping):
            link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                    link.get("type")]
        links[link[0]] = tuple(link[1:6])
    return links


def _widget_values(node: Mapping, specs: list[InputSpec]) -> dict:
    """Map a UI node's ``widgets_values`` onto its widget inputs, as the frontend does.

    A list is positional over the node's widgets in declaration order, where an input
    with :attr:`InputSpec.has_control` owns two slots (its value, then the control
    value, whatever that value is). Before that, the frontend's ``migrateWidgetsValues``
    drops the values of ``forceInput`` inputs when a file holds one value per widget-typed
    input including them (files from before forceInput inputs lost their widget). A dict
    (``{name: value}``) maps by name.
    """
    values = node.get("widgets_values")
    widgets = [s for s in specs if s.is_widget]
    if isinstance(values, Mapping):
        return {s.name: values[s.name] for s in widgets if s.name in values}
    values = list(values or [])
    forced = [s for s in specs if s.options.get("forceInput")]
    if forced:
        legacy = [s for s in specs if s.is_widget or s in forced]
        slots = sum(2 if (s.options.get("control_after_generate") or s.name in SEED_NAMES) else 1 for s in legacy)
        if slots == len(values):
            values = [v for i, v in enumerate(values) if not (i < len(legacy) and legacy[i] in forced)]
    out, i = {}, 0
    for spec in widgets:
        if i >= len(values):
            break
        out[spec.name] = values[i]
        i += 2 if spec.has_control else 1
    return out


class _UIGraph:
    """A UI workflow with its links, resolving what feeds each input."""

    def __init__(self, workflow: Mapping):
        self.nodes = {node["id"]: node for node in workflow["nodes"]}
        self.links = _parse_links(workflow["links"])

    def source(self, link_id: Any, seen: frozenset = frozenset()) -> Any:
        """What an input fed by ``link_id`` receives: a ``[id, slot]`` link, a literal
        (from a PrimitiveNode) or ``_ABSENT`` (muted or missing source, empty Reroute or bypass)."""
        if link_id in seen:
            raise WorkflowError(f"link {link_id} is part of a loop of Reroute/bypassed nodes")
        seen = seen | {link_id}
        from_id, from_slot, _, _, link_type = self.links.get(link_id, (None,) * 5)
        origin = self.nodes.get(from_id)
        if origin is None or origin.get("mode", 0) == MUTED:  # a stale link counts as unlinked, as in the editor
            return _ABSENT
        if origin["type"] == "Reroute":
            upstream = (origin.get("inputs") or [{}])[0].get("link")
            return _ABSENT if upstream is None else self.source(upstream, seen)
        if origin["type"] == "PrimitiveNode":
            values = origin.get("widgets_values") or []
            if not values:
                raise WorkflowError(f"PrimitiveNode #{from_id} has no value")
            return values[0]
        if origin.get("mode", 0) == BYPASSED:
            outputs = origin.get("outputs") or []
            out_type = outputs[from_slot].get("type", link_type) if from_slot < len(outputs) else link_type
            for inp in origin.get("inputs") or []:
                if inp.get("link") is not None and types_match(out_type, inp.get("type", "*")):
                    return self.source(inp["link"], seen)
            return _ABSENT
        return [str(from_id), from_slot]


def ui_to_api(workflow: Mapping, node_classes: Mapping[str, type]) -> dict:
    """Convert a UI workflow into an API prompt (see the module doc for both formats).

    Notes are dropped, Reroutes followed, PrimitiveNode values copied into their targets,
    muted nodes (mode 2) dropped, bypassed nodes (mode 4) passed through (each output
    takes the node's first linked input of a matching type). ``widgets_values`` map onto
    the widget inputs in required-then-optional order, skipping the
    ``control_after_generate`` value after seed-like inputs; a linked widget takes the link.
    """
    subgraphs = {sg.get("id") for sg in (workflow.get("definitions") or {}).get("subgraphs") or []}
    graph = _UIGraph(workflow)
    prompt = {}
    for node_id, node in graph.nodes.items():
        node_type = node.get("type")
        if node_type in UI_ONLY_TYPES + ("Reroute", "PrimitiveNode") or node.get("mode", 0) in (MUTED, BYPASSED):
            continue
        if node_type in subgraphs:
            raise WorkflowError(f"node #{node_id} is a subgraph; subgraphs are not supported here, "
                                "unpack it in ComfyUI (right-click > Unpack Subgraph) and save again")
        cls = node_classes.get(node_type)
        if cls is None:
            raise WorkflowError(f"node #{node_id} has unknown type '{node_type}': it is not a node of this pack "
                                f"(known: {', '.join(sorted(node_classes)) or 'none'})")
        inputs = _widget_values(node, input_specs(cls))
        for slot in node.get("inputs") or []:
            if slot.get("link") is None:
                continue
            value = graph.source(slot["link"])
            if value is not _ABSENT:
                inputs[(slot.get("widget") or {}).get("name", slot["name"])] = value
        prompt[str(node_id)] = {"class_type": node_type, "inputs": inputs,
                                "_meta": {"title": node.get("title") or node_type}}
    return prompt


# --------------------------------------------------------------------------- API -> UI
_COLUMN_WIDTH, _NODE_WIDTH, _ROW_HEIGHT = 420, 340, 26
_GAP = 80  # between a node and the next one below: the next one's title bar (30) and source badge (~20) fit
_MULTILINE_ROWS = 3  # a multiline text box takes about three widget rows
_PREVIEW_HEIGHT = 300  # room an output node keeps for the preview it shows after a run
_NOTE_SIZE = (760, 150)


def _depths(prompt: Mapping) -> dict:
    """Longest distance of every node from a node without linked inputs."""
    depths: dict = {}

    def depth(node_id: str, stack: tuple = ()) -> int:
        if node_id not in depths:
            if node_id in stack:
                raise WorkflowError(f"the workflow has a cycle through node #{node_id}")
            sources = [v[0] for v in prompt[node_id]["inputs"].values() if isinstance(v, list) and v[0] in prompt]
            depths[node_id] = 1 + max((depth(s, stack + (node_id,)) for s in sources), default=-1)
        return depths[node_id]

    for node_id in prompt:
        depth(node_id)
    return depths


def api_to_ui(prompt: Mapping, node_defs: Mapping[str, type], note: Optional[str] = None) -> dict:
    """Build a UI workflow (version 0.4) from an API prompt, laid out left to right by depth.

    Node ids are kept when they are all numeric, else numbered from 1. Widget inputs
    that are linked, or absent from the prompt, get their default in ``widgets_values``;
    widgets with a control widget (:attr:`InputSpec.has_control`) are followed by a
    ``"fixed"`` control value. Inputs are listed in the order the frontend saves them
    (socket-only inputs, then linked widget inputs), so its loader keeps every link slot.
    ``load_workflow(api_to_ui(p, defs), defs) == load_workflow(p)`` for a prompt that
    sets every widget input. Heights leave room for multiline text boxes, for the
    preview an output node shows after a run and for the next node's title bar, so no
    widget is hidden under another node. ``note`` (Markdown) becomes a MarkdownNote at
    the top left, above the graph; notes are not part of the prompt.
    """
    prompt = normalize_api(prompt)
    numeric = all(i.isdigit() for i in prompt)
    ui_ids = {i: int(i) if numeric else n for n, i in enumerate(prompt, 1)}
    depths = _depths(prompt)
    nodes, links, outputs_of = [], [], defaultdict(lambda: defaultdict(list))
    top = 50 + (_NOTE_SIZE[1] + _GAP if note else 0)
    column_y: dict = defaultdict(lambda: top)
    for node_id in sorted(prompt, key=lambda i: (depths[i], ui_ids[i])):
        node = prompt[node_id]
        cls = node_defs.get(node["class_type"])
        if cls is None:
            raise WorkflowError(f"{node_label(node_id, node)}: unknown node type")
        specs = input_specs(cls)
        unknown = set(node["inputs"]) - {s.name for s in specs}
        if unknown:
            raise WorkflowError(f"{node_label(node_id, node)}: unknown input(s) {sorted(unknown)}")
        # The frontend's saved order: every socket-only input, then the linked widget
        # inputs (it drops unlinked widget inputs when it saves); a link's target slot
        # is the index in this list.
        sockets, linked_widgets, widgets_values = [], [], []
        for spec in specs:
            value = node["inputs"].get(spec.name, _ABSENT)
            linked = isinstance(value, list)
            if spec.is_widget:
                widgets_values.append(spec.default() if linked or value is _ABSENT else value)
                if spec.has_control:
                    widgets_values.append("fixed")
            if linked or not spec.is_widget:
                entry = {"name": spec.name, "type": spec.type_name, "link": value if linked else None}
                if spec.is_widget:
                    entry["widget"] = {"name": spec.name}
                (linked_widgets if spec.is_widget else sockets).append(entry)
        ui_inputs = sockets + linked_widgets
        for target_slot, entry in enumerate(ui_inputs):
            if entry["link"] is None:
                continue
            src, slot = entry["link"]
            if src not in prompt:
                raise WorkflowError(f"{node_label(node_id, node)}: input '{entry['name']}' links to "
                                    f"node #{src}, which is not in the workflow")
            link_id = len(links) + 1
            src_type = node_defs[prompt[src]["class_type"]].RETURN_TYPES[slot]
            src_type = "COMBO" if isinstance(src_type, (list, tuple)) else src_type
            links.append([link_id, ui_ids[src], slot, ui_ids[node_id], target_slot, src_type])
            outputs_of[src][slot].append(link_id)
            entry["link"] = link_id
        multiline = sum(1 for spec in specs if spec.is_widget and spec.options.get("multiline"))
        rows = max(len(ui_inputs), len(cls.RETURN_TYPES)) + len(widgets_values) + (_MULTILINE_ROWS - 1) * multiline
        height = 30 + _ROW_HEIGHT * rows + (_PREVIEW_HEIGHT if getattr(cls, "OUTPUT_NODE", False) is True else 0)
        ui_node = {"id": ui_ids[node_id], "type": node["class_type"],
                   "pos": [50 + _COLUMN_WIDTH * depths[node_id], column_y[depths[node_id]]],
                   "size": [_NODE_WIDTH, height], "flags": {}, "order": len(nodes), "mode": 0,
                   "inputs": ui_inputs, "outputs": [], "properties": {"Node name for S&R": node["class_type"]},
                   "widgets_values": widgets_values}
        if node["_meta"]["title"] != node["class_type"]:
            ui_node["title"] = node["_meta"]["title"]
        column_y[depths[node_id]] += height + _GAP
        nodes.append((node_id, ui_node))
    for node_id, ui_node in nodes:
        cls = node_defs[prompt[node_id]["class_type"]]
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        for slot, out_type in enumerate(cls.RETURN_TYPES):
            out_type = "COMBO" if isinstance(out_type, (list, tuple)) else out_type
            ui_node["outputs"].append({"name": names[slot], "type": out_type,
                                       "links": outputs_of[node_id][slot], "slot_index": slot})
    ui_nodes = [n for _, n in nodes]
    if note:
        ui_nodes.append({"id": max(ui_ids.values(), default=0) + 1, "type": "MarkdownNote", "pos": [50, 50],
                         "size": list(_NOTE_SIZE), "flags": {}, "order": len(ui_nodes), "mode": 0,
                         "inputs": [], "outputs": [], "title": "About this workflow", "properties": {},
                         "widgets_values": [note]})
    return {"last_node_id": max((n["id"] for n in ui_nodes), default=0), "last_link_id": len(links),
            "nodes": ui_nodes, "links": links, "groups": [], "config": {}, "extra": {},
            "version": 0.4}
