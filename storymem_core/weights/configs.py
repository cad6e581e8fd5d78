"""Model configs from tensor shapes, for files that store no config of their own.

Real files give their sizes through tensor shapes (Wan's head width is 128 in every released model, which fixes
the head count). A file may also carry its config as JSON in the safetensors metadata key `storymem_config`,
which wins (see loading.stored_config): tiny test models use it, and so can any non-standard size.
See docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict

from ..errors import CheckpointError
from ..model_sizes import checked_sizes
from ..wan.dit import DiTConfig, expert_kind
from ..wan.t5 import T5Config
from ..wan.vae import VAEConfig
from .shapes import anchor_shape, count_blocks

CONFIG_KEY = "storymem_config"
WAN_HEAD_DIM = 128


def dit_config_from_shapes(
    shapes: Mapping[str, tuple[int, ...]], source: str, num_heads: int | None = None
) -> DiTConfig:
    """A Wan DiT's sizes from its tensor shapes (our names); the head count follows from Wan's 128-wide heads.

    `num_heads` serves widths that are not whole 128-wide heads where only the shapes matter (checks, not runs).
    """
    dim, in_dim, *patch = anchor_shape(shapes, "patch_embedding.weight", 5, source)
    if dim % WAN_HEAD_DIM and num_heads is None:
        raise CheckpointError(
            f"{source} has width {dim}, which is not a whole number of {WAN_HEAD_DIM}-wide heads: store its config "
            f"under the safetensors metadata key '{CONFIG_KEY}'."
        )
    config = DiTConfig(
        model_type=expert_kind(in_dim),
        patch_size=tuple(patch),
        in_dim=in_dim,
        dim=dim,
        ffn_dim=anchor_shape(shapes, "blocks.0.ffn.0.weight", 2, source)[0],
        freq_dim=anchor_shape(shapes, "time_embedding.0.weight", 2, source)[1],
        text_dim=anchor_shape(shapes, "text_embedding.0.weight", 2, source)[1],
        out_dim=anchor_shape(shapes, "head.head.weight", 2, source)[0] // (patch[0] * patch[1] * patch[2]),
        num_heads=num_heads if dim % WAN_HEAD_DIM else dim // WAN_HEAD_DIM,
        num_layers=count_blocks(shapes),
        qk_norm="blocks.0.self_attn.norm_q.weight" in shapes,
        cross_attn_norm="blocks.0.norm3.weight" in shapes,
    )
    checked_sizes(asdict(config), "dit", source)
    return config


def dit_check_config_from_shapes(shapes: Mapping[str, tuple[int, ...]], source: str) -> DiTConfig:
    """The DiT config for shape checks only: any width, one head where it is not whole 128-wide heads."""
    return dit_config_from_shapes(shapes, source, num_heads=1)


def t5_config_from_shapes(shapes: Mapping[str, tuple[int, ...]], source: str = "It") -> T5Config:
    """umT5 sizes from tensor shapes: each layer's position bias is [buckets, heads]."""
    vocab, dim = anchor_shape(shapes, "token_embedding.weight", 2, source)
    buckets, heads = anchor_shape(shapes, "blocks.0.pos_embedding.embedding.weight", 2, source)
    config = T5Config(
        vocab=vocab, dim=dim, dim_attn=anchor_shape(shapes, "blocks.0.attn.q.weight", 2, source)[0],
        dim_ffn=anchor_shape(shapes, "blocks.0.ffn.fc1.weight", 2, source)[0], num_heads=heads,
        num_layers=count_blocks(shapes), num_buckets=buckets,
    )
    checked_sizes(asdict(config), "umt5", source)
    return config


def vae_config_from_shapes(shapes: Mapping[str, tuple[int, ...]], source: str) -> VAEConfig:
    """The VAE's width from the file; the rest is Wan2.1's."""
    return VAEConfig.from_dict(checked_sizes({"dim": anchor_shape(shapes, "encoder.conv1.weight", 5, source)[0]},
                                             "wan21-vae", source))
