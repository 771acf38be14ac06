"""Finding weights and loading them strictly.

Resolution order (DESIGN.md): an entry under ``models/<family>/`` chosen by the user,
an explicit path, then a Hugging Face repo id (its folder under ``models/<family>/``
if already there, else downloaded with ``huggingface_hub`` when the machine is online).
When nothing is found the error lists the exact files expected and where to put them.

Loading is strict: every key of the checkpoint is consumed and every parameter of the
network is filled; otherwise the error names the missing and unexpected keys.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Mapping, Optional

import torch

from . import runtime
from .families import SMOKE_MARKER, Family
from .jsonfile import read_json_object, write_json

AUTO = "auto"


class WeightsError(RuntimeError):
    """Weights missing, corrupt, or from another model. The message says what to do."""


def repo_folder_name(repo_id: str) -> str:
    """``"geyongtao/gvm"`` -> ``"geyongtao--gvm"`` (the folder a download goes to)."""
    return repo_id.strip().replace("/", "--")


def list_entries(family: Family) -> list[str]:
    """Folders and files under every ``models/<family>/`` folder (for the loader's combo)."""
    out: list[str] = []
    for root in runtime.family_dirs(family.folder_name):
        if root.is_dir():
            out.extend(sorted(p.name for p in root.iterdir() if not p.name.startswith(".")))
    return out


def missing_files(family: Family, folder: Path) -> list[str]:
    return [f for f in family.files if not (folder / f).is_file()]


def _default_folder(family: Family, repo: str) -> str:
    """The folder name under ``models/<family folder>/`` for ``repo`` (or the manual download's)."""
    return repo_folder_name(repo) if repo else (family.default_entry or family.name)


def _expected_layout(family: Family, folder: Optional[Path] = None) -> str:
    root = runtime.family_dirs(family.folder_name)[0]
    target = folder or root / _default_folder(family, family.default_repo)
    lines = "\n".join(f"    {target / f}" for f in family.files)
    where = (family.manual_download if not family.default_repo and family.manual_download
             else f"Download them from https://huggingface.co/{family.default_repo}")
    text = (f"{family.display_name} needs these files:\n{lines}\n"
            f"{where.rstrip('.')}, and put them under {root}/<any folder name>/, or give an explicit path.")
    if family.optional_files:
        extra = "\n".join(f"    {target / local}   from https://huggingface.co/{source.split(':', 1)[0]} "
                          f"({source.split(':', 1)[1]})" for local, source in family.optional_files.items())
        text += f"\nIn the same folder, unless the node gets them from elsewhere:\n{extra}"
    return text


def fetch_optional(family: Family, folder: Path) -> list[str]:
    """Download the family's missing optional files into ``folder`` (no-op offline).

    Returns the files that are still missing; failures are not errors (the node says
    what it lacks when it needs it).
    """
    missing = [f for f in family.optional_files if not (folder / f).is_file()]
    if not missing or _offline():
        return missing
    import shutil
    still, staging = [], folder / ".cvs_download"
    for local in missing:
        repo, remote = family.optional_files[local].split(":", 1)
        try:
            from huggingface_hub import hf_hub_download
            # into a staging folder next to the target, then renamed: no second copy of a large
            # file, and never a half-written file under the final name
            fetched = hf_hub_download(repo_id=repo, filename=remote, local_dir=str(staging / repo_folder_name(repo)))
            (folder / local).parent.mkdir(parents=True, exist_ok=True)
            os.replace(fetched, folder / local)
        except Exception:  # no network, gated, ...
            still.append(local)
    shutil.rmtree(staging, ignore_errors=True)
    return still


def _check_complete(family: Family, folder: Path, how: str) -> Path:
    if not folder.exists():
        raise WeightsError(f"{how} {folder} does not exist.\n" + _expected_layout(family, folder))
    if folder.is_file():
        raise WeightsError(f"{how} {folder} is a file; {family.display_name} weights are a folder.\n"
                           + _expected_layout(family, folder))
    missing = missing_files(family, folder)
    if missing:
        raise WeightsError(f"{how} {folder} is missing {len(missing)} file(s): {', '.join(missing)}.\n"
                           + _expected_layout(family, folder))
    return folder


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def resolve(family: Family, entry: str = AUTO, path: str = "", repo_id: str = "",
            allow_download: bool = True) -> Path:
    """Return the folder holding a complete set of ``family`` weights (see module doc);
    with ``allow_download``, the family's missing optional files are fetched into it when
    online (:func:`fetch_optional`).

    ``allow_download=False`` never touches the network (the demo uses it to decide
    between real and smoke weights).
    """
    folder = _resolve(family, entry, path, repo_id, allow_download)
    if allow_download and family.optional_files and not is_smoke(folder):
        fetch_optional(family, folder)
    return folder


def _resolve(family: Family, entry: str, path: str, repo_id: str, allow_download: bool) -> Path:
    if entry and entry != AUTO:
        for root in runtime.family_dirs(family.folder_name):
            if (root / entry).exists():
                return _check_complete(family, root / entry, f"weights entry '{entry}':")
        raise WeightsError(f"weights entry '{entry}' is not under any of "
                           f"{[str(r) for r in runtime.family_dirs(family.folder_name)]}.\n" + _expected_layout(family))
    if path and path.strip():
        return _check_complete(family, Path(path.strip()).expanduser(), "path")
    repo = (repo_id or family.default_repo).strip()
    roots = runtime.family_dirs(family.folder_name)
    for root in roots:
        candidate = root / _default_folder(family, repo)
        if candidate.is_dir() and not missing_files(family, candidate):
            return candidate
    # A single complete folder under models/<family>/ is taken as the default.
    complete = [root / e for root in roots if root.is_dir() for e in sorted(os.listdir(root))
                if (root / e).is_dir() and not missing_files(family, root / e)]
    if len(complete) == 1 and repo == family.default_repo:
        return complete[0]
    target = roots[0] / _default_folder(family, repo)
    if not repo:
        raise WeightsError("no weights found (this release is not on Hugging Face, so nothing is downloaded).\n"
                           + _expected_layout(family, target))
    if _offline() or not allow_download:
        raise WeightsError("offline (HF_HUB_OFFLINE=1) and no weights found.\n" + _expected_layout(family, target))
    try:
        from huggingface_hub import snapshot_download
        snapshot_download(repo_id=repo, local_dir=str(target), allow_patterns=list(family.files) + list(family.download_patterns))
    except Exception as exc:  # no network, no such repo, gated, ...
        raise WeightsError(f"could not download '{repo}' ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}).\n"
                           + _expected_layout(family, target)) from exc
    return _check_complete(family, target, f"downloaded '{repo}' into")


def is_smoke(folder: Path) -> bool:
    return (folder / SMOKE_MARKER).is_file()


# --------------------------------------------------------------------------- reading files
COMPONENT_WEIGHTS = "diffusion_pytorch_model.safetensors"
"""A diffusers component folder's weights (``transformer/``, ``vae/``, ...) in one file ..."""
COMPONENT_INDEX = COMPONENT_WEIGHTS + ".index.json"
"""... or in shards listed by this index's ``weight_map`` (tensor name -> shard file)."""


def read_json(path: Path, what: str) -> dict:
    return read_json_object(path, what, WeightsError)


def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file, or a ``.pt/.pth/.bin`` with ``weights_only=True``.

    A truncated or corrupt file, or a pickle that needs arbitrary code, gives a
    :class:`WeightsError` naming the file.
    """
    path = Path(path)
    if path.suffix == ".safetensors" or not path.is_file():
        return _read_safetensors(path, what)
    return _flat_tensors(load_weights_only(path, what, mmap=False), path, what)


def read_checkpoint(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Like :func:`read_state_dict`, for training checkpoints: a torch pickle may also be the
    wrapper ``{'state_dict': sd, ...}`` (LDM / VGen / Lightning), whose ``sd`` is returned, and
    a zip-format pickle is memory-mapped (multi-GB files are not read into memory at once)."""
    path = Path(path)
    if path.suffix == ".safetensors" or not path.is_file():
        return _read_safetensors(path, what)
    data = load_weights_only(path, what, mmap=zipfile.is_zipfile(path))
    inner = data.get("state_dict") if isinstance(data, Mapping) else None
    return _flat_tensors(inner if isinstance(inner, Mapping) else data, path, what)


def read_component_weights(component: Path, what: str, source: str = "") -> dict[str, torch.Tensor]:
    """The state dict of a diffusers component folder: the shards listed in ``<component>/``
    ``diffusion_pytorch_model.safetensors.index.json`` (its ``weight_map``), or else the single
    ``diffusion_pytorch_model.safetensors``.

    Strict: every shard must hold exactly the keys the index assigns to it. A missing or corrupt
    shard, an index without a ``weight_map``, or no weights at all raise :class:`WeightsError`
    naming the file (and ``source``, where the component can be downloaded, if given)."""
    component = Path(component)
    index, single = component / COMPONENT_INDEX, component / COMPONENT_WEIGHTS
    if not index.is_file():
        if not single.is_file():
            raise WeightsError(f"{what}: {component} has neither {COMPONENT_WEIGHTS} nor the sharded {COMPONENT_INDEX} "
                               f"with its diffusion_pytorch_model-0000k-of-0000n.safetensors files."
                               + (f" Download {component.name}/ from {source}" if source else ""))
        return read_state_dict(single, what)
    weight_map = read_json(index, f"{what} shard index").get("weight_map")
    if not isinstance(weight_map, Mapping) or not weight_map or not all(
            isinstance(v, str) and v and Path(v).name == v for v in weight_map.values()):
        raise WeightsError(f"{what}: {index} has no valid weight_map (tensor name -> shard file in {component})")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        part = read_state_dict(component / shard, f"{what} shard {shard}")
        listed = {k for k, s in weight_map.items() if s == shard}
        if set(part) != listed:
            absent, extra = sorted(listed - set(part)), sorted(set(part) - listed)
            detail = "; ".join(([f"{len(absent)} listed key(s) absent: {', '.join(absent[:3])}"] if absent else [])
                               + ([f"{len(extra)} key(s) not in the index: {', '.join(extra[:3])}"] if extra else []))
            raise WeightsError(f"{what}: {component / shard} does not match {index.name} ({detail}): a damaged "
                               "download or shards from another release")
        state.update(part)
    return state


def write_component_weights(component: Path, state: Mapping[str, torch.Tensor], shards: int = 1) -> None:
    """Write ``state`` into a diffusers component folder: one ``diffusion_pytorch_model.safetensors``,
    or ``shards`` files ``diffusion_pytorch_model-0000k-of-0000n.safetensors`` (keys in order,
    split evenly) plus ``diffusion_pytorch_model.safetensors.index.json``."""
    from safetensors.torch import save_file
    component = Path(component)
    component.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in state.items()}
    if shards <= 1:
        save_file(tensors, str(component / COMPONENT_WEIGHTS))
        return
    keys = list(tensors)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i * len(keys) // shards:(i + 1) * len(keys) // shards]
        save_file({k: tensors[k] for k in part}, str(component / name))
        weight_map.update({k: name for k in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    write_json(component / COMPONENT_INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})


def _read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"{what}: {path} is missing")
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except Exception as exc:
        raise WeightsError(f"{what}: {path} is not a readable safetensors file "
                           f"(truncated or corrupt? {type(exc).__name__}: {exc})") from None


def load_weights_only(path: Path, what: str, mmap: bool = False) -> object:
    """``torch.load(weights_only=True)`` on the CPU; any failure (truncated, corrupt, or a pickle
    that needs code execution) is a :class:`WeightsError` naming ``what`` and the file."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        raise WeightsError(f"{what}: {path} could not be read as a weights-only torch checkpoint "
                           f"(truncated, corrupt, or it needs unsafe unpickling: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _flat_tensors(data: object, path: Path, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(data, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in data.items()):
        raise WeightsError(f"{what}: {path} does not hold a flat dict of tensors")
    return dict(data)


def _preview(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... (+{len(keys) - n} more)" if len(keys) > n else "")


def check_state_dict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Require an exact key and shape match between ``state`` and ``module``.

    The error names missing keys, unexpected keys and shape differences, which is how
    a checkpoint of another model is recognised.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong_shape:
        parts = [f"{what}: the checkpoint does not match the network"]
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_preview(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_preview(unexpected)}")
        if wrong_shape:
            parts.append("shape mismatch: " + _preview(
                [f"{k} {list(state[k].shape)} vs {list(expected[k].shape)}" for k in wrong_shape], 3))
        parts.append("Is this a checkpoint of a different model, or a config.json from another release?")
        raise WeightsError("\n  ".join(parts))


def load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> torch.nn.Module:
    """Load ``state`` into ``module`` after :func:`check_state_dict`.

    ``module`` may live on the meta device (built without allocating); its tensors are
    then replaced by the checkpoint's (``assign=True``).
    """
    check_state_dict(module, state, what)
    on_meta = any(t.is_meta for t in module.state_dict().values())
    module.load_state_dict(state, strict=True, assign=on_meta)
    leftovers = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if leftovers:
        raise WeightsError(f"{what}: tensors were never filled: {_preview(leftovers)}")
    return module


def random_state(module: torch.nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A state dict for smoke weights: every tensor of ``module`` redrawn by :func:`random_tensors`."""
    return random_tensors({key: tuple(value.shape) for key, value in module.state_dict().items()}, generator)


def random_tensors(shapes: Mapping[str, tuple[int, ...]], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Smoke tensors for ``{key: shape}``: normal with std 0.05, and 1-D weights (norm scales) around 1."""
    state = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=generator) * 0.05
        state[key] = (1.0 + noise) if key.endswith(".weight") and len(shape) == 1 else noise
    return state
