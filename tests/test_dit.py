"""The Wan DiT equals the reference forward on every dit_* golden case."""

import pytest
import torch
from golden_data import cases, load_case, with_prefix
from helpers import build_dit, run_case

from storymem_core.errors import ConditioningError
from storymem_core.wan.dit import DiTConfig, WanDiT


@pytest.mark.parametrize("path", cases("dit_"))
def test_dit_forward_matches_reference(path):
    config, tensors = load_case(path)
    model = build_dit(config, with_prefix(tensors, "weight."))
    torch.testing.assert_close(run_case(model, tensors), tensors["out"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("path", cases("dit_"))
def test_dit_bf16_weights_stay_close_to_reference(path):
    config, tensors = load_case(path)
    model = build_dit(config, with_prefix(tensors, "weight.")).cast_weights(torch.bfloat16)
    out = run_case(model, tensors)
    assert out.dtype == torch.float32
    relative = (out - tensors["out"]).norm() / tensors["out"].norm()
    assert relative < 0.05


@pytest.mark.parametrize("path", cases("dit_"))
def test_dit_rope_depends_only_on_relative_frame_positions(path):
    """Shifting every temporal position by the same amount leaves the output unchanged (RoPE is relative)."""
    config, tensors = load_case(path)
    model = build_dit(config, with_prefix(tensors, "weight."))
    frames = tensors["x"].shape[1] // model.config.patch_size[0]
    shifted = run_case(model, tensors, frame_positions=torch.arange(frames) + 7)
    torch.testing.assert_close(shifted, tensors["out"], atol=1e-4, rtol=1e-4)
    spread = run_case(model, tensors, frame_positions=torch.arange(frames) * 3)
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
