"""Key renaming: Hugging Face T5 layer names (ComfyUI text-encoder files) -> Wan-AI umT5 names, and peft / ComfyUI /
kohya LoRA keys -> `<module>.lora_A.weight` style names. The table of kinds picks one per kind.
See docs/architecture.md.
"""

from __future__ import annotations

import re

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
_LORA_PREFIXES = (PEFT_PREFIX, "model.diffusion_model.", "diffusion_model.", "lora_unet_")
# Wan module names with underscores, longest first, for `lora_unet_blocks_0_self_attn_q`-style keys
_UNDERSCORED = sorted(
    ("self_attn", "cross_attn", "norm_q", "norm_k", "norm_k_img", "k_img", "v_img", "img_emb",
     "patch_embedding", "text_embedding", "time_embedding", "time_projection"),
    key=len, reverse=True,
)


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


def lora_name(key: str) -> str:
    """peft / ComfyUI / kohya LoRA key -> `<module>.lora_A.weight`, `<module>.lora_B.weight`, `<module>.alpha`,
    or a weight / bias delta `<module>.diff` / `<module>.diff_b`."""
    if match := LORA_PART.match(key):
        suffix = f"{_LORA_PARTS[match['part']]}.weight"
    elif match := _LORA_ALPHA.match(key):
        suffix = "alpha"
    elif match := _LORA_DIFF.match(key):
        suffix = match["part"]
    else:
        return key  # no LoRA part: reported when the LoRA is applied
    module = match["module"]
    prefix = lora_prefix(module)
    module = module[len(prefix):]
    if prefix == "lora_unet_":
        module = module.replace("_", ".")
        for name in _UNDERSCORED:
            module = module.replace(name.replace("_", "."), name)
    return f"{module}.{suffix}"
