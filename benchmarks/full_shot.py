"""One complete M2V shot at the real shape, timed end to end through the engine's shot function.

Run on a GPU from the repo root:  python -m benchmarks.full_shot --mode resident-fp8 --json out.json
`storymem_core.shot.generate_memory_shot` with two random A14B i2v experts and a random Wan2.1 VAE:
10 memory images VAE-encoded one by one, the 81-frame shot's conditioning encoded, 40 UniPC steps with
CFG (two calls a step) and the switch to the low-noise expert at the boundary, then the shot decoded.
Text encoding is not included (random 512-token contexts). The modes are those of
`benchmarks.shot_memory`; swap modes run under a VRAM cap (`--cap-gib`). A warm-up shot of one step
runs first (it compiles the blocks in the compiled modes); its time is reported as `first_shot_s`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.dit_step import FRAMES, GIB, HEIGHT, WIDTH, synchronize, tokens
from benchmarks.results import keep
from benchmarks.shot_memory import MODES, SHOT_STEPS, expert, random_vae
from storymem_core.offload import BlockSwapDiT
from storymem_core.sampling import ExpertPair, SamplerSettings
from storymem_core.shot import ShotMemory, generate_memory_shot
from storymem_core.wan.dit import DiTConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="resident-fp8", choices=list(MODES))
    parser.add_argument("--memory", type=int, default=10, help="memory images M")
    parser.add_argument("--steps", type=int, default=SHOT_STEPS)
    parser.add_argument("--cap-gib", type=float, default=24.0, help="VRAM cap for the swap modes")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    device = torch.device("cuda", torch.cuda.current_device())
    total_gib = torch.cuda.get_device_properties(device).total_memory / GIB
    config = DiTConfig.a14b("i2v")
    fp8, swap, compiled = MODES[args.mode]
    row = {"mode": args.mode, "memory": args.memory, "steps": args.steps, "tokens": tokens(config, args.memory),
           "gpu": torch.cuda.get_device_name(device), "torch": torch.__version__}

    def record(**values) -> None:
        row.update(values)
        keep(values, row, args.json)

    start = time.perf_counter()
    high, low = expert(config, device, 0, fp8), expert(config, device, 1, fp8)
    synchronize(device)
    record(build_s=time.perf_counter() - start)
    if swap:
        start = time.perf_counter()
        high, low = BlockSwapDiT(high).to("cpu"), BlockSwapDiT(low).to("cpu")
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib / total_gib), device)
        record(pin_s=time.perf_counter() - start, cap_gib=args.cap_gib)
    if compiled:
        for model in (high, low):
            (model.dit if swap else model).compile_blocks()
    experts = ExpertPair(high, low, device, offload=swap)
    vae = random_vae(device, torch.bfloat16)

    generator = torch.Generator().manual_seed(3)
    memory = torch.randint(0, 256, (args.memory, HEIGHT, WIDTH, 3), dtype=torch.uint8, generator=generator)
    context = torch.randn(config.text_len, config.text_dim, device=device)
    context_null = torch.randn(config.text_len, config.text_dim, device=device)

    def shot(steps: int, on_step=None) -> torch.Tensor:
        settings = SamplerSettings(steps=steps, seed=0)
        with torch.no_grad():
            return generate_memory_shot(experts, vae, context, context_null, ShotMemory(memory), FRAMES,
                                        WIDTH * HEIGHT, settings, on_step=on_step).video

    start = time.perf_counter()
    shot(1)
    synchronize(device)
    record(first_shot_s=time.perf_counter() - start)

    torch.cuda.reset_peak_memory_stats(device)
    step_s: list[float] = []
    last = [0.0]

    def on_step(i: int, total: int) -> None:
        synchronize(device)
        now = time.perf_counter()
        step_s.append(now - last[0])
        last[0] = now
        record(step_s=step_s)

    synchronize(device)
    start = last[0] = time.perf_counter()
    video = shot(args.steps, on_step)
    synchronize(device)
    assert torch.isfinite(video).all(), "the shot has non-finite pixels"
    record(
        shot_s=time.perf_counter() - start, sampling_s=sum(step_s), video_shape=list(video.shape),
        peak_gib=torch.cuda.max_memory_allocated(device) / GIB,
        reserved_peak_gib=torch.cuda.max_memory_reserved(device) / GIB,
    )


if __name__ == "__main__":
    main()
