"""The real ComfyUI the host tests run in, and how they run code inside it.

The host is found through STORYMEM_COMFYUI (a ComfyUI folder) or because the pack sits in a
`ComfyUI/custom_nodes/` folder. Without one the host tests are skipped, except under CI=true, where a
missing host fails them. Code that needs ComfyUI runs in a subprocess (tests/host_scripts/), which
loads the pack from a folder named ComfyUI-StoryMem as ComfyUI loads custom nodes; this process never
imports ComfyUI, whose top-level `nodes` module would shadow the pack's `nodes` package.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PACK_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "host_scripts"
PACK_FOLDER = "ComfyUI-StoryMem"


def host_dir() -> Path | None:
    """The ComfyUI folder to test in, or None."""
    if os.environ.get("STORYMEM_COMFYUI"):
        return Path(os.environ["STORYMEM_COMFYUI"]).resolve()
    parent = Path(__file__).parent.parent.absolute().parent  # not resolved: the pack may be a link in custom_nodes
    if parent.name == "custom_nodes" and (parent.parent / "comfy").is_dir():
        return parent.parent
    return None


def missing(what_enables_it: str) -> None:
    """Skip a test that needs something this machine lacks, saying in one line what enables it; under CI=true fail
    it instead (CI installs everything, so nothing may be skipped there)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what_enables_it} (under CI=true it must be there: see .ci/run)")
    pytest.skip(what_enables_it)


GGUF_MISSING = "needs city96/ComfyUI-GGUF in the ComfyUI's custom_nodes and `pip install gguf` (README: Test)"


def require_host() -> Path:
    """The host folder; skips the test without one, fails it under CI=true (CI must run the host tests)."""
    host = host_dir()
    if host is not None and (host / "main.py").is_file():
        return host
    missing(f"needs a ComfyUI: set STORYMEM_COMFYUI to a ComfyUI folder (v0.12.1+) with this pack in its custom_nodes, "
            f"or run from ComfyUI/custom_nodes/ComfyUI-StoryMem (README: Test; now {host or 'unset'})")


def pack_folder(host: Path, scratch: Path) -> Path:
    """The pack as ComfyUI users have it: custom_nodes/ComfyUI-StoryMem of the host when that is this
    checkout, else a link of that name to this checkout."""
    linked = host / "custom_nodes" / PACK_FOLDER
    if linked.exists() and linked.resolve() == PACK_ROOT:
        return linked
    link = scratch / "custom_nodes" / PACK_FOLDER
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(PACK_ROOT, target_is_directory=True)
    return link


def run_in_host(script: str, *args: str | Path, scratch: Path, timeout: float = 900) -> str:
    """Run tests/host_scripts/`script` inside the host; its output, or a failure showing it."""
    host = require_host()
    env = {**os.environ, "STORYMEM_COMFYUI": str(host), "STORYMEM_PACK": str(pack_folder(host, scratch))}
    result = subprocess.run([sys.executable, str(SCRIPTS / script), *map(str, args)], cwd=scratch, env=env,
                            capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"{script} failed in ComfyUI ({host}), exit {result.returncode}:\n{output[-6000:]}")
    return output
