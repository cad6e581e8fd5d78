"""Workers and tiny models for tests/test_distributed.py, in a module of their own: each spawned rank imports only this
(not the test modules' ComfyUI pack and fixtures), which keeps starting a rank quick."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from helpers import free_port

from storymem_core.distributed import shard_weights, torchrun_session
from storymem_core.sampling import ExpertPair, SamplerSettings
from storymem_core.shot import ShotMemory, generate_memory_shot
from storymem_core.tiny_models import DIT, VAE
from storymem_core.wan.dit import DiTConfig, WanDiT
from storymem_core.wan.ulysses import SequenceShards, sharded_sequence
from storymem_core.wan.vae import VAEConfig, WanVAE

ROOT = Path(__file__).resolve().parents[1]
HEADS = 4  # divisible by every degree tested
TOLERANCE = dict(rtol=1e-5, atol=1e-6)


def torchrun(world: int, entry: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """`entry` (a script, or -m and a module, with its arguments) on `world` CPU ranks under torchrun, in `tmp_path`."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(world),
        "--master-port",
        str(free_port()),
        *entry,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def join(rank: int, world: int, port: int) -> None:
    """The environment torchrun gives each rank."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world)
    )


def tiny_dit(seed: int, in_dim: int = 36) -> WanDiT:
    torch.manual_seed(seed)
    return WanDiT(DiTConfig.from_dict({**DIT, "in_dim": in_dim, "num_heads": HEADS})).eval()


def dit_inputs() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(7)
    # 3 x 3 x 5 = 45 tokens: uneven slices over 2 and 4 ranks
    x, y = torch.randn(1, 16, 3, 6, 10, generator=generator), torch.randn(1, 20, 3, 6, 10, generator=generator)
    return x, torch.tensor([700]), torch.randn(1, 5, DIT["text_dim"], generator=generator), y


def dit_worker(rank: int, world: int, port: int, fsdp: bool, out: Path) -> None:
    join(rank, world, port)
    with torchrun_session():
        dit = tiny_dit(0)
        if fsdp:
            shard_weights(dit, torch.device("cpu"))
        with torch.no_grad(), sharded_sequence(dit, SequenceShards(dist.group.WORLD)):
            torch.save(dit(*dit_inputs()), out / f"rank{rank}.pt")


def shot_models() -> tuple[ExpertPair, WanVAE]:
    torch.manual_seed(3)
    vae = WanVAE(VAEConfig.from_dict(VAE)).eval()
    return ExpertPair(tiny_dit(1), tiny_dit(2)), vae


def memory_shot(experts: ExpertPair, vae: WanVAE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(11)
    memory = [torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=generator) for _ in range(2)]
    context, context_null = (
        torch.randn(6, DIT["text_dim"], generator=generator),
        torch.randn(4, DIT["text_dim"], generator=generator),
    )
    # the high expert guided (CFG parallel), the low one at 1 (one pass split over every rank)
    settings = SamplerSettings(steps=4, shift=5.0, solver="unipc", guide_high=3.5, guide_low=1.0, seed=5)
    return generate_memory_shot(
        experts, vae, context, context_null, ShotMemory(memory), frame_num=5, max_area=32 * 32, settings=settings
    ).video


def shot_worker(rank: int, world: int, port: int, out: Path) -> None:
    join(rank, world, port)
    with torchrun_session() as parallel:
        experts, vae = shot_models()
        video = parallel.run({"m2v": experts, "t2v": None}, False, lambda: memory_shot(experts, vae))
        if rank == 0:
            torch.save(video, out / "video.pt")
        else:
            assert video is None  # the serving ranks make no shot of their own
