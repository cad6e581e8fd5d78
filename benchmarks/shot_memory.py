"""Peak VRAM and time of an M2V shot at 832x480, 81 frames, M memory frames: experts resident vs block swap.

Run on a GPU from the repo root:  python -m benchmarks.shot_memory --json out.json --markdown out.md
Two random A14B i2v experts (bf16, then fp8) run a few denoising steps of the real sampling loop
(`storymem_core.sampling.denoise`: CFG, expert switch at the boundary) in these modes:
  resident[-fp8]            both experts on the GPU (the fastest possible, no switch cost);
                            resident-fp8-compiled adds `WanDiT.compile_blocks()`
  swap[-fp8][-compiled]     `BlockSwapDiT` experts under a VRAM cap with `ExpertPair(offload=True)`, so never
                            both on the GPU; -compiled adds `WanDiT.compile_blocks()`
A whole shot (40 steps) is extrapolated as 40 x the measured mean step time, plus a tiled VAE decode of the
shot (random-weight Wan2.1 VAE, bf16 and fp32, whole and in spatial tiles), measured separately.
"""

from __future__ import annotations

import argparse
import gc
import time
from contextlib import ExitStack
from pathlib import Path

import torch

from benchmarks.dit_step import (
    FRAMES,
    GIB,
    HEIGHT,
    WIDTH,
    CompiledBlocks,
    build_random_dit,
    dit_inputs,
    latent_frames,
    synchronize,
    timed,
    tokens,
)
from benchmarks.results import keep, save_text
from storymem_core.offload import BlockSwapDiT
from storymem_core.sampling import ExpertPair, SamplerSettings, denoise, seeded_noise
from storymem_core.shot import ShotMemory, generate_memory_shot
from storymem_core.wan.dit import DiTConfig
from storymem_core.wan.fp8 import quantize_dit_to_fp8

SHOT_STEPS = 40


def expert(config: DiTConfig, device: torch.device, seed: int, fp8: bool):
    model = build_random_dit(config, device, seed)
    return quantize_dit_to_fp8(model) if fp8 else model


def host_to_device_gbps(device: torch.device, megabytes: int = 1024) -> float:
    host = torch.randn(megabytes * 2**20 // 4, pin_memory=True)
    target = torch.empty_like(host, device=device)
    target.copy_(host, non_blocking=True)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(5):
        target.copy_(host, non_blocking=True)
    synchronize(device)
    return 5 * host.numel() * 4 / (time.perf_counter() - start) / 1e9


def run_steps(experts: ExpertPair, config: DiTConfig, memory_frames: int, steps: int, batch_cfg: bool,
              device: torch.device) -> dict:
    """Warm up with one step, then time `steps` steps of the real loop (boundary 0.9: the first ones use the high
    expert)."""
    x, _, context, y = dit_inputs(config, memory_frames, 1, device, HEIGHT, WIDTH)
    context_null = torch.randn_like(context[0])
    settings = SamplerSettings(steps=steps, batch_cfg=batch_cfg)
    noise, generator = seeded_noise(tuple(x.shape[1:]), seed=0)
    denoise(experts, noise, generator, context[0], context_null, SamplerSettings(steps=1, batch_cfg=batch_cfg), y[0])
    torch.cuda.reset_peak_memory_stats(device)
    step_times: list[float] = []
    last = [time.perf_counter()]

    def on_step(i: int, total: int) -> None:
        synchronize(device)
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now

    synchronize(device)
    last[0] = time.perf_counter()
    latent = denoise(experts, noise, generator, context[0], context_null, settings, y[0], on_step)
    assert torch.isfinite(latent).all(), "the loop produced non-finite latents"
    return {
        "steps": steps,
        "step_s": step_times,
        "mean_step_s": sum(step_times) / len(step_times),
        "peak_gib": torch.cuda.max_memory_allocated(device) / GIB,
        "reserved_peak_gib": torch.cuda.max_memory_reserved(device) / GIB,
    }


def random_vae(device: torch.device, dtype: torch.dtype):
    """The real-size Wan2.1 VAE with random weights made on `device`."""
    from storymem_core.wan.vae import VAEConfig, WanVAE

    with torch.device("meta"):
        vae = WanVAE(VAEConfig.wan21())
    vae.to_empty(device=device)
    generator = torch.Generator(device).manual_seed(2)
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if name.endswith("gamma"):
                param.normal_(1, 0.02, generator=generator)
            elif param.dim() >= 2:
                param.normal_(0, param[0].numel() ** -0.5, generator=generator)
            else:
                param.normal_(0, 0.02, generator=generator)
    return vae.to(dtype).eval()


def shot_runner(experts: ExpertPair, vae: torch.nn.Module, device: torch.device, memory_count: int,
                size_wh: tuple[int, int] = (WIDTH, HEIGHT), frames: int = FRAMES):
    """A function timing one whole memory shot (encode, sampling, decode) with `settings`: 832x480, 81 frames unless
    told, random memory images and prompts."""
    config = experts.high.config
    generator = torch.Generator().manual_seed(3)
    width, height = size_wh
    memory = torch.randint(0, 256, (memory_count, height, width, 3), dtype=torch.uint8, generator=generator)
    context = torch.randn(config.text_len, config.text_dim, device=device)
    context_null = torch.randn(config.text_len, config.text_dim, device=device)

    def shot(settings: SamplerSettings) -> float:
        synchronize(device)
        begin = time.perf_counter()
        with torch.no_grad():
            video = generate_memory_shot(experts, vae, context, context_null, ShotMemory(memory), frames,
                                         width * height, settings).video
        synchronize(device)
        assert torch.isfinite(video).all(), "the shot has non-finite pixels"
        return time.perf_counter() - begin

    return shot


def vae_decodes(device: torch.device, tiles: list[tuple[int, int] | None]) -> list[dict]:
    """Decode of one shot's latents (21 latent frames -> 81 frames at 832x480), whole and tiled."""
    latent = torch.randn(1, 16, latent_frames(0), HEIGHT // 8, WIDTH // 8, device=device)
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        vae = random_vae(device, dtype)
        for tile in tiles:
            seconds, first, peak = timed(lambda vae=vae, tile=tile: vae.decode(latent, tile), device, repeats=1)
            rows.append({"mode": "vae decode", "dtype": str(dtype).removeprefix("torch."), "tile": tile,
                         "seconds": seconds[0], "first_call_s": first, "peak_gib": peak,
                         "reserved_peak_gib": torch.cuda.max_memory_reserved(device) / GIB})
        del vae
        torch.cuda.empty_cache()
    return rows


MODES = {  # name: (fp8 weights, block swap, compiled blocks)
    "resident": (False, False, False),
    "swap": (False, True, False),
    "swap-compiled": (False, True, True),
    "resident-fp8": (True, False, False),
    "resident-fp8-compiled": (True, False, True),
    "swap-fp8": (True, True, False),
    "swap-fp8-compiled": (True, True, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", type=int, default=10, help="memory frames M")
    parser.add_argument("--steps", type=int, default=3, help="timed denoising steps per mode (40 in a real shot)")
    parser.add_argument("--cap-gib", type=float, default=24.0, help="VRAM cap for the swap modes")
    parser.add_argument("--prefetch", type=int, default=1, help="blocks copied ahead of the one computing")
    parser.add_argument("--batch-cfg", action="store_true", help="CFG as one batch of two (default: two calls)")
    parser.add_argument("--vae-tiles", type=int, nargs="*", default=[0, 32],
                        help="VAE decode tile sides in latent pixels (0 = whole)")
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES),
                        help="run in this order within each weight type (bf16 modes first, then fp8)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()

    device = torch.device("cuda", torch.cuda.current_device())
    total_gib = torch.cuda.get_device_properties(device).total_memory / GIB
    config = DiTConfig.a14b("i2v")
    rows: list[dict] = []

    def record(row: dict) -> None:
        rows.append(row)
        keep(row, rows, args.json)

    record({"mode": "host->device copy", "pinned_gbps": host_to_device_gbps(device),
            "gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "total_gib": total_gib,
            "tokens": tokens(config, args.memory)})
    cfg = "batch of two" if args.batch_cfg else "two calls"
    for fp8 in (False, True):
        modes = [m for m in args.modes if MODES[m][0] == fp8]
        if not modes:
            continue
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        start = time.perf_counter()
        high, low = expert(config, device, 0, fp8), expert(config, device, 1, fp8)
        synchronize(device)
        print(f"built two {'fp8' if fp8 else 'bf16'} experts in {time.perf_counter() - start:.1f} s", flush=True)
        swapped = False
        for mode in modes:
            _, swap, compiled = MODES[mode]
            if swap and not swapped:
                start = time.perf_counter()
                high, low = BlockSwapDiT(high, args.prefetch).to("cpu"), BlockSwapDiT(low, args.prefetch).to("cpu")
                torch.cuda.empty_cache()
                block_bytes = sum(t.numel() * t.element_size() for m in (high, low)
                                  for t in m.dit.blocks.state_dict().values())
                record({"mode": f"pin two {'fp8' if fp8 else 'bf16'} experts' blocks",
                        "seconds": time.perf_counter() - start, "block_gib": block_bytes / GIB,
                        "pinned_gib": torch.cuda.host_memory_stats()["allocated_bytes.current"] / GIB,
                        "gpu_gib_left": torch.cuda.memory_allocated(device) / GIB})
                torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib / total_gib), device)
                swapped = True
            with ExitStack() as compiled_blocks:  # undone after the mode, so the next one runs as named
                if compiled:
                    for model in (high, low):
                        compiled_blocks.enter_context(CompiledBlocks(model.dit if swap else model))
                result = run_steps(ExpertPair(high, low, device, offload=swap), config, args.memory, args.steps,
                                   args.batch_cfg, device)
            record({"mode": mode, "cfg": cfg,
                    **({"cap_gib": args.cap_gib, "prefetch": args.prefetch} if swap else {}), **result})
        if swapped:
            high.to("cpu"), low.to("cpu")
        del high, low
        gc.collect()  # the block hooks close a reference cycle
        torch.cuda.empty_cache()
        torch._C._host_emptyCache()  # give the pinned host memory back before the next pair
        torch._dynamo.reset()

    torch.cuda.set_per_process_memory_fraction(1.0, device)
    torch.cuda.reset_peak_memory_stats(device)
    for row in vae_decodes(device, [(side, side) if side else None for side in args.vae_tiles]):
        record(row)

    lines = [f"| mode | cfg | mean step s | step s | peak GiB (allocated) | peak GiB (reserved) | shot of {SHOT_STEPS} "
             "steps, s (extrapolated) |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        if "mean_step_s" in row:
            steps = ", ".join(f"{s:.2f}" for s in row["step_s"])
            lines.append(f"| {row['mode']} | {row['cfg']} | {row['mean_step_s']:.2f} | {steps} | {row['peak_gib']:.1f} "
                         f"| {row['reserved_peak_gib']:.1f} | {SHOT_STEPS * row['mean_step_s']:.0f} |")
    lines += ["",
              "| VAE decode, 81 frames 832x480 | tile (latent px) | s | peak GiB (allocated) | peak GiB (reserved) |",
              "|---|---|---|---|---|"]
    for row in rows:
        if row["mode"] == "vae decode":
            lines.append(f"| {row['dtype']} | {row['tile'] or 'whole'} | {row['seconds']:.2f} | {row['peak_gib']:.1f} "
                         f"| {row['reserved_peak_gib']:.1f} |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        save_text(table, args.markdown)


if __name__ == "__main__":
    main()
