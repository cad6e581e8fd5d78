"""A whole story at the real A14B shapes on one GPU, timed by phase, and the changes that made its shots fast.

Run on one GPU from the repo root:
  python -m benchmarks.story --parts story --json $OUT/story.json
  python -m benchmarks.story --parts attention positions ladder default --json $OUT/shot.json
Random weights made in memory at the real sizes: four A14B experts (i2v and t2v, fp8 linears, resident), umT5-xxl
(bf16, parked on the CPU), the Wan2.1 VAE (bf16, on the CPU between visits), an open_clip ViT-B/32 keyframe encoder;
a random rank-64 StoryMem LoRA and rank-64 speed LoRAs on every linear of every block (the lightx2v files' layout).
The tokenizer is a small sentencepiece model: the encoder always runs its 512 positions, so its cost is the real one.

parts:
- story: `examples/stories/night_market.json` (12 shots, T2V first shot, 832x480, 81 frames, memory up to 10) with
  `--preset lightx2v` through `plan_story` and `run_story`, as the `story` command runs it after loading, the LoRAs
  merged and the blocks compiled as `load_expert_pair` does for the preset; seconds per phase
  (`storymem_core.timing`), per shot, the memory after each shot, total and peak. Its first scene runs first as a
  cold 3-shot story ("cold": the T2V shapes and the growing memory's shapes compile there), then the whole story.
  No quality filter (a random aesthetic head would drop every frame); the keyframe encoder sees three scenes a
  shot (`ThreeScenesEncoder`).
- attention: `benchmarks.attention_kernels`' kernels at the story's shapes (self-attention at M = 0 and 10).
- positions: one compiled forward at M = 10 with the memory's time positions "upstream" (negative) and
  "first-release" (0 .. n-1).
- ladder: one M = 10 preset shot per change, same experts, each against the one before: LoRAs hooked (the old path),
  merged, then compiled blocks.
- default: the 40-step default (UniPC, CFG 3.5: two forwards a step) at M = 10 on the compiled experts: whole shots of
  2 and 6 steps timed, the 40-step shot extrapolated as T(6) + (T(6) - T(2)) * 34 / 4.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from benchmarks.attention_kernels import HEAD_DIM, HEADS, kernels
from benchmarks.dit_step import FRAMES, GIB, HEIGHT, WIDTH, median, randomize_, synchronize, timed, tokens
from benchmarks.results import keep
from benchmarks.shot_memory import expert, random_vae, shot_runner
from benchmarks.speed_preset import random_speed_lora
from storymem_core.commands.story import CLI_NAMES
from storymem_core.lora import apply_loras
from storymem_core.pipeline import StoryModels, run_story
from storymem_core.positions import memory_frame_positions
from storymem_core.presets import LIGHTX2V, sampler_settings
from storymem_core.sampling import ExpertPair, SamplerSettings
from storymem_core.scorers import OpenClipEncoder, vision_tower
from storymem_core.shot import encode_prompts
from storymem_core.story import load_story
from storymem_core.story_plan import StoryInputs, plan_story
from storymem_core.timing import PHASES, recording
from storymem_core.wan import attention as attention_module
from storymem_core.wan.dit import DiTConfig
from storymem_core.wan.t5 import T5Config, UMT5Encoder
from storymem_core.wan.text_encoder import ParkedTextEncoder, TextEncoder
from storymem_core.wan.tokenizer import UMT5Tokenizer

STORY = Path(__file__).resolve().parents[1] / "examples" / "stories" / "night_market.json"
LORA_RANK = 64
CLIP_NAME = "ViT-B-32-quickgelu"
PARTS = ("story", "attention", "positions", "ladder", "default")


class Record:
    """Every figure as it comes: printed as a JSON line and kept in the --json file."""

    def __init__(self, path: Path | None, **header):
        self.path, self.row = path, dict(header)

    def __call__(self, **values) -> None:
        self.row.update(values)
        keep(values, self.row, self.path)


def story_loras(dit: torch.nn.Module, seed: int) -> list:
    """The LoRAs a story stacks on an expert: StoryMem's (i2v experts only), then the speed LoRA."""
    count = 2 if dit.config.model_type == "i2v" else 1
    return [random_speed_lora(dit, LORA_RANK, seed + 10 * index) for index in range(count)]


def expert_pair(model_type: str, layers: int, device: torch.device, seed: int) -> ExpertPair:
    """Random fp8 experts with the story's LoRAs merged, as `load_expert_pair` loads them."""
    config = DiTConfig.a14b(model_type)
    config.num_layers = layers
    pair = [expert(config, device, seed + offset, True) for offset in (0, 1)]
    for offset, dit in enumerate(pair):
        apply_loras(dit, story_loras(dit, seed + offset), mode="merge", work_device=device)
    return ExpertPair(pair[0], pair[1], device)


def text_encoder(device: torch.device) -> ParkedTextEncoder:
    """umT5-xxl with random bf16 weights, parked on the CPU as `load_story_models` parks it."""
    from storymem_core.tiny_models import spiece_model

    config = T5Config.umt5_xxl()
    with torch.device("meta"):
        encoder = UMT5Encoder(config)
    encoder.to_empty(device=device)
    randomize_(encoder, config.dim, torch.Generator(device).manual_seed(4))
    encoder = encoder.to(torch.bfloat16).eval().requires_grad_(False).to("cpu")
    tokenizer = UMT5Tokenizer.from_bytes(spiece_model(), "a small random tokenizer")
    return ParkedTextEncoder(TextEncoder(tokenizer, encoder, 512), torch.device("cpu"))


class ThreeScenesEncoder:
    """The real ViT-B/32 forward (its cost), then embeddings of three scenes per shot.

    Random weights make every frame look alike to CLIP, so no keyframe would survive the dedup against the bank and
    the memory would stay at one image; with three scenes a shot the rule keeps ~3 keyframes a shot and the memory grows
    to 10 as in a real story.
    """

    def __init__(self, device: torch.device):
        import open_clip

        visual = vision_tower(open_clip.get_model_config(CLIP_NAME), device)
        self.clip = OpenClipEncoder(visual, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
        self.generator = torch.Generator().manual_seed(5)

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        dim = self.clip.embed(frames).shape[1]
        scenes = torch.nn.functional.normalize(torch.randn(3, dim, generator=self.generator), dim=-1)
        return scenes[torch.arange(len(frames)) * 3 // len(frames)]


def story_part(args: argparse.Namespace, device: torch.device, record: Record) -> None:
    """A cold 3-shot story first (every compiled graph is built in it), then the timed story, in one process."""
    start = time.perf_counter()
    t2v = expert_pair("t2v", args.layers, device, 20)
    t2v.park()  # on the CPU until a first shot needs it: building the M2V pair beside four experts overflows 80 GiB
    m2v = expert_pair("i2v", args.layers, device, 0)
    for pair in (m2v, t2v):
        for dit in (pair.high, pair.low):
            dit.compile_blocks()  # as load_expert_pair does for the preset
    models = StoryModels(text_encoder=text_encoder(device), vae=random_vae(device, torch.bfloat16).to("cpu"), m2v=m2v,
                         keyframe_encoder=ThreeScenesEncoder(device), t2v=t2v)
    synchronize(device)
    record(story_build_s=time.perf_counter() - start)

    story = load_story(STORY)
    # the path before issue 25: one visit of the text encoder per shot
    visit = partial(encode_prompts, models.text_encoder, story.shots[0].prompt, "", m2v)
    visit_s, _, _ = timed(visit, device, repeats=2)
    record(text_encoding_per_shot_visit_s=median(visit_s))

    torch.cuda.reset_peak_memory_stats(device)
    record(cold=timed_story(replace(story, scenes=story.scenes[:1]), models, device))
    record(story=timed_story(replace(story, scenes=story.scenes[: args.scenes]), models, device),
           story_peak_gib=torch.cuda.max_memory_allocated(device) / GIB)


def timed_story(story, models: StoryModels, device: torch.device, size_wh: tuple[int, int] = (WIDTH, HEIGHT),
                frames: int = FRAMES) -> dict:
    """The story planned and run as the `story` command runs it: total, seconds per phase and per shot, the memory."""
    out = Path(tempfile.mkdtemp(prefix="story_bench_"))
    plan = plan_story(StoryInputs(story=story, out=out, names=CLI_NAMES, first_shot="t2v", preset=LIGHTX2V.name,
                                  size_wh=size_wh, frames=frames, max_memory=10, fixed_memory=3))
    starts, memory_seen = [], []

    def on_shot(index: int, total: int, prompt: str) -> None:
        synchronize(device)
        starts.append(time.perf_counter())

    def on_saved(index: int, total: int, memory) -> None:  # on the writer thread, while the next shot samples
        memory_seen.append(len(memory))
        print(json.dumps({"shot": index, "memory": len(memory)}), flush=True)

    synchronize(device)
    begin = time.perf_counter()
    with recording(device) as times:
        run_story(plan.story, models, plan.options, plan.out, None, plan.start, on_shot=on_shot, on_saved=on_saved)
    total = time.perf_counter() - begin
    # a shot's seconds: from its start to the next shot's (its files are written behind the next one's sampling);
    # the last shot's run to the end of the story, the film's join included
    shot_s = [later - earlier for earlier, later in zip(starts, starts[1:] + [begin + total])]
    phases = {name: times.seconds.get(name, 0.0) for name in PHASES}
    return {"shots": len(story.shots), "total_s": total, "phase_s": phases, "phase_entries": times.entries,
            "other_s": total - sum(phases.values()), "shot_s": shot_s, "memory_after_shot": memory_seen,
            "folder": str(out)}


def attention_part(device: torch.device, record: Record) -> None:
    shapes = {f"self M={m}": (tokens(DiTConfig.a14b("i2v"), m),) * 2 for m in (0, 10)}
    shapes["cross M=10"] = (tokens(DiTConfig.a14b("i2v"), 10), 512)
    rows = []
    generator = torch.Generator(device).manual_seed(0)
    for shape, (lq, lk) in shapes.items():
        q = torch.randn(1, lq, HEADS, HEAD_DIM, device=device, dtype=torch.bfloat16, generator=generator)
        k, v = (torch.randn(1, lk, HEADS, HEAD_DIM, device=device, dtype=torch.bfloat16, generator=generator)
                for _ in range(2))
        for name, run in kernels().items():
            try:
                with torch.no_grad():
                    seconds, _, _ = timed(lambda: run(q, k, v), device, repeats=5, warmup=2)
                rows.append({"shape": shape, "kernel": name, "ms": median(seconds) * 1e3,
                             "tflops": 4 * lq * lk * HEADS * HEAD_DIM / median(seconds) / 1e12})
            except RuntimeError as error:  # a kernel that rejects these inputs
                rows.append({"shape": shape, "kernel": name, "error": str(error).splitlines()[0]})
            record(attention=rows)
    record(attention_engine_choice=attention_module.backend_name(device))


def positions_part(experts: ExpertPair, device: torch.device, record: Record) -> None:
    """One compiled forward of the high expert at M = 10, each placement, alternating (median of 3)."""
    model, config = experts.high, experts.high.config
    latent_frames = 10 + (FRAMES - 1) // 4 + 1
    shape = (1, 16, latent_frames, HEIGHT // 8, WIDTH // 8)
    x, y = torch.randn(shape, device=device), torch.randn(1, 20, *shape[2:], device=device)
    context, t = torch.randn(1, config.text_len, config.text_dim, device=device), torch.tensor([900.0], device=device)
    placements = {name: memory_frame_positions(10, latent_frames, name) for name in ("upstream", "first-release")}
    seconds = {name: [] for name in placements}
    with torch.no_grad():
        for _ in range(3):
            for name, positions in placements.items():
                run = partial(model, x, t, context, y, frame_positions=positions)
                seconds[name] += timed(run, device, repeats=1, warmup=1 if not seconds[name] else 0)[0]
    record(forward_s_by_placement=seconds,
           forward_median_s_by_placement={name: statistics.median(s) for name, s in seconds.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--layers", type=int, default=40, help="DiT blocks per expert (fewer: a quick smoke run)")
    parser.add_argument("--scenes", type=int, default=4, help="the story's first N scenes of 3 shots (all 4: 12 shots)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    device = torch.device("cuda", torch.cuda.current_device())
    record = Record(args.json, gpu=torch.cuda.get_device_name(device), torch=torch.__version__, layers=args.layers,
                    attention_backend=attention_module.backend_name(device))
    if "attention" in args.parts:
        attention_part(device, record)
    if {"positions", "ladder", "default"} & set(args.parts):
        shot_parts(args, device, record)
    if "story" in args.parts:
        story_part(args, device, record)


def shot_parts(args: argparse.Namespace, device: torch.device, record: Record) -> None:
    """The ladder's rungs, then positions and the default on the compiled experts (same weights throughout)."""
    start = time.perf_counter()
    config = DiTConfig.a14b("i2v")
    config.num_layers = args.layers
    experts = ExpertPair(expert(config, device, 0, True), expert(config, device, 1, True), device)
    loras = [story_loras(dit, seed) for seed, dit in enumerate((experts.high, experts.low))]
    record(shot_build_s=time.perf_counter() - start)
    shot = shot_runner(experts, random_vae(device, torch.bfloat16), device, 10)
    preset = sampler_settings(LIGHTX2V.name, "m2v")
    if "ladder" in args.parts:
        hooked = [apply_loras(dit, stack, mode="hook") for dit, stack in zip((experts.high, experts.low), loras)]
        record(ladder_warm_up_s=shot(SamplerSettings(steps=1, seed=0)))
        record(ladder_hooked_eager_s=shot(preset))
        for applied in hooked:
            applied.remove()
    for dit, stack in zip((experts.high, experts.low), loras):
        apply_loras(dit, stack, mode="merge", work_device=device)
    if "ladder" in args.parts:
        record(ladder_merged_eager_s=shot(preset))
    for dit in (experts.high, experts.low):
        dit.compile_blocks()
    record(compiled_warm_up_s=shot(preset))
    if "ladder" in args.parts:
        record(ladder_merged_compiled_s=[shot(preset), shot(preset)])
    if "positions" in args.parts:
        positions_part(experts, device, record)
    if "default" in args.parts:
        two, six = shot(SamplerSettings(steps=2, seed=0)), shot(SamplerSettings(steps=6, seed=0))
        record(default_2_steps_s=two, default_6_steps_s=six, default_step_s=(six - two) / 4,
               default_40_steps_extrapolated_s=six + (six - two) * 34 / 4)
    record(shot_parts_peak_gib=torch.cuda.max_memory_allocated(device) / GIB)


if __name__ == "__main__":
    main()
