"""The multi-GPU projection (benchmarks/parallel_projection.py): its stand-in collectives run the engine's split
forward at the shard shapes and count the bytes the real all-to-alls would move; its model adds them up."""

import pytest
import torch

from benchmarks.dit_step import build_random_dit, dit_inputs, tiny_config
from benchmarks.parallel_projection import (
    RANKS,
    ProjectedShards,
    collective_bytes,
    collective_s,
    counted_collectives,
    forward_part,
    ideal_forwards,
    markdown,
    meta_twin,
    projected,
    projection,
)

HEIGHT, WIDTH = 32, 48  # latent 4 x 6 patches a frame


@pytest.fixture(scope="module")
def model():
    config = tiny_config()
    config.num_heads, config.dim = 8, 256
    return build_random_dit(config, torch.device("cpu"), 0)


def test_a_split_of_one_runs_the_split_code_and_equals_the_plain_forward(model):
    x, t, context, y = dit_inputs(model.config, 2, 1, torch.device("cpu"), HEIGHT, WIDTH)
    with torch.no_grad():
        plain = model(x, t, context, y)
        with projected(model, ProjectedShards(1)):
            split = model(x, t, context, y)
    assert torch.equal(split, plain)


@pytest.mark.parametrize("ranks", [2, 4, 8])
def test_counted_bytes_are_what_each_rank_would_send(model, ranks):
    x, t, context, y = dit_inputs(model.config, 2, 1, torch.device("cpu"), HEIGHT, WIDTH)
    shards = ProjectedShards(ranks)
    with torch.no_grad(), projected(model, shards):
        out = model(x, t, context, y)
    assert out.shape == x.shape[:1] + (model.config.out_dim,) + x.shape[2:]
    config = model.config
    length = x.shape[2] * (HEIGHT // 16) * (WIDTH // 16)  # tokens after the 1x2x2 patches
    mine = -(-length // ranks)  # rank 0 keeps the longest slice
    # each all-to-all: my tokens' other head groups leave, or the others' tokens of my heads arrive (bf16)
    exchange = max(mine * (ranks - 1), length - mine) * (config.num_heads // ranks) * config.head_dim * 2
    # the output's all-gather: every other rank's slice of float32 patch outputs arrives
    gather = (ranks - 1) * mine * config.out_dim * 4 * 4
    assert shards.collectives == [exchange] * 4 * config.num_layers + [gather]
    # what the benchmark counts on the meta device, without running the forward
    assert collective_bytes(meta_twin(config), (x, t, context, y), ranks) == shards.collectives


def forwards(compute: dict[int, float], collective_bytes: dict[int, list[int]]) -> dict:
    return {10: {"plain_forward_s": compute[1], "input_bytes": 10**8, "prediction_bytes": 10**7,
                 "ranks": {n: {"compute_s": compute[n], "collective_bytes": collective_bytes[n]} for n in compute}}}


def test_the_model_adds_compute_and_communication_and_halves_cfg_work_across_groups():
    compute = {1: 4.0, 2: 2.1, 4: 1.1, 8: 0.6}
    sent = {1: [], 2: [10**9] * 3, 4: [5 * 10**8] * 3, 8: [2 * 10**8] * 3}
    rows = projection(forwards(compute, sent), {"preset_steps": 4, "preset_shot_s": 20.0})
    nvlink = [r for r in rows if r["link"].startswith("NVLink")]
    one = next(r for r in nvlink if r["ranks"] == 1)
    assert one["forward_s"] == 4.0 and one["cfg_step_s"] == 8.0 and one["comm_share"] == 0
    assert one["preset_shot_s"] == pytest.approx(20.0) and one["default_shot_s"] == pytest.approx(4.0 + 40 * 8.0)
    two = next(r for r in nvlink if r["ranks"] == 2 and not r["cfg_parallel"])
    comm = collective_s(sent[2], 450e9) + collective_s([10**8], 450e9)
    assert two["forward_s"] == pytest.approx(2.1 + comm)
    assert two["cfg_step_s"] == pytest.approx(2 * two["forward_s"])
    # CFG parallel on 2 GPUs: each runs one whole pass, then the predictions are exchanged
    cfg_two = next(r for r in nvlink if r["ranks"] == 2 and r["cfg_parallel"])
    assert cfg_two["cfg_step_s"] == pytest.approx(4.0 + collective_s([10**8, 10**7], 450e9))
    assert cfg_two["cfg_step_speedup"] == pytest.approx(8.0 / cfg_two["cfg_step_s"])
    pcie = next(r for r in rows if r["link"].startswith("PCIe") and r["ranks"] == 2 and not r["cfg_parallel"])
    assert pcie["forward_s"] > two["forward_s"]  # the slower link costs more


def test_the_forward_part_times_every_split_and_projects_a_table(model):
    """The device run's forward part, eager on the tiny model: a row per M with every N timed and counted."""
    forwards = forward_part(model, torch.device("cpu"), 1, False, lambda **values: None, (HEIGHT, WIDTH))
    for row in forwards.values():
        assert row["plain_forward_s"] > 0 and sorted(row["ranks"]) == list(RANKS)
        assert all(row["ranks"][n]["compute_s"] > 0 for n in RANKS) and row["ranks"][1]["collective_bytes"] == []
        assert len(row["ranks"][8]["collective_bytes"]) == 4 * model.config.num_layers + 1
    table = markdown(projection(forwards, None))
    assert table.count("\n") == 1 + 2 * 2 * (len(RANKS) + 3)  # header, then links x M x (N off, even N on)


def test_an_ideal_split_bounds_the_speed_up_by_the_communication_alone(model):
    forwards = ideal_forwards(model.config, {10: 4.0}, counted_collectives(model.config, (10,)))
    inputs = dit_inputs(model.config, 10, 1, torch.device("cpu"))  # the real 832x480 shape, on a tiny model
    assert forwards[10]["ranks"][4]["collective_bytes"] == collective_bytes(meta_twin(model.config), inputs, 4)
    rows = projection(forwards, None)
    for row in rows:
        assert row["cfg_step_speedup"] <= row["ranks"] + 1e-9
        expected_compute = 4.0 / row["ranks"]
        assert row["forward_s"] >= expected_compute and (row["ranks"] == 1) == (row["comm_share"] == 0)
