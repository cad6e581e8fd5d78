"""The frontend's "StoryMem model files" panel (js/model_files.js) on the server: the files ComfyUI's Missing Models
dialog cannot fetch (storymem_core.downloads), each with its state in this host's model folders, downloads running
in background threads (resumable, checked, renamed into place only when whole), and the raw StoryMem `.pth` files
in loras/ that ComfyUI's own LoRA loaders would silently apply nothing from. Routes are served through host.py."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from storymem_core.downloads import KNOWN_FILES, KnownFile, download, known_file, partial_path
from storymem_core.errors import DownloadError, StoryMemError
from storymem_core.lora import is_peft_lora
from storymem_core.weights.readers import PTH_SUFFIXES

from . import host

log = logging.getLogger(__name__)
ROUTE = "/storymem/model-files"


class DownloadStopped(DownloadError):
    """The user stopped a download; what arrived is kept for the next one to continue."""


@dataclass
class Job:
    """One download's state as the panel shows it."""

    done: int = 0
    total: int = 0
    state: str = "running"  # running | done | failed | stopped
    error: str = ""
    stop: threading.Event = field(default_factory=threading.Event)


_jobs: dict[str, Job] = {}
_jobs_lock = threading.Lock()
_peft_cache: dict[tuple[str, int, int], bool] = {}  # (path, size, mtime) -> raw StoryMem LoRA


def _present(file: KnownFile) -> bool:
    return any((root / file.name).is_file() for root in host.model_folders(file.folder))


def _entry(file: KnownFile) -> dict:
    partial = partial_path(host.model_folders(file.folder)[0] / file.name)
    job = _jobs.get(file.name)
    return {"name": file.name, "folder": file.folder, "url": file.source_url(), "size": file.size,
            "exact_size": file.sha256 is not None, "license": file.license, "page": file.page,
            "present": _present(file), "partial": partial.stat().st_size if partial.is_file() else 0,
            "job": None if job is None else {"done": job.done, "total": job.total, "state": job.state,
                                             "error": job.error}}


def raw_storymem_loras() -> list[str]:
    """The files in loras/ that are StoryMem's released peft `.pth` (checked once per file version)."""
    found = []
    for name in host.model_names("loras"):
        if not name.lower().endswith(PTH_SUFFIXES):
            continue
        path = host.model_path("loras", name)
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in _peft_cache:
            _peft_cache[key] = is_peft_lora(path)
        if _peft_cache[key]:
            found.append(name)
    return found


def listing(_: dict | None = None) -> dict:
    """Every known file with its state, and the raw StoryMem LoRAs a core LoRA loader must not be given."""
    return {"files": [_entry(file) for file in KNOWN_FILES], "raw_storymem_loras": raw_storymem_loras()}


def start(request: dict) -> dict:
    """Start downloading the file `request["name"]` into the first folder of its kind, unless it is there or
    coming; its entry."""
    file = known_file(str(request.get("name", "")))
    with _jobs_lock:
        running = _jobs.get(file.name)
        if not _present(file) and (running is None or running.state != "running"):
            job = _jobs[file.name] = Job()
            threading.Thread(target=_run, args=(file, job), name=f"storymem download {file.filename}",
                             daemon=True).start()
    return _entry(file)


def stop(request: dict) -> dict:
    """Stop the download of `request["name"]`; what arrived stays for the next start to continue."""
    file = known_file(str(request.get("name", "")))
    job = _jobs.get(file.name)
    if job is not None:
        job.stop.set()
    return _entry(file)


def _run(file: KnownFile, job: Job) -> None:
    def progress(done: int, total: int) -> None:
        job.done, job.total = done, total
        if job.stop.is_set():
            raise DownloadStopped(f"the download of {file.filename} was stopped; start it again to continue.")

    folder: Path = host.model_folders(file.folder)[0]
    try:
        path = download(file, folder, progress)
    except DownloadStopped as stopped:
        job.state, job.error = "stopped", str(stopped)
    except StoryMemError as error:
        job.state, job.error = "failed", str(error)
        log.warning("StoryMem: %s", error)
    except Exception as error:  # on its own thread: anything left unhandled would leave the panel at "running"
        job.state, job.error = "failed", f"the download of {file.filename} failed ({error}); see ComfyUI's log."
        log.exception("StoryMem: the download of %s failed", file.filename)
    else:
        job.state = "done"
        log.info("StoryMem: downloaded %s", path)


host.add_json_route("GET", ROUTE, listing)
host.add_json_route("POST", f"{ROUTE}/start", start)
host.add_json_route("POST", f"{ROUTE}/stop", stop)
