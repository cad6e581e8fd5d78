"""One writer per story folder: a story run holds its folder exclusively while it writes.

Two runs on one folder (two terminals, or the CLI while a Story Runner node writes there) would each make every shot
and leave a film of both. The lock is the operating system's (flock on POSIX, msvcrt on Windows) on a file in the
folder, so it ends with its process however that process ends (SIGKILL, power loss): a dead holder never blocks the
folder. The file also says who holds it, for the sentence the second writer gets.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from .errors import FolderBusy

LOCK_FILE = ".storymem-writer.lock"
_held: dict[Path, int] = {}  # folders this process holds -> how many nested holds
_held_guard = threading.Lock()

try:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
except ImportError:  # Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True


@contextlib.contextmanager
def one_writer(folder: str | os.PathLike) -> Iterator[None]:
    """Hold `folder` (created if missing) as its only writer for the block; another process holding it is refused
    at once with who holds it and since when. Nested holds in one process (planning, then the story loop) share it."""
    folder = Path(folder).expanduser().resolve()
    with _held_guard:
        if folder in _held:
            _held[folder] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                _held[folder] -= 1
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if not _try_lock(fd):
            raise FolderBusy(f"the story folder {folder} is being written by another story run ({_holder(folder)}): "
                             "wait for it to finish or stop it, or choose another folder; two runs on one folder "
                             "would mix their shots.")
        _describe_holder(fd)
        with _held_guard:
            _held[folder] = 1
        try:
            yield
        finally:
            with _held_guard:
                del _held[folder]
            if created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
                _remove_unused(folder)
    finally:
        os.close(fd)  # releases the lock


def _remove_unused(folder: Path) -> None:
    """A folder this run created and left with nothing but its lock (it failed before writing) goes again: a refused
    run leaves no trace."""
    try:
        (folder / LOCK_FILE).unlink()
        folder.rmdir()
    except OSError:
        pass  # another run started writing in it meanwhile: it is theirs


def _describe_holder(fd: int) -> None:
    """Write who holds the lock into the locked file (the file stays: removing it would race a new writer)."""
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(sys.argv[:3])[:200]}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(holder).encode())


def _holder(folder: Path) -> str:
    """Who holds `folder`, as its lock file says; a holder that has not written it yet is just starting."""
    try:
        holder = json.loads((folder / LOCK_FILE).read_text(encoding="utf-8"))
        return (f"process {int(holder['pid'])} on {holder['host']}, since {holder['since']}, "
                f"{str(holder['command'])!r}")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that is just starting"
