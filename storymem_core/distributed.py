"""Several GPUs sampling one story under torchrun: Ulysses sequence parallel + CFG parallel on torch.distributed.

`torchrun --nproc-per-node N -m storymem_core story ...` starts N copies of the CLI. Every rank loads the experts;
rank 0 runs the story (encodes, decodes, selects keyframes, writes every file) and the others serve its DiT
forwards: for each forward rank 0 broadcasts the inputs and all ranks run it with the tokens split over them
(wan/ulysses.py). Where the guide is not 1 and N is even, ranks 0..N/2-1 run the prompt's pass while the others run
the negative prompt's (CFG parallel); at a guide of 1 all N split the one pass. `--fsdp` shards each expert's weights
over the ranks (FSDP2) for GPUs that cannot hold one. NCCL on GPUs, gloo on the CPU.

A rank that fails records its error in the rendezvous store before it exits; the others, stopped in a collective,
raise that first error. Rank 0 only ever writes finished shots, atomically, so the story folder stays resumable.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .choices import ShotMode
from .errors import SettingsError, StoryMemError
from .sampling import ExpertPair
from .wan.ulysses import SequenceShards, sharded_sequence

log = logging.getLogger(__name__)

PAIRS = (ShotMode.M2V, ShotMode.T2V)  # the expert pairs a forward can name (StoryModels' m2v and t2v)
STOP, FORWARD = 0, 1
HEADER_SIZE = 14
FIRST_ERROR_KEY = "storymem/first_error"
T = TypeVar("T")


class RankFailed(StoryMemError):
    """Another rank failed first: its error, for every rank to stop with."""


@dataclass(frozen=True)
class PairChannel:
    """What rank 0's ExpertPair uses to run each forward on every rank."""

    parallel: Parallel
    pair: str

    def prediction(self, high: bool, latent: torch.Tensor, t: float, context: torch.Tensor, context_null: torch.Tensor,
                   guide: float, y: torch.Tensor | None, frame_positions: torch.Tensor | None) -> torch.Tensor:
        return self.parallel.lead_forward(self.pair, high, latent, t, context, context_null, guide, y, frame_positions)


class Parallel:
    """This process's place among the torchrun ranks, and the process groups a forward splits over."""

    def __init__(self, device: torch.device):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = device
        self.wire = device if dist.get_backend() == "nccl" else torch.device("cpu")  # where collectives take tensors
        self.everyone = SequenceShards(dist.group.WORLD)
        half = self.world // 2
        self.cfg_parallel = self.world % 2 == 0
        # every rank creates every group, in the same order
        halves = [dist.new_group(list(range(start, start + half))) for start in (0, half)] if self.cfg_parallel else []
        pairs = [dist.new_group([i, i + half]) for i in range(half)] if self.cfg_parallel else []
        self.my_half = SequenceShards(halves[self.rank // half]) if self.cfg_parallel else None
        self.my_pair = pairs[self.rank % half] if self.cfg_parallel else None
        self.broken = False  # a collective failed part-way: the groups cannot be used again
        self._pairs: dict[str, ExpertPair | None] = {}

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def check_heads(self, heads: int) -> None:
        """Refuse, before any shot, a rank count whose splits do not divide the attention heads."""
        if heads % self.world:
            divisors = ", ".join(str(n) for n in range(2, heads + 1) if heads % n == 0)
            raise SettingsError(f"torchrun --nproc-per-node {self.world} splits the experts' {heads} attention heads "
                                f"unevenly: use a process count that divides {heads} ({divisors}).")

    def run(self, pairs: dict[str, ExpertPair | None], fsdp: bool, story: Callable[[], T]) -> T | None:
        """Rank 0 runs `story` with its expert pairs forwarding on every rank; the others serve until it ends.

        `fsdp` shards every expert's weights over the ranks first (instead of any offload)."""
        self._pairs = pairs
        for pair in pairs.values():
            if pair is not None and fsdp:
                for expert in (pair.high, pair.low):
                    shard_weights(expert, self.device)
                pair.offload = False
        if not self.is_leader:
            self.serve()
            return None
        for name, pair in pairs.items():
            if pair is not None:
                pair.parallel = PairChannel(self, name)
        try:
            return story()
        finally:
            self.stop()

    # ------------------------------------------------------------------ rank 0

    def lead_forward(self, pair: str, high: bool, latent: torch.Tensor, t: float, context: torch.Tensor,
                     context_null: torch.Tensor, guide: float, y: torch.Tensor | None,
                     frame_positions: torch.Tensor | None) -> torch.Tensor:
        header = [FORWARD, PAIRS.index(pair), float(high), guide, t, *latent.shape, 0 if y is None else y.shape[0],
                  context.shape[0], context_null.shape[0], context.shape[1], float(frame_positions is not None)]
        with self._failures():
            self._broadcast(torch.tensor(header, dtype=torch.float64))
            latent, context, context_null = (self._broadcast(x.float()) for x in (latent, context, context_null))
            y = None if y is None else self._broadcast(y.float())
            # one position per latent frame
            frame_positions = None if frame_positions is None else self._broadcast(frame_positions.double())
            # every rank computes from the same broadcast values, so every rank holds the same prediction
            return self._predict(self._model(pair, high), latent, t, context, context_null, guide, y, frame_positions)

    def stop(self) -> None:
        """Release the serving ranks (after the story, or after a failure on this rank outside a forward)."""
        if not self.broken:
            self._broadcast(torch.tensor([STOP] + [0] * (HEADER_SIZE - 1), dtype=torch.float64))

    # ------------------------------------------------------------------ ranks 1..N-1

    def serve(self) -> None:
        """Run rank 0's forwards until it stops; the pair that served before is parked when the other one starts."""
        previous = None
        while True:
            with self._failures():
                header = self._broadcast(torch.empty(HEADER_SIZE, dtype=torch.float64)).tolist()
                if header[0] == STOP:
                    return
                _, pair_index, high, guide, t, *latent_shape, y_channels, context_len, null_len, text_dim, placed = (
                    header)
                pair = self._pairs[PAIRS[int(pair_index)]]
                if previous is not None and previous is not pair:
                    previous.park()
                previous = pair
                shape = [int(size) for size in latent_shape]
                latent = self._broadcast(torch.empty(shape))
                context = self._broadcast(torch.empty(int(context_len), int(text_dim)))
                context_null = self._broadcast(torch.empty(int(null_len), int(text_dim)))
                y = self._broadcast(torch.empty(int(y_channels), *shape[1:])) if y_channels else None
                positions = self._broadcast(torch.empty(shape[1], dtype=torch.float64)) if placed else None
                model = self._model(PAIRS[int(pair_index)], bool(high))
                self._predict(model, latent, t, context, context_null, guide, y, positions)

    # ------------------------------------------------------------------ every rank

    def _model(self, pair: str, high: bool) -> nn.Module:
        return self._pairs[pair].activate(high=high)

    def _predict(self, model: nn.Module, latent: torch.Tensor, t: float, context: torch.Tensor,
                 context_null: torch.Tensor, guide: float, y: torch.Tensor | None,
                 frame_positions: torch.Tensor | None) -> torch.Tensor:
        """uncond + guide * (cond - uncond), as one process computes it, with the work split over the ranks."""
        device = self.device
        latent, context, context_null = latent.to(device), context.to(device), context_null.to(device)
        y_batch = None if y is None else y.to(device)[None]
        timestep = torch.tensor([t], dtype=torch.float64, device=device)

        def forward(prompt: torch.Tensor, shards: SequenceShards) -> torch.Tensor:
            with sharded_sequence(model, shards):
                return model(latent[None], timestep, prompt[None], y_batch, frame_positions)[0]

        if guide == 1.0:
            return forward(context, self.everyone)
        if not self.cfg_parallel:
            cond, uncond = forward(context, self.everyone), forward(context_null, self.everyone)
        else:
            mine = forward(context if self.rank < self.world // 2 else context_null, self.my_half)
            both = [torch.empty_like(mine, device=self.wire) for _ in range(2)]
            dist.all_gather(both, mine.to(self.wire).contiguous(), group=self.my_pair)
            cond, uncond = (x.to(device) for x in both)
        return uncond + guide * (cond - uncond)

    def _broadcast(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.wire).contiguous()
        dist.broadcast(x, src=0)
        return x

    @contextlib.contextmanager
    def _failures(self) -> Iterator[None]:
        """A failure here is recorded as the first error unless another rank's came first; then that one is raised."""
        try:
            yield
        except Exception as error:
            self.broken = True
            mine = f"rank {self.rank}: {error}".strip()
            first = _first_error(mine)
            if first != mine:
                rank, message = first.split(":", 1)
                raise RankFailed(f"{rank} failed ({message.strip()}); every finished shot is kept: "
                                 "fix that and run the same command again to continue.") from None
            raise


def _first_error(mine: str) -> str:
    """Record `mine` in the rendezvous store unless an error is there already; the one that is there now."""
    store = dist.distributed_c10d._get_default_store()  # torchrun's store: reachable from every rank
    return store.compare_set(FIRST_ERROR_KEY, "", mine).decode()


def shard_weights(expert: nn.Module, device: torch.device) -> None:
    """FSDP2: each block's (and the rest's) weights split over all ranks, gathered block by block for the forward."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    dit = getattr(expert, "dit", expert)
    for block in dit.blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(dit, mesh=mesh, reshard_after_forward=True)


@contextlib.contextmanager
def torchrun_session() -> Iterator[Parallel | None]:
    """Join the torchrun job this process belongs to (None when started alone) and leave it at the end."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield None
        return
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    parallel = Parallel(device)
    log.info("rank %d of %d on %s", parallel.rank, parallel.world, device)
    yield parallel
    if not parallel.broken:  # after a failure part-way through a collective, leaving would wait for the failed rank
        dist.destroy_process_group()
