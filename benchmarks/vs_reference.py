"""The published StoryMem DiT and ours, timed in one run on one GPU at the real A14B shape.

Run on a GPU from the repo root, with a checkout of Kevin-thu/StoryMem (only its wan/modules/model.py and
attention.py are imported):

    python -m benchmarks.vs_reference --reference-root PATH --json out.json --profile out_profile.txt

The reference runs as the published figures were taken: flash_attention replaced by torch SDPA, bf16
autocast, float32 parameters (then bf16 ones, `convert_model_dtype`, for the peak). Its config mixins
from diffusers are replaced by plain classes when diffusers is missing; they do not run in forward.
Our DiT is loaded from the reference's random weights, so the outputs are compared too (real-shape parity).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.dit_step import HEIGHT, WIDTH, Bench, CompiledBlocks, dit_inputs, randomize_, relative_error
from benchmarks.results import save_text
from storymem_core.wan import attention as attention_module
from storymem_core.wan.dit import DiTConfig, WanDiT


def sdpa_flash_attention(q, k, v, q_lens=None, k_lens=None, *args, **kwargs):
    """Stands in for the reference's flash_attention: [B, L, N, D] in bf16 through torch SDPA (no padding here)."""
    if k_lens is not None and bool((k_lens != k.shape[1]).any()):
        raise ValueError("the benchmark's inputs have no padding; got key lengths shorter than the keys")
    out_dtype = q.dtype
    q, k, v = (x.to(torch.bfloat16).transpose(1, 2) for x in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).contiguous().to(out_dtype)


def stub_diffusers() -> None:
    """Plain stand-ins for the two diffusers mixins model.py subclasses (used only for config saving)."""
    if importlib.util.find_spec("diffusers") is not None:
        return
    config_utils = types.ModuleType("diffusers.configuration_utils")
    config_utils.ConfigMixin = type("ConfigMixin", (), {})
    config_utils.register_to_config = lambda init: init
    modeling_utils = types.ModuleType("diffusers.models.modeling_utils")
    modeling_utils.ModelMixin = nn.Module
    sys.modules.update({
        "diffusers": types.ModuleType("diffusers"),
        "diffusers.configuration_utils": config_utils,
        "diffusers.models": types.ModuleType("diffusers.models"),
        "diffusers.models.modeling_utils": modeling_utils,
    })


def load_reference(root: Path) -> types.ModuleType:
    """The reference's model module, imported from its folder without running wan/__init__ (heavy imports)."""
    modules_dir = root / "wan" / "modules"
    if not (modules_dir / "model.py").is_file():
        raise SystemExit(f"--reference-root {root} has no wan/modules/model.py: pass a checkout of Kevin-thu/StoryMem.")
    stub_diffusers()
    package = types.ModuleType("storymem_reference")
    package.__path__ = [str(modules_dir)]
    sys.modules["storymem_reference"] = package
    module = importlib.import_module("storymem_reference.model")
    module.flash_attention = sdpa_flash_attention
    return module


def reference_kwargs(config: DiTConfig) -> dict:
    return dict(model_type=config.model_type, in_dim=config.in_dim, dim=config.dim, ffn_dim=config.ffn_dim,
                freq_dim=config.freq_dim, text_dim=config.text_dim, out_dim=config.out_dim, num_heads=config.num_heads,
                num_layers=config.num_layers, text_len=config.text_len)


def build_reference(module: types.ModuleType, config: DiTConfig, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The reference WanModel with random weights made on the GPU (its rope table from a one-layer CPU copy of the
    same head size)."""
    kwargs = reference_kwargs(config)
    with torch.device("meta"):
        model = module.WanModel(**kwargs)
    model.to_empty(device=device)
    randomize_(model, config.dim, torch.Generator(device).manual_seed(0))
    small = {**kwargs, "dim": config.head_dim, "num_heads": 1, "num_layers": 1, "ffn_dim": 8,
             "text_dim": 8, "freq_dim": 8}
    model.freqs = module.WanModel(**small).freqs
    return model.to(dtype).eval().requires_grad_(False)


def engine_from(reference: nn.Module, config: DiTConfig, device: torch.device) -> WanDiT:
    """Our DiT (bf16 matmul weights, float32 norms and modulation) holding the reference's weights."""
    with torch.device("meta"):
        model = WanDiT(config)
    model.cast_weights(torch.bfloat16).to_empty(device=device)
    model.load_state_dict(reference.state_dict())
    return model.eval().requires_grad_(False)


class ReferenceCall:
    """The reference model called as Bench calls our DiT: (x, t, context, y) batches of one, bf16 autocast."""

    def __init__(self, model: nn.Module, config: DiTConfig):
        self.model, self.config = model, config

    def __call__(self, x, t, context, y):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            seq_len = x.shape[2] * x.shape[3] * x.shape[4] // 4  # tokens of a (1, 2, 2) patch grid
            return self.model([x[0]], t=t, context=[context[0]], seq_len=seq_len, y=[y[0]])[0][None]


def profile_forward(forward, config: DiTConfig, memory_frames: int, device: torch.device, path: Path) -> None:
    """One forward under torch.profiler: GPU time by kernel kind, then the top kernels."""
    x, t, context, y = dit_inputs(config, memory_frames, 1, device)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        forward(x, t, context, y)
        torch.cuda.synchronize(device)
    events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    kinds: dict[str, float] = {}
    for event in events:
        name = event.key.lower()
        kind = ("attention" if any(s in name for s in ("fmha", "flash", "attention", "cudnn")) else
                "matmul" if any(s in name for s in ("gemm", "nvjet", "xmma", "cutlass", "matmul")) else
                "fused (triton)" if "triton" in name else "other")
        kinds[kind] = kinds.get(kind, 0.0) + event.self_device_time_total / 1e6
    lines = [f"GPU seconds by kind, one forward at M = {memory_frames}:"]
    lines += [f"  {kind:16s} {seconds:8.3f}" for kind, seconds in sorted(kinds.items(), key=lambda kv: -kv[1])]
    lines.append("top kernels (seconds, calls, name):")
    for event in sorted(events, key=lambda e: -e.self_device_time_total)[:30]:
        lines.append(f"  {event.self_device_time_total / 1e6:8.3f} {event.count:6d}  {event.key[:140]}")
    text = "\n".join(lines)
    print(text, flush=True)
    save_text(text, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-root", type=Path, required=True, help="a checkout of Kevin-thu/StoryMem")
    parser.add_argument("--memory", type=int, nargs="+", default=[0, 3, 10])
    parser.add_argument("--repeats", type=int, default=2, help="timed forwards per row (after one warm-up)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path,
                        help="write a kernel-time profile of one compiled forward at the largest M here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("vs_reference needs a CUDA GPU (the reference's autocast and attention are CUDA-only).")
    device = torch.device("cuda")
    config, top_m = DiTConfig.a14b("i2v"), max(args.memory)
    module = load_reference(args.reference_root)
    bench = Bench(ReferenceCall(build_reference(module, config, device, torch.float32), config), device, args.repeats,
                  args.json, HEIGHT, WIDTH)
    bench.record({"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
                  "cudnn": torch.backends.cudnn.version(),
                  "flash-attn installed": [kernel.name for kernel, _ in attention_module.INSTALLED]})

    outputs, seconds = {}, {}  # seconds[(what, M)]

    def measure(variant: str, memory_frames: int, key: str) -> torch.Tensor:
        row, out = bench.forward(variant, memory_frames, keep_output=True)
        bench.record(row)
        seconds[(key, memory_frames)] = row["seconds"]
        return out

    for m in args.memory:
        outputs[m] = measure("reference, fp32 params + bf16 autocast", m, "reference")
    engine = engine_from(bench.model.model, config, device)
    bench.model = engine  # the reference's float32 weights go
    torch.cuda.empty_cache()

    backend = attention_module.backend_name(device)
    for m in args.memory:
        out = measure(f"engine bf16, eager, {backend}", m, "eager")
        if m == top_m:
            bench.record({"variant": "engine eager vs reference output", "M": m,
                          "rel_err": relative_error(out, outputs[m])})
    with CompiledBlocks(engine):
        for m in args.memory:
            out = measure(f"engine bf16, compile_blocks(), {backend}", m, "compiled")
            if m == top_m:
                bench.record({"variant": "engine compiled vs reference output", "M": m,
                              "rel_err": relative_error(out, outputs[m])})
        if args.profile:
            profile_forward(engine, config, top_m, device, args.profile)
        if attention_module.INSTALLED:  # the same compiled engine on torch SDPA, for the flash-attn gain
            installed, attention_module.INSTALLED = attention_module.INSTALLED, ()
            try:
                for m in args.memory:
                    measure(f"engine bf16, compile_blocks(), {attention_module.backend_name(device)}", m,
                            "compiled sdpa")
            finally:
                attention_module.INSTALLED = installed
    del engine, out
    bench.model = None
    torch.cuda.empty_cache()

    bench.model = ReferenceCall(build_reference(module, config, device, torch.bfloat16), config)
    measure("reference, bf16 params + bf16 autocast", top_m, "reference, bf16 params")
    for m in args.memory:
        bench.record({"variant": "ratio reference / engine", "M": m, **{
            key: seconds[("reference", m)] / value for (key, m_), value in seconds.items()
            if m_ == m and not key.startswith("reference")}})


if __name__ == "__main__":
    main()
