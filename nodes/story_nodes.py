"""Story nodes: read and validate a story script, and pick one shot's prompt and cut flag from it."""

from __future__ import annotations

import json
from pathlib import PurePosixPath

from storymem_core.bank_files import BANK_FILE
from storymem_core.errors import StoryScriptError
from storymem_core.story import Story, load_story, loads_story

from . import host
from .types import STORY

CATEGORY = "StoryMem/story"
SCRIPT_TEXT = "(script text below)"

EXAMPLE_SCRIPT = json.dumps({
    "story_name": "The Lighthouse Keeper",
    "story_overview": "An old lighthouse keeper climbs his tower at dusk and lights the lamp as a storm rolls in.",
    "scenes": [
        {"scene_num": 1, "video_prompts": [
            "Wide shot of a white lighthouse on a rocky cliff at dusk, an old keeper in a yellow raincoat walking up "
            "the path, waves crashing below.",
        ], "cut": [True]},
        {"scene_num": 2, "video_prompts": [
            "Inside the lighthouse, the old keeper in the yellow raincoat climbs a spiral iron staircase, lantern in "
            "hand, warm light on stone walls.",
            "The old keeper in the yellow raincoat reaches the top and lights the great lamp; its beam sweeps over the "
            "stormy sea.",
        ], "cut": [True, False]},
    ],
}, indent=2)


def story_files() -> list[str]:
    """Story scripts (.json) in the storymem folders; saved banks' manifests are not scripts."""
    return [name for name in host.storymem_names() if name.lower().endswith(".json")
            and PurePosixPath(name).name != BANK_FILE]


def _shot_list(story: Story) -> list[dict]:
    return [{"number": shot.index + 1, "scene": shot.scene_num, "cut": shot.cut, "prompt": shot.prompt}
            for shot in story.shots]


class StoryScript:
    DESCRIPTION = ("Reads a story script (ST-Bench JSON: overview, scenes, shot prompts, cut flags) from a file or the "
                   "text box and checks it.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "script_file": ([SCRIPT_TEXT, *story_files()],
                            {"default": SCRIPT_TEXT, "tooltip": "A story JSON in a storymem folder (output/storymem or "
                                                                "models/storymem), or the text below."}),
            "script": ("STRING",
                       {"multiline": True, "default": EXAMPLE_SCRIPT,
                        "tooltip": "The story as JSON, used when no file is chosen."}),
        }}

    RETURN_TYPES = (STORY, "INT", "STRING")
    RETURN_NAMES = ("story", "shot_count", "overview")
    OUTPUT_TOOLTIPS = ("The validated story.", "How many shots it has.", "The story overview.")
    FUNCTION = "read"
    CATEGORY = CATEGORY

    @classmethod
    def IS_CHANGED(cls, script_file: str, script: str):
        if script_file == SCRIPT_TEXT:
            return script
        path = host.storymem_path(script_file, StoryScriptError)
        return f"{path}:{path.stat().st_mtime_ns}"

    def read(self, script_file: str, script: str) -> dict:
        if script_file == SCRIPT_TEXT:
            story = loads_story(script)
        else:
            story = load_story(host.storymem_path(script_file, StoryScriptError))
        return {"ui": {"storymem_shots": _shot_list(story)}, "result": (story, len(story.shots), story.overview)}


class StoryShot:
    DESCRIPTION = ("One shot of the story by number: its prompt, whether it starts with a cut, and its number (wire "
                   "them into a shot node).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "story": (STORY, {"tooltip": "The story from Story Script."}),
            "shot_number": ("INT",
                            {"default": 1, "min": 1, "max": 999,
                             "tooltip": "Which shot, counting from 1 across all scenes."}),
        }}

    RETURN_TYPES = ("STRING", "BOOLEAN", "INT")
    RETURN_NAMES = ("prompt", "cut", "shot_number")
    OUTPUT_TOOLTIPS = (
        "The shot's prompt.",
        "True when the shot starts with a cut (memory only, M2V); false when it continues the previous shot (MI2V / "
        "MM2V).",
        "The shot's number, for the shot node.",
    )
    FUNCTION = "pick"
    CATEGORY = CATEGORY

    def pick(self, story: Story, shot_number: int) -> tuple:
        shots = story.shots
        if not 1 <= shot_number <= len(shots):
            raise StoryScriptError(f"shot_number {shot_number} does not exist: '{story.name}' has shots 1 to "
                                   f"{len(shots)}.")
        shot = shots[shot_number - 1]
        return (shot.prompt, shot.cut, shot_number)


NODE_CLASS_MAPPINGS = {"StoryMemStoryScript": StoryScript, "StoryMemStoryShot": StoryShot}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryMemStoryScript": "Story Script", "StoryMemStoryShot": "Story Shot"}
