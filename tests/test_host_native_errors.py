"""Inside a real ComfyUI, every native node's error names its shot (its number, or the node's title) and points only at
inputs and outputs the native path has: never at the engine shot nodes' last_frames where Trim Frames' frames feed
previous_frames, never at the engine's First Shot node."""

from __future__ import annotations

import json

import pytest
from comfy_host import run_in_host


@pytest.fixture(scope="module")
def errors(tmp_path_factory) -> dict:
    scratch = tmp_path_factory.mktemp("native_errors")
    run_in_host("native_errors.py", scratch, scratch=scratch)
    return json.loads((scratch / "errors.json").read_text())


def test_host_native_conditioning_error_names_the_node_and_the_native_chains_frames(errors):
    kind, message = errors["conditioning_without_previous_frames"]
    assert kind == "ConditioningError" and message.startswith("'Shot 2: StoryMem Conditioning': cut is false")
    assert "connect the previous shot's frames (StoryMem Trim Frames' frames" in message


def test_host_native_conditioning_on_an_empty_bank_names_native_ways_to_start_the_memory(errors):
    kind, message = errors["conditioning_on_an_empty_bank"]
    assert message.startswith("'Shot 2: StoryMem Conditioning': the memory bank is empty")
    assert "Memory Bank from Images" in message and "First Shot node" not in message


def test_host_native_trim_error_names_the_node(errors):
    assert errors["trim_without_frames_left"][1].startswith("'Shot 2: drop given frames': images has 1 frames")


@pytest.mark.parametrize("case,sentence", [
    ("native_shot_without_previous_frames", "connect the previous shot's frames"),
    ("native_shot_with_prompt_and_positive", "both positive and prompt are given"),
    ("native_shot_without_clip", "clip is not connected"),
])
def test_host_native_shot_error_names_its_shot(errors, case, sentence):
    message = errors[case][1]
    assert message.startswith("shot 3 ('The keeper") and sentence in message
