"""The paper's scorers against VBench's own code: `viclip_*` and `aesthetic_*` golden cases made by
tests/golden_tools/make_viclip_golden.py (VBench 0.1.5 at tiny sizes, weights drawn by `golden_data.seeded_state`)."""

import pytest
import torch
from golden_data import cases, load_case, seeded_state, with_prefix

from storymem_core.paper_evaluation import shot_aesthetic, shot_video_embedding
from storymem_core.scorers import (
    AestheticHead,
    OpenClipEncoder,
    VBenchClipEncoder,
    vbench_frame_indices,
    vbench_pixels,
    vision_tower,
)
from storymem_core.viclip import ViCLIP, ViCLIPConfig, ViCLIPScorer

TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}


def _viclip(config: dict) -> ViCLIPScorer:
    model = ViCLIP(ViCLIPConfig.from_dict(config["config"]))
    shapes = {name: tuple(shape) for name, shape in config["parameters"].items()}
    assert {name: tuple(t.shape) for name, t in model.state_dict().items()} == shapes  # VBench's names and shapes
    model.load_state_dict(seeded_state(shapes, config["seed"]))
    return ViCLIPScorer(model)


def _videos(config: dict) -> list[str]:
    return [name.removesuffix(".mp4") for name in config["videos"]]


@pytest.mark.parametrize("path", cases("viclip_"))
def test_viclip_tokens_match_vbench(path):
    config, tensors = load_case(path)
    assert torch.equal(_viclip(config).tokens(config["prompts"]), tensors["tokens"])


@pytest.mark.parametrize("path", cases("viclip_"))
def test_viclip_frames_are_sampled_and_prepared_as_vbench_does(path):
    config, tensors = load_case(path)
    for video in _videos(config):
        frames = tensors[f"{video}.frames"]
        indices = vbench_frame_indices(len(frames), config["config"]["num_frames"])
        assert indices == tensors[f"{video}.indices"].tolist()
        pixels = vbench_pixels(frames[indices], config["config"]["image_size"])
        torch.testing.assert_close(pixels[:, :, 96:112, 96:112], tensors[f"{video}.pixels_patch"], **TOLERANCE)


@pytest.mark.parametrize("path", cases("viclip_"))
def test_viclip_embeddings_and_text_video_similarity_match_vbench(path):
    config, tensors = load_case(path)
    scorer = _viclip(config)
    text = scorer.embed_text(config["prompts"])
    torch.testing.assert_close(text, tensors["text"], **TOLERANCE)
    videos = torch.stack([shot_video_embedding(tensors[f"{v}.frames"], scorer) for v in _videos(config)])
    for video, embedding in zip(_videos(config), videos):
        torch.testing.assert_close(embedding, tensors[f"{video}.embedding"], **TOLERANCE)
    torch.testing.assert_close(videos @ text.T, tensors["similarity"], **TOLERANCE)


@pytest.mark.parametrize("path", cases("viclip_"))
def test_viclip_with_a_perturbed_weight_misses_vbench(path):
    config, tensors = load_case(path)
    scorer = _viclip(config)
    with torch.no_grad():
        scorer.model.vision_encoder.temporal_positional_embedding[0, 0, 0] += 0.5  # one channel of frame 0's time
    video = _videos(config)[0]
    embedding = shot_video_embedding(tensors[f"{video}.frames"], scorer)
    assert not torch.allclose(embedding, tensors[f"{video}.embedding"], **TOLERANCE)


def _aesthetic(config: dict, tensors: dict) -> tuple[VBenchClipEncoder, AestheticHead]:
    visual = vision_tower(config["open_clip"], "cpu")
    shapes = {name: tuple(shape) for name, shape in config["parameters"].items()}
    assert {name: tuple(t.shape) for name, t in visual.state_dict().items()} == shapes  # OpenAI CLIP's names
    visual.load_state_dict(seeded_state(shapes, config["seed"]))
    head_state = with_prefix(tensors, "head.")
    head = torch.nn.Linear(head_state["weight"].shape[1], 1)
    head.load_state_dict(head_state)
    return VBenchClipEncoder(visual, mean=(0.48145466, 0.4578275, 0.40821073),
                             std=(0.26862954, 0.26130258, 0.27577711)), AestheticHead([head])


@pytest.mark.parametrize("path", cases("aesthetic_"))
def test_aesthetic_features_and_score_match_vbench(path):
    config, tensors = load_case(path)
    encoder, head = _aesthetic(config, tensors)
    videos = _videos(config)
    for video in videos:
        torch.testing.assert_close(encoder.embed(tensors[f"{video}.frames"]), tensors[f"{video}.features"],
                                   **TOLERANCE)
    scores = torch.tensor([shot_aesthetic(tensors[f"{v}.frames"], encoder, head) for v in videos])
    torch.testing.assert_close(scores, tensors["score"], **TOLERANCE)


@pytest.mark.parametrize("path", cases("aesthetic_"))
def test_aesthetic_with_squashed_frames_misses_vbench(path):
    """VBench crops the centre after resizing the shorter side; the quick mode's squash gives other features."""
    config, tensors = load_case(path)
    encoder, head = _aesthetic(config, tensors)
    squashing = OpenClipEncoder(encoder.visual, encoder.mean.flatten(), encoder.std.flatten())
    video = _videos(config)[0]
    assert not torch.allclose(squashing.embed(tensors[f"{video}.frames"]), tensors[f"{video}.features"],
                              **TOLERANCE)
