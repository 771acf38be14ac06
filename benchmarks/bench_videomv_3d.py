"""VideoMV 3D-aware step cost; prints markdown table rows for RESULTS.md.

    python benchmarks/bench_videomv_3d.py [cpu] [--resolution 64]   # smoke weights on the CPU
    python benchmarks/bench_videomv_3d.py gpu [--dtype float16]      # real sizes, random weights, CUDA

``cpu``:
The smoke T2V and I2V handles (UNet 64/128/128/128 channels, tiny LGM 32/64/64) in fp32; random
stand-ins for the encoder outputs; 24 views. Plain = :func:`~consistent_video.videomv_nodes.pipeline.sample_latents`
with 3 steps; 3D = :func:`~consistent_video.videomv_nodes.denoise_3d.sample_latents_3d` with the same
3 steps, step 1 3D-aware (both branches: decode 4 views, LGM, render 24 views at 2x the
resolution, encode 24 renders). Extra cost of one 3D-aware step = median over 3 runs of
(3D run - plain run). The node's final LGM pass (denoise_3d off) is timed on its own.

``gpu``: the networks at their released sizes with random weights (the UNet of each mode as
in ``bench_videomv.py gpu``, LGM 'big' (:data:`~consistent_video.videomv_nodes.lgm.RELEASE`), the
SD-size VAE (128/256/512/512)) in ``--dtype``: 24 views at 256x256, 50 DDIM steps with
guidance, plain vs 3D-aware at VideoMV's loop indices 20/30/40 (LGM at 256 px, renders at
512 px, the pack's renderer: gsplat when installed). Extra per 3D-aware step = (3D run -
plain run) / 3; peak GPU memory of each run. ``--device cpu --dtype float32 --steps 2
--refine-steps 1`` runs the same real-size path on the CPU (slow; a check that it runs).
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

from consistent_video.nodes.comfy import families  # noqa: E402
from consistent_video.nodes.cameras.formats import to_videomv_cameras  # noqa: E402
from consistent_video.nodes.encoders.vae import DiffusersVAECodec  # noqa: E402
from consistent_video.videomv_nodes import denoise_3d, nodes as N  # noqa: E402
from consistent_video.videomv_nodes.pipeline import ViewSettings, orbit_cameras, sample_latents  # noqa: E402
from consistent_video.videomv_nodes.schedules import NUM_VIEWS  # noqa: E402

STEPS = 3
SD_VAE = {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4,
          "norm_num_groups": 32, "sample_size": 256, "scaling_factor": 0.18215,
          "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}
"""ModelScope-T2V's ``VQGAN_autoencoder.pth`` (SD's autoencoder: ch 128, ch_mult 1,2,4,4) as a diffusers config."""


def _random(network: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """``network`` (built on the meta device) materialised on ``device`` with N(0, 0.02) weights."""
    network = network.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in network.parameters():
            p.normal_(0, 0.02, generator=generator)
    return torch.nn.Module.to(network, dtype=dtype).eval().requires_grad_(False)


def bench_gpu(args) -> None:
    from diffusers import AutoencoderKL

    from consistent_video.videomv_nodes.lgm import LGM, RELEASE
    from consistent_video.videomv_nodes.model import (VideoMVI2VUNet, VideoMVT2VUNet, config_for_release,
                                                      i2v_config_for_release)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_videomv_3d.py gpu needs a CUDA GPU (or --device cpu for a slow check)")
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype)
    res, steps = 256, args.steps
    print(f"{torch.cuda.get_device_name() if cuda else 'CPU'}, torch {torch.__version__}, {args.dtype}; random "
          f"weights at the released sizes, 24 views at {res}x{res}, {steps} DDIM steps with guidance\n")
    print("| mode | UNet / LGM params | plain run (s) | 3D-aware run (s) | extra per 3D-aware step (s) "
          "| plain step (s) | peak memory plain / 3D (GiB) |")
    print("|---|---|---|---|---|---|---|")

    def synced(fn):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0, (torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan"))

    with torch.device("meta"):
        lgm = LGM(RELEASE)
        vae = AutoencoderKL.from_config(SD_VAE)
    lgm, vae = _random(lgm, device, dtype), _random(vae, device, torch.float32)
    codec = DiffusersVAECodec(vae, chunk_size=4)
    reconstruct = N._lgm_reconstructor(lgm, None)
    for mode, network, config in (("t2v", VideoMVT2VUNet, config_for_release()),
                                  ("i2v", VideoMVI2VUNet, i2v_config_for_release())):
        with torch.device("meta"):
            unet = network(**config)
        unet = _random(unet, device, dtype)
        guidance = MODES[mode][1]
        cond = _conditioning(mode, 1024, res, device, torch.Generator().manual_seed(0))
        cams = orbit_cameras(NUM_VIEWS, 15.0, 2.0, resolution=res)
        settings = ViewSettings(guidance=guidance, steps=steps, seed=0, resolution=res)
        refine = denoise_3d.RefineSettings(background=denoise_3d.BACKGROUND[mode], steps=args.refine_steps)
        n_3d = sum(1 for i in refine.steps if i < steps)

        def plain():
            return sample_latents(unet, mode, cond, to_videomv_cameras(cams), settings)

        def aware():
            return denoise_3d.sample_latents_3d(unet, mode, cond, cams, settings, codec, reconstruct, refine)

        if cuda:
            synced(lambda: sample_latents(unet, mode, cond, to_videomv_cameras(cams),
                                          ViewSettings(guidance=guidance, steps=2, seed=0, resolution=res)))
        (tp, mp), (ta, ma) = synced(plain), synced(aware)
        params = sum(p.numel() for p in unet.parameters()) / 1e9, sum(p.numel() for p in lgm.parameters()) / 1e9
        extra = (ta - tp) / max(n_3d, 1)
        print(f"| {mode} | {params[0]:.3f}B / {params[1]:.3f}B | {tp:.1f} | {ta:.1f} ({n_3d} 3D-aware) | {extra:.2f} "
              f"| {tp / steps:.3f} | {f'{mp:.1f} / {ma:.1f}' if cuda else '- (CPU)'} |")
        unet = None  # frees it before the next mode
        if cuda:
            torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--resolution", type=int, default=64, help="cpu: the views' size")
    parser.add_argument("--repeats", type=int, default=3, help="cpu: runs per measurement (the median counts)")
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"), help="gpu")
    parser.add_argument("--device", default="cuda", help="gpu: where the real-size networks run")
    parser.add_argument("--steps", type=int, default=50, help="gpu: DDIM steps")
    parser.add_argument("--refine-steps", type=lambda text: tuple(int(v) for v in text.split(",")),
                        default=denoise_3d.REFINE_STEPS, help="gpu: loop indices of the 3D-aware steps (20,30,40)")
    args = parser.parse_args()
    if args.mode == "gpu":
        bench_gpu(args)
    else:
        bench_cpu(args)


def bench_cpu(args) -> None:
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
