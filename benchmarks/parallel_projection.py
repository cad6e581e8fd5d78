"""Several GPUs projected from one: a sharded forward's compute timed at its real shapes, its communication modelled.

Run on one GPU from the repo root:  python -m benchmarks.parallel_projection --json $OUT/projection.json

What runs: one random A14B i2v expert (fp8 linears, compiled blocks: the preset's settings; `--eager`: the default's) at
832x480, 81 frames, M = 0 and 10. For N = 1, 2, 4, 8 the engine's own split forward runs as rank 0 of N would run it
(`wan/ulysses.py` under `sharded_sequence`: linears, norms and cross-attention on this rank's L/N tokens,
self-attention over all L tokens with H/N heads, the same kernels), except that each collective returns a local
tensor of the shape it would receive instead of communicating (`ProjectedShards`). That times one rank's compute;
the bytes each collective moves are counted by the same code run on the meta device (shapes only).

The communication model (stated, not measured): ranks compute in lockstep and every collective waits for its data,
as the engine's synchronous collectives do (no overlap), so a forward takes compute + the sum over its collectives of
(LATENCY_S + bytes one GPU sends or receives, whichever is more, / (link bandwidth one way x LINK_EFFICIENCY)).
Collectives per forward: rank 0's broadcast of the inputs (latent, conditioning, both prompts, float32), four
all-to-alls a block (q, k, v to heads; the output back to tokens) and the final all-gather of the output tokens.
With CFG parallel (N even, guide not 1) two groups of N/2 run the prompt's and the negative prompt's pass at once
and pairs exchange their predictions (one all-gather); without it the N ranks run both passes one after the other.

Whole shots: the shot's time outside its forwards (encoding, decoding, solver; rank 0 alone) is measured once on
this GPU, from a whole preset shot at M = 10 less its four forwards; projected shot = that + forwards x projected
forward. The distilled preset (4 steps, CFG 1) has no negative pass, so CFG parallel does not apply to it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from benchmarks.dit_step import GIB, HEIGHT, WIDTH, dit_inputs, median, timed, tokens
from benchmarks.shot_memory import expert, random_vae, shot_runner
from storymem_core.files import write_json
from storymem_core.presets import LIGHTX2V, sampler_settings
from storymem_core.sampling import ExpertPair, SamplerSettings
from storymem_core.wan.dit import DiTConfig, WanDiT
from storymem_core.wan.ulysses import SequenceShards, sequence_parallel_modules

RANKS = (1, 2, 4, 8)
MEMORY = (0, 10)
LATENCY_S = 25e-6  # per collective, NCCL within one host (assumption)
LINK_EFFICIENCY = 0.8  # share of the published one-way bandwidth a collective reaches (assumption)
LINKS = {  # published one-way bandwidth per GPU, bytes/s
    "NVLink 4 (H100/H200 SXM, 900 GB/s both ways)": 450e9,
    "PCIe 5.0 x16 (64 GB/s each way)": 64e9,
}
DEFAULT_STEPS = 40  # the 40-step default: two passes a step (CFG 3.5)


class ProjectedShards(SequenceShards):
    """Rank 0 of `size` ranks, with no process group: each collective returns a local tensor of the shape it would
    receive (the same memory traffic for the kernels after it) and, outside compiled code, counts its bytes."""

    def __init__(self, size: int):
        self.group, self.size, self.rank, self.lengths = None, size, 0, []
        self.collectives: list[int] = []  # bytes this rank sends or receives, whichever is more, per collective

    def all_to_all(self, send: torch.Tensor, receive_lengths: list[int], send_lengths: list[int]) -> torch.Tensor:
        row = send[0].numel() * send.element_size()
        self._count(max(sum(send_lengths) - send_lengths[self.rank], sum(receive_lengths) - receive_lengths[self.rank])
                    * row)
        return _rows(send, sum(receive_lengths))

    def gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        slice_bytes = max(self.lengths) * x.numel() // x.shape[dim] * x.element_size()
        self._count((self.size - 1) * slice_bytes)  # every other rank's (padded) slice arrives
        return _rows(x.movedim(dim, 0), sum(self.lengths)).movedim(0, dim)

    def _count(self, size: int) -> None:
        if self.size > 1 and not torch.compiler.is_compiling():
            self.collectives.append(size)


def _rows(x: torch.Tensor, count: int) -> torch.Tensor:
    """`x` cut, or repeated and cut, along dim 0 to `count` rows."""
    return x[:count] if x.shape[0] >= count else torch.cat([x] * -(-count // x.shape[0]))[:count]


@contextlib.contextmanager
def projected(model: nn.Module, shards: ProjectedShards) -> Iterator[None]:
    """Forwards run split as rank 0 of `shards.size` (also a "split" of one, unlike `sharded_sequence`)."""
    modules = sequence_parallel_modules(model)
    for module in modules:
        module.sequence_parallel = shards
    try:
        yield
    finally:
        for module in modules:
            module.sequence_parallel = None


def collective_s(sizes: list[int], one_way: float) -> float:
    """The model: latency plus bytes over the usable bandwidth, collective after collective."""
    return sum(LATENCY_S + size / (one_way * LINK_EFFICIENCY) for size in sizes)


def input_bytes(inputs: tuple) -> int:
    """What rank 0 broadcasts for a forward: latent, conditioning and both prompts, as float32."""
    x, _, context, y = inputs
    return 4 * (x.numel() + (0 if y is None else y.numel()) + 2 * context.numel())


def exchanged_bytes(inputs: tuple) -> dict[str, int]:
    """Bytes outside the blocks: rank 0's broadcast of a forward's inputs, and one prediction (float32), which CFG
    parallel's halves exchange."""
    return {"input_bytes": input_bytes(inputs), "prediction_bytes": 4 * inputs[0].numel()}


def meta_twin(config: DiTConfig) -> WanDiT:
    """The DiT of `config` on the meta device (bf16, as a forward's activations are): shapes only, no memory."""
    with torch.device("meta"):
        return WanDiT(config).cast_weights(torch.bfloat16)


def collective_bytes(meta: WanDiT, inputs: tuple, ranks: int) -> list[int]:
    """The bytes of each collective of one split forward, counted by running it on `meta` (a `meta_twin`): no GPU
    time."""
    if ranks == 1:
        return []  # one rank exchanges nothing
    shards = ProjectedShards(ranks)
    with torch.no_grad(), projected(meta, shards):
        meta(*(x.to("meta") for x in inputs))
    return shards.collectives


def forward_part(model: nn.Module, device: torch.device, repeats: int, compiled: bool, record,
                 size_hw: tuple[int, int] = (HEIGHT, WIDTH)) -> dict:
    """Per M: the measured plain forward, and per N one rank's compute and the bytes of each collective."""
    if compiled:
        model.compile_blocks()
    meta, results = meta_twin(model.config), {}
    for memory in MEMORY:
        inputs = dit_inputs(model.config, memory, 1, device, *size_hw)
        x, t, context, y = inputs
        row = results[memory] = {"tokens": tokens(model.config, memory, *size_hw), **exchanged_bytes(inputs),
                                 "ranks": {}}
        with torch.no_grad():
            seconds, first, _ = timed(lambda: model(x, t, context, y), device, repeats)
            row["plain_forward_s"], row["plain_first_call_s"] = median(seconds), first
            for ranks in RANKS:
                with projected(model, ProjectedShards(ranks)):
                    seconds, first, peak = timed(lambda: model(x, t, context, y), device, repeats)
                row["ranks"][ranks] = {"compute_s": median(seconds), "compute_runs_s": seconds, "first_call_s": first,
                                       "peak_gib": peak,
                                       "collective_bytes": collective_bytes(meta, inputs, ranks)}
                record(memory=memory, ranks=ranks, compute_s=median(seconds), first_call_s=first)
    return results


def shot_part(model: nn.Module, device: torch.device) -> dict:
    """A whole preset shot at M = 10 on this GPU (the expert stands in for both: same shapes, same cost)."""
    shot = shot_runner(ExpertPair(model, model, device), random_vae(device, torch.bfloat16), device, 10)
    shot(SamplerSettings(steps=1, seed=0))  # first calls of the VAE's kernels
    preset = sampler_settings(LIGHTX2V.name, "m2v")
    return {"preset_steps": preset.steps, "preset_shot_s": shot(preset)}


def projection(forwards: dict, shot: dict | None) -> list[dict]:
    """Projected seconds per forward, per CFG step, per shot (once measured), for every link and N; speed-up
    against N = 1."""
    rows = []
    for link, one_way in LINKS.items():
        for memory, row in forwards.items():
            per_rank = row["ranks"]
            outside = (shot["preset_shot_s"] - shot["preset_steps"] * row["plain_forward_s"]
                       if shot is not None and memory == 10 else None)
            for cfg_parallel in (False, True):
                for ranks in RANKS:
                    group = ranks // 2 if cfg_parallel else ranks
                    if cfg_parallel and ranks % 2:
                        continue
                    broadcast = collective_s([row["input_bytes"]], one_way) if ranks > 1 else 0.0
                    forward = (per_rank[ranks]["compute_s"] + collective_s(per_rank[ranks]["collective_bytes"], one_way)
                               + broadcast)
                    half = (per_rank[group]["compute_s"] + collective_s(per_rank[group]["collective_bytes"], one_way)
                            + broadcast)
                    # a CFG step: both passes on all ranks, or one pass per half and the predictions exchanged
                    step = half + collective_s([row["prediction_bytes"]], one_way) if cfg_parallel else 2 * forward
                    rows.append({"link": link, "memory": memory, "ranks": ranks, "cfg_parallel": cfg_parallel,
                                 "forward_s": forward, "cfg_step_s": step,
                                 "comm_share": 1 - per_rank[ranks]["compute_s"] / forward,
                                 "preset_shot_s": None if outside is None else outside + shot["preset_steps"] * forward,
                                 "default_shot_s": None if outside is None else outside + DEFAULT_STEPS * step})
    for row in rows:
        base = next(r for r in rows if r["link"] == row["link"] and r["memory"] == row["memory"] and r["ranks"] == 1)
        row["cfg_step_speedup"] = base["cfg_step_s"] / row["cfg_step_s"]
        row["efficiency"] = row["cfg_step_speedup"] / row["ranks"]
        if row["preset_shot_s"] is not None:
            row["preset_shot_speedup"] = base["preset_shot_s"] / row["preset_shot_s"]
            row["default_shot_speedup"] = base["default_shot_s"] / row["default_shot_s"]
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| link | M | GPUs | CFG parallel | forward s | CFG step s | step speed-up | efficiency | comm share "
             "| preset shot s (speed-up) | default shot s (speed-up) |", "|" + "---|" * 11]
    for r in rows:
        shots = ("-", "-") if r["preset_shot_s"] is None else (
            f"{r['preset_shot_s']:.1f} ({r['preset_shot_speedup']:.2f}x)",
            f"{r['default_shot_s']:.0f} ({r['default_shot_speedup']:.2f}x)")
        lines.append(f"| {r['link']} | {r['memory']} | {r['ranks']} | {'on' if r['cfg_parallel'] else 'off'} "
                     f"| {r['forward_s']:.3f} | {r['cfg_step_s']:.3f} | {r['cfg_step_speedup']:.2f}x "
                     f"| {r['efficiency']:.0%} | {r['comm_share']:.1%} | {shots[0]} | {shots[1]} |")
    return "\n".join(lines)


def counted_collectives(config: DiTConfig, memories: tuple[int, ...] = MEMORY) -> dict[int, dict[int, list[int]]]:
    """`collective_bytes` for each memory size and rank count, counted once for the table and the bound."""
    meta, cpu = meta_twin(config), torch.device("cpu")
    return {memory: {n: collective_bytes(meta, dit_inputs(config, memory, 1, cpu), n) for n in RANKS}
            for memory in memories}


def communication_table(config: DiTConfig, counted: dict[int, dict[int, list[int]]]) -> str:
    """The modelled communication of one split forward at the real shapes, without a GPU (`counted_collectives`)."""
    lines = ["| M | tokens | GPUs | collectives | bytes each all-to-all (rank 0) | GB a forward | "
             + " | ".join(f"{link} s" for link in LINKS) + " |", "|" + "---|" * (6 + len(LINKS))]
    for memory, by_ranks in counted.items():
        inputs = dit_inputs(config, memory, 1, torch.device("cpu"))
        for ranks in RANKS[1:]:
            sizes = by_ranks[ranks] + [input_bytes(inputs)]
            seconds = " | ".join(f"{collective_s(sizes, one_way):.3f}" for one_way in LINKS.values())
            lines.append(f"| {memory} | {tokens(config, memory)} | {ranks} | {len(sizes)} | {sizes[0] / 1e6:.1f} MB "
                         f"| {sum(sizes) / 1e9:.2f} | {seconds} |")
    return "\n".join(lines)


def ideal_forwards(config: DiTConfig, plain_forward_s: dict[int, float],
                   counted: dict[int, dict[int, list[int]]]) -> dict:
    """`forward_part`'s figures for a compute that splits perfectly (one rank's share = the measured single-GPU
    forward / N) and the exact collectives (`counted_collectives`): `projection` of them bounds the speed-up from
    above, no GPU needed."""
    forwards = {}
    for memory, seconds in plain_forward_s.items():
        inputs = dit_inputs(config, memory, 1, torch.device("cpu"))
        ranks = {n: {"compute_s": seconds / n, "collective_bytes": counted[memory][n]} for n in RANKS}
        forwards[memory] = {"plain_forward_s": seconds, **exchanged_bytes(inputs), "ranks": ranks}
    return forwards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=40, help="DiT blocks (fewer: a quick smoke run)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per configuration (median)")
    parser.add_argument("--eager", action="store_true", help="no compiled blocks (the default path's setting)")
    parser.add_argument("--communication-only", action="store_true",
                        help="print the modelled communication at the real shapes and stop (no GPU needed)")
    parser.add_argument("--ideal-split-of", type=float, metavar="SECONDS",
                        help="with --communication-only: also the upper bound for a measured M = 10 forward of SECONDS "
                             "whose compute splits perfectly")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.ideal_split_of and not args.communication_only:
        parser.error("--ideal-split-of goes with --communication-only")
    if args.communication_only:
        config = DiTConfig.a14b("i2v")
        counted = counted_collectives(config)
        print(communication_table(config, counted))
        if args.ideal_split_of:
            print(markdown(projection(ideal_forwards(config, {10: args.ideal_split_of}, counted), None)))
        return
    device = torch.device("cuda", torch.cuda.current_device())
    torch._dynamo.config.recompile_limit = 64  # one graph per rank count and length, as N processes would each build
    config = DiTConfig.a14b("i2v")
    config.num_layers = args.layers
    start = time.perf_counter()
    model = expert(config, device, 0, True)
    result = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "layers": args.layers,
              "build_s": time.perf_counter() - start, "latency_s": LATENCY_S, "link_efficiency": LINK_EFFICIENCY}

    def record(**values) -> None:
        print(json.dumps(values), flush=True)

    result["compiled"] = not args.eager
    result["forwards"] = forward_part(model, device, args.repeats, not args.eager, record)
    measured, projected_one = (result["forwards"][10]["plain_forward_s"],
                               result["forwards"][10]["ranks"][1]["compute_s"])
    result["n1_check"] = {"measured_forward_s": measured, "projected_forward_s": projected_one,
                          "difference": projected_one / measured - 1}
    print(json.dumps(result["n1_check"]), flush=True)
    report(result, device, args.json)  # the forwards' table first, should the shot part not finish
    result["shot"] = shot_part(model, device)
    report(result, device, args.json)


def report(result: dict, device: torch.device, path: Path | None) -> None:
    """The projection from what is measured so far: printed as a table, and the whole result to `path`."""
    result["peak_gib"] = torch.cuda.max_memory_allocated(device) / GIB
    result["projection"] = projection(result["forwards"], result.get("shot"))
    print(markdown(result["projection"]), flush=True)
    if path:
        write_json(result, path)


if __name__ == "__main__":
    main()
