"""Sampling over several processes (torchrun, gloo on the CPU) gives what one process gives: the DiT output with its
tokens split over 2 and 4 ranks (Ulysses), a whole shot with CFG parallel, a story from `torchrun ... story`; a rank
that fails mid-shot stops the run with its error and leaves the story folder resumable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import files_under, free_port, story_script
from parallel_cases import (
    HEADS,
    TOLERANCE,
    dit_inputs,
    dit_worker,
    memory_shot,
    shot_models,
    shot_worker,
    tiny_dit,
    torchrun,
)

from storymem_core.bank_files import load_bank
from storymem_core.commands.cli import main
from storymem_core.files import load_image
from storymem_core.pipeline import StoryFolder
from storymem_core.tiny_models import write_tiny_models


@pytest.mark.parametrize("world, fsdp", [(2, False), (4, False), (2, True)], ids=["2", "4", "2-fsdp"])
def test_dit_output_split_over_ranks_equals_one_process(tmp_path, world, fsdp):
    mp.spawn(dit_worker, args=(world, free_port(), fsdp, tmp_path), nprocs=world)
    with torch.no_grad():
        alone = tiny_dit(0)(*dit_inputs())
    for rank in range(world):  # every rank ends with the whole output
        torch.testing.assert_close(torch.load(tmp_path / f"rank{rank}.pt", weights_only=True), alone, **TOLERANCE)


@pytest.mark.parametrize("world", [2, 4])
def test_shot_over_ranks_with_cfg_parallel_equals_one_process(tmp_path, world):
    mp.spawn(shot_worker, args=(world, free_port(), tmp_path), nprocs=world)
    with torch.no_grad():
        alone = memory_shot(*shot_models())
    torch.testing.assert_close(torch.load(tmp_path / "video.pt", weights_only=True), alone, **TOLERANCE)


# ------------------------------------------------------------------ the CLI under torchrun

TINY = ["--size", "32x32", "--frames", "5", "--steps", "2", "--quality", "off"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_tiny_models(root, num_heads=HEADS)
    return root


@pytest.mark.parametrize("sharding", [[], ["--fsdp"]], ids=["replicated", "fsdp"])
def test_torchrun_story_equals_one_process_and_only_rank_0_writes(tmp_path, models_dir, sharding):
    script = story_script(tmp_path, 2)
    argv = ["story", str(script), "--models-dir", str(models_dir), *TINY]
    assert main(argv + ["--out", str(tmp_path / "alone"), "--device", "cpu"]) == 0
    run = torchrun(2, ["-m", "storymem_core", *argv, *sharding, "--out", str(tmp_path / "ranks")], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("film:") == 1  # rank 0 alone reports (and writes)
    alone, ranks = StoryFolder(tmp_path / "alone"), StoryFolder(tmp_path / "ranks")
    assert sorted(files_under(ranks.root)) == sorted(files_under(alone.root))
    for shot in range(2):
        # every frame of these 5-frame shots, as saved losslessly: equal latents within float32 rounding give pixels
        # within one level (the mp4s are not compared: a lossy encoder turns one level into other choices)
        for frame in sorted(alone.tail(shot).glob("*.png")):
            assert (load_image(frame).int() - load_image(ranks.tail(shot) / frame.name).int()).abs().max() <= 1
        assert len(load_bank(ranks.bank(shot))) == len(load_bank(alone.bank(shot)))


def test_a_rank_count_that_does_not_divide_the_heads_is_refused_before_any_shot(tmp_path, models_dir):
    argv = [
        "story",
        str(story_script(tmp_path, 1)),
        "--models-dir",
        str(models_dir),
        "--out",
        str(tmp_path / "out"),
        *TINY,
    ]
    run = torchrun(3, ["-m", "storymem_core", *argv], tmp_path)
    assert run.returncode != 0
    assert "splits the experts' 4 attention heads unevenly: use a process count that divides 4 (2, 4)" in run.stderr
    assert not (tmp_path / "out").exists()


FAILING_RANK = """
import sys
from storymem_core.commands.cli import main
from storymem_core.wan.dit import WanDiT

forward, calls = WanDiT.forward, []


def fails_in_shot_2(self, *args, **kwargs):
    calls.append(1)
    if len(calls) > {forwards_before}:
        raise RuntimeError("the GPU of rank 1 fell off the bus")
    return forward(self, *args, **kwargs)


if __import__("os").environ["RANK"] == "1":
    WanDiT.forward = fails_in_shot_2
sys.exit(main(sys.argv[1:]))
"""


def test_a_rank_failing_mid_shot_stops_every_rank_with_its_error_and_the_story_resumes(tmp_path, models_dir):
    script = story_script(tmp_path, 2)
    argv = ["story", str(script), "--models-dir", str(models_dir), "--out", str(tmp_path / "out"), *TINY]
    entry = tmp_path / "failing_rank.py"
    # shot 1 (T2V, guide 3 / 4, CFG parallel): one forward per step on each rank; fail on the 2nd step of shot 2
    entry.write_text(FAILING_RANK.format(forwards_before=2 + 1))
    run = torchrun(2, [str(entry), *argv], tmp_path)
    assert run.returncode != 0
    assert "the GPU of rank 1 fell off the bus" in run.stdout + run.stderr
    folder = StoryFolder(tmp_path / "out")
    assert folder.is_finished(0) and not folder.is_finished(1)
    shot_1 = {name: value for name, value in files_under(folder.root).items() if "shot_001" in name}
    assert main(argv + ["--device", "cpu"]) == 0  # one process continues the story
    assert folder.is_finished(1) and folder.film.is_file()
    assert {name: value for name, value in files_under(folder.root).items() if "shot_001" in name} == shot_1
