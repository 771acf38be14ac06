"""Memory-V2V cost benchmarks at smoke size on CPU; prints markdown rows for RESULTS.md.

    python benchmarks/bench_memory_v2v.py        # CPU, smoke size: tokens, FLOPs and time
    python benchmarks/bench_memory_v2v.py gpu    # CUDA: real-size DiT, random weights, seconds per turn

One denoising call of ReCamMaster (30 blocks, as released; width 256 = 2 heads of 128,
FFN 512, random weights) on a target of 8 latent frames of 16 x 16 (so 64 native tokens per
frame), the user video, and 3 or 6 memory videos (the top 3 at 1x4x4, the rest at 1x8x8,
Memory-V2V's rule), with the same inputs:

- **tokens**: conditioning tokens (user + memory) with dynamic tokenization vs naive
  full-resolution concatenation (every memory video at 1x2x2);
- **merging**: FLOPs (``torch.utils.flop_counter``, every matmul / conv / attention) and
  wall time (median of 3) with adaptive token merging at blocks 10 and 20 vs without: the
  default (the lowest-responsiveness frames holding half of the conditioning tokens, merged
  2x2) and a stronger setting (three quarters of the tokens).

``gpu``: the DiT at Wan2.1-T2V-1.3B's size (random weights, bf16) for one turn at 480x832,
81 frames (21 latent frames), 50 steps with CFG, with 0, 3 and 6 memory videos; seconds per
turn (DiT only: the VAE and text encoder run once per turn) and peak GPU memory.
"""
from __future__ import annotations

import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from consistent_video.memory_v2v_nodes import memory_forward as MF
from consistent_video.memory_v2v_nodes.model import ReCamMasterTransformer, config_for_release

FRAMES, SIDE, CHANNELS, TEXT = 8, 16, 16, 64


def build() -> ReCamMasterTransformer:
    config = config_for_release()
    config.update(num_attention_heads=2, ffn_dim=512, text_dim=TEXT)
    torch.manual_seed(0)
    model = ReCamMasterTransformer(**config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name and "scale_shift" not in name and p.ndim > 1:
                p.normal_(0, p[0].numel() ** -0.5)
    return model.eval()


def inputs(memories: int, naive: bool):
    gen = torch.Generator().manual_seed(1)
    target = torch.randn(2, CHANNELS, FRAMES, SIDE, SIDE, generator=gen)
    user = torch.randn(1, CHANNELS, FRAMES, SIDE, SIDE, generator=gen)
    text = torch.randn(2, 32, TEXT, generator=gen)
    cams = torch.randn(FRAMES, 12, generator=gen) * 0.1
    memory = [MF.MemoryVideo(torch.randn(1, CHANNELS, FRAMES, SIDE, SIDE, generator=gen),
                             torch.randn(FRAMES, 12, generator=gen) * 0.1,
                             "1x2x2" if naive else ("1x4x4" if i < 3 else "1x8x8")) for i in range(memories)]
    return target, torch.tensor([500.0, 500.0]), text, cams, user, memory


def call(model, args, ratio: float) -> MF.CallReport:
    report = MF.CallReport()
    MF.denoise(model, *args, merge_ratio=ratio, report=report)
    return report


def flops(model, args, ratio: float) -> int:
    with FlopCounterMode(display=False) as counter:
        call(model, args, ratio)
    return counter.get_total_flops()


def seconds(model, args, ratio: float) -> float:
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        call(model, args, ratio)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    torch.set_grad_enabled(False)
    model = build()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{len(model.blocks)} blocks")
    print("\n| memory videos | conditioning tokens, naive 1x2x2 | with dynamic tokenization | fewer |")
    print("|---|---|---|---|")
    for count in (3, 6):
        naive = call(model, inputs(count, True), 0.0).tokens
        dynamic = call(model, inputs(count, False), 0.0).tokens
        n, d = naive["user"] + naive["memory"], dynamic["user"] + dynamic["memory"]
        print(f"| {count} | {n} (memory {naive['memory']}) | {d} (memory {dynamic['memory']}) | "
              f"{100 * (1 - d / n):.1f}% (memory tokens: {100 * (1 - dynamic['memory'] / naive['memory']):.1f}%) |")
    print("\n| memory videos | merge ratio | FLOPs without merging | with merging (blocks 10, 20) | fewer FLOPs | "
          "time without | time with | less time | mean sequence length |")
    print("|---|---|---|---|---|---|---|---|---|")
    for count in (3, 6):
        args = inputs(count, False)
        f0, t0 = flops(model, args, 0.0), seconds(model, args, 0.0)
        lengths0 = call(model, args, 0.0).lengths
        for ratio in (MF.DEFAULT_MERGE_RATIO, 0.75):
            f1, t1 = flops(model, args, ratio), seconds(model, args, ratio)
            lengths1 = call(model, args, ratio).lengths
            print(f"| {count} | {ratio} | {f0 / 1e9:.2f} GFLOP | {f1 / 1e9:.2f} GFLOP | {100 * (1 - f1 / f0):.1f}% | "
                  f"{t0:.3f} s | {t1:.3f} s | {100 * (1 - t1 / t0):.1f}% | {statistics.mean(lengths0):.0f} -> "
                  f"{statistics.mean(lengths1):.0f} |")


def bench_gpu() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("bench_memory_v2v.py gpu needs a CUDA GPU")
    device, dtype = torch.device("cuda"), torch.bfloat16
    with torch.device("meta"):
        model = ReCamMasterTransformer(**config_for_release())
    model = model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02, generator=generator)
        model.rope = type(model.rope)(128, (1, 2, 2), 1024).to(device)
    model = model.to(dtype).eval()
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, DiT "
          f"{sum(p.numel() for p in model.parameters()) / 1e9:.3f}B parameters")
    print("| memory videos | seconds per turn (50 steps, CFG) | peak GPU memory | tokens target / user / memory |")
    print("|---|---|---|---|")
    shape = (1, 16, 21, 60, 104)
    for count in (0, 3, 6):
        gen = torch.Generator(device=device).manual_seed(1)
        x = torch.randn(*shape, generator=gen, device=device, dtype=dtype)
        user = torch.randn(*shape, generator=gen, device=device, dtype=dtype)
        text = torch.randn(2, 512, 4096, generator=gen, device=device, dtype=dtype)
        cams = torch.zeros(21, 12, device=device)
        memory = [MF.MemoryVideo(torch.randn(*shape, generator=gen, device=device, dtype=dtype), cams,
                                 "1x4x4" if i < 3 else "1x8x8") for i in range(count)]
        report = MF.CallReport()
        MF.denoise(model, torch.cat([x, x]), torch.tensor([999.0, 999.0], device=device), text, cams, user, memory,
                   report=report)  # warm-up, token counts
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for step in range(50):
            t = torch.tensor([1000.0 - 20 * step] * 2, device=device)
            MF.denoise(model, torch.cat([x, x]), t, text, cams, user, memory)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2 ** 30
        tok = report.tokens
        print(f"| {count} | {seconds:.1f} s | {peak:.1f} GiB | {tok['target']} / {tok['user']} / {tok['memory']} |")


if __name__ == "__main__":
    import sys
    bench_gpu() if sys.argv[1:] == ["gpu"] else main()
