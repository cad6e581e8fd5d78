"""`python -m storymem_core demo`: a built-in 3-shot story on tiny random-weight models, on the CPU.

It walks the same path as a real story (files found in a ComfyUI-style models folder, T2V first shot,
an MI2V shot that continues the last frame, an M2V shot after a cut, keyframes into the bank after
each shot, resumable output folder), so a new user sees every artefact in a minute. The models are
random, so the pixels are noise; the tiny keyframe encoder still tells frames apart by their pixels, so the
memory grows shot by shot. Commands live in storymem_core/commands/ (see docs/architecture.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..bank_files import load_bank
from ..choices import FirstShot, ShotMode
from ..errors import StoryFolderError
from ..files import atomic_write_path, staging_folder
from ..memory import MemoryBank
from ..presets import SamplerValues
from ..story import loads_story
from ..story_folder import StoryFolder, check_output_folder
from ..story_models import LoadOptions
from ..story_plan import StoryInputs, plan_story
from ..tiny_models import write_tiny_models
from .story import CLI_NAMES, run_story_files

DEMO_STORY = {
    "story_name": "The Blue Kite",
    "story_overview": "An old man mends a blue kite in his workshop, flies it from a windy hill, and watches it land "
                      "in a field of sunflowers.",
    "scenes": [
        {
            "scene_num": 1,
            "video_prompts": [
                "An old man with a white beard glues a torn blue kite on a cluttered workbench, afternoon light "
                "through dusty windows.",
                "He lifts the mended blue kite and carries it out of the workshop door into the wind, smiling.",
            ],
            "cut": [True, False],
        },
        {
            "scene_num": 2,
            "video_prompts": [
                "Wide shot of a green hill under racing clouds: the old man runs and the blue kite climbs high into "
                "the sky.",
            ],
            "cut": [True],
        },
    ],
}
DEMO_SIZE_WH = (64, 64)
DEMO_FRAMES = 9
DEMO_STEPS = 4
DEMO_SHOTS = sum(len(scene["video_prompts"]) for scene in DEMO_STORY["scenes"])


def demo_folder_name(seed: int) -> str:
    """The demo story's folder: `story` for seed 0, `story-seed<N>` for another, which makes a story of its own from
    its own models (as `models-seed<N>`) rather than finding seed 0's shots already made."""
    return "story" if seed == 0 else f"story-seed{seed}"


def demo_inputs(out: Path, seed: int) -> StoryInputs:
    """StoryMem's settings at a size tiny models run in seconds: T2V first shot, MI2V for shots without a cut."""
    steps = SamplerValues(steps=DEMO_STEPS)
    return StoryInputs(
        story=loads_story(json.dumps(DEMO_STORY), "the demo story"), out=out / demo_folder_name(seed), names=CLI_NAMES,
        first_shot=FirstShot.T2V, continuation=ShotMode.MI2V, seed=seed, m2v=steps, t2v=steps, size_wh=DEMO_SIZE_WH,
        frames=DEMO_FRAMES,
    )


def _holds(path: Path, content: bytes) -> bool:
    """`path` is a regular file with exactly `content` (compared by size first: a stranger's file may be huge)."""
    return path.is_file() and path.stat().st_size == len(content) and path.read_bytes() == content


def run_demo(out: str | Path, seed: int = 0) -> int:
    out = check_output_folder(out)
    plan = plan_story(demo_inputs(out, seed))  # before the models are written: a bad --seed must leave nothing behind
    script = out / "story.json"
    story_text = json.dumps(DEMO_STORY, indent=2, ensure_ascii=False)
    if os.path.lexists(script) and not _holds(script, story_text.encode()):
        raise StoryFolderError(f"--out {out} holds a story.json that is not the demo's: choose a new or empty folder "
                               "for the demo.")
    models_dir = out / f"models-seed{seed}"
    if not models_dir.is_dir():  # written aside and renamed in: an interrupted first run leaves no half folder
        out.mkdir(parents=True, exist_ok=True)
        staging = staging_folder(models_dir)
        write_tiny_models(staging, seed)
        os.replace(staging, models_dir)
    if not os.path.lexists(script):
        with atomic_write_path(script) as tmp:
            tmp.write_text(story_text, encoding="utf-8")
    film = run_story_files(plan, models_dir, LoadOptions(device=torch.device("cpu")))
    folder = StoryFolder(film.parent)
    print(f"demo film: {film}")
    print(f"shots: {folder.root / 'shots'}; memory banks: {folder.root / 'banks'}")
    print(f"memory after the last shot: {memory_summary(load_bank(folder.bank(DEMO_SHOTS - 1)))}; contact "
          f"sheet: {folder.contact_sheet}")
    print("The models are tiny and random, so the pixels are noise: real stories need the Wan2.2 weights (see README).")
    return 0


def memory_summary(memory: MemoryBank) -> str:
    """How many keyframes the memory holds and which shots gave them (1-based, as the shot lines count)."""
    shots = sorted({keyframe.shot + 1 for keyframe in memory.keyframes})
    return f"{len(memory)} keyframe(s) from shot(s) {', '.join(map(str, shots))}"
