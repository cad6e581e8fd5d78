"""A story's files are written behind its sampling: shot k's files go to disk while shot k + 1 samples, shot k + 1
starts from exactly what is saved, a failed write stops the story before anything later is written, and a story
stopped mid-shot still has the shot before saved whole."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest
import torch
from helpers import VALID

import storymem_core.pipeline as pipeline
from benchmarks.writes import WaitingShots
from storymem_core.bank_files import load_bank
from storymem_core.errors import GenerationInterrupted
from storymem_core.files import load_image
from storymem_core.pipeline import StoryOptions, run_story
from storymem_core.run_shot import ShotOutcome, ShotRequest
from storymem_core.story import loads_story
from storymem_core.story_folder import StoryFolder
from storymem_core.write_behind import WriteBehind

OPTIONS = StoryOptions(first_shot="t2v", continuation="mi2v", max_memory=4, fixed_memory=1, size_wh=(32, 32),
                       frames=5, fps=8)
SAVED_WAIT_S = 10.0
SHOTS = 3  # VALID's


class Maker(WaitingShots):
    """Noise shots at once (`WaitingShots` waiting 0 s), each request kept and each shot's start told."""

    def __init__(self):
        noise = torch.randint(0, 256, (OPTIONS.frames, 32, 32, 3), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(0))
        super().__init__(noise, seconds=0.0)
        self.requests: list[ShotRequest] = []
        self.started = [threading.Event() for _ in range(SHOTS)]

    def make_shot(self, request: ShotRequest, on_step) -> ShotOutcome:
        self.requests.append(request)
        self.started[request.index].set()
        return super().make_shot(request, on_step)


def story():
    return loads_story(json.dumps(VALID))  # cut, continuation (MI2V), cut


def test_a_shot_is_written_while_the_next_samples_and_the_next_starts_from_what_is_saved(tmp_path, monkeypatch):
    out = tmp_path / "story"
    maker, persist, overlapped = Maker(), pipeline._persist, []

    def persist_once_the_next_shot_started(folder, index, *args):
        if index + 1 < SHOTS:  # written behind the next shot: it starts while this one is not yet saved
            overlapped.append(maker.started[index + 1].wait(SAVED_WAIT_S))
        persist(folder, index, *args)

    monkeypatch.setattr(pipeline, "_persist", persist_once_the_next_shot_started)
    saved = []
    run_story(story(), maker, OPTIONS, out, on_saved=lambda index, total, memory: saved.append((index, len(memory))))
    assert overlapped == [True] * (SHOTS - 1)
    folder = StoryFolder(out)
    assert saved == [(0, 1), (1, 2), (2, 3)] and all(folder.is_finished(i) for i in range(3))
    for request in maker.requests[1:]:
        before = load_bank(folder.bank(request.index - 1))
        pairs = zip(request.memory.image_list(), before.image_list(), strict=True)
        assert all(torch.equal(a, b) for a, b in pairs)
        fields = [[(k.shot, k.frame_index, dict(k.scores), k.pinned, k.source) for k in bank.keyframes]
                  + [bank.max_size, bank.fixed] for bank in (request.memory, before)]
        assert fields[0] == fields[1]
    continued = maker.requests[1]  # the continuation is given the saved last frames
    tail = torch.stack([load_image(p) for p in sorted(folder.tail(0).glob("*.png"))])
    assert torch.equal(continued.previous_frames, tail)
    assert folder.film.is_file()


def test_a_failed_write_stops_the_story_before_anything_later_is_written(tmp_path, monkeypatch):
    out = tmp_path / "story"
    persist = pipeline._persist

    def disk_error_at_shot_2(folder, index, *args):
        if index == 1:
            raise OSError("disk gone")
        persist(folder, index, *args)

    monkeypatch.setattr(pipeline, "_persist", disk_error_at_shot_2)
    with pytest.raises(OSError, match="disk gone"):
        run_story(story(), Maker(), OPTIONS, out)
    folder = StoryFolder(out)
    assert [folder.is_finished(i) for i in range(3)] == [True, False, False]
    assert not folder.video(2).exists()  # shot 3 was made but not written


def test_a_failed_write_stops_the_shot_sampling_behind_it_at_its_next_step(tmp_path, monkeypatch, caplog):
    """Shot 2's files fail while shot 3 samples: shot 3 stops at its next step, not when it ends, and the error is
    raised once (not logged again as a second failure)."""
    out = tmp_path / "story"
    failed, steps = threading.Event(), []
    persist = pipeline._persist

    def disk_error_at_shot_2(folder, index, *args):
        if index == 1:
            failed.set()
            raise OSError("disk gone")
        persist(folder, index, *args)

    class ManySteps(Maker):
        def make_shot(self, request: ShotRequest, on_step) -> ShotOutcome:
            if request.index == 2:
                assert failed.wait(SAVED_WAIT_S)
                for step in range(1, 101):  # stopped within a step or two of the failure, long before step 100
                    on_step(step, 100)
                    steps.append(step)
                    time.sleep(0.05)
            return super().make_shot(request, on_step)

    monkeypatch.setattr(pipeline, "_persist", disk_error_at_shot_2)
    with pytest.raises(OSError, match="disk gone"):
        run_story(story(), ManySteps(), OPTIONS, out)
    assert len(steps) < 100
    assert "could not be written" not in caplog.text
    folder = StoryFolder(out)
    assert [folder.is_finished(i) for i in range(3)] == [True, False, False]


def test_a_story_stopped_mid_shot_has_the_shot_before_saved_whole(tmp_path, monkeypatch):
    out = tmp_path / "story"
    started = threading.Event()
    persist = pipeline._persist

    def slow_persist(folder, index, *args):
        started.set()
        threading.Event().wait(0.3)  # still writing when the next shot stops
        persist(folder, index, *args)

    steps = []

    def stop_in_shot_2(step, total):
        steps.append(step)
        if len(steps) == 2 and started.wait(5):  # shot 2, while shot 1 is being written
            raise GenerationInterrupted("stopped")

    monkeypatch.setattr(pipeline, "_persist", slow_persist)
    with pytest.raises(GenerationInterrupted):
        run_story(story(), Maker(), OPTIONS, out, on_step=stop_in_shot_2)
    folder = StoryFolder(out)
    assert folder.is_finished(0) and not folder.is_finished(1)
    assert len(list(folder.tail(0).glob("*.png"))) == 5 and folder.video(0).is_file()


def test_jobs_run_in_order_one_at_a_time_and_an_error_stops_the_next():
    ran, overlap, busy = [], [], threading.Lock()

    def job(name: str, fail: bool = False):
        def run():
            overlap.append(not busy.acquire(blocking=False))
            threading.Event().wait(0.02)
            ran.append(name)
            busy.release()
            if fail:
                raise ValueError(name)
        return run

    with pytest.raises(ValueError, match="b"):
        with WriteBehind() as writes:
            writes.submit(job("a"))
            writes.submit(job("b", fail=True))
            writes.submit(job("c"))  # b's error is raised here: c never runs
    assert ran == ["a", "b"] and overlap == [False, False]


def test_a_stop_while_waiting_for_a_write_still_writes_the_job_queued_behind_it():
    """Ctrl-C while a finished shot waits for the previous shot's files: both shots' files are still written."""
    ran = []

    def slow():
        time.sleep(0.5)
        ran.append("a")

    def ctrl_c(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, ctrl_c)
    signal.setitimer(signal.ITIMER_REAL, 0.1)
    try:
        with pytest.raises(KeyboardInterrupt):
            with WriteBehind() as writes:
                writes.submit(slow)
                writes.submit(lambda: ran.append("b"))  # Ctrl-C lands while this waits for "a"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert ran == ["a", "b"]
