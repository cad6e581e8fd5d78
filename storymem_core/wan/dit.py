"""The Wan2.2 diffusion transformer (t2v: 16 input channels; i2v / StoryMem m2v: 36).

Module and parameter names follow the official checkpoints so real weights load by name.
Timestep modulation, norms and residual gates run in float32 as the reference does, so bf16
weights only change the matmuls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..choices import ExpertKind
from ..errors import ConditioningError
from .attention import attention
from .config_dicts import config_fields
from .rope import apply_rope, device_rope_tables

if TYPE_CHECKING:
    from .ulysses import SequenceShards

I2V_IN_DIM, T2V_IN_DIM = 36, 16  # latent channels in: I2V experts also take the conditioning's mask and latents


def expert_kind(in_dim: int) -> ExpertKind:
    """Which pair an expert with `in_dim` input channels belongs to."""
    return ExpertKind.I2V if in_dim == I2V_IN_DIM else ExpertKind.T2V


@dataclass
class DiTConfig:
    """Sizes of a Wan DiT; `a14b` gives the real Wan2.2 A14B experts."""

    model_type: str = ExpertKind.T2V
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512
    in_dim: int = 16
    dim: int = 2048
    ffn_dim: int = 8192
    freq_dim: int = 256
    text_dim: int = 4096
    out_dim: int = 16
    num_heads: int = 16
    num_layers: int = 32
    window_size: tuple[int, int] = (-1, -1)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6

    @classmethod
    def from_dict(cls, values: dict) -> "DiTConfig":
        config = cls(**config_fields(cls, values))
        config.patch_size = tuple(config.patch_size)
        config.window_size = tuple(config.window_size)
        return config

    @classmethod
    def a14b(cls, model_type: str) -> "DiTConfig":
        """One expert of Wan2.2 T2V-A14B or I2V-A14B (also StoryMem M2V)."""
        return cls(
            model_type=model_type,
            in_dim=I2V_IN_DIM if model_type == ExpertKind.I2V else T2V_IN_DIM,
            dim=5120,
            ffn_dim=13824,
            num_heads=40,
            num_layers=40,
        )

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The input normalised, before the weight (LoRA weight deltas scale this)."""
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(x) * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the activation dtype."""

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The input normalised in float32, before weight and bias (LoRA weight deltas scale this)."""
        return nn.functional.layer_norm(x.float(), self.normalized_shape, None, None, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return nn.functional.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


class SelfAttention(nn.Module):
    sequence_parallel: SequenceShards | None = None  # set by ulysses.sharded_sequence while a forward runs split

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1))  # [B, L, C] -> [B, L, N, D]

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        q = apply_rope(self._heads(self.norm_q(self.q(x))), *rope)
        k = apply_rope(self._heads(self.norm_k(self.k(x))), *rope)
        v = self._heads(self.v(x))
        attend = attention if self.sequence_parallel is None else self.sequence_parallel.attention
        return self.o(attend(q, k, v).flatten(2))


class CrossAttention(SelfAttention):
    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = self._heads(self.norm_q(self.q(x)))
        k = self._heads(self.norm_k(self.k(context)))
        v = self._heads(self.v(context))
        return self.o(attention(q, k, v).flatten(2))


class DiTBlock(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        dim, eps = config.dim, config.eps
        self.norm1 = LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, config.num_heads, config.qk_norm, eps)
        self.norm3 = LayerNorm(dim, eps, elementwise_affine=True) if config.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, config.num_heads, config.qk_norm, eps)
        self.norm2 = LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(config.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self, x: torch.Tensor, time_mod: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], context: torch.Tensor
    ) -> torch.Tensor:
        """x: float32 residual stream [B, L, C]; matmuls run in the dtype of `context` (the weights')."""
        # time_mod: [B, 6, C] float32 -> six [B, 1, C] shift/scale/gate vectors
        modulation = (self.modulation.float() + time_mod).unsqueeze(2).unbind(1)
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = modulation
        h = self.norm1(x).float() * (1 + scale_sa) + shift_sa
        x = x + self.self_attn(h.type_as(context), rope).float() * gate_sa
        x = x + self.cross_attn(self.norm3(x).type_as(context), context).float()
        h = self.norm2(x).float() * (1 + scale_ff) + shift_ff
        return x + self.ffn(h.type_as(context)).float() * gate_ff


class Head(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.norm = LayerNorm(config.dim, config.eps, elementwise_affine=False)
        self.head = nn.Linear(config.dim, math.prod(config.patch_size) * config.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, config.dim) / config.dim**0.5)

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        shift, scale = (self.modulation.float() + time_emb.unsqueeze(1)).unsqueeze(2).unbind(1)
        return self.head((self.norm(x) * (1 + scale) + shift).to(dtype)).float()


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] (cos half, then sin half), computed in float64 like the reference."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t.to(torch.float64), freqs)
    return torch.cat([angles.cos(), angles.sin()], dim=1).float()


class WanDiT(nn.Module):
    """Wan2.2 DiT. forward: x [B, C, F, H, W] (+ y [B, C', F, H, W] for i2v) -> [B, out_dim, F, H, W]."""

    sequence_parallel: SequenceShards | None = None  # set by ulysses.sharded_sequence: tokens split over ranks

    def __init__(self, config: DiTConfig):
        super().__init__()
        if config.dim % config.num_heads or config.head_dim % 2:
            raise ValueError(f"dim {config.dim} must split into {config.num_heads} heads of even size")
        self.config = config
        dim = config.dim
        self.patch_embedding = nn.Conv3d(config.in_dim, dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.num_layers))
        self.head = Head(config)

    def cast_weights(self, dtype: torch.dtype) -> "WanDiT":
        """Matmul weights to `dtype`; LayerNorms, modulation and time embedding stay float32 (as the reference
        computes them)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv3d, RMSNorm)):
                module.to(dtype)
        for module in (self.time_embedding, self.time_projection):
            module.float()
        for name, param in self.named_parameters():
            if name.endswith("modulation"):
                param.data = param.data.float()
        return self

    def compile_blocks(self) -> "WanDiT":
        """torch.compile each block's forward (fuses the float32 norm/RoPE/gate passes); parameter names and
        hooks around the blocks (block swap) are untouched. Two graphs serve all blocks (the first takes bf16
        tokens)."""
        for block in self.blocks:
            block.forward = torch.compile(block.forward)
        return self

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """context [B, L <= text_len, text_dim] -> [B, text_len, dim]; zero-padded like the reference."""
        pad = self.config.text_len - context.shape[1]
        if pad < 0:
            raise ValueError(f"context has {context.shape[1]} tokens, more than text_len {self.config.text_len}")
        context = nn.functional.pad(context, (0, 0, 0, pad))
        return self.text_embedding(context.to(self.text_embedding[0].weight.dtype))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None = None,
        frame_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if y is not None:
            x = torch.cat([x, y], dim=1)
        if x.shape[1] != self.config.in_dim:
            raise ConditioningError(
                f"This DiT takes {self.config.in_dim} input channels but got {x.shape[1]}: load an I2V/M2V expert "
                "for memory-conditioned shots and a T2V expert for text-only first shots."
            )
        tokens = self.patch_embedding(x.to(self.patch_embedding.weight.dtype))  # [B, C, F, H', W']
        grid = tuple(tokens.shape[2:])
        tokens = tokens.flatten(2).transpose(1, 2)  # [B, L, C]
        rope = device_rope_tables(self.config.head_dim, grid, frame_positions, x.device)

        time_emb = self.time_embedding(timestep_embedding(t, self.config.freq_dim).to(x.device)).float()  # [B, C]
        time_mod = self.time_projection(time_emb).float().unflatten(1, (6, self.config.dim))  # [B, 6, C]
        context = self.embed_text(context)

        shards = self.sequence_parallel
        if shards is not None:  # this rank keeps a slice of the tokens and their rotary tables
            shards.split(tokens.shape[1])
            tokens, rope = shards.shard(tokens, 1), (shards.shard(rope[0], 0), shards.shard(rope[1], 0))
        for block in self.blocks:
            tokens = block(tokens, time_mod, rope, context)
        out = self.head(tokens, time_emb, context.dtype)
        return self.unpatchify(out if shards is None else shards.gather(out, 1), grid)

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, F*H*W, out*pt*ph*pw] -> [B, out, F*pt, H*ph, W*pw]."""
        pt, ph, pw = self.config.patch_size
        f, h, w = grid
        x = tokens.view(tokens.shape[0], f, h, w, pt, ph, pw, self.config.out_dim)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(tokens.shape[0], self.config.out_dim, f * pt, h * ph, w * pw)
