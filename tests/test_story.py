import copy
import json
from pathlib import Path

import pytest
from helpers import BAD_SCRIPTS, VALID
from hypothesis import given, settings
from hypothesis import strategies as st

from storymem_core.commands.validate import validate_command
from storymem_core.errors import StoryScriptError
from storymem_core.story import Shot, load_story, loads_story, parse_story

ST_BENCH = Path(__file__).parents[2] / "shared" / "st-bench"
EXAMPLES = Path(__file__).parents[1] / "examples" / "stories"


@pytest.mark.parametrize("text,fragment", BAD_SCRIPTS.values(), ids=BAD_SCRIPTS.keys())
def test_bad_script_raises_one_sentence_naming_the_fault(text, fragment):
    with pytest.raises(StoryScriptError) as caught:
        loads_story(text, source="bad.json")
    message = str(caught.value)
    assert message.startswith("bad.json")
    assert fragment in message
    assert message.endswith(".") and "\n" not in message


def test_missing_and_non_utf8_files_are_story_errors(tmp_path):
    with pytest.raises(StoryScriptError, match="no story script file"):
        load_story(tmp_path / "absent.json")
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"story_overview": "caf\u00e9"}'.encode("latin-1"))
    with pytest.raises(StoryScriptError, match="not UTF-8"):
        load_story(latin)


def test_shots_are_numbered_across_the_story():
    story = loads_story(json.dumps(VALID))
    assert story.name == "Two Scenes" and story.overview == "A short test story."
    assert [s.scene_num for s in story.scenes] == [1, 2]
    assert story.shots == (
        Shot(0, 1, 0, "a harbour at dawn", True),
        Shot(1, 1, 1, "the boat leaves", False),
        Shot(2, 2, 0, "open sea", True),
    )


def test_cut_strings_are_accepted_in_any_case():
    script = copy.deepcopy(VALID)
    script["scenes"][0]["cut"] = ["TRUE", " false "]
    script["scenes"][1]["cut"] = ["True"]
    assert [s.cut for s in loads_story(json.dumps(script)).shots] == [True, False, True]


def test_byte_order_mark_and_missing_name(tmp_path):
    script = copy.deepcopy(VALID)
    del script["story_name"]
    path = tmp_path / "harbour.json"
    path.write_text("\ufeff" + json.dumps(script), encoding="utf-8")
    assert load_story(path).name == "harbour"


def test_first_frame_prompts_are_attached_to_their_shots():
    script = copy.deepcopy(VALID)
    script["scenes"][0]["first_frame_prompt"] = ["harbour still", "boat still"]
    shots = loads_story(json.dumps(script)).shots
    assert [s.first_frame_prompt for s in shots] == ["harbour still", "boat still", None]


def test_unknown_keys_are_warnings_not_errors(caplog):
    script = copy.deepcopy(VALID)
    script["author"] = "me"
    script["scenes"][1]["mood"] = "calm"
    story, warnings = parse_story(script, source="notes.json")
    assert len(story.shots) == 3
    assert len(warnings) == 2
    assert "notes.json: unknown key 'author'" in warnings[0]
    assert "notes.json, scene 2: unknown key 'mood'" in warnings[1]
    assert [r.getMessage() for r in caplog.records] == warnings


def st_bench_files() -> list[Path]:
    return sorted(ST_BENCH.glob("*.json")) if ST_BENCH.is_dir() else []


@pytest.mark.skipif(not st_bench_files(), reason="ST-Bench scripts (../shared/st-bench) are not beside the repo")
@pytest.mark.parametrize("path", st_bench_files(), ids=lambda p: p.stem)
def test_every_st_bench_script_parses(path):
    raw = json.loads(path.read_text(encoding="utf-8"))
    story, warnings = parse_story(raw, str(path))
    assert warnings == []
    assert [s.prompt for s in story.shots] == [p for scene in raw["scenes"] for p in scene["video_prompts"]]
    assert story.shots[0].cut


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.stem)
def test_examples_parse_without_warnings(path):
    story, warnings = parse_story(json.loads(path.read_text(encoding="utf-8")), str(path))
    assert warnings == [] and len(story.shots) >= 3
    assert any(not shot.cut for shot in story.shots)


def test_validate_lists_shots_and_returns_zero(capsys):
    path = str(EXAMPLES / "lighthouse_fox.json")
    assert validate_command([path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{path}: 'The Keeper and the Fox', 2 scene(s), 3 shot(s), 0 warning(s)"
    assert [line.split()[:5] for line in out[1:]] == [
        ["shot", "1", "scene", "1", "cut"],
        ["shot", "2", "scene", "1", "cont"],
        ["shot", "3", "scene", "2", "cut"],
    ]
    assert all(len(line) < 120 for line in out[1:])  # the shot lines; the first holds the path


def test_validate_reports_each_bad_script_and_returns_two(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(BAD_SCRIPTS["first_cut_false"][0], encoding="utf-8")
    assert validate_command([str(bad), str(EXAMPLES / "paper_boat.json")]) == 2
    captured = capsys.readouterr()
    assert (
        captured.err.strip()
        == f"error: {bad}, scene 1, shot 1: cut[0] is false but the story's first shot has no shot before it "
        "to continue; set it to true."
    )
    assert "'The Paper Boat', 2 scene(s), 5 shot(s)" in captured.out


prompts = st.text(min_size=1, max_size=30).filter(str.strip)
cut_values = st.sampled_from([True, False, "true", "False", "TRUE"])
scene_bodies = st.lists(st.tuples(prompts, cut_values), min_size=1, max_size=4)


@st.composite
def valid_scripts(draw):
    bodies = draw(st.lists(scene_bodies, min_size=1, max_size=4))
    numbers = draw(st.lists(st.integers(1, 99), min_size=len(bodies), max_size=len(bodies), unique=True))
    bodies[0][0] = (bodies[0][0][0], draw(st.sampled_from([True, "true", "True"])))
    return {
        "story_name": draw(st.text(max_size=20)),
        "story_overview": draw(st.text(max_size=40)),
        "scenes": [
            {"scene_num": n, "video_prompts": [p for p, _ in body], "cut": [c for _, c in body]}
            for n, body in zip(numbers, bodies)
        ],
    }


@settings(max_examples=60, deadline=None)
@given(valid_scripts())
def test_any_valid_script_round_trips_through_json(script):
    story = loads_story(json.dumps(script))
    expected = [
        (scene["scene_num"], k, prompt, cut is True or (isinstance(cut, str) and cut.lower() == "true"))
        for scene in script["scenes"]
        for k, (prompt, cut) in enumerate(zip(scene["video_prompts"], scene["cut"]))
    ]
    assert [(s.scene_num, s.index_in_scene, s.prompt, s.cut) for s in story.shots] == expected
    assert [s.index for s in story.shots] == list(range(len(expected)))
    assert story.name == script["story_name"] and story.overview == script["story_overview"]
