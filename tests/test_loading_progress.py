"""Loading the experts shows its progress and can be stopped: a Wan2.2 14B expert is over a thousand tensors and tens
of GB read from disk, which a user otherwise watches as a frozen bar (ComfyUI) or a silent terminal (CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import call
from safetensors import safe_open
from safetensors.torch import save_file

from nodes import host
from storymem_core import tiny_models as tiny
from storymem_core.errors import CheckpointError, GenerationInterrupted
from storymem_core.expert_pair import ExpertLoras, load_expert_pair
from storymem_core.wan.fp8 import quantize_dit_to_fp8
from storymem_core.weights.checkpoint import Checkpoint
from storymem_core.weights.loading import load_dit

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny.write_tiny_models(tmp_path_factory.mktemp("models"))


def _pair(models, on_progress, loras=True):
    experts = models / "diffusion_models"
    storymem = [ExpertLoras(models / "loras" / tiny.STORYMEM_LORA_HIGH, models / "loras" / tiny.STORYMEM_LORA_LOW)]
    return load_expert_pair(experts / tiny.I2V_HIGH, experts / tiny.I2V_LOW, "auto", "none", False, CPU, 0, 1000,
                            storymem if loras else [], on_progress)


def _fp8_scaled_copy(path: Path, to: Path) -> Path:
    """`path`'s expert as an fp8 "scaled" file (fp8 weights, a scale_weight beside each), as ComfyUI publishes them."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(quantize_dit_to_fp8(load_dit(path, torch.float32)).state_dict(), str(to), metadata)
    return to


@pytest.mark.parametrize("keep_fp8", [False, True], ids=["dequantised", "fp8-kept"])
def test_an_expert_reports_each_tensor_of_its_file_as_it_is_read(models, tmp_path, keep_fp8):
    path = _fp8_scaled_copy(models / "diffusion_models" / tiny.I2V_HIGH, tmp_path / "expert_fp8_scaled.safetensors")
    assert Checkpoint(path).info.fp8 is not None
    seen = []
    load_dit(path, torch.bfloat16, keep_fp8, on_tensor=lambda done, total: seen.append((done, total)))
    total = len(Checkpoint(path).shapes())
    assert total > 20 and seen == [(done, total) for done in range(1, total + 1)]


def test_an_expert_pair_with_its_loras_reports_one_rising_percentage_to_100(models):
    seen = []
    _pair(models, lambda done, total: seen.append((done, total)))
    percents = [done for done, _ in seen]
    assert {total for _, total in seen} == {100} and percents == sorted(percents) and percents[-1] == 100
    assert 25 in percents and 50 in percents  # each expert is a quarter of the whole, then the four merges
    assert any(0 < p < 25 for p in percents) and any(25 < p < 50 for p in percents)  # within each expert too


def test_a_stop_while_an_expert_reads_ends_the_load_there(models):
    seen = []

    def stop_at_a_fifth(percent: int, total: int) -> None:
        seen.append(percent)
        if percent >= 20:
            raise GenerationInterrupted("stopped")

    with pytest.raises(GenerationInterrupted):
        _pair(models, stop_at_a_fifth, loras=False)  # two stages: the high-noise expert is the first half
    assert 20 <= max(seen) < 50  # stopped within the high-noise expert's tensors; the low-noise one never started


def test_the_experts_node_shows_loading_on_a_bar_and_cancel_stops_it(models, tmp_path):
    updates = []

    class WatchedHost(host.StandaloneHost):
        def progress(self, total: int, description: str):
            updates.append(("bar", total, description))
            return type("Bar", (), {"update": lambda bar, value, total, preview=None: updates.append(value)})()

    previous = host.use(WatchedHost(models, tmp_path / "output"))
    try:
        loaded = call("StoryMemLoadExperts", high_noise_model=tiny.I2V_HIGH, low_noise_model=tiny.I2V_LOW,
                      weight_dtype="auto", offload="none")[0][0]
        assert loaded.kind == "i2v" and updates[0] == ("bar", 100, "loading the Wan experts") and updates[-1] == 100
        host.current().interrupt()  # Cancel pressed while the experts load
        with pytest.raises(GenerationInterrupted):
            call("StoryMemLoadExperts", high_noise_model=tiny.I2V_HIGH, low_noise_model=tiny.I2V_LOW,
                 weight_dtype="auto", offload="none")
    finally:
        host.use(previous)


def test_a_damaged_lora_is_refused_before_any_expert_tensor_is_read(models, tmp_path):
    damaged = tmp_path / "backbone_low_noise.pth"
    damaged.write_bytes((models / "loras" / tiny.STORYMEM_LORA_LOW).read_bytes()[:1000])  # a cut-off download
    experts, read = models / "diffusion_models", []
    with pytest.raises(CheckpointError, match="backbone_low_noise.pth"):
        load_expert_pair(experts / tiny.I2V_HIGH, experts / tiny.I2V_LOW, "auto", "none", False, CPU, 0, 1000,
                         [ExpertLoras(models / "loras" / tiny.STORYMEM_LORA_HIGH, damaged)],
                         lambda done, total: read.append(done))
    assert read == []
