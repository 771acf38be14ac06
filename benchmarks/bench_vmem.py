"""VMem navigation benchmarks; prints markdown table rows (copy them into RESULTS.md).

    python benchmarks/bench_vmem.py step    # CPU, smoke weights: step time at ~8 vs ~200 frames
    python benchmarks/bench_vmem.py gpu     # CUDA: real-size UNet, random weights, 576x576

``step``: one walk of navigation steps (4 views each, alternating turns and short moves
that keep coming back to the same places) on smoke weights in the official layout, at
128 x 128 with 4 sampling steps so that everything that grows with the memory (surfel
retrieval, surfel merging, depth alignment against the memory) weighs as much as it can.
Geometry comes from the smoke Depth Anything model through the same provider the nodes
use. The step time is the median of 5 steps taken when the memory holds about 8 and about
200 frames; each measured step is undone again, so both points see the same memory. The
original re-runs CUT3R and its global alignment over all frames at every step, so its step
time grows with the walk. Saving the bank file (the nodes do it once per run) is timed
separately.

``gpu``: the SEVA UNet at its released size (about 1.26B parameters, random weights) in
bf16, one call of 8 frames (4 context + 4 targets, both guidance branches batched) for 50
steps at 576 x 576; seconds per generated frame and peak GPU memory.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from consistent_video.nodes.cameras.geometry import CameraBatch, intrinsics_from_fov
from consistent_video.nodes.cameras.trajectories import navigate

SIZE = 128


def _navigator(folder: Path):
    from consistent_video.nodes.encoders.clip import TransformersCLIPEmbedder
    from consistent_video.nodes.encoders.vae import DiffusersVAECodec
    from consistent_video.vmem_nodes import family as vmem_family
    from consistent_video.vmem_nodes.depth_family import (depth_estimator, load_depth_anything, output_kind,
                                                          write_smoke_depth_anything)
    from consistent_video.vmem_nodes.navigation import NavigationSettings, Navigator
    from consistent_video.vmem_nodes.pipeline import GenerationSettings
    from consistent_video.vmem_nodes.pointmaps import DepthModelProvider
    cpu = torch.device("cpu")
    vmem_family.VMEM_FAMILY.write_smoke(folder / "vmem")
    write_smoke_depth_anything(folder / "depth")
    handle = vmem_family.VMEM_FAMILY.load(folder / "vmem", cpu, torch.float32)
    depth = load_depth_anything(folder / "depth", cpu, torch.float32)
    provider = DepthModelProvider(depth_estimator(depth, chunk=8), output=output_kind(depth), start_depth=2.0)
    return Navigator(handle.modules["unet"], DiffusersVAECodec(handle.modules["vae"]),
                     TransformersCLIPEmbedder(handle.modules["image_encoder"]), provider, cpu, torch.float32,
                     NavigationSettings(GenerationSettings(steps=4)))


ACTIONS = [("turn_left", 30.0), ("move_forward", 0.2), ("turn_right", 30.0), ("move_backward", 0.2)]


def bench_step() -> None:
    from consistent_video.vmem_nodes.memory import SurfelMemory
    with tempfile.TemporaryDirectory() as tmp:
        navigator = _navigator(Path(tmp))
        memory = SurfelMemory()
        start = CameraBatch(torch.eye(4)[None], intrinsics_from_fov(54, SIZE, SIZE)[None], SIZE, SIZE)
        navigator.start(memory, torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0)), start)
        rows, action = [], 0

        def step():
            nonlocal action
            last = memory.cameras(torch.tensor([memory.num_frames - 1]))
            targets = navigate([ACTIONS[action % len(ACTIONS)]], 4, start=last)
            action += 1
            navigator.step(memory, targets)

        for target in (8, 200):
            while memory.num_frames < target:
                step()
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
                memory.undo()
                action -= 1
            path = Path(tmp) / "bank.safetensors"
            t0 = time.perf_counter()
            memory.save(path)
            save = time.perf_counter() - t0
            rows.append((memory.num_frames, memory.num_surfels, statistics.median(times), save,
                         path.stat().st_size / 1e6))
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print("| memory | surfels | step time (median of 5) | bank save |")
    print("|---|---|---|---|")
    for frames, surfels, median, save, size in rows:
        print(f"| {frames} frames | {surfels} | {median:.3f} s | {save:.3f} s ({size:.1f} MB) |")
    ratio = rows[1][2] / rows[0][2]
    print(f"| **ratio {rows[1][0]} / {rows[0][0]} frames** (target <= 1.3) | | **{ratio:.2f}: "
          f"{'PASS' if ratio <= 1.3 else 'FAIL'}** | |")


def bench_gpu() -> None:
    from consistent_video.vmem_nodes.model import SevaParams, SevaUNet
    from consistent_video.vmem_nodes.pipeline import GenerationSettings, build_conditioning, sample_latents
    if not torch.cuda.is_available():
        raise SystemExit("bench_vmem.py gpu needs a CUDA GPU")
    device, dtype = torch.device("cuda"), torch.bfloat16
    with torch.device("meta"):
        unet = SevaUNet(SevaParams())
    unet = unet.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.02, generator=generator)
    unet = unet.to(dtype).eval().requires_grad_(False)
    count = sum(p.numel() for p in unet.parameters())
    start = CameraBatch(torch.eye(4)[None], intrinsics_from_fov(54, 576, 576)[None], 576, 576)
    cams = CameraBatch.cat([start, navigate([("turn_left", 10)], 3, start=start),
                            navigate([("turn_left", 20)], 4, start=start)])
    mask = torch.arange(8) < 4
    cond = build_conditioning(cams, mask, torch.randn(4, 4, 72, 72), torch.randn(4, 1024))
    settings = GenerationSettings(steps=50)
    sample_latents(unet, cond, GenerationSettings(steps=2), 0, device, dtype)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    sample_latents(unet, cond, settings, 0, device, dtype)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, UNet {count / 1e9:.3f}B parameters")
    print("| setting | time per call | per generated frame | peak GPU memory |")
    print("|---|---|---|---|")
    print(f"| 576x576, 4 context + 4 targets, 50 steps, bf16, CFG batched | {seconds:.1f} s | "
          f"{seconds / 4:.2f} s | {peak:.1f} GiB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("step", "gpu"))
    args = parser.parse_args()
    {"step": bench_step, "gpu": bench_gpu}[args.mode]()


if __name__ == "__main__":
    main()
