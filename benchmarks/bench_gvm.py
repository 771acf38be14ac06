"""GVM benchmarks; each prints markdown table rows (copy them into RESULTS.md).

    python benchmarks/bench_gvm.py memory   # file-to-file at 100 vs 1000 frames: peak RSS ratio
    python benchmarks/bench_gvm.py speed    # frames/s on CPU, smoke weights
    python benchmarks/bench_gvm.py gpu      # real-size network, random weights, 960x540 (needs CUDA)

``memory`` runs each length in a fresh process so peaks do not mix, and reports the
process's peak resident memory and its growth over the resident memory just before
matting starts (model loaded, nothing decoded yet).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _peak_rss_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2**20


def _write_clip(path: Path, frames: int, width: int, height: int) -> None:
    """A moving-disk clip, written frame by frame (never held in memory)."""
    from consistent_video.nodes.video.video_io import VideoWriter
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    with VideoWriter(path, "30000/1001", "h264-mp4", width, height) as out:
        for i in range(frames):
            cx, cy = width * (0.3 + 0.4 * (i % 60) / 60), height / 2
            disk = (((xx - cx) ** 2 + (yy - cy) ** 2).sqrt() < height / 4).float()
            frame = torch.stack([disk, 0.5 * torch.ones_like(disk), (xx / width)], -1)
            out.write(frame)


def _file_to_file_child(args) -> None:
    """In a fresh process: matte one clip file to files, print a JSON line of measurements."""
    import consistent_video  # noqa: F401  (registers the families and nodes)
    from consistent_video.gvm_nodes.family import load_gvm
    from consistent_video.gvm_nodes.nodes import CVS_GVMMatteVideoFile
    from consistent_video.nodes.comfy import runtime
    runtime.configure_standalone(output=args.out)
    handle = load_gvm(Path(args.weights), torch.device("cpu"), torch.float32)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    before = _rss_mb()
    start = time.perf_counter()
    result = CVS_GVMMatteVideoFile().run(
        handle, args.clip, 0, size=64, max_resolution=128, frames_per_window=8, overlap=2, refine_steps=0,
        decode_chunk_size=8, clamp=False, clamp_low=0.1, clamp_high=0.9, format="h264-mp4",
        write_foreground=True, write_composite=True, background_color="#00B140",
        filename_prefix="bench/gvm")
    seconds = time.perf_counter() - start
    print(json.dumps({"frames": result["result"][1], "seconds": seconds, "rss_before_mb": before,
                      "peak_rss_mb": _peak_rss_mb()}))


def bench_memory() -> list[str]:
    from consistent_video.gvm_nodes.family import write_smoke_gvm
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_smoke_gvm(tmp / "gvm")
        results = {}
        for frames in (100, 1000):
            clip = tmp / f"clip_{frames}.mp4"
            _write_clip(clip, frames, 160, 90)
            proc = subprocess.run([sys.executable, __file__, "_child", "--weights", str(tmp / "gvm"),
                                   "--clip", str(clip), "--out", str(tmp / "out")],
                                  capture_output=True, text=True, check=True)
            results[frames] = json.loads(proc.stdout.strip().splitlines()[-1])
        small, large = results[100], results[1000]
        for frames, r in results.items():
            rows.append(f"| GVM file-to-file, {frames} frames 160x90, smoke weights, CPU | "
                        f"{r['frames']} frames in {r['seconds']:.1f} s ({r['frames'] / r['seconds']:.1f} fps) | "
                        f"peak RSS {r['peak_rss_mb']:.0f} MB (growth while matting "
                        f"{r['peak_rss_mb'] - r['rss_before_mb']:.0f} MB) |")
        ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
        growth = (large["peak_rss_mb"] - large["rss_before_mb"]) / max(small["peak_rss_mb"] - small["rss_before_mb"], 1)
        verdict = "PASS" if ratio <= 1.3 else "FAIL"
        rows.append(f"| peak RSS ratio 1000 / 100 frames (target <= 1.3) | {ratio:.3f} ({verdict}) | "
                    f"growth ratio {growth:.2f} |")
    return rows


def bench_speed() -> list[str]:
    from consistent_video.gvm_nodes.family import load_gvm, write_smoke_gvm
    from consistent_video.gvm_nodes.pipeline import GVMMatter, MatteSettings, matte_frames
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_smoke_gvm(Path(tmp) / "gvm")
        handle = load_gvm(Path(tmp) / "gvm", torch.device("cpu"), torch.float32)
        frames = torch.rand(32, 540, 960, 3, generator=torch.Generator().manual_seed(0))
        for size, cap in ((256, 456), (540, 960)):
            for window in (8, 16):
                settings = MatteSettings(size=size, max_resolution=cap, frames_per_window=window, overlap=2)
                matter = GVMMatter(handle.modules["unet"], handle.modules["vae"], 1000, settings)
                matter.matte_window(frames[:2])  # warm-up
                start = time.perf_counter()
                matte_frames(frames, matter.matte_window, window, 2)
                seconds = time.perf_counter() - start
                rows.append(f"| GVM smoke weights, CPU ({torch.get_num_threads()} threads), 960x540 input, "
                            f"working size {size} short side, window {window}, overlap 2 | "
                            f"{frames.shape[0] / seconds:.2f} fps | 32 frames in {seconds:.1f} s |")
    return rows


def bench_gpu() -> list[str]:
    """Real-size GVM UNet + temporal VAE (random weights) at 960x540, bf16, windows of 8 and 16."""
    if not torch.cuda.is_available():
        return ["| GVM real size on GPU | not measured: no CUDA device on this machine | |"]
    from diffusers import AutoencoderKLTemporalDecoder
    from consistent_video.gvm_nodes.model import GVMUNet
    from consistent_video.gvm_nodes.pipeline import GVMMatter, MatteSettings, matte_frames
    device, dtype = torch.device("cuda"), torch.bfloat16
    unet = GVMUNet().to(device, dtype).eval()  # diffusers' defaults are the SVD sizes (about 1.5B parameters)
    vae = AutoencoderKLTemporalDecoder(
        down_block_types=["DownEncoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
        layers_per_block=2).to(device, dtype).eval()
    frames = torch.rand(48, 540, 960, 3)
    rows = []
    for window in (8, 16):
        settings = MatteSettings(size=540, max_resolution=960, frames_per_window=window, overlap=2,
                                 decode_chunk_size=8)
        matter = GVMMatter(unet, vae, 1000, settings)
        matter.matte_window(frames[:window])
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        matte_frames(frames, matter.matte_window, window, 2)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30
        rows.append(f"| GVM real size, {torch.cuda.get_device_name()}, bf16, 960x540, window {window}, overlap 2 | "
                    f"{frames.shape[0] / seconds:.2f} fps | peak GPU memory {peak:.1f} GiB |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["memory", "speed", "gpu", "_child"])
    parser.add_argument("--weights")
    parser.add_argument("--clip")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.what == "_child":
        _file_to_file_child(args)
        return
    rows = {"memory": bench_memory, "speed": bench_speed, "gpu": bench_gpu}[args.what]()
    print("\n".join(rows))


if __name__ == "__main__":
    main()
