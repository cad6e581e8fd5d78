"""One attention entry point for the whole engine; the kernel is chosen per GPU generation.

Half-precision CUDA inputs go to the fastest installed flash-attn that suits the GPU: flash-attn 4
(`pip install flash-attn-4`, Hopper and Blackwell; 1.19x faster than cuDNN on an H200), flash-attn 3
(Hopper), flash-attn 2 (any GPU but Hopper, where cuDNN's SDPA kernel is 1.6x faster than it).
Otherwise torch's scaled_dot_product_attention, with cuDNN's kernel first on Hopper.
Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

log = logging.getLogger(__name__)

HOPPER = 9
HOPPER_SDPA_PRIORITY = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                        SDPBackend.MATH]
SDPA_TAKES_PRIORITY = "set_priority" in inspect.signature(sdpa_kernel).parameters  # not before torch 2.6


@dataclass(frozen=True)
class FlashKernel:
    name: str
    module: str  # where flash_attn_func lives
    suits: Callable[[int], bool]  # compute capability major -> whether to use it there


FLASH_KERNELS = (  # fastest first
    FlashKernel("flash-attn 4", "flash_attn.cute", lambda major: major in (9, 10)),
    FlashKernel("flash-attn 3", "flash_attn_interface", lambda major: major == HOPPER),
    FlashKernel("flash-attn 2", "flash_attn", lambda major: major != HOPPER),
)


def _import(module: str) -> Callable | None:
    try:
        return importlib.import_module(module).flash_attn_func
    except (ImportError, AttributeError):  # flash-attn 4 alone leaves `flash_attn` a namespace without it
        return None
    except Exception as error:  # installed but broken (a CUDA library it needs, say): run without it
        log.warning("%s is installed but does not import (%s); StoryMem runs without it.", module, error)
        return None


INSTALLED = tuple((kernel, func) for kernel in FLASH_KERNELS if (func := _import(kernel.module)) is not None)


def _flash_kernel(device: torch.device) -> tuple[str, Callable] | None:
    """(name, flash_attn_func) of the fastest installed flash-attn that suits this CUDA device, if any."""
    major = torch.cuda.get_device_properties(device).major
    for kernel, func in INSTALLED:
        if kernel.suits(major):
            return kernel.name, func
    return None


def backend_name(device: torch.device) -> str:
    """What `attention` runs for half-precision inputs on `device` (logged where the models load)."""
    if device.type != "cuda":
        return "torch SDPA"
    flash = _flash_kernel(device)
    if flash is not None:
        return flash[0]
    return "torch SDPA, cuDNN first" if sdpa_priority(device) else "torch SDPA"


def sdpa_priority(device: torch.device) -> list[SDPBackend] | None:
    """SDPA kernel priority for a CUDA device; None leaves torch's own choice (also where torch takes no priority)."""
    hopper = SDPA_TAKES_PRIORITY and torch.cuda.get_device_properties(device).major == HOPPER
    return HOPPER_SDPA_PRIORITY if hopper else None


@torch.library.custom_op("storymem::flash_attention", mutates_args=())
def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The chosen flash-attn kernel as one opaque op, so torch.compile keeps a block in one graph around it."""
    _, func = _flash_kernel(q.device)
    out = func(q.contiguous(), k.contiguous(), v.contiguous())
    return out[0] if isinstance(out, tuple) else out  # some versions also return the log-sum-exp


@flash_attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return q.new_empty(*q.shape[:-1], v.shape[-1])


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Full (non-causal) attention. q: [B, Lq, N, D], k/v: [B, Lk, N, D] -> [B, Lq, N, D]."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and _flash_kernel(q.device) is not None:
        return flash_attention(q, k, v)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    priority = sdpa_priority(q.device) if q.is_cuda else None
    if priority is not None:
        with sdpa_kernel(priority, set_priority=True):
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
