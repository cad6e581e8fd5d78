"""A benchmark's figures as they come: each printed as a JSON line at once, and everything so far written atomically
to the --json file after each one, so a run stopped at its time limit keeps what it measured and never a cut file."""

from __future__ import annotations

import json
from pathlib import Path

from storymem_core.files import atomic_write_path, write_json


def keep(figure: dict, everything: dict | list, path: Path | None) -> None:
    """Print `figure`; write `everything` (which holds it) to `path` when one is given."""
    print(json.dumps(figure), flush=True)
    if path is not None:
        write_json(everything, path)


def save_text(text: str, path: Path) -> None:
    """A report (a markdown table, a profile) written whole or not at all."""
    with atomic_write_path(path) as temp:
        temp.write_text(text + "\n", encoding="utf-8")
