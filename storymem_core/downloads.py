"""Model files the pack fetches itself: the files ComfyUI's Missing Models dialog cannot (the StoryMem LoRA `.pth`
pair and the GGUF experts, whose suffixes it refuses, and the LAION aesthetic head, which is not on Hugging Face or
Civitai).

`KNOWN_FILES` says where each comes from, how large it is and under which license; `download` fetches one into a
models folder: resumable (HTTP Range on a hidden `.part` file beside the destination), checked (the length the
server announced, the published size and sha256 where they are known, and a safe read of the tensors as the kind of
file expected) and atomic (renamed onto its name only once checked, so no half file is ever taken for a model).
Hugging Face URLs follow `HF_ENDPOINT`, the mirror setting huggingface_hub users already have. See
docs/architecture.md.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .choices import Noise
from .errors import CheckpointError, DownloadError
from .files import ordinary_permissions
from .weights.checkpoint import Checkpoint
from .weights.kinds import AESTHETIC_HEAD, LORA
from .weights.readers import read_pth

HF = "https://huggingface.co"
HF_ENDPOINT_ENV = "HF_ENDPOINT"
CHUNK = 1 << 20
TIMEOUT_S = 60
STORYMEM_PAGE = f"{HF}/Kevin-thu/StoryMem"
STORYMEM_LICENSE = "CC BY-NC 4.0 (non-commercial)"
# 40 blocks x 10 adapted linears at rank 128 in bf16 (about 613 M parameters); the hub gives the exact length
STORYMEM_LORA_BYTES = 1_227_000_000
GGUF_PAGE = f"{HF}/QuantStack/Wan2.2-I2V-A14B-GGUF"
GGUF_Q4_K_M_BYTES = 9_650_000_000  # each Wan2.2 I2V A14B expert at Q4_K_M; the hub gives the exact length
GGUF = "gguf"  # a KnownFile kind: a GGUF file (ComfyUI-GGUF's loader reads it; the pack checks its header)
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class KnownFile:
    """A file the pack can fetch: `name` inside the ComfyUI model `folder` (as the shipped workflows name it)."""

    name: str
    folder: str
    url: str
    size: int  # bytes: exact when sha256 is given, else about (the server's Content-Length is checked instead)
    license: str
    page: str  # where the file and its license are published
    kind: str  # what its tensors must read as (storymem_core.weights.kinds), or GGUF
    sha256: str | None = None

    @property
    def filename(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    def source_url(self) -> str:
        """The URL to fetch, on the Hugging Face mirror HF_ENDPOINT names when it is set."""
        endpoint = os.environ.get(HF_ENDPOINT_ENV, "").rstrip("/")
        if endpoint and self.url.startswith(HF + "/"):
            return endpoint + self.url[len(HF):]
        return self.url


def _storymem_lora(variant: str, expert: str) -> KnownFile:
    name = f"StoryMem/Wan2.2-{variant}-A14B/backbone_{expert}_noise.pth"
    return KnownFile(name, "loras", f"{STORYMEM_PAGE}/resolve/main/{name.removeprefix('StoryMem/')}",
                     STORYMEM_LORA_BYTES, STORYMEM_LICENSE, STORYMEM_PAGE, LORA)


def _gguf_expert(expert: str) -> KnownFile:
    name = f"Wan2.2-I2V-A14B-{expert}Noise-Q4_K_M.gguf"
    return KnownFile(name, "diffusion_models", f"{GGUF_PAGE}/resolve/main/{expert}Noise/{name}", GGUF_Q4_K_M_BYTES,
                     "Apache-2.0", GGUF_PAGE, GGUF)


KNOWN_FILES: tuple[KnownFile, ...] = (
    *(_storymem_lora(variant, expert) for variant in ("MI2V", "MM2V") for expert in Noise),
    *(_gguf_expert(expert) for expert in ("High", "Low")),
    KnownFile("sa_0_4_vit_b_32_linear.pth", "clip_vision",
              "https://github.com/LAION-AI/aesthetic-predictor/raw/main/sa_0_4_vit_b_32_linear.pth", 3047, "MIT",
              "https://github.com/LAION-AI/aesthetic-predictor", AESTHETIC_HEAD,
              "c7b14cead230694acc7b9447974d3cad78003c72da032e402a303b6c2429e85f"),
)


def known_file(name: str) -> KnownFile:
    """The known file called `name`: its path in its folder, as `download --list` shows it (with the folder), or
    without the `StoryMem/` folder."""
    for file in KNOWN_FILES:
        if name in (file.name, file.name.removeprefix("StoryMem/"), f"{file.folder}/{file.name}"):
            return file
    names = ", ".join(f"{file.folder}/{file.name}" for file in KNOWN_FILES)
    raise DownloadError(f"'{name}' is not a file this pack downloads: name one of {names}.")


def partial_path(destination: Path) -> Path:
    """Where an unfinished download of `destination` grows: hidden, and with a suffix no model list shows."""
    return destination.with_name(f".{destination.name}.part")


def shown_size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


Progress = Callable[[int, int], None]  # (bytes on disk, total); may raise to stop (the partial file is kept)


def download(file: KnownFile, folder: Path, on_progress: Progress | None = None) -> Path:
    """Fetch `file` into `folder` / its name, resuming a partial file left there, and return its path.

    A file already under the name is kept as it is. What arrives is checked before it is renamed into place; a
    broken connection keeps the partial file for the next call to continue, a wrong file is deleted."""
    destination = folder / file.name
    if destination.is_file():
        return destination
    if destination.exists():  # before gigabytes arrive that could not be put in place
        raise DownloadError(f"{destination} exists but is not a file: move it away, then download {file.filename} "
                            "again.")
    partial = partial_path(destination)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        total = _fetch(file, partial, on_progress or (lambda done, total: None))
    except (OSError, http.client.HTTPException) as error:  # refused, timed out, cut off: all resumable
        kept = f"what arrived is kept in {partial}: " if partial.is_file() else ""
        raise DownloadError(f"{file.filename} could not be downloaded from {file.source_url()} ({error}); {kept}run "
                            "the download again to continue.") from None
    try:
        _check(file, partial, total)
        os.replace(partial, destination)
    except OSError as error:  # unreadable, or the name cannot be written: what arrived stays for the next try
        raise DownloadError(f"{file.filename} arrived but could not be checked and put in place as {destination} "
                            f"({error}): make that folder writable, then run the download again (it keeps "
                            f"{partial}).") from None
    return destination


def _fetch(file: KnownFile, partial: Path, on_progress: Progress) -> int:
    """Bring `partial` to the whole file; its total length."""
    have = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(file.source_url(), headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing after `have`: the partial file is already whole, or too long
            total = _range_total(error.headers.get("Content-Range", ""))
            if total == have:
                return total
            partial.unlink()
            return _fetch(file, partial, on_progress)
        raise DownloadError(f"{file.source_url()} answered HTTP {error.code} ({error.reason}): check the address "
                            f"on {file.page}, or download it by hand into the {file.folder} folder.") from None
    with response:
        if response.status == 206:
            start = _range_start(response.headers.get("Content-Range", ""))
            if start != have:
                raise DownloadError(f"{file.source_url()} sent bytes from {start} when {have} were asked for: run "
                                    "the download again.")
            total = _range_total(response.headers.get("Content-Range", ""))
        else:  # the server ignored the range: start over
            have = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if total is None:
            raise DownloadError(f"{file.source_url()} did not say how long {file.filename} is, so a whole file "
                                "cannot be told from a cut one: try again later or download it by hand.")
        if file.sha256 is not None and total != file.size:
            raise DownloadError(f"{file.source_url()} offers {total} bytes but {file.filename} is {file.size}: it is "
                                f"not the published file; check {file.page}.")
        with open(partial, "ab" if have else "wb") as handle:
            ordinary_permissions(partial)
            on_progress(have, total)
            while chunk := response.read(CHUNK):
                handle.write(chunk)
                have += len(chunk)
                on_progress(have, total)
    if have != total:
        raise ConnectionError(f"the connection closed after {have} of {total} bytes")
    return total


def _range_start(content_range: str) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", content_range.strip())
    return int(match[1]) if match else None


def _range_total(content_range: str) -> int | None:
    match = re.fullmatch(r"bytes (?:\d+-\d+|\*)/(\d+)", content_range.strip())
    return int(match[1]) if match else None


def _check(file: KnownFile, partial: Path, total: int) -> None:
    """Delete `partial` and raise unless it is the whole published file and reads as the kind expected."""
    problem = None
    if partial.stat().st_size != total:
        problem = f"is {partial.stat().st_size} bytes where the server announced {total}"
    elif file.sha256 is not None and _sha256(partial) != file.sha256:
        problem = "does not have the published sha256"
    elif file.kind == GGUF:  # its tensors are read by ComfyUI-GGUF's loader, not by the pack
        with open(partial, "rb") as handle:
            if handle.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
                problem = "is not a GGUF file"
    else:
        try:
            Checkpoint(read_pth(partial), kind=file.kind).raise_problems()
        except CheckpointError as error:
            problem = f"is not readable as the file expected ({error})"
    if problem is not None:
        partial.unlink()
        raise DownloadError(f"what {file.source_url()} sent {problem}, so it was deleted and nothing was put in "
                            f"the {file.folder} folder: try again, or download it from {file.page} by hand.")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()
