"""Attention kernels at the A14B DiT's shapes (40 heads of 128, bf16): torch SDPA's kernels, each installed
flash-attn, SageAttention 1 where installed, and what the engine's `attention` picks; time, TFLOP/s and error
against float32 attention.

Run on a GPU from the repo root:  python -m benchmarks.attention_kernels --json out.json
Shapes: self-attention over the 48,360 tokens of an 81-frame 832x480 shot with 10 memory frames, and
cross-attention from them to the 512 text tokens.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.dit_step import median, relative_error, timed
from benchmarks.results import keep
from storymem_core.wan import attention as attention_module

HEADS, HEAD_DIM = 40, 128
SHAPES = {"self-attention M=10": (48360, 48360), "cross-attention M=10": (48360, 512)}
CHECKED_HEADS = 2  # float32 attention is materialised for these heads only (L x L scores)


def sdpa(backend: SDPBackend):
    def run(q, k, v):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                  v.transpose(1, 2)).transpose(1, 2)
    return run


def float32_attention(q, k, v):
    q, k, v = (x[:, :, :CHECKED_HEADS].float().transpose(1, 2) for x in (q, k, v))
    with sdpa_kernel([SDPBackend.MATH]):
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)


def first(out):
    return out[0] if isinstance(out, tuple) else out  # flash-attn may also return the log-sum-exp


def kernels() -> dict:
    found = {"torch SDPA cuDNN": sdpa(SDPBackend.CUDNN_ATTENTION),
             "torch SDPA flash (flash-attn 2 code)": sdpa(SDPBackend.FLASH_ATTENTION)}
    for kernel, func in attention_module.INSTALLED:
        found[kernel.name] = lambda q, k, v, func=func: first(func(q, k, v))
    try:  # PyPI's SageAttention 1 (Triton, int8 scores): approximate, so measured here but never picked by the engine
        from sageattention import sageattn
    except ImportError:
        pass
    else:
        found["SageAttention 1 (int8 q.k, approximate)"] = lambda q, k, v: sageattn(q, k, v, tensor_layout="NHD")
    found["engine attention()"] = attention_module.attention
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device("cuda")
    rows = [{"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
             "engine backend": attention_module.backend_name(device)}]
    print(json.dumps(rows[0]), flush=True)
    generator = torch.Generator(device).manual_seed(0)
    for shape_name, (lq, lk) in SHAPES.items():
        q = torch.randn(1, lq, HEADS, HEAD_DIM, device=device, dtype=torch.bfloat16, generator=generator)
        k = torch.randn(1, lk, HEADS, HEAD_DIM, device=device, dtype=torch.bfloat16, generator=generator)
        v = torch.randn(1, lk, HEADS, HEAD_DIM, device=device, dtype=torch.bfloat16, generator=generator)
        exact = float32_attention(q, k, v)
        flops = 4 * lq * lk * HEADS * HEAD_DIM
        for name, run in kernels().items():
            try:
                with torch.no_grad():
                    seconds, first, _ = timed(lambda: run(q, k, v), device, repeats=10, warmup=3)
                    out = run(q, k, v)
                row = {"shape": shape_name, "kernel": name, "ms": median(seconds) * 1e3, "first_call_s": first,
                       "tflops": flops / median(seconds) / 1e12,
                       "rel_err_vs_float32": relative_error(out[:, :, :CHECKED_HEADS], exact)}
            except RuntimeError as error:  # a kernel that rejects these inputs
                row = {"shape": shape_name, "kernel": name, "error": str(error).splitlines()[0]}
            rows.append(row)
            keep(row, rows, args.json)


if __name__ == "__main__":
    main()
