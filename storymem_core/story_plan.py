"""From what a user gives to what a story run needs: `plan_story(StoryInputs) -> StoryPlan` (see docs/architecture.md).

The `story` command and the Story Runner node only convert their inputs to `StoryInputs`; every check of a story's
inputs lives here once, with one sentence that names the input as that front end calls it (`InputNames`). Sampler
values follow one rule on every front end: what the user sets wins over a preset, which wins over StoryMem's defaults
(`presets.sampler_settings`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .choices import CONTINUATIONS, DEFAULT_MEMORY_POSITIONS, GIVEN_FRAMES, Ablation, FirstShot, Preset, ShotMode
from .conditioning import check_frame_num, check_size
from .errors import SettingsError
from .files import load_image
from .limits import MAX_FRAMES, MAX_MEMORY, MAX_SIDE, check_number, check_seed
from .positions import check_placement
from .presets import SamplerValues, sampler_settings
from .sampling import SamplerSettings
from .shot import T2V_SETTINGS
from .story import Story
from .story_folder import (
    FolderState,
    check_output_folder,
    check_story_folder,
    reference_digest,
    story_folder_name,
    story_placement,
)


@dataclass(frozen=True)
class StoryOptions:
    first_shot: str = FirstShot.T2V  # or MR2V (M2V from reference images)
    continuation: str = ShotMode.M2V  # used for shots without a cut: MI2V / MM2V continue the last frame(s)
    max_memory: int = 10
    fixed_memory: int = 3
    seed: int = 0  # shot k uses seed + k
    size_wh: tuple[int, int] = (832, 480)
    frames: int = 81
    fps: int = 16
    m2v: SamplerSettings = SamplerSettings()
    t2v: SamplerSettings = T2V_SETTINGS
    negative_prompt: str = ""
    mark_fixed_memory: bool = False  # mask value 2 for unfixed memory; the reference pipeline leaves it off
    memory_positions: str = DEFAULT_MEMORY_POSITIONS  # memory's RoPE time positions (storymem_core.positions)
    ablations: tuple[str, ...] = ()  # the paper's ablations (choices.Ablation), sorted; no memory sink: fixed 0

    def check(self) -> None:
        """Every value in its range, before anything loads: a typo must not allocate memory or run a model."""
        if self.first_shot not in FirstShot.names():
            raise SettingsError(f"first shot mode '{self.first_shot}' is unknown: use one of "
                                f"{', '.join(FirstShot.names())}.")
        if self.continuation not in CONTINUATIONS:
            raise SettingsError(f"continuation '{self.continuation}' is unknown: use one of "
                                f"{', '.join(CONTINUATIONS)}.")
        width, height = self.size_wh
        check_number(max(width, height), "size (its longer side)", 16, MAX_SIDE, "use e.g. 832x480 or 1280x720")
        check_size(width, height)
        check_number(self.frames, "frames", 1, MAX_FRAMES, "StoryMem makes 81 (5 s at 16 fps)")
        check_frame_num(self.frames)
        check_number(self.max_memory, "max memory", 1, MAX_MEMORY, "StoryMem keeps 10 keyframes")
        if not 0 <= self.fixed_memory <= self.max_memory:
            raise SettingsError(f"fixed memory {self.fixed_memory} must be between 0 and max memory {self.max_memory}.")
        check_number(self.fps, "fps", 1, 120, "StoryMem's videos are 16 fps")
        check_seed(self.seed, 1)
        check_placement(self.memory_positions)
        if unknown := [a for a in self.ablations if a not in Ablation.names()]:
            raise SettingsError(f"ablation '{unknown[0]}' is unknown: use {', '.join(Ablation.names())}.")
        self.m2v.check()
        self.t2v.check()

    def check_story(self, story: Story) -> None:
        """What depends on the script: every shot's seed, and frames left after the ones a continuing shot is given."""
        self.check()
        check_seed(self.seed, len(story.shots))
        given = GIVEN_FRAMES[self.continuation]
        continuing = next((s for s in story.shots[1:] if not s.cut), None)
        if continuing is not None and self.frames <= given:
            raise SettingsError(f"shot {continuing.index + 1} continues the previous one ({self.continuation.upper()}, "
                                f"{given} given frame(s)) but --frames {self.frames} leaves no new frame: use --frames "
                                f"{given + 4 - (given - 1) % 4} or more, or the M2V continuation (no --mi2v / --mm2v).")

    def check_folder(self, out_dir: str | os.PathLike, story: Story, reference_images: list[torch.Tensor] | None,
                     from_shot: int | None) -> FolderState:
        """The story folder can take this run (`story_folder.check_story_folder` with these options)."""
        references = (reference_images or []) if self.first_shot == FirstShot.MR2V else []
        return check_story_folder(out_dir, story, self.size_wh, self.frames, self.max_memory, self.fixed_memory,
                                  references, from_shot, self.memory_positions, self.ablations)


@dataclass(frozen=True)
class InputNames:
    """How a front end names the inputs a planning error points at (a flag, a widget), so that each check keeps one
    sentence on every front end and still names what the user touches."""

    from_shot: str
    continue_story: str  # what to do instead to continue where the story stopped
    out: str
    no_references: str
    give_references: str
    choose_mr2v: str
    choose_t2v: str
    no_t2v_experts: str


# for callers of the engine's functions (run_story) rather than of a front end
ENGINE_NAMES = InputNames(
    from_shot="from_shot", continue_story="pass None", out="out_dir", no_references="no reference_images are given",
    give_references="pass them as reference_images", choose_mr2v=f"use first_shot '{FirstShot.MR2V}'",
    choose_t2v=f"use first_shot '{FirstShot.T2V}'", no_t2v_experts="StoryModels.t2v is None",
)


@dataclass(frozen=True)
class StoryInputs:
    """What a user gives for a story, as given: sampler values not set are None (a preset or the defaults fill them),
    `from_shot` counts from 1 as users do (None continues), `memory_positions` None continues a started story's."""

    story: Story
    out: Path  # the story's folder (CLI), or the folder the Story Runner names the story's subfolder in
    names: InputNames
    first_shot: str = FirstShot.T2V
    continuation: str = ShotMode.M2V
    seed: int = 0
    m2v: SamplerValues = SamplerValues()  # memory shots (and an MR2V first shot)
    t2v: SamplerValues = SamplerValues()  # a T2V first shot
    preset: str = Preset.NONE
    size_wh: tuple[int, int] = (832, 480)
    frames: int = 81
    fps: int = 16
    max_memory: int = 10
    fixed_memory: int = 3
    memory_positions: str | None = None
    negative_prompt: str = ""
    references: tuple[torch.Tensor | Path, ...] = ()  # uint8 [H, W, 3] images, or image files read once checked
    from_shot: int | None = None
    ablations: tuple[str, ...] = ()  # choices.Ablation, in any order


@dataclass(frozen=True)
class StoryPlan:
    """A checked story run: its options, the shot it starts from (0-based, None continues) and its first memory."""

    story: Story
    options: StoryOptions
    start: int | None
    references: tuple[torch.Tensor, ...]  # the MR2V story's first memory; empty for a T2V first shot
    out: Path
    names: InputNames

    @property
    def needs_t2v_experts(self) -> bool:
        return self.options.first_shot == FirstShot.T2V

    def check_t2v_experts(self, given: bool) -> None:
        check_t2v_experts(self.options.first_shot, given, self.names)

    def check_folder(self) -> FolderState:
        """`out` as the story's folder can take this run (before any model loads)."""
        return self.options.check_folder(self.out, self.story, list(self.references), self.start)

    def named_folder(self, models: list[str]) -> Path:
        """The Story Runner's story folder under `out`, named after the story and what shapes its frames (`models`:
        the names of the models and LoRAs it runs), so the same story and settings find their finished shots."""
        sources = [*models, reference_digest(self.references)]
        return self.out / story_folder_name(self.story, asdict(self.options), sources)


def plan_story(inputs: StoryInputs) -> StoryPlan:
    """Check everything a story's inputs can get wrong, cheapest first, and build what its run needs."""
    options = story_options(inputs)
    options.check_story(inputs.story)
    start = _start(inputs.from_shot, inputs.story, inputs.names)
    check_first_memory(inputs.first_shot, bool(inputs.references), inputs.names)
    out = check_output_folder(inputs.out, inputs.names.out)  # before the references are read: the cheaper fault
    references = tuple(load_image(r) if isinstance(r, Path) else r for r in inputs.references)
    return StoryPlan(inputs.story, options, start, references, out, inputs.names)


def story_options(inputs: StoryInputs) -> StoryOptions:
    """The options, with sampler settings by the preset rule and memory positions as the folder's story began."""
    sink = Ablation.NO_MEMORY_SINK not in inputs.ablations
    return StoryOptions(
        first_shot=inputs.first_shot, continuation=inputs.continuation, max_memory=inputs.max_memory,
        fixed_memory=inputs.fixed_memory if sink else 0, ablations=tuple(sorted(set(inputs.ablations))),
        seed=inputs.seed, size_wh=inputs.size_wh, frames=inputs.frames,
        fps=inputs.fps, negative_prompt=inputs.negative_prompt,
        m2v=sampler_settings(inputs.preset, ShotMode.M2V, inputs.m2v),
        # the T2V experts (and their speed LoRAs) run only for a T2V first shot
        t2v=sampler_settings(inputs.preset if inputs.first_shot == FirstShot.T2V else Preset.NONE, ShotMode.T2V,
                             inputs.t2v),
        memory_positions=inputs.memory_positions or story_placement(inputs.out) or DEFAULT_MEMORY_POSITIONS,
    )


def _start(from_shot: int | None, story: Story, names: InputNames) -> int | None:
    """The 0-based shot a run remakes from; None continues where the story stopped."""
    if from_shot is None:
        return None
    if not 1 <= from_shot <= len(story.shots):
        raise SettingsError(f"{names.from_shot} {from_shot} is not a shot of '{story.name}' (it has shots 1 to "
                            f"{len(story.shots)}): {names.continue_story} to continue where it stopped, or give one "
                            "of those.")
    return from_shot - 1


def check_first_memory(first_shot: str, has_references: bool, names: InputNames = ENGINE_NAMES) -> None:
    """An MR2V story starts from reference images and a T2V one from text: refuse references that would go unused."""
    if first_shot == FirstShot.MR2V and not has_references:
        raise SettingsError(f"the first shot is MR2V (from reference images) but {names.no_references}: "
                            f"{names.give_references}, or {names.choose_t2v} to start from text.")
    if first_shot == FirstShot.T2V and has_references:
        raise SettingsError(f"reference images are given but the first shot is T2V: {names.choose_mr2v} to start "
                            "from them (MR2V), or leave them out.")


def check_t2v_experts(first_shot: str, given: bool, names: InputNames = ENGINE_NAMES) -> None:
    """A T2V first shot is sampled by the Wan2.2 T2V experts, which only such a story needs."""
    if first_shot == FirstShot.T2V and not given:
        raise SettingsError(f"the first shot is T2V but {names.no_t2v_experts}: load the Wan2.2 T2V-A14B experts, or "
                            f"{names.choose_mr2v} to start from reference images.")
