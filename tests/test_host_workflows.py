"""The shipped native workflows run end to end in a real ComfyUI on CPU with tiny models: 3 shots on
ComfyUI's own loaders and samplers, the memory growing through Select Keyframes, the film written; and
re-rolling shot 2 re-runs only shot 2 and the shots after it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from comfy_host import run_in_host

from storymem_core import tiny_models
from storymem_core.video import read_mp4

NATIVE = sorted((Path(__file__).resolve().parent.parent / "workflows" / "native").glob("*.json"))


def shot_nodes(workflow: dict, shot: int) -> set[str]:
    return {str(n["id"]) for n in workflow["nodes"] if n.get("title", "").startswith(f"Shot {shot}")}


@pytest.fixture(scope="module", params=NATIVE, ids=lambda p: p.stem)
def runs(request, tmp_path_factory):
    scratch = tmp_path_factory.mktemp(request.param.stem)
    tiny_models.write_core_models(scratch / "models")
    tiny_models.write_reference_images(scratch / "input", count=1, size=(32, 32))
    run_in_host("run_workflow.py", request.param, scratch, scratch=scratch)
    workflow = json.loads(request.param.read_text(encoding="utf-8"))
    return workflow, json.loads((scratch / "runs.json").read_text()), scratch


def test_there_are_the_native_workflows():
    assert {p.stem for p in NATIVE} == {"storymem_native_3_shot_story", "storymem_native_lightx2v_4_step"}


def test_host_native_workflow_writes_the_film_and_grows_the_memory(runs):
    workflow, result, scratch = runs
    shown = result["first"]["shown"]
    combine = next(str(n["id"]) for n in workflow["nodes"] if n["type"] == "StoryMemCombineShots")
    video = shown[combine]["storymem_video"][0]
    film = read_mp4(scratch / "output" / video["subfolder"] / video["filename"])
    assert film.shape == (5 + 4 + 5, 32, 32, 3)  # shot 2 continues shot 1 (MI2V): its given frame is dropped
    selects = sorted((n for n in workflow["nodes"] if n["type"] == "StoryMemSelectKeyframes"), key=lambda n: n["title"])
    banks = [shown[str(n["id"])]["storymem_bank"] for n in selects]
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
