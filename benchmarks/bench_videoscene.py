"""VideoScene refine benchmark: the one-step pass vs a 50-step run of the same network; prints markdown rows.

    python benchmarks/bench_videoscene.py        # CPU, smoke-size network (the tests' smoke weights)
    python benchmarks/bench_videoscene.py gpu    # CUDA: the released size with random weights, bf16

Both rows use :mod:`videoscene_nodes.pipeline` on the same input video and seed:

- **one step** (:func:`pipeline.refine`): VAE-encode the render and its first / last frames,
  one transformer call at the fixed timestep (459), decode.
- **50 steps**: the same encode, then what the release's unused multi-step ``__call__`` runs:
  50 DDIM steps over the whole trailing schedule (999 down) with classifier-free guidance 6
  (a batch of 2 per step, an all-zero embedding as the unconditional prompt), then decode. Only
  the cost is compared: 100 transformer evaluations against 1.

``gpu``: 49 frames at 480x720, CogVideoX-5B-I2V's transformer (42 layers, 48 heads of 64) and
VAE with random weights in bf16, VAE tiling on (as the node's default); seconds and peak GPU
memory for each, and their ratio.
"""
from __future__ import annotations

import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

from consistent_video.videoscene_nodes import family as fam
from consistent_video.videoscene_nodes import pipeline as P

STEPS, GUIDANCE = 50, 6.0
RELEASE_TRANSFORMER = {  # CogVideoX-5B I2V (the interpolation fine-tune keeps it)
    "num_attention_heads": 48, "attention_head_dim": 64, "in_channels": 32, "out_channels": 16, "time_embed_dim": 512,
    "text_embed_dim": 4096, "num_layers": 42, "sample_width": 90, "sample_height": 60, "sample_frames": 49,
    "patch_size": 2, "max_text_seq_length": 226, "use_rotary_positional_embeddings": True,
    "use_learned_positional_embeddings": True, "spatial_interpolation_scale": 1.875,
}
RELEASE_VAE = {"block_out_channels": [128, 256, 256, 512], "layers_per_block": 3, "latent_channels": 16,
               "scaling_factor": 0.7}


def multi_step(transformer, vae, scheduler, prompt, video, first, last, seed: int) -> torch.Tensor:
    """The 50-step comparison run (module doc); ``[F, 3, H, W]``."""
    shape = P.geometry(transformer, vae)
    generator = torch.Generator().manual_seed(seed)
    device, dtype = transformer.device, transformer.dtype
    z0 = P.encode(vae, video, generator)
    condition = P.condition_latents(vae, first, last, z0.shape[1], generator).to(device, dtype)
    scheduler.set_timesteps(STEPS, device=device)
    timesteps = scheduler.timesteps.tolist()
    noise = torch.randn(z0.shape, generator=generator)
    latents = scheduler.add_noise(z0.float().cpu(), noise, torch.tensor([timesteps[0]])).to(device)
    rotary = P.rotary_embedding(transformer, shape.height, shape.width, z0.shape[1], device)
    text = torch.cat([torch.zeros_like(prompt), prompt]).to(device, dtype)
    for t in timesteps:
        x = torch.cat([latents, latents]).to(dtype)
        v = transformer(hidden_states=torch.cat([x, torch.cat([condition, condition])], 2), encoder_hidden_states=text,
                        timestep=torch.tensor([t, t], device=device), image_rotary_emb=rotary, return_dict=False)[0]
        uncond, cond = v.float().chunk(2)
        latents = scheduler.step(uncond + GUIDANCE * (cond - uncond), t, latents, return_dict=False)[0]
    return P.decode(vae, latents)


def timed(fn, device: torch.device) -> tuple[float, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")
    return time.perf_counter() - start, peak


def run(transformer, vae, scheduler, prompt, device: torch.device, label: str) -> None:
    shape = P.geometry(transformer, vae)
    gen = torch.Generator().manual_seed(0)
    video = torch.rand(shape.frames, 3, shape.height, shape.width, generator=gen) * 2 - 1
    args = (transformer, vae, scheduler, prompt, video, video[0], video[-1])
    with torch.inference_mode():
        P.refine(*args, seed=0)  # warm-up
        one, one_peak = timed(lambda: P.refine(*args, seed=0), device)
        many, many_peak = timed(lambda: multi_step(*args, seed=0), device)
    memory = "" if device.type != "cuda" else f" | {one_peak:.1f} GiB | {many_peak:.1f} GiB"
    print(f"| {label} | {shape.frames} x {shape.width}x{shape.height} | {one:.2f} s | {many:.1f} s | "
          f"**{many / one:.1f}x**{memory} |")


def cpu() -> None:
    with tempfile.TemporaryDirectory() as folder:
        fam.write_smoke_videoscene(Path(folder))
        handle = fam.load_videoscene(Path(folder), torch.device("cpu"), torch.float32)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| network | frames | one step | 50 steps, CFG 6 | 50 steps / one step |")
    print("|---|---|---|---|---|")
    transformer = handle.modules["transformer"]
    run(transformer, handle.modules["vae"], handle.extra["scheduler"], handle.extra["prompt_embeds"],
        torch.device("cpu"), f"smoke ({sum(p.numel() for p in transformer.parameters()) / 1e6:.2f}M)")


def gpu() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("bench_videoscene.py gpu needs a CUDA GPU")
    device, dtype = torch.device("cuda"), torch.bfloat16
    torch.manual_seed(0)
    with device:
        transformer = CogVideoXTransformer3DModel(**RELEASE_TRANSFORMER).to(dtype).eval()
        vae = AutoencoderKLCogVideoX(**RELEASE_VAE).to(dtype).eval()
    vae.enable_tiling()
    prompt = torch.randn(1, 226, 4096) * 0.1
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}; transformer "
          f"{sum(p.numel() for p in transformer.parameters()) / 1e9:.2f}B parameters, bf16")
    print("| network | frames | one step | 50 steps, CFG 6 | 50 steps / one step | peak, one step | peak, 50 steps |")
    print("|---|---|---|---|---|---|---|")
    run(transformer, vae, P.make_scheduler(), prompt, device, "CogVideoX-5B I2V size, random weights")


if __name__ == "__main__":
    gpu() if sys.argv[1:] == ["gpu"] else cpu()
