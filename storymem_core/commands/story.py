"""`python -m storymem_core story`: find the model files in a models folder, load them, run the story loop
(see docs/architecture.md). Finding files by role is storymem_core/model_roles.py, loading them
storymem_core/story_models.py.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from tqdm import tqdm

from ..choices import DEFAULT_MEMORY_POSITIONS, Ablation, Quality
from ..distributed import PAIRS, Parallel, torchrun_session
from ..errors import SettingsError
from ..expert_pair import LoadProgress
from ..folder_lock import one_writer
from ..memory import MemoryBank
from ..model_roles import find_model_files, parse_device, quality_model, required_roles
from ..pipeline import join_film, run_story
from ..presets import SamplerValues, preset_roles
from ..story import Story, load_story, shown_text
from ..story_folder import StoryFolder, pending_shots
from ..story_models import LoadOptions, load_story_models
from ..story_plan import InputNames, StoryInputs, StoryPlan, plan_story
from ..weights.loading import dit_config


class StoryProgress:
    """tqdm bars: shots of the story, and sampling steps of the current shot."""

    def __init__(self, story: Story):
        self.shots = tqdm(total=len(story.shots), desc="story", unit="shot")
        self.steps: tqdm | None = None

    def on_shot(self, index: int, total: int, prompt: str) -> None:
        self.shots.n = index  # shots before it are done, whether made now or skipped as finished
        self.shots.set_postfix_str(shown_text(prompt[:40]))
        self.shots.refresh()

    def on_step(self, step: int, steps: int) -> None:
        if step == 1:
            if self.steps is not None:
                self.steps.close()
            self.steps = tqdm(total=steps, desc="  steps", unit="step", leave=False)
        self.steps.update(1)

    def on_saved(self, index: int, total: int, memory: MemoryBank) -> None:
        tqdm.write(memory_line(index, total, memory))  # above the bars, which are drawn again below it

    def finished(self) -> None:
        """The bar at its end: on_shot only moves it before a shot, and never past the last."""
        self.shots.n = self.shots.total
        self.shots.refresh()

    def close(self) -> None:
        for bar in (self.steps, self.shots):
            if bar is not None:
                bar.close()


class LoadingBars:
    """tqdm bars in percent, one for each expert pair loaded (tens of GB read from disk); `close` ends them all, also
    after a failed load, so its error starts on a line of its own."""

    def __init__(self):
        self.bars: list[tqdm] = []

    def __call__(self, what: str) -> LoadProgress:
        bar = tqdm(total=100, desc=f"loading {what}", unit="%")
        self.bars.append(bar)

        def update(done: int, total: int) -> None:
            bar.n = done
            bar.refresh()
        return update

    def close(self) -> None:
        for bar in self.bars:
            bar.close()


def memory_line(index: int, total: int, memory: MemoryBank) -> str:
    """After shot `index`: how many keyframes the memory holds and how many of them that shot gave."""
    added = sum(keyframe.shot == index for keyframe in memory.keyframes)
    return f"shot {index + 1}/{total}: {len(memory)} keyframe(s) in memory (+{added} from this shot)"


CLI_NAMES = InputNames(
    from_shot="--from-shot", continue_story="leave --from-shot out", out="--out",
    no_references="no --reference image is given", give_references="pass them with --reference IMAGE (one or more)",
    choose_mr2v="add --m2v-first-shot", choose_t2v="leave out --m2v-first-shot",
    no_t2v_experts="the T2V experts are not in --models-dir",
)


def story_inputs(args: argparse.Namespace) -> StoryInputs:
    """The command line as a story's inputs; a sampler flag left out is None (0 is a value, not 'unset')."""
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise SettingsError(f"--size {args.size!r} is not WIDTHxHEIGHT: write e.g. --size 832x480.") from None
    sampler = SamplerValues(steps=args.steps, shift=args.shift, solver=args.solver, guide_low=args.guide,
                            guide_high=args.guide)
    return StoryInputs(
        story=load_story(args.script), out=Path(args.out), names=CLI_NAMES, first_shot=args.first_shot,
        continuation=args.continuation, seed=args.seed, m2v=sampler, t2v=sampler, preset=args.preset,
        size_wh=(width, height), frames=args.frames, max_memory=args.max_memory, fixed_memory=args.fixed_memory,
        memory_positions=args.memory_positions, references=tuple(Path(path) for path in args.reference),
        from_shot=args.from_shot, ablations=tuple(args.ablations),
    )


def load_options_from_args(args: argparse.Namespace, parallel: Parallel | None = None) -> LoadOptions:
    """Under torchrun (`parallel`) each rank takes its own device: cuda:LOCAL_RANK, or the CPU without GPUs."""
    device = parse_device(args.device) if parallel is None else parallel.device
    return LoadOptions(device=device, weights=args.weights, offload=args.offload, compile_blocks=args.compile,
                       open_clip_name=args.open_clip_name, quality=args.quality, preset=args.preset, parallel=parallel,
                       fsdp=args.fsdp)


def run_story_files(plan: StoryPlan, models_dir: str | Path, load: LoadOptions) -> Path | None:
    """Hold the story folder, check it, load the models, run the story; returns the film's path (None on the ranks
    under torchrun that only serve rank 0's forwards). Another run writing the folder is refused before any model
    loads."""
    with one_writer(plan.out) if load.leads else contextlib.nullcontext():
        return _load_and_run(plan, models_dir, load)


def _load_and_run(plan: StoryPlan, models_dir: str | Path, load: LoadOptions) -> Path | None:
    checked = plan.check_folder()
    pending = pending_shots(plan.story, plan.out, plan.start)
    if not pending:  # no model is loaded to make nothing: the film is joined if it is missing or older than a shot
        if not load.leads:
            return None
        print(f"all {len(plan.story.shots)} shots are already made in {plan.out}: nothing to generate (a run's "
              "settings apply to the shots it makes).")
        return join_film(StoryFolder(plan.out), plan.story, plan.options.fps)
    if load.leads and plan.start is not None and pending[0].index < plan.start:
        print(f"--from-shot {plan.start + 1}: shot {pending[0].index + 1} is not made yet, so the story starts there.")
    # without the quality filter (the paper's ablation) no quality model is needed, nor its file
    quality = Quality.OFF if Ablation.NO_AESTHETIC_FILTER in plan.options.ablations else load.quality
    roles = required_roles(plan.options.first_shot, quality_model(quality, models_dir), plan.options.continuation)
    files = find_model_files(models_dir, roles + preset_roles(load.preset, plan.options.first_shot))
    if load.parallel is not None:
        load.parallel.check_heads(dit_config(files["i2v_high"])[0].num_heads)
    bars = LoadingBars()
    try:
        models = load_story_models(files, plan.options, load, bars if load.leads else lambda what: None)
    finally:
        bars.close()

    def run() -> Path:
        progress = StoryProgress(plan.story)
        try:
            film = run_story(plan.story, models, plan.options, plan.out, list(plan.references) or None, plan.start,
                             on_shot=progress.on_shot, on_step=progress.on_step, checked=checked,
                             on_saved=progress.on_saved)
            progress.finished()
            return film
        finally:
            progress.close()

    if load.parallel is None:
        return run()
    return load.parallel.run({pair: getattr(models, pair) for pair in PAIRS}, load.fsdp, run)


def run_story_command(args: argparse.Namespace) -> int:
    plan = plan_story(story_inputs(args))
    placement = plan.options.memory_positions
    if args.memory_positions is None and placement != DEFAULT_MEMORY_POSITIONS:
        print(f"continuing the story in {args.out} with memory positions {placement}, as it was begun "
              f"(--memory-positions {DEFAULT_MEMORY_POSITIONS} --from-shot 1 remakes it the authors' current way)")
    with torchrun_session() as parallel:
        film = run_story_files(plan, args.models_dir, load_options_from_args(args, parallel))
    if film is not None:
        print(f"film: {film}")
        print(f"shots, memory banks and the memory contact sheet: {Path(args.out)}")
    return 0
