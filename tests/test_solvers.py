"""The flow-matching solvers reproduce the reference schedulers on every sched* golden case.

Schedules are found from the key names (`<solver>_<steps>_<shift>.timesteps`) and trajectories from
`<solver>_traj.stepN`, so another golden folder may hold other combinations.
"""

import math
import re

import pytest
import torch
from golden_data import case_paths, load_case
from safetensors import safe_open

from storymem_core.choices import Solver
from storymem_core.errors import SamplerError
from storymem_core.solvers import make_solver

SCHEDULE_KEY = re.compile(r"^(?P<solver>.+)_(?P<steps>\d+)_(?P<shift>[0-9.]+)\.timesteps$")
TRAJECTORY_KEY = re.compile(r"^(?P<solver>.+)_traj\.start$")
TRAJECTORY_ATOL = 1e-6


def golden_keys() -> list[tuple]:
    """(case path, key) for every tensor of every sched* case."""
    keys = []
    for path in case_paths("sched"):
        with safe_open(str(path.with_suffix(".safetensors")), "pt") as tensors:
            keys += [(path, key) for key in tensors.keys()]
    return keys


def params(pattern: re.Pattern, describe) -> list:
    found = [(path, pattern.match(key)) for path, key in golden_keys()]
    found = [pytest.param(path, match, id=f"{path.stem}-{describe(match)}") for path, match in found if match]
    return found or [pytest.param(None, None, marks=pytest.mark.skip(reason="no such sched* golden keys"))]


def trajectory_shift(config: dict) -> float:
    """The golden JSON states the trajectory's shift in its note ('..., shift 5.0, ...')."""
    found = re.search(r"shift ([0-9.]+)", config["note"])
    assert found, "the sched golden JSON note must state the trajectory shift"
    return float(found.group(1))


@pytest.mark.parametrize("path, key", params(SCHEDULE_KEY, lambda m: m.group(0)[: -len(".timesteps")]))
def test_sched_schedule_matches_reference(path, key):
    _, tensors = load_case(path)
    name = key.group(0)[: -len(".timesteps")]
    solver = make_solver(key["solver"], int(key["steps"]), float(key["shift"]))
    assert solver.timesteps.dtype == torch.int64
    assert torch.equal(solver.timesteps.to(tensors[f"{name}.timesteps"].dtype), tensors[f"{name}.timesteps"])
    assert solver.sigmas.dtype == torch.float32
    assert torch.equal(solver.sigmas, tensors[f"{name}.sigmas"])


@pytest.mark.parametrize("path, key", params(TRAJECTORY_KEY, lambda m: m["solver"]))
def test_sched_trajectory_matches_reference(path, key):
    config, tensors = load_case(path)
    prefix = f"{key['solver']}_traj."
    steps = sum(1 for name in tensors if re.fullmatch(re.escape(prefix) + r"step\d+", name))
    solver = make_solver(key["solver"], steps, trajectory_shift(config))
    generator = torch.Generator().manual_seed(0)
    latent = tensors[prefix + "start"]
    for i in range(steps):
        latent = solver.step(0.5 * latent + 0.1 * math.sin(i), latent, generator=generator)
        torch.testing.assert_close(latent, tensors[f"{prefix}step{i}"], atol=TRAJECTORY_ATOL, rtol=0)


@pytest.mark.parametrize("steps", [1, 2, 7, 40])
@pytest.mark.parametrize("shift", [1.0, 5.0])
def test_sched_euler_integrates_linear_flow_exactly(steps, shift):
    clean, noise = torch.randn(2, 4, 3, 5, 5, generator=torch.Generator().manual_seed(steps))
    solver = make_solver("euler", steps, shift)
    assert solver.sigmas[0] == 1 and solver.sigmas[-1] == 0 and len(solver.sigmas) == steps + 1
    latent = noise
    for sigma in solver.sigmas[1:]:
        latent = solver.step(noise - clean, latent)
        torch.testing.assert_close(latent, (1 - sigma) * clean + sigma * noise, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", Solver.names())
def test_sched_solvers_draw_nothing_from_the_shared_generator(name):
    generator = torch.Generator().manual_seed(42)
    state = generator.get_state()
    solver = make_solver(name, 5, 3.0)
    latent = torch.randn(2, 3, 4)
    for _ in range(5):
        latent = solver.step(0.5 * latent, latent, generator=generator)
    assert torch.equal(generator.get_state(), state)


def test_sched_unknown_solver_names_the_valid_ones():
    with pytest.raises(SamplerError, match="'heun'") as error:
        make_solver("heun", 10, 5.0)
    assert all(name in str(error.value) for name in Solver.names())


def test_sched_stepping_past_the_schedule_is_refused():
    solver = make_solver("unipc", 2, 5.0)
    latent = torch.zeros(3)
    for _ in range(2):
        latent = solver.step(latent, latent)
    with pytest.raises(SamplerError, match="new solver"):
        solver.step(latent, latent)
