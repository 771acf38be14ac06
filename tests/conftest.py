"""Shared fixtures: per-test output folder, and smoke weights for every registered family."""
import math
from pathlib import Path

import pytest

import consistent_video  # noqa: F401  (registers every node and model family)
from consistent_video.nodes.comfy import families, runtime


PACK_ROOT = Path(__file__).resolve().parents[1]


class _PackRootIsAFolder:
    """Collect the repository root as a plain folder, not as a package.

    The root holds the pack's ``__init__.py`` (ComfyUI loads the folder as the package), so
    pytest would import it as a test package named after the folder: under a second name
    beside ``consistent_video`` when the name is an identifier, and not at all when it is not
    (``comfyui-consistent-video``, the default clone name: every test then errors). The tests
    import the pack as ``consistent_video`` only.
    """

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if path == PACK_ROOT:
            return pytest.Dir.from_parent(parent, path=path)
        return None


def pytest_configure(config):
    # registered as a plugin, not as this conftest's hook: the root is above tests/, where a
    # conftest's hooks do not reach
    config.pluginmanager.register(_PackRootIsAFolder(), "cvs-pack-root-is-a-folder")


def pytest_collection_modifyitems(items):
    """The real-ComfyUI suite (marker ``comfyui``) runs after every other test: the unit tests
    report first, and the one ComfyUI server the suite starts is not kept waiting meanwhile."""
    items.sort(key=lambda item: item.get_closest_marker("comfyui") is not None)


@pytest.fixture(autouse=True)
def output_dir(tmp_path: Path, monkeypatch) -> Path:
    """Point the standalone output folder at a per-test temporary folder (never the repo)."""
    out = tmp_path / "output"
    runtime.configure_standalone(output=out)
    monkeypatch.setenv("CVS_NO_PROGRESS", "1")
    yield out
    runtime.clear_interrupt()


@pytest.fixture
def cancel_on_call(monkeypatch):
    """``cancel_on_call(owner, name, n)`` replaces ``owner.<name>`` (a function, method or
    module attribute) by a wrapper that presses Cancel (``runtime.request_interrupt``) during
    its ``n``-th call and then calls the original; returns the list that gets one entry per call."""
    def install(owner, name: str, n: int) -> list:
        original = getattr(owner, name)
        calls = []

        def wrapper(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                runtime.request_interrupt()
            return original(*args, **kwargs)
        monkeypatch.setattr(owner, name, wrapper)
        return calls
    return install


@pytest.fixture
def cancel_inside_network():
    """``cancel_inside_network(first, last)`` presses Cancel (``runtime.request_interrupt``) right
    after the module ``first`` has run for the first time (a forward hook), and counts the
    completed calls of ``first`` and of the later module ``last``; returns that count dict
    ``{"first": n, "last": n}``. Every hook is removed when the test ends."""
    handles = []

    def install(first, last) -> dict:
        calls = {"first": 0, "last": 0}

        def after_first(module, args, output):
            calls["first"] += 1
            if calls["first"] == 1:
                runtime.request_interrupt()

        def after_last(module, args, output):
            calls["last"] += 1
        handles.append(first.register_forward_hook(after_first))
        handles.append(last.register_forward_hook(after_last))
        return calls
    yield install
    for handle in handles:
        handle.remove()


@pytest.fixture(scope="session")
def smoke_weights_dir(tmp_path_factory) -> Path:
    """A folder holding ``<family>/`` smoke weights for every registered family."""
    root = tmp_path_factory.mktemp("smoke_weights")
    for name in families.names():
        families.get(name).write_smoke(root / name)
    return root


def _dense_random_state(model, seed: int = 0) -> dict:
    """Every tensor of ``model`` redrawn, none left at zero (so no path of a network under
    test is silently the identity): norm scales around 1, other 1-D tensors small, weights
    about ``1 / sqrt(fan_in)``."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        noise = torch.randn(value.shape, generator=gen)
        if value.dim() == 1:
            state[key] = (1.0 + 0.1 * noise) if key.endswith("weight") and "norm" in key else 0.1 * noise
        else:
            state[key] = noise / math.sqrt(value[0].numel())
    return state


@pytest.fixture(scope="session")
def dense_random_state():
    """``dense_random_state(model, seed=0) -> state dict`` (see :func:`_dense_random_state`)."""
    return _dense_random_state
