"""Triton kernels for per-tensor fp8 activation quantisation: one read for max |x|, one read + fp8 write.

Imported only where triton is installed; torch ops need ~6 passes over the activation for the same result,
which costs more than fp8 saves on the matmul (docs/benchmarks.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FP8_MAX = 448.0
BLOCK = 4096
AMAX_PROGRAMS = 1024  # enough to fill any GPU, few enough that the atomics stay cheap


@triton.jit
def _amax_kernel(x_ptr, amax_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    step = tl.num_programs(0).to(tl.int64) * BLOCK
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(pid * BLOCK, n, step):
        offsets = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offsets, mask=offsets < n, other=0.0).to(tl.float32)
        acc = tl.maximum(acc, tl.abs(x))
    tl.atomic_max(amax_ptr, tl.max(acc, axis=0))


@triton.jit
def _quantize_kernel(x_ptr, out_ptr, amax_ptr, n, FP8_MAX: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    scale = tl.maximum(tl.div_rn(tl.load(amax_ptr), FP8_MAX), 1e-12)
    x = tl.load(x_ptr + offsets, mask=offsets < n, other=0.0).to(tl.float32)
    y = tl.clamp(tl.div_rn(x, scale), -FP8_MAX, FP8_MAX)
    tl.store(out_ptr + offsets, y.to(tl.float8e4nv), mask=offsets < n)


@torch.library.custom_op("storymem::quantize_fp8_per_tensor", mutates_args=())
def quantize_fp8_per_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 e4m3fn tensor, float32 scale) with x ~= fp8 * scale, for a contiguous CUDA tensor."""
    x = x.contiguous()
    n = x.numel()
    amax = torch.zeros((), dtype=torch.float32, device=x.device)
    out = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    _amax_kernel[(max(min(triton.cdiv(n, BLOCK), AMAX_PROGRAMS), 1),)](x, amax, n, BLOCK=BLOCK, num_warps=8)
    _quantize_kernel[(max(triton.cdiv(n, BLOCK), 1),)](x, out, amax, n, FP8_MAX=FP8_MAX, BLOCK=BLOCK, num_warps=8)
    return out, (amax / FP8_MAX).clamp(min=1e-12)


@quantize_fp8_per_tensor.register_fake
def _(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device), x.new_empty((), dtype=torch.float32)
