"""`python -m storymem_core story`: find the model files in a models folder, load them, run the story loop
(see docs/architecture.md). Finding files by role is storymem_core/model_roles.py, loading them
storymem_core/story_models.py.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from ..choices import DEFAULT_MEMORY_POSITIONS
from ..distributed import Parallel, torchrun_session
from ..errors import StoryMemError
from ..files import load_image
from ..memory import MemoryBank
from ..model_roles import find_model_files, parse_device, quality_model, required_roles
from ..pipeline import StoryOptions, run_story
from ..presets import preset_roles, preset_settings
from ..sampling import SamplerSettings
from ..story import Story, load_story, shown_text
from ..story_folder import check_output_folder, story_placement
from ..story_models import LoadOptions, load_story_models
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


def memory_line(index: int, total: int, memory: MemoryBank) -> str:
    """After shot `index`: how many keyframes the memory holds and how many of them that shot gave."""
    added = sum(keyframe.shot == index for keyframe in memory.keyframes)
    return f"shot {index + 1}/{total}: {len(memory)} keyframe(s) in memory (+{added} from this shot)"


def options_from_args(args: argparse.Namespace) -> StoryOptions:
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise StoryMemError(f"--size {args.size!r} is not WIDTHxHEIGHT: write e.g. --size 832x480.") from None
    defaults = StoryOptions()
    m2v = _sampler_from_args(args, preset_settings(args.preset, defaults.m2v, "m2v"))
    t2v = _sampler_from_args(args, preset_settings(args.preset, defaults.t2v, "t2v"))
    options = StoryOptions(
        first_shot=args.first_shot, continuation=args.continuation, max_memory=args.max_memory,
        fixed_memory=args.fixed_memory, seed=args.seed, size_wh=(width, height), frames=args.frames, m2v=m2v, t2v=t2v,
        memory_positions=args.memory_positions or story_placement(args.out) or DEFAULT_MEMORY_POSITIONS,
    )
    options.check()  # every number in its range before anything loads
    return options


def _sampler_from_args(args: argparse.Namespace, defaults: SamplerSettings) -> SamplerSettings:
    """`defaults` (a preset's, where chosen) with the sampler flags given on the command line (0 is a value, not
    'unset')."""
    given = {"steps": args.steps, "shift": args.shift, "guide_low": args.guide, "guide_high": args.guide,
             "solver": args.solver}
    return replace(defaults, **{name: value for name, value in given.items() if value is not None})


def load_options_from_args(args: argparse.Namespace, parallel: Parallel | None = None) -> LoadOptions:
    """Under torchrun (`parallel`) each rank takes its own device: cuda:LOCAL_RANK, or the CPU without GPUs."""
    device = parse_device(args.device) if parallel is None else parallel.device
    return LoadOptions(device=device, weights=args.weights, offload=args.offload, compile_blocks=args.compile,
                       open_clip_name=args.open_clip_name, quality=args.quality, preset=args.preset, parallel=parallel,
                       fsdp=args.fsdp)


def run_story_files(script: str | Path, models_dir: str | Path, out: str | Path, options: StoryOptions,
                    load: LoadOptions,
                    references: list[str] = (), from_shot: int | None = None) -> Path | None:
    """Validate the script and the inputs, load the models, run the story; returns the film's path (None on the
    ranks under torchrun that only serve rank 0's forwards).

    `from_shot` is 1-based as users count shots.
    """
    story = load_story(script)
    if from_shot is not None and not 1 <= from_shot <= len(story.shots):
        raise StoryMemError(f"--from-shot {from_shot} is not a shot of {script} (1 to {len(story.shots)}).")
    if references and options.first_shot != "mr2v":
        raise StoryMemError("--reference images are given but the first shot is T2V: add --m2v-first-shot to start "
                            "from them (MR2V).")
    if options.first_shot == "mr2v" and not references:
        raise StoryMemError("--m2v-first-shot starts from reference images: pass them with --reference IMAGE (one or "
                            "more).")
    options.check_story(story)
    start = None if from_shot is None else from_shot - 1
    check_output_folder(out)  # before the references are read: a wrong --out is the cheaper fault to report
    reference_images = [load_image(path) for path in references]
    checked = options.check_folder(out, story, reference_images, start)
    roles = required_roles(options.first_shot, quality_model(load.quality, models_dir))
    files = find_model_files(models_dir, roles + preset_roles(load.preset, options.first_shot))
    if load.parallel is not None:
        load.parallel.check_heads(dit_config(files["i2v_high"])[0].num_heads)
    models = load_story_models(files, options, load)

    def run() -> Path:
        progress = StoryProgress(story)
        try:
            film = run_story(story, models, options, out, reference_images or None, start, on_shot=progress.on_shot,
                             on_step=progress.on_step, checked=checked, on_saved=progress.on_saved)
            progress.finished()
            return film
        finally:
            progress.close()

    return run() if load.parallel is None else load.parallel.run({"m2v": models.m2v, "t2v": models.t2v}, load.fsdp, run)


def run_story_command(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    if args.memory_positions is None and options.memory_positions != DEFAULT_MEMORY_POSITIONS:
        print(f"continuing the story in {args.out} with memory positions {options.memory_positions}, as it was begun "
              f"(--memory-positions {DEFAULT_MEMORY_POSITIONS} --from-shot 1 remakes it the authors' current way)")
    with torchrun_session() as parallel:
        film = run_story_files(args.script, args.models_dir, args.out, options, load_options_from_args(args, parallel),
                               args.reference, args.from_shot)
    if film is not None:
        print(f"film: {film}")
        print(f"shots, memory banks and the memory contact sheet: {Path(args.out)}")
    return 0
