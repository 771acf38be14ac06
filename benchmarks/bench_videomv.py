"""VideoMV sampling benchmarks; prints markdown table rows (copy them into RESULTS.md).

    python benchmarks/bench_videomv.py step    # CPU, smoke weights: seconds per sampling step, T2V and I2V
    python benchmarks/bench_videomv.py gpu     # CUDA: real-size UNets, random weights, 24 views at 256x256

``step``: the smoke UNets of both modes (the release's structure, head width and norm
groups, 64/128/128/128 channels; about 26.5M parameters) in fp32 through the sampler the
nodes use (:func:`consistent_video.videomv_nodes.pipeline.sample_latents`): 24 views,
both guidance branches in one batch of 2, at 64 x 64 (the demo's smoke size) and 256 x 256
(the release's size). Seconds per step = the median over 3 runs of (time for 6 steps -
time for 1 step) / 5, so set-up is not counted.

``gpu``: each UNet at its released size (T2V 1.413B, I2V 1.422B parameters, random
weights) in fp16 and bf16: 24 views at 256 x 256, 50 DDIM steps with classifier-free
guidance (batch of 2), seconds per run and peak GPU memory. Text and image encoders and
the VAE are not included (they run once per sample).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from consistent_video.nodes.comfy import families
from consistent_video.nodes.cameras.formats import to_videomv_cameras
from consistent_video.videomv_nodes import family as fam
from consistent_video.videomv_nodes.pipeline import ViewSettings, orbit_cameras, sample_latents
from consistent_video.videomv_nodes.schedules import I2V, NUM_VIEWS, T2V

MODES = {"t2v": (fam.T2V, T2V.guidance), "i2v": (fam.I2V, I2V.guidance)}


def _conditioning(mode: str, width: int, resolution: int, device, generator) -> dict:
    """Random stand-ins for the encoder outputs, shaped as the nodes make them."""
    cond = {"encoder_hidden_states": torch.randn(2, 77, width, generator=generator)}
    if mode == "i2v":
        side = resolution // 8
        cond["image_embeddings"] = torch.cat([torch.randn(1, width, generator=generator), torch.zeros(1, width)])
        cond["image_latents"] = torch.randn(1, 4, side, side, generator=generator).expand(2, -1, -1, -1)
    return {k: v.to(device) for k, v in cond.items()}


def _time(unet, mode: str, cond: dict, resolution: int, steps: int, guidance: float) -> float:
    cameras = to_videomv_cameras(orbit_cameras(NUM_VIEWS, 15.0, 2.0, resolution=resolution))
    settings = ViewSettings(guidance=guidance, steps=steps, seed=0, resolution=resolution)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    sample_latents(unet, mode, cond, cameras, settings)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_step() -> None:
    cpu = torch.device("cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode, (name, guidance) in MODES.items():
            family = families.get(name)
            family.write_smoke(Path(tmp) / name)
            handle = family.load(Path(tmp) / name, cpu, torch.float32)
            unet = handle.modules["unet"]
            params = sum(p.numel() for p in unet.parameters())
            for resolution in (64, 256):
                cond = _conditioning(mode, unet.config.cross_attention_dim, resolution, cpu,
                                     torch.Generator().manual_seed(0))
                per_step = []
                for _ in range(3):
                    one = _time(unet, mode, cond, resolution, 1, guidance)
                    six = _time(unet, mode, cond, resolution, 6, guidance)
                    per_step.append((six - one) / 5)
                rows.append((mode.upper(), params, resolution, statistics.median(per_step)))
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print("| mode | smoke UNet | views x size | seconds per step (CFG batch of 2) |")
    print("|---|---|---|---|")
    for mode, params, resolution, seconds in rows:
        print(f"| {mode} | {params / 1e6:.1f}M params, fp32 | {NUM_VIEWS} x {resolution}x{resolution} | "
              f"{seconds:.3f} s |")


def bench_gpu() -> None:
    from consistent_video.videomv_nodes.model import (VideoMVI2VUNet, VideoMVT2VUNet, config_for_release,
                                                      i2v_config_for_release)
    if not torch.cuda.is_available():
        raise SystemExit("bench_videomv.py gpu needs a CUDA GPU")
    device = torch.device("cuda")
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| mode | UNet | dtype | 24 views at 256x256, 50 steps, CFG | peak GPU memory |")
    print("|---|---|---|---|---|")
    for mode, network, config in (("t2v", VideoMVT2VUNet, config_for_release()),
                                  ("i2v", VideoMVI2VUNet, i2v_config_for_release())):
        with torch.device("meta"):
            unet = network(**config)
        unet = unet.to_empty(device=device)
        generator = torch.Generator(device=device).manual_seed(0)
        with torch.no_grad():
            for p in unet.parameters():
                p.normal_(0, 0.02, generator=generator)
        params = sum(p.numel() for p in unet.parameters())
        for dtype in (torch.float16, torch.bfloat16):
            torch.nn.Module.to(unet, dtype=dtype).eval().requires_grad_(False)
            cond = _conditioning(mode, 1024, 256, device, torch.Generator().manual_seed(0))
            guidance = MODES[mode][1]
            _time(unet, mode, cond, 256, 2, guidance)  # warm-up
            torch.cuda.reset_peak_memory_stats()
            seconds = _time(unet, mode, cond, 256, 50, guidance)
            peak = torch.cuda.max_memory_allocated() / 2 ** 30
            print(f"| {mode.upper()} | {params / 1e9:.3f}B params | {str(dtype).split('.')[-1]} | {seconds:.1f} s "
                  f"({seconds / 50 * 1000:.0f} ms/step) | {peak:.1f} GiB |")
        del unet
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("step", "gpu"))
    args = parser.parse_args()
    {"step": bench_step, "gpu": bench_gpu}[args.mode]()


if __name__ == "__main__":
    main()
