"""JSON files: reading ones that must hold an object (errors say which file and why), writing them."""
from __future__ import annotations

import json
from pathlib import Path


def read_json_object(path: str | Path, what: str, error: type[Exception] = ValueError) -> dict:
    """Parse ``path`` as a JSON object; raise ``error`` naming ``what`` and the file otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what}: {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{what}: {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise error(f"{what}: {path} does not hold a JSON object")
    return data


def write_json(path: str | Path, data: dict) -> None:
    """Write ``data`` as indented JSON (UTF-8, trailing newline), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
