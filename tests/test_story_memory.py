"""The memory grows: on the tiny models, shots of a story leave keyframes of their own in the bank, because the
tiny keyframe encoder tells frames apart by their pixels (as a real CLIP does by what they show)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import VALID

from storymem_core.bank_files import load_bank
from storymem_core.files import load_image
from storymem_core.keyframes import DEDUP_THRESHOLD, SIMILARITY_THRESHOLD
from storymem_core.memory import MemoryBank
from storymem_core.model_roles import find_model_files, required_roles
from storymem_core.pipeline import StoryOptions, run_story
from storymem_core.sampling import SamplerSettings
from storymem_core.story import loads_story
from storymem_core.story_folder import StoryFolder
from storymem_core.story_models import LoadOptions, load_story_models
from storymem_core.tiny_models import TINY_SHOT, write_reference_images, write_tiny_models
from storymem_core.weights.scorer_files import load_aesthetic_head, load_keyframe_encoder

CPU = torch.device("cpu")
OPTIONS = StoryOptions(
    first_shot="t2v",
    continuation="mi2v",
    size_wh=(TINY_SHOT["width"], TINY_SHOT["height"]),
    frames=TINY_SHOT["frames"],
    m2v=SamplerSettings(steps=TINY_SHOT["steps"]),
    t2v=SamplerSettings(steps=TINY_SHOT["steps"]),
)


def labels(bank: MemoryBank) -> list[tuple[int, int]]:
    """Each keyframe as (shot, frame index): where it was taken from."""
    return [(keyframe.shot, keyframe.frame_index) for keyframe in bank.keyframes]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return write_tiny_models(tmp_path_factory.mktemp("models"))


def test_tiny_keyframe_encoder_tells_images_apart_and_knows_them_shifted(models_dir, tmp_path):
    files = find_model_files(models_dir, ["clip", "aesthetic"])
    encoder = load_keyframe_encoder(files["clip"], "unused", CPU)
    names = write_reference_images(tmp_path, count=2, size=(48, 48), seed=3)  # two smooth colour fields
    field, other = (load_image(tmp_path / name) for name in names)
    embeddings = encoder.embed(torch.stack([field, torch.roll(field, shifts=2, dims=1), other]))
    assert embeddings[0] @ embeddings[1] > SIMILARITY_THRESHOLD  # the same field moved a little: still alike
    assert embeddings[0] @ embeddings[2] < DEDUP_THRESHOLD  # another field: a new keyframe, not a duplicate
    head = load_aesthetic_head(files["aesthetic"])
    assert (head.score(None, embeddings) >= head.threshold).all()  # the quality filter lets them through


def test_story_memory_holds_keyframes_of_more_than_one_shot(models_dir, tmp_path):
    story = loads_story(json.dumps(VALID))  # 3 shots: cut, continuation (MI2V), cut
    files = find_model_files(models_dir, required_roles(OPTIONS.first_shot))
    models = load_story_models(files, OPTIONS, LoadOptions(device=CPU, quality="aesthetic"))
    saved = []
    run_story(story, models, OPTIONS, tmp_path, on_saved=lambda *told: saved.append(told))
    assert [(index, total) for index, total, _ in saved] == [(0, 3), (1, 3), (2, 3)]
    folder = StoryFolder(tmp_path)
    for index, _, memory in saved:  # what the caller is told is the bank on disk
        assert labels(load_bank(folder.bank(index))) == labels(memory)
    final = saved[-1][2]
    assert len(final) >= 2 and len({k.shot for k in final.keyframes}) >= 2
    assert len(final) > len(saved[0][2])  # later shots added to what the first one gave
