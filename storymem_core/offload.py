"""Block swap: run a 14B Wan expert in a few GiB of VRAM by streaming its blocks from pinned host memory.

`BlockSwapDiT(dit)` keeps the transformer blocks in (pinned) host memory and only the small parts
(embeddings, head) plus `prefetch + 1` block-sized slots on the device. While block i computes, the
weights of block i+1.. are copied into a free slot on a side CUDA stream; events order the copy after the
slot's previous user and the compute after the copy. On CPU the same slot logic runs synchronously.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .choices import Offload
from .wan.dit import DiTConfig, WanDiT

GIB = 2**30
# measured on an H100 (docs/benchmarks.md): 6.2 GiB over the weights at 48,360 tokens, CFG as two calls
ACTIVATION_BYTES_PER_TOKEN = 144 * 2**10
HEADROOM_BYTES = 2 * GIB


@dataclass
class _BlockTensor:
    """One parameter or buffer of a block: where it lives and its host copy."""

    module: nn.Module
    name: str
    is_parameter: bool
    host: torch.Tensor

    def point_to(self, tensor: torch.Tensor) -> None:
        if self.is_parameter:
            self.module._parameters[self.name].data = tensor
        else:
            self.module._buffers[self.name] = tensor


def _block_tensors(block: nn.Module) -> list[_BlockTensor]:
    tensors = []
    for module in block.modules():
        for name, param in module._parameters.items():
            if param is not None:
                tensors.append(_BlockTensor(module, name, True, param.data))
        for name, buffer in module._buffers.items():
            if buffer is not None:
                tensors.append(_BlockTensor(module, name, False, buffer))
    return tensors


# torch's pinned allocator rounds every request up to a power of two (a 135 MiB FFN weight takes 256 MiB),
# so blocks are packed into 2 GiB arenas: three bf16 A14B blocks fill one to 98%
PINNED_ARENA_BYTES = 2**31
_ALIGN = 256


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


def _pinned_copies(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of `tensors` in pinned host memory, packed in order into as few arenas as fit."""
    copies: list[torch.Tensor] = []
    groups: list[list[torch.Tensor]] = [[]]
    sizes = [0]
    for tensor in tensors:
        nbytes = _aligned(tensor.numel() * tensor.element_size())
        if groups[-1] and sizes[-1] + nbytes > PINNED_ARENA_BYTES:
            groups.append([])
            sizes.append(0)
        groups[-1].append(tensor)
        sizes[-1] += nbytes
    for group, size in zip(groups, sizes):
        arena = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        offset = 0
        for tensor in group:
            nbytes = tensor.numel() * tensor.element_size()
            view = arena[offset : offset + nbytes].view(tensor.dtype).view(tensor.shape)
            copies.append(view.copy_(tensor))
            offset += _aligned(nbytes)
    return copies


class BlockSwapDiT(nn.Module):
    """A WanDiT whose blocks stream to the device one by one; call it exactly like the WanDiT.

    `.to(device)` places the small parts on `device` and keeps the blocks in host memory (pinned when CUDA
    is there), so an ExpertPair that moves experts with `.to()` works unchanged. Change weights (LoRA
    merge, loading) on `self.dit` only while the model is not running.
    """

    def __init__(self, dit: WanDiT, prefetch: int = 1):
        super().__init__()
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1 block, got {prefetch}")
        self.dit = dit
        self.prefetch = prefetch
        self.device = dit.patch_embedding.weight.device  # where the small parts are until `.to()` moves them
        self._tensors = [_block_tensors(block) for block in dit.blocks]
        self._slots: list[list[torch.Tensor | None]] = []
        self._copy_stream: torch.cuda.Stream | None = None
        self._ready: list[torch.cuda.Event] = []
        self._free: list[torch.cuda.Event] = []
        self._next_block = 0
        self._streaming = False  # hooks act only inside this wrapper's forward
        for index, block in enumerate(dit.blocks):
            block.register_forward_pre_hook(lambda _m, _a, i=index: self._before_block(i))
            block.register_forward_hook(lambda _m, _a, _o, i=index: self._after_block(i))
        self._move_blocks_to_host(pin=torch.cuda.is_available())

    @property
    def config(self) -> DiTConfig:
        return self.dit.config

    def to(self, device: torch.device | str) -> "BlockSwapDiT":
        """Move the resident parts to `device`; blocks stay in host memory and stream from there."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device == self.device:
            return self
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # in-flight copies still read the slots
        self._slots, self._copy_stream, self._ready, self._free = [], None, [], []
        for child in self.dit.children():
            if child is not self.dit.blocks:
                child.to(device)
        self.device = device
        self._move_blocks_to_host(pin=device.type == "cuda")
        return self

    def _move_blocks_to_host(self, pin: bool) -> None:
        tensors = [tensor for block_tensors in self._tensors for tensor in block_tensors]
        hosts = [tensor.host for tensor in tensors]
        if pin and not all(host.is_pinned() for host in hosts):
            hosts = _pinned_copies(hosts)
        elif not pin:
            hosts = [host.cpu() for host in hosts]
        for tensor, host in zip(tensors, hosts):
            tensor.host = host
            tensor.point_to(host)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None = None,
        frame_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not self._slots:
            self._allocate_slots()
        self._next_block = 0
        self._issue_until(self.prefetch)  # overlaps the first copies with the embeddings
        self._streaming = True
        try:
            return self.dit(x, t, context, y, frame_positions)
        finally:
            self._streaming = False

    def _allocate_slots(self) -> None:
        count = min(self.prefetch + 1, len(self._tensors))
        self._slots = [[None] * len(self._tensors[0]) for _ in range(count)]
        if self.device.type == "cuda":
            self._copy_stream = torch.cuda.Stream(self.device)
            self._ready = [torch.cuda.Event() for _ in range(count)]
            self._free = [torch.cuda.Event() for _ in range(count)]

    def _issue_until(self, last: int) -> None:
        """Start copying blocks up to `last` (inclusive) into their slots."""
        while self._next_block <= min(last, len(self._tensors) - 1):
            self._issue(self._next_block)
            self._next_block += 1

    def _issue(self, index: int) -> None:
        k = index % len(self._slots)
        slot, hosts = self._slots[k], self._tensors[index]
        if len(slot) != len(hosts):
            slot[:] = [None] * len(hosts)
        for j, tensor in enumerate(hosts):
            if slot[j] is None or slot[j].shape != tensor.host.shape or slot[j].dtype != tensor.host.dtype:
                slot[j] = torch.empty(tensor.host.shape, dtype=tensor.host.dtype, device=self.device)
                if self._copy_stream is not None:  # memory may still be read by kernels queued on this stream
                    self._free[k].record()
        if self._copy_stream is None:
            for dst, tensor in zip(slot, hosts):
                dst.copy_(tensor.host)
            return
        with torch.cuda.stream(self._copy_stream):
            self._copy_stream.wait_event(self._free[k])
            for dst, tensor in zip(slot, hosts):
                dst.copy_(tensor.host, non_blocking=True)
            self._ready[k].record()

    def _before_block(self, index: int) -> None:
        if not self._streaming:
            return
        self._issue_until(index + self.prefetch)
        k = index % len(self._slots)
        if self._copy_stream is not None:
            torch.cuda.current_stream(self.device).wait_event(self._ready[k])
        for dst, tensor in zip(self._slots[k], self._tensors[index]):
            tensor.point_to(dst)

    def _after_block(self, index: int) -> None:
        if not self._streaming:
            return
        k = index % len(self._slots)
        if self._copy_stream is not None:
            self._free[k].record()
        for tensor in self._tensors[index]:
            tensor.point_to(tensor.host)


def choose_offload(expert: nn.Module, free_bytes: int, tokens: int) -> str:
    """How to place two experts of this size in `free_bytes` of VRAM (e.g. torch.cuda.mem_get_info()[0]).

    'none': both experts stay on the device; 'experts': one at a time (ExpertPair offload=True);
    'blocks': wrap each expert in BlockSwapDiT (a few GiB of VRAM, ~3% slower at M=10).
    """
    expert_bytes = sum(p.numel() * p.element_size() for p in expert.parameters())
    activations = ACTIVATION_BYTES_PER_TOKEN * tokens + HEADROOM_BYTES
    if free_bytes >= 2 * expert_bytes + activations:
        return Offload.NONE
    if free_bytes >= expert_bytes + activations:
        return Offload.EXPERTS
    return Offload.BLOCKS


def resolve_offload(requested: str, expert: nn.Module, device: torch.device, free_bytes: int, tokens: int) -> str:
    """The placement to use: off-GPU devices need none, 'auto' asks `choose_offload`, anything else is kept."""
    if device.type != "cuda":
        return Offload.NONE
    if requested != Offload.AUTO:
        return requested
    return choose_offload(expert, free_bytes, tokens)
