"""The lightx2v preset's whole M = 10 shot against the 40-step default, and the torchrun code path at degree 1.

Run on one GPU from the repo root:  python -m benchmarks.speed_preset --json $OUT/speed_preset.json
Everything goes through `storymem_core.shot.generate_memory_shot` with two random A14B i2v experts (fp8, resident,
eager) and a random Wan2.1 VAE: 10 memory images and the shot's conditioning encoded, sampling, the 81-frame decode.
- preset: a random rank-64 LoRA hooked on every linear of every block of both experts (the lightx2v files' layout;
  its cost counts against the preset), 4 Euler steps at shift 5 and CFG 1 (one forward a step): whole shots timed.
- default: UniPC, shift 4, CFG 3.5 (two forwards a step). Whole shots of 2 and 6 steps are timed; every step costs the
  same, so the 40-step shot is T(6) + (T(6) - T(2)) * 34 / 4 (encode and decode are inside both).
- degree 1: the preset shot through the torchrun path (a process group of one; rank 0's forwards broadcast their
  inputs and run under `sharded_sequence`) against the plain path, alternating, median of 2 each.
A warm-up shot of one step runs first. Text encoding is not included (random 512-token contexts).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist

from benchmarks.dit_step import GIB, synchronize, tokens
from benchmarks.results import keep
from benchmarks.shot_memory import expert, random_vae, shot_runner
from storymem_core.distributed import Parallel
from storymem_core.lora import LoraModule, LoraWeights, apply_loras
from storymem_core.presets import LIGHTX2V, sampler_settings
from storymem_core.sampling import ExpertPair, SamplerSettings
from storymem_core.wan.dit import DiTConfig

BLOCK_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                 "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


def random_speed_lora(model: torch.nn.Module, rank: int, seed: int) -> LoraWeights:
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for index, block in enumerate(model.blocks):
        for name in BLOCK_LINEARS:
            layer = block.get_submodule(name)
            down = torch.randn(rank, layer.in_features, generator=generator) * 0.01
            up = torch.randn(layer.out_features, rank, generator=generator) * 0.01
            modules[f"blocks.{index}.{name}"] = LoraModule(down, up, 1.0)
    return LoraWeights(f"random rank-{rank} speed LoRA", modules)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", type=int, default=10, help="memory images M")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    device = torch.device("cuda", torch.cuda.current_device())
    config = DiTConfig.a14b("i2v")
    row = {"memory": args.memory, "tokens": tokens(config, args.memory), "gpu": torch.cuda.get_device_name(device),
           "torch": torch.__version__}

    def record(**values) -> None:
        row.update(values)
        keep(values, row, args.json)

    start = time.perf_counter()
    experts = ExpertPair(expert(config, device, 0, True), expert(config, device, 1, True), device)
    vae = random_vae(device, torch.bfloat16)
    synchronize(device)
    record(build_s=time.perf_counter() - start)

    preset = sampler_settings(LIGHTX2V.name, "m2v")
    shot = shot_runner(experts, vae, device, args.memory)
    record(warm_up_s=shot(SamplerSettings(steps=1, seed=0)))
    default_2, default_6 = shot(SamplerSettings(steps=2, seed=0)), shot(SamplerSettings(steps=6, seed=0))
    default_40 = default_6 + (default_6 - default_2) * 34 / 4
    record(default_2_steps_s=default_2, default_6_steps_s=default_6, default_step_s=(default_6 - default_2) / 4,
           default_40_steps_s=default_40)

    for seed, dit in enumerate((experts.high, experts.low)):
        apply_loras(dit, [random_speed_lora(dit, 64, seed)], mode="hook")
    dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29533", rank=0, world_size=1, device_id=device)
    parallel = Parallel(device)
    plain, degree_1 = [], []
    for _ in range(2):
        experts.parallel = None
        plain.append(shot(preset))
        # as rank 0 of torchrun runs it
        degree_1.append(parallel.run({"m2v": experts, "t2v": None}, False, lambda: shot(preset)))
    dist.destroy_process_group()
    preset_s, parallel_s = statistics.median(plain), statistics.median(degree_1)
    record(preset_shot_s=plain, preset_degree_1_shot_s=degree_1, preset_s=preset_s,
           speedup_vs_default_40=default_40 / preset_s, degree_1_overhead=parallel_s / preset_s - 1,
           peak_gib=torch.cuda.max_memory_allocated(device) / GIB)


if __name__ == "__main__":
    main()
