"""`python -m storymem_core validate SCRIPT...`: each story script's shots, or what is wrong with it."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import StoryScriptError
from ..story import check_story_file, shown_text

EXCERPT_CHARS = 70


def _excerpt(prompt: str) -> str:
    flat = shown_text(" ".join(prompt.split()))
    return flat if len(flat) <= EXCERPT_CHARS else flat[: EXCERPT_CHARS - 3] + "..."


def validate_command(paths: list[str]) -> int:
    """List each script's shots or its error (a folder: each .json file in it and below, as ST-Bench ships its
    scripts); 0 when every script is valid, else 2."""
    status = 0
    for path in _scripts(paths):
        try:
            story, warnings = check_story_file(path)
        except StoryScriptError as error:
            print(f"error: {shown_text(str(error))}", file=sys.stderr)
            status = 2
            continue
        shots = story.shots
        print(f"{shown_text(path)}: '{shown_text(story.name)}', {len(story.scenes)} scene(s), {len(shots)} shot(s), "
              f"{len(warnings)} warning(s)")
        for warning in warnings:
            print(f"  warning: {shown_text(warning)}")
        for shot in shots:
            flag = "cut" if shot.cut else "cont"
            print(f"  shot {shot.index + 1:3d}  scene {shot.scene_num:2d}  {flag:4s}  {_excerpt(shot.prompt)}")
    return status


def _scripts(paths: list[str]) -> list[str]:
    """`paths`, each folder among them replaced by the .json files in it and below, in name order (a folder with none
    stays, for its error to say so)."""
    scripts = []
    for path in paths:
        folder = Path(path)
        found = sorted(str(file) for file in folder.rglob("*.json")) if folder.is_dir() else []
        scripts += found or [path]
    return scripts
