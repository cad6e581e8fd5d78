"""The Wan2.1 causal 3D VAE: video [B, 3, 1+4n, H, W] <-> normalised latents [B, 16, 1+n, H/8, W/8].

Module and parameter names follow `Wan2.1_VAE.pth`, so the real file loads by name. Time is causal:
a video is encoded as its first frame, then chunks of 4 frames, and decoded one latent frame at a
time, which bounds memory; each causal layer remembers the last frames it saw in a `CausalCache`
that lives for one call only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConditioningError
from .config_dicts import config_fields

CACHE_FRAMES = 2  # a temporal kernel of 3 needs the 2 frames before each chunk
MIN_TILE = 8

WAN21_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclass
class VAEConfig:
    """Sizes of a Wan VAE; `wan21` gives the real Wan2.1 VAE (the one Wan2.2 A14B uses)."""

    dim: int = 96
    z_dim: int = 16
    dim_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 2
    attn_scales: list[float] = field(default_factory=list)
    temperal_downsample: list[bool] = field(default_factory=lambda: [False, True, True])
    dropout: float = 0.0

    @classmethod
    def from_dict(cls, values: dict) -> "VAEConfig":
        return cls(**config_fields(cls, values))

    @classmethod
    def wan21(cls) -> "VAEConfig":
        return cls(
            dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
            temperal_downsample=[False, True, True], dropout=0.0,
        )

    @property
    def temporal_stride(self) -> int:
        """Video frames per latent frame (after the first): 4 for Wan2.1."""
        return 2 ** sum(map(bool, self.temperal_downsample))

    @property
    def spatial_stride(self) -> int:
        """Pixels per latent pixel along each side: 8 for Wan2.1."""
        return 2 ** (len(self.dim_mult) - 1)


class CausalCache:
    """The last input frames each causal layer saw in this encode/decode call, keyed by layer."""

    def __init__(self) -> None:
        self._frames: dict[nn.Module, torch.Tensor] = {}

    def get(self, layer: nn.Module) -> torch.Tensor | None:
        return self._frames.get(layer)

    def put(self, layer: nn.Module, frames: torch.Tensor) -> None:
        self._frames[layer] = frames


def _last_frames(history: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """The last CACHE_FRAMES frames of history ++ x, copied so the chunk itself can be freed."""
    recent = x[:, :, -CACHE_FRAMES:]
    if recent.shape[2] < CACHE_FRAMES and history is not None:
        recent = torch.cat([history[:, :, recent.shape[2] - CACHE_FRAMES :], recent], dim=2)
    return recent.clone()


def _per_frame(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [B*T, C, H, W] for 2D layers."""
    return x.transpose(1, 2).flatten(0, 1)


def _per_video(x: torch.Tensor, batch: int) -> torch.Tensor:
    """[B*T, C, H, W] -> [B, C, T, H, W]."""
    return x.unflatten(0, (batch, -1)).transpose(1, 2)


class CausalConv3d(nn.Conv3d):
    """Conv3d padded only towards the past in time: output frame t never sees input frames after t.

    With a cache, the frames of the previous chunk stand in for the zero padding, so a video run
    chunk by chunk gives the same result as in one piece.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
    ):
        super().__init__(in_dim, out_dim, kernel, stride=stride)
        pad_t, pad_h, pad_w = padding if isinstance(padding, tuple) else (padding,) * 3
        self.past_frames = 2 * pad_t
        self.spatial_padding = (pad_w, pad_w, pad_h, pad_h)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        past = self.past_frames
        if cache is not None and past > 0:
            history = cache.get(self)
            cache.put(self, _last_frames(history, x))
            if history is not None:
                x = torch.cat([history, x], dim=2)
                past -= history.shape[2]
        return super().forward(F.pad(x, (*self.spatial_padding, past, 0)))


class ChannelRMSNorm(nn.Module):
    """RMS norm over the channel axis (dim 1) with a per-channel gain `gamma`."""

    def __init__(self, dim: int, images: bool = False):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


FRAME_LOCAL = (ChannelRMSNorm, nn.SiLU, nn.Dropout)


class CausalSequential(nn.Sequential):
    """nn.Sequential that hands the call's cache to every layer except those that see one pixel at a time."""

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        for layer in self:
            x = layer(x) if isinstance(layer, FRAME_LOCAL) else layer(x, cache)
        return x


class NearestUpsample2x(nn.Module):
    """2x nearest-exact upsampling in float32 (nearest interpolation lacks bf16 kernels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").type_as(x)


class Downsample(nn.Module):
    """Halve height and width; with `temporal`, also halve time (the first frame passes alone)."""

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if temporal:
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = _per_video(self.resample(_per_frame(x)), x.shape[0])
        if self.temporal:
            previous = cache.get(self.time_conv)
            cache.put(self.time_conv, x[:, :, -1:].clone())
            if previous is not None:
                x = self.time_conv(torch.cat([previous, x], dim=2))  # [prev, 4 frames] -> 2 frames
        return x


class Upsample(nn.Module):
    """Double height and width, halving channels; with `temporal`, each latent frame after the first becomes 2."""

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.resample = nn.Sequential(NearestUpsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        if temporal:
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        if self.temporal:
            if cache.get(self.time_conv) is None:
                # the first frame is not doubled, and the next frames' history starts with zeros, not with it
                cache.put(self.time_conv, torch.zeros_like(x[:, :, -1:]))
            else:
                b, c, t, h, w = x.shape
                x = self.time_conv(x, cache)  # [b, 2c, t, h, w]: two output frames per input frame
                x = x.view(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
        return _per_video(self.resample(_per_frame(x)), x.shape[0])


class ResidualBlock(nn.Module):
    """Two causal 3x3x3 convolutions behind RMS norm + SiLU, plus a 1x1x1 shortcut when the width changes."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float):
        super().__init__()
        self.residual = CausalSequential(
            ChannelRMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            ChannelRMSNorm(out_dim), nn.SiLU(), nn.Dropout(dropout), CausalConv3d(out_dim, out_dim, 3, padding=1),
        )  # fmt: skip
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        return self.residual(x, cache) + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (frames do not attend to each other)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = ChannelRMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        """`cache` is unused: nothing crosses frames, so nothing is carried between chunks."""
        b, c, t, h, w = x.shape
        frames = self.norm(_per_frame(x))
        qkv = self.to_qkv(frames).flatten(2).transpose(1, 2).unsqueeze(1)  # [b*t, 1, h*w, 3c]
        q, k, v = qkv.chunk(3, dim=-1)
        # head dim = channels (384 at real size) exceeds flash-attn's limit, so not the DiT's dispatch
        out = F.scaled_dot_product_attention(q, k, v)  # [b*t, 1, h*w, c]
        out = out.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)
        return x + _per_video(self.proj(out), b)


class Encoder3d(nn.Module):
    """Video chunk [B, 3, T, H, W] -> [B, 2*z_dim, ceil(T/4), H/8, W/8] (mean and log-variance)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        dims = [config.dim * m for m in [1, *config.dim_mult]]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks, scale = [], 1.0
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(config.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim, config.dropout))
                if scale in config.attn_scales:
                    blocks.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if level < len(config.dim_mult) - 1:
                blocks.append(Downsample(out_dim, temporal=config.temperal_downsample[level]))
                scale /= 2.0
        self.downsamples = CausalSequential(*blocks)
        self.middle = CausalSequential(
            ResidualBlock(out_dim, out_dim, config.dropout), AttentionBlock(out_dim),
            ResidualBlock(out_dim, out_dim, config.dropout),
        )  # fmt: skip
        self.head = CausalSequential(
            ChannelRMSNorm(out_dim), nn.SiLU(), CausalConv3d(out_dim, config.z_dim * 2, 3, padding=1)
        )

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        return self.head(self.middle(self.downsamples(x, cache), cache), cache)


class Decoder3d(nn.Module):
    """Latent frames [B, z_dim, T', h, w] -> video [B, 3, T, 8h, 8w] (T = 1 for the first latent frame, else 4T')."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        dims = [config.dim * m for m in [config.dim_mult[-1], *reversed(config.dim_mult)]]
        temporal_upsample = list(reversed(config.temperal_downsample))
        self.conv1 = CausalConv3d(config.z_dim, dims[0], 3, padding=1)
        self.middle = CausalSequential(
            ResidualBlock(dims[0], dims[0], config.dropout), AttentionBlock(dims[0]),
            ResidualBlock(dims[0], dims[0], config.dropout),
        )  # fmt: skip
        blocks, scale = [], 1.0 / 2 ** (len(config.dim_mult) - 2)
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if level > 0:
                in_dim //= 2  # the Upsample before this level halved the channels
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim, config.dropout))
                if scale in config.attn_scales:
                    blocks.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if level < len(config.dim_mult) - 1:
                blocks.append(Upsample(out_dim, temporal=temporal_upsample[level]))
                scale *= 2.0
        self.upsamples = CausalSequential(*blocks)
        self.head = CausalSequential(ChannelRMSNorm(out_dim), nn.SiLU(), CausalConv3d(out_dim, 3, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        return self.head(self.upsamples(self.middle(x, cache), cache), cache)


class WanVAE(nn.Module):
    """The Wan2.1 VAE with the latent normalisation the Wan DiTs were trained on."""

    def __init__(
        self,
        config: VAEConfig | None = None,
        latent_mean: tuple[float, ...] | list[float] = WAN21_LATENT_MEAN,
        latent_std: tuple[float, ...] | list[float] = WAN21_LATENT_STD,
    ):
        super().__init__()
        self.config = config = config or VAEConfig.wan21()
        # plain tuples, not buffers: a model built on the meta device and loaded with assign=True keeps them
        self.latent_mean = tuple(latent_mean)
        self.latent_std = tuple(latent_std)
        self.encoder = Encoder3d(config)
        self.conv1 = CausalConv3d(config.z_dim * 2, config.z_dim * 2, 1)
        self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder3d(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    def _latent_stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std as float32 [1, z_dim, 1, 1, 1]."""
        mean = torch.tensor(self.latent_mean, dtype=torch.float32, device=device)
        std = torch.tensor(self.latent_std, dtype=torch.float32, device=device)
        return mean.view(1, -1, 1, 1, 1), std.view(1, -1, 1, 1, 1)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] (T = 4n+1, H and W multiples of 8) -> float32 [B, z_dim, 1+n, H/8, W/8]."""
        stride = self.config.temporal_stride
        _check_video(video, stride, self.config.spatial_stride)
        video = video.to(self.dtype)
        cache = CausalCache()
        chunks = [video[:, :, :1], *(video[:, :, start : start + stride] for start in range(1, video.shape[2], stride))]
        features = torch.cat([self.encoder(chunk, cache) for chunk in chunks], dim=2)
        mu = self.conv1(features)[:, : self.config.z_dim].float()
        mean, std = self._latent_stats(mu.device)
        return (mu - mean) * std.reciprocal()

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, tile: tuple[int, int] | None = None) -> torch.Tensor:
        """Normalised latents [B, z_dim, T', h, w] -> float32 video [B, 3, 1+4(T'-1), 8h, 8w] in [-1, 1].

        `tile = (tile_h, tile_w)` in latent pixels decodes overlapping spatial tiles one at a time and
        blends them linearly over the overlap (a quarter of the tile), bounding memory; near seams the
        result differs from an untiled decode because each tile sees less context.
        """
        if tile is None:
            return self._decode_whole(latent)
        if min(tile) < MIN_TILE:
            raise ConditioningError(
                f"VAE decode tile {tuple(tile)} is smaller than {MIN_TILE} latent pixels per side: use at least "
                f"({MIN_TILE}, {MIN_TILE}), e.g. (32, 32), or no tiling."
            )
        return self._decode_tiled(latent, tile)

    def _decode_whole(self, latent: torch.Tensor) -> torch.Tensor:
        mean, std = self._latent_stats(latent.device)
        z = (latent.float() * std + mean).to(self.dtype)
        x = self.conv2(z)
        cache = CausalCache()
        video = torch.cat([self.decoder(x[:, :, i : i + 1], cache) for i in range(x.shape[2])], dim=2)
        return video.float().clamp_(-1, 1)

    def _decode_tiled(self, latent: torch.Tensor, tile: tuple[int, int]) -> torch.Tensor:
        h, w = latent.shape[3:]
        rows, cols = _tile_spans(h, tile[0]), _tile_spans(w, tile[1])
        if len(rows) == 1 and len(cols) == 1:
            return self._decode_whole(latent)
        scale = self.config.spatial_stride
        video = weight_sum = None
        for top, bottom in rows:
            row_weight = _blend_weights(top, bottom, h, tile[0], scale, latent.device)
            for left, right in cols:
                part = self._decode_whole(latent[:, :, :, top:bottom, left:right])
                weight = row_weight[:, None] * _blend_weights(left, right, w, tile[1], scale, latent.device)
                if video is None:
                    video = part.new_zeros(*part.shape[:3], h * scale, w * scale)
                    weight_sum = part.new_zeros(h * scale, w * scale)
                region = (slice(top * scale, bottom * scale), slice(left * scale, right * scale))
                video[(..., *region)] += part * weight
                weight_sum[region] += weight
        return video / weight_sum


def _check_video(video: torch.Tensor, temporal_stride: int, spatial_stride: int) -> None:
    frames, height, width = video.shape[2:]
    if frames < 1 or (frames - 1) % temporal_stride:
        lower = max(1, (frames - 1) // temporal_stride * temporal_stride + 1)
        raise ConditioningError(
            f"The video to VAE-encode has {frames} frames, but the Wan VAE takes {temporal_stride}n+1 frames (the "
            f"first frame, then groups of {temporal_stride}): use {lower} or {lower + temporal_stride} frames."
        )
    if height % spatial_stride or width % spatial_stride:
        raise ConditioningError(
            f"The video to VAE-encode is {width}x{height} pixels: resize it so width and height are multiples of "
            f"{spatial_stride}."
        )


def _tile_overlap(tile: int) -> int:
    return tile // 4


def _tile_spans(size: int, tile: int) -> list[tuple[int, int]]:
    """[start, end) of overlapping tiles covering 0..size, the last one flush with the end."""
    if size <= tile:
        return [(0, size)]
    starts = list(range(0, size - tile, tile - _tile_overlap(tile))) + [size - tile]
    return [(start, start + tile) for start in starts]


def _blend_weights(start: int, end: int, size: int, tile: int, scale: int, device: torch.device) -> torch.Tensor:
    """Per-pixel weight of one tile along one axis: ramps linearly over the overlap on sides with a neighbour."""
    ramp = _tile_overlap(tile) * scale
    length = (end - start) * scale
    position = torch.arange(length, dtype=torch.float32, device=device) + 0.5
    weight = torch.ones(length, device=device)
    if start > 0:
        weight = torch.minimum(weight, position / ramp)
    if end < size:
        weight = torch.minimum(weight, (length - position) / ramp)
    return weight
