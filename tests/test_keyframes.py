"""Keyframe selection: the reference's rule on golden similarity data, and the real path on a tiny CLIP."""

from __future__ import annotations

import json
import logging

import open_clip
import pytest
import torch
from golden_data import golden_dir
from safetensors.torch import save_file

from storymem_core.errors import CheckpointError, ConditioningError
from storymem_core.keyframes import dedup_against_bank, select_indices, select_keyframes
from storymem_core.memory import MemoryBank
from storymem_core.weights.scorer_files import load_aesthetic_head, load_hpsv3, load_keyframe_encoder

TINY_CLIP = "storymem-test-tiny-clip"
TINY_CONFIG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


def _golden_cases(field: str):
    """pytest params over the keyframes.json cases that carry `field`; skipped when the file is absent."""
    path = golden_dir() / "keyframes.json"
    if not path.exists():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no keyframes.json in {golden_dir()}"))]
    cases = json.loads(path.read_text())["cases"]
    found = [pytest.param(case, id=name) for name, case in cases.items() if field in case]
    return found or [pytest.param(None, marks=pytest.mark.skip(reason=f"no keyframes.json case with '{field}'"))]


@pytest.mark.parametrize("case", _golden_cases("sim"))
def test_keyframe_selection_matches_golden_at_every_threshold(case):
    search = select_indices(
        case["sim"],
        case.get("quality"),
        case["start_threshold"],
        case["step"],
        case["max_keyframes"],
        case["quality_threshold"],
    )
    assert {f"{threshold:.2f}": list(indices) for threshold, indices in search.trace} == case["indices_by_threshold"]
    assert list(search.indices) == case["final_indices"]
    assert search.threshold == pytest.approx(case["final_threshold"], abs=1e-9)


@pytest.mark.parametrize("case", _golden_cases("sim_new_vs_bank"))
def test_keyframe_dedup_against_bank_matches_golden(case):
    assert dedup_against_bank(case["sim_new_vs_bank"], case["threshold"]) == case["kept"]


def test_keyframe_first_is_first_acceptable_and_comparisons_start_at_frame_2():
    sim = [[1.0 if i == j else 0.0 for j in range(5)] for i in range(5)]
    assert select_indices(sim, max_keyframes=5).indices == (0, 2, 3, 4)  # frame 1 is never compared
    assert select_indices(sim, [1, 5, 5, 1, 5], max_keyframes=5, quality_threshold=3).indices == (1, 2, 4)
    assert select_indices(sim, [1, 1, 1, 1, 1], quality_threshold=3).indices == ()


class CountingEncoder:
    """Counts the images each embed call sees: the cost the threshold search must not multiply."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.images = 0
        self.calls = 0

    def embed(self, frames):
        self.images += len(frames)
        self.calls += 1
        return self.encoder.embed(frames)


@pytest.fixture(scope="module")
def tiny_clip_file(tmp_path_factory):
    """A tiny open_clip CLIP (random, seeded) saved like a real open_clip file, full model, text tower included."""
    folder = tmp_path_factory.mktemp("clip")
    config_path = folder / f"{TINY_CLIP}.json"
    config_path.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config_path)
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CONFIG)
    path = folder / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def tiny_encoder(tiny_clip_file):
    return load_keyframe_encoder(tiny_clip_file, TINY_CLIP, batch_size=16)


def fast_pan(frames: int = 81, size: int = 48, shift: int = 24, seed: int = 0) -> torch.Tensor:
    """uint8 [T, size, size, 3]: a camera sweeping fast over a wide panorama of changing colours."""
    generator = torch.Generator().manual_seed(seed)
    colours = torch.rand(1, 3, 2, 41, generator=generator) * 255
    panorama = torch.nn.functional.interpolate(
        colours, size=(size, size + (frames - 1) * shift), mode="bilinear", align_corners=True
    )[0]
    panorama = panorama + torch.rand(panorama.shape, generator=generator) * 40 - 20
    views = torch.stack([panorama[:, :, i * shift : i * shift + size] for i in range(frames)])
    return views.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8)


def test_keyframe_selection_embeds_each_frame_once_whatever_the_threshold_search(tiny_encoder):
    frames = fast_pan()
    counter = CountingEncoder(tiny_encoder)
    keyframes = select_keyframes(frames, counter, shot=4)
    embeddings = tiny_encoder.embed(frames)
    search = select_indices(embeddings @ embeddings.T)
    assert len(search.trace) > 5, "the fast pan should make the threshold search take several steps"
    assert counter.images == len(frames) and counter.calls == 1
    assert [k.frame_index for k in keyframes] == list(search.indices)
    assert 1 <= len(keyframes) <= 3
    for keyframe in keyframes:
        assert torch.equal(keyframe.image, frames[keyframe.frame_index])
        assert keyframe.shot == 4 and keyframe.source == "generated"
        assert keyframe.scores["threshold"] == pytest.approx(search.threshold)


def test_keyframe_dedup_skips_frames_already_in_the_bank(tiny_encoder):
    frames = fast_pan()
    first = select_keyframes(frames, tiny_encoder)
    bank = MemoryBank().add(first[:1])
    counter = CountingEncoder(tiny_encoder)
    again = select_keyframes(frames, counter, bank=bank)
    assert [k.frame_index for k in again] == [k.frame_index for k in first[1:]]
    assert counter.images == len(frames) + len(bank)
    assert all(k.scores["bank_similarity"] <= 0.9 for k in again)


class ListScorer:
    def __init__(self, quality, threshold):
        self.quality, self.threshold = torch.tensor(quality), threshold

    def score(self, frames, embeddings):
        return self.quality


def test_keyframe_quality_filter_uses_scorer_and_its_threshold(tiny_encoder):
    frames = fast_pan(frames=9)
    quality = [0.0, 0.0, 0.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]
    keyframes = select_keyframes(frames, tiny_encoder, scorer=ListScorer(quality, threshold=3.0))
    assert keyframes[0].frame_index == 3
    assert all(k.scores["quality"] == 5.0 for k in keyframes)
    assert select_keyframes(frames, tiny_encoder, scorer=ListScorer(quality, 3.0), quality_threshold=6.0) == []


def test_keyframe_without_scorer_warns_that_the_filter_is_off(tiny_encoder, caplog):
    from storymem_core import keyframes as module

    module._warn_quality_filter_off.cache_clear()
    with caplog.at_level(logging.WARNING, logger="storymem_core.keyframes"):
        select_keyframes(fast_pan(frames=5), tiny_encoder)
    assert "without the quality filter" in caplog.text


def test_keyframe_selection_rejects_float_frames(tiny_encoder):
    with pytest.raises(ConditioningError, match="uint8 frames"):
        select_keyframes(torch.rand(5, 8, 8, 3), tiny_encoder)


def test_keyframe_encoder_missing_file_names_it_and_the_folder(tmp_path):
    missing = tmp_path / "clip_vit_b_32.safetensors"
    with pytest.raises(CheckpointError, match="clip_vit_b_32.safetensors.*models/clip_vision"):
        load_keyframe_encoder(missing)


def test_keyframe_encoder_corrupt_file_says_to_download_again(tmp_path):
    broken = tmp_path / "clip.safetensors"
    broken.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="clip.safetensors is not a complete safetensors file.*download it again"):
        load_keyframe_encoder(broken)


def test_keyframe_encoder_rejects_weights_of_another_model(tiny_clip_file):
    with pytest.raises(CheckpointError, match="does not fit open_clip 'ViT-B-32-quickgelu'"):
        load_keyframe_encoder(tiny_clip_file)


def test_keyframe_encoder_embeddings_are_unit_length_and_batch_independent(tiny_clip_file, tiny_encoder):
    frames = fast_pan(frames=7)
    one_batch = load_keyframe_encoder(tiny_clip_file, TINY_CLIP, batch_size=64).embed(frames)
    torch.testing.assert_close(tiny_encoder.embed(frames), one_batch, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_batch.norm(dim=-1), torch.ones(7))
    assert one_batch.shape == (7, TINY_CONFIG["embed_dim"])


@pytest.mark.parametrize("layout", ["linear", "mlp"])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_keyframe_aesthetic_head_reads_laion_layouts(tmp_path, layout, suffix):
    torch.manual_seed(0)
    if layout == "linear":
        layers = [torch.nn.Linear(32, 1)]
        state = layers[0].state_dict()
    else:  # improved predictor: Linear, Dropout, Linear, Dropout, ..., Linear, Linear
        layers = [torch.nn.Linear(32, 16), torch.nn.Linear(16, 8), torch.nn.Linear(8, 1)]
        state = {
            f"layers.{i}.{name}": t for i, layer in zip((0, 2, 11), layers) for name, t in layer.state_dict().items()
        }
    path = tmp_path / f"aesthetic{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    head = load_aesthetic_head(path, threshold=2.5)
    embeddings = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1)
    expected = embeddings
    for layer in layers:
        expected = layer(expected)
    torch.testing.assert_close(head.score(None, embeddings), expected[:, 0].detach())
    assert head.threshold == 2.5


def test_keyframe_aesthetic_head_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="sa_0_4_vit_b_32_linear.pth"):
        load_aesthetic_head(tmp_path / "missing.pth")
    path = tmp_path / "head.safetensors"
    save_file(torch.nn.Linear(512, 1).state_dict(), str(path))
    with pytest.raises(CheckpointError, match="expects 512-d CLIP embeddings but the encoder gives 32-d"):
        load_aesthetic_head(path).score(None, torch.zeros(2, 32))


def test_keyframe_hpsv3_is_never_read_from_a_pickled_file(tmp_path, monkeypatch):
    checkpoint = tmp_path / "HPSv3.pth"
    checkpoint.write_bytes(b"not opened")
    loaded = []
    monkeypatch.setitem(__import__("sys").modules, "hpsv3", type("hpsv3", (), {
        "HPSv3RewardInferencer": lambda **kwargs: loaded.append(kwargs)}))
    with pytest.raises(CheckpointError, match="HPSv3.pth is not a .safetensors file"):
        load_hpsv3(checkpoint, device="cpu")
    assert loaded == []


def test_keyframe_hpsv3_without_package_says_how_to_install(tmp_path, monkeypatch):
    checkpoint = tmp_path / "HPSv3.safetensors"
    checkpoint.write_bytes(b"")
    monkeypatch.setitem(__import__("sys").modules, "hpsv3", None)
    with pytest.raises(CheckpointError, match="pip install hpsv3"):
        load_hpsv3(checkpoint, device="cpu")
