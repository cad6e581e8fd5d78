"""A story's LoRAs (StoryMem's and the lightx2v speed LoRAs) are merged into the expert weights, so a forward costs what
the bare expert's does; the shots must be those the hooked LoRAs make, within the precision of the weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import cli_plan

from storymem_core.files import load_image
from storymem_core.lora import apply_loras, load_lora
from storymem_core.model_roles import find_model_files, required_roles, storymem_lora_roles
from storymem_core.pipeline import StoryFolder, run_story
from storymem_core.presets import preset_roles
from storymem_core.sampling import ExpertPair
from storymem_core.story_models import LoadOptions, load_story_models
from storymem_core.tiny_models import write_speed_loras, write_tiny_models
from storymem_core.wan.fp8 import quantize_dit_to_fp8
from storymem_core.weights.loading import load_dit

# how far a merged shot's frames may be from the hooked shot's (relative): the merge rounds each weight once more in
# the weights' own precision (float32: none to speak of; bf16: 8 mantissa bits; fp8: 3, with a new scale)
# (measured on these tiny models: 8e-5, 1.4e-3 and 2.0e-3)
PRESET_TOLERANCE = {"fp32": 1e-3, "bf16": 1e-2, "fp8": 1e-2}
EXPERTS = {"m2v": ("i2v", ["mm2v_lora", "lightx2v_i2v"]), "t2v": ("t2v", ["lightx2v_t2v"])}  # an --mm2v story


@pytest.fixture(scope="module")
def speed_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    write_tiny_models(root)
    write_speed_loras(root)
    both_pairs = required_roles("t2v", None) + list(storymem_lora_roles("mm2v"))
    return find_model_files(root, both_pairs + preset_roles("lightx2v", "t2v"))


def experts(files: dict[str, Path], kind: str, weights: str, mode: str) -> ExpertPair:
    """The story's pair of `kind` with its LoRAs merged or hooked."""
    model, loras = EXPERTS[kind]
    pair = []
    for noise in ("high", "low"):
        dit = load_dit(files[f"{model}_{noise}"], torch.bfloat16 if weights == "bf16" else torch.float32)
        if weights == "fp8":
            quantize_dit_to_fp8(dit)
        apply_loras(dit, [load_lora(files[f"{lora}_{noise}"]) for lora in loras], mode=mode, strict=False)
        pair.append(dit)
    return ExpertPair(*pair)


def story_frames(tmp_path: Path, files: dict[str, Path], weights: str, mode: str) -> list[torch.Tensor]:
    """Every shot's last frames of a 3-shot lightx2v story (T2V first, then M2V and MM2V shots)."""
    (tmp_path / mode).mkdir()
    plan = cli_plan(tmp_path / mode, "--preset", "lightx2v", "--size", "32x32", "--frames", "9", "--mm2v", shots=3)
    models = load_story_models(files, plan.options,
                               LoadOptions(device=torch.device("cpu"), quality="off", preset="lightx2v"))
    models.m2v, models.t2v = experts(files, "m2v", weights, mode), experts(files, "t2v", weights, mode)
    run_story(plan.story, models, plan.options, plan.out)
    folder = StoryFolder(plan.out)
    return [torch.stack([load_image(path) for path in sorted(folder.tail(shot.index).glob("*.png"))]).float()
            for shot in plan.story.shots]


@pytest.mark.parametrize("weights", list(PRESET_TOLERANCE))
def test_a_story_with_merged_loras_makes_the_shots_hooked_loras_make(tmp_path, speed_files, weights):
    merged, hooked = (story_frames(tmp_path, speed_files, weights, mode) for mode in ("merge", "hook"))
    for shot, (merged_frames, hooked_frames) in enumerate(zip(merged, hooked)):
        error = ((merged_frames - hooked_frames).norm() / hooked_frames.norm()).item()
        assert error < PRESET_TOLERANCE[weights], f"shot {shot + 1}: {error:.4f} from the hooked path"


def test_a_story_loads_its_loras_merged_into_the_experts(tmp_path, speed_files):
    """No hook is left on any layer: the LoRAs are in the weights (their effect: tests/test_speed.py)."""
    options = cli_plan(tmp_path, "--preset", "lightx2v").options
    models = load_story_models(speed_files, options,
                               LoadOptions(device=torch.device("cpu"), quality="off", preset="lightx2v"))
    for pair in (models.m2v, models.t2v):
        for dit in (pair.high, pair.low):
            assert not any(module._forward_hooks for module in dit.modules())
