"""One planning step for every front end: the story command, the Story Runner node and the Native Story Runner node
turn equal inputs into equal plans, each check says one sentence on each, and the Story Runner's folder names stay
those of folders made before."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import cli_plan, story_script

from nodes import host
from nodes.native_runner import NATIVE_NAMES, NativeStoryRunner
from nodes.runner_node import NODE_NAMES, StoryRunner, model_names, story_inputs
from storymem_core.errors import StoryMemError
from storymem_core.files import save_image
from storymem_core.story import load_story, loads_story
from storymem_core.story_plan import ENGINE_NAMES, StoryInputs, plan_story
from storymem_core.video import frames_to_image_batch


@pytest.fixture
def output_root(tmp_path):
    previous = host.use(host.StandaloneHost(tmp_path / "models", tmp_path / "output"))
    yield tmp_path / "output"
    host.use(previous)


def widget_defaults(node: type = StoryRunner) -> dict:
    """A Story Runner's widgets as a fresh node has them."""
    declared = node.INPUT_TYPES()
    return {name: spec[1]["default"] for part in declared.values() for name, spec in part.items()
            if isinstance(spec[1], dict) and "default" in spec[1]}


def node_plan(script: Path, node: type = StoryRunner, **widgets):
    given = widget_defaults(node) | {"story": load_story(script)} | widgets
    names = NATIVE_NAMES if node is NativeStoryRunner else NODE_NAMES
    return plan_story(story_inputs(given, node, names))


def write_references(folder: Path, count: int = 2) -> list[Path]:
    generator = torch.Generator().manual_seed(4)
    paths = []
    for index in range(count):
        paths.append(folder / f"ref{index}.png")
        save_image(torch.randint(0, 256, (32, 48, 3), dtype=torch.uint8, generator=generator), paths[-1])
    return paths


def same_plans(cli, node) -> bool:
    return (cli.options, cli.start, cli.story) == (node.options, node.start, node.story) and len(cli.references) == len(
        node.references) and all(torch.equal(a, b) for a, b in zip(cli.references, node.references))


@pytest.mark.parametrize("preset", ["none", "lightx2v"])
def test_the_story_command_and_the_story_runner_plan_a_t2v_story_alike(tmp_path, output_root, preset):
    script = story_script(tmp_path, 3)
    out = output_root / "storymem" / "stories"
    cli = cli_plan(tmp_path, "--out", str(out), "--mi2v", "--seed", "5", "--size", "64x32", "--frames", "9",
                   "--steps", "7", "--solver", "euler", "--max-memory", "6", "--fixed-memory", "2", "--from-shot", "2",
                   "--preset", preset, shots=3)
    node = node_plan(script, continuation="mi2v", seed=5, width=64, height=32, frames=9, steps=7, solver="euler",
                     max_size=6, fixed=2, from_shot=2, preset=preset)
    assert same_plans(cli, node) and cli.out == node.out and cli.start == 1
    assert cli.options.m2v.steps == cli.options.t2v.steps == 7  # the user's steps win over a preset's 4


def test_the_story_command_and_the_story_runner_plan_an_mr2v_story_alike(tmp_path, output_root):
    script = story_script(tmp_path, 2)
    paths = write_references(tmp_path)
    cli = cli_plan(tmp_path, "--m2v-first-shot", "--mm2v", "--size", "48x32", "--frames", "9", "--memory-positions",
                   "first-release", *[arg for path in paths for arg in ("--reference", str(path))], shots=2)
    images = frames_to_image_batch(torch.stack(cli.references))
    node = node_plan(script, first_shot="mr2v", continuation="mm2v", width=48, height=32, frames=9,
                     memory_positions="first-release", reference_images=images)
    assert same_plans(cli, node) and len(node.references) == 2


def test_the_story_command_and_the_native_story_runner_plan_a_t2v_story_alike(tmp_path, output_root):
    """The native runner has no solver, shift or preset (its MODELs carry the shift and speed LoRAs; ComfyUI's sampler
    is named by sampler_name): the rest plans as the command's."""
    script = story_script(tmp_path, 3)
    out = output_root / "storymem" / "stories"
    cli = cli_plan(tmp_path, "--out", str(out), "--mi2v", "--seed", "5", "--size", "64x32", "--frames", "9",
                   "--steps", "7", "--max-memory", "6", "--fixed-memory", "2", "--from-shot", "2",
                   shots=3)
    node = node_plan(script, NativeStoryRunner, continuation="mi2v", seed=5, width=64, height=32, frames=9, steps=7,
                     max_size=6, fixed=2, from_shot=2)
    assert same_plans(cli, node) and cli.out == node.out and node.start == 1


def test_the_story_command_and_the_native_story_runner_plan_an_mr2v_story_alike(tmp_path, output_root):
    script = story_script(tmp_path, 2)
    paths = write_references(tmp_path)
    cli = cli_plan(tmp_path, "--m2v-first-shot", "--mm2v", "--size", "48x32", "--frames", "9", "--memory-positions",
                   "first-release", *[arg for path in paths for arg in ("--reference", str(path))], shots=2)
    images = frames_to_image_batch(torch.stack(cli.references))
    node = node_plan(script, NativeStoryRunner, first_shot="mr2v", continuation="mm2v", width=48, height=32, frames=9,
                     memory_positions="first-release", reference_images=images)
    assert same_plans(cli, node) and not node.needs_t2v_experts


def test_the_native_story_runner_names_its_own_t2v_inputs(tmp_path, output_root):
    plan = node_plan(story_script(tmp_path, 1), NativeStoryRunner)
    with pytest.raises(StoryMemError, match="the first shot is T2V but t2v_model_high and t2v_model_low are not both "
                                            "connected: load the Wan2.2 T2V-A14B experts, or set first_shot to mr2v"):
        plan.check_t2v_experts(False)


def test_each_planning_check_says_one_sentence_naming_the_front_ends_input(tmp_path, output_root):
    script = story_script(tmp_path, 1)
    cases = [
        ((["--from-shot", "3"], {"from_shot": 3}),
         "{} 3 is not a shot of 'Lantern' (it has shots 1 to 1): {} to continue where it stopped"),
        ((["--m2v-first-shot"], {"first_shot": "mr2v"}), "the first shot is MR2V (from reference images) but {}: {}"),
    ]
    names = [("--from-shot", "leave --from-shot out"), ("from_shot", "use 0")], [
        ("no --reference image is given", "pass them with --reference IMAGE (one or more)"),
        ("reference_images is not connected", "connect a Load Image node with your references")]
    for ((flags, widgets), sentence), (cli_names, node_names) in zip(cases, names):
        with pytest.raises(StoryMemError) as cli_error:
            cli_plan(tmp_path, *flags)
        with pytest.raises(StoryMemError) as node_error:
            node_plan(script, **widgets)
        assert sentence.format(*cli_names) in str(cli_error.value)
        assert sentence.format(*node_names) in str(node_error.value)


def test_references_with_a_t2v_first_shot_are_refused_on_every_front_end(tmp_path, output_root):
    script = story_script(tmp_path, 1)
    (path,) = write_references(tmp_path, 1)
    with pytest.raises(StoryMemError, match="first shot is T2V: add --m2v-first-shot to start from them"):
        cli_plan(tmp_path, "--reference", str(path))
    with pytest.raises(StoryMemError, match="first shot is T2V: set first_shot to mr2v to start from them"):
        node_plan(script, reference_images=torch.rand(1, 32, 32, 3))


def test_story_runner_widgets_left_at_their_defaults_take_the_preset_and_changed_ones_win(tmp_path, output_root):
    script = story_script(tmp_path, 1)
    preset = node_plan(script, preset="lightx2v").options
    assert (preset.m2v.steps, preset.m2v.shift, preset.m2v.solver, preset.m2v.guide_low) == (4, 5.0, "euler", 1.0)
    changed = node_plan(script, preset="lightx2v", steps=6, cfg=2.0).options
    assert (changed.m2v.steps, changed.m2v.shift, changed.m2v.guide_low, changed.m2v.guide_high) == (6, 5.0, 2.0, 2.0)
    assert (changed.t2v.steps, changed.t2v.guide_low, changed.t2v.guide_high) == (6, 1.0, 1.0)


# names the Story Runner gave these stories before the planning step existed (its own sha1 of the same JSON)
STORY = {"story_name": "fox & hen", "story_overview": "A fox.",
         "scenes": [{"scene_num": 1, "video_prompts": ["a fox runs", "the fox rests"], "cut": [True, False]}]}
REFERENCES = torch.arange(2 * 16 * 16 * 3).remainder(256).to(torch.uint8).reshape(2, 16, 16, 3)
FOLDERS = [
    ({"continuation": "mi2v", "seed": 42}, ["lora@1.0"], "fox___hen-8c9cb37c2a"),
    ({"first_shot": "mr2v", "continuation": "mm2v", "max_size": 6, "fixed": 2, "seed": 7, "width": 64, "height": 32,
      "frames": 9, "fps": 8, "negative_prompt": "blur", "memory_positions": "first-release", "steps": 8, "shift": 6.0,
      "solver": "euler", "cfg": 5.0, "reference_images": frames_to_image_batch(REFERENCES)},
     ["lora@0.5"], "fox___hen-35dda11345"),
    ({"continuation": "mi2v", "seed": 42, "preset": "lightx2v"}, ["lora@1.0", "speed@1.0"], "fox___hen-4c35fdd5fb"),
]


@pytest.mark.parametrize("widgets,loras,name", FOLDERS)
def test_story_runner_folders_keep_the_names_they_were_made_with(output_root, widgets, loras, name):
    given = widget_defaults() | {"story": loads_story(json.dumps(STORY))} | widgets
    plan = plan_story(story_inputs(given))
    model = SimpleNamespace(name="i2v", loras=[SimpleNamespace(name=n, strength=float(s))
                                               for n, s in (lora.split("@") for lora in loras)])
    t2v_model = SimpleNamespace(name="t2v") if plan.needs_t2v_experts else None
    names = model_names(model, SimpleNamespace(name="te"), SimpleNamespace(name="ke"), t2v_model)
    assert plan.named_folder(names).name == name


def test_the_engine_names_its_own_inputs_in_the_same_sentences(tmp_path):
    story = loads_story(json.dumps(STORY))
    with pytest.raises(StoryMemError, match="from_shot 5 is not a shot of 'fox & hen' .*: pass None to continue"):
        plan_story(StoryInputs(story, tmp_path, ENGINE_NAMES, from_shot=5))
