"""The shipped workflows: valid UI files that load as they are and run end to end on tiny models, with
ComfyUI's conversion, validation and caching rules (tests/graph_runner.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from graph_runner import (
    CONTROL_VALUES,
    VIRTUAL_NODES,
    GraphError,
    GraphRunner,
    input_specs,
    load_image_node,
    ui_to_api,
    validate,
    widget_slots,
)
from helpers import box_inside, boxes_overlap
from PIL import Image

import nodes
from nodes import host
from nodes.example_inputs import EXAMPLE_INPUTS, copy_example_inputs
from storymem_core import tiny_models as tiny
from storymem_core.downloads import KNOWN_FILES
from storymem_core.video import read_mp4

WORKFLOWS = sorted((Path(__file__).resolve().parent.parent / "workflows").glob("*.json"))
CORE_NODES = ("LoadImage",)  # ComfyUI's own nodes a shipped workflow may use
ABSOLUTE_PATH = re.compile(r"^(/|[A-Za-z]:[\\/]|\\\\)")


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    """The standalone host on tiny models and reference images under the shipped workflows' names."""
    root = tmp_path_factory.mktemp("workflows")
    tiny.write_tiny_models(root / "models")
    tiny.write_reference_images(root / "input")
    previous = host.use(host.StandaloneHost(root / "models", root / "output"))
    try:
        yield {**nodes.NODE_CLASS_MAPPINGS, "LoadImage": load_image_node(root / "input")}
    finally:
        host.use(previous)


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def shrink(workflow: dict, classes: dict) -> dict:
    """The same workflow at test size: every width / height / frames / steps widget set to tiny values."""
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES:
            continue
        for i, name in enumerate(widget_slots(classes[node["type"]])):
            if name in tiny.TINY_SHOT:
                node["widgets_values"][i] = tiny.TINY_SHOT[name]
    return workflow


def node_ids(workflow: dict, node_type: str) -> list[str]:
    return [str(n["id"]) for n in workflow["nodes"] if n["type"] == node_type]


def test_there_are_the_three_shipped_workflows():
    assert {p.stem for p in WORKFLOWS} >= {"storymem_3_shot_story", "storymem_mr2v_references", "storymem_story_runner"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_uses_known_nodes_and_type_matched_links(path, comfy):
    workflow = load(path)
    assert workflow["version"] == 0.4 and workflow["last_node_id"] >= max(n["id"] for n in workflow["nodes"])
    nodes_by_id = {n["id"]: n for n in workflow["nodes"]}
    for node in workflow["nodes"]:
        assert node["type"] in nodes.NODE_CLASS_MAPPINGS or node["type"] in CORE_NODES + VIRTUAL_NODES, node["type"]
    for link_id, origin, origin_slot, target, target_slot, kind in workflow["links"]:
        source, dest = nodes_by_id[origin], nodes_by_id[target]
        output, socket = source["outputs"][origin_slot], dest["inputs"][target_slot]
        assert link_id in output["links"] and socket["link"] == link_id
        declared_output = comfy[source["type"]].RETURN_TYPES[origin_slot]
        declared_input = input_specs(comfy[dest["type"]])[socket["name"]][1]
        assert kind == output["type"] == socket["type"] == declared_output == declared_input, (
            link_id,
            kind,
            declared_output,
            declared_input,
        )


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_widget_values_match_the_node_inputs_in_order(path, comfy):
    workflow = load(path)
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES:
            continue
        slots = widget_slots(comfy[node["type"]])
        values = node.get("widgets_values", [])
        assert len(values) == len(slots), (node["type"], slots, values)
        for name, value in zip(slots, values):
            if isinstance(value, str):
                assert not ABSOLUTE_PATH.match(value), f"{node['type']}.{name} holds an absolute path"
            if name is None:
                assert value in (*CONTROL_VALUES, "image")
    validate(ui_to_api(workflow, comfy), comfy)  # values of the right type, in range, in their lists


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_end_to_end_on_tiny_models(path, comfy):
    workflow = shrink(load(path), comfy)
    runner = GraphRunner(comfy)
    outputs = runner.run(ui_to_api(workflow, comfy))
    films = [
        outputs[i][0] for i in node_ids(workflow, "StoryMemCombineShots") + node_ids(workflow, "StoryMemStoryRunner")
    ]
    assert films and all(film.shape[1:] == (32, 32, 3) and film.shape[0] >= 3 * 4 for film in films)
    for node_id in node_ids(workflow, "StoryMemCombineShots"):
        assert read_mp4(outputs[node_id][1]).shape[0] == outputs[node_id][0].shape[0]
    last_shot = (node_ids(workflow, "StoryMemShot") + node_ids(workflow, "StoryMemStoryRunner"))[-1]
    memory = outputs[last_shot][1]  # the bank after shot 3
    generated = [k.shot for k in memory.keyframes if k.source == "generated"]
    # the memory grew over the story: keyframes of several shots (a shot's may all be near-duplicates of the bank)
    assert len(generated) >= 2 and len(set(generated)) >= 2 and max(generated) == 2


def test_rerolled_shot_reruns_alone_with_the_same_bank(comfy):
    workflow = shrink(load(next(p for p in WORKFLOWS if p.stem == "storymem_3_shot_story")), comfy)
    received = {}
    runner = GraphRunner(comfy, on_execute=lambda node_id, inputs: received.setdefault(node_id, []).append(inputs))
    shot_2, shot_3 = node_ids(workflow, "StoryMemShot")
    first = runner.run(ui_to_api(workflow, comfy))

    node = next(n for n in workflow["nodes"] if str(n["id"]) == shot_2)
    node["widgets_values"][widget_slots(comfy["StoryMemShot"]).index("seed")] += 1000
    second = runner.run(ui_to_api(workflow, comfy))

    downstream = {
        shot_2,
        shot_3,
        *node_ids(workflow, "StoryMemCombineShots"),
        *node_ids(workflow, "StoryMemPreviewBank"),
    }
    assert set(runner.executed) == downstream
    bank_before, bank_after = (inputs["memory"] for inputs in received[shot_2])
    assert bank_before is bank_after  # the cached output of the first shot, untouched
    assert not torch.equal(first[shot_2][0], second[shot_2][0])
    assert runner.run(ui_to_api(workflow, comfy)) and runner.executed == []  # nothing changed: all cached


def test_converter_skips_the_control_after_generate_value_after_a_seed(comfy):
    workflow = load(next(p for p in WORKFLOWS if p.stem == "storymem_3_shot_story"))
    prompt = ui_to_api(workflow, comfy)
    shot = prompt[node_ids(workflow, "StoryMemShot")[0]]["inputs"]
    assert shot["seed"] == 43 and shot["steps"] == 40 and "control_after_generate" not in shot
    assert isinstance(shot["prompt"], list) and isinstance(shot["cut"], list)  # linked widgets send their link
    node = next(n for n in workflow["nodes"] if n["type"] == "StoryMemShot")
    node["widgets_values"].remove("fixed")
    with pytest.raises(GraphError, match="widget values"):
        ui_to_api(workflow, comfy)


def test_validation_refuses_what_comfyui_refuses(comfy):
    prompt = ui_to_api(load(next(p for p in WORKFLOWS if p.stem == "storymem_3_shot_story")), comfy)
    shot_id = next(i for i, n in prompt.items() if n["class_type"] == "StoryMemShot")
    loader_id = next(i for i, n in prompt.items() if n["class_type"] == "StoryMemLoadVAE")
    cases = [
        ({"mode": "m3v"}, "not in the list"),
        ({"steps": 0}, "smaller than min"),
        ({"memory": [loader_id, 0]}, "expects STORYMEM_BANK but gets STORYMEM_VAE"),
    ]
    for change, message in cases:
        broken = json.loads(json.dumps(prompt))
        broken[shot_id]["inputs"].update(change)
        with pytest.raises(GraphError, match=message):
            validate(broken, comfy)
    broken = json.loads(json.dumps(prompt))
    del broken[shot_id]["inputs"]["vae"]
    with pytest.raises(GraphError, match="required input vae is missing"):
        validate(broken, comfy)


ALL_WORKFLOWS = sorted(WORKFLOWS[0].parent.rglob("*.json"))  # the engine's and the native ones
# ComfyUI's frontend draws nodes without text below min_font_size_for_lod / (NODE_TEXT_SIZE * sqrt(devicePixelRatio))
# (its LiteGraph canvas: 8 px / 14 px at a ratio of 1); a workflow must open at or above it.
LOW_QUALITY_ZOOM = 8 / 14
NODE_TITLE_HEIGHT = 30
MODEL_FILE = re.compile(r"\.(safetensors|sft|pth|gguf)$")
DIALOG_SOURCES = ("https://huggingface.co/", "https://civitai.com/")  # what ComfyUI's Missing Models dialog fetches
DIALOG_SUFFIXES = (".safetensors", ".sft")


def _rect(node: dict) -> list[float]:
    """A node's saved rectangle, title bar included (the browser test measures them after a run too)."""
    return [node["pos"][0], node["pos"][1] - NODE_TITLE_HEIGHT, node["size"][0], node["size"][1] + NODE_TITLE_HEIGHT]


@pytest.mark.parametrize("path", ALL_WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_opens_readable_in_titled_groups_without_overlaps(path):
    workflow = load(path)
    assert workflow["extra"]["ds"]["scale"] >= LOW_QUALITY_ZOOM, "opens below the zoom where ComfyUI draws text"
    nodes, groups = workflow["nodes"], workflow["groups"]
    overlapping = [(a["id"], b["id"]) for i, a in enumerate(nodes) for b in nodes[i + 1:]
                   if boxes_overlap(_rect(a), _rect(b))]
    assert overlapping == []
    assert groups and all(group["title"].strip() for group in groups)
    assert [(a["title"], b["title"]) for i, a in enumerate(groups) for b in groups[i + 1:]
            if boxes_overlap(a["bounding"], b["bounding"])] == []
    for node in nodes:
        holding = [group["title"] for group in groups if box_inside(_rect(node), group["bounding"])]
        assert len(holding) == 1, (node.get("title") or node["type"], holding)


@pytest.mark.parametrize("path", ALL_WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_offers_a_download_for_every_model_file(path):
    """ComfyUI's Missing Models dialog reads node.properties.models (name, url, directory) and fetches .safetensors
    from Hugging Face or Civitai; the pack's model files panel fetches the rest (storymem_core.downloads). A GGUF
    entry carries no url: ComfyUI's model lists never show .gguf files, so the dialog would call one missing forever."""
    panel = {(file.folder, file.name) for file in KNOWN_FILES}
    for node in load(path)["nodes"]:
        files = [v for v in node.get("widgets_values", []) if isinstance(v, str) and MODEL_FILE.search(v)]
        if not files:
            continue
        offered = {entry["name"]: entry for entry in node["properties"].get("models", [])}
        assert sorted(offered) == sorted(files), (node["type"], files, offered)
        for entry in offered.values():
            by_dialog = entry.get("url", "").startswith(DIALOG_SOURCES) and entry["name"].endswith(DIALOG_SUFFIXES)
            assert by_dialog or (entry["directory"], entry["name"]) in panel, entry
            if "url" in entry:
                assert entry["url"].endswith("/" + entry["name"].rsplit("/", 1)[-1]), entry
            else:
                assert entry["name"].endswith(".gguf"), entry


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_shot_values_match_the_story_shot_that_feeds_them(path, comfy):
    """A linked prompt / cut is never shown stale: the saved value is the one the Story Shot sends."""
    workflow = load(path)
    by_id = {n["id"]: n for n in workflow["nodes"]}
    origin = {link[0]: link[1] for link in workflow["links"]}
    for node in workflow["nodes"]:
        if node["type"] not in ("StoryMemFirstShot", "StoryMemShot"):
            continue
        story_shot = next(by_id[origin[s["link"]]] for s in node["inputs"] if s["name"] == "prompt")
        script = by_id[origin[story_shot["inputs"][0]["link"]]]
        story = comfy["StoryMemStoryScript"]().read(*script["widgets_values"])["result"][0]
        number = story_shot["widgets_values"][0]
        shot = story.shots[number - 1]
        values = dict(zip(widget_slots(comfy[node["type"]]), node["widgets_values"]))
        assert values["prompt"] == shot.prompt and values.get("cut", shot.cut) == shot.cut
        assert node["title"].startswith(f"Shot {number} · ")


PLACING_NODES = ("StoryMemConditioning", "StoryMemNativeShot", "StoryMemNativeStoryRunner")


@pytest.mark.parametrize("path", sorted((WORKFLOWS[0].parent / "native").glob("*.json")), ids=lambda p: p.stem)
def test_native_workflow_samples_with_the_authors_memory_positions(path):
    """Each native shot's StoryMem Conditioning (or Native Shot, or the Native Story Runner) carries the upstream
    placement (it attaches the positions itself, see test_host_models); no other node places the memory."""
    workflow = load(path)
    placing = [n for n in workflow["nodes"] if n["type"] in PLACING_NODES]
    runs_a_story = any(n["type"] == "StoryMemNativeStoryRunner" for n in placing)
    # the placement widget is among the last (the runners' ablation switches follow it); the other placement nowhere
    assert len(placing) == (1 if runs_a_story else 3)
    assert all("upstream" in n["widgets_values"][-4:] and "first-release" not in n["widgets_values"] for n in placing)
    assert not any("Positions" in n["type"] for n in workflow["nodes"])


def test_every_image_a_workflow_loads_ships_with_the_pack_and_reaches_the_input_folder(tmp_path):
    loaded = {node["widgets_values"][0] for path in WORKFLOWS[0].parent.rglob("*.json")
              for node in json.loads(path.read_text())["nodes"] if node["type"] == "LoadImage"}
    assert loaded and {image.name for image in EXAMPLE_INPUTS.glob("*.png")} == loaded
    for name in loaded:
        with Image.open(EXAMPLE_INPUTS / name) as image:
            assert image.size == (832, 480) and image.mode == "RGB"  # the shipped workflows' shot size
    (tmp_path / "storymem_reference_2.png").write_bytes(b"the user's own")
    written = copy_example_inputs(tmp_path)
    assert written == [tmp_path / "storymem_reference_1.png"]  # a file of the user's is never replaced
    assert written[0].read_bytes() == (EXAMPLE_INPUTS / "storymem_reference_1.png").read_bytes()
    assert (tmp_path / "storymem_reference_2.png").read_bytes() == b"the user's own"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["storymem_reference_1.png", "storymem_reference_2.png"]
