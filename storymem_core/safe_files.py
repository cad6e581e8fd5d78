"""Files a user names, opened so that nothing hangs or fills memory.

A named pipe blocks its reader forever, a device such as /dev/zero never ends, a symbolic-link loop leads
nowhere, and a file larger than any real one of its kind (a sparse 300 GB "story script") would be read whole:
each is refused with one sentence before a reader touches it. A missing path or a folder passes: the caller
knows what belongs there and says so. Images are opened through files.open_image, which also checks the pixel
count their header declares.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from .errors import StoryMemError

MIB = 1 << 20
GIB = 1 << 30
# the largest file of each kind, with a wide margin over the largest real one
SIZE_LIMITS = {
    "story script": 16 * MIB,  # ST-Bench scripts are a few KB
    "memory bank file": 16 * MIB,  # bank.json: a few hundred bytes per keyframe
    "shard index": 64 * MIB,  # Wan2.2's diffusion_pytorch_model.safetensors.index.json: about 100 KB
    "tokenizer": 256 * MIB,  # umT5's spiece.model: 4.5 MB
    "image": 2 * GIB,
    "video": 64 * GIB,
    "model file": 256 * GIB,  # the largest real one, a Wan2.2 A14B expert in fp32, is 57 GB
}
_SPECIAL = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
            (stat.S_ISSOCK, "a socket"))
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # not on Windows, which has no named pipes in the file system


def _size(n: int) -> str:
    return f"{n / GIB:.1f} GB" if n >= GIB else f"{n / MIB:.1f} MB"


def _check_stat(info: os.stat_result, path: Path, kind: str, error: type[StoryMemError], what: str) -> None:
    for is_special, name in _SPECIAL:
        if is_special(info.st_mode):
            raise error(f"{what} {path} is {name}, not a regular file: give the path of the file itself.")
    limit = SIZE_LIMITS[kind]
    if stat.S_ISREG(info.st_mode) and info.st_size > limit:
        raise error(f"{what} {path} is {_size(info.st_size)}, larger than any real {kind} (at most {_size(limit)}): "
                    "check that this is the right file.")


def check_file(path: str | os.PathLike, kind: str, error: type[StoryMemError], what: str | None = None) -> Path:
    """`path`, once a reader may open it: refused when it is a pipe, device, socket or link loop, or larger than
    any real file of `kind` (a key of SIZE_LIMITS). `what` names it in the message (default: `kind`)."""
    path, what = Path(path), what or kind
    try:
        info = os.stat(path)
    except OSError as failure:
        if failure.errno == errno.ELOOP:
            raise error(f"{what} {path} is a symbolic link that loops back on itself: "
                        "point the link at the real file.") from None
        if failure.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
            return path  # missing: the caller names what belongs there
        raise unopenable(error, what, path, failure) from None
    _check_stat(info, path, kind, error, what)
    return path


def unopenable(error: type[StoryMemError], what: str, path: Path, failure: OSError) -> StoryMemError:
    """The one sentence for a file that is there but cannot be opened (permissions, most often)."""
    return error(f"{what} {path} cannot be opened ({failure.strerror or failure}): check its permissions.")


def read_bytes(path: str | os.PathLike, kind: str, error: type[StoryMemError], what: str | None = None) -> bytes:
    """The whole file, checked as `check_file` does, and never more than its kind's limit even if it grows.

    A missing file raises FileNotFoundError and a folder IsADirectoryError, for the caller to put in its words."""
    path = check_file(path, kind, error, what)
    try:
        descriptor = os.open(path, os.O_RDONLY | _O_NONBLOCK)  # a pipe swapped in after the check still cannot block
    except PermissionError as failure:
        raise unopenable(error, what or kind, path, failure) from None
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        _check_stat(info, path, kind, error, what or kind)
        data = handle.read(SIZE_LIMITS[kind] + 1)
    if len(data) > SIZE_LIMITS[kind]:
        raise error(f"{what or kind} {path} grew past {_size(SIZE_LIMITS[kind])} while it was read: "
                    "check that this is the right file.")
    return data


def files_under(folder: str | os.PathLike) -> Iterator[Path]:
    """Every entry below `folder` that is not a folder, through symbolically linked subfolders as ComfyUI's
    folder_paths lists models (os.walk with followlinks), each real folder once, so a link loop ends."""
    seen = set()
    for root, folders, names in os.walk(folder, followlinks=True):
        try:
            info = os.stat(root)
        except OSError:
            folders[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:
            folders[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        yield from (Path(root) / name for name in names)
