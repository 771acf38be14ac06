"""The one bridge between the pack and ComfyUI.

Only this module touches ComfyUI (``comfy.*``, ``folder_paths``, ``comfy_api``). Every
other module asks it for folders, devices, progress, interrupts and GPU loading, so the
same code runs inside a ComfyUI server and standalone (the headless runner, tests,
benchmarks) with plain torch.

"Inside ComfyUI" means ComfyUI's own modules are already imported in this process; the
pack never imports a ComfyUI checkout by itself. Outside, folders come from
:func:`configure_standalone` (the runner's ``--output``/``--models``) or environment
variables ``CVS_MODELS_DIR``, ``CVS_OUTPUT_DIR``, ``CVS_INPUT_DIR``.
"""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import torch

__all__ = [
    "Interrupted", "in_comfyui", "configure_standalone", "models_root", "family_dirs",
    "output_dir", "input_dir", "resolve_device", "resolve_dtype", "offload_device",
    "load_to_device", "module_place", "Progress", "check_interrupt", "request_interrupt", "clear_interrupt",
    "interruptible",
    "make_video", "video_to_frames", "is_video",
]


class Interrupted(Exception):
    """Raised outside ComfyUI when the user cancels (``request_interrupt`` or Ctrl-C).

    Inside ComfyUI the interrupt is ComfyUI's own ``InterruptProcessingException``.
    """


def in_comfyui() -> bool:
    """True when ComfyUI's model management is loaded in this process."""
    return "comfy.model_management" in sys.modules and "folder_paths" in sys.modules


def _mm():
    return sys.modules["comfy.model_management"]


def _folder_paths():
    return sys.modules["folder_paths"]


# --------------------------------------------------------------------------- folders
@dataclass
class _Standalone:
    models: Optional[Path] = None
    output: Optional[Path] = None
    input: Optional[Path] = None
    extra_family_dirs: dict = field(default_factory=dict)


_standalone = _Standalone()


def configure_standalone(*, models: str | os.PathLike | None = None,
                         output: str | os.PathLike | None = None,
                         input: str | os.PathLike | None = None) -> None:
    """Set the folders used outside ComfyUI (``None`` leaves a setting unchanged)."""
    if models is not None:
        _standalone.models = Path(models)
    if output is not None:
        _standalone.output = Path(output)
    if input is not None:
        _standalone.input = Path(input)


def models_root() -> Path:
    """ComfyUI's ``models/`` folder (standalone: ``CVS_MODELS_DIR`` or ``./models``)."""
    if in_comfyui():
        return Path(_folder_paths().models_dir)
    if _standalone.models is not None:
        return _standalone.models
    return Path(os.environ.get("CVS_MODELS_DIR", "models"))


def family_dirs(family: str) -> list[Path]:
    """All folders that may hold weights of ``family`` (``models/<family>/`` first).

    Inside ComfyUI the folder is registered with ``folder_paths`` so entries in
    ``extra_model_paths.yaml`` under the same key are honoured too.
    """
    if in_comfyui():
        fp = _folder_paths()
        default = os.path.join(fp.models_dir, family)
        if family not in fp.folder_names_and_paths:
            fp.add_model_folder_path(family, default, is_default=True)
        return [Path(p) for p in fp.get_folder_paths(family)]
    return [models_root() / family]


def output_dir() -> Path:
    """Where nodes write files (ComfyUI's output folder, or the runner's)."""
    if in_comfyui():
        return Path(_folder_paths().get_output_directory())
    if _standalone.output is not None:
        return _standalone.output
    return Path(os.environ.get("CVS_OUTPUT_DIR", "output"))


def input_dir() -> Path:
    """Where input files (videos, images) are looked up by bare name."""
    if in_comfyui():
        return Path(_folder_paths().get_input_directory())
    if _standalone.input is not None:
        return _standalone.input
    return Path(os.environ.get("CVS_INPUT_DIR", "input"))


# --------------------------------------------------------------------------- devices
def resolve_device(preference: str = "auto") -> torch.device:
    """``auto`` is ComfyUI's torch device inside ComfyUI, else CUDA > MPS > CPU."""
    if preference not in ("auto", "", None):
        dev = torch.device(preference)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device '{preference}' was requested but CUDA is not available")
        return dev
    if in_comfyui():
        return _mm().get_torch_device()
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 where the GPU supports it, fp16 on other CUDA GPUs, fp32 on CPU/MPS.

    fp16 on CPU or MPS is refused: half-precision convolutions hang or crawl there.
    """
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if precision not in _DTYPES:
        raise ValueError(f"precision must be one of auto, bf16, fp16, fp32; got '{precision}'")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"fp16 is only supported on CUDA devices, not '{device.type}'; use fp32 or bf16")
    return _DTYPES[precision]


def offload_device() -> torch.device:
    """Where weights rest when not in use (ComfyUI's choice, CPU standalone)."""
    if in_comfyui():
        return _mm().unet_offload_device()
    return torch.device("cpu")


class _Patchers:
    """ModelPatchers created lazily, one per module, kept on the module itself.

    ComfyUI's ``LoadedModel`` holds only weak references and reports a leak when a
    module outlives its patcher, so the patcher must live exactly as long as the module:
    storing it on the module does that (the module <-> patcher cycle is intended).
    """

    ATTR = "_cvs_model_patcher"

    @classmethod
    def get(cls, module: torch.nn.Module, device: torch.device):
        patcher = getattr(module, cls.ATTR, None)
        if patcher is None or patcher.load_device != device:
            mp = sys.modules.get("comfy.model_patcher")
            if mp is None:
                import comfy.model_patcher as mp  # noqa: F811  (inside ComfyUI only)
            patcher = mp.ModelPatcher(module, load_device=device, offload_device=offload_device())
            object.__setattr__(module, cls.ATTR, patcher)
        return patcher


def load_to_device(modules: Iterable[torch.nn.Module], device: torch.device) -> None:
    """Make ``modules`` resident on ``device`` before inference.

    Inside ComfyUI each module is wrapped in a ``ModelPatcher`` and loaded with
    ``load_models_gpu(..., force_full_load=True)``: plain torch layers cannot be
    partially offloaded, and ComfyUI may evict them later for other models. Outside
    ComfyUI this is ``module.to(device)``.
    """
    modules = list(modules)
    if in_comfyui() and device.type != "cpu":
        patchers = [_Patchers.get(m, device) for m in modules]
        _mm().load_models_gpu(patchers, force_full_load=True)
        return
    for m in modules:
        m.to(device)


def module_place(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of a module's first parameter (where its inputs must go)."""
    first = next(module.parameters())
    return first.device, first.dtype


# --------------------------------------------------------------------------- progress
_interrupt = threading.Event()


def request_interrupt() -> None:
    """Ask the running work to stop at its next Cancel point (standalone Cancel): a progress
    step, or a block inside a network call under :func:`interruptible`."""
    _interrupt.set()


def clear_interrupt() -> None:
    _interrupt.clear()


def check_interrupt() -> None:
    """Raise if the user cancelled: ComfyUI's exception inside, :class:`Interrupted` outside."""
    if in_comfyui():
        _mm().throw_exception_if_processing_interrupted()
        return
    if _interrupt.is_set():
        _interrupt.clear()
        raise Interrupted("cancelled by the user")


@contextmanager
def interruptible(*networks: torch.nn.Module) -> Iterator[None]:
    """Cancel points inside the calls of ``networks`` while the context is open.

    A step of a video diffusion network takes many seconds on a CPU, so checking for
    Cancel only between steps (:class:`Progress`) answers late. Here every composite
    submodule of each network (every module that has children: the UNet's down, mid and
    up blocks and their resnets and attentions, a DiT's transformer blocks and their
    attention and feed-forward parts) gets a forward pre-hook that calls
    :func:`check_interrupt`, so Cancel stops the call before the next block runs. A
    feed-forward layer (a module named ``FeedForward``: position-wise, so rows are
    independent) over more than :data:`FEED_FORWARD_ROWS` rows runs in chunks of that many
    rows with a Cancel point before each: one such layer over every view and position
    (VideoMV's temporal transformer: 24 views x 1024 positions x 2 guidance branches) is
    otherwise a single uninterruptible span of seconds on a CPU. The hooks cost a flag test
    per block when nothing was cancelled, and are removed on exit (also when the call
    raised), leaving the networks exactly as they were.
    """
    def before_block(module, args):
        check_interrupt()

    handles = [module.register_forward_pre_hook(before_block)
               for network in networks for module in network.modules()
               if next(module.children(), None) is not None]
    chunked = [module for network in networks for module in network.modules()
               if type(module).__name__ == "FeedForward" and "forward" not in vars(module)]
    for module in chunked:
        module.forward = _feed_forward_in_chunks(module.forward)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module in chunked:
            del module.forward


FEED_FORWARD_ROWS = 8192
"""Rows (tokens) per chunk of a feed-forward layer inside :func:`interruptible`."""


def _feed_forward_in_chunks(forward):
    """``forward`` of a position-wise layer ``[..., C] -> [..., C']``, run over at most
    :data:`FEED_FORWARD_ROWS` rows at a time with a Cancel point before each chunk."""
    def chunked(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        rows = hidden_states.numel() // max(hidden_states.shape[-1], 1) if hidden_states.dim() >= 2 else 0
        if rows <= FEED_FORWARD_ROWS:
            return forward(hidden_states, *args, **kwargs)
        flat = hidden_states.reshape(rows, hidden_states.shape[-1])
        parts = []
        for chunk in flat.split(FEED_FORWARD_ROWS):
            check_interrupt()
            parts.append(forward(chunk, *args, **kwargs))
        out = torch.cat(parts)
        return out.reshape(*hidden_states.shape[:-1], out.shape[-1])
    return chunked


class Progress:
    """Progress for a loop of ``total`` steps; every update is also a Cancel point.

    Inside ComfyUI this drives ``comfy.utils.ProgressBar`` (the UI bar, and ComfyUI's
    hook checks the interrupt flag); outside it shows a tqdm bar on the terminal.
    ``total`` may be ``None`` when the length is unknown (a stream).
    """

    def __init__(self, total: Optional[int], desc: str = ""):
        self.total = total
        self.n = 0
        self._bar = None
        self._tqdm = None
        if in_comfyui():
            import comfy.utils  # inside ComfyUI only
            self._bar = comfy.utils.ProgressBar(total if total else 1)
        elif not os.environ.get("CVS_NO_PROGRESS"):
            from tqdm.auto import tqdm
            self._tqdm = tqdm(total=total, desc=desc, unit="step", leave=False,
                              disable=not sys.stderr.isatty() and not os.environ.get("CVS_FORCE_PROGRESS"))
        check_interrupt()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            total = self.total if self.total else max(self.n + 1, 1)
            self._bar.update_absolute(min(self.n, total), total)
        if self._tqdm is not None:
            self._tqdm.update(n)
        check_interrupt()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- VIDEO type
class StandaloneVideo:
    """ComfyUI-compatible VIDEO outside ComfyUI (same ``get_components`` contract).

    ``images``: ``[T,H,W,3]`` float 0..1; ``frame_rate``: exact ``Fraction``.
    """

    def __init__(self, images: torch.Tensor, frame_rate: Fraction):
        self.images = images
        self.frame_rate = Fraction(frame_rate)

    def get_components(self):
        from types import SimpleNamespace
        return SimpleNamespace(images=self.images, frame_rate=self.frame_rate, audio=None, metadata=None)

    def get_dimensions(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[1])


def make_video(images: torch.Tensor, frame_rate: Fraction) -> Any:
    """Wrap an IMAGE batch as ComfyUI's VIDEO type (``VideoFromComponents`` inside ComfyUI)."""
    if in_comfyui():
        try:
            from comfy_api.latest import InputImpl, Types  # inside ComfyUI only
            return InputImpl.VideoFromComponents(
                Types.VideoComponents(images=images, frame_rate=Fraction(frame_rate), audio=None))
        except ImportError:  # very old ComfyUI without the VIDEO type
            pass
    return StandaloneVideo(images, frame_rate)


def is_video(value: Any) -> bool:
    return callable(getattr(value, "get_components", None))


def video_to_frames(video: Any) -> tuple[torch.Tensor, Fraction]:
    """Frames ``[T,H,W,3]`` float 0..1 and the exact frame rate of a ComfyUI VIDEO."""
    comp = video.get_components()
    images = comp.images
    if images.dtype != torch.float32:
        images = images.float()
    return images, Fraction(comp.frame_rate).limit_denominator(1_000_000)
