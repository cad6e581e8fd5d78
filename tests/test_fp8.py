"""fp8 scaled linear layers: the fallback computes the dequantised math, and a quantised DiT stays close."""

import pytest
import torch
from golden_data import cases, load_case, with_prefix
from helpers import build_dit, run_case
from torch import nn

from storymem_core.errors import CheckpointError
from storymem_core.wan.fp8 import FP8, Fp8Linear, load_fp8_weights, quantize_dit_to_fp8, quantize_per_tensor

# e4m3 keeps 3 mantissa bits (~2.5% rms per weight); the golden tiny DiTs measured 0.17-0.26% (bf16: 0.4%)
DIT_FP8_RELATIVE_ERROR = 0.01


def test_fp8_linear_fallback_matches_dequantized_math():
    torch.manual_seed(0)
    linear = nn.Linear(48, 32)
    layer = Fp8Linear.from_linear(linear)
    assert layer.weight.dtype == FP8 and layer.scale_weight.shape == ()
    x = torch.randn(3, 5, 48)
    expected = x @ (layer.weight.float() * layer.scale_weight).T + linear.bias
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-6)


def test_fp8_quantize_per_tensor_uses_the_whole_range():
    weight = torch.randn(64, 64) * 3
    weight_fp8, scale = quantize_per_tensor(weight)
    assert weight_fp8.float().abs().max() == torch.finfo(FP8).max
    relative = (weight_fp8.float() * scale - weight).norm() / weight.norm()
    assert relative < 0.04


@pytest.mark.parametrize("path", cases("dit_"))
def test_dit_fp8_stays_close_to_reference(path):
    config, tensors = load_case(path)
    model = quantize_dit_to_fp8(build_dit(config, with_prefix(tensors, "weight.")))
    assert isinstance(model.blocks[0].ffn[0], Fp8Linear)
    out = run_case(model, tensors)
    relative = (out - tensors["out"]).norm() / tensors["out"].norm()
    assert relative < DIT_FP8_RELATIVE_ERROR


@pytest.mark.parametrize("path", cases("dit_"))
def test_dit_load_fp8_weights_rebuilds_the_quantised_model(path):
    config, tensors = load_case(path)
    quantised = quantize_dit_to_fp8(build_dit(config, with_prefix(tensors, "weight.")))
    state = quantised.state_dict()
    assert state["blocks.0.self_attn.q.weight"].dtype == FP8 and "blocks.0.self_attn.q.scale_weight" in state
    fresh = load_fp8_weights(build_dit(config, with_prefix(tensors, "weight.")), state)
    torch.testing.assert_close(run_case(fresh, tensors), run_case(quantised, tensors), atol=0, rtol=0)


def test_fp8_weight_without_scale_loads_with_scale_one():
    model = nn.Sequential(nn.Linear(16, 16))
    weight = torch.randn(16, 16).to(FP8)
    load_fp8_weights(model, {"0.weight": weight, "0.bias": torch.zeros(16)})
    assert isinstance(model[0], Fp8Linear)
    x = torch.randn(2, 16)
    torch.testing.assert_close(model(x), x @ weight.float().T, atol=1e-6, rtol=1e-6)


def test_fp8_weight_on_a_non_linear_layer_is_rejected():
    model = nn.Sequential(nn.LayerNorm(16))
    with pytest.raises(CheckpointError, match="LayerNorm"):
        load_fp8_weights(model, {"0.weight": torch.ones(16).to(FP8), "0.bias": torch.zeros(16)})
