"""A story's files written behind its sampling: one shot's video, last frames and bank go to disk on a worker thread
while the next shot samples on the GPU, instead of the GPU waiting for the CPU (about a second a shot).

One job at a time, in order: `submit` first waits for the job before it and raises its error there, so a failed
write stops the story before anything later is written; leaving the block waits for the last job, also when the
story stops with an error, so every shot made before a stop or an interruption is saved whole.
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
        """Run `job` once the previous job has finished (its error is raised here, and `job` does not run)."""
        self.wait()
        self._pending = self._pool.submit(job)

    def wait(self) -> None:
        """Wait for the job in flight; the story's time spent waiting counts as its writes."""
        pending, self._pending = self._pending, None
        if pending is not None:
            with phase(WRITES):
                pending.result()

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
                except Exception:
                    log.exception("a shot's files could not be written while the story stopped")
        finally:
            self._pool.shutdown(wait=True)
