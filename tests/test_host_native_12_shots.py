"""A whole 12-shot story from ONE StoryMem Native Story Runner in a real ComfyUI's executor on CPU (issue 23's
acceptance; test_browser queues it from the page): the shipped `storymem_native_story_runner.json` with its story
swapped for the 12-shot script of twelve_shot_story.py (4 scenes of 3 shots, cuts and continuations), run on tiny
core-loadable experts through ComfyUI's Load Diffusion Model as shipped, and on tiny GGUF experts through
city96/ComfyUI-GGUF's Unet Loader (GGUF) in the loaders' place. Each run writes 12 shots and a film of all their frames;
the memory grows shot by shot up to its maximum and never past it; every bank holds only this story's keyframes (its
reference, and frames of the shots they name); queueing the finished story again samples nothing: on the same executor
(ComfyUI's cache) nothing runs, on a fresh one the runner resumes and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from comfy_host import GGUF_MISSING, missing, require_host, run_in_host
from tiny_gguf import GGUF_HIGH, GGUF_LOW, write_gguf_experts
from twelve_shot_story import CUTS, EXPERT_LOADERS, SHOTS, story_banks, story_workflow

from storymem_core import tiny_models
from storymem_core.choices import GIVEN_FRAMES
from storymem_core.video import read_mp4

FRAMES = 5  # the host script's test size (in_host.TEST_SIZE): 32x32, 5 frames, 2 steps
SIZE = (32, 32)


@pytest.fixture(scope="module", params=EXPERT_LOADERS)
def story_run(request, tmp_path_factory) -> tuple[dict, dict, Path]:
    """(the workflow run, the three runs' records, the story folder) of the 12-shot story on `loader`'s experts."""
    host = require_host()
    if request.param == "gguf" and not (host / "custom_nodes" / "ComfyUI-GGUF" / "nodes.py").is_file():
        missing(GGUF_MISSING)
    scratch = tmp_path_factory.mktemp(request.param)
    tiny_models.write_core_models(scratch / "models")
    if request.param == "gguf":
        write_gguf_experts(scratch / "models")
        for name in (tiny_models.I2V_HIGH, tiny_models.I2V_LOW):  # only the GGUF files can be what is loaded
            (scratch / "models" / "diffusion_models" / name).unlink()
    tiny_models.write_reference_images(scratch / "input", count=1, size=SIZE)
    workflow = story_workflow(request.param)
    (scratch / "workflow.json").write_text(json.dumps(workflow), encoding="utf-8")
    run_in_host("run_story_runner.py", scratch / "workflow.json", scratch, scratch=scratch)
    record = json.loads((scratch / "runs.json").read_text())
    return workflow, record, Path(record["folder"])


def named(keyframe) -> tuple[str, int, int]:
    """A keyframe by where it came from: its source, its shot (0-based, -1: a reference) and its frame there."""
    return keyframe.source, keyframe.shot, keyframe.frame_index


def runner_node(workflow: dict) -> dict:
    return next(n for n in workflow["nodes"] if n["type"] == "StoryMemNativeStoryRunner")


def test_the_story_is_12_shots_in_4_scenes_with_cuts_and_continuations():
    assert SHOTS == 12 and CUTS[0] and not all(CUTS) and sum(CUTS[1:]) >= 2


def test_the_gguf_workflow_swaps_only_the_loaders():
    core, gguf = story_workflow("core"), story_workflow("gguf")
    loaders = [n for n in gguf["nodes"] if n["type"] == "UnetLoaderGGUF"]
    assert [n["widgets_values"] for n in loaders] == [[GGUF_HIGH], [GGUF_LOW]]
    assert not any(n["type"] == "UNETLoader" for n in gguf["nodes"])
    assert gguf["links"] == core["links"] and len(gguf["nodes"]) == len(core["nodes"])
    assert sum(n["type"] == "StoryMemNativeStoryRunner" for n in core["nodes"]) == 1


def test_host_one_native_story_runner_writes_12_shots_and_the_film(story_run):
    workflow, record, folder = story_run
    first = record["runs"]["first"]
    assert first["samplings"] == SHOTS * 2  # each shot: the high-noise expert, then the low-noise one
    assert record["runner"] in first["executed"]
    assert sorted(p.name for p in (folder / "shots").glob("*.mp4")) == [f"shot_{k:03d}.mp4" for k in
                                                                       range(1, SHOTS + 1)]
    assert {p.name for p in (folder / "banks").iterdir()} == {"initial", *(f"after_shot_{k:03d}" for k in
                                                                           range(1, SHOTS + 1))}
    continuation = runner_node(workflow)["widgets_values"][1]  # as shipped: mi2v, given the last frame
    given = GIVEN_FRAMES[continuation]
    per_shot = [FRAMES if cut else FRAMES - given for cut in CUTS]
    for k, frames in enumerate(per_shot, start=1):
        assert read_mp4(folder / "shots" / f"shot_{k:03d}.mp4").shape == (frames, *SIZE, 3)
    assert read_mp4(folder / "film.mp4").shape == (sum(per_shot), *SIZE, 3)
    video = first["shown"][record["runner"]]["storymem_video"][0]
    assert video["filename"] == "film.mp4" and (folder.parent.name, folder.parent.parent.name) == ("native_stories",
                                                                                                   "storymem")


def test_host_the_memory_grows_within_its_maximum_and_holds_only_this_storys_keyframes(story_run):
    _, record, folder = story_run
    settings = json.loads((folder / "memory_settings.json").read_text())
    max_memory, fixed = settings["max_memory"], settings["fixed_memory"]
    banks = story_banks(folder)
    assert [k.source for k in banks[0].keyframes] == ["reference"]  # MR2V: the reference image starts the memory
    sizes = [len(bank) for bank in banks]
    assert all(size <= max_memory for size in sizes) and sizes[-1] == max_memory  # it fills up and stops there
    for before, after in zip(sizes, sizes[1:]):  # every shot adds keyframes until the memory is full
        assert after > before or after == max_memory
    for shot, bank in enumerate(banks[1:]):  # 0-based, as the bank stores it
        assert all(k.source == "reference" and k.shot == -1 or k.source == "generated" and 0 <= k.shot <= shot
                   for k in bank.keyframes)
        assert any(k.shot == shot for k in bank.keyframes)  # the shot's own keyframes are in its bank
        assert all(0 <= k.frame_index < FRAMES for k in bank.keyframes if k.source == "generated")
        assert [k.shot for k in bank.keyframes] == sorted(k.shot for k in bank.keyframes)  # story order
        if len(bank) == max_memory:  # full: the first `fixed` are kept, the others are the most recent
            assert [named(k) for k in bank.keyframes[:fixed]] == [named(k) for k in banks[shot].keyframes[:fixed]]
    assert {k.shot for bank in banks for k in bank.keyframes} == set(range(-1, SHOTS))  # every shot gave keyframes
    # each generated keyframe is the frame of the shot it names: of all the story's frames, that one is nearest to it
    frames = [read_mp4(folder / "shots" / f"shot_{k:03d}.mp4").float() for k in range(1, SHOTS + 1)]
    where = [(shot, frame) for shot, video in enumerate(frames) for frame in range(len(video))]
    story_frames = torch.cat(frames)
    for keyframe in {named(k): k for bank in banks for k in bank.keyframes if k.source == "generated"}.values():
        distance = (story_frames - keyframe.image.float()).abs().mean(dim=(1, 2, 3))  # the mp4's loss stays small
        assert where[int(distance.argmin())] == (keyframe.shot, keyframe.frame_index)
    shown = record["runs"]["first"]["shown"][record["runner"]]["storymem_bank"]  # the runner's strip: the last bank
    assert [(e["source"], e["shot"] - 1, e["frame"]) for e in shown] == [named(k) for k in banks[-1].keyframes]


def test_host_queueing_the_finished_story_again_samples_and_writes_nothing(story_run):
    _, record, _ = story_run
    runs = record["runs"]
    # the same executor (the browser's re-queue): ComfyUI's cache answers, no node runs
    assert runs["requeue"]["executed"] == [] and runs["requeue"]["samplings"] == 0
    assert runs["requeue"]["files"] == runs["first"]["files"]
    # a fresh executor (after a restart): the runner runs, finds all 12 shots finished, samples and writes nothing
    assert record["runner"] in runs["resume"]["executed"] and runs["resume"]["samplings"] == 0
    assert runs["resume"]["files"] == runs["first"]["files"]
