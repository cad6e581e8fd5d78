"""benchmarks/story.py's timed story, on tiny models on the CPU: the device run it stands for costs scarce GPU time, so
its own code is proven here first (every phase timed, the shots and the memory recorded, the figures JSON)."""

import json

import torch
from helpers import cli_plan

from benchmarks.story import timed_story
from storymem_core.model_roles import find_model_files, required_roles
from storymem_core.presets import preset_roles
from storymem_core.story_models import LoadOptions, load_story_models
from storymem_core.timing import PHASES
from storymem_core.tiny_models import write_speed_loras, write_tiny_models


def test_the_story_benchmark_times_every_phase_of_a_story(tmp_path):
    root = tmp_path / "models"
    write_tiny_models(root)
    write_speed_loras(root)
    files = find_model_files(root, required_roles("t2v", None) + preset_roles("lightx2v", "t2v"))
    plan = cli_plan(tmp_path, "--preset", "lightx2v", "--size", "32x32", "--frames", "5", shots=3)
    models = load_story_models(files, plan.options,
                               LoadOptions(device=torch.device("cpu"), quality="off", preset="lightx2v"))
    result = timed_story(plan.story, models, torch.device("cpu"), size_wh=(32, 32), frames=5)
    assert result["shots"] == 3 and len(result["shot_s"]) == 3
    assert result["memory_after_shot"][0] >= 1 and result["memory_after_shot"] == sorted(result["memory_after_shot"])
    assert all(result["phase_s"][phase] > 0 for phase in PHASES), result["phase_s"]
    assert result["total_s"] >= sum(result["phase_s"].values()) and result["other_s"] >= 0
    assert json.loads(json.dumps(result)) == result  # what the benchmark writes to its --json file
