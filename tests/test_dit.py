"""The Wan DiT equals the reference forward on every dit_* golden case: the authors' fixed code (`*_negrope`, memory
at negative time positions) with our default placement, the first release's cases with its numbering."""

import pytest
import torch
from golden_data import case_placement, cases, load_case, memory_cases, other_placement, with_prefix
from helpers import build_dit, run_case

from storymem_core.choices import DEFAULT_MEMORY_POSITIONS
from storymem_core.errors import ConditioningError
from storymem_core.positions import DEFAULT_SPACING, memory_frame_positions
from storymem_core.wan.dit import DiTConfig, WanDiT


def case_positions(config: dict, tensors: dict) -> torch.Tensor | None:
    """The frame positions our engine gives the case's memory: the default placement for the authors' fixed code."""
    placement, spacing = case_placement(config)
    frames = tensors["x"].shape[1]
    if placement == DEFAULT_MEMORY_POSITIONS:
        assert spacing == DEFAULT_SPACING  # the default is exactly what the case was made with
        return memory_frame_positions(config["memory_size"], frames)
    return memory_frame_positions(config.get("memory_size", 0), frames, placement, spacing)


@pytest.mark.parametrize("path", cases("dit_"))
def test_dit_forward_matches_reference(path):
    config, tensors = load_case(path)
    model = build_dit(config, with_prefix(tensors, "weight."))
    out = run_case(model, tensors, frame_positions=case_positions(config, tensors))
    torch.testing.assert_close(out, tensors["out"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("path", memory_cases("dit_"))
def test_dit_other_memory_placement_misses_reference(path):
    """The placement matters: the case's memory at the other placement gives another output."""
    config, tensors = load_case(path)
    placement, _ = case_placement(config)
    other = other_placement(placement)
    model = build_dit(config, with_prefix(tensors, "weight."))
    positions = memory_frame_positions(config["memory_size"], tensors["x"].shape[1], other)
    assert not torch.allclose(run_case(model, tensors, frame_positions=positions), tensors["out"], atol=1e-4)


@pytest.mark.parametrize("path", cases("dit_"))
def test_dit_bf16_weights_stay_close_to_reference(path):
    config, tensors = load_case(path)
    model = build_dit(config, with_prefix(tensors, "weight.")).cast_weights(torch.bfloat16)
    out = run_case(model, tensors, frame_positions=case_positions(config, tensors))
    assert out.dtype == torch.float32
    relative = (out - tensors["out"]).norm() / tensors["out"].norm()
    assert relative < 0.05


@pytest.mark.parametrize("path", cases("dit_"))
def test_dit_rope_depends_only_on_relative_frame_positions(path):
    """Shifting every temporal position by the same amount leaves the output unchanged (RoPE is relative)."""
    config, tensors = load_case(path)
    model = build_dit(config, with_prefix(tensors, "weight."))
    frames = tensors["x"].shape[1] // model.config.patch_size[0]
    positions = case_positions(config, tensors)
    positions = torch.arange(frames) if positions is None else positions
    shifted = run_case(model, tensors, frame_positions=positions + 7)
    torch.testing.assert_close(shifted, tensors["out"], atol=1e-4, rtol=1e-4)
    spread = run_case(model, tensors, frame_positions=positions * 3)
    assert not torch.allclose(spread, tensors["out"], atol=1e-4)


def test_dit_rejects_wrong_channel_count():
    model = WanDiT(
        DiTConfig(
            model_type="i2v",
            in_dim=36,
            dim=32,
            ffn_dim=64,
            num_heads=2,
            num_layers=1,
            text_dim=8,
            text_len=4,
            freq_dim=16,
        )
    )
    with pytest.raises(ConditioningError, match="36 input channels"):
        model(torch.zeros(1, 16, 1, 4, 4), torch.zeros(1), torch.zeros(1, 4, 8))
