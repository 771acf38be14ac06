"""Cancel latency on CPU; prints markdown table rows (copy them into RESULTS.md).

    python benchmarks/bench_cancel.py            # VMem Navigate and VideoMV Text to Views
    python benchmarks/bench_cancel.py vmem       # one of them

Smoke weights (tiny, random) at each node's working size, through the nodes themselves:
**CVS VMem Navigate** at 576 x 576 (4 context + 4 targets, CFG batched) and **CVS VideoMV
Text to Views** with 24 views at 256 x 256, 50 steps each.

- **Cancel points in one network call**: every :func:`~consistent_video.nodes.comfy.runtime.check_interrupt`
  during the first UNet call is timed (the pack's checks inside the network,
  :func:`~consistent_video.nodes.comfy.runtime.interruptible`): how many there are, the longest
  and the median span between two of them, and the mean wait for a Cancel pressed at a
  random moment of the call (sum of span² / (2 x call time)).
- **Latency**: a thread presses Cancel (``runtime.request_interrupt``) ``--delay`` seconds
  into the first UNet call; the time from that press to the exception, with the Cancel
  points inside the network and without them (checks between sampling steps only, as
  before issue 13).
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

import consistent_video  # noqa: F401  (registers every node and model family)
from consistent_video.nodes.comfy import families, runtime

CPU = torch.device("cpu")


def _vmem(folder: Path):
    from consistent_video.vmem_nodes import family as vmem_family
    from consistent_video.vmem_nodes.depth_family import load_depth_anything, write_smoke_depth_anything
    from consistent_video.vmem_nodes.navigate_nodes import CVS_VMemNavigate
    from consistent_video.vmem_nodes.nodes import CVS_SurfelMemory
    vmem_family.VMEM_FAMILY.write_smoke(folder / "vmem")
    write_smoke_depth_anything(folder / "depth")
    handle = vmem_family.VMEM_FAMILY.load(folder / "vmem", CPU, torch.float32)
    depth = load_depth_anything(folder / "depth", CPU, torch.float32)
    image = torch.rand(1, 576, 576, 3, generator=torch.Generator().manual_seed(0))
    knobs = dict(steps=50, cfg=2.0, cfg_min=1.2, guider="multiview", seed=42, resolution=576, fit="pad", fov=54.0,
                 context_views=4, camera_scale=2.0, start_depth=2.0)

    def run():
        bank = CVS_SurfelMemory().open("cancel", True, 25, 0.999, 0.5, 0.6)[0]
        CVS_VMemNavigate().navigate(handle, depth, bank, action="turn_left", angle=10.0, distance=0.25,
                                    poses_per_action=4, image=image, **knobs)
    return "VMem Navigate, 576x576, 8 frames", handle.modules["unet"], run


def _videomv(folder: Path):
    from consistent_video.videomv_nodes import family as fam
    from consistent_video.videomv_nodes import nodes as N
    from consistent_video.videomv_nodes import pipeline as P
    families.get(fam.T2V).write_smoke(folder / "t2v")
    handle = families.get(fam.T2V).load(folder / "t2v", CPU, torch.float32)

    def run():
        N.CVS_VideoMVTextToViews().generate(handle, "a chair", 0, 50, 9.0, 15.0, 2.0, 256, P.NEGATIVE_PROMPT)
    return "VideoMV Text to Views, 24 x 256x256", handle.modules["unet"], run


CASES = {"vmem": _vmem, "videomv": _videomv}


@contextlib.contextmanager
def _first_call(network: torch.nn.Module, on_start=None, on_end=None):
    """Call ``on_start`` / ``on_end`` around the first call of ``network``."""
    seen = []

    def start(module, args):
        if not seen and on_start is not None:
            on_start()

    def end(module, args, output):
        if not seen and on_end is not None:
            on_end()
        seen.append(1)
    handles = [network.register_forward_pre_hook(start), network.register_forward_hook(end)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def cancel_points(network: torch.nn.Module, run) -> tuple[float, list[float]]:
    """Duration of the first network call and the spans between its Cancel checks."""
    stamps, inside = [], []
    original = runtime.check_interrupt

    def timed_check():
        if inside:
            stamps.append(time.perf_counter())
        original()

    def start():
        inside.append(1)
        stamps.append(time.perf_counter())

    def end():
        stamps.append(time.perf_counter())
        inside.clear()
        runtime.request_interrupt()
    runtime.check_interrupt = timed_check
    try:
        with _first_call(network, start, end), contextlib.suppress(runtime.Interrupted):
            run()
    finally:
        runtime.check_interrupt = original
        runtime.clear_interrupt()
    return stamps[-1] - stamps[0], [b - a for a, b in zip(stamps, stamps[1:])]


def latency(network: torch.nn.Module, run, delay: float, inside: bool) -> float:
    """Seconds from a Cancel pressed ``delay`` s into the first network call to the exception."""
    pressed = []

    def press():
        pressed.append(time.perf_counter())
        runtime.request_interrupt()

    def start():
        threading.Timer(delay, press).start()
    original = runtime.interruptible
    if not inside:
        runtime.interruptible = lambda *networks: contextlib.nullcontext()
    try:
        with _first_call(network, start), contextlib.suppress(runtime.Interrupted):
            run()
            raise RuntimeError("the run finished before the Cancel")
        return time.perf_counter() - pressed[0]
    finally:
        runtime.interruptible = original
        runtime.clear_interrupt()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", help=f"any of {', '.join(CASES)} (default: all)")
    parser.add_argument("--delay", type=float, default=2.0, help="seconds into the first network call")
    args = parser.parse_args()
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) {', '.join(sorted(unknown))}; choose from {', '.join(CASES)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runtime.configure_standalone(output=Path(tmp) / "output")
        for name in args.cases or CASES:
            label, network, run = CASES[name](Path(tmp) / name)
            call, spans = cancel_points(network, run)
            mean_wait = sum(s * s for s in spans) / (2 * sum(spans))
            now = latency(network, run, args.delay, inside=True)
            before = latency(network, run, args.delay, inside=False)
            rows.append((label, call, len(spans) - 1, max(spans), statistics.median(spans), mean_wait, now, before))
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; Cancel pressed {args.delay:g} s into the first UNet call")
    print("| node, smoke weights | one UNet call | Cancel points in it | longest / median span | "
          "mean wait | latency now | latency between steps only |")
    print("|---|---|---|---|---|---|---|")
    for label, call, count, longest, median, mean_wait, now, before in rows:
        print(f"| {label} | {call:.1f} s | {count} | {longest:.2f} s / {median * 1000:.0f} ms | {mean_wait:.2f} s | "
              f"{now:.2f} s | {before:.1f} s |")


if __name__ == "__main__":
    main()
