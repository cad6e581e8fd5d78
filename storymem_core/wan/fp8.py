"""fp8 (e4m3fn) linear layers with a per-tensor weight scale, the layout of ComfyUI's "fp8 scaled" checkpoints.

A layer keeps its fp8 `weight` and float32 `scale_weight` (dequantised weight = weight * scale_weight), so
a 14B expert takes half the memory of bf16. On GPUs with fp8 tensor cores (compute capability >= 8.9) the
matmul runs in fp8 through `torch._scaled_mm`, the activation quantised per tensor with a dynamic scale;
elsewhere the weight is dequantised and multiplied in the activation's dtype.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..errors import CheckpointError

log = logging.getLogger(__name__)

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def quantize_per_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 tensor, float32 scale) with x ~= fp8 * scale; the scale maps max |x| onto the fp8 range."""
    scale = (x.detach().abs().amax().float() / FP8_MAX).clamp(min=1e-12)
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def _load_triton_quantizer() -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    try:
        from .fp8_kernels import quantize_fp8_per_tensor
    except ImportError:  # no triton (e.g. Windows wheels): the torch-ops quantiser is correct, just slower
        log.info("triton not found: fp8 activations are quantised with torch ops")
        return None
    return quantize_fp8_per_tensor


_triton_quantizer = _load_triton_quantizer() if torch.cuda.is_available() else None


def _quantize_activation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _triton_quantizer(x) if _triton_quantizer is not None else quantize_per_tensor(x)


_fp8_capable: dict[int, bool] = {}


def has_fp8_matmul(device: torch.device) -> bool:
    """True on CUDA devices with fp8 tensor cores (Ada, Hopper and newer)."""
    if device.type != "cuda":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _fp8_capable:
        _fp8_capable[index] = torch.cuda.get_device_capability(index) >= (8, 9)
    return _fp8_capable[index]


class Fp8Linear(nn.Module):
    """nn.Linear with an fp8 weight [out, in] and a per-tensor float32 `scale_weight`; bias stays high precision."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        bias_dtype: torch.dtype = torch.bfloat16,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8, device=device),
                                   requires_grad=False)
        self.register_buffer("scale_weight", torch.ones((), dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=bias_dtype, device=device)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Fp8Linear":
        bias_dtype = linear.weight.dtype if linear.bias is None else linear.bias.dtype
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.device, bias_dtype)
        weight, scale = quantize_per_tensor(linear.weight)
        layer.weight.data, layer.scale_weight = weight, scale
        if linear.bias is not None:
            layer.bias.data = linear.bias.detach().clone()
        return layer

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return (self.weight.float() * self.scale_weight).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if not (has_fp8_matmul(x.device) and x.dtype in (torch.bfloat16, torch.float16)):
            return nn.functional.linear(x, self.dequantized_weight(x.dtype), bias)
        x_fp8, x_scale = _quantize_activation(x.reshape(-1, self.in_features))
        out = torch._scaled_mm(
            x_fp8, self.weight.t(), scale_a=x_scale, scale_b=self.scale_weight, bias=bias, out_dtype=x.dtype
        )
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, fp8"


def _replace(model: nn.Module, qualified_name: str, layer: nn.Module) -> None:
    parent_name, _, child = qualified_name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)


def quantize_dit_to_fp8(model: nn.Module) -> nn.Module:
    """Turn every nn.Linear of the transformer blocks into an Fp8Linear in place (they hold ~99% of the weights)."""
    blocks = model.blocks
    for name, module in list(blocks.named_modules()):
        if isinstance(module, nn.Linear):
            _replace(blocks, name, Fp8Linear.from_linear(module))
    return model


def load_fp8_weights(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False
) -> nn.Module:
    """Load a state dict whose quantised layers are `<layer>.weight` (fp8) + `<layer>.scale_weight`.

    Each nn.Linear that receives an fp8 weight becomes an Fp8Linear; a missing scale means 1. Other tensors
    load as usual (cast to the module's dtype; `assign=True` takes the tensors as they are, e.g. for a meta model).
    """
    state = dict(state_dict)
    for key, tensor in state_dict.items():
        if not (key.endswith(".weight") and tensor.dtype in FP8_DTYPES):
            continue
        layer_name = key[: -len(".weight")]
        try:
            module = model.get_submodule(layer_name)
        except AttributeError:
            raise CheckpointError(f"fp8 weight '{key}' names no layer of this model: load a checkpoint of the same "
                                  "architecture.") from None
        if not isinstance(module, (nn.Linear, Fp8Linear)):
            raise CheckpointError(f"fp8 weight '{key}' belongs to a {type(module).__name__}, not a linear layer: use a "
                                  "bf16/fp16 checkpoint.")
        if tensor.dtype != FP8:
            raise CheckpointError(f"fp8 weight '{key}' is {tensor.dtype}; only float8_e4m3fn is supported: use an "
                                  "e4m3fn checkpoint.")
        if isinstance(module, nn.Linear):
            bias_dtype = module.weight.dtype if module.bias is None else module.bias.dtype
            layer = Fp8Linear(module.in_features, module.out_features, module.bias is not None,
                              module.weight.device, bias_dtype)
            _replace(model, layer_name, layer)
        scale_key = f"{layer_name}.scale_weight"
        state[scale_key] = state.get(scale_key, torch.ones(())).float().reshape(())
    model.load_state_dict(state, strict=strict, assign=assign)
    return model
