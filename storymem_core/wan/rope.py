"""3D rotary position embedding of the Wan DiT, in batched float32 cos/sin form.

The reference rotates in float64 complex numbers per sample; here the angles are computed once per
grid (float64, cheap) and applied as real cos/sin in float32 to all samples at once. Temporal
positions are an explicit input so memory frames can be placed before (or apart from) the shot.
"""

from __future__ import annotations

import functools

import torch

THETA = 10000.0


def split_rotary_pairs(head_dim: int) -> tuple[int, int, int]:
    """Number of rotary pairs given to (time, height, width) for one head."""
    pairs = head_dim // 2
    return pairs - 2 * (pairs // 3), pairs // 3, pairs // 3


def _angles(positions: torch.Tensor, pairs: int) -> torch.Tensor:
    inv_freq = 1.0 / torch.pow(THETA, torch.arange(0, 2 * pairs, 2, dtype=torch.float64) / (2 * pairs))
    return torch.outer(positions.to(torch.float64), inv_freq)  # [n, pairs]


def rope_tables(
    head_dim: int, grid: tuple[int, int, int], frame_positions: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each [F*H*W, 1, head_dim // 2] float32, for a (F, H, W) token grid."""
    f, h, w = grid
    if frame_positions is None:
        frame_positions = torch.arange(f)
    t_pairs, h_pairs, w_pairs = split_rotary_pairs(head_dim)
    angles = torch.cat(
        [
            _angles(frame_positions.cpu(), t_pairs)[:, None, None].expand(f, h, w, t_pairs),
            _angles(torch.arange(h), h_pairs)[None, :, None].expand(f, h, w, h_pairs),
            _angles(torch.arange(w), w_pairs)[None, None, :].expand(f, h, w, w_pairs),
        ],
        dim=-1,
    ).reshape(f * h * w, 1, -1)
    return angles.cos().float(), angles.sin().float()


def device_rope_tables(
    head_dim: int, grid: tuple[int, int, int], frame_positions: torch.Tensor | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rope_tables` on `device`, kept for the next forward: every step of a shot asks for the same tables, which
    cost ~0.1 s of CPU time and a copy each at 48,360 tokens."""
    positions = None if frame_positions is None else tuple(frame_positions.tolist())
    return _cached_tables(head_dim, grid, positions, device)


@functools.lru_cache(maxsize=4)  # a story's shots share a few grids; each entry is ~25 MB at 48,360 tokens
def _cached_tables(head_dim: int, grid: tuple[int, int, int], positions: tuple[int, ...] | None,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    frame_positions = None if positions is None else torch.tensor(positions)
    cos, sin = rope_tables(head_dim, grid, frame_positions)
    return cos.to(device), sin.to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of x [B, L, N, D] by the tables; computed in float32."""
    pairs = x.float().unflatten(-1, (-1, 2))  # [B, L, N, D/2, 2]
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2).type_as(x)
