"""ViCLIP (InternVid's video CLIP, ViCLIP-L/14), the model VBench and the StoryMem paper read text-video and
video-video similarity with: a ViT over 8 frames at once (one joint attention over every frame's patches, a learned
time embedding per frame) and CLIP's text transformer with a 32-token context. Parameter names are those of the
published `ViClip-InternVid-10M-FLT.pth` (`vision_encoder.*`, `text_encoder.*`, `temp`), so its state dict loads by
name; tokens come from open_clip's copy of CLIP's BPE. Equality with VBench's code is proven by the `viclip` golden
cases (tests/test_paper_scorers.py). Frames are prepared by `scorers.vbench_pixels`. See docs/evaluation.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError
from .wan.config_dicts import config_fields
from .weights.shapes import count_blocks

HEAD_WIDTH = 64  # ViCLIP-L/14's vision (1024 / 16) and text (768 / 12) heads: the count is not in the weights


@dataclass(frozen=True)
class ViCLIPConfig:
    """ViCLIP's sizes; the defaults are ViCLIP-L/14's (the published file)."""

    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    patch_size: int = 14
    image_size: int = 224
    num_frames: int = 8
    embed_dim: int = 768
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    context_length: int = 32
    vocab_size: int = 49408

    @classmethod
    def from_dict(cls, config: Mapping) -> ViCLIPConfig:
        return cls(**{k: int(v) for k, v in config_fields(cls, config).items()})

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> ViCLIPConfig:
        """The sizes a state dict's shapes say (heads of 64 channels, as ViCLIP-L/14's)."""
        vision_width, _, _, patch, _ = shapes["vision_encoder.conv1.weight"]
        positions = shapes["vision_encoder.positional_embedding"][0] - 1
        vocab_size, text_width = shapes["text_encoder.token_embedding.weight"]
        return cls(
            vision_width=vision_width, vision_layers=count_blocks(shapes, "vision_encoder.transformer.resblocks."),
            vision_heads=max(1, vision_width // HEAD_WIDTH), patch_size=patch,
            image_size=round(positions**0.5) * patch,
            num_frames=shapes["vision_encoder.temporal_positional_embedding"][1],
            embed_dim=shapes["vision_encoder.proj"][1], text_width=text_width,
            text_layers=count_blocks(shapes, "text_encoder.transformer.resblocks."),
            text_heads=max(1, text_width // HEAD_WIDTH),
            context_length=shapes["text_encoder.positional_embedding"][0], vocab_size=vocab_size,
        )


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualBlock(nn.Module):
    """Pre-norm attention + MLP, CLIP's block; `causal` for the text tower."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.ModuleDict({"c_fc": nn.Linear(width, 4 * width), "c_proj": nn.Linear(4 * width, width)})
        self.ln_2 = nn.LayerNorm(width)
        self.gelu = QuickGELU()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp["c_proj"](self.gelu(self.mlp["c_fc"](self.ln_2(x))))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class ViCLIPVision(nn.Module):
    """Frames [B, T, 3, H, W] (CLIP-normalised) -> video embeddings [B, D]: every frame's patches, each with its
    place and its frame's time embedding, attend jointly with one class token that becomes the embedding."""

    def __init__(self, config: ViCLIPConfig):
        super().__init__()
        width, patch = config.vision_width, config.patch_size
        self.num_frames = config.num_frames
        self.conv1 = nn.Conv3d(3, width, (1, patch, patch), (1, patch, patch), bias=False)  # no mixing across time
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros((config.image_size // patch) ** 2 + 1, width))
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, config.num_frames, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, config.vision_layers, config.vision_heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, config.embed_dim))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        frames = video.shape[1]
        if frames not in (1, self.num_frames):
            raise CheckpointError(f"ViCLIP reads {self.num_frames} frames of a video (or one image), not {frames}: "
                                  "sample the shot as docs/evaluation.md says.")
        x = self.conv1(video.transpose(1, 2))  # [B, C, T, h, w]
        x = x.flatten(3).permute(0, 3, 2, 1)  # [B, hw, T, C]
        x = x + self.positional_embedding[1:, None]
        # one image: the mean time embedding, as the published model does
        time = self.temporal_positional_embedding.mean(1) if frames == 1 else self.temporal_positional_embedding[0]
        x = (x + time).flatten(1, 2)  # [B, hw * T, C], patch-major as the reference orders them
        cls = (self.class_embedding + self.positional_embedding[0]).expand(len(x), 1, -1)
        x = self.transformer(self.ln_pre(torch.cat([cls, x], dim=1)))
        return self.ln_post(x[:, 0]) @ self.proj


class ViCLIPText(nn.Module):
    """Token ids [B, L] -> text embeddings [B, D], read at each prompt's end token (the highest id)."""

    def __init__(self, config: ViCLIPConfig):
        super().__init__()
        width = config.text_width
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.zeros(config.context_length, width))
        self.transformer = Transformer(width, config.text_layers, config.text_heads)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.zeros(width, config.embed_dim))
        causal = torch.full((config.context_length, config.context_length), float("-inf")).triu(1)
        self.register_buffer("causal_mask", causal, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.positional_embedding  # [B, L, C]
        x = self.ln_final(self.transformer(x, self.causal_mask.to(x.dtype)))
        return x[torch.arange(len(x)), tokens.argmax(dim=-1)] @ self.text_projection


class ViCLIP(nn.Module):
    """Both towers under the published file's names (its `temp`, the contrastive temperature, is loaded, not used)."""

    def __init__(self, config: ViCLIPConfig = ViCLIPConfig()):
        super().__init__()
        self.config = config
        self.vision_encoder = ViCLIPVision(config)
        self.text_encoder = ViCLIPText(config)
        self.temp = nn.Parameter(torch.tensor(0.01))


class ViCLIPScorer:
    """ViCLIP as evaluation reads it: videos and prompts to L2-normalised float32 embeddings on the CPU."""

    def __init__(self, model: ViCLIP):
        import open_clip

        self.model = model.eval().requires_grad_(False)
        self.num_frames = model.config.num_frames
        self.image_size = model.config.image_size
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=model.config.context_length)

    def tokens(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP BPE ids [N, context], start and end tokens included, cut at the context (its last id the end)."""
        return self.tokenizer(list(prompts))

    @torch.inference_mode()
    def embed_text(self, prompts: Sequence[str]) -> torch.Tensor:
        parameter = next(self.model.parameters())
        embeddings = self.model.text_encoder(self.tokens(prompts).to(parameter.device))
        return F.normalize(embeddings.float(), dim=-1).cpu()

    @torch.inference_mode()
    def embed_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """Prepared frames [T, 3, S, S] of one video (`scorers.vbench_pixels`) -> its embedding [D]."""
        parameter = next(self.model.parameters())
        embedding = self.model.vision_encoder(pixels[None].to(parameter.device, parameter.dtype))[0]
        return F.normalize(embedding.float(), dim=-1).cpu()
