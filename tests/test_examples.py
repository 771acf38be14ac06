"""The committed example workflows are exactly what example_workflows/build_examples.py writes."""
import importlib.util
import json
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "example_workflows"


def test_committed_examples_match_their_specs():
    spec = importlib.util.spec_from_file_location("build_examples", EXAMPLES / "build_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build()
    assert sorted(built) == sorted(p.stem for p in EXAMPLES.glob("*.json"))
    for name, workflow in built.items():
        committed = json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))
        assert committed == workflow, f"{name}.json is stale: run python example_workflows/build_examples.py"
