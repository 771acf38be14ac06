"""The layers of docs/architecture.md, enforced on every module of the pack by reading its imports.

An AST walk over every ``.py`` file of the package (every import statement anywhere in a
module, inside functions and ``if TYPE_CHECKING:`` blocks too) builds the module graph; the
rules below are checked on it. Each rule is also shown failing: a copy of the pack gets one
deliberately bad temporary module, and the check must name it.

Rules:
1. a capability folder (``gvm_nodes/``, ``vmem_nodes/``, ...) never imports another one;
2. a ``nodes/`` sub-package imports only sub-packages below it in ``nodes.LAYERS``
   (``comfy`` at the bottom, ``runner`` at the top) and never a capability folder;
3. nothing imports ``nodes/runner/`` but the entry points (``__main__``), and only the runner
   imports the root package (its node registry);
4. a core module never imports a node file (``nodes.py`` / ``*_nodes.py``: the modules that
   hold ``NODE_CLASS_MAPPINGS``);
5. there is no import cycle.
"""
from __future__ import annotations

import ast
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import consistent_video
from consistent_video.nodes import LAYERS

PACK_ROOT = Path(consistent_video.__file__).resolve().parent
PACKAGE = "consistent_video"
ENTRY = {PACKAGE, f"{PACKAGE}.__main__"}
NODES = f"{PACKAGE}.nodes"


# --------------------------------------------------------------------------- reading the pack
@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module
    imports: set[str] = field(default_factory=set)

    @property
    def is_node_file(self) -> bool:
        leaf = self.name.rpartition(".")[2]
        return leaf == "nodes" and self.name != NODES or leaf.endswith("_nodes") and not self.is_package

    @property
    def defines_nodes(self) -> bool:
        """Whether the module assigns ``NODE_CLASS_MAPPINGS`` at its top level."""
        return any(isinstance(node, (ast.Assign, ast.AnnAssign)) and any(
            isinstance(t, ast.Name) and t.id == "NODE_CLASS_MAPPINGS"
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))
            for node in self.tree.body)


def _package_dirs(root: Path):
    """The root and every folder below it that is a package (has ``__init__.py``) all the way up."""
    yield root
    for child in sorted(root.iterdir()):
        if child.is_dir() and (child / "__init__.py").is_file() and not child.name.startswith("."):
            yield from _package_dirs(child)


def read_pack(root: Path) -> dict[str, Module]:
    """Every module of the package rooted at ``root`` (the folder of the root ``__init__.py``)."""
    modules = {}
    for folder in _package_dirs(root):
        parts = folder.relative_to(root).parts
        for path in sorted(folder.glob("*.py")):
            if folder == root and path.name not in ("__init__.py", "__main__.py"):
                continue  # setup.py and other build scripts beside the root are not part of the package
            is_package = path.name == "__init__.py"
            name = ".".join((PACKAGE, *parts) + (() if is_package else (path.stem,)))
            modules[name] = Module(name, path, is_package, ast.parse(path.read_text(encoding="utf-8"), str(path)))
    for module in modules.values():
        module.imports = _imports(module, modules)
    return modules


def _imports(module: Module, modules: dict[str, Module]) -> set[str]:
    """The pack's modules that ``module`` imports (``from X import y`` counts as X.y where that is
    a module, else as X)."""
    found = set()
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
        else:
            continue
        found.update(t for t in targets if t == PACKAGE or t.startswith(PACKAGE + "."))
    found.discard(module.name)
    return found


# --------------------------------------------------------------------------- the rules
def _area(name: str) -> tuple[str, str]:
    """``("entry", name)``, ``("nodes", sub-package or "")`` or ``("capability", folder)``."""
    if name in ENTRY:
        return "entry", name
    parts = name.split(".")
    if parts[1] == "nodes":
        return "nodes", parts[2] if len(parts) > 2 else ""
    return "capability", parts[1]


def _cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for target in sorted(modules[name].imports):
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in on_stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == name:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for name in sorted(modules):
        if name not in index:
            visit(name)
    return found


def violations(modules: dict[str, Module]) -> list[str]:
    """Every broken rule, one line each, naming the importing module and what it imports."""
    problems = []
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    for module in modules.values():
        area, where = _area(module.name)
        if module.defines_nodes and not module.is_node_file and area != "entry":
            problems.append(f"{module.name} defines NODE_CLASS_MAPPINGS but is not named as a node file "
                            "(nodes.py or *_nodes.py)")
        for target in sorted(module.imports):
            t_area, t_where = _area(target)
            edge = f"{module.name} imports {target}"
            if area == "capability" and t_area == "capability" and t_where != where:
                problems.append(f"{edge}: capability folders never import each other")
            if area == "nodes" and t_area == "capability":
                problems.append(f"{edge}: nodes/ never imports a capability folder")
            if area == "nodes" and t_area == "nodes" and where and t_where and t_where != where \
                    and rank[t_where] > rank[where]:
                problems.append(f"{edge}: nodes/{where} may import only layers below it "
                                f"({', '.join(LAYERS[:rank[where]]) or 'none'})")
            if t_area == "nodes" and t_where == "runner" and area != "nodes" and module.name != f"{PACKAGE}.__main__":
                problems.append(f"{edge}: nodes/runner is the top layer; only the entry point __main__ imports it")
            if target == PACKAGE and not (area == "nodes" and where == "runner") and area != "entry":
                problems.append(f"{edge}: only the runner reads the root package's node registry")
            if modules[target].is_node_file and not module.is_node_file and area != "entry":
                problems.append(f"{edge}: a core module never imports a node file")
    for cycle in _cycles(modules):
        problems.append("import cycle: " + " <-> ".join(cycle))
    return problems


# --------------------------------------------------------------------------- the pack obeys them
@pytest.fixture(scope="module")
def pack() -> dict[str, Module]:
    return read_pack(PACK_ROOT)


def test_the_pack_obeys_every_layering_rule(pack):
    assert len(pack) > 80 and all(layer in {_area(m)[1] for m in pack} for layer in LAYERS)
    problems = violations(pack)
    assert not problems, "layering violations:\n  " + "\n  ".join(problems)


def test_layers_are_the_sub_packages_and_each_says_what_it_may_import(pack):
    sub_packages = sorted(name.split(".")[2] for name, m in pack.items()
                          if m.is_package and name.startswith(NODES + ".") and name.count(".") == 2)
    assert sub_packages == sorted(LAYERS)
    for layer in LAYERS:
        doc = ast.get_docstring(pack[f"{NODES}.{layer}"].tree)
        assert doc and "import" in doc.lower(), f"nodes/{layer}/__init__.py must say what lives there and what it may import"


def test_node_files_are_exactly_the_modules_that_define_nodes(pack):
    node_files = {name for name, m in pack.items() if m.is_node_file}
    defining = {name for name, m in pack.items() if m.defines_nodes and name not in ENTRY}
    assert node_files == defining and len(node_files) >= 10


# --------------------------------------------------------------------------- and each rule bites
@pytest.fixture
def pack_copy(tmp_path) -> Path:
    """A copy of the pack's modules (``.py`` files of its package folders) in a temporary folder."""
    root = tmp_path / "pack"
    for folder in _package_dirs(PACK_ROOT):
        target = root / folder.relative_to(PACK_ROOT)
        target.mkdir(parents=True, exist_ok=True)
        for path in folder.glob("*.py"):
            shutil.copy2(path, target / path.name)
    return root


BAD_IMPORTS = [
    ("gvm_nodes/probe.py", "from ..vmem_nodes.surfels import SurfelSettings\n",
     "consistent_video.gvm_nodes.probe imports consistent_video.vmem_nodes.surfels: capability folders never import"),
    ("nodes/comfy/probe.py", "from ..cameras.geometry import CameraBatch\n",
     "consistent_video.nodes.comfy.probe imports consistent_video.nodes.cameras.geometry: nodes/comfy may import "
     "only layers below it"),
    ("nodes/splats/probe.py", "def lazy():\n    from ..runner.cli import main\n",
     "consistent_video.nodes.splats.probe imports consistent_video.nodes.runner.cli: nodes/splats may import"),
    ("nodes/video/probe.py", "from ...videoscene_nodes import fit\n",
     "consistent_video.nodes.video.probe imports consistent_video.videoscene_nodes.fit: nodes/ never imports a "
     "capability folder"),
    ("videomv_nodes/probe.py", "from ..nodes.runner.execution import run_workflow\n",
     "consistent_video.videomv_nodes.probe imports consistent_video.nodes.runner.execution: nodes/runner is the "
     "top layer"),
    ("vmem_nodes/probe.py", "from .navigate_nodes import CVS_VMemWalk\n",
     "consistent_video.vmem_nodes.probe imports consistent_video.vmem_nodes.navigate_nodes: a core module never "
     "imports a node file"),
    ("memory_v2v_nodes/probe.py", "from .. import NODE_CLASS_MAPPINGS\n",
     "consistent_video.memory_v2v_nodes.probe imports consistent_video: only the runner reads the root package"),
    ("nodes/cameras/probe.py", "NODE_CLASS_MAPPINGS = {}\n",
     "consistent_video.nodes.cameras.probe defines NODE_CLASS_MAPPINGS but is not named as a node file"),
]


@pytest.mark.parametrize("path, source, expected", BAD_IMPORTS, ids=[p for p, _, _ in BAD_IMPORTS])
def test_a_bad_import_is_named(pack_copy, path, source, expected):
    assert not violations(read_pack(pack_copy))  # the copy itself is clean
    (pack_copy / path).write_text(source, encoding="utf-8")
    problems = violations(read_pack(pack_copy))
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_a_cycle_is_named_even_through_a_type_only_import(pack_copy):
    """``vmem_nodes/memory.py`` once imported ``pointmaps.py``, which imported it back under
    ``if TYPE_CHECKING:``; such a loop is a cycle here too."""
    surfels = pack_copy / "vmem_nodes" / "surfels.py"
    surfels.write_text(surfels.read_text(encoding="utf-8") + "\nfrom typing import TYPE_CHECKING\n"
                       "if TYPE_CHECKING:\n    from .memory import SurfelMemory\n", encoding="utf-8")
    problems = violations(read_pack(pack_copy))
    assert len(problems) == 1 and problems[0].startswith("import cycle: ")
    assert "consistent_video.vmem_nodes.memory" in problems[0] and "consistent_video.vmem_nodes.surfels" in problems[0]
