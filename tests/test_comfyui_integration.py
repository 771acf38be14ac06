"""The pack inside a real ComfyUI server (DESIGN.md, "Tests" point 5).

With ``COMFYUI_PATH`` pointing at a ComfyUI checkout (prepared with
``tests/comfyui_setup.sh``), a session fixture starts ``main.py --cpu`` on 127.0.0.1 with
this repository as a custom node under a folder name that is not the repository's, and
the pack's smoke weights registered as ComfyUI's ``models/<family>/`` through an
``extra_model_paths.yaml``. The tests then check that the pack imports and registers
every node, post every example workflow to ``/prompt`` (converted with the pack's own
``load_workflow``, loaders pointed at the smoke weights, a CPU-sized working resolution)
and check the files it wrote, and cancel a running workflow with ``/interrupt``.

Without ``COMFYUI_PATH`` (or without ``main.py`` there) every test is skipped with the
reason. All traffic goes to 127.0.0.1; the server runs with ``HF_HUB_OFFLINE=1``.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Optional

import pytest

from consistent_video.nodes.comfy import families

from comfyui_frontend import Frontend, find_chromium, hidden_widgets, overlaps, write_user_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = REPO_ROOT / "example_workflows"
PACK_FOLDER = "cvs-pack-under-test"  # deliberately not the repository's folder name
LOADER = "CVS_ModelLoader"
SMOKE_ENTRY = "cvs-smoke"  # the folder name of the smoke weights under models/<family>/

STARTUP_TIMEOUT = 180.0
SMOKE_WEIGHTS_TIMEOUT = 600.0
WORKFLOW_TIMEOUT = float(os.environ.get("CVS_COMFYUI_WORKFLOW_TIMEOUT", "900"))
LOG_TAIL_LINES = 120
# The server runs on the CPU. Examples keep their graph and every setting except those
# the model family's `smoke_overrides` name (a smaller working resolution, as in the
# demo): at the saved 720 px an example takes minutes on 2 CPU cores.
# CVS_COMFYUI_FULL_SIZE=1 runs them as saved.
FULL_SIZE = os.environ.get("CVS_COMFYUI_FULL_SIZE", "") not in ("", "0")


def _comfyui_path() -> tuple[Optional[Path], str]:
    raw = os.environ.get("COMFYUI_PATH", "").strip()
    if not raw:
        return None, "COMFYUI_PATH is not set (point it at a ComfyUI checkout prepared with tests/comfyui_setup.sh)"
    path = Path(raw).expanduser().resolve()
    if not (path / "main.py").is_file():
        return None, f"COMFYUI_PATH={raw} has no main.py; it must be the root of a ComfyUI checkout"
    return path, ""


COMFYUI_PATH, _SKIP_REASON = _comfyui_path()
pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(COMFYUI_PATH is None, reason=_SKIP_REASON)]


# --------------------------------------------------------------------------- the server
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ``main.py`` process on 127.0.0.1 and a tiny JSON client for its HTTP API."""

    def __init__(self, root: Path, port: int, log_path: Path, output_dir: Path, temp_dir: Path,
                 smoke_entries: dict[str, str]):
        self.root, self.port, self.log_path = root, port, log_path
        self.output_dir, self.temp_dir = output_dir, temp_dir
        self.smoke_entries = smoke_entries  # family -> entry name under models/<family>/
        self.base = f"http://127.0.0.1:{port}"
        self.client_id = uuid.uuid4().hex
        self.proc: Optional[subprocess.Popen] = None
        self._object_info: Optional[dict] = None
        # Never route loopback traffic through a proxy from the environment.
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- process
    def start(self, args: list[str], env: dict) -> None:
        self._log_file = open(self.log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen([sys.executable, "main.py", *args], cwd=self.root, env=env,
                                     stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if getattr(self, "_log_file", None) is not None:
            self._log_file.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        tail = "\n".join(self.log().splitlines()[-lines:])
        return f"\n----- ComfyUI log ({self.log_path}), last {lines} lines -----\n{tail}\n----- end of log -----"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float) -> float:
        """Wait until ``/object_info`` answers; return the seconds it took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if not self.alive():
                pytest.fail(f"ComfyUI exited with status {self.proc.returncode} before it answered"
                            + self.log_tail())
            try:
                self.get("/object_info", timeout=10)
                return time.monotonic() - start
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.5)
        pytest.fail(f"ComfyUI did not answer /object_info within {timeout:.0f} s" + self.log_tail())

    # -- HTTP
    def _request(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        with self._http.open(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw.strip() else None

    def get(self, path: str, timeout: float = 30) -> Any:
        return self._request("GET", path, timeout=timeout)

    def post(self, path: str, body: Any, timeout: float = 30) -> Any:
        return self._request("POST", path, body, timeout=timeout)

    def object_info(self) -> dict:
        """``/object_info`` (fetched once; node definitions do not change while it runs)."""
        if self._object_info is None:
            self._object_info = self.get("/object_info", timeout=60)
        return self._object_info

    def queue_prompt(self, prompt: dict) -> str:
        """POST ``/prompt``; fail with the server's validation errors on HTTP 400."""
        try:
            answer = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")
            pytest.fail(f"/prompt refused the workflow (HTTP {exc.code}): {detail}\nprompt: {json.dumps(prompt)}"
                        + self.log_tail())
        assert not answer.get("node_errors"), f"/prompt reported node errors: {answer['node_errors']}"
        return answer["prompt_id"]

    def wait_history(self, prompt_id: str, timeout: float) -> dict:
        """Poll ``/history/<id>`` until the prompt is done; return its entry."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if not self.alive():
                pytest.fail(f"ComfyUI died while running prompt {prompt_id}" + self.log_tail())
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            time.sleep(0.5)
        pytest.fail(f"prompt {prompt_id} did not finish within {timeout:.0f} s; queue: {self.get('/queue')}"
                    + self.log_tail())

    def is_running(self, prompt_id: str) -> bool:
        return any(item[1] == prompt_id for item in self.get("/queue").get("queue_running", []))


class EventStream:
    """The server's websocket messages for one client id, collected by a thread.

    Only used when ``websocket-client`` is installed; the tests fall back to polling.
    """

    def __init__(self, server: ComfyServer):
        import websocket  # websocket-client

        self.events: "queue.Queue[dict]" = queue.Queue()
        self._ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws?clientId={server.client_id}",
                                               timeout=5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        import websocket

        while not self._stop.is_set():
            try:
                message = self._ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception:  # closed
                return
            if isinstance(message, str):  # binary frames are previews
                try:
                    self.events.put(json.loads(message))
                except ValueError:
                    pass

    def wait_for(self, predicate, timeout: float) -> Optional[dict]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                event = self.events.get(timeout=max(0.05, min(1.0, end - time.monotonic())))
            except queue.Empty:
                continue
            if predicate(event):
                return event
        return None

    def close(self) -> None:
        self._stop.set()
        try:
            self._ws.close()
        except Exception:
            pass
        self._thread.join(timeout=10)


def _write_smoke_weights(models_dir: Path, staging: Path, env: dict) -> dict[str, str]:
    """Run the pack's own ``smoke-weights`` CLI and lay the result out as ComfyUI models.

    ``smoke-weights DIR`` writes ``DIR/<family>/``; each becomes
    ``models_dir/<models folder>/cvs-smoke/`` (the family's ``folder_name``: families that
    share a release share a folder, and their files are merged into one entry, as a user's
    unzipped release would be). Returns ``{family: entry name}``.
    """
    cmd = [sys.executable, "-m", "consistent_video", "smoke-weights", str(staging)]
    done = subprocess.run(cmd, cwd=staging.parent, env=env, capture_output=True, text=True,
                          timeout=SMOKE_WEIGHTS_TIMEOUT)
    if done.returncode != 0:
        pytest.fail(f"`{' '.join(cmd)}` failed with status {done.returncode}:\n{done.stdout}\n{done.stderr}")
    entries = {}
    for family_dir in sorted(p for p in staging.iterdir() if p.is_dir()):
        target = models_dir / families.get(family_dir.name).folder_name / SMOKE_ENTRY
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(family_dir, target, dirs_exist_ok=True)
        shutil.rmtree(family_dir)
        entries[family_dir.name] = SMOKE_ENTRY
    if not entries:
        pytest.fail(f"`{' '.join(cmd)}` wrote no <family>/ folder into {staging}:\n{done.stdout}\n{done.stderr}")
    return entries


def _server_env() -> dict:
    """Environment of the server: no downloads (it must never leave the machine)."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               DO_NOT_TRACK="1", PYTHONUNBUFFERED="1")
    return env


def _cli_env(tmp: Path) -> dict:
    """Environment for ``python -m consistent_video``: this checkout importable under
    that name, whether or not (and wherever) the pack is pip-installed. The server does
    not get it: inside ComfyUI the pack must work from its custom_nodes folder alone."""
    link_dir = tmp / "pythonpath"
    link_dir.mkdir(exist_ok=True)
    (link_dir / "consistent_video").symlink_to(REPO_ROOT, target_is_directory=True)
    env = _server_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(link_dir), env.get("PYTHONPATH", "")]))
    env["CVS_NO_PROGRESS"] = "1"
    return env


@pytest.fixture(scope="session")
def comfy(tmp_path_factory) -> ComfyServer:
    """A running ComfyUI with the pack and its smoke weights; stopped after the session."""
    tmp = tmp_path_factory.mktemp("comfyui")
    dirs = {name: tmp / name for name in ("custom_nodes", "models", "input", "output", "temp", "user", "smoke")}
    for name, path in dirs.items():
        if name != "smoke":
            path.mkdir()
    (dirs["custom_nodes"] / PACK_FOLDER).symlink_to(REPO_ROOT, target_is_directory=True)
    write_user_settings(dirs["user"])
    t0 = time.monotonic()
    smoke_entries = _write_smoke_weights(dirs["models"], dirs["smoke"], _cli_env(tmp))
    smoke_seconds = time.monotonic() - t0

    config = {"cvs_integration_test": {"custom_nodes": str(dirs["custom_nodes"]),
                                       **{families.get(family).folder_name:
                                          str(dirs["models"] / families.get(family).folder_name)
                                          for family in smoke_entries}}}
    config_path = tmp / "extra_model_paths.yaml"
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")  # JSON is YAML

    server = ComfyServer(COMFYUI_PATH, _free_port(), tmp / "comfyui.log", dirs["output"], dirs["temp"],
                         smoke_entries)
    args = ["--cpu", "--listen", "127.0.0.1", "--port", str(server.port),
            "--output-directory", str(dirs["output"]), "--input-directory", str(dirs["input"]),
            "--temp-directory", str(dirs["temp"]), "--user-directory", str(dirs["user"]),
            "--database-url", f"sqlite:///{tmp / 'comfyui.db'}",
            "--extra-model-paths-config", str(config_path),
            # only this pack, whatever else the checkout's custom_nodes/ holds
            "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_FOLDER]
    server.start(args, _server_env())
    try:
        ready = server.wait_ready(STARTUP_TIMEOUT)
        print(f"\nComfyUI on 127.0.0.1:{server.port}: smoke weights {smoke_seconds:.1f} s, "
              f"server ready after {ready:.1f} s; log: {server.log_path}")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def events(comfy) -> Optional[EventStream]:
    """The websocket, or ``None`` without ``websocket-client`` (then the tests poll)."""
    try:
        stream = EventStream(comfy)
    except ImportError:
        yield None
        return
    try:
        yield stream
    finally:
        stream.close()


# --------------------------------------------------------------------------- helpers
def _pack_mappings() -> dict:
    import consistent_video

    return consistent_video.NODE_CLASS_MAPPINGS


def _set_ints(prompt: dict, object_info: dict, values: dict) -> list[str]:
    """Set the INT inputs named in ``values`` on every node of the pack that declares them
    (in place, clamped to the declared min/max, links left alone); return what changed."""
    changed = []
    for node_id, node in prompt.items():
        if not node["class_type"].startswith("CVS_"):
            continue
        spec = object_info.get(node["class_type"], {}).get("input", {})
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        for name, target in values.items():
            if declared.get(name, [None])[0] != "INT" or isinstance(node["inputs"].get(name), list):
                continue
            options = declared[name][1] if len(declared[name]) > 1 else {}
            target = max(min(target, options.get("max", target)), options.get("min", target))
            if node["inputs"].get(name) != target:
                node["inputs"][name] = target
                changed.append(f"#{node_id}.{name}={target}")
    return changed


def _api_prompt(path: Path, comfy: ComfyServer, work: Optional[dict] = None) -> dict:
    """The example as an API prompt (the pack's own converter) with its loaders on the
    smoke weights, each family's ``smoke_overrides`` applied (as the demo does), plus ``work``."""
    from consistent_video.nodes.runner.execution import load_workflow

    prompt = load_workflow(path)
    for node_id, values in _smoke_widgets(comfy, prompt, path.name).items():
        prompt[node_id]["inputs"].update(values)
    _set_ints(prompt, comfy.object_info(), work or {})
    return prompt


def _output_files(comfy: ComfyServer, entry: dict) -> list[Path]:
    """Every file the history's ``outputs`` lists, located on disk (asserting it is there)."""
    roots = {"output": comfy.output_dir, "temp": comfy.temp_dir}
    files = []
    for node_id, node_outputs in entry.get("outputs", {}).items():
        for key, items in node_outputs.items():
            for item in items if isinstance(items, list) else []:
                if not isinstance(item, dict) or "filename" not in item:
                    continue
                kind = item.get("type", "output")
                assert kind in roots, f"node #{node_id} output '{key}' has unknown type {kind!r}: {item}"
                path = roots[kind] / item.get("subfolder", "") / item["filename"]
                assert path.is_file(), f"node #{node_id} listed {item} but {path} does not exist" + comfy.log_tail()
                assert path.stat().st_size > 0, f"node #{node_id} listed {item} but {path} is empty"
                files.append(path)
    return files


def _status_summary(entry: dict) -> str:
    status = entry.get("status", {})
    lines = [f"status_str={status.get('status_str')} completed={status.get('completed')}"]
    for name, data in status.get("messages", []):
        if name == "execution_error":
            lines.append(f"execution_error in node #{data.get('node_id')} ({data.get('node_type')}): "
                         f"{data.get('exception_type')}: {data.get('exception_message')}\n"
                         + "".join(data.get("traceback") or []))
        else:
            lines.append(name)
    return "\n".join(lines)


def _example_params() -> list:
    found = sorted(EXAMPLES_DIR.glob("*.json"))
    if found:
        return [pytest.param(p, id=p.stem) for p in found]
    return [pytest.param(None, id="no-example-workflows")]


# --------------------------------------------------------------------------- tests
def test_pack_imports_and_registers_every_node(comfy):
    log = comfy.log()
    import_lines = [line for line in log.splitlines() if line.rstrip().endswith(PACK_FOLDER) and "seconds" in line]
    assert import_lines, (f"ComfyUI's 'Import times for custom nodes' does not list {PACK_FOLDER}; "
                          "was the custom_nodes path from extra_model_paths.yaml used?" + comfy.log_tail())
    failed = [line for line in import_lines if "IMPORT FAILED" in line]
    assert not failed, f"ComfyUI could not import the pack: {failed}" + comfy.log_tail(200)
    cannot = [line for line in log.splitlines() if line.startswith("Cannot import") and PACK_FOLDER in line]
    assert not cannot, f"ComfyUI could not import the pack: {cannot}" + comfy.log_tail(200)

    mappings = _pack_mappings()
    assert mappings, "consistent_video.NODE_CLASS_MAPPINGS is empty: the pack registers no nodes"
    info = comfy.object_info()
    missing = sorted(set(mappings) - set(info))
    assert not missing, f"/object_info lacks the pack's nodes {missing}" + comfy.log_tail()
    for name in mappings:
        assert info[name]["python_module"] == f"custom_nodes.{PACK_FOLDER}", info[name]
        assert info[name]["category"].startswith("Consistent Video"), (name, info[name]["category"])


def test_loader_lists_smoke_weights(comfy):
    """``models/<family>/`` from extra_model_paths.yaml reaches the loader's choices."""
    info = comfy.get(f"/object_info/{LOADER}")
    if LOADER not in info:
        pytest.fail(f"/object_info has no {LOADER}" + comfy.log_tail())
    spec = info[LOADER]["input"]["required"].get("weights") or info[LOADER]["input"].get("optional", {}).get("weights")
    assert spec is not None, f"{LOADER} has no 'weights' input: {info[LOADER]['input']}"
    choices = spec[0] if isinstance(spec[0], list) else spec[1].get("options", [])
    assert SMOKE_ENTRY in choices, f"{LOADER}.weights choices {choices} lack the smoke entry '{SMOKE_ENTRY}'"


@pytest.mark.parametrize("workflow", _example_params())
def test_example_workflow_runs(comfy, workflow):
    if workflow is None:
        pytest.fail(f"no example workflows (*.json) in {EXAMPLES_DIR}; every release ships at least one")
    prompt = _api_prompt(workflow, comfy)
    start = time.monotonic()
    prompt_id = comfy.queue_prompt(prompt)
    entry = comfy.wait_history(prompt_id, WORKFLOW_TIMEOUT)
    seconds = time.monotonic() - start
    status = entry["status"]
    assert status["status_str"] == "success" and status["completed"], (
        f"{workflow.name} failed in ComfyUI:\n{_status_summary(entry)}" + comfy.log_tail())
    files = _output_files(comfy, entry)
    saved = [f for f in files if comfy.output_dir in f.parents]
    assert saved, f"{workflow.name} ran but its history lists no file in the output folder: {entry.get('outputs')}"
    print(f"\n{workflow.name}: {seconds:.1f} s in ComfyUI, wrote {len(files)} file(s): "
          + ", ".join(f"{f.name} ({f.stat().st_size:,} bytes)" for f in files[:6]))


# Settings that make the interrupted run long, per attempt: the whole clip, every
# refinement pass, and small windows so that progress reports (the cancel points) come
# often; the second attempt also works at a higher resolution.
_LONG_RUNS = (
    {"max_frames": 0, "refine_steps": 8, "frames_per_window": 2, "overlap": 0},
    {"max_frames": 0, "refine_steps": 8, "frames_per_window": 2, "overlap": 0, "size": 256, "max_resolution": 512},
)


def test_interrupt_cancels_a_running_workflow(comfy, events):
    """POST /interrupt while the pack's model node is in its loop: the prompt ends as
    interrupted inside that node, and the server and the pack keep working."""
    examples = sorted(EXAMPLES_DIR.glob("*.json"))
    if not examples:
        pytest.fail(f"no example workflows (*.json) in {EXAMPLES_DIR} to interrupt")
    attempts = []
    for work in _LONG_RUNS:
        prompt = _api_prompt(examples[0], comfy, work)
        # The node to cancel: the pack's node that runs a model (else any node of the pack).
        targets = ({i for i, n in prompt.items() if n["class_type"].startswith("CVS_")
                    and isinstance(n["inputs"].get("model"), list)}
                   or {i for i, n in prompt.items() if n["class_type"].startswith("CVS_")})
        if events is not None:
            while not events.events.empty():
                events.events.get_nowait()
        prompt_id = comfy.queue_prompt(prompt)
        # Interrupt after the target's first progress report (websocket), or a second
        # after the prompt started running (polling, without websocket-client).
        if events is not None:
            started = events.wait_for(lambda e: e.get("type") == "progress" and e["data"].get("prompt_id") == prompt_id
                                      and str(e["data"].get("node")) in targets, timeout=WORKFLOW_TIMEOUT)
            if started is None:
                pytest.fail(f"no progress message from node(s) {sorted(targets)} of prompt {prompt_id}"
                            + comfy.log_tail())
        else:
            deadline = time.monotonic() + WORKFLOW_TIMEOUT
            while not comfy.is_running(prompt_id) and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)
        comfy.post("/interrupt", {"prompt_id": prompt_id})
        interrupted_at = time.monotonic()
        entry = comfy.wait_history(prompt_id, WORKFLOW_TIMEOUT)
        seconds = time.monotonic() - interrupted_at
        status = entry["status"]
        messages = dict(status.get("messages", []))
        attempts.append(f"{work}: {status['status_str']}")
        if status["status_str"] == "success":
            continue  # finished before the interrupt landed; try a longer run
        assert "execution_interrupted" in messages, (
            f"the prompt ended with an error instead of an interruption:\n{_status_summary(entry)}" + comfy.log_tail())
        assert "execution_error" not in messages, _status_summary(entry)
        assert not status["completed"]
        where = messages["execution_interrupted"]
        attempts[-1] += f" in node #{where.get('node_id')} ({where.get('node_type')})"
        if str(where.get("node_id")) not in targets:
            continue  # landed elsewhere; the point is cancelling inside the pack's loop
        print(f"\ninterrupted inside node #{where['node_id']} ({where['node_type']}) {seconds:.1f} s after "
              f"POST /interrupt; settings {work}")
        break
    else:
        pytest.fail("no run was cancelled inside the pack's node: " + "; ".join(attempts) + comfy.log_tail())

    # The server keeps serving, and the pack runs again after a cancel: with the
    # executor's cache dropped (POST /free), so the pack's nodes really execute.
    assert comfy.alive(), comfy.log_tail()
    assert comfy.get("/system_stats")["system"]["comfyui_version"]
    queue_state = comfy.get("/queue")
    assert not queue_state["queue_running"] and not queue_state["queue_pending"], queue_state
    comfy.post("/free", {"unload_models": True, "free_memory": True})
    time.sleep(2.0)  # the worker applies the flags when it wakes up, before the next prompt
    prompt = _api_prompt(examples[0], comfy)
    again = comfy.wait_history(comfy.queue_prompt(prompt), WORKFLOW_TIMEOUT)
    assert again["status"]["status_str"] == "success", _status_summary(again) + comfy.log_tail()
    cached = dict(again["status"]["messages"]).get("execution_cached", {}).get("nodes", [])
    assert not targets & set(cached), f"the re-run after the interrupt took node(s) {sorted(targets)} from the cache"
    assert _output_files(comfy, again)


# --------------------------------------------------------------------------- the real frontend
def _example_specs() -> dict:
    """``{file stem: the API prompt build_examples.py wrote it from}``: what each file means."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cvs_build_examples", EXAMPLES_DIR / "build_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {title: module.EXAMPLES[key] for key, (title, _) in module.TEMPLATES.items()}


@pytest.fixture(scope="session")
def frontend(comfy) -> Frontend:
    """ComfyUI's web frontend in headless Chromium. Missing Playwright or Chromium fails
    (tests/comfyui_setup.sh installs both); CVS_NO_BROWSER=1 skips these tests instead."""
    if os.environ.get("CVS_NO_BROWSER", "") not in ("", "0"):
        pytest.skip("CVS_NO_BROWSER is set: the real-frontend tests are skipped")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("the real-frontend tests need Playwright (pip install playwright; tests/comfyui_setup.sh "
                    "installs it), or set CVS_NO_BROWSER=1 to skip them")
    executable = find_chromium()
    if executable is None:
        pytest.fail("the real-frontend tests need Chromium (apt-get install chromium, or CVS_CHROMIUM=/path); "
                    "tests/comfyui_setup.sh installs it; CVS_NO_BROWSER=1 skips them")
    page = Frontend(comfy.base, executable)
    assert not page.page_errors, f"the frontend raised while starting: {page.page_errors}"
    try:
        yield page
    finally:
        page.close()


def _open_example(frontend: Frontend, workflow: Path) -> dict:
    """Open ``workflow`` in the frontend; fail on a missing-node report, a dialog or a page error."""
    errors_before = len(frontend.page_errors)
    data = json.loads(workflow.read_text(encoding="utf-8"))
    loaded = frontend.load(data, workflow.stem)
    assert not loaded["unknown_types"], f"{workflow.name}: the frontend does not know {loaded['unknown_types']}"
    dialogs = frontend.open_dialogs()
    assert not dialogs, f"{workflow.name}: the frontend opened a dialog on load: {dialogs}"
    new_errors = frontend.page_errors[errors_before:]
    assert not new_errors, f"{workflow.name}: page errors while loading: {new_errors}"
    return loaded


@pytest.mark.parametrize("workflow", _example_params())
def test_frontend_reads_example_like_the_runner(frontend, workflow):
    """The frontend's own loader and graph-to-prompt turn each example into exactly the
    prompt the file means (the spec it was built from) and the runner's prompt; the file
    survives a load and save unchanged (links and slots); no node hides another."""
    from consistent_video.nodes.runner.execution import load_workflow

    if workflow is None:
        pytest.fail(f"no example workflows (*.json) in {EXAMPLES_DIR}")
    data = json.loads(workflow.read_text(encoding="utf-8"))
    loaded = _open_example(frontend, workflow)
    queued = loaded["prompt"]

    runner = load_workflow(workflow)
    assert sorted(queued) == sorted(runner), f"{workflow.name}: nodes differ: frontend {sorted(queued)}, runner {sorted(runner)}"
    for node_id, node in runner.items():
        theirs = queued[node_id]
        assert theirs["class_type"] == node["class_type"], (workflow.name, node_id)
        assert theirs["inputs"] == node["inputs"], (
            f"{workflow.name}: node #{node_id} ({node['class_type']}): the frontend queues {theirs['inputs']}, "
            f"the runner {node['inputs']}")
        assert theirs["_meta"]["title"] == node["_meta"]["title"], (workflow.name, node_id)

    meant = _example_specs()[workflow.stem]
    for node_id, node in meant.items():
        for name, value in node["inputs"].items():
            assert queued[node_id]["inputs"].get(name) == value, (
                f"{workflow.name}: node #{node_id} ({node['class_type']}) input '{name}': the file means {value!r}, "
                f"the frontend queues {queued[node_id]['inputs'].get(name)!r}")

    saved = loaded["saved"]
    assert saved["links"] == data["links"], (f"{workflow.name}: the frontend rewrote links on load:\n"
                                             f"file  {data['links']}\nsaved {saved['links']}")
    saved_inputs = {n["id"]: [(i["name"], i.get("link")) for i in n.get("inputs") or []] for n in saved["nodes"]}
    file_inputs = {n["id"]: [(i["name"], i.get("link")) for i in n.get("inputs") or []] for n in data["nodes"]}
    assert saved_inputs == file_inputs, f"{workflow.name}: input slots change on load and save"
    saved_widgets = {n["id"]: n.get("widgets_values") for n in saved["nodes"]}
    file_widgets = {n["id"]: n.get("widgets_values") for n in data["nodes"]}
    assert saved_widgets == file_widgets, f"{workflow.name}: widget values change on load and save"

    assert not overlaps(loaded["nodes"]), f"{workflow.name}: overlapping nodes {overlaps(loaded['nodes'])}"
    assert not hidden_widgets(loaded["nodes"]), f"{workflow.name}: widgets hidden below their node {hidden_widgets(loaded['nodes'])}"


def _smoke_widgets(comfy: ComfyServer, prompt: dict, where: str) -> dict:
    """``{node_id: {input: value}}`` that point the loaders of ``prompt`` at the smoke weights
    and apply each family's ``smoke_overrides`` (a CPU-sized working resolution; skipped with
    CVS_COMFYUI_FULL_SIZE), as the demo does and as a user would set the widgets; links are
    left alone. A loader of a family without smoke weights fails the test (``where`` names the file)."""
    values: dict = {}
    used = set()
    for node_id, node in prompt.items():
        if node["class_type"] != LOADER:
            continue
        family = node["inputs"].get("family")
        if family not in comfy.smoke_entries:
            pytest.fail(f"{where}: loader #{node_id} asks for family {family!r}, which has no smoke "
                        f"weights (smoke-weights wrote {sorted(comfy.smoke_entries)})")
        values[node_id] = {"weights": comfy.smoke_entries[family]}
        if "path" in node["inputs"]:
            values[node_id]["path"] = ""
        used.add(family)
    if not FULL_SIZE:
        for node_id, node in prompt.items():
            for family in used:
                for name, value in families.get(family).smoke_overrides.get(node["class_type"], {}).items():
                    if name in node["inputs"] and not isinstance(node["inputs"][name], list):
                        values.setdefault(node_id, {})[name] = value
    return values


@pytest.mark.parametrize("stem", sorted(p.stem for p in EXAMPLES_DIR.glob("*.json")))
def test_frontend_runs_example_from_the_page(frontend, comfy, stem, tmp_path):
    """Open the example in the frontend, point its loaders at the smoke weights, press
    Run: the server accepts the frontend's prompt, runs it, the files exist, every output
    node gets its preview, and the previews do not cover other nodes."""
    workflow = EXAMPLES_DIR / f"{stem}.json"
    loaded = _open_example(frontend, workflow)
    missing = frontend.set_widgets(_smoke_widgets(comfy, loaded["prompt"], workflow.name))
    assert not missing, f"{stem}: widgets not found in the frontend: {missing}"
    prompt_id = frontend.queue()
    entry = comfy.wait_history(prompt_id, WORKFLOW_TIMEOUT)
    assert entry["status"]["status_str"] == "success", f"{stem}:\n{_status_summary(entry)}" + comfy.log_tail()
    files = _output_files(comfy, entry)
    assert any(comfy.output_dir in f.parents for f in files), f"{stem}: no file in the output folder"

    output_nodes = {i for i, n in loaded["prompt"].items() if n["class_type"] in ("CVS_SaveVideo", "CVS_SaveCameras")
                    and i in entry.get("outputs", {})}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        previews = frontend.node_outputs()
        if all(previews.get(i) for i in output_nodes):
            break
        time.sleep(0.5)
    assert all(previews.get(i) for i in output_nodes), f"{stem}: no preview in the page for {output_nodes - set(previews)}"
    time.sleep(2.0)  # the previews load and the nodes take their size
    nodes = frontend.evaluate("""() => window.app.graph.nodes.map(n => {
        const box = new Float32Array(4); n.getBounding(box, true);
        return {title: n.title, box: Array.from(box), size: [...n.size], widgets: []};
    })""")
    frontend.screenshot(tmp_path / "after_run.png")
    assert not overlaps(nodes), f"{stem}: after the run, previews make nodes overlap {overlaps(nodes)} (see {tmp_path})"


# --------------------------------------------------------------------------- bad input through /prompt
def _bank_state(comfy: ComfyServer) -> dict:
    """``{relative path: sha256}`` of every memory-bank file in the output folder."""
    import hashlib

    return {str(p.relative_to(comfy.output_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(comfy.output_dir.rglob("*.safetensors"))}


def _ensure_banks(comfy: ComfyServer) -> None:
    """The walk and video memories the fuzz cases point at, made by running the examples
    that write them when an earlier test has not."""
    import prompt_fuzz

    for stem, name in (("VMem - Walk step by step", prompt_fuzz.WALK),
                       ("Memory-V2V - Three re-render turns", prompt_fuzz.V2V)):
        if any(p.name == f"{name}.safetensors" for p in comfy.output_dir.rglob("*.safetensors")):
            continue
        entry = comfy.wait_history(comfy.queue_prompt(_api_prompt(EXAMPLES_DIR / f"{stem}.json", comfy)),
                                   WORKFLOW_TIMEOUT)
        assert entry["status"]["status_str"] == "success", _status_summary(entry) + comfy.log_tail()


def _bad_weights(comfy: ComfyServer) -> None:
    """``models/gvm/cvs-corrupt`` (the smoke files, UNet cut in half) and
    ``models/gvm/cvs-wrong-model`` (the VideoScene smoke files under the GVM family)."""
    models = comfy.output_dir.parent / "models"
    gvm = models / families.get("gvm").folder_name
    corrupt = gvm / "cvs-corrupt"
    if not corrupt.exists():
        shutil.copytree(gvm / SMOKE_ENTRY, corrupt)
        unet = corrupt / "unet" / "diffusion_pytorch_model.safetensors"
        unet.write_bytes(unet.read_bytes()[: unet.stat().st_size // 2])
    wrong = gvm / "cvs-wrong-model"
    if not wrong.exists():
        shutil.copytree(models / families.get("videoscene").folder_name / SMOKE_ENTRY, wrong)


def _answer(comfy: ComfyServer, prompt: dict) -> dict:
    """What /prompt says: ``{"http": status, "body": ...}`` when refused, else ``{"history": entry}``."""
    try:
        answer = comfy.post("/prompt", {"prompt": prompt, "client_id": comfy.client_id})
    except urllib.error.HTTPError as exc:
        raw = exc.read().decode("utf-8", errors="replace")
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw
        return {"http": exc.code, "body": body}
    return {"history": comfy.wait_history(answer["prompt_id"], WORKFLOW_TIMEOUT)}


def test_bad_input_through_prompt(comfy, tmp_path):
    """Every fuzz case (tests/prompt_fuzz.py) is refused with an error that names the node,
    the input and what was expected; the server keeps serving; memory banks are
    byte-identical afterwards. Writes the table row to CVS_FUZZ_TABLE (or tmp_path)."""
    import prompt_fuzz
    from consistent_video import NODE_DISPLAY_NAME_MAPPINGS

    _ensure_banks(comfy)
    _bad_weights(comfy)
    nodes = _pack_mappings()
    cases = prompt_fuzz.generated_cases(nodes, SMOKE_ENTRY) + prompt_fuzz.hand_cases(nodes, SMOKE_ENTRY)
    covered = {c.class_type for c in cases}
    assert covered >= set(nodes), f"no fuzz case for {sorted(set(nodes) - covered)}"
    counts = {"clear": 0, "unclear": 0, "accepted": 0, "valid": 0, "crash": 0, "state changed": 0}
    problems, notes, start = [], [], time.monotonic()
    for case in cases:
        before = _bank_state(comfy)
        for _ in range(case.repeat):
            try:
                answer = _answer(comfy, case.prompt)
            except (urllib.error.URLError, ConnectionError, OSError) as exc:
                answer = None
                problems.append(f"CRASH {case.name}: {exc}")
                break
        if answer is None or not comfy.alive():
            counts["crash"] += 1
            pytest.fail("the server stopped serving at: " + case.name + comfy.log_tail())
        verdict, message = prompt_fuzz.judge(case, answer, NODE_DISPLAY_NAME_MAPPINGS)
        counts[verdict] += 1
        if verdict == "valid":
            notes.append(f"{case.name}: accepted, as meant ({case.valid})")
        elif verdict != "clear":
            problems.append(f"{verdict.upper()} {case.name}: {message}")
        after = _bank_state(comfy)
        if after != before and verdict != "valid":  # a valid input may store (a new walk)
            counts["state changed"] += 1
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            problems.append(f"STATE CHANGED {case.name}: {changed}")
    seconds = time.monotonic() - start
    row = (f"| {len(cases)} | {counts['clear']} | {counts['unclear']} | {counts['accepted']} | {counts['valid']} "
           f"| {counts['crash']} | {counts['state changed']} | {len(covered)} | {seconds:.0f} s |")
    table = Path(os.environ.get("CVS_FUZZ_TABLE") or tmp_path / "fuzz.md")
    table.write_text("| cases | clear errors | unclear errors | wrongly accepted | valid input, accepted | crashes "
                     "| state changed | nodes | time |\n|---|---|---|---|---|---|---|---|---|\n" + row + "\n\n"
                     + "\n".join(notes + problems) + "\n", encoding="utf-8")
    print(f"\n{row}\n(table: {table})")
    assert comfy.get("/system_stats")["system"]["comfyui_version"]
    assert len(cases) >= 60
    assert not problems, f"{len(problems)} of {len(cases)} cases went wrong:\n" + "\n".join(problems[:80])
