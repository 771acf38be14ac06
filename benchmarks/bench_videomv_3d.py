"""VideoMV 3D-aware step cost on smoke weights (CPU); prints markdown table rows for RESULTS.md.

    python benchmarks/bench_videomv_3d.py [--resolution 64]

The smoke T2V and I2V handles (UNet 64/128/128/128 channels, tiny LGM 32/64/64) in fp32; random
stand-ins for the encoder outputs; 24 views. Plain = :func:`~consistent_video.videomv_nodes.pipeline.sample_latents`
with 3 steps; 3D = :func:`~consistent_video.videomv_nodes.denoise_3d.sample_latents_3d` with the same
3 steps, step 1 3D-aware (both branches: decode 4 views, LGM, render 24 views at 2x the
resolution, encode 24 renders). Extra cost of one 3D-aware step = median over 3 runs of
(3D run - plain run). The node's final LGM pass (denoise_3d off) is timed on its own.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_videomv import MODES, _conditioning  # noqa: E402

from consistent_video.nodes import families  # noqa: E402
from consistent_video.nodes.camera_formats import to_videomv_cameras  # noqa: E402
from consistent_video.nodes.vae import DiffusersVAECodec  # noqa: E402
from consistent_video.videomv_nodes import denoise_3d, nodes as N  # noqa: E402
from consistent_video.videomv_nodes.pipeline import ViewSettings, orbit_cameras, sample_latents  # noqa: E402
from consistent_video.videomv_nodes.schedules import NUM_VIEWS  # noqa: E402

STEPS = 3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    res = args.resolution
    torch.set_grad_enabled(False)
    print(f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; smoke weights, 24 views at {res}x{res}, {STEPS} DDIM steps\n")
    print("| mode | plain run (s) | run with 1 3D-aware step (s) | extra per 3D-aware step (s) | plain step (s) "
          "| ratio 3D step / plain step | final LGM pass (s) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for mode, (name, guidance) in MODES.items():
            family = families.get(name)
            family.write_smoke(Path(tmp) / name)
            handle = family.load(Path(tmp) / name, torch.device("cpu"), torch.float32)
            width = handle.modules["unet"].config.cross_attention_dim
            cond = _conditioning(mode, width, res, "cpu", torch.Generator().manual_seed(0))
            cams = orbit_cameras(NUM_VIEWS, 15.0, 2.0, resolution=res)
            settings = ViewSettings(guidance=guidance, steps=STEPS, seed=0, resolution=res)
            codec = DiffusersVAECodec(handle.modules["vae"], chunk_size=4)
            reconstruct = N._lgm_reconstructor(handle.modules["lgm"], None)
            refine = denoise_3d.RefineSettings(background=denoise_3d.BACKGROUND[mode], steps=(1,), input_size=res,
                                               render_size=2 * res)
            unet = handle.modules["unet"]

            def plain():
                return sample_latents(unet, mode, cond, to_videomv_cameras(cams), settings)

            def aware():
                return denoise_3d.sample_latents_3d(unet, mode, cond, cams, settings, codec, reconstruct, refine)

            def final():
                x = plain()
                t0 = time.perf_counter()
                denoise_3d.reconstruct_views(x, codec, cams, reconstruct, refine)
                return time.perf_counter() - t0

            def timed(fn):
                t0 = time.perf_counter()
                fn()
                return time.perf_counter() - t0

            timed(plain), timed(aware)  # warm-up
            p = [timed(plain) for _ in range(args.repeats)]
            a = [timed(aware) for _ in range(args.repeats)]
            f = statistics.median(final() for _ in range(args.repeats))
            extra = statistics.median(x - y for x, y in zip(a, p))
            step = statistics.median(p) / STEPS
            print(f"| {mode} | {statistics.median(p):.2f} | {statistics.median(a):.2f} | {extra:.2f} | {step:.2f} "
                  f"| {(step + extra) / step:.1f}x | {f:.2f} |")


if __name__ == "__main__":
    main()
