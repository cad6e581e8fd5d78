"""The story loop: generate a shot, pick its keyframes, update the memory bank, persist, go on.

Every finished shot is on disk (video, last frames, bank after it) before the next one starts, and
a shot counts as finished only once its bank folder exists (written last, atomically). Re-running
the same story into the same folder therefore skips finished shots; `from_shot` regenerates from a
given shot on with the current options, starting from the bank as it was before that shot, windowed
to the current max / fixed memory (from shot 1: the initial bank rebuilt from the current references).
The folder records the memory options and references its shots are made with, so a plain re-run with
others is refused instead of continuing with the old ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from .conditioning import MOTION_FRAMES, check_frame_num, check_size
from .errors import ConditioningError, StoryMemError
from .keyframes import AestheticScorer, ImageEncoder, select_keyframes
from .memory import MemoryBank, discard_bank
from .sampling import ExpertPair, SamplerSettings
from .shot import T2V_SETTINGS, PromptEncoder, encode_prompts, generate_memory_shot, generate_text_shot
from .story import Shot, Story
from .video import (
    atomic_write_path, concat_videos, fit_image, load_image, save_image, trim_conditioning_frames, video_to_frames, write_mp4,
)
from .wan.vae import WanVAE

log = logging.getLogger(__name__)

CONTINUATIONS = ("m2v", "mi2v", "mm2v")
FIRST_SHOTS = ("t2v", "mr2v")


@dataclass
class StoryModels:
    """What a story needs loaded. `t2v` is only needed for a T2V first shot."""

    text_encoder: PromptEncoder
    vae: WanVAE
    m2v: ExpertPair
    keyframe_encoder: ImageEncoder
    t2v: ExpertPair | None = None
    aesthetic_scorer: AestheticScorer | None = None


@dataclass(frozen=True)
class StoryOptions:
    first_shot: str = "t2v"  # "t2v", or "mr2v" (M2V from reference images)
    continuation: str = "m2v"  # used for shots without a cut: "mi2v" / "mm2v" continue the last frame(s)
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

    def check(self) -> None:
        if self.first_shot not in FIRST_SHOTS:
            raise StoryMemError(f"first shot mode '{self.first_shot}' is unknown: use one of {', '.join(FIRST_SHOTS)}.")
        if self.continuation not in CONTINUATIONS:
            raise StoryMemError(f"continuation '{self.continuation}' is unknown: use one of {', '.join(CONTINUATIONS)}.")
        check_size(*self.size_wh)
        if self.max_memory < 1:
            raise StoryMemError(f"max memory {self.max_memory} leaves no room for keyframes: keep at least 1 (StoryMem uses 10).")
        if not 0 <= self.fixed_memory <= self.max_memory:
            raise StoryMemError(f"fixed memory {self.fixed_memory} must be between 0 and max memory {self.max_memory}.")
        check_frame_num(self.frames)  # before anything is written, not at the first shot


@dataclass
class StoryFolder:
    """Where a story's artefacts live; shot numbers in file names are 1-based like the script's."""

    root: Path

    def video(self, shot: int) -> Path:
        return self.root / "shots" / f"shot_{shot + 1:03d}.mp4"

    def tail(self, shot: int) -> Path:
        return self.root / "shots" / f"shot_{shot + 1:03d}_last_frames"

    def bank(self, shot: int) -> Path:
        """The bank after `shot`; shot -1 is the bank the story starts with."""
        return self.root / "banks" / ("initial" if shot < 0 else f"after_shot_{shot + 1:03d}")

    @property
    def film(self) -> Path:
        return self.root / "film.mp4"

    @property
    def contact_sheet(self) -> Path:
        return self.root / "memory.png"

    @property
    def memory_settings(self) -> Path:
        return self.root / "memory_settings.json"

    def is_finished(self, shot: int) -> bool:
        return self.bank(shot).is_dir() and self.video(shot).is_file()


ShotCallback = Callable[[int, int, str], None]
StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class MemorySettings:
    """What a story's memory is made with, recorded in its folder so that a re-run with other values is refused
    instead of continuing the shots made with these."""

    max_memory: int
    fixed_memory: int
    reference_sha256: tuple[str, ...]  # of each reference image's pixels, so the images themselves need not be kept

    @classmethod
    def of(cls, options: StoryOptions, reference_images: list[torch.Tensor] | None) -> MemorySettings:
        return cls(options.max_memory, options.fixed_memory, _sha256(_references(options, reference_images)))

    @classmethod
    def of_bank(cls, initial: MemoryBank) -> MemorySettings:
        """A folder from before settings were recorded: every shot was made with its initial bank's."""
        return cls(initial.max_size, initial.fixed, _sha256(initial.image_list()))

    @classmethod
    def of_unrecorded(cls, options: StoryOptions, reference_images: list[torch.Tensor] | None) -> MemorySettings:
        """What `of_bank` gives for a folder started with these values before settings were recorded: its initial
        bank held the references as given (not fitted), windowed to the limits."""
        references = _references(options, reference_images)
        return cls.of_bank(MemoryBank.from_images(references, max_size=options.max_memory, fixed=options.fixed_memory))

    @classmethod
    def load(cls, folder: StoryFolder) -> MemorySettings | None:
        """The settings recorded in the folder, None where there are none."""
        path = folder.memory_settings
        if not path.is_file():
            return None
        try:
            fields = json.loads(path.read_text())
            return cls(int(fields["max_memory"]), int(fields["fixed_memory"]), tuple(str(d) for d in fields["reference_sha256"]))
        except (ValueError, KeyError, TypeError) as error:
            raise StoryMemError(f"{path} is not a valid settings file ({error}): delete it and re-run with the options the story was started with.") from None

    def save(self, folder: StoryFolder) -> None:
        """Written only when it changes, so a resumed story leaves the file (and its mtime) as it was."""
        if MemorySettings.load(folder) != self:
            with atomic_write_path(folder.memory_settings) as temp:
                temp.write_text(json.dumps(asdict(self), indent=1))


def _references(options: StoryOptions, reference_images: list[torch.Tensor] | None) -> list[torch.Tensor]:
    """The references a story's memory starts from: only an MR2V story has any."""
    return (reference_images or []) if options.first_shot == "mr2v" else []


def _sha256(images: list[torch.Tensor]) -> tuple[str, ...]:
    return tuple(hashlib.sha256(str(tuple(image.shape)).encode() + image.numpy().tobytes()).hexdigest() for image in images)


def check_story_folder(out_dir: str | os.PathLike, options: StoryOptions, reference_images: list[torch.Tensor] | None = None,
                       from_shot: int | None = None) -> MemorySettings:
    """Refuse, before anything loads or is written, a run into a started story whose memory it would not continue:
    a plain re-run with other memory options or references, or changed references from a shot after the first.
    Returns the settings this run records."""
    folder = StoryFolder(Path(out_dir))
    recorded = MemorySettings.load(folder)
    settings = current = MemorySettings.of(options, reference_images)
    if recorded is None and folder.bank(-1).is_dir():
        recorded = MemorySettings.of_bank(MemoryBank.load(folder.bank(-1)))
        current = MemorySettings.of_unrecorded(options, reference_images)
    if recorded is None or recorded == current:
        return settings
    where = f"the story in {folder.root}"
    if recorded.reference_sha256 != current.reference_sha256 and from_shot != 0:
        raise StoryMemError(f"the --reference images differ from those {where} was started with: pass the same ones to continue it, "
                            "--from-shot 1 to remake it from the new ones, or a new --out folder.")
    if from_shot is not None:
        return settings  # --from-shot remakes its shots with the new memory options
    for flag, old, new in (("--max-memory", recorded.max_memory, current.max_memory), ("--fixed-memory", recorded.fixed_memory, current.fixed_memory)):
        if old != new:
            raise StoryMemError(f"{flag} {new} differs from the {old} {where} was made with: pass {flag} {old} to continue it, "
                                f"--from-shot N to remake shot N and after with {new}, or a new --out folder.")
    return settings


def pending_shots(story: Story, out_dir: str | os.PathLike, from_shot: int | None = None) -> tuple[Shot, ...]:
    """The shots a run will generate: from the first unfinished one (or `from_shot`, 0-based) to the end, since a
    regenerated shot changes the memory of every shot after it."""
    folder = StoryFolder(Path(out_dir))
    for position, shot in enumerate(story.shots):
        if not folder.is_finished(shot.index) or (from_shot is not None and shot.index >= from_shot):
            return story.shots[position:]
    return ()


def run_story(
    story: Story,
    models: StoryModels,
    options: StoryOptions,
    out_dir: str | os.PathLike,
    reference_images: list[torch.Tensor] | None = None,
    from_shot: int | None = None,
    on_shot: ShotCallback | None = None,
    on_step: StepCallback | None = None,
) -> Path:
    """Generate every unfinished shot of `story` into `out_dir` and return the concatenated film.

    `from_shot` is 0-based (the CLI converts); `on_shot(index, total, prompt)` is called before each
    generated shot and `on_step(step, steps)` after each sampling step (it may raise to interrupt).
    """
    options.check()
    settings = check_story_folder(out_dir, options, reference_images, from_shot)
    initial = _initial_bank(options, reference_images)
    folder = StoryFolder(Path(out_dir))
    folder.root.mkdir(parents=True, exist_ok=True)
    shots = story.shots
    for shot in pending_shots(story, out_dir, from_shot):
        # earlier shots are finished; a bank saved under other limits takes the current ones
        bank = initial if shot.index == 0 else _windowed(MemoryBank.load(folder.bank(shot.index - 1)), options)
        if on_shot is not None:
            on_shot(shot.index, len(shots), shot.prompt)
        frames = _generate(shot, bank, models, options, folder, on_step)
        bank_after = _remember(frames, shot.index, bank, models)
        _unfinish(folder, [later.index for later in shots if later.index >= shot.index])
        # the settings first: a stop before the initial bank is saved must not leave a folder that looks unrecorded
        settings.save(folder)  # once the banks made with other settings are gone
        if shot.index == 0:
            initial.save(folder.bank(-1))
        _persist(folder, shot.index, frames, bank_after, options.fps)
    concat_videos([folder.video(s.index) for s in shots], folder.film, options.fps)
    MemoryBank.load(folder.bank(shots[-1].index)).contact_sheet().save(folder.contact_sheet)
    return folder.film


def _unfinish(folder: StoryFolder, shot_indices: list[int]) -> None:
    """Mark a replaced shot and every later one unfinished (their banks go, last first) before the new shot is saved:
    later shots were made from the memory it replaces, and a stop while it is saved must not leave its new video
    counted as finished beside its old bank. Called only after the new shot is generated, so a failed shot leaves
    every file as it was."""
    for index in reversed(shot_indices):
        discard_bank(folder.bank(index))


def _initial_bank(options: StoryOptions, reference_images: list[torch.Tensor] | None) -> MemoryBank:
    """The bank the story starts with: the references (MR2V) or empty (T2V), under the current memory limits."""
    if options.first_shot == "mr2v":
        if not reference_images:
            raise ConditioningError("An MR2V story needs reference images: pass --reference IMAGE (one or more).")
        fitted = [fit_image(image, options.size_wh) for image in reference_images]
        return MemoryBank.from_images(fitted, max_size=options.max_memory, fixed=options.fixed_memory)
    return MemoryBank(keyframes=(), max_size=options.max_memory, fixed=options.fixed_memory)


def _windowed(bank: MemoryBank, options: StoryOptions) -> MemoryBank:
    return replace(bank, max_size=options.max_memory, fixed=options.fixed_memory).window()


def _generate(shot, bank: MemoryBank, models: StoryModels, options: StoryOptions, folder: StoryFolder, on_step) -> torch.Tensor:
    """The shot's frames, uint8 [T, H, W, 3], with frames given by MI2V / MM2V already trimmed."""
    seed = options.seed + shot.index
    if shot.index == 0 and options.first_shot == "t2v":
        if models.t2v is None:
            raise StoryMemError("A T2V first shot needs the Wan2.2 T2V experts: load them or use an MR2V first shot.")
        context, context_null = encode_prompts(models.text_encoder, shot.prompt, options.negative_prompt, models.t2v)
        try:
            result = generate_text_shot(
                models.t2v, models.vae, context, context_null, options.size_wh, options.frames,
                replace(options.t2v, seed=seed), on_step,
            )
        finally:
            models.t2v.park()  # only the first shot uses the T2V experts
        return video_to_frames(result.video)
    mode = "m2v" if shot.cut or shot.index == 0 else options.continuation
    tail = _load_tail(folder, shot.index - 1) if mode != "m2v" else None
    context, context_null = encode_prompts(models.text_encoder, shot.prompt, options.negative_prompt, models.m2v)
    width, height = options.size_wh
    result = generate_memory_shot(
        models.m2v, models.vae, context, context_null, bank.image_list(), options.frames, width * height,
        replace(options.m2v, seed=seed),
        first_frame=tail[-1] if mode == "mi2v" else None,
        motion_frames=tail[-MOTION_FRAMES:] if mode == "mm2v" else None,
        fix_mem=options.fixed_memory if options.mark_fixed_memory else None,
        on_step=on_step,
    )
    return trim_conditioning_frames(video_to_frames(result.video), mode)


def _remember(frames: torch.Tensor, shot_index: int, bank: MemoryBank, models: StoryModels) -> MemoryBank:
    keyframes = select_keyframes(frames, models.keyframe_encoder, bank=bank, scorer=models.aesthetic_scorer, shot=shot_index)
    log.info("shot %d: %d keyframe(s) added to memory", shot_index + 1, len(keyframes))
    return bank.add(keyframes)


def _persist(folder: StoryFolder, shot_index: int, frames: torch.Tensor, bank: MemoryBank, fps: int) -> None:
    write_mp4(frames, folder.video(shot_index), fps=fps)
    tail_dir = folder.tail(shot_index)
    tail_dir.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames[-MOTION_FRAMES:]):
        save_image(frame, tail_dir / f"{i}.png")
    bank.save(folder.bank(shot_index))  # last: marks the shot finished


def _load_tail(folder: StoryFolder, shot_index: int) -> torch.Tensor:
    paths = sorted(folder.tail(shot_index).glob("*.png"))
    if not paths:
        raise StoryMemError(f"the last frames of shot {shot_index + 1} are missing in {folder.tail(shot_index)}: regenerate it with --from-shot {shot_index + 1}.")
    return torch.stack([load_image(p) for p in paths])
