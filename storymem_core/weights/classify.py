"""A file's kind, key prefix, architecture sizes and problems from its tensor names and shapes alone, by the
anchors in the table of kinds. See docs/architecture.md.
"""

from __future__ import annotations

from ..errors import CheckpointError
from .kinds import (
    AESTHETIC_HEAD,
    CLIP_VISION,
    DIT_KINDS,
    I2V_DIT,
    KINDS,
    LORA,
    T2V_DIT,
    UMT5,
    UNKNOWN,
    VICLIP,
    WAN21_VAE,
    Shapes,
)
from .renaming import LORA_PART, lora_prefix
from .shapes import anchor_shape, count_blocks, linear_chain

Classified = tuple[str, str, dict[str, int], list[str]]  # (kind, key prefix, architecture sizes, problems)

# per umT5 anchor layout (HF, Wan-AI names): blocks prefix, layer-1 position bias that only umT5 has, embedding
_T5_LAYOUTS = (
    ("encoder.block.", "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight", "shared.weight"),
    ("blocks.", "blocks.1.pos_embedding.embedding.weight", "token_embedding.weight"),
)


def _find_prefix(names, anchor: str) -> str | None:
    """The shortest key prefix (ending at a dot) under which `anchor` occurs, or None."""
    prefixes = [name[: -len(anchor)] for name in names if name == anchor or name.endswith("." + anchor)]
    return min(prefixes, key=len) if prefixes else None


def classify(shapes: Shapes) -> Classified:
    """(kind, key prefix, architecture sizes, problems) from tensor names and shapes alone."""
    try:
        return _classify_by_anchors(shapes)
    except CheckpointError as error:  # an anchor tensor of the wrong rank or with a zero size
        return UNKNOWN, "", {}, [str(error)]


def _classify_by_anchors(shapes: Shapes) -> Classified:
    lora_keys = [m["module"] for m in map(LORA_PART.match, shapes) if m]
    if lora_keys:
        return LORA, lora_prefix(lora_keys[0]), {}, []
    dit_anchor, _ = KINDS[T2V_DIT].anchors
    if (prefix := _find_prefix(shapes, dit_anchor)) is not None:
        return _classify_dit(shapes, prefix)
    vae_anchor, vae_conv = KINDS[WAN21_VAE].anchors
    if (prefix := _find_prefix(shapes, vae_anchor)) is not None:
        z_dim = anchor_shape(shapes, prefix + vae_conv, 5)[0] // 2
        if z_dim == 16:
            return WAN21_VAE, prefix, {"z_dim": z_dim}, []
        return UNKNOWN, prefix, {"z_dim": z_dim}, [
            f"This is a Wan VAE with {z_dim} latent channels (the Wan2.2 TI2V-5B VAE has 48); "
            "the A14B experts need the Wan2.1 VAE (16)."
        ]
    for anchor, (blocks, per_layer_bias, embedding) in zip(KINDS[UMT5].anchors, _T5_LAYOUTS):
        if (prefix := _find_prefix(shapes, anchor)) is not None:
            return _classify_t5(shapes, prefix, anchor, blocks, per_layer_bias, embedding)
    time_anchor, text_anchor = KINDS[VICLIP].anchors
    if time_anchor in shapes and text_anchor in shapes:  # before CLIP: its vision tower has CLIP's anchors too
        vision_width, embed_dim = anchor_shape(shapes, "vision_encoder.proj", 2)
        return VICLIP, "", {"vision_width": vision_width, "embed_dim": embed_dim,
                            "frames": anchor_shape(shapes, time_anchor, 3)[1]}, []
    class_anchor, proj = KINDS[CLIP_VISION].anchors
    if (prefix := _find_prefix(shapes, class_anchor)) is not None and len(shapes.get(prefix + proj, ())) == 2:
        width, embed_dim = shapes[prefix + proj]
        layers = count_blocks(shapes, prefix + "transformer.resblocks.")
        architecture = {"width": width, "layers": layers, "embed_dim": embed_dim}
        empty = [f"its {name} is 0" for name, size in architecture.items() if size == 0]
        problems = [f"This image encoder cannot work: {', '.join(empty)}; download it again."] if empty else []
        return CLIP_VISION, prefix, architecture, problems
    if _find_prefix(shapes, "vision_model.embeddings.class_embedding") is not None:
        return UNKNOWN, "", {}, [
            "This is a Hugging Face CLIP vision model, but keyframe selection reads open_clip files: use "
            "open_clip_model.safetensors of timm/vit_base_patch32_clip_224.openai."
        ]
    if all(name.endswith(("weight", "bias")) for name in shapes):
        prefixes, problem = linear_chain(shapes)
        if prefixes and problem is None:
            zero = [prefix + "weight" for prefix in prefixes if 0 in shapes[prefix + "weight"]]
            problems = []
            if zero:
                problems.append(f"This aesthetic head cannot work: layer '{zero[0]}' has width 0; download it again.")
            architecture = {"embed_dim": shapes[prefixes[0] + "weight"][1], "layers": len(prefixes)}
            return AESTHETIC_HEAD, "", architecture, problems
    first = ", ".join(list(shapes)[:3]) or "no tensors"
    return UNKNOWN, "", {}, [
        f"It has none of the tensors of a Wan2.2 DiT, umT5 encoder, Wan2.1 VAE, LoRA, open_clip image encoder "
        f"or aesthetic head (first names: {first})."
    ]


def _classify_t5(
    shapes: Shapes, prefix: str, anchor: str, blocks: str, per_layer_bias: str, embedding: str
) -> Classified:
    layers = count_blocks(shapes, prefix + blocks)
    architecture = {"dim": anchor_shape(shapes, prefix + anchor, 2)[1], "layers": layers,
                    "vocab": anchor_shape(shapes, prefix + embedding, 2)[0] if prefix + embedding in shapes else 0}
    if layers > 1 and prefix + per_layer_bias not in shapes:
        return UNKNOWN, prefix, architecture, [
            "This T5 encoder shares one position bias across layers (T5 v1.1, e.g. t5xxl for Flux), so it is not "
            "umT5-xxl; use umt5_xxl_fp16 / umt5_xxl_fp8_e4m3fn_scaled."
        ]
    return UMT5, prefix, architecture, []


def _classify_dit(shapes: Shapes, prefix: str) -> Classified:
    modulation, patch_embedding = KINDS[T2V_DIT].anchors
    in_dim = anchor_shape(shapes, prefix + patch_embedding, 5)[1]
    architecture = {"dim": anchor_shape(shapes, prefix + modulation, 3)[-1], "in_dim": in_dim,
                    "layers": count_blocks(shapes, prefix + "blocks.")}
    kind = {16: T2V_DIT, 36: I2V_DIT}.get(in_dim, UNKNOWN)
    problems = []
    if kind not in DIT_KINDS:
        problems.append(
            f"This Wan DiT takes {in_dim} input channels (Wan2.2 TI2V-5B takes 48); StoryMem needs a Wan2.2 A14B "
            "T2V (16) or I2V (36) expert."
        )
    if any(name.startswith(prefix + "img_emb.") for name in shapes):
        problems.append(
            "This is a Wan2.1 I2V model (it has a CLIP image embedding); StoryMem needs a Wan2.2 I2V-A14B expert."
        )
    return kind, prefix, architecture, problems
