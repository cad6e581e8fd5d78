"""The umT5-xxl text encoder that turns prompts into the DiT's text context (inference only).

Parameter names follow the Wan-AI checkpoint `models_t5_umt5-xxl-enc-bf16.pth`, so it loads by name.
umT5 differs from T5 by giving every layer its own relative position bias (`shared_pos=False`).
Everything runs in the weights' dtype (bf16 in Wan); norms and softmax reduce in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config_dicts import config_fields
from .dit import RMSNorm

NORM_EPS = 1e-6
MAX_DISTANCE = 128  # relative distances beyond this share the last bucket


@dataclass
class T5Config:
    """Sizes of a T5 encoder; `umt5_xxl` gives the real one.

    `dropout` is kept so reference configs load as they are; this encoder never applies it.
    """

    vocab: int
    dim: int
    dim_attn: int
    dim_ffn: int
    num_heads: int
    num_layers: int
    num_buckets: int
    shared_pos: bool = False
    dropout: float = 0.1

    @classmethod
    def from_dict(cls, values: dict) -> "T5Config":
        return cls(**config_fields(cls, values))

    @classmethod
    def umt5_xxl(cls) -> "T5Config":
        """The encoder of google/umt5-xxl as Wan2.1/2.2 use it (5.68 B parameters)."""
        return cls(
            vocab=256384, dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64, num_layers=24, num_buckets=32,
            shared_pos=False
        )


def relative_position_buckets(length: int, num_buckets: int, device: torch.device | str) -> torch.Tensor:
    """Bidirectional T5 buckets [L, L] of (key position - query position): exact when near, log-spaced when far."""
    distance = torch.arange(length, device=device)[None, :] - torch.arange(length, device=device)[:, None]
    half = num_buckets // 2  # one half per direction
    direction = (distance > 0).long() * half
    distance = distance.abs()
    max_exact = half // 2
    # clamp keeps log() finite where the exact branch is taken anyway
    far = distance.clamp(min=max_exact).float()
    log_bucket = max_exact + (
        torch.log(far / max_exact) / math.log(MAX_DISTANCE / max_exact) * (half - max_exact)).long()
    log_bucket = log_bucket.clamp(max=half - 1)
    return direction + torch.where(distance < max_exact, distance, log_bucket)


def clamp_fp16_overflow(x: torch.Tensor) -> torch.Tensor:
    """In float16, once any value overflowed, pull everything into range as the reference does (no host sync)."""
    if x.dtype != torch.float16:
        return x
    limit = torch.finfo(torch.float16).max - 1000
    return torch.where(torch.isinf(x).any(), x.clamp(-limit, limit), x)


class RelativePositionBias(nn.Module):
    """A learned bias per (bucket, head), added to attention scores."""

    def __init__(self, num_buckets: int, num_heads: int):
        super().__init__()
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, buckets: torch.Tensor) -> torch.Tensor:
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)  # [L, L, N] -> [1, N, L, L]


class T5Attention(nn.Module):
    def __init__(self, dim: int, dim_attn: int, num_heads: int):
        super().__init__()
        if dim_attn % num_heads:
            raise ValueError(f"dim_attn {dim_attn} must split into {num_heads} equal heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x [B, L, C], bias [B, N, L, L] (position + key padding) -> [B, L, C]."""
        q, k, v = (proj(x).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
                   for proj in (self.q, self.k, self.v))  # [B, N, L, D]
        # T5 folds the 1/sqrt(d) scale into its weights; biased attention is outside the flash-attn entry point
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        return self.o(out.transpose(1, 2).flatten(2))


class GatedFeedForward(nn.Module):
    """fc2(fc1(x) * gelu_tanh(gate(x))); `gate` is a Sequential so the checkpoint key is `gate.0.weight`."""

    def __init__(self, dim: int, dim_ffn: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


class T5Block(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.norm1 = RMSNorm(config.dim, NORM_EPS)
        self.attn = T5Attention(config.dim, config.dim_attn, config.num_heads)
        self.norm2 = RMSNorm(config.dim, NORM_EPS)
        self.ffn = GatedFeedForward(config.dim, config.dim_ffn)
        self.pos_embedding = None if config.shared_pos else RelativePositionBias(config.num_buckets, config.num_heads)

    def forward(self, x: torch.Tensor, buckets: torch.Tensor, key_bias: torch.Tensor,
                shared_bias: torch.Tensor | None) -> torch.Tensor:
        position_bias = shared_bias if self.pos_embedding is None else self.pos_embedding(buckets)
        x = clamp_fp16_overflow(x + self.attn(self.norm1(x), position_bias + key_bias))
        return clamp_fp16_overflow(x + self.ffn(self.norm2(x)))


class UMT5Encoder(nn.Module):
    """forward: token ids [B, L] + mask [B, L] (1 = real token) -> hidden states [B, L, dim] in the weights' dtype."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab, config.dim)
        self.pos_embedding = RelativePositionBias(config.num_buckets, config.num_heads) if config.shared_pos else None
        self.blocks = nn.ModuleList(T5Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.dim, NORM_EPS)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids)  # [B, L, C]
        batch, length = ids.shape
        buckets = relative_position_buckets(length, self.config.num_buckets, ids.device)
        shared_bias = None if self.pos_embedding is None else self.pos_embedding(buckets)
        # padded keys get the dtype's lowest value, so no query attends to them
        key_bias = torch.zeros(batch, 1, 1, length, dtype=x.dtype, device=x.device)
        key_bias.masked_fill_(mask.view(batch, 1, 1, length) == 0, torch.finfo(x.dtype).min)
        for block in self.blocks:
            x = block(x, buckets, key_bias, shared_bias)
        return self.norm(x)
