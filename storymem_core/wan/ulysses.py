"""Ulysses sequence parallelism for the Wan DiT (DeepSpeed-Ulysses, the scheme Wan2.2 / StoryMem ship).

Each rank of a group holds a contiguous slice of the tokens through the whole DiT. Self-attention is the only
place a token needs the others: one all-to-all trades the token split for a head split, every rank attends over
the whole sequence with N / P heads, and a second all-to-all trades back. Slices may be uneven, so no padding
token ever enters attention and the result equals one process's. Cross-attention (to the replicated text),
the FFN and the head are per token and need no communication.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

from .attention import attention


class SequenceShards:
    """How one group of ranks splits a token sequence: rank r keeps the r-th of P near-equal contiguous slices.

    `split(total)` fixes the slice lengths for one forward (WanDiT.forward calls it where it shards its tokens).
    """

    def __init__(self, group: dist.ProcessGroup):
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.lengths: list[int] = []

    def split(self, total: int) -> None:
        base, extra = divmod(total, self.size)
        self.lengths = [base + (rank < extra) for rank in range(self.size)]

    def shard(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's slice of `x` along `dim`."""
        return x.narrow(dim, sum(self.lengths[: self.rank]), self.lengths[self.rank])

    def gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Every rank's slice along `dim`, concatenated in order: the whole sequence, the same on every rank."""
        longest = max(self.lengths)
        padded = x.movedim(dim, 0)
        padded = nn.functional.pad(padded, (0, 0) * (padded.dim() - 1) + (0, longest - padded.shape[0])).contiguous()
        slices = [torch.empty_like(padded) for _ in self.lengths]
        dist.all_gather(slices, padded, group=self.group)
        return torch.cat([part[:length] for part, length in zip(slices, self.lengths)]).movedim(0, dim)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Self-attention of this rank's tokens over the whole sequence. q/k/v: [B, L_r, N, D] -> [B, L_r, N, D]."""
        if q.shape[2] % self.size:
            raise ValueError(f"{q.shape[2]} attention heads do not split over {self.size} ranks")
        q, k, v = (self._to_heads(x) for x in (q, k, v))
        return self._to_tokens(attention(q, k, v))

    def all_to_all(self, send: torch.Tensor, receive_lengths: list[int], send_lengths: list[int]) -> torch.Tensor:
        """Rank p gets the p-th `send_lengths` slice of `send` (dim 0); returns the slices every rank sent me, in
        rank order, `receive_lengths` long."""
        received = send.new_empty(sum(receive_lengths), *send.shape[1:])
        dist.all_to_all_single(received, send, output_split_sizes=receive_lengths, input_split_sizes=send_lengths,
                               group=self.group)
        return received

    def _to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L_r, N, D] (all heads of my tokens) -> [B, L, N / P, D] (my heads of all tokens)."""
        batch, local, heads, head_dim = x.shape
        # [P, L_r, B, N / P, D]: the p-th head group of my tokens goes to rank p
        send = x.reshape(batch, local, self.size, heads // self.size, head_dim).permute(2, 1, 0, 3, 4).contiguous()
        return self.all_to_all(send.flatten(0, 1), self.lengths, [local] * self.size).transpose(0, 1)

    def _to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, N / P, D] -> [B, L_r, N, D]: the inverse of `_to_heads`."""
        batch, _, group_heads, head_dim = x.shape
        local = self.lengths[self.rank]
        received = self.all_to_all(x.transpose(0, 1).contiguous(), [local] * self.size, self.lengths)
        return received.view(self.size, local, batch, group_heads, head_dim).permute(2, 1, 0, 3, 4).flatten(2, 3)


@contextlib.contextmanager
def sharded_sequence(model: nn.Module, shards: SequenceShards | None) -> Iterator[None]:
    """Forwards of `model` (a WanDiT, or a wrapper holding one as `.dit`) inside the block split their tokens over
    `shards`' group; None (or a group of one) runs them whole."""
    targets = sequence_parallel_modules(model)
    active = shards if shards is not None and shards.size > 1 else None
    for module in targets:
        module.sequence_parallel = active
    try:
        yield
    finally:
        for module in targets:
            module.sequence_parallel = None


def sequence_parallel_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose `sequence_parallel` a split forward sets: the DiT (it shards and gathers its tokens) and
    every block's self-attention (it trades tokens for heads)."""
    dit = getattr(model, "dit", model)
    return [dit, *(block.self_attn for block in dit.blocks)]
