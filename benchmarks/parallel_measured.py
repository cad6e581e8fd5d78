"""Several GPUs measured: the split forward, the CFG step and a preset shot under torchrun, beside the projection.

Run on a machine of N GPUs from the repo root, once per N (2, 4, 8):
  torchrun --nproc-per-node N -m benchmarks.parallel_measured --projection projection.json --json $OUT/measured.json
`projection.json` is what `benchmarks.parallel_projection --json` wrote on one GPU of the same kind and settings.

What runs: every rank builds the same random A14B i2v expert (the same seed: the same weights, as every torchrun rank
loads the same files) with the projection's settings (fp8 linears, compiled blocks; `--eager`: uncompiled), and the
engine's torchrun path (`Parallel.run`, what `torchrun ... story` runs) serves rank 0's forwards on every rank. Rank 0
times, at M = 0 and 10, one prediction at guide 1 (the N ranks split one pass: the projection's forward) and one at
guide 3.5 (a CFG step: CFG parallel where N is even, as the engine does), each with its broadcast of the inputs, then
a whole preset shot at M = 10 (4 steps, CFG 1, the expert standing in for both). With `--projection` the measured
and projected figures (NVLink rows) are printed side by side.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from benchmarks.dit_step import HEIGHT, WIDTH, dit_inputs, median, timed, tiny_config
from benchmarks.parallel_projection import MEMORY
from benchmarks.results import keep
from benchmarks.shot_memory import expert, random_vae, shot_runner
from storymem_core.distributed import Parallel
from storymem_core.presets import LIGHTX2V, sampler_settings
from storymem_core.sampling import ExpertPair, SamplerSettings
from storymem_core.wan.dit import DiTConfig

CFG_GUIDE = 3.5  # the default's guide: any guide but 1 runs both passes
TINY_SIZE_HW = (32, 48)


def measure(parallel: Parallel, pair: ExpertPair, device: torch.device, repeats: int, size_hw: tuple[int, int],
            frames: int, record) -> None:
    """Rank 0's part: predictions at M = 0 and 10, guide 1 and CFG_GUIDE, then a whole preset shot at M = 10."""
    config = pair.high.config
    for memory in MEMORY:
        x, t, context, y = dit_inputs(config, memory, 1, device, *size_hw)
        context_null = torch.randn_like(context[0])

        def prediction(guide: float) -> torch.Tensor:
            return parallel.lead_forward("m2v", True, x[0], t.item(), context[0], context_null, guide, y[0], None)

        with torch.no_grad():
            forward, forward_first, peak = timed(lambda: prediction(1.0), device, repeats)
            step, step_first, _ = timed(lambda: prediction(CFG_GUIDE), device, repeats)
        record(memory=memory, forward_s=median(forward), forward_runs_s=forward, forward_first_call_s=forward_first,
               cfg_step_s=median(step), cfg_step_runs_s=step, cfg_step_first_call_s=step_first, peak_gib=peak)
    shot = shot_runner(pair, random_vae(device, torch.bfloat16), device, 10, size_hw[::-1], frames)
    shot(SamplerSettings(steps=1, seed=0))  # first calls of the VAE's kernels
    record(memory=10, preset_shot_s=shot(sampler_settings(LIGHTX2V.name, "m2v")))


def side_by_side(measured: dict, projection: dict) -> str:
    """Measured against projected (the projection's NVLink rows) for the rank count that ran."""
    ranks = measured["ranks"]
    lines = ["| M | GPUs | what | measured s | projected s | measured / projected |", "|" + "---|" * 6]
    for memory, row in sorted(measured["memory"].items()):
        rows = [r for r in projection["projection"] if r["link"].startswith("NVLink") and r["memory"] == int(memory)
                and r["ranks"] == ranks]
        plain = next(r for r in rows if not r["cfg_parallel"])
        cfg = next(r for r in rows if r["cfg_parallel"] == (ranks % 2 == 0))
        pairs = [("forward (guide 1)", row["forward_s"], plain["forward_s"]),
                 (f"CFG step (CFG parallel {'on' if ranks % 2 == 0 else 'off'})", row["cfg_step_s"], cfg["cfg_step_s"])]
        if "preset_shot_s" in row and plain["preset_shot_s"] is not None:
            pairs.append(("preset shot", row["preset_shot_s"], plain["preset_shot_s"]))
        lines += [f"| {memory} | {ranks} | {what} | {got:.3f} | {expected:.3f} | {got / expected:.2f} |"
                  for what, got, expected in pairs]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed predictions per configuration (median)")
    parser.add_argument("--eager", action="store_true", help="no compiled blocks (the default path's setting)")
    parser.add_argument("--tiny", action="store_true", help="a CPU-sized model, size and shot (a smoke run, gloo)")
    parser.add_argument("--projection", type=Path, help="parallel_projection's JSON, to print beside the measured")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    on_gpu = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if on_gpu else "gloo", device_id=device if on_gpu else None)
    try:
        config = tiny_config() if args.tiny else DiTConfig.a14b("i2v")
        model = expert(config, device, 0, fp8=on_gpu)  # the same seed on every rank: the same weights
        if not args.eager:
            model.compile_blocks()
        parallel = Parallel(device)
        parallel.check_heads(config.num_heads)
        result = {"ranks": parallel.world, "gpu": torch.cuda.get_device_name(device) if on_gpu else "cpu",
                  "torch": torch.__version__, "compiled": not args.eager, "memory": {}}

        def record(memory: int, **values) -> None:
            result["memory"].setdefault(memory, {}).update(values)
            keep({"memory": memory, **values}, result, args.json)

        size_hw, frames = (TINY_SIZE_HW, 5) if args.tiny else ((HEIGHT, WIDTH), 81)
        pair = ExpertPair(model, model, device)  # `run` sends rank 0's forwards of it to every rank
        parallel.run({"m2v": pair, "t2v": None}, False,
                     lambda: measure(parallel, pair, device, args.repeats, size_hw, frames, record))
        if parallel.is_leader and args.projection:
            print(side_by_side(result, json.loads(args.projection.read_text())), flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
