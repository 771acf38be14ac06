"""Memory-V2V cost benchmarks; prints markdown rows for RESULTS.md.

    python benchmarks/bench_memory_v2v.py        # CPU: tokens, FLOPs and time; real-size FLOPs (meta)
    python benchmarks/bench_memory_v2v.py gpu    # CUDA: real-size DiT, random weights, seconds per turn

All rows call the same :func:`memory_forward.denoise` used by the nodes, with a CFG batch
of 2, a target and user video of the same length, and 3 or 6 memory videos (the top 3 at
1x4x4, the rest at 1x8x8, Memory-V2V's rule); one run each, same inputs in every row.

1. **Tokens** (the test-size smoke network, 8 latent frames of 16 x 16): conditioning tokens
   (user + memory) with dynamic tokenization vs naive full-resolution concatenation (every
   memory video at 1x2x2).
2. **Merging on the CPU**: FLOPs (``torch.utils.flop_counter``: every matmul, conv and
   attention; the CPU attention kernel's formula is registered below, torch has none) and
   wall time with adaptive token merging at blocks 10 and 20 vs without, at the default
   ratio (the lowest-responsiveness frames holding half of the conditioning tokens, merged
   2x2) and at 0.75. Two smoke-size networks, 30 blocks each, random weights:

   - ``proportioned``: head size 128 and FFN ratio 6 like Wan2.1-1.3B (width 128, 1 head,
     FFN 768) on 8 latent frames of 32 x 32, so attention is ~83% of the FLOPs as at the
     real size (82-89%, see 3). Merging saves attention quadratically, so this is the
     configuration whose savings carry over.
   - ``test size``: the network of the tests (width 256, 2 heads, FFN 512) on 16 x 16
     latents, where projections are half of the FLOPs: merging saves less there.
3. **Real size, counted**: the DiT at Wan2.1-T2V-1.3B's size at 480x832, 81 frames (21
   latent frames of 60 x 104), built on the ``meta`` device so FLOPs are counted from shapes
   without computing anything; responsiveness scores are random there (values do not exist
   on ``meta``), which decides *which* frames merge but not how many tokens. Naive
   concatenation vs dynamic tokenization vs dynamic tokenization + merging.

``gpu``: the DiT at Wan2.1-T2V-1.3B's size (random weights, bf16) for one turn at 480x832,
81 frames (21 latent frames), 50 steps with CFG, with 0, 3 and 6 memory videos; seconds per
turn (DiT only: the VAE and text encoder run once per turn) and peak GPU memory.
"""
from __future__ import annotations

import platform
import time
from contextlib import contextmanager

import torch
import torch.utils.flop_counter as flop_counter
from torch.utils.flop_counter import FlopCounterMode

from consistent_video.memory_v2v_nodes import memory_forward as MF
from consistent_video.memory_v2v_nodes.model import ReCamMasterTransformer, config_for_release

CHANNELS, TEXT = 16, 64
NETWORKS = {  # name: (width, heads, ffn, latent frames, latent side)
    "proportioned": (128, 1, 768, 8, 32),
    "test size": (256, 2, 512, 8, 16),
}
REAL_LATENT = (21, 60, 104)  # 81 frames at 480x832 through the Wan VAE (4x8x8)

_CPU_SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
if _CPU_SDPA not in flop_counter.flop_registry:
    @flop_counter.register_flop_formula(_CPU_SDPA)
    def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def build(width: int, heads: int, ffn: int) -> ReCamMasterTransformer:
    config = config_for_release()
    config.update(num_attention_heads=heads, attention_head_dim=width // heads, ffn_dim=ffn, text_dim=TEXT)
    torch.manual_seed(0)
    model = ReCamMasterTransformer(**config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name and "scale_shift" not in name and p.ndim > 1:
                p.normal_(0, p[0].numel() ** -0.5)
    return model.eval()


def tokenizers(memories: int, naive: bool) -> list[str]:
    return ["1x2x2" if naive else ("1x4x4" if i < 3 else "1x8x8") for i in range(memories)]


def inputs(memories: int, naive: bool, frames: int, side: int):
    gen = torch.Generator().manual_seed(1)
    target = torch.randn(2, CHANNELS, frames, side, side, generator=gen)
    user = torch.randn(1, CHANNELS, frames, side, side, generator=gen)
    text = torch.randn(2, 32, TEXT, generator=gen)
    cams = torch.randn(frames, 12, generator=gen) * 0.1
    memory = [MF.MemoryVideo(torch.randn(1, CHANNELS, frames, side, side, generator=gen),
                             torch.randn(frames, 12, generator=gen) * 0.1, kind)
              for kind in tokenizers(memories, naive)]
    return target, torch.tensor([500.0, 500.0]), text, cams, user, memory


def call(model, args, ratio: float) -> MF.CallReport:
    report = MF.CallReport()
    MF.denoise(model, *args, merge_ratio=ratio, report=report)
    return report


def measure(model, args, ratio: float) -> tuple[int, float, float, MF.CallReport]:
    """FLOPs of one call and the share of them in attention, then the wall time of another
    (one run each)."""
    with FlopCounterMode(display=False) as counter:
        report = call(model, args, ratio)
    t0 = time.perf_counter()
    call(model, args, ratio)
    seconds = time.perf_counter() - t0
    flops = counter.get_total_flops()
    return flops, counter.get_flop_counts()["Global"].get(_CPU_SDPA, 0) / flops, seconds, report


def percent_fewer(new: float, old: float) -> str:
    return f"{100 * (1 - new / old):.1f}%"


def token_table() -> None:
    width, heads, ffn, frames, side = NETWORKS["test size"]
    model = build(width, heads, ffn)
    print("\n| memory videos | conditioning tokens, naive 1x2x2 | with dynamic tokenization | fewer |")
    print("|---|---|---|---|")
    for count in (3, 6):
        naive = call(model, inputs(count, True, frames, side), 0.0).tokens
        dynamic = call(model, inputs(count, False, frames, side), 0.0).tokens
        n, d = naive["user"] + naive["memory"], dynamic["user"] + dynamic["memory"]
        print(f"| {count} | {n} (memory {naive['memory']}) | {d} (memory {dynamic['memory']}) | "
              f"{percent_fewer(d, n)} (memory tokens: {percent_fewer(dynamic['memory'], naive['memory'])}) |")


def merge_table() -> None:
    print("\n| network | memory videos | merge ratio | FLOPs without merging (attention share) | with merging | "
          "fewer FLOPs | time without | time with | less time | mean sequence length |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, (width, heads, ffn, frames, side) in NETWORKS.items():
        model = build(width, heads, ffn)
        for count in (3, 6):
            args = inputs(count, False, frames, side)
            f0, share, t0, r0 = measure(model, args, 0.0)
            for ratio in (MF.DEFAULT_MERGE_RATIO, 0.75):
                f1, _, t1, r1 = measure(model, args, ratio)
                print(f"| {name} | {count} | {ratio} | {f0 / 1e9:.1f} GFLOP ({100 * share:.0f}%) | "
                      f"{f1 / 1e9:.1f} GFLOP | {percent_fewer(f1, f0)} | {t0:.2f} s | {t1:.2f} s | "
                      f"{percent_fewer(t1, t0)} | {sum(r0.lengths) / len(r0.lengths):.0f} -> "
                      f"{sum(r1.lengths) / len(r1.lengths):.0f} |")


@contextmanager
def random_scores(seed: int = 0):
    """Responsiveness on ``meta`` has no values: keep its FLOPs, return seeded random scores."""
    original, gen = MF.frame_scores, torch.Generator().manual_seed(seed)

    def scores(queries, keys, spans):
        original(queries, keys, spans)
        return torch.rand(len(spans), generator=gen)

    MF.frame_scores = scores
    try:
        yield
    finally:
        MF.frame_scores = original


def real_size_table() -> None:
    meta = torch.device("meta")
    with meta:
        model = ReCamMasterTransformer(**config_for_release()).eval()
    frames, h, w = REAL_LATENT
    latent = torch.empty(1, CHANNELS, frames, h, w, device=meta)
    cams = torch.zeros(frames, 12, device=meta)
    text = torch.empty(2, 512, 4096, device=meta)

    def count(memories: int, naive: bool, ratio: float) -> tuple[int, MF.CallReport]:
        memory = [MF.MemoryVideo(latent, cams, kind) for kind in tokenizers(memories, naive)]
        report = MF.CallReport()
        with random_scores(), FlopCounterMode(display=False) as counter:
            MF.denoise(model, latent.expand(2, -1, -1, -1, -1), torch.tensor([500.0, 500.0], device=meta), text,
                       cams, latent, memory, merge_ratio=ratio, report=report)
        return counter.get_total_flops(), report

    print("\n| memory videos | naive 1x2x2 | dynamic tokenization | + merging (default) | dynamic vs naive | "
          "merging vs dynamic | dynamic + merging vs naive | tokens naive -> dynamic (target + user + memory) |")
    print("|---|---|---|---|---|---|---|---|")
    for memories in (0, 3, 6):
        naive, rn = count(memories, True, 0.0)
        dynamic, rd = count(memories, False, 0.0)
        merged, _ = count(memories, False, MF.DEFAULT_MERGE_RATIO)
        print(f"| {memories} | {naive / 1e12:.0f} TFLOP | {dynamic / 1e12:.0f} TFLOP | {merged / 1e12:.0f} TFLOP | "
              f"{percent_fewer(dynamic, naive)} | {percent_fewer(merged, dynamic)} | {percent_fewer(merged, naive)} | "
              f"{sum(rn.tokens.values())} -> {sum(rd.tokens.values())} |")


def main() -> None:
    torch.set_grad_enabled(False)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    token_table()
    merge_table()
    real_size_table()


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
