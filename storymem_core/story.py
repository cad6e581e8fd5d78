"""Story scripts: the ST-Bench JSON that StoryMem reads, validated into a `Story` of `Shot`s.

Schema (plain JSON, UTF-8, a byte-order mark is tolerated):

    {"story_name": str (optional),
     "story_overview": str,
     "scenes": [{"scene_num": int,                        >= 1, unique
                 "video_prompts": [str, ...],             one shot per prompt
                 "cut": [bool, ...],                      true: the shot starts with a cut
                 "first_frame_prompt": [str, ...]}]}      optional, one per shot

`cut` entries may also be the strings "true"/"false" (any case). A shot without a cut continues the
previous shot (MI2V / MM2V), so the story's very first shot must be a cut: there is nothing before it.
Unknown keys are reported as warnings, never rejected, so scripts with extra notes still run.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StoryScriptError
from .safe_files import read_bytes

log = logging.getLogger(__name__)

STORY_KEYS = ("story_name", "story_overview", "scenes")
SCENE_KEYS = ("scene_num", "video_prompts", "cut", "first_frame_prompt")


@dataclass(frozen=True)
class Shot:
    """One generated clip. `index` counts from 0 across the story; `index_in_scene` from 0 in its scene."""

    index: int
    scene_num: int
    index_in_scene: int
    prompt: str
    cut: bool
    first_frame_prompt: str | None = None


@dataclass(frozen=True)
class Scene:
    scene_num: int
    shots: tuple[Shot, ...]


@dataclass(frozen=True)
class Story:
    name: str
    overview: str
    scenes: tuple[Scene, ...]

    @property
    def shots(self) -> tuple[Shot, ...]:
        """Every shot in story order (the order they are generated in)."""
        return tuple(shot for scene in self.scenes for shot in scene.shots)


def _fail(where: str, problem: str, fix: str) -> StoryScriptError:
    return StoryScriptError(f"{where}: {problem}; {fix}.")


def _shown(value: Any) -> str:
    text = shown_text(json.dumps(value, ensure_ascii=False))
    return text if len(text) <= 40 else text[:37] + "..."


def _described(value: Any) -> str:
    if value is None:
        return "null"
    kind = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(type(value), "a number")
    return f"{kind} {_shown(value)}"


def shown_text(text: str) -> str:
    """`text` with control characters and escape sequences written as escapes, so a prompt shown in a log, a progress
    bar or `validate` cannot move the cursor, recolour the terminal or break a line."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def _expect(value: Any, kind: type, what: str, where: str, example: str) -> Any:
    """`value` if it is of `kind` (booleans never count as numbers), else the error naming `what`."""
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        if isinstance(value, str):
            _check_encodable(value, what, where)
        return value
    raise _fail(where, f"{what} is {_described(value)}", f"make it {example}")


def _check_encodable(text: str, what: str, where: str) -> None:
    """JSON can spell half of a character (a lone surrogate such as \\ud800); no file, log or tokenizer can take it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = text[error.start:error.end]
        raise _fail(where, f"{what} holds {shown_text(bad)}, half of a character (a lone surrogate)",
                    "write the character itself, or both halves of its surrogate pair") from None


def _cut_flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _fail(where, f"cut must be true or false, got {_shown(value)}",
                "write true (a new camera shot) or false (continue the previous shot)")


def _unknown_keys(data: dict, known: tuple[str, ...], where: str) -> list[str]:
    return [f"{where}: unknown key '{shown_text(key)}' is ignored (known keys: {', '.join(known)})." for key in data
            if key not in known]


def _parse_scene(raw: Any, position: int, first_index: int, source: str) -> tuple[Scene, list[str]]:
    where = f"{source}, scenes[{position}]"
    scene = _expect(raw, dict, f"scenes[{position}]", source,
                    'an object {"scene_num": ..., "video_prompts": [...], "cut": [...]}')
    for key in ("scene_num", "video_prompts", "cut"):
        if key not in scene:
            raise _fail(where, f"the field '{key}' is missing", f"add '{key}' to this scene (see examples/stories/)")
    scene_num = _expect(scene["scene_num"], int, "scene_num", where, "a whole number such as 1")
    if scene_num < 1:
        raise _fail(where, f"scene_num is {scene_num}", "number scenes from 1")
    where = f"{source}, scene {scene_num}"
    prompts = _expect(scene["video_prompts"], list, "video_prompts", where, 'a list of strings ["...", "..."]')
    cuts = _expect(scene["cut"], list, "cut", where, "a list of true/false, one per prompt")
    if not prompts:
        raise _fail(where, "video_prompts is empty", "give the scene at least one shot prompt or remove the scene")
    if len(cuts) != len(prompts):
        raise _fail(
            where, f"cut has {len(cuts)} entries but video_prompts has {len(prompts)}",
            "give exactly one true/false per prompt",
        )
    first_frame_prompts = scene.get("first_frame_prompt")
    if first_frame_prompts is not None:
        _expect(first_frame_prompts, list, "first_frame_prompt", where, "a list of strings, one per prompt")
        if len(first_frame_prompts) != len(prompts):
            raise _fail(
                where,
                f"first_frame_prompt has {len(first_frame_prompts)} entries but video_prompts has {len(prompts)}",
                "give one per prompt or leave first_frame_prompt out",
            )
    shots = []
    for k, (prompt, cut) in enumerate(zip(prompts, cuts)):
        shot_where = f"{where}, shot {k + 1}"
        _expect(prompt, str, f"video_prompts[{k}]", shot_where, "a string")
        if not prompt.strip():
            raise _fail(shot_where, f"video_prompts[{k}] is empty", "describe what the shot shows")
        image_prompt = None
        if first_frame_prompts is not None:
            image_prompt = _expect(first_frame_prompts[k], str, f"first_frame_prompt[{k}]", shot_where, "a string")
        shots.append(Shot(first_index + k, scene_num, k, prompt,
                          _cut_flag(cut, f"{shot_where}, cut[{k}]"), image_prompt))
    return Scene(scene_num, tuple(shots)), _unknown_keys(scene, SCENE_KEYS, where)


def story_json(story: Story) -> dict:
    """`story` as a script (the inverse of `parse_story`): what a story folder keeps of the script it was made from."""
    scenes = []
    for scene in story.scenes:
        fields = {"scene_num": scene.scene_num, "video_prompts": [shot.prompt for shot in scene.shots],
                  "cut": [shot.cut for shot in scene.shots]}
        if any(shot.first_frame_prompt is not None for shot in scene.shots):
            fields["first_frame_prompt"] = [shot.first_frame_prompt or "" for shot in scene.shots]
        scenes.append(fields)
    return {"story_name": story.name, "story_overview": story.overview, "scenes": scenes}


def parse_story(data: dict, source: str = "<text>") -> tuple[Story, list[str]]:
    """Validate decoded JSON into a `Story`; returns it with warnings (unknown keys), which are also logged.

    `source` names the script in messages; without `story_name` the story is named after the file.
    """
    story, warnings = _validate(data, source)
    for warning in warnings:
        log.warning(warning)
    return story, warnings


def _validate(data: Any, source: str) -> tuple[Story, list[str]]:
    story_data = _expect(data, dict, "the story", source, 'an object {"story_overview": ..., "scenes": [...]}')
    for key in ("story_overview", "scenes"):
        if key not in story_data:
            raise _fail(source, f"the field '{key}' is missing",
                        f"add '{key}' at the top level (see examples/stories/)")
    default_name = "story" if source.startswith("<") else Path(source).stem
    name = _expect(story_data.get("story_name", default_name), str, "story_name", source, "a string")
    overview = _expect(story_data["story_overview"], str, "story_overview", source, "a string")
    raw_scenes = _expect(story_data["scenes"], list, "scenes", source, "a list of scene objects")
    if not raw_scenes:
        raise _fail(source, "scenes is empty", "add at least one scene with one shot")
    warnings = _unknown_keys(story_data, STORY_KEYS, source)
    scenes: list[Scene] = []
    for position, raw in enumerate(raw_scenes):
        scene, scene_warnings = _parse_scene(raw, position, sum(len(s.shots) for s in scenes), source)
        if any(s.scene_num == scene.scene_num for s in scenes):
            raise _fail(f"{source}, scenes[{position}]", f"scene_num {scene.scene_num} is used twice",
                        "give every scene its own number")
        scenes.append(scene)
        warnings += scene_warnings
    if not scenes[0].shots[0].cut:
        raise _fail(
            f"{source}, scene {scenes[0].scene_num}, shot 1",
            "cut[0] is false but the story's first shot has no shot before it to continue",
            "set it to true",
        )
    return Story(name, overview, tuple(scenes)), warnings


def _decode(text: str, source: str) -> Any:
    try:
        return json.loads(text.removeprefix("\ufeff"))
    except json.JSONDecodeError as error:
        raise _fail(
            source, f"not valid JSON at line {error.lineno}, column {error.colno} ({error.msg})",
            "fix the syntax there (JSON allows no comments, no trailing commas and only double quotes)",
        ) from None
    except RecursionError:
        raise _fail(source, "the JSON is nested too deeply to read",
                    "a story script needs only a few levels (story, scenes, prompts)") from None
    except ValueError as error:  # e.g. an integer of more than 4300 digits
        raise _fail(source, f"the JSON holds a value that cannot be read ({str(error).split(':')[0]})",
                    "write plain numbers and strings") from None


def _read_text(path: str | os.PathLike) -> str:
    try:
        return read_bytes(path, "story script", StoryScriptError).decode("utf-8")
    except IsADirectoryError:
        raise _fail(str(path), "it is a folder, not a story script", "give one script's path (validate also takes "
                    "folders)") from None
    except (FileNotFoundError, NotADirectoryError):
        raise _fail(str(path), "no story script file is there", "check the path") from None
    except UnicodeDecodeError:
        raise _fail(str(path), "the file is not UTF-8 text", "save it as UTF-8") from None


def loads_story(text: str, source: str = "<text>") -> Story:
    """Parse a story script from JSON text; warnings are logged."""
    return parse_story(_decode(text, source), source)[0]


def load_story(path: str | os.PathLike) -> Story:
    """Read and validate a story script file; warnings are logged."""
    return loads_story(_read_text(path), str(path))


def check_story_file(path: str | os.PathLike) -> tuple[Story, list[str]]:
    """A story script file checked, with its warnings returned rather than logged (for `validate` to list)."""
    return _validate(_decode(_read_text(path), str(path)), str(path))
