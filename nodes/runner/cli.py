"""Command line: ``python -m consistent_video run|smoke-weights|demo``.

``run`` executes one workflow headless, ``smoke-weights`` writes tiny random weights in
every family's official file layout, ``demo`` runs every bundled example workflow
(real weights where installed, smoke weights otherwise).
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Mapping, Optional

from ..comfy import families, runtime, weights
from .execution import load_workflow, run_workflow

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "example_workflows"
LOADER = "CVS_ModelLoader"
_BANNER = "!" * 78


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", help="show tracebacks of errors")
    parser = argparse.ArgumentParser(prog="python -m consistent_video", parents=[common],
                                     description="Consistent Video Suite: run this pack's ComfyUI workflows "
                                                 "without a ComfyUI server.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", parents=[common], help="run a workflow (UI or API JSON)",
                              description="Validate and run a workflow saved by ComfyUI (UI or API format).")
    run.add_argument("workflow", metavar="WORKFLOW.json")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="set an input; NODE is a node id, title or class_type that occurs once; "
                          "VALUE is parsed as JSON when it parses, else taken as a string (repeatable)")
    run.add_argument("--output", metavar="DIR", help="output folder (default ./output)")
    run.add_argument("--models", metavar="DIR", help="models folder holding <family>/ weights (default ./models)")
    run.add_argument("--input", metavar="DIR", help="folder for input files given by name (default ./input)")
    run.set_defaults(handler=_run)

    smoke = commands.add_parser("smoke-weights", parents=[common], help="write tiny random weights for tests",
                                description="Write tiny random weights into DIR/<family>/ in the official "
                                            "file layout. They prove the plumbing; their outputs are noise.")
    smoke.add_argument("dir", metavar="DIR")
    smoke.add_argument("--family", action="append", metavar="NAME",
                       help=f"only this family (repeatable); default: all registered ({', '.join(families.names())})")
    smoke.set_defaults(handler=_smoke_weights)

    demo = commands.add_parser("demo", parents=[common], help="run every bundled example workflow",
                               description="Run every example workflow of the pack, with real weights where "
                                           "they are installed and smoke weights (random) otherwise.")
    demo.add_argument("--output", metavar="DIR", default="output/demo", help="output folder (default ./output/demo)")
    demo.add_argument("--smoke-dir", metavar="DIR", default=".smoke_weights",
                      help="where smoke weights are written when real ones are missing (default ./.smoke_weights)")
    demo.add_argument("--models", metavar="DIR", help="models folder holding <family>/ weights (default ./models)")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 error, 130 cancelled)."""
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except (KeyboardInterrupt, runtime.Interrupted):
        print("cancelled", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _print_files(files: list[Path]) -> None:
    print(f"wrote {len(files)} file(s)" + (":" if files else ""))
    for path in files:
        print(f"  {path}")


def _run(args: argparse.Namespace) -> int:
    runtime.configure_standalone(models=args.models, output=args.output, input=args.input)
    result = run_workflow(args.workflow, overrides=args.overrides)
    _print_files(result.files)
    return 0


def write_smoke(family: families.Family, folder: Path) -> list[Path]:
    """Write ``family``'s smoke weights into ``folder``; return the files there."""
    family.write_smoke(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _smoke_weights(args: argparse.Namespace) -> int:
    names = args.family or families.names()
    if not names:
        raise RuntimeError("no model families are registered")
    for family in [families.get(name) for name in names]:
        folder = Path(args.dir) / family.name
        files = write_smoke(family, folder)
        print(f"{family.display_name} ({family.name}): {len(files)} file(s) in {folder}")
        for path in files:
            print(f"  {path.relative_to(folder)}  ({path.stat().st_size:,} bytes)")
    return 0


def smoke_overrides(prompt: Mapping, smoke_dir: Path, written: dict) -> dict:
    """``--set``-style overrides pointing every loader without real weights at smoke weights.

    For each family that falls back to smoke weights, its ``smoke_overrides`` (e.g. a
    smaller working resolution, so a CPU run stays short) are applied to the nodes of the
    classes it names. ``written`` (family name -> folder) keeps smoke weights written once
    per demo run.
    """
    overrides = {}
    for node_id, node in prompt.items():
        inputs = node["inputs"]
        if node["class_type"] != LOADER or not isinstance(inputs.get("family"), str):
            continue
        family = families.get(inputs["family"])
        try:
            weights.resolve(family, inputs.get("weights", weights.AUTO), inputs.get("path", ""),
                            inputs.get("repo_id", ""), allow_download=False)
            continue
        except weights.WeightsError:
            pass
        if family.name not in written:
            written[family.name] = folder = smoke_dir / family.name
            write_smoke(family, folder)
        overrides[f"{node_id}.weights"] = weights.AUTO
        overrides[f"{node_id}.path"] = str(written[family.name])
        for other_id, other in prompt.items():
            for name, value in family.smoke_overrides.get(other["class_type"], {}).items():
                if name in other["inputs"]:
                    overrides[f"{other_id}.{name}"] = value
    return overrides


def _demo(args: argparse.Namespace) -> int:
    workflows = sorted(EXAMPLES_DIR.glob("*.json"))
    if not workflows:
        raise RuntimeError(f"no example workflows in {EXAMPLES_DIR}")
    runtime.configure_standalone(models=args.models)
    written: dict = {}
    files: dict[str, list[Path]] = {}
    failed: dict[str, str] = {}
    used_smoke = False
    for path in workflows:
        print(f"== {path.name}", file=sys.stderr)
        try:
            prompt = load_workflow(path)
            overrides = smoke_overrides(prompt, Path(args.smoke_dir), written)
            if overrides:
                used_smoke = True
                print(f"{_BANNER}\n!! SMOKE WEIGHTS (random) are used for {path.name}: the outputs are NOISE, "
                      f"not results.\n!! Install real weights under models/<family>/ to get real outputs.\n"
                      + "".join(f"!!   smoke run: --set {key}={value}\n" for key, value in overrides.items())
                      + _BANNER, file=sys.stderr)
            files[path.name] = run_workflow(prompt, overrides=overrides, output_dir=Path(args.output) / path.stem).files
        except (KeyboardInterrupt, runtime.Interrupted):
            raise
        except Exception as exc:
            if args.verbose:
                traceback.print_exc()
            failed[path.name] = str(exc)
            print(f"error: {path.name}: {exc}", file=sys.stderr)
    for name, written_files in files.items():
        print(f"{name}:")
        _print_files(written_files)
    for name, message in failed.items():
        print(f"{name}: FAILED: {message.splitlines()[0]}")
    print(f"demo: {len(files)} of {len(workflows)} workflow(s) ran, {len(failed)} failed"
          + ("; SMOKE WEIGHTS were used, outputs are noise" if used_smoke else ""))
    return 1 if failed else 0
