"""One writer per story folder, with real processes: a second `story` run on a folder another run is writing exits 2
at once with a sentence naming the holder and writes nothing, and a holder killed outright never blocks the folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from storymem_core.commands.cli import main
from storymem_core.commands.demo import DEMO_FRAMES, DEMO_SIZE_WH
from storymem_core.folder_lock import LOCK_FILE, one_writer
from storymem_core.video import read_mp4

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX signals (SIGSTOP, SIGKILL)")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The demo's tiny models (models-seed0/) and script (story.json)."""
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out)]) == 0
    return out


def story(demo: Path, out: Path, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "storymem_core", "story", str(demo / "story.json"), "--models-dir",
            str(demo / "models-seed0"), "--out", str(out), "--size", "x".join(map(str, DEMO_SIZE_WH)), "--frames",
            str(DEMO_FRAMES), "--steps", "2", "--device", "cpu", *extra]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def holding(process: subprocess.Popen, out: Path, timeout: float = 120) -> None:
    """Wait until `process` holds `out` (its pid is in the lock file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads((out / LOCK_FILE).read_text())["pid"] == process.pid:
                return
        except (OSError, ValueError, KeyError):
            pass
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    pytest.fail(f"the run never took {out}")


def finished(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=600)
    return process.returncode, err


def same_pixels(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and (a.float() - b.float()).abs().mean().item() < 0.5


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_story_run_on_a_folder_being_written_exits_2_and_writes_nothing(demo, tmp_path):
    out, alone = tmp_path / "story", tmp_path / "alone"
    first = story(demo, out, "--seed", "1", "--mi2v")
    holding(first, out)
    os.kill(first.pid, signal.SIGSTOP)  # the first run holds the folder, mid-run, while the second starts
    try:
        before = files_of(out)
        second = story(demo, out, "--seed", "2", "--mm2v")
        code, err = finished(second)
        assert code == 2, err
        assert f"is being written by another story run (process {first.pid}" in err and "Traceback" not in err
        assert files_of(out) == before  # the refused run wrote nothing
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert finished(first)[0] == 0
    assert finished(story(demo, alone, "--seed", "1", "--mi2v"))[0] == 0
    # the folder holds the first run's story only: each shot as the same run makes it alone (two CPU processes need not
    # sum in the same order, and the mp4 encoder turns a last-bit difference into a few changed pixels; another run's
    # shot differs everywhere)
    for shot in sorted((out / "shots").glob("shot_*.mp4")):
        assert same_pixels(read_mp4(shot), read_mp4(alone / "shots" / shot.name)), shot.name
    assert same_pixels(read_mp4(out / "film.mp4"), read_mp4(alone / "film.mp4"))


def test_a_run_killed_outright_never_blocks_its_folder(demo, tmp_path):
    out = tmp_path / "story"
    first = story(demo, out, "--seed", "1")
    holding(first, out)
    first.kill()  # SIGKILL: no cleanup runs
    first.communicate()
    code, err = finished(story(demo, out, "--seed", "1"))
    assert code == 0, err
    assert len(list((out / "shots").glob("shot_*.mp4"))) == 3 and (out / "film.mp4").is_file()


def test_one_process_may_hold_its_folder_twice_and_then_frees_it(tmp_path):
    """Planning holds the folder, then the story loop holds it again in the same process; both end, and it is free."""
    with one_writer(tmp_path / "story"):
        with one_writer(tmp_path / "story"):
            pass
    probe = subprocess.run([sys.executable, "-c", "import sys; from storymem_core.folder_lock import one_writer\n"
                            "with one_writer(sys.argv[1]): pass", str(tmp_path / "story")], cwd=ROOT,
                           capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
