"""The 12-shot story issue 23's acceptance runs from one Native Story Runner, in the host (test_host_native_12_shots)
and from the browser (test_browser): the shipped `storymem_native_story_runner.json` with its story swapped for a script
written here (4 scenes of 3 shots, cuts and continuations), its experts loaded as shipped or by the GGUF loader."""

from __future__ import annotations

import json
from pathlib import Path

from tiny_gguf import GGUF_HIGH, GGUF_LOW

from storymem_core import tiny_models
from storymem_core.bank_files import load_bank
from storymem_core.memory import MemoryBank
from storymem_core.story_folder import StoryFolder

SHIPPED = Path(__file__).resolve().parent.parent / "workflows" / "native" / "storymem_native_story_runner.json"

# Our own 12-shot script: 4 scenes of 3 shots; each scene opens with a cut, the others cut or continue the shot before.
SCENES = [
    (["A red kite rises above a windy hill at noon, a girl in a green scarf holding its string.",
      "The girl in the green scarf runs downhill, the red kite pulling her along the grass.",
      "She stops at a stone wall, breathless, the red kite still dancing overhead."],
     [True, False, False]),
    (["A small bakery at dawn, warm light in the window, flour drifting in the air.",
      "The girl in the green scarf pushes the bakery door open, a bell ringing above her.",
      "Close-up of her hands taking a round loaf from the baker across the counter."],
     [True, False, True]),
    (["A rainy town square at dusk, umbrellas crossing under a clock tower.",
      "The girl in the green scarf shelters under the clock tower, the loaf wrapped in paper.",
      "She looks up as the clock strikes six, rain dripping from the arches."],
     [True, True, False]),
    (["Night on the windy hill, the red kite tangled in a lone oak tree under the moon.",
      "The girl in the green scarf climbs the oak and frees the kite from its branches.",
      "She sits on the branch with the kite in her lap, the town's lights glowing far below."],
     [True, False, False]),
]
STORY = {"story_name": "The Red Kite", "story_overview": "A girl follows her red kite through a day in a small town.",
         "scenes": [{"scene_num": n, "video_prompts": prompts, "cut": cuts}
                    for n, (prompts, cuts) in enumerate(SCENES, start=1)]}
CUTS = [cut for _, cuts in SCENES for cut in cuts]
SHOTS = len(CUTS)
EXPERT_LOADERS = ("core", "gguf")  # story_workflow: as shipped, or by the GGUF loader


def story_workflow(loader: str) -> dict:
    """The shipped Native Story Runner workflow with the 12-shot script, its experts loaded by `loader`: "core" as
    shipped (Load Diffusion Model), "gguf" by Unet Loader (GGUF) in each Load Diffusion Model's place."""
    workflow = json.loads(SHIPPED.read_text(encoding="utf-8"))
    script = next(n for n in workflow["nodes"] if n["type"] == "StoryMemStoryScript")
    script["widgets_values"][1] = json.dumps(STORY, indent=2)
    if loader == "gguf":
        gguf_names = {tiny_models.I2V_HIGH: GGUF_HIGH, tiny_models.I2V_LOW: GGUF_LOW}
        for node in (n for n in workflow["nodes"] if n["type"] == "UNETLoader"):
            node["type"], node["widgets_values"] = "UnetLoaderGGUF", [gguf_names[node["widgets_values"][0]]]
    return workflow


def story_banks(folder: Path) -> list[MemoryBank]:
    """The banks of a finished 12-shot story folder: the one it starts with, then the bank after each shot."""
    return [load_bank(StoryFolder(folder).bank(shot)) for shot in range(-1, SHOTS)]
