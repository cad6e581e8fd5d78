"""Nothing finished is lost: a story cancelled at a random sampling step (ComfyUI's Cancel, Ctrl-C in the CLI), a disk
that fills up while a shot or a bank is saved, and a GPU that runs out of memory all leave every finished shot
and every bank on disk byte for byte (and mtime for mtime) as they were, and the story continues from there."""

from __future__ import annotations

import errno
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
from helpers import (
    SHOT,
    VALID,
    call,
    files_under,
    first_shot,
    image_batch,
    memory_shot,
    reference_bank,
    runner_arguments,
)
from PIL import Image

import storymem_core.pipeline as pipeline
import storymem_core.video as video
from nodes import host
from storymem_core import tiny_models as tiny
from storymem_core.bank_files import load_bank, save_bank
from storymem_core.errors import GenerationInterrupted, OutOfMemory, WriteError
from storymem_core.files import load_image, save_image
from storymem_core.folder_lock import LOCK_FILE
from storymem_core.lora import apply_loras, load_lora
from storymem_core.pipeline import StoryModels, StoryOptions, run_story
from storymem_core.sampling import ExpertPair, SamplerSettings
from storymem_core.shot import memory_advice
from storymem_core.story import loads_story
from storymem_core.story_folder import StoryFolder
from storymem_core.video import read_mp4, write_mp4
from storymem_core.wan.text_encoder import TextEncoder
from storymem_core.weights.loading import load_dit, load_text_encoder, load_vae
from storymem_core.weights.scorer_files import load_keyframe_encoder

STEPS = 3
FORWARDS_PER_STEP = 2  # CFG as two calls: conditional and unconditional
SHOTS = 3
FORWARDS_PER_SHOT = STEPS * FORWARDS_PER_STEP
STORY_FORWARDS = SHOTS * FORWARDS_PER_SHOT
# Cancel at the story's very first and very last forward call and at random ones; Ctrl-C at random ones
_DRAWN = random.Random(8).sample(range(1, STORY_FORWARDS - 1), 4)
CANCELS = [
    (0, "cancel"),
    (STORY_FORWARDS - 1, "cancel"),
    (_DRAWN[0], "cancel"),
    (_DRAWN[1], "cancel"),
    (_DRAWN[2], "ctrl-c"),
    (_DRAWN[3], "ctrl-c"),
]
OPTIONS = StoryOptions(
    first_shot="t2v",
    continuation="mi2v",
    max_memory=4,
    fixed_memory=1,
    size_wh=(32, 32),
    frames=5,
    fps=8,
    m2v=SamplerSettings(steps=STEPS, shift=4.0, boundary=0.9),
    t2v=SamplerSettings(steps=STEPS, shift=12.0, boundary=0.875),
)
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(scope="module")
def story_models(tmp_path_factory) -> StoryModels:
    """Every model of a T2V -> M2V / MI2V story, from the tiny files, as the CLI runner loads them (fp32, CPU)."""
    root = tiny.write_tiny_models(tmp_path_factory.mktemp("models"))

    def pair(high: str, low: str, loras: tuple[str, str] | None = None) -> ExpertPair:
        experts = [load_dit(root / "diffusion_models" / name, torch.float32) for name in (high, low)]
        for expert, lora in zip(experts, loras or ()):
            apply_loras(expert, [load_lora(root / "loras" / lora)], mode="hook")
        return ExpertPair(*experts, device="cpu")

    m2v = pair(tiny.I2V_HIGH, tiny.I2V_LOW, (tiny.STORYMEM_LORA_HIGH, tiny.STORYMEM_LORA_LOW))
    text = load_text_encoder(root / "text_encoders" / tiny.TEXT_ENCODER, torch.float32)
    return StoryModels(
        text_encoder=TextEncoder(text.tokenizer, text.encoder, m2v.high.config.text_len),
        vae=load_vae(root / "vae" / tiny.VAE_FILE, torch.float32),
        m2v=m2v,
        keyframe_encoder=load_keyframe_encoder(root / "clip_vision" / tiny.CLIP_FILE, "unused", torch.device("cpu")),
        t2v=pair(tiny.T2V_HIGH, tiny.T2V_LOW),
    )


@pytest.fixture(scope="module")
def story():
    return loads_story(json.dumps(VALID))  # cut, continuation (MI2V), cut: SHOTS shots


@pytest.fixture(scope="module")
def uninterrupted(story, story_models, tmp_path_factory) -> Path:
    """The story run once without trouble: what every interrupted-then-resumed run must end with."""
    out = tmp_path_factory.mktemp("uninterrupted")
    run_story(story, story_models, OPTIONS, out)
    return out


@dataclass
class Saboteur:
    """Counts DiT forward calls of a story and strikes at forward `at`; snapshots `out` as each shot of the run
    starts: at the run's first forward, then as each shot's files are saved (they are written while the next shot
    samples, so that is the folder the next shot starts from)."""

    out: Path
    at: int
    strike: Callable[[], None]
    calls: int = 0
    struck_at: int | None = None
    shot_starts: list = field(default_factory=list)

    def __call__(self, module, args):
        if self.calls == 0:
            self.snapshot()
        if self.calls == self.at:
            self.struck_at = self.calls
            self.strike()
        self.calls += 1

    def snapshot(self) -> None:
        self.shot_starts.append(files_under(self.out) if self.out.exists() else {})

    @property
    def after_strike(self) -> int:
        """Forward calls that started after the strike."""
        return self.calls - 1 - self.struck_at


PERSIST = pipeline._persist


def watch(experts: list[torch.nn.Module], saboteur: Saboteur, monkeypatch) -> list:
    """The saboteur on every expert's forward and after every shot's files are saved."""

    def persist_then_snapshot(*args, **kwargs):
        PERSIST(*args, **kwargs)
        saboteur.snapshot()

    monkeypatch.setattr(pipeline, "_persist", persist_then_snapshot)
    return [expert.register_forward_pre_hook(saboteur) for expert in experts]


def same_story(out: Path, reference: Path) -> None:
    """`out` holds what `reference` holds, compared where it is lossless: every bank and every shot's last frames
    (PNG) exactly, the film by its frame count (libx264 does not always code identical frames to identical bytes
    within one process, seen on these noise-pixel shots)."""
    assert read_mp4(out / "film.mp4").shape == read_mp4(reference / "film.mp4").shape
    for shot in range(SHOTS):
        tails = [sorted(StoryFolder(root).tail(shot).glob("*.png")) for root in (out, reference)]
        assert [p.name for p in tails[0]] == [p.name for p in tails[1]]
        assert all(torch.equal(load_image(a), load_image(b)) for a, b in zip(*tails))
    for shot in range(SHOTS):
        ours, theirs = (load_bank(StoryFolder(root).bank(shot)) for root in (out, reference))
        assert [(k.shot, k.frame_index, k.source) for k in ours.keyframes] == [
            (k.shot, k.frame_index, k.source) for k in theirs.keyframes
        ]
        assert all(torch.equal(a, b) for a, b in zip(ours.image_list(), theirs.image_list()))


def kept(before: dict, after: dict) -> bool:
    """Every file of `before` is in `after` with the same bytes and mtime."""
    return all(after.get(name) == entry for name, entry in before.items())


# ------------------------------------------------------------------ cancel at a random step


@pytest.mark.parametrize("at, how", CANCELS, ids=[f"{how}-at-forward-{at}-of-{STORY_FORWARDS}" for at, how in CANCELS])
def test_story_cancelled_at_any_step_keeps_finished_shots_and_resumes_to_the_same_film(
    story, story_models, uninterrupted, tmp_path, monkeypatch, at, how
):
    out = tmp_path / "story"
    cancel_requested = []

    def strike():
        if how == "ctrl-c":
            raise KeyboardInterrupt  # lands in the middle of a step, as a signal does
        cancel_requested.append(True)  # ComfyUI's Cancel: a flag the step callback reads

    def on_step(step, steps):
        if cancel_requested:
            raise GenerationInterrupted("generation was stopped; finished shots and banks are unchanged.")

    saboteur = Saboteur(out, at, strike)
    experts = [story_models.t2v.high, story_models.t2v.low, story_models.m2v.high, story_models.m2v.low]
    handles = watch(experts, saboteur, monkeypatch)
    try:
        with pytest.raises(KeyboardInterrupt if how == "ctrl-c" else GenerationInterrupted):
            run_story(story, story_models, OPTIONS, out, on_step=on_step)
    finally:
        for handle in handles:
            handle.remove()
    assert saboteur.after_strike < FORWARDS_PER_STEP  # stopped within the step it was asked in
    interrupted_shot = at // FORWARDS_PER_SHOT
    before_shot = saboteur.shot_starts[interrupted_shot]
    assert files_under(out) == before_shot  # nothing of the interrupted shot, nothing else touched
    folder = StoryFolder(out)
    assert [folder.is_finished(s) for s in range(SHOTS)] == [s < interrupted_shot for s in range(SHOTS)]

    run_story(story, story_models, OPTIONS, out)  # the same command again
    assert kept(before_shot, files_under(out))  # finished shots were skipped, not rewritten
    same_story(out, uninterrupted)


def test_story_runner_node_cancelled_mid_step_keeps_finished_shots(pack, monkeypatch):
    """The ComfyUI path: Cancel sets the host's flag from outside; ProgressSteps raises at the end of that step."""
    script = call("StoryMemStoryScript", script_file="(script text below)", script=json.dumps(VALID))[0][0]
    arguments = runner_arguments(pack, script, output_folder="cancelled")
    out = host.output_dir() / "cancelled"
    per_shot = SHOT["steps"] * FORWARDS_PER_STEP
    for at in sorted({per_shot + 1, random.Random(3).randrange(per_shot, SHOTS * per_shot)}):
        saboteur = Saboteur(out, at, host.current().interrupt)
        handles = watch([pack.t2v.high, pack.t2v.low, pack.m2v.high, pack.m2v.low], saboteur, monkeypatch)
        try:
            with pytest.raises(GenerationInterrupted):
                call("StoryMemStoryRunner", **arguments)
        finally:
            for handle in handles:
                handle.remove()
        assert saboteur.after_strike < FORWARDS_PER_STEP
        assert files_under(out) == saboteur.shot_starts[at // per_shot]
        assert not any(
            module._forward_hooks for expert in (pack.m2v.high, pack.m2v.low) for module in expert.modules()
        )  # LoRA off
    before = files_under(out)
    (film, bank, path), _ = call("StoryMemStoryRunner", **arguments)
    assert kept(before, files_under(out)) and Path(path).is_file() and film.shape[0] == 5 + 5 + 4


@pytest.mark.parametrize("writer", ["write_mp4", "save_image"])
def test_from_shot_stopped_while_the_new_shot_is_saved_leaves_it_unfinished(
    story, story_models, uninterrupted, tmp_path, monkeypatch, writer
):
    out = tmp_path / "story"
    run_story(story, story_models, OPTIONS, out)
    folder = StoryFolder(out)
    write = getattr(pipeline, writer)

    def ctrl_c_at_shot_2(frames, path, *args, **kwargs):
        if f"shot_{SHOT_2}" in str(path):
            raise KeyboardInterrupt
        return write(frames, path, *args, **kwargs)

    monkeypatch.setattr(pipeline, writer, ctrl_c_at_shot_2)
    with pytest.raises(KeyboardInterrupt):
        run_story(story, story_models, OPTIONS, out, from_shot=1)
    monkeypatch.undo()
    assert [folder.is_finished(s) for s in range(SHOTS)] == [True, False, False]  # not a new video beside the old bank
    before = files_under(out)
    run_story(story, story_models, OPTIONS, out)  # the same command without --from-shot
    assert files_under(out)["shots/shot_002.mp4"] != before["shots/shot_002.mp4"]  # regenerated, not skipped
    same_story(out, uninterrupted)


# ------------------------------------------------------------------ disk full while saving


def fail_when(monkeypatch, owner, name: str, matches) -> None:
    """Make `owner.name(...)` raise ENOSPC when `matches(args)`: the disk fills up at that write."""
    original = getattr(owner, name)

    def failing(*args, **kwargs):
        if matches(args):
            raise ENOSPC
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)


SHOT_2 = "002"
DISK_FULL_AT = {
    "shot-mp4-third-frame": lambda mp: fail_when(
        mp, video._Mp4Encoder, "add", lambda a: a[0].count >= 2 and f"shot_{SHOT_2}" in a[0].container.name
    ),
    "shot-last-frame-png": lambda mp: fail_when(
        mp, Image.Image, "save", lambda a: f"shot_{SHOT_2}_last_frames" in str(a[1])
    ),
    "bank-keyframe-png": lambda mp: fail_when(mp, Image.Image, "save", lambda a: f".after_shot_{SHOT_2}." in str(a[1])),
    "bank-manifest": lambda mp: fail_when(mp, Path, "write_text", lambda a: f".after_shot_{SHOT_2}." in str(a[0])),
    "bank-rename-into-place": lambda mp: fail_when(
        mp, os, "replace", lambda a: str(a[1]).endswith(f"after_shot_{SHOT_2}")
    ),
}


@pytest.mark.parametrize("where", DISK_FULL_AT)
def test_disk_full_while_saving_a_shot_keeps_every_finished_shot_and_bank(
    story, story_models, uninterrupted, tmp_path, monkeypatch, where
):
    out = tmp_path / "story"
    run_story(
        loads_story(json.dumps({**VALID, "scenes": VALID["scenes"][:1]}), "first.json"), story_models, OPTIONS, out
    )  # shots 1-2
    StoryFolder(out).bank(1).rename(out / "stash")  # shot 2 unfinished again, shot 1 finished
    (out / "film.mp4").unlink()
    before = files_under(out)
    DISK_FULL_AT[where](monkeypatch)
    with pytest.raises(WriteError) as error:
        run_story(story, story_models, OPTIONS, out)
    assert isinstance(error.value, OSError) and "free disk space" in str(error.value)
    monkeypatch.undo()
    after = files_under(out)
    assert kept({n: e for n, e in before.items() if not n.startswith(f"shots/shot_{SHOT_2}")}, after)
    assert not StoryFolder(out).is_finished(1) and StoryFolder(out).is_finished(0)
    assert not [p for p in out.rglob(".*") if p.name != LOCK_FILE], "a temporary file or folder was left behind"
    run_story(story, story_models, OPTIONS, out)
    same_story(out, uninterrupted)


def test_disk_full_when_a_bank_is_replaced_keeps_the_previous_bank(tmp_path, monkeypatch):
    folder = save_bank(reference_bank(3), tmp_path / "bank")
    before = files_under(folder)
    fail_when(monkeypatch, os, "replace", lambda a: Path(a[1]) == folder and ".tmp" in str(a[0]))
    with pytest.raises(WriteError, match="a bank saved there before is unchanged"):
        save_bank(reference_bank(1), folder)
    assert files_under(folder) == before and sorted(os.listdir(tmp_path)) == ["bank"]


def test_disk_full_in_the_save_bank_node_keeps_the_saved_bank(pack, monkeypatch):
    call("StoryMemSaveBank", memory=reference_bank(3), name="banks/disk_full")
    before = files_under(host.save_dir() / "banks")
    fail_when(monkeypatch, Image.Image, "save", lambda a: True)
    with pytest.raises(WriteError, match="free disk space"):
        call("StoryMemSaveBank", memory=reference_bank(1), name="banks/disk_full")
    assert files_under(host.save_dir() / "banks") == before


@pytest.mark.parametrize("kind", ["mp4", "png"])
def test_disk_full_mid_file_keeps_the_previous_file(tmp_path, monkeypatch, kind):
    frames = (image_batch(4) * 255).byte()
    path = tmp_path / f"shot.{kind}"
    write = (lambda f: write_mp4(f, path, fps=8)) if kind == "mp4" else (lambda f: save_image(f[0], path))
    write(frames)
    before = files_under(tmp_path)
    if kind == "mp4":
        fail_when(monkeypatch, video._Mp4Encoder, "add", lambda a: a[0].count == 2)
    else:
        fail_when(monkeypatch, Image.Image, "save", lambda a: True)
    with pytest.raises(WriteError, match=f"shot.{kind} could not be written"):
        write(frames.flip(0))
    assert files_under(tmp_path) == before


# ------------------------------------------------------------------ out of GPU memory


def out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 23.6 GiB"
    )


ADVICE = {  # (placement, fp8 weights, plan measured to fit) -> what the message must offer, and must not
    "none-bf16-unmeasured": (
        ("none", False, None),
        ["offload 'experts'", "fp8 weights", "fewer frames"],
        ["offload 'blocks'"],
    ),
    "none-bf16-blocks-fit": (("none", False, "blocks"), ["offload 'blocks'", "fp8 weights"], ["offload 'experts'"]),
    "none-fp8-experts-fit": (("none", True, "experts"), ["offload 'experts'"], ["fp8 weights"]),
    "experts-bf16-unmeasured": (("experts", False, None), ["offload 'blocks'", "fp8 weights"], ["offload 'experts'"]),
    "experts-fp8-none-fits": (("experts", True, "none"), ["offload 'blocks'", "fewer frames"], ["fp8 weights"]),
    "blocks-bf16": (("blocks", False, "blocks"), ["fp8 weights", "fewer frames"], ["offload"]),
    "blocks-fp8": (("blocks", True, None), ["fewer frames, a smaller size or a smaller memory"], ["offload", "fp8"]),
}


@pytest.mark.parametrize("case", ADVICE)
def test_out_of_memory_advice_names_the_next_setting_that_fits(case):
    arguments, offered, not_offered = ADVICE[case]
    advice = memory_advice(*arguments)
    assert all(option in advice for option in offered) and not any(option in advice for option in not_offered), advice


@pytest.mark.parametrize("offload, suggested", [(False, "offload 'experts'"), (True, "offload 'blocks'")])
def test_story_out_of_memory_at_a_shot_keeps_finished_shots_and_names_the_fix(
    story, story_models, uninterrupted, tmp_path, monkeypatch, offload, suggested
):
    out = tmp_path / "story"
    run_story(story, story_models, OPTIONS, out)  # a finished story, then shot 2 on is regenerated on a smaller GPU
    before = files_under(out)
    monkeypatch.setattr(story_models.m2v, "offload", offload)
    monkeypatch.setattr(story_models.m2v.high, "forward", out_of_memory)
    with pytest.raises(OutOfMemory) as error:
        run_story(story, story_models, OPTIONS, out, from_shot=1)
    message = str(error.value)
    assert suggested in message and "finished shots are kept" in message and "Tried to allocate 20.00 GiB" in message
    assert error.value.__suppress_context__ and "Traceback" not in message
    assert files_under(out) == before
    monkeypatch.undo()
    run_story(story, story_models, OPTIONS, out, from_shot=1)
    same_story(out, uninterrupted)


@pytest.mark.parametrize("where", ["memory-shot-dit", "memory-shot-text-encoder", "first-shot-dit"])
def test_shot_node_out_of_memory_is_reported_and_keeps_the_bank(pack, monkeypatch, where):
    bank = reference_bank()
    pixels = [k.image for k in bank.keyframes]
    if where == "memory-shot-text-encoder":
        monkeypatch.setattr(pack.text.encoder.encoder, "forward", out_of_memory)
    else:
        monkeypatch.setattr((pack.t2v if where == "first-shot-dit" else pack.m2v).low, "forward", out_of_memory)
    with pytest.raises(OutOfMemory, match="offload 'experts'"):
        first_shot(pack) if where == "first-shot-dit" else memory_shot(pack, bank)
    assert all(torch.equal(a, b) for a, b in zip(pixels, bank.image_list()))
    assert not any(
        module._forward_hooks for expert in (pack.m2v.high, pack.m2v.low) for module in expert.modules()
    )  # LoRA off
    monkeypatch.undo()
    memory_shot(pack, bank)  # the next run works
