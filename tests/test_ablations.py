"""The paper's ablations (Table 2) as story options: one flag each on `story`, one switch each on both Story Runners,
planned alike, recorded in the story folder (a folder made with one setting refuses a plain re-run with another), and
changing what keyframe selection does."""

from __future__ import annotations

import pytest
import torch
from helpers import cli_plan, story_script
from test_story_plan import node_plan, output_root  # noqa: F401 (output_root: a fixture)

from nodes.native_runner import NativeStoryRunner
from storymem_core import tiny_models as tiny
from storymem_core.choices import Ablation
from storymem_core.commands.cli import main
from storymem_core.errors import StoryMemError
from storymem_core.keyframes import select_keyframes
from storymem_core.memory import MemoryBank
from storymem_core.story_folder import MemorySettings, StoryFolder


@pytest.mark.parametrize("ablation", list(Ablation))
@pytest.mark.parametrize("node", [None, NativeStoryRunner])
def test_each_ablation_flag_and_switch_plan_alike_and_the_folder_records_it(tmp_path, output_root, ablation, node):  # noqa: F811
    out = output_root / "storymem" / "stories"
    cli = cli_plan(tmp_path, "--out", str(out), f"--{ablation}", shots=2)
    runner = node_plan(story_script(tmp_path, 2), *(() if node is None else (node,)),
                       **{ablation.value.replace("-", "_"): True})
    for plan in (cli, runner):
        assert plan.options.ablations == (ablation,)
        assert plan.options.fixed_memory == (0 if ablation == Ablation.NO_MEMORY_SINK else 3)
    assert cli.check_folder().memory.ablations == (ablation,)
    default_folder = node_plan(story_script(tmp_path, 2)).named_folder(["m"])
    assert runner.named_folder(["m"]) != default_folder  # the Story Runner keeps ablated stories apart


def test_a_folder_made_with_an_ablation_refuses_a_plain_rerun_and_continues_with_it(tmp_path):
    out = tmp_path / "story"
    ablated = cli_plan(tmp_path, "--out", str(out), "--no-semantic-selection", shots=2)
    state = ablated.check_folder()
    out.mkdir()
    state.save(StoryFolder(out), 0)
    assert MemorySettings.load(StoryFolder(out)).ablations == (Ablation.NO_SEMANTIC_SELECTION,)
    with pytest.raises(StoryMemError, match="the ablations \\(no ablation flag\\) differ.*--no-semantic-selection"):
        cli_plan(tmp_path, "--out", str(out), shots=2).check_folder()
    cli_plan(tmp_path, "--out", str(out), "--no-semantic-selection", shots=2).check_folder()  # continues
    cli_plan(tmp_path, "--out", str(out), "--from-shot", "2", shots=2).check_folder()  # remakes from shot 2


def test_a_story_without_the_quality_filter_needs_no_quality_model_file(tmp_path):
    models = tiny.write_tiny_models(tmp_path / "models")
    (models / "clip_vision" / tiny.AESTHETIC_FILE).unlink()
    argv = ["story", str(story_script(tmp_path, 2)), "--models-dir", str(models), "--size", "32x32", "--frames", "5",
            "--steps", "2", "--quality", "aesthetic"]
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 2  # the filter needs its head
    assert main([*argv, "--out", str(tmp_path / "ablated"), "--no-aesthetic-filter"]) == 0
    assert (tmp_path / "ablated" / "film.mp4").is_file()


def test_a_folder_recorded_before_ablations_reads_as_none(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "memory_settings.json").write_text('{"max_memory": 10, "fixed_memory": 3, "reference_sha256": []}')
    assert MemorySettings.load(StoryFolder(out)).ablations == ()
    cli_plan(tmp_path, "--out", str(out), shots=2).check_folder()


class Encoder:
    """Each frame's embedding is its own one-hot row, except frames 0-3 which all look alike."""

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        embeddings = torch.eye(len(frames))
        embeddings[:4] = embeddings[0]
        return embeddings


class Quality:
    threshold = 4.0

    def score(self, frames: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return torch.tensor([5.0, 5.0, 5.0, 5.0, 1.0, 5.0, 5.0, 5.0, 5.0, 1.0])  # frames 4 and 9 look poor


FRAMES = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 8, 8, 3).contiguous()


def _indices(**options) -> list[int]:
    bank = MemoryBank(keyframes=(), max_size=10, fixed=3)
    return [k.frame_index for k in select_keyframes(FRAMES, Encoder(), bank, Quality(), **options)]


def test_without_semantic_selection_keyframes_are_evenly_spaced_acceptable_frames():
    semantic = _indices()
    spaced = _indices(ablations=(Ablation.NO_SEMANTIC_SELECTION,))
    assert spaced == [0, 5, 8] and spaced != semantic  # first to last of the acceptable frames (4 and 9 are not)


def test_without_the_aesthetic_filter_poor_frames_can_be_keyframes():
    assert 9 not in _indices(ablations=(Ablation.NO_SEMANTIC_SELECTION,))
    both = _indices(ablations=(Ablation.NO_SEMANTIC_SELECTION, Ablation.NO_AESTHETIC_FILTER))
    assert both == [0, 4, 9]  # evenly over all ten frames, poor ones included
    assert 4 in _indices(max_keyframes=10, ablations=(Ablation.NO_AESTHETIC_FILTER,))
    assert 4 not in _indices(max_keyframes=10)
