"""`python -m storymem_core inspect FILE...`: what each model file is and whether it would load
(`weights.inspection` reads them; this prints)."""

from __future__ import annotations

from ..weights.inspection import describe, inspect_file


def inspect_command(paths: list[str]) -> int:
    """Print what each file is and what is wrong with it; 0 when every one is usable, else 2."""
    infos = [inspect_file(path) for path in paths]
    print("\n\n".join(describe(info) for info in infos))
    return 0 if all(info.usable for info in infos) else 2
