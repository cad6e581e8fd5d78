"""`python -m storymem_core download`: fetch the model files ComfyUI's own dialog cannot into a models folder, or
list them with size and license first (storymem_core/downloads.py; see docs/architecture.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from ..downloads import KNOWN_FILES, KnownFile, download, known_file, partial_path, shown_size


def _about(file: KnownFile) -> str:
    size = shown_size(file.size) if file.sha256 else f"about {shown_size(file.size)}"
    return f"{file.folder}/{file.name}  {size}, license {file.license}, {file.page}"


def download_command(args: argparse.Namespace) -> int:
    models = Path(args.models_dir)
    if args.list or not args.names:
        if not models.is_dir():
            print(f"{models} does not exist yet: a download creates it.")
        print(f"{'state':>17}  folder/name (give it to download as shown)  size, license, page")
        for file in KNOWN_FILES:
            there = (models / file.folder / file.name).is_file()
            started = partial_path(models / file.folder / file.name).is_file()
            state = "present" if there else "partly downloaded" if started else "missing"
            print(f"{state:>17}  {_about(file)}")
        return 0
    files = [known_file(name) for name in args.names]  # every name checked before anything is fetched
    for file in files:
        print(_about(file))
        with tqdm(desc=file.filename, unit="B", unit_scale=True, unit_divisor=1000) as bar:
            def shown(done: int, total: int, bar: tqdm = bar) -> None:
                bar.total = total
                bar.update(done - bar.n)

            print(download(file, models / file.folder, shown))
    return 0
