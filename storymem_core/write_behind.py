"""A story's files written behind its sampling: one shot's video, last frames and bank go to disk on a worker thread
while the next shot samples on the GPU, instead of the GPU waiting for the CPU (about a second a shot).

One job at a time, in order: a job runs only if the one before it succeeded, and `submit` raises that one's error, so
a failed write stops the story before anything later is written (`check`, called at every sampling step, stops it as
soon as the write has failed rather than when the next shot ends); leaving the block waits for the last job, also when
the story stops with an error or an interruption, so every shot made before the stop is saved whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

from .timing import WRITES, phase

log = logging.getLogger(__name__)


class WriteBehind:
    """Runs write jobs one at a time on a worker thread (a context manager)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storymem-writes")
        self._pending: Future | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Queue `job` behind the job in flight, then wait for that one (its error is raised here, and `job` is
        skipped). Queued first, so a stop while waiting still writes both."""
        previous = self._pending
        self._pending = self._pool.submit(_unless_failed, previous, job)
        if previous is not None:
            with phase(WRITES):
                previous.result()

    def check(self) -> None:
        """Raise the error of a job in flight that has already failed, without waiting for one still running."""
        if self._pending is not None and self._pending.done():
            self._pending.result()

    def wait(self) -> None:
        """Wait for the job in flight; the story's time spent waiting counts as its writes. A job that failed stays
        in flight, so leaving the block after its error sees (and logs) it again."""
        if self._pending is not None:
            with phase(WRITES):
                self._pending.result()
            self._pending = None

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        try:
            if error is None:
                self.wait()
            else:  # the story's own error is the one to raise; a write failing as well is logged
                try:
                    self.wait()
                except Exception as failure:
                    if failure is not error:  # not the write error `check` or `submit` already raised
                        log.exception("a shot's files could not be written while the story stopped")
        finally:
            self._pool.shutdown(wait=True)


def _unless_failed(previous: Future | None, job: Callable[[], None]) -> None:
    """`job`, unless the job before it failed (it has finished: the one worker runs jobs in order)."""
    if previous is None or previous.exception() is None:
        job()
