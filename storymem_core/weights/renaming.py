"""Key renaming: Hugging Face T5 layer names (ComfyUI text-encoder files) -> Wan-AI umT5 names, and peft / ComfyUI /
kohya LoRA keys -> `<module>.lora_A.weight` style names, looked up in aliases computed from the model's own module
names (as ComfyUI's LoRA key map is). The table of kinds picks one per kind.
See docs/architecture.md.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping

import torch

from ..wan.dit import DiTConfig, WanDiT

_HF_T5_LAYERS = [
    (re.compile(r"^(?:shared|encoder\.embed_tokens)$"), "token_embedding"),
    (re.compile(r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias$"),
     r"blocks.\1.pos_embedding.embedding"),
    (re.compile(r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])$"), r"blocks.\1.attn.\2"),
    (re.compile(r"^encoder\.block\.(\d+)\.layer\.0\.layer_norm$"), r"blocks.\1.norm1"),
    # T5DenseGatedActDense: gelu(wi_0(x)) * wi_1(x), so wi_0 is the gate and wi_1 the plain branch
    (re.compile(r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_0$"), r"blocks.\1.ffn.gate.0"),
    (re.compile(r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_1$"), r"blocks.\1.ffn.fc1"),
    (re.compile(r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wo$"), r"blocks.\1.ffn.fc2"),
    (re.compile(r"^encoder\.block\.(\d+)\.layer\.1\.layer_norm$"), r"blocks.\1.norm2"),
    (re.compile(r"^encoder\.final_layer_norm$"), "norm"),
]

LORA_PART = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_down|lora_up)(?:\.\w+)?\.weight$")
_LORA_ALPHA = re.compile(r"^(?P<module>.+)\.alpha$")
_LORA_DIFF = re.compile(r"^(?P<module>.+)\.(?P<part>diff|diff_b)$")  # full weight / bias deltas (lightx2v-style LoRAs)
_LORA_PARTS = {"lora_A": "lora_A", "lora_down": "lora_A", "lora_B": "lora_B", "lora_up": "lora_B"}
PEFT_PREFIX = "base_model.model."
_DOTTED_PREFIXES = (PEFT_PREFIX, "model.diffusion_model.", "diffusion_model.")
_KOHYA_PREFIX = "lora_unet_"
_LORA_PREFIXES = (*_DOTTED_PREFIXES, _KOHYA_PREFIX)
_INDEX = re.compile(r"\d+")


def module_aliases(module_names: Iterable[str]) -> dict[str, str]:
    """Every key stem a LoRA file may give each module -> the module's name, computed from the names themselves
    (peft, ComfyUI and kohya prefixes; kohya joins with underscores). Indices are held as `#` so a table from a
    one-block model serves every block: `lora_unet_blocks_#_self_attn_q` -> `blocks.#.self_attn.q`."""
    aliases = {}
    for name in module_names:
        template = _INDEX.sub("#", name)
        for prefix in ("", *_DOTTED_PREFIXES):
            aliases[prefix + template] = template
        aliases[_KOHYA_PREFIX + template.replace(".", "_")] = template
    return aliases


@functools.cache
def dit_aliases() -> dict[str, str]:
    """The alias table of a Wan DiT: every module holding parameters (linears, norms, patch embedding), read off
    a one-block model built on the meta device, so it follows the model's own names."""
    with torch.device("meta"):
        model = WanDiT(DiTConfig(num_layers=1))
    return module_aliases(name for name, module in model.named_modules()
                          if name and next(module.parameters(recurse=False), None) is not None)


def aliased_module(stem: str, aliases: Mapping[str, str]) -> str | None:
    """The module a LoRA key stem names under `aliases` (indices carried over), or None when it names none."""
    template = aliases.get(_INDEX.sub("#", stem))
    if template is None:
        return None
    indices = iter(_INDEX.findall(stem))
    return re.sub("#", lambda _: next(indices), template)


def same_name(name: str) -> str:
    """Kinds stored under this engine's names already."""
    return name


def hf_t5_name(name: str) -> str:
    """A Hugging Face T5 encoder name -> the Wan-AI umT5 name; Wan-AI names pass unchanged."""
    layer, dot, param = name.rpartition(".")
    for pattern, replacement in _HF_T5_LAYERS:
        if pattern.match(layer):
            return pattern.sub(replacement, layer) + dot + param
    return name


def lora_prefix(module: str) -> str:
    return next((p for p in _LORA_PREFIXES if module.startswith(p)), "")


def lora_name(key: str, aliases: Mapping[str, str] | None = None) -> str:
    """peft / ComfyUI / kohya LoRA key -> `<module>.lora_A.weight`, `<module>.lora_B.weight`, `<module>.alpha`,
    or a weight / bias delta `<module>.diff` / `<module>.diff_b`. Modules are looked up in `aliases` (default:
    the Wan DiT's, `dit_aliases`); a module named by none keeps its name without prefix (kohya: underscores
    read as dots) and is reported when the LoRA is applied."""
    if match := LORA_PART.match(key):
        suffix = f"{_LORA_PARTS[match['part']]}.weight"
    elif match := _LORA_ALPHA.match(key):
        suffix = "alpha"
    elif match := _LORA_DIFF.match(key):
        suffix = match["part"]
    else:
        return key  # no LoRA part: reported when the LoRA is applied
    stem = match["module"]
    module = aliased_module(stem, dit_aliases() if aliases is None else aliases)
    if module is None:
        prefix = lora_prefix(stem)
        module = stem[len(prefix):]
        if prefix == _KOHYA_PREFIX:
            module = module.replace("_", ".")
    return f"{module}.{suffix}"
