"""Memory-V2V long-video editing on LucyEdit: cost of one DiT call with memory; prints markdown.

    python benchmarks/bench_memory_v2v_edit.py      # CPU, under a minute
    python benchmarks/bench_memory_v2v_edit.py gpu  # CUDA: LucyEdit's DiT at the real size, random weights

1. **Real size, counted** (LucyEdit = Wan2.2-TI2V-5B: width 3072 = 24 heads x 128, FFN 14336,
   30 blocks, 512 umT5 tokens of 4096; 480x832, 81 frames -> latent 21 x 30 x 52; 1x2x2
   patches -> 8190 target tokens). One DiT call (one CFG branch, batch 1) with 1, 3 and 6
   earlier segments in memory, each 21 latent frames:

   - ``no memory``: LucyEdit's own call (target tokens only);
   - ``naive``: every memory segment at full 1x2x2, no merging;
   - ``Memory-V2V``: dynamic tokenization (in retrieval order the best 3, prev included, at
     1x4x4, the rest at 1x8x8) and adaptive token merging before blocks 10 and 20 at ratio 0.5.

   The token layout is the real bookkeeping of :mod:`memory_forward`: :func:`edit_tokens`
   (with edge padding: 1x4x4 = 8 x 13 = 104 tokens per frame, 1x8x8 = 4 x 7 = 28) on a
   DiT of the real channel layout (96 in, 48 out) but width 6, so it runs in a moment;
   then :func:`choose_frames` and :func:`merge` at blocks 10 and 20. **Scores are all equal**
   here (no real weights, and the count does not depend on them): ``choose_frames`` then
   takes frames by index, i.e. the earliest memory frames in the sequence (prev's first),
   while they hold at most half of the conditioning tokens. Which frames merge would differ
   with real scores; the number of merged tokens hardly does (it depends only on the mix of
   frame sizes taken).

   FLOPs are analytic (2 FLOPs per multiply-add), per block over a sequence of ``N`` tokens
   (``D`` width, ``F`` FFN width, ``L`` = 512 text tokens)::

       self-attention q, k, v, o projections   4 N D^2
       self-attention QK^T and AV              2 N^2 D
       cross-attention q, o projections        2 N D^2
       cross-attention k, v of the text        2 L D^2
       cross-attention QK^T and AV             2 N L D
       FFN (two layers)                        2 N D F

   plus, once per call: the patch embedding (96 x k x k x D per token, k = 2 / 4 / 8), the
   text embedding (L (4096 D + D^2)), the per-token time embedding (N (256 D + D^2 + 6 D^2):
   Wan2.2's modulation is per token; recomputed for the merged sequence after each merge),
   the responsiveness at each merge block (q of the target tokens, k of the conditioning
   tokens: (N_target + N_cond) D^2, and N_target x frames x D scores) and the output head
   (N_target x D x 192). Softmax, norms and elementwise work are left out. The formula is
   checked against ``torch.utils.flop_counter`` on a real smoke-size call (section 2).
2. **Smoke size on the CPU**: a 30-block Wan2.2-layout DiT (96 in / 48 out, width 128 = 2
   heads x 64, FFN 512, random weights) on segments of 4 latent frames of 16 x 16; one
   :func:`denoise_edit` call (batch 2: the two CFG branches) with 0, 1, 3 and 6 memory
   segments: tokens, FLOPs counted by torch vs the formula above, and wall time (the best of
   3 runs).
3. **Real size on a GPU** (``gpu``): LucyEdit's DiT at the released size (random weights, bf16)
   on a 480x832, 81-frame segment: seconds per :func:`denoise_edit` call with both CFG branches
   (batch 2) with 0, 1, 3 and 6 earlier segments, the 50-step segment that makes (50 calls),
   and peak GPU memory. The VAE and umT5 are not included (they run once per segment).
   ``--device cpu --layers 2 --frames 2`` runs the same path at the real width on the CPU (a
   check that it runs; its seconds are not a result).
"""
from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.utils.flop_counter as flop_counter
from diffusers import WanTransformer3DModel
from torch.utils.flop_counter import FlopCounterMode

from consistent_video.memory_v2v_nodes import memory_forward as MF

LUCY = {"dim": 3072, "heads": 24, "ffn": 14336, "layers": 30, "text": 512, "text_dim": 4096, "freq": 256,
        "in": 96, "out": 48}
REAL_LATENT = (21, 30, 52)  # 81 frames at 480x832 through the Wan2.2 VAE (4 x 16 x 16)
LATENT_CHANNELS = 48
MEMORY_COUNTS = (1, 3, 6)
SMOKE = {"dim": 128, "heads": 2, "ffn": 512, "layers": 30, "text": 32, "text_dim": 64, "freq": 256,
         "in": 96, "out": 48}
SMOKE_LATENT = (4, 16, 16)

_CPU_SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
if _CPU_SDPA not in flop_counter.flop_registry:
    @flop_counter.register_flop_formula(_CPU_SDPA)
    def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


# --------------------------------------------------------------------------- analytic FLOPs
def block_flops(n: int, cfg: dict) -> int:
    """One Wan block over ``n`` tokens (module doc), FLOPs = 2 x multiply-adds."""
    d, f, text = cfg["dim"], cfg["ffn"], cfg["text"]
    macs = (4 * n * d * d  # self-attention q, k, v, o
            + 2 * n * n * d  # QK^T, AV
            + 2 * n * d * d + 2 * text * d * d + 2 * n * text * d  # cross-attention
            + 2 * n * d * f)  # FFN
    return 2 * macs


def call_flops(plan: dict, cfg: dict) -> dict:
    """FLOPs of one call (batch 1) from its token plan: ``lengths`` per block, ``embedded``
    tokens per patch size, ``target``, and the ``merges`` (sequence length, conditioning
    tokens and frames before each)."""
    d = cfg["dim"]
    blocks = sum(block_flops(n, cfg) for n in plan["lengths"])
    time_rows = plan["lengths"][0] + sum(m["after"] for m in plan["merges"])
    extras = 2 * (sum(count * cfg["in"] * k * k * d for k, count in plan["embedded"].items())
                  + cfg["text"] * (cfg["text_dim"] * d + d * d)
                  + time_rows * (cfg["freq"] * d + d * d + 6 * d * d)
                  + sum((plan["target"] + m["cond"]) * d * d + plan["target"] * m["frames"] * d for m in plan["merges"])
                  + plan["target"] * d * cfg["out"] * 4)
    return {"blocks": blocks, "total": blocks + extras}


# --------------------------------------------------------------------------- token bookkeeping
def layout_model(cfg: dict, width: int = 6) -> WanTransformer3DModel:
    """A DiT with ``cfg``'s channel layout and block count but width ``width``: only its patch
    embedding runs (for :func:`edit_tokens`)."""
    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=1, attention_head_dim=width,
                                 in_channels=cfg["in"], out_channels=cfg["out"], text_dim=8, freq_dim=8,
                                 ffn_dim=8, num_layers=cfg["layers"]).eval()


def tokenizers(count: int, naive: bool) -> list[str]:
    return ["1x2x2" if naive else ("1x4x4" if i < 3 else "1x8x8") for i in range(count)]


def segments(count: int, naive: bool, latent: tuple, gen=None) -> list[MF.MemorySegment]:
    frames, h, w = latent
    make = (lambda: torch.zeros(LATENT_CHANNELS, frames, h, w)) if gen is None else (
        lambda: torch.randn(LATENT_CHANNELS, frames, h, w, generator=gen))
    return [MF.MemorySegment(make(), make(), kind, "prev" if i == 0 else "memory")
            for i, kind in enumerate(tokenizers(count, naive))]


@torch.no_grad()
def plan(model, count: int, naive: bool, latent: tuple, merge_blocks=MF.DEFAULT_MERGE_BLOCKS,
         ratio: float = MF.DEFAULT_MERGE_RATIO) -> dict:
    """The token plan of one call: :func:`edit_tokens`, then with memory and merging on,
    :func:`choose_frames` (all scores equal: by index) and :func:`merge` before ``merge_blocks``."""
    frames, h, w = latent
    zeros = torch.zeros(1, LATENT_CHANNELS, frames, h, w)
    memory = segments(count, naive, latent)
    tokens = MF.edit_tokens(model, zeros, zeros, memory, torch.tensor([500.0]))
    embedded = {}
    for f in tokens.frames:
        k = 2 * MF.SCALES[memory[f.video].tokenizer] if f.role != "target" else 2
        embedded[k] = embedded.get(k, 0) + f.length
    result = {"roles": {role: tokens.count(role) for role in MF.EDIT_ROLES}, "embedded": embedded,
              "target": tokens.count("target"), "merges": [], "lengths": []}
    for index in range(len(model.blocks)):
        if index in merge_blocks and memory and ratio > 0 and not naive:
            cond = [i for i, f in enumerate(tokens.frames) if f.role != "target"]
            sizes = [tokens.frames[i].length for i in cond]
            picked = MF.choose_frames(torch.ones(len(cond)), ratio, sizes)
            before = {"cond": sum(sizes), "frames": len(cond)}
            tokens = MF.merge(tokens, [cond[j] for j in picked])
            result["merges"].append({**before, "block": index, "merged": len(picked), "after": tokens.length})
        result["lengths"].append(tokens.length)
    return result


def as_run(planned: dict, report: MF.CallReport) -> dict:
    """``planned`` with the lengths and merges a real call reported (its scores are not all
    equal, so other frames merge): the formula then describes exactly that call."""
    lengths, target = list(report.lengths), report.tokens["target"]
    merges = [{"cond": (lengths[m["block"] - 1] if m["block"] else sum(report.tokens.values())) - target,
               "frames": len(m["scores"]), "merged": len(m["merged"]), "after": lengths[m["block"]],
               "block": m["block"]} for m in report.merges]
    return {**planned, "lengths": lengths, "merges": merges}


def fewer(new: float, old: float) -> str:
    return f"{100 * (1 - new / old):.1f}%"


def real_size_table() -> None:
    model = layout_model(LUCY)
    base = plan(model, 0, False, REAL_LATENT)
    base_flops = call_flops(base, LUCY)["total"]
    print(f"\nLucyEdit size (Wan2.2-TI2V-5B), latent {REAL_LATENT[0]} x {REAL_LATENT[1]} x {REAL_LATENT[2]}, one call, "
          f"batch 1 (one CFG branch); no memory: {base['target']} tokens, {base_flops / 1e12:.1f} TFLOP\n")
    print("| memory segments | variant | memory tokens (prev + others) | sequence in blocks 0-9 / 10-19 / 20-29 | "
          "frames merged at 10 / 20 | TFLOP per call | x no memory | fewer than naive |")
    print("|---|---|---|---|---|---|---|---|")
    for count in MEMORY_COUNTS:
        naive = plan(model, count, True, REAL_LATENT)
        naive_flops = call_flops(naive, LUCY)["total"]
        rows = [("naive 1x2x2, no merging", naive),
                ("dynamic tokenization only", plan(model, count, False, REAL_LATENT, ratio=0.0)),
                ("Memory-V2V (dynamic + ATM 10/20, 0.5)", plan(model, count, False, REAL_LATENT))]
        for name, p in rows:
            flops = call_flops(p, LUCY)["total"]
            roles = p["roles"]
            lengths = p["lengths"]
            merged = " / ".join(str(m["merged"]) for m in p["merges"]) or "-"
            print(f"| {count} | {name} | {roles['prev'] + roles['memory']} ({roles['prev']} + {roles['memory']}) | "
                  f"{lengths[0]} / {lengths[10]} / {lengths[20]} | {merged} | {flops / 1e12:.1f} | "
                  f"{flops / base_flops:.2f} | {fewer(flops, naive_flops) if p is not naive else '-'} |")


# --------------------------------------------------------------------------- smoke size on the CPU
def smoke_model(cfg: dict) -> WanTransformer3DModel:
    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=cfg["heads"],
                                  attention_head_dim=cfg["dim"] // cfg["heads"], in_channels=cfg["in"],
                                  out_channels=cfg["out"], text_dim=cfg["text_dim"], freq_dim=cfg["freq"],
                                  ffn_dim=cfg["ffn"], num_layers=cfg["layers"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name and "scale_shift" not in name and p.ndim > 1:
                p.normal_(0, p[0].numel() ** -0.5)
    return model.eval()


def smoke_table() -> None:
    cfg = SMOKE
    model = smoke_model(cfg)
    layout = layout_model(cfg)
    frames, h, w = SMOKE_LATENT
    gen = torch.Generator().manual_seed(1)
    target = torch.randn(2, LATENT_CHANNELS, frames, h, w, generator=gen)
    source = torch.randn(1, LATENT_CHANNELS, frames, h, w, generator=gen)
    text = torch.randn(2, cfg["text"], cfg["text_dim"], generator=gen)
    n_target = frames * (h // 2) * (w // 2)
    timestep = torch.full((2, n_target), 500.0)  # LucyEditPipeline's expand_timesteps form
    print(f"\nSmoke size on the CPU: 30 blocks, width {cfg['dim']}, FFN {cfg['ffn']}, segments of {frames} latent "
          f"frames of {h} x {w} ({n_target} target tokens), batch 2 (CFG), random weights\n")
    print("| memory segments | tokens target / prev / others | FLOPs counted by torch | formula | "
          "mean sequence length | time per call (best of 3) | x no memory |")
    print("|---|---|---|---|---|---|---|")
    with torch.no_grad():  # warm-up (allocator, thread pool)
        MF.denoise_edit(model, target, timestep, text, source)
    base_time = None
    for count in (0,) + MEMORY_COUNTS:
        memory = segments(count, False, SMOKE_LATENT, gen)
        report = MF.CallReport()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            MF.denoise_edit(model, target, timestep, text, source, memory, report=report)
        counted = counter.get_total_flops()
        formula = 2 * call_flops(as_run(plan(layout, count, False, SMOKE_LATENT), report), cfg)["total"]  # batch 2
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            with torch.no_grad():
                MF.denoise_edit(model, target, timestep, text, source, memory)
            times.append(time.perf_counter() - t0)
        seconds = min(times)
        base_time = base_time or seconds
        tok = report.tokens
        print(f"| {count} | {tok['target']} / {tok['prev']} / {tok['memory']} | {counted / 1e9:.2f} GFLOP | "
              f"{formula / 1e9:.2f} GFLOP | {sum(report.lengths) / len(report.lengths):.0f} | {seconds * 1e3:.0f} ms | "
              f"{seconds / base_time:.2f} |")


def bench_gpu(args) -> None:
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("bench_memory_v2v_edit.py gpu needs a CUDA GPU (or --device cpu for a slow check)")
    cfg = {**LUCY, "layers": args.layers}
    dtype = torch.bfloat16 if cuda else torch.float32
    with torch.device("meta"):
        model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=cfg["heads"],
                                      attention_head_dim=cfg["dim"] // cfg["heads"], in_channels=cfg["in"],
                                      out_channels=cfg["out"], text_dim=cfg["text_dim"], freq_dim=cfg["freq"],
                                      ffn_dim=cfg["ffn"], num_layers=cfg["layers"], rope_max_seq_len=1024)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    for p in model.parameters():
        p.normal_(0, 0.02, generator=gen)
    with torch.device(device):  # the RoPE tables are buffers (to_empty left them uninitialised)
        model.rope = type(model.rope)(cfg["dim"] // cfg["heads"], (1, 2, 2), 1024)
    model = model.to(dtype).eval()
    latent = (args.frames,) + REAL_LATENT[1:]
    frames, h, w = latent
    print(f"{torch.cuda.get_device_name() if cuda else 'CPU'}, torch {torch.__version__}, {dtype}; LucyEdit DiT "
          f"{sum(p.numel() for p in model.parameters()) / 1e9:.3f}B parameters ({cfg['layers']} blocks), random "
          f"weights; segment latent {frames} x {h} x {w}, batch 2 (CFG)\n")
    print("| earlier segments | tokens target / prev / others | seconds per call | 50-step segment (s) "
          "| peak memory (GiB) |")
    print("|---|---|---|---|---|")
    target = torch.randn(2, LATENT_CHANNELS, frames, h, w, generator=gen, device=device, dtype=dtype)
    source = torch.randn(1, LATENT_CHANNELS, frames, h, w, generator=gen, device=device, dtype=dtype)
    text = torch.randn(2, cfg["text"], cfg["text_dim"], generator=gen, device=device, dtype=dtype)
    timestep = torch.full((2, frames * (h // 2) * (w // 2)), 500.0, device=device)
    for count in (0,) + MEMORY_COUNTS:
        memory = [MF.MemorySegment(m.latent.to(device, dtype), m.source.to(device, dtype), m.tokenizer, m.role)
                  for m in segments(count, False, latent, torch.Generator().manual_seed(count))]
        report = MF.CallReport()
        MF.denoise_edit(model, target, timestep, text, source, memory, report=report)  # warm-up, token counts
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            MF.denoise_edit(model, target, timestep, text, source, memory)
        if cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - t0) / args.repeats
        peak = f"{torch.cuda.max_memory_allocated() / 2 ** 30:.1f}" if cuda else "- (CPU)"
        tok = report.tokens
        print(f"| {count} | {tok['target']} / {tok['prev']} / {tok['memory']} | {seconds:.2f} | {50 * seconds:.0f} "
              f"| {peak} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--device", default="cuda", help="gpu: where the real-size DiT runs")
    parser.add_argument("--layers", type=int, default=LUCY["layers"], help="gpu: DiT blocks (30 = the release)")
    parser.add_argument("--frames", type=int, default=REAL_LATENT[0], help="gpu: latent frames per segment (21)")
    parser.add_argument("--repeats", type=int, default=5, help="gpu: timed calls per row")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.mode == "gpu":
        bench_gpu(args)
        return
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    real_size_table()
    smoke_table()


if __name__ == "__main__":
    main()
