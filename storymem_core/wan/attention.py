"""One attention entry point for the whole engine; the kernel is chosen once and logged.

flash-attn is used when importable and the inputs are half precision on CUDA; otherwise
torch's scaled_dot_product_attention, with cuDNN's kernel first on Hopper GPUs.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

log = logging.getLogger(__name__)


def _load_flash_attn():
    try:
        from flash_attn_interface import flash_attn_func  # flash-attn 3 (Hopper)

        return "flash-attn 3", flash_attn_func
    except ImportError:
        pass
    try:
        from flash_attn import flash_attn_func

        return "flash-attn 2", flash_attn_func
    except ImportError:
        return None, None


FLASH_NAME, _flash_attn_func = _load_flash_attn()
BACKEND = FLASH_NAME or "torch SDPA"
log.info("StoryMem attention backend: %s", BACKEND)

# cuDNN is 1.3x faster than flash on an H100 (docs/benchmarks.md) but slower on Ampere/Blackwell
HOPPER_SDPA_PRIORITY = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sdpa_priority(device: torch.device) -> list[SDPBackend] | None:
    """SDPA kernel priority for a CUDA device; None leaves torch's own choice."""
    return HOPPER_SDPA_PRIORITY if torch.cuda.get_device_properties(device).major == 9 else None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Full (non-causal) attention. q: [B, Lq, N, D], k/v: [B, Lk, N, D] -> [B, Lq, N, D]."""
    if _flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        out = _flash_attn_func(q, k, v)
        return out[0] if isinstance(out, tuple) else out
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    priority = sdpa_priority(q.device) if q.is_cuda else None
    if priority is not None:
        with sdpa_kernel(priority, set_priority=True):
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
