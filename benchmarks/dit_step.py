"""One forward of the real Wan2.2 A14B i2v DiT (random bf16 weights) at 832x480, 81 frames, M memory frames.

Run on a GPU from the repo root:  python -m benchmarks.dit_step --json out.json --markdown out.md
Variants: attention kernels (the engine's choice vs forced ones), fused QKV, torch.compile of the blocks, CFG as a
batch of two vs two calls,
fp8 linear layers (and a bf16-vs-fp8 linear microbenchmark). Each result line prints as soon as it is
measured; the markdown table comes last.

FLOPs of one forward (multiply-add = 2), per layer, L video tokens, Lc = text_len, d = dim, f = ffn_dim:
  self-attn q,k,v,o 8*L*d^2 + scores and values 4*L^2*d + cross-attn q,o 4*L*d^2 + k,v 4*Lc*d^2
  + cross scores and values 4*L*Lc*d + FFN 4*L*d*f; times num_layers (embeddings and head are left out).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend

from benchmarks.results import keep, save_text
from storymem_core.wan import attention as attention_module
from storymem_core.wan import dit as dit_module
from storymem_core.wan import fp8 as fp8_module
from storymem_core.wan.dit import DiTConfig, WanDiT
from storymem_core.wan.fp8 import Fp8Linear, quantize_dit_to_fp8, quantize_per_tensor
from storymem_core.wan.rope import apply_rope

FRAMES, HEIGHT, WIDTH = 81, 480, 832
SDPA_VARIANTS = {  # priority lists given to sdpa_kernel; None = torch's own choice
    "torch default": None,
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
    "flash": [SDPBackend.FLASH_ATTENTION],
}
GIB = 2**30


def tiny_config() -> DiTConfig:
    """A CPU-sized i2v config for a smoke run of this script (--tiny)."""
    return DiTConfig(model_type="i2v", in_dim=36, dim=128, ffn_dim=256, num_heads=2, num_layers=2, text_len=16,
                     text_dim=32, freq_dim=32)


def build_random_dit(config: DiTConfig, device: torch.device, seed: int = 0) -> WanDiT:
    """The DiT with random weights made directly on `device` in bf16 (fp32 where the engine keeps fp32)."""
    with torch.device("meta"):
        model = WanDiT(config)
    model.cast_weights(torch.bfloat16).to_empty(device=device)
    return randomize_(model, config.dim, torch.Generator(device).manual_seed(seed)).eval()


def randomize_(model: nn.Module, dim: int, generator: torch.Generator) -> nn.Module:
    """Random weights in place, by Wan parameter names (also the reference model's, benchmarks/reference_dit.py)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("modulation"):
                param.normal_(0, dim**-0.5, generator=generator)
            elif param.dim() >= 2:  # fan-in scaling keeps activations O(1) through 40 layers
                param.normal_(0, param[0].numel() ** -0.5, generator=generator)
            elif "norm" in name and name.endswith("weight"):
                param.normal_(1, 0.02, generator=generator)
            else:
                param.normal_(0, 0.02, generator=generator)
    return model


def latent_frames(memory_frames: int) -> int:
    return memory_frames + (FRAMES - 1) // 4 + 1


def tokens(config: DiTConfig, memory_frames: int, height: int = HEIGHT, width: int = WIDTH) -> int:
    pt, ph, pw = config.patch_size
    return latent_frames(memory_frames) // pt * (height // 8 // ph) * (width // 8 // pw)


def forward_flops(config: DiTConfig, length: int) -> float:
    d, f, lc = config.dim, config.ffn_dim, config.text_len
    per_layer = (8 * length * d**2 + 4 * length**2 * d + 4 * length * d**2 + 4 * lc * d**2 + 4 * length * lc * d
                 + 4 * length * d * f)
    return per_layer * config.num_layers


def dit_inputs(config: DiTConfig, memory_frames: int, batch: int, device: torch.device, height: int = HEIGHT,
               width: int = WIDTH, seed: int = 1):
    """(x, t, context, y) as the sampler passes them: float32 latents, y = 4 mask + 16 latent channels."""
    generator = torch.Generator(device).manual_seed(seed)
    shape = (batch, latent_frames(memory_frames), height // 8, width // 8)
    x = torch.randn(shape[0], 16, *shape[1:], device=device, generator=generator)
    y = torch.randn(shape[0], config.in_dim - 16, *shape[1:], device=device,
                    generator=generator) if config.in_dim > 16 else None
    context = torch.randn(batch, config.text_len, config.text_dim, device=device, generator=generator)
    t = torch.full((batch,), 900.0, device=device)
    return x, t, context, y


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int,
          warmup: int = 1) -> tuple[list[float], float, float]:
    """(seconds of each timed call, seconds of the first warm-up call, peak GiB over the timed calls)."""
    first = 0.0
    for i in range(warmup):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        if i == 0:
            first = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else 0.0
    return seconds, first, peak


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else sum(ordered[middle - 1 : middle + 1]) / 2


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


class FusedQKV:
    """Benchmark-only: self-attention with q, k, v as one matmul over a concatenated weight."""

    def __init__(self, model: WanDiT):
        self.original = dit_module.SelfAttention.forward
        for block in model.blocks:
            attn = block.self_attn
            attn.qkv_weight = torch.cat([attn.q.weight, attn.k.weight, attn.v.weight]).detach()
            attn.qkv_bias = torch.cat([attn.q.bias, attn.k.bias, attn.v.bias]).detach()
        self.model = model

    def __enter__(self):
        def forward(attn, x, rope):
            q, k, v = F.linear(x, attn.qkv_weight, attn.qkv_bias).chunk(3, dim=-1)
            q = apply_rope(attn._heads(attn.norm_q(q)), *rope)
            k = apply_rope(attn._heads(attn.norm_k(k)), *rope)
            return attn.o(attention_module.attention(q, k, attn._heads(v)).flatten(2))

        dit_module.SelfAttention.forward = forward
        return self

    def __exit__(self, *exc):
        dit_module.SelfAttention.forward = self.original
        for block in self.model.blocks:
            del block.self_attn.qkv_weight, block.self_attn.qkv_bias


class CompiledBlocks:
    """The engine's `compile_blocks()`, undone on exit; counts the graphs dynamo compiled."""

    def __init__(self, model: WanDiT):
        self.model = model

    def __enter__(self):
        torch._dynamo.utils.counters.clear()
        self.model.compile_blocks()
        return self

    def graphs(self) -> int:
        return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])

    def __exit__(self, *exc):
        for block in self.model.blocks:
            del block.forward  # back to the class's forward
        torch._dynamo.reset()


class Bench:
    def __init__(self, model: WanDiT, device: torch.device, repeats: int, json_path: Path | None,
                 height: int, width: int):
        self.model, self.device, self.repeats = model, device, repeats
        self.json_path, self.height, self.width = json_path, height, width
        self.rows: list[dict] = []

    def record(self, row: dict) -> None:
        self.rows.append(row)
        keep(row, self.rows, self.json_path)

    def forward(self, variant: str, memory_frames: int, batch: int = 1, calls: int = 1,
                keep_output: bool = False, **extra):
        """Time `calls` forwards of batch `batch` (CFG as two calls of 1 = calls 2)."""
        config = self.model.config
        x, t, context, y = dit_inputs(config, memory_frames, batch, self.device, self.height, self.width)
        out: list[torch.Tensor] = []

        def run():
            with torch.no_grad():
                for _ in range(calls):
                    out[:] = [self.model(x, t, context, y)]

        seconds, first, peak = timed(run, self.device, self.repeats)
        length = tokens(config, memory_frames, self.height, self.width)
        flops = forward_flops(config, length) * batch * calls
        row = {
            "variant": variant, "M": memory_frames, "batch": batch, "calls": calls, "tokens": length,
            "seconds": median(seconds), "all_seconds": seconds, "first_call_s": first,
            "tflops": flops / median(seconds) / 1e12, "peak_gib": peak, **extra,
        }
        return row, (out[0] if keep_output else None)

    def linear_layers(self, length: int) -> None:
        """bf16 nn.Linear vs Fp8Linear on the block's matmul shapes at `length` tokens; 6 dxd + d->f + f->d per
        block."""
        d, f = self.model.config.dim, self.model.config.ffn_dim
        shapes = {"d->d": (d, d, 6), "d->f": (d, f, 1), "f->d": (f, d, 1)}
        total = {"bf16": 0.0, "fp8": 0.0, "fp8 torch-ops quantiser": 0.0, "fp8 raw _scaled_mm": 0.0,
                 "fp8 raw fast accum": 0.0}
        for name, (k, n, count) in shapes.items():
            linear = nn.Linear(k, n, device=self.device, dtype=torch.bfloat16)
            fp8 = Fp8Linear.from_linear(linear)
            x = torch.randn(length, k, device=self.device, dtype=torch.bfloat16)
            x_fp8, x_scale = quantize_per_tensor(x)

            def raw(fast: bool):  # the matmul alone, input already quantised
                return torch._scaled_mm(x_fp8, fp8.weight.t(), scale_a=x_scale, scale_b=fp8.scale_weight, bias=fp8.bias,
                                        out_dtype=torch.bfloat16, use_fast_accum=fast)

            def torch_ops_quantiser():
                quantiser, fp8_module._triton_quantizer = fp8_module._triton_quantizer, None
                try:
                    return fp8(x)
                finally:
                    fp8_module._triton_quantizer = quantiser

            cuda = self.device.type == "cuda"
            with torch.no_grad():
                times = {
                    "bf16": median(timed(lambda: linear(x), self.device, 10, warmup=3)[0]),
                    "fp8": median(timed(lambda: fp8(x), self.device, 10, warmup=3)[0]),
                    "fp8 torch-ops quantiser": median(timed(torch_ops_quantiser, self.device, 10, warmup=3)[0]),
                    "fp8 raw _scaled_mm": (median(timed(lambda: raw(False), self.device, 10, warmup=3)[0])
                                           if cuda else float("nan")),
                    "fp8 raw fast accum": (median(timed(lambda: raw(True), self.device, 10, warmup=3)[0])
                                           if cuda else float("nan")),
                }
                error = relative_error(fp8(x), linear(x))
                agreement = quantiser_agreement(x)
            for key, value in times.items():
                total[key] += value * count
            self.record({"variant": f"linear {name}", "tokens": length, "ms": {k_: v * 1e3 for k_, v in times.items()},
                         "tflops": {k_: 2 * length * k * n / v / 1e12 for k_, v in times.items()},
                         "fp8_vs_bf16_rel_err": error, **agreement})
        self.record({"variant": "linear per block", "tokens": length, "ms": {k_: v * 1e3 for k_, v in total.items()},
                     "fp8_speedup": total["bf16"] / total["fp8"]})


def quantiser_agreement(x: torch.Tensor) -> dict:
    """How often the fp8 activation quantiser in use differs from the torch-ops reference (rounding ties)."""
    fast, fast_scale = fp8_module._quantize_activation(x)
    ref, ref_scale = quantize_per_tensor(x)
    return {"quantiser_mismatch_fraction": (fast.float() != ref.float()).float().mean().item(),
            "quantiser_scale_equal": bool(torch.equal(fast_scale.float(), ref_scale.float()))}


def markdown(rows: list[dict]) -> str:
    lines = ["| variant | M | tokens | batch x calls | s | TFLOP/s | peak GiB | first call s | notes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "seconds" in row:
            notes = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                              if k in ("rel_err_vs_bf16", "compile_s", "graphs", "note"))
            lines.append(f"| {row['variant']} | {row['M']} | {row['tokens']} | {row['batch']}x{row['calls']} | "
                         f"{row['seconds']:.3f} | {row['tflops']:.0f} | {row['peak_gib']:.1f} | "
                         f"{row['first_call_s']:.1f} | {notes} |")
    lines += ["",
              "| linear | bf16 ms | fp8 ms | fp8 (torch-ops quantiser) ms | raw _scaled_mm ms | raw fast accum ms | "
              "fp8 vs bf16 |",
              "|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["variant"].startswith("linear") and "ms" in row:
            ms = row["ms"]
            err = row.get("fp8_vs_bf16_rel_err")
            extra = f"rel err {err:.4f}" if err is not None else f"speedup {row['fp8_speedup']:.2f}x"
            lines.append(f"| {row['variant']} | {ms['bf16']:.2f} | {ms['fp8']:.2f} | "
                         f"{ms['fp8 torch-ops quantiser']:.2f} | "
                         f"{ms['fp8 raw _scaled_mm']:.2f} | {ms['fp8 raw fast accum']:.2f} | {extra} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", type=int, nargs="+", default=[0, 3, 10],
                        help="memory frame counts for the plain engine")
    parser.add_argument("--repeats", type=int, default=2, help="timed forwards per variant (after one warm-up)")
    parser.add_argument("--skip", nargs="*", default=[],
                        help="variant groups to skip: sdpa fused cfg compile fp8 linear")
    parser.add_argument("--tiny", action="store_true", help="tiny config, small frames (CPU smoke run)")
    parser.add_argument("--json", type=Path, help="write every result here as it comes")
    parser.add_argument("--markdown", type=Path, help="write the final table here")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = tiny_config() if args.tiny else DiTConfig.a14b("i2v")
    height, width = (64, 64) if args.tiny else (HEIGHT, WIDTH)
    start = time.perf_counter()
    model = build_random_dit(config, device)
    synchronize(device)
    print(f"built {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params in {time.perf_counter() - start:.1f} "
          f"s on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch "
          f"{torch.__version__})", flush=True)
    bench = Bench(model, device, args.repeats, args.json, height, width)
    engine_priority, installed_flash = attention_module.sdpa_priority, attention_module.INSTALLED
    top_m = max(args.memory)
    if device.type == "cuda":
        print(f"engine attention: {attention_module.backend_name(device)}", flush=True)

    if "sdpa" not in args.skip:
        attention_module.INSTALLED = ()  # SDPA's kernels, even where a flash-attn package would be used
        for name, priority in SDPA_VARIANTS.items():
            attention_module.sdpa_priority = lambda _device, priority=priority: priority
            try:
                row, _ = bench.forward(f"bf16 sdpa {name}", top_m)
            except RuntimeError as error:  # a kernel that rejects these inputs
                row = {"variant": f"bf16 sdpa {name}", "M": top_m, "error": str(error).splitlines()[0]}
            bench.record(row)
        attention_module.sdpa_priority, attention_module.INSTALLED = engine_priority, installed_flash

    reference = None
    for m in args.memory:
        row, out = bench.forward("bf16 engine", m, keep_output=m == top_m)
        bench.record(row)
        if out is not None:
            reference = out
    if "sdpa" not in args.skip and device.type == "cuda":  # kernels agree to bf16 rounding?
        attention_module.sdpa_priority, attention_module.INSTALLED = (lambda _device: SDPA_VARIANTS["flash"]), ()
        x, t, context, y = dit_inputs(config, top_m, 1, device, height, width)
        with torch.no_grad():
            flash_out = model(x, t, context, y)
        bench.record({"variant": "engine vs flash attention", "M": top_m,
                      "rel_err": relative_error(reference, flash_out)})
        del flash_out
        attention_module.sdpa_priority, attention_module.INSTALLED = engine_priority, installed_flash

    if "fused" not in args.skip:
        with FusedQKV(model):
            row, _ = bench.forward("bf16 fused qkv", top_m)
        bench.record(row)

    if "cfg" not in args.skip:
        bench.record(bench.forward("bf16 cfg two calls", top_m, batch=1, calls=2)[0])
        bench.record(bench.forward("bf16 cfg batch of two", top_m, batch=2, calls=1)[0])

    if "linear" not in args.skip:
        bench.linear_layers(tokens(config, top_m, height, width))

    if "compile" not in args.skip:
        with CompiledBlocks(model) as compiled:
            row, out = bench.forward("bf16 compiled blocks", top_m, keep_output=True)
            row["compile_s"] = row["first_call_s"] - row["seconds"]
            row["graphs"] = compiled.graphs()
            row["rel_err_vs_bf16"] = relative_error(out, reference)
            bench.record(row)
            del out

    if "fp8" not in args.skip:
        start = time.perf_counter()
        quantize_dit_to_fp8(model)
        synchronize(device)
        print(f"quantised blocks to fp8 in {time.perf_counter() - start:.1f} s", flush=True)
        row, out = bench.forward("fp8 linears", top_m, keep_output=True)
        row["rel_err_vs_bf16"] = relative_error(out, reference)
        bench.record(row)
        del out
        if "compile" not in args.skip:
            with CompiledBlocks(model) as compiled:
                row, out = bench.forward("fp8 linears, compiled blocks", top_m, keep_output=True)
                row["compile_s"] = row["first_call_s"] - row["seconds"]
                row["graphs"] = compiled.graphs()
                row["rel_err_vs_bf16"] = relative_error(out, reference)
                bench.record(row)

    table = markdown(bench.rows)
    print(table)
    if args.markdown:
        save_text(table, args.markdown)


if __name__ == "__main__":
    main()
