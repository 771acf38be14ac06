"""ComfyUI's own web frontend, driven in headless Chromium (Playwright), for the
integration tests.

Everything here goes through the frontend's own code: ``app.loadGraphData`` (what
opening a file or a template does), ``app.graphToPrompt`` (what Queue sends to
``/prompt``), ``app.graph.serialize`` (what Save writes) and ``app.queuePrompt`` (the
Run button). Nothing is re-implemented in Python, so a difference between the pack's
runner and the frontend shows up as a test failure.

Chromium comes from Debian (``apt-get install chromium``) and the driver from PyPI
(``pip install playwright``); ``tests/comfyui_setup.sh`` installs both. Playwright's own
browser download is not used (``CVS_CHROMIUM`` or the first of ``chromium``,
``chromium-browser``, ``google-chrome`` on PATH).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

# The frontend's first-run state on a fresh user folder: the template browser opens
# over the canvas, and migrating the navigation-mode setting raises a TypeError inside
# the frontend (1.27) before any workflow is loaded. A user who has opened ComfyUI once
# has these settings; the tests start from there.
USER_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Canvas.NavigationMode": "legacy",
    "Comfy.Canvas.LeftMouseClickBehavior": "panning",
    "Comfy.Canvas.MouseWheelScroll": "zoom",
}
BADGE_HEIGHT = 24  # the node-source badge ("cvs-pack") drawn above each title bar
READY_TIMEOUT_MS = 180_000


def find_chromium() -> Optional[str]:
    """The Chromium executable to drive, or ``None``."""
    explicit = os.environ.get("CVS_CHROMIUM", "").strip()
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def write_user_settings(user_dir: Path) -> None:
    """Settings of a user who has opened ComfyUI before (see ``USER_SETTINGS``)."""
    path = user_dir / "default" / "comfy.settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(USER_SETTINGS, indent=2) + "\n", encoding="utf-8")


class Frontend:
    """One page of ComfyUI's frontend, with the page errors it raised."""

    def __init__(self, base_url: str, executable: str):
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=executable,
                                                args=["--no-sandbox", "--disable-gpu", "--no-proxy-server"])
        self.page = self.browser.new_page(viewport={"width": 1800, "height": 1100})
        self.page_errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        self.base_url = base_url
        self.page.goto(base_url + "/")
        self.page.wait_for_function("() => window.app && window.app.graph && window.app.canvas && "
                                    "window.LiteGraph && Object.keys(LiteGraph.registered_node_types).length > 0",
                                    timeout=READY_TIMEOUT_MS)

    def close(self) -> None:
        try:
            self.browser.close()
        finally:
            self._pw.stop()

    def evaluate(self, script: str, arg: Any = None) -> Any:
        return self.page.evaluate(script, arg)

    def open_dialogs(self) -> list[str]:
        """Texts of the dialogs on screen (a missing-node report is one)."""
        return self.evaluate("() => Array.from(document.querySelectorAll('.p-dialog'))"
                             ".filter(d => d.offsetParent !== null).map(d => d.innerText.slice(0, 400))")

    def load(self, workflow: dict, name: str) -> dict:
        """Open ``workflow`` with the frontend's loader and return what the frontend makes of it.

        ``prompt``: ``graphToPrompt().output`` (what Queue sends); ``saved``:
        ``graphToPrompt().workflow``, the graph as Export writes it and as it is embedded in outputs; ``unknown_types``: node types the frontend has no definition for;
        ``nodes``: per node its title, bounding box ``[x, y, w, h]`` (title bar included),
        and each widget's name, top and height.
        """
        return self.evaluate("""async ([workflow, name]) => {
            await window.app.loadGraphData(workflow, true, true, name);
            await new Promise(r => setTimeout(r, 300));
            const p = await window.app.graphToPrompt();
            const known = LiteGraph.registered_node_types;
            const nodes = window.app.graph.nodes.map(n => {
                const box = new Float32Array(4); n.getBounding(box, true);
                return {id: n.id, type: n.type, title: n.title, box: Array.from(box), size: [...n.size],
                        widgets: (n.widgets || []).map(w => ({name: w.name, y: w.y ?? null,
                                  height: w.computedHeight ?? (w.computeSize ? w.computeSize(n.size[0])[1] : 20)}))};
            });
            return {prompt: p.output, saved: p.workflow, nodes,
                    unknown_types: window.app.graph.nodes.map(n => n.type).filter(t => !(t in known))};
        }""", [workflow, name])

    def set_widgets(self, values: dict) -> list[str]:
        """Set widget values on the open graph, as a user would: ``{node_id: {widget: value}}``.
        Returns the widgets it could not find."""
        return self.evaluate("""(values) => {
            const missing = [];
            for (const [id, widgets] of Object.entries(values)) {
                const node = window.app.graph.getNodeById(Number(id));
                for (const [name, value] of Object.entries(widgets)) {
                    const w = node && (node.widgets || []).find(w => w.name === name);
                    if (!w) { missing.push(`#${id}.${name}`); continue; }
                    w.value = value;
                    w.callback?.(value);
                }
            }
            window.app.graph.setDirtyCanvas(true, true);
            return missing;
        }""", values)

    def queue(self) -> str:
        """Press Run (``app.queuePrompt``) and return the prompt id the server answered."""
        with self.page.expect_response(lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST",
                                       timeout=60_000) as answer:
            self.evaluate("() => window.app.queuePrompt(0, 1)")
        body = answer.value.json()
        if "prompt_id" not in body:
            raise AssertionError(f"/prompt refused the frontend's prompt: {json.dumps(body)[:2000]}")
        return body["prompt_id"]

    def node_outputs(self) -> dict:
        """What the frontend received for each node's preview (``app.nodeOutputs``)."""
        return self.evaluate("() => JSON.parse(JSON.stringify(window.app.nodeOutputs || {}))")

    def screenshot(self, path: Path) -> None:
        self.evaluate("() => { const c = window.app.canvas; c.ds.scale = 0.6; c.ds.offset = [0, 40]; "
                      "c.setDirty(true, true); }")
        time.sleep(0.3)
        self.page.screenshot(path=str(path))


def overlaps(nodes: list[dict], badge: float = BADGE_HEIGHT) -> list[tuple[str, str]]:
    """Pairs of node titles whose boxes overlap; each box is extended upwards by the
    source badge drawn above its title bar."""
    boxes = [(n["title"], n["box"][0], n["box"][1] - badge, n["box"][2], n["box"][3] + badge) for n in nodes]
    found = []
    for i, (ta, xa, ya, wa, ha) in enumerate(boxes):
        for tb, xb, yb, wb, hb in boxes[i + 1:]:
            if xa < xb + wb and xb < xa + wa and ya < yb + hb and yb < ya + ha:
                found.append((ta, tb))
    return found


def hidden_widgets(nodes: list[dict]) -> list[str]:
    """Widgets that end below their node's bottom edge (drawn under whatever is there)."""
    out = []
    for n in nodes:
        for w in n["widgets"]:
            if w["y"] is not None and w["height"] is not None and w["y"] + w["height"] > n["size"][1] + 1:
                out.append(f"{n['title']}.{w['name']}")
    return out
