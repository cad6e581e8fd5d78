"""Tensor-shape helpers shared by recognition, configs and loading: anchor tensors, block counts, linear chains,
and whether a file's tensors fit a model. Free of model code, so any loader may import it.
See docs/architecture.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from torch import nn

from ..errors import CheckpointError


def count_blocks(names: Iterable[str], blocks_prefix: str = "blocks.") -> int:
    """Layers of a model from its tensor names (`blocks.0.`, `blocks.1.`, ...)."""
    return len({name[len(blocks_prefix):].split(".")[0] for name in names if name.startswith(blocks_prefix)})


def _natural_key(prefix: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", prefix)]


def linear_chain(shapes: Mapping[str, tuple[int, ...]]) -> tuple[list[str], str | None]:
    """The layer prefixes of a chain of linear layers, in order (`weight`, or `layers.0.weight`, `layers.2.weight`,
    ...; dropouts hold no tensors), and what keeps it from being an aesthetic head (None when nothing)."""
    prefixes = sorted((name[: -len("weight")] for name in shapes if name.endswith("weight")), key=_natural_key)
    out_features = None
    for prefix in prefixes:
        shape = tuple(shapes[prefix + "weight"])
        if len(shape) != 2 or out_features not in (None, shape[1]):
            return prefixes, f"is not a chain of linear layers (at '{prefix}weight' {shape})"
        out_features = shape[0]
    if out_features != 1:
        return prefixes, "does not end in a single score output"
    return prefixes, None


def anchor_shape(shapes: Mapping[str, tuple[int, ...]], name: str, rank: int, source: str = "It") -> tuple[int, ...]:
    """The shape of a tensor the model's sizes are read from, once it has `rank` sizes and none is zero."""
    if name not in shapes:
        raise CheckpointError(
            f"{source} lacks '{name}', which gives the model's size: the file is incomplete; download it again."
        )
    shape = tuple(shapes[name])
    if len(shape) != rank or 0 in shape:
        raise CheckpointError(f"{source} has '{name}' of shape {list(shape)}, where a model has {rank} sizes above 0: "
                              "the file is damaged or was altered; download it again.")
    return shape


def first_names(names: list[str], limit: int = 5) -> str:
    """'a, b, c and 4 more': enough names for an error message to be acted on."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def fit_faults(
    expected: Mapping[str, tuple[int, ...]], given: Mapping[str, tuple[int, ...]], strict: bool = True
) -> list[str]:
    """What keeps a file's tensors (`given`) from fitting a model's (`expected`): missing, unexpected, wrong shape."""
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    shared = sorted(expected.keys() & given.keys())
    wrong = [f"{n} (file {list(given[n])}, model {list(expected[n])})" for n in shared if given[n] != expected[n]]
    faults = []
    if missing and strict:
        faults.append(f"missing {first_names(missing)}")
    if unexpected and strict:
        faults.append(f"unexpected {first_names(unexpected)}")
    if wrong:
        faults.append(f"wrong shape {first_names(wrong, 3)}")
    return faults


def model_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """A module's tensor names and shapes as a checkpoint must hold them (fp8 scales travel beside their weights)."""
    return {name: tuple(t.shape) for name, t in module.state_dict().items() if not name.endswith(".scale_weight")}
