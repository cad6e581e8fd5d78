"""The multi-GPU measurement (benchmarks/parallel_measured.py) runs under torchrun through the engine's own torchrun
path, here on 2 CPU ranks with gloo and a tiny model, and sets its figures beside the projection's."""

import json

import pytest
from parallel_cases import torchrun

from benchmarks.parallel_measured import side_by_side
from benchmarks.parallel_projection import projection


def test_the_measurement_times_forwards_cfg_steps_and_a_shot_over_two_ranks(tmp_path):
    out = tmp_path / "measured.json"
    run = torchrun(2, ["-m", "benchmarks.parallel_measured", "--tiny", "--eager", "--repeats", "1",
                       "--json", str(out)], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    measured = json.loads(out.read_text())
    assert measured["ranks"] == 2 and set(measured["memory"]) == {"0", "10"}
    for row in measured["memory"].values():
        assert row["forward_s"] > 0 and row["cfg_step_s"] > 0
    assert measured["memory"]["10"]["preset_shot_s"] > 0


def test_measured_figures_stand_beside_the_projected_ones_for_the_ranks_that_ran():
    compute = {1: 4.0, 2: 2.1, 4: 1.1, 8: 0.6}
    forwards = {10: {"plain_forward_s": 4.0, "input_bytes": 10**8, "prediction_bytes": 10**7,
                     "ranks": {n: {"compute_s": s, "collective_bytes": [10**9] * 3} for n, s in compute.items()}}}
    projected = {"projection": projection(forwards, {"preset_steps": 4, "preset_shot_s": 20.0})}
    measured = {"ranks": 2, "memory": {"10": {"forward_s": 2.4, "cfg_step_s": 4.4, "preset_shot_s": 13.0}}}
    table = side_by_side(measured, projected)
    cells = [line.strip("| ").split(" | ") for line in table.splitlines()[2:]]  # M, GPUs, what, measured, ...
    rows = {row[2]: row for row in cells}
    nvlink = [r for r in projected["projection"] if r["link"].startswith("NVLink") and r["ranks"] == 2]
    forward = next(r for r in nvlink if not r["cfg_parallel"])
    step = next(r for r in nvlink if r["cfg_parallel"])  # 2 ranks: the engine runs CFG parallel
    assert float(rows["forward (guide 1)"][4]) == pytest.approx(forward["forward_s"], abs=1e-3)
    assert float(rows["forward (guide 1)"][5]) == pytest.approx(2.4 / forward["forward_s"], abs=0.01)
    assert float(rows["CFG step (CFG parallel on)"][4]) == pytest.approx(step["cfg_step_s"], abs=1e-3)
    assert float(rows["preset shot"][4]) == pytest.approx(forward["preset_shot_s"], abs=1e-3)
