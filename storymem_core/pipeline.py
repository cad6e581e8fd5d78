"""The story loop: generate a shot, pick its keyframes, update the memory bank, persist, go on.

A shot's files (video, last frames, bank after it) are written while the next one samples, and every shot is on
disk before the next one's files are written or the run ends, whatever stops it; the folder's
resume contract (what counts as finished, what a re-run or `from_shot` may change) is `story_folder`'s.
`from_shot` regenerates from a given shot on with the current options, starting from the bank as it was before
that shot, windowed to the current max / fixed memory (from shot 1: the initial bank rebuilt from the references).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Protocol

import torch

from .bank_files import bank_contact_sheet, discard_bank, load_bank, save_bank
from .choices import GIVEN_FRAMES, MOTION_FRAMES, FirstShot, ShotMode
from .errors import StoryFolderError
from .files import fit_image, load_image, save_image, save_picture
from .folder_lock import one_writer
from .memory import MemoryBank
from .run_shot import ShotModels, ShotOutcome, ShotRequest, run_shot, story_shot_mode
from .sampling import ExpertPair
from .scorers import AestheticScorer, ImageEncoder
from .shot import EncodedPrompts, PromptEncoder, prompt_pair
from .story import Shot, Story
from .story_folder import FolderState, StoryFolder, check_output_folder, keep_script, pending_shots
from .story_plan import StoryOptions, check_first_memory, check_t2v_experts
from .timing import WRITES, phase
from .video import concat_videos, write_mp4
from .wan.vae import WanVAE
from .write_behind import WriteBehind

log = logging.getLogger(__name__)


ShotCallback = Callable[[int, int, str], None]
StepCallback = Callable[[int, int], None]
SavedCallback = Callable[[int, int, MemoryBank], None]


class ShotMaker(Protocol):
    """What makes a story's shots: the engine's models (`StoryModels`), or ComfyUI's models on the native path."""

    def make_shot(self, request: ShotRequest, on_step: StepCallback | None) -> ShotOutcome: ...

    def with_prompts(self, batches: list[list[str]]) -> ShotMaker:
        """These models with `batches` (each shot's prompt and negative prompt) encoded ahead, where that saves time."""


@dataclass
class StoryModels:
    """What a story needs loaded. `t2v` is only needed for a T2V first shot."""

    text_encoder: PromptEncoder
    vae: WanVAE
    m2v: ExpertPair
    keyframe_encoder: ImageEncoder
    t2v: ExpertPair | None = None
    aesthetic_scorer: AestheticScorer | None = None

    def with_prompts(self, batches: list[list[str]]) -> StoryModels:
        """Every batch encoded in one visit of the text encoder to the GPU (none: these models as they are)."""
        if not batches:
            return self
        return replace(self, text_encoder=EncodedPrompts(self.text_encoder, batches, self.m2v.device))

    def make_shot(self, request: ShotRequest, on_step: StepCallback | None) -> ShotOutcome:
        """The shot through `run_shot` on the pair its mode needs."""
        experts = self.t2v if request.mode == ShotMode.T2V else self.m2v
        check_t2v_experts(request.mode, experts is not None)  # only a story still to make its first shot needs them
        try:
            return run_shot(request, ShotModels(experts, self.text_encoder, self.vae, self.keyframe_encoder,
                                                self.aesthetic_scorer), on_step)
        finally:
            if request.mode == ShotMode.T2V:
                experts.park()  # only the first shot uses the T2V experts


def run_story(
    story: Story,
    models: ShotMaker,
    options: StoryOptions,
    out_dir: str | os.PathLike,
    reference_images: list[torch.Tensor] | None = None,
    from_shot: int | None = None,
    on_shot: ShotCallback | None = None,
    on_step: StepCallback | None = None,
    checked: FolderState | None = None,
    on_saved: SavedCallback | None = None,
) -> Path:
    """Generate every unfinished shot of `story` into `out_dir` and return the concatenated film.

    `from_shot` is 0-based (the CLI converts); `on_shot(index, total, prompt)` is called before each
    generated shot, `on_step(step, steps)` after each sampling step (it may raise to interrupt) and
    `on_saved(index, total, memory)` once the shot and the bank after it are saved (on the thread that writes them,
    while the next shot samples).
    `checked` is what `StoryOptions.check_folder` gave a caller that checked before loading its models.
    """
    options.check_story(story)
    check_first_memory(options.first_shot, bool(reference_images))
    check_output_folder(out_dir)  # before the lock creates it
    with one_writer(out_dir):  # another run writing here is refused before anything is written
        state = checked or options.check_folder(out_dir, story, reference_images, from_shot)
        initial = _initial_bank(options, reference_images)
        folder = StoryFolder(Path(out_dir))
        shots = story.shots
        pending = list(pending_shots(story, out_dir, from_shot))
        # every prompt in one visit of the text encoder, which then stays off the GPU while shots sample
        models = models.with_prompts([prompt_pair(shot.prompt, options.negative_prompt) for shot in pending])
        last: tuple[int, ShotOutcome] | None = None  # the shot made before, still being written
        with WriteBehind() as writes:
            for shot in pending:
                if on_shot is not None:
                    on_shot(shot.index, len(shots), shot.prompt)
                outcome = _make_shot(shot, _bank_before(shot.index, initial, last, folder, options), models, options,
                                     _tail_before(shot.index, last, folder), _checking_writes(writes, on_step))
                writes.submit(partial(_save_shot, folder, state, shot.index, len(shots), initial, outcome, options.fps,
                                      on_saved))
                last = (shot.index, outcome)
        return join_film(folder, story, options.fps)


def join_film(folder: StoryFolder, story: Story, fps: int) -> Path:
    """The film of `story` (every shot made) and the memory's contact sheet, written unless the film is newer than
    every shot, and the script kept beside them; needs no model, so a story with nothing left to make still gets its
    film."""
    shots = story.shots
    keep_script(folder, story)
    if not folder.film_is_current(shots):
        with phase(WRITES):
            concat_videos([folder.video(s.index) for s in shots], folder.film, fps)
            save_picture(bank_contact_sheet(load_bank(folder.bank(shots[-1].index))), folder.contact_sheet)
    return folder.film


def _checking_writes(writes: WriteBehind, on_step: StepCallback | None) -> StepCallback:
    """`on_step` that first stops the shot if the previous shot's files failed to write (no point sampling a shot
    that cannot be saved after it)."""
    def step(done: int, steps: int) -> None:
        writes.check()
        if on_step is not None:
            on_step(done, steps)
    return step


def _bank_before(index: int, initial: MemoryBank, last: tuple[int, ShotOutcome] | None, folder: StoryFolder,
                 options: StoryOptions) -> MemoryBank:
    """The memory a shot starts from: the previous shot's bank, as this run made it or as saved (the same uint8
    keyframes: PNGs are lossless), under the current limits."""
    if index == 0:
        return initial
    bank = last[1].memory if last is not None and last[0] == index - 1 else load_bank(folder.bank(index - 1))
    return replace(bank, max_size=options.max_memory, fixed=options.fixed_memory).window()


def _tail_before(index: int, last: tuple[int, ShotOutcome] | None, folder: StoryFolder) -> Callable[[], torch.Tensor]:
    """The previous shot's last frames, from this run or from its saved PNGs (read only for a shot that needs them)."""
    if last is not None and last[0] == index - 1:
        return lambda: last[1].frames[-MOTION_FRAMES:]
    return lambda: _load_tail(folder, index - 1)


def _save_shot(folder: StoryFolder, state: FolderState, index: int, total: int, initial: MemoryBank,
               outcome: ShotOutcome, fps: int, on_saved: SavedCallback | None) -> None:
    """Every file of a finished shot (run behind the next shot's sampling), then `on_saved`."""
    _unfinish(folder, list(range(index, total)))
    # the record first: a stop before the initial bank is saved must not leave a folder that looks unrecorded
    state.save(folder, index)  # once the banks made with other settings are gone
    if index == 0:
        save_bank(initial, folder.bank(-1))
    _persist(folder, index, outcome.frames, outcome.memory, fps)
    if on_saved is not None:
        on_saved(index, total, outcome.memory)


def _unfinish(folder: StoryFolder, shot_indices: list[int]) -> None:
    """Mark a replaced shot and every later one unfinished (their banks go, last first) before the new shot is saved:
    later shots were made from the memory it replaces, and a stop while it is saved must not leave its new video
    counted as finished beside its old bank. Called only after the new shot is generated, so a failed shot leaves
    every file as it was."""
    for index in reversed(shot_indices):
        discard_bank(folder.bank(index))


def _initial_bank(options: StoryOptions, reference_images: list[torch.Tensor] | None) -> MemoryBank:
    """The bank the story starts with: the references (MR2V) or empty (T2V), under the current memory limits."""
    if options.first_shot == FirstShot.MR2V:
        fitted = [fit_image(image, options.size_wh) for image in reference_images]
        return MemoryBank.from_images(fitted, max_size=options.max_memory, fixed=options.fixed_memory)
    return MemoryBank(keyframes=(), max_size=options.max_memory, fixed=options.fixed_memory)


def _make_shot(shot: Shot, bank: MemoryBank, models: ShotMaker, options: StoryOptions,
               previous_tail: Callable[[], torch.Tensor], on_step: StepCallback | None) -> ShotOutcome:
    """The story's shot, from the story's options and the previous shot's last frames."""
    mode = story_shot_mode(shot.index, shot.cut, options.first_shot, options.continuation)
    request = ShotRequest(
        prompt=shot.prompt, mode=mode, memory=bank, size_wh=options.size_wh, frames=options.frames,
        settings=replace(options.t2v if mode == ShotMode.T2V else options.m2v, seed=options.seed + shot.index),
        index=shot.index, previous_frames=previous_tail() if GIVEN_FRAMES.get(mode) else None,
        negative_prompt=options.negative_prompt, fix_mem=options.fixed_memory if options.mark_fixed_memory else None,
        memory_positions=options.memory_positions, ablations=options.ablations,
    )
    outcome = models.make_shot(request, on_step)
    log.info("shot %d: %d keyframe(s) added to memory", shot.index + 1, outcome.keyframes_added)
    return outcome


def _persist(folder: StoryFolder, shot_index: int, frames: torch.Tensor, bank: MemoryBank, fps: int) -> None:
    write_mp4(frames, folder.video(shot_index), fps=fps)
    tail_dir = folder.tail(shot_index)
    tail_dir.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames[-MOTION_FRAMES:]):
        save_image(frame, tail_dir / f"{i}.png")
    save_bank(bank, folder.bank(shot_index))  # last: marks the shot finished


def _load_tail(folder: StoryFolder, shot_index: int) -> torch.Tensor:
    paths = sorted(folder.tail(shot_index).glob("*.png"))
    if not paths:
        raise StoryFolderError(f"the last frames of shot {shot_index + 1} are missing in {folder.tail(shot_index)}: "
                               f"regenerate it with --from-shot {shot_index + 1}.")
    return torch.stack([load_image(p) for p in paths])
