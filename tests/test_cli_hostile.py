"""Hostile command lines: each row is what a user can type, and the promise for it: exit 2, one or two lines naming
the input and the fix, no traceback, no model looked for when the check can come first, and no file of a finished
story or a foreign folder changed (bytes and mtimes compared before and after).

The finished story is the demo's (tiny random models, the real story command). `docs/reliability.md` counts the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from helpers import files_under

from storymem_core.commands import story as story_command
from storymem_core.commands.cli import _parser, main
from storymem_core.commands.demo import DEMO_FRAMES, DEMO_SIZE_WH, DEMO_STEPS, DEMO_STORY
from storymem_core.commands.story import StoryProgress
from storymem_core.limits import MAX_SEED
from storymem_core.story_folder import StoryFolder

DEMO_FLAGS = [
    "--size",
    "x".join(map(str, DEMO_SIZE_WH)),
    "--frames",
    str(DEMO_FRAMES),
    "--steps",
    str(DEMO_STEPS),
    "--mi2v",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A finished 3-shot story made by `demo` (its models in models-seed0/, its script story.json, its folder
    story/)."""
    out = tmp_path_factory.mktemp("demo")
    old_umask = os.umask(0o022)
    try:
        assert main(["demo", "--out", str(out)]) == 0
    finally:
        os.umask(old_umask)
    return out


def script_with(tmp_path: Path, change) -> Path:
    story = json.loads(json.dumps(DEMO_STORY))
    change(story)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(story, ensure_ascii=False), encoding="utf-8")
    return path


def edit_shot_2(story):
    story["scenes"][0]["video_prompts"][1] = "He drops the kite."


def drop_last_shot(story):
    story["scenes"] = story["scenes"][:1]


def continuing_shot(story):
    story["scenes"][1]["cut"] = [False]


def with_escape(story):
    story["scenes"][0]["video_prompts"][0] = "A kite \x1b[2J\x1b[31mred\x07 and\rgone"


def refused(capsys, argv: list[str], fragment: str) -> str:
    """Run the CLI; it must exit 2 with one or two lines holding `fragment` and no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]  # tqdm bars are not messages
    assert fragment in err and "Traceback" not in err and 1 <= len(lines) <= 2, err
    return err


@pytest.fixture
def no_models(monkeypatch):
    monkeypatch.setattr(
        story_command, "find_model_files", lambda *args: pytest.fail("models were looked for before the check")
    )


def story_argv(demo: Path, out: Path | str, *extra: str, script: Path | None = None) -> list[str]:
    return [
        "story",
        str(script or demo / "story.json"),
        "--models-dir",
        str(demo / "models-seed0"),
        "--out",
        str(out),
        *extra,
    ]


# ------------------------------------------------------------------ --out is not a folder we may write


def symlink_loop(tmp_path: Path) -> Path:
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    return tmp_path / "loop_a"


OUT_ROWS = {
    "a-file": (lambda demo, tmp: demo / "story.json", "is a file, not a folder"),
    "dev-null": (lambda demo, tmp: Path("/dev/null"), "is a file, not a folder"),
    "under-a-file": (lambda demo, tmp: demo / "story.json" / "out", "which is a file"),
    "proc": (lambda demo, tmp: Path("/proc/storymem-out"), "cannot be written"),
    "sysfs": (lambda demo, tmp: Path("/sys/storymem-out/story"), "cannot be written"),
    "symlink-loop": (lambda demo, tmp: symlink_loop(tmp), "broken link"),
    "dangling-link": (
        lambda demo, tmp: (tmp / "dangling").symlink_to(tmp / "nowhere") or tmp / "dangling",
        "broken link",
    ),
    "name-too-long": (lambda demo, tmp: tmp / ("x" * 300) / "story", "cannot be used (File name too long)"),
}


@pytest.mark.parametrize("command", ["story", "demo"])
@pytest.mark.parametrize("row", OUT_ROWS)
def test_out_that_is_no_writable_folder_is_refused_first(demo, tmp_path, capsys, no_models, row, command):
    make, fragment = OUT_ROWS[row]
    out = make(demo, tmp_path)
    before = files_under(demo)
    argv = story_argv(demo, out, *DEMO_FLAGS) if command == "story" else ["demo", "--out", str(out)]
    err = refused(capsys, argv, fragment)
    assert "--out" in err and files_under(demo) == before


def test_a_folder_of_foreign_files_is_never_written_into(demo, tmp_path, capsys, no_models):
    foreign = tmp_path / "holiday"
    foreign.mkdir()
    (foreign / "beach.jpg").write_bytes(b"not ours")
    before = files_under(foreign)
    refused(capsys, story_argv(demo, foreign, *DEMO_FLAGS), "not a StoryMem story")
    assert files_under(foreign) == before


def test_demo_refuses_a_folder_whose_story_json_is_not_the_demos(tmp_path, capsys, no_models):
    (tmp_path / "story.json").write_text('{"mine": true}')
    before = files_under(tmp_path)
    refused(capsys, ["demo", "--out", str(tmp_path)], "not the demo's")
    assert files_under(tmp_path) == before


def test_demo_with_a_bad_seed_writes_nothing(tmp_path, capsys):
    refused(capsys, ["demo", "--out", str(tmp_path / "demo"), "--seed", "-5"], "seed -5 is outside")
    assert not (tmp_path / "demo").exists()


# ------------------------------------------------------------------ a finished story, a run that would not continue it

FOLDER_ROWS = {
    "other-script": (lambda tmp: ["--out-script", edit_shot_2], "--from-shot 2"),
    "fewer-shots": (lambda tmp: ["--out-script", drop_last_shot], "has 3 made from another one"),
    "other-size": (lambda tmp: ["--size", "80x64"], "never mixes sizes"),
    "other-size-from-shot-2": (
        lambda tmp: ["--size", "80x64", "--from-shot", "2"],
        "--from-shot 1 to remake every shot",
    ),
    "other-frames": (lambda tmp: ["--frames", "13"], "--frames 13 differs from the 9"),
    "other-script-from-shot-3": (lambda tmp: ["--out-script", edit_shot_2, "--from-shot", "3"], "from shot 2 on"),
    "other-memory": (lambda tmp: ["--max-memory", "5"], "--max-memory 5 differs"),
    "other-placement": (lambda tmp: ["--memory-positions", "first-release"], "never mixes placements"),
    "other-placement-from-shot-2": (
        lambda tmp: ["--memory-positions", "first-release", "--from-shot", "2"],
        "--from-shot 1 to remake every shot with first-release",
    ),
}


@pytest.mark.parametrize("row", FOLDER_ROWS)
def test_a_run_that_would_not_continue_a_finished_story_is_refused_before_models_load(
    demo, tmp_path, capsys, no_models, row
):
    changes, fragment = FOLDER_ROWS[row]
    flags = dict(zip(DEMO_FLAGS[::2], DEMO_FLAGS[1::2]))
    flags.pop("--mi2v", None)
    extra, script = changes(tmp_path), None
    if extra[:1] == ["--out-script"]:
        script, extra = script_with(tmp_path, extra[1]), extra[2:]
    flags.update(dict(zip(extra[::2], extra[1::2])))
    argv = story_argv(demo, demo / "story", *[x for item in flags.items() for x in item], "--mi2v", script=script)
    before = files_under(demo)
    refused(capsys, argv, fragment)
    assert files_under(demo) == before


def test_a_no_op_rerun_leaves_every_file_and_the_film_as_they_were(demo, capsys, monkeypatch):
    before = files_under(demo)

    def no_loading(*args):
        raise AssertionError("models loaded for a story with nothing to make")

    monkeypatch.setattr(story_command, "load_story_models", no_loading)
    assert main(story_argv(demo, demo / "story", *DEMO_FLAGS, "--seed", "7")) == 0
    assert files_under(demo) == before
    assert "all 3 shots are already made in" in capsys.readouterr().out  # so --seed 7 changed nothing, and says so


def test_a_finished_story_without_its_film_gets_it_back_without_loading_a_model(demo, tmp_path, monkeypatch):
    story_dir = shutil.copytree(demo / "story", tmp_path / "story")
    film = (story_dir / "film.mp4").read_bytes()
    (story_dir / "film.mp4").unlink()

    def no_loading(*args):
        raise AssertionError("models loaded to join a film")

    monkeypatch.setattr(story_command, "load_story_models", no_loading)
    assert main(story_argv(demo, story_dir, *DEMO_FLAGS)) == 0
    assert len((story_dir / "film.mp4").read_bytes()) == len(film)


def test_from_shot_past_the_first_unmade_shot_says_where_the_story_starts(demo, tmp_path, capsys):
    assert main(story_argv(demo, tmp_path / "new", *DEMO_FLAGS, "--from-shot", "2")) == 0
    assert "--from-shot 2: shot 1 is not made yet, so the story starts there." in capsys.readouterr().out
    assert StoryFolder(tmp_path / "new").is_finished(0)


def test_a_script_with_shots_added_continues_the_story(demo, tmp_path, capsys):
    story_dir = tmp_path / "story"
    import shutil

    shutil.copytree(demo / "story", story_dir)
    before = files_under(story_dir)
    longer = script_with(
        tmp_path, lambda s: s["scenes"].append({"scene_num": 3, "video_prompts": ["The kite lands."], "cut": [True]})
    )
    assert main(story_argv(demo, story_dir, *DEMO_FLAGS, script=longer)) == 0
    after = files_under(story_dir)
    assert all(after[name] == entry for name, entry in before.items() if name.startswith(("banks/", "shots/")))
    assert "shots/shot_004.mp4" in after and after["film.mp4"] != before["film.mp4"]
    kept = json.loads((story_dir / "script.json").read_text())  # the script the folder keeps now has the new shot
    assert kept["scenes"][-1]["video_prompts"] == ["The kite lands."]


# ------------------------------------------------------------------ numbers

NUMBER_ROWS = {
    "shift-nan": (["--shift", "nan"], "shift nan"),
    "shift-inf": (["--shift", "inf"], "shift inf"),
    "shift-minus-inf": (["--shift=-inf"], "shift -inf"),
    "shift-huge": (["--shift", "1e300"], "outside 0.1 to 100"),
    "guide-nan": (["--guide", "nan"], "guide (CFG) nan"),
    "guide-inf": (["--guide", "inf"], "guide (CFG) inf"),
    "steps-huge": (["--steps", "100000000"], "steps 100000000 is outside 1 to 1000"),
    "frames-huge": (["--frames", "1000001"], "frames 1000001 is outside"),
    "frames-not-4n1": (["--frames", "8"], "4n+1"),
    "size-huge": (["--size", "100000x100000"], "size (its longer side) 100000"),
    "size-zero": (["--size", "0x0"], "size (its longer side) 0 is outside 16"),
    "size-words": (["--size", "bigxsmall"], "not WIDTHxHEIGHT"),
    "size-3d": (["--size", "64x64x64"], "not WIDTHxHEIGHT"),
    "size-digits": (["--size", "9" * 5000 + "x64"], "not WIDTHxHEIGHT"),
    "seed-negative": (["--seed", "-1"], "seed -1 is outside"),
    "seed-too-big": (["--seed", str(MAX_SEED + 1)], "is outside 0 to"),
    "seed-of-last-shot-too-big": (["--seed", str(MAX_SEED)], "each shot adds 1"),
    "memory-huge": (["--max-memory", "100000000"], "max memory 100000000"),
    "fixed-negative": (["--fixed-memory", "-1"], "fixed memory -1"),
    "mm2v-frames-5": (["--mm2v", "--frames", "5"], "--frames 5 leaves no new frame"),
    "mi2v-frames-1": (["--mi2v", "--frames", "1"], "--frames 1 leaves no new frame"),
}


@pytest.mark.parametrize("row", NUMBER_ROWS)
def test_numbers_out_of_range_are_refused_before_models_load(demo, tmp_path, capsys, no_models, row):
    extra, fragment = NUMBER_ROWS[row]
    refused(capsys, story_argv(demo, tmp_path / "out", *extra), fragment)
    assert not (tmp_path / "out").exists()


def test_mode_check_looks_at_every_shot_not_only_the_second(demo, tmp_path, capsys, no_models):
    script = script_with(tmp_path, continuing_shot)  # only shot 3 continues; shot 2 is a cut
    script_data = json.loads(script.read_text())
    script_data["scenes"][0]["cut"] = [True, True]
    script.write_text(json.dumps(script_data))
    refused(capsys, story_argv(demo, tmp_path / "out", "--mm2v", "--frames", "5", script=script), "shot 3 continues")


# ------------------------------------------------------------------ text


def test_prompts_with_escape_sequences_are_shown_escaped(tmp_path, capsys):
    script = script_with(tmp_path, with_escape)
    assert main(["validate", str(script)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert "\\x1b[2J" in out


def test_progress_bar_shows_a_prompt_escaped(demo, tmp_path, capsys):
    shown = []
    progress = StoryProgress.__new__(StoryProgress)
    progress.shots = type(
        "Bar", (), {"set_postfix_str": lambda self, text: shown.append(text), "refresh": lambda self: None}
    )()
    progress.on_shot(0, 1, "A kite \x1b[31mred")
    assert shown == ["A kite \\x1b[31mred"]


@pytest.mark.parametrize("where", ["prompt", "overview", "name"])
def test_a_lone_surrogate_in_the_script_is_a_sentence(tmp_path, capsys, no_models, where):
    text = json.dumps(DEMO_STORY)
    target = {"prompt": "An old man", "overview": "An old man mends", "name": "The Blue Kite"}[where]
    script = tmp_path / "surrogate.json"
    script.write_text(text.replace(target, target + "\\ud800", 1), encoding="utf-8")
    refused(capsys, ["validate", str(script)], "lone surrogate")
    refused(
        capsys, ["story", str(script), "--models-dir", str(tmp_path), "--out", str(tmp_path / "out")], "lone surrogate"
    )


def test_an_error_message_holding_control_characters_is_printed_escaped(tmp_path, capsys, no_models):
    out = tmp_path / "bad\x1b[31mname"
    out.write_text("a file")
    err = refused(capsys, ["demo", "--out", str(out)], "is a file")
    assert "\x1b" not in err and "\\x1b[31m" in err


# ------------------------------------------------------------------ permissions


def test_every_file_the_story_writes_has_ordinary_permissions(demo):
    for path in demo.rglob("*"):  # the folder itself is pytest's
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), f"{path.relative_to(demo)} is {oct(mode)}"


def test_every_command_line_argument_says_what_it_is():
    """`--help` of every command explains each argument (none shows a bare name)."""
    def bare(parser: argparse.ArgumentParser, name: str) -> list[str]:
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                found += [arg for command, sub in action.choices.items() for arg in bare(sub, f"{name} {command}")]
            elif not action.help and not isinstance(action, argparse._HelpAction):
                found.append(f"{name} {action.option_strings or action.dest}")
        return found

    assert bare(_parser(), "python -m storymem_core") == []


def test_convert_lora_refuses_a_target_not_named_safetensors(demo, tmp_path, capsys):
    source = next((demo / "models-seed0" / "loras").rglob("backbone_high_noise.pth"))
    assert main(["convert-lora", str(source), str(tmp_path / "converted.pth")]) == 2
    assert "name it converted.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "converted.pth").exists()
    assert main(["convert-lora", str(source), str(tmp_path / "converted.safetensors")]) == 0
    assert stat.S_IMODE((tmp_path / "converted.safetensors").stat().st_mode) == 0o644  # safetensors alone makes 0600


def test_validate_takes_folders_of_scripts_as_st_bench_ships_them(tmp_path, capsys):
    examples = Path(__file__).resolve().parent.parent / "examples"
    assert main(["validate", str(examples)]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    assert [line.split(":")[0] for line in listed] == sorted(str(p) for p in examples.rglob("*.json"))
    refused(capsys, ["validate", str(tmp_path)], "it is a folder, not a story script; give one script's path")


def test_the_demo_with_another_seed_makes_a_story_of_its_own_beside_the_first(demo, tmp_path):
    out = shutil.copytree(demo, tmp_path / "demo")
    before = files_under(out / "story")
    assert main(["demo", "--out", str(out), "--seed", "1"]) == 0
    assert StoryFolder(out / "story-seed1").is_finished(2) and (out / "models-seed1").is_dir()
    assert files_under(out / "story") == before
