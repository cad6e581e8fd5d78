"""The shipped native workflows run end to end in a real ComfyUI on CPU with tiny models: 3 shots on
ComfyUI's own loaders and samplers, the memory growing through Select Keyframes (or the one-node Native Shot), the
film written; re-rolling shot 2 re-runs only shot 2 and the shots after it; a StoryMem Native Shot makes, seed for
seed, the frames and keyframes of the expanded chain it stands for; and the Native Story Runner makes a whole story
in one node, resumes it without sampling again and re-rolls it from a shot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from comfy_host import run_in_host

from storymem_core import tiny_models
from storymem_core.bank_files import load_bank
from storymem_core.video import read_mp4

NATIVE = sorted(path for path in (Path(__file__).resolve().parent.parent / "workflows" / "native").glob("*.json")
                if "UnetLoaderGGUF" not in path.read_text(encoding="utf-8"))  # the GGUF one: test_host_gguf.py
RUNNER = "storymem_native_story_runner"
SHOT_WORKFLOWS = [path for path in NATIVE if path.stem != RUNNER]  # a node per shot (or several), Combine Shots


def shot_nodes(workflow: dict, shot: int) -> set[str]:
    return {str(n["id"]) for n in workflow["nodes"] if n.get("title", "").startswith(f"Shot {shot}")}


@pytest.fixture(scope="module")
def all_runs(tmp_path_factory) -> dict:
    """Each native workflow run in the host (as shipped, then with shot 2 re-rolled): its workflow, the runs and the
    folder it ran in."""
    found = {}
    for path in NATIVE:
        scratch = tmp_path_factory.mktemp(path.stem)
        tiny_models.write_core_models(scratch / "models")
        tiny_models.write_reference_images(scratch / "input", count=1, size=(32, 32))
        run_in_host("run_workflow.py", path, scratch, scratch=scratch)
        workflow = json.loads(path.read_text(encoding="utf-8"))
        found[path.stem] = workflow, json.loads((scratch / "runs.json").read_text()), scratch
    return found


@pytest.fixture(params=SHOT_WORKFLOWS, ids=lambda p: p.stem)
def runs(request, all_runs):
    return all_runs[request.param.stem]


def film(workflow: dict, run: dict, scratch: Path):
    """The film Combine Shots wrote in `run`, as frames."""
    combine = next(str(n["id"]) for n in workflow["nodes"] if n["type"] == "StoryMemCombineShots")
    video = run["shown"][combine]["storymem_video"][0]
    return read_mp4(scratch / "output" / video["subfolder"] / video["filename"])


def shot_banks(workflow: dict, run: dict) -> list[list[dict]]:
    """The bank after each shot `run` made, as the node that made it showed it (Select Keyframes, or the one-node Native
    Shot); a shot the run took from the cache shows none."""
    makers = sorted((n for n in workflow["nodes"] if n["type"] in ("StoryMemSelectKeyframes", "StoryMemNativeShot")),
                    key=lambda n: n["title"])
    return [run["shown"][str(n["id"])]["storymem_bank"] for n in makers if str(n["id"]) in run["shown"]]


def test_there_are_the_native_workflows():
    assert {p.stem for p in NATIVE} == {"storymem_native_3_shot_story", "storymem_native_lightx2v_4_step",
                                        "storymem_native_one_node_shots", RUNNER}


def test_host_native_workflow_writes_the_film_and_grows_the_memory(runs):
    workflow, result, scratch = runs
    assert film(workflow, result["first"], scratch).shape == (5 + 4 + 5, 32, 32, 3)  # shot 2 (MI2V) drops a frame
    banks = shot_banks(workflow, result["first"])
    assert len(banks) == 3 and all(bank[0]["source"] == "reference" for bank in banks)  # each shot's selection ran
    generated = [{entry["shot"] for entry in bank if entry["source"] == "generated"} for bank in banks]
    assert generated == [{1}, {1, 2}, {1, 2, 3}]  # every shot adds keyframes of its own and keeps the earlier ones
    assert all(len(earlier) < len(later) for earlier, later in zip(banks, banks[1:]))  # the strip's count rises


def test_host_native_workflow_reroll_of_shot_2_reruns_only_shot_2_and_later(runs):
    workflow, result, _ = runs
    by_type = {str(n["id"]): n["type"] for n in workflow["nodes"]}
    # shot 2's prompt and conditioning are unchanged and stay cached; its samplers and everything after re-run
    shot_2 = {i for i in shot_nodes(workflow, 2) if by_type[i] not in ("CLIPTextEncode", "StoryMemConditioning")}
    shot_3 = {i for i in shot_nodes(workflow, 3) if by_type[i] != "CLIPTextEncode"}
    outputs = {i for i, kind in by_type.items() if kind in ("StoryMemCombineShots", "StoryMemPreviewBank")}
    assert set(result["reroll"]["executed"]) == shot_2 | shot_3 | outputs
    assert set(result["first"]["executed"]) >= shot_nodes(workflow, 1) | shot_nodes(workflow, 2)


@pytest.mark.parametrize("run", ["first", "reroll"])
def test_host_native_shot_makes_the_frames_and_keyframes_of_the_expanded_chain(all_runs, run):
    """Same loaders, prompts and seeds: the one-node workflow's film and every shot's bank (keyframes named by their
    pixels' hash) equal the expanded chain's, as shipped and after re-rolling shot 2."""
    expanded, one_node = all_runs["storymem_native_3_shot_story"], all_runs["storymem_native_one_node_shots"]
    assert torch.equal(film(expanded[0], expanded[1][run], expanded[2]),
                       film(one_node[0], one_node[1][run], one_node[2]))
    banks = shot_banks(one_node[0], one_node[1][run])
    assert banks == shot_banks(expanded[0], expanded[1][run]) and len(banks) == (3 if run == "first" else 2)


def test_host_native_story_runner_makes_the_story_with_a_growing_memory(all_runs):
    workflow, runs, scratch = all_runs[RUNNER]
    first = runs["first"]
    assert first["samplings"] == 3 * 2  # each shot: the high-noise expert, then the low-noise one
    runner = next(str(n["id"]) for n in workflow["nodes"] if n["type"] == "StoryMemNativeStoryRunner")
    video = first["shown"][runner]["storymem_video"][0]
    folder = scratch / "output" / video["subfolder"]
    assert video["filename"] == "film.mp4" and folder.parent.name == "native_stories"
    assert read_mp4(folder / "film.mp4").shape == (5 + 5 + 4, 32, 32, 3)  # shot 3 continues shot 2 (MI2V)
    banks = [load_bank(folder / "banks" / f"after_shot_00{shot}") for shot in (1, 2, 3)]
    assert all(bank.keyframes[0].source == "reference" for bank in banks)  # MR2V: the reference image starts it
    generated = [{k.shot + 1 for k in bank.keyframes if k.source == "generated"} for bank in banks]
    assert generated == [{1}, {1, 2}, {1, 2, 3}]


def test_host_native_story_runner_resumes_without_sampling_and_rerolls_from_a_shot(all_runs):
    workflow, runs, _ = all_runs[RUNNER]
    runner = next(str(n["id"]) for n in workflow["nodes"] if n["type"] == "StoryMemNativeStoryRunner")
    first, resume, reroll = runs["first"]["files"], runs["resume"]["files"], runs["reroll"]["files"]
    # queued again on a fresh ComfyUI (nothing cached): the node runs, finds every shot finished and samples nothing
    assert runner in runs["resume"]["executed"] and runs["resume"]["samplings"] == 0 and resume == first
    # from_shot 2: shots 2 and 3 are made again in the same folder, shot 1 and the memory before it are kept
    assert runs["reroll"]["samplings"] == 2 * 2 and set(reroll) == set(first)
    kept = {name for name in first if reroll[name] == first[name]}
    assert {"shots/shot_001.mp4", "banks/initial/bank.json", "banks/after_shot_001/bank.json"} <= kept
    assert not kept & {"shots/shot_002.mp4", "shots/shot_003.mp4", "banks/after_shot_003/bank.json", "film.mp4"}


@pytest.mark.parametrize("stem", ["storymem_native_one_node_shots", RUNNER])
def test_host_native_shots_show_live_previews_with_comfyuis_default_settings(all_runs, stem):
    """ComfyUI's preview method is 'none' unless set: the native shots still send a preview at each sampling step."""
    assert all_runs[stem][1]["first"]["previews"] >= 3 * 2
