"""The GGUF workflow runs in a real ComfyUI with city96/ComfyUI-GGUF's Unet Loader (GGUF) on tiny GGUF experts made
here: 3 shots, the StoryMem LoRA patched onto GGUF models on the fly, the memory growing, the film written; a re-roll
of shot 2 re-runs only shot 2 and later. CI installs the loader (STORYMEM_WITH_GGUF=1 ../shared/comfyui/install.sh)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from comfy_host import GGUF_MISSING, missing, require_host, run_in_host
from tiny_gguf import GGUF_HIGH, GGUF_LOW, write_gguf_experts

from storymem_core import tiny_models
from storymem_core.video import read_mp4

WORKFLOW = Path(__file__).resolve().parent.parent / "workflows" / "native" / "storymem_native_gguf_one_node_shots.json"


@pytest.fixture(scope="module")
def gguf_runs(tmp_path_factory) -> tuple[dict, dict, Path]:
    host = require_host()
    if not (host / "custom_nodes" / "ComfyUI-GGUF" / "nodes.py").is_file():
        missing(GGUF_MISSING)
    scratch = tmp_path_factory.mktemp("gguf")
    tiny_models.write_core_models(scratch / "models")
    write_gguf_experts(scratch / "models")
    for name in (tiny_models.I2V_HIGH, tiny_models.I2V_LOW):  # only the GGUF files can be what the workflow loads
        (scratch / "models" / "diffusion_models" / name).unlink()
    tiny_models.write_reference_images(scratch / "input", count=1, size=(32, 32))
    run_in_host("run_workflow.py", WORKFLOW, scratch, scratch=scratch)
    return json.loads(WORKFLOW.read_text(encoding="utf-8")), json.loads((scratch / "runs.json").read_text()), scratch


def test_gguf_workflow_loads_its_experts_with_the_gguf_loader():
    workflow = json.loads(WORKFLOW.read_text(encoding="utf-8"))
    loaders = [n for n in workflow["nodes"] if n["type"] == "UnetLoaderGGUF"]
    assert [n["widgets_values"][0] for n in loaders] == [GGUF_HIGH, GGUF_LOW]
    assert not any(n["type"] == "UNETLoader" for n in workflow["nodes"])


def test_host_gguf_workflow_writes_the_film_and_grows_the_memory(gguf_runs):
    workflow, runs, scratch = gguf_runs
    first = runs["first"]
    combine = next(str(n["id"]) for n in workflow["nodes"] if n["type"] == "StoryMemCombineShots")
    video = first["shown"][combine]["storymem_video"][0]
    assert read_mp4(scratch / "output" / video["subfolder"] / video["filename"]).shape == (5 + 4 + 5, 32, 32, 3)
    shots = sorted((n for n in workflow["nodes"] if n["type"] == "StoryMemNativeShot"), key=lambda n: n["title"])
    banks = [first["shown"][str(n["id"])]["storymem_bank"] for n in shots]
    generated = [{entry["shot"] for entry in bank if entry["source"] == "generated"} for bank in banks]
    assert generated == [{1}, {1, 2}, {1, 2, 3}]
    assert first["samplings"] == 3 * 2  # ComfyUI's sampling on the GGUF experts: high, then low, per shot


def test_host_gguf_workflow_reroll_of_shot_2_reruns_only_shot_2_and_later(gguf_runs):
    workflow, runs, _ = gguf_runs
    by_title = {n.get("title", ""): str(n["id"]) for n in workflow["nodes"]}
    rerun = set(runs["reroll"]["executed"])
    assert {by_title[t] for t in by_title if t.startswith(("Shot 2", "Shot 3"))} <= rerun
    assert not {by_title[t] for t in by_title if t.startswith("Shot 1")} & rerun
    assert runs["reroll"]["samplings"] == 2 * 2
