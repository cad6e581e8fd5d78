"""A model config from a stored dict (a checkpoint's metadata, a golden case): the config's own fields only, so a
key written by a newer or older version of the writer is left out rather than refused."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields


def config_fields(config_class: type, values: Mapping) -> dict:
    """The entries of `values` that are fields of the dataclass `config_class`."""
    known = {field.name for field in fields(config_class)}
    return {key: value for key, value in values.items() if key in known}
