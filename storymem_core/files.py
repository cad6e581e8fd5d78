"""Files the engine writes and images it reads: the one place for atomic writes, permissions and image I/O.

Every file is written to a temporary name beside its destination and renamed into place, so an interrupted
write never leaves a half-written shot that a resumed story would take as finished. Images are opened only
after `safe_files.check_file` and a pixel-count check, so a pipe, a device or a decompression bomb is refused
before it is decoded. See docs/architecture.md for where this module sits.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import tempfile
import uuid
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import ConditioningError, MemoryBankError, SettingsError, StoryMemError, WriteError
from .safe_files import check_file

# PIL's own decompression-bomb limit at its default (about 13,000 x 13,000 pixels), whatever a host set it to
MAX_IMAGE_PIXELS = 2 * 89_478_485


@lru_cache(maxsize=None)
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_permissions(path: str | os.PathLike) -> None:
    """Give a temp file or folder the mode open() / mkdir() would have (0644 / 0755 under the usual umask) instead
    of mkstemp's and mkdtemp's private 0600 / 0700, so what a story writes reads the same whichever way it was
    written."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())


def staging_folder(destination: Path) -> Path:
    """A new empty folder beside `destination`, with ordinary permissions, to fill and then rename onto it."""
    staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp"))
    ordinary_permissions(staging)
    return staging


@contextlib.contextmanager
def atomic_folder(folder: Path) -> Iterator[Path]:
    """A staging folder beside `folder` to fill; only if the block succeeds does it replace `folder` whole (a previous
    one is renamed aside first and put back if the swap fails), so a reader sees the old folder or the new, never half.
    OSErrors reach the caller, which says what could not be written."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(folder)
    try:
        yield staging
        if not folder.exists():
            os.replace(staging, folder)
            return
        previous = _aside(folder)
        os.replace(folder, previous)
        try:
            os.replace(staging, folder)
        except OSError:
            os.replace(previous, folder)
            raise
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def discard_folder(folder: Path) -> None:
    """Delete a folder, renamed aside first (atomic), so a crash never leaves half of it looking whole."""
    if folder.is_dir():
        aside = _aside(folder)
        os.replace(folder, aside)
        shutil.rmtree(aside, ignore_errors=True)


def _aside(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")


@lru_cache(maxsize=None)
def scratch_folder(purpose: str) -> Path:
    """This process's private temporary folder for `purpose` (files a library wants on disk), removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix=f"storymem-{purpose}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


WRITE_CHECK_PREFIX = ".storymem-write-check-"  # the probe below, seen for an instant by whoever lists the folder


def writable_folder_check(folder: Path) -> None:
    """Create and remove a folder in `folder`: the only honest test of writability (root ignores modes; /proc and
    read-only mounts refuse). Raises OSError."""
    os.rmdir(tempfile.mkdtemp(dir=folder, prefix=WRITE_CHECK_PREFIX))


@contextlib.contextmanager
def atomic_write_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        ordinary_permissions(temp)
    except OSError as error:
        raise _write_error(path, error) from error
    try:
        yield Path(temp)
        ordinary_permissions(temp)  # again: a writer that makes the file anew (safetensors) leaves it 0600
        os.replace(temp, path)
    except WriteError:
        raise
    except OSError as error:  # disk full, no permission (PyAV's write errors are OSErrors too)
        raise _write_error(path, error) from error
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def write_json(data: dict | list, path: str | os.PathLike) -> Path:
    """`data` as indented JSON (UTF-8, not escaped), written atomically."""
    with atomic_write_path(path) as temp:
        temp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    return Path(path)


def _write_error(path: Path, error: OSError) -> WriteError:
    return WriteError(f"{path} could not be written ({error}); the file there before is unchanged: "
                      "free disk space or choose another folder.")


def check_frames(frames: torch.Tensor, what: str, min_count: int = 0) -> None:
    """Refuse anything but uint8 frames [T, H, W, 3] with T >= min_count, naming `what`."""
    if (not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8 or frames.dim() != 4
            or frames.shape[-1] != 3 or len(frames) < min_count):
        shown = f"{frames.dtype} {tuple(frames.shape)}" if isinstance(frames, torch.Tensor) else type(frames).__name__
        count = f" with T >= {min_count}" if min_count else ""
        raise ConditioningError(f"{what} must be uint8 frames [T, H, W, 3]{count}, got {shown}: "
                                "convert them with the functions in storymem_core.video.")


@contextlib.contextmanager
def open_image(path: str | os.PathLike, error: type[StoryMemError], what: str = "image") -> Iterator[Image.Image]:
    """A PIL image, opened (header only) after `check_file`, refused when its header declares more pixels than any
    real photo has. A missing or unreadable file raises PIL's OSError, for the caller to put in its words."""
    path = check_file(path, "image", error, what)
    bomb = (f"{what} {path} declares more than {MAX_IMAGE_PIXELS // 1_000_000} million pixels, more than any real "
            "photo (a decompression bomb or a damaged header): use a smaller PNG or JPEG.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except Image.DecompressionBombError:
            raise error(bomb) from None
    with image:
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise error(bomb)
        yield image


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file as uint8 [H, W, 3] RGB, turned upright as its EXIF orientation says (phone photos)."""
    try:
        with open_image(path, ConditioningError) as image:
            rgb = ImageOps.exif_transpose(image).convert("RGB")
    except FileNotFoundError:
        raise ConditioningError(f"image {path} does not exist: check the path.") from None
    except OSError as error:
        raise ConditioningError(f"image {path} cannot be read ({error}): use a PNG or JPEG file.") from None
    return torch.from_numpy(np.asarray(rgb).copy())


def load_keyframe_image(path: Path) -> torch.Tensor:
    """A memory bank's keyframe PNG as uint8 [H, W, 3] RGB; a missing or broken one raises MemoryBankError."""
    try:
        with open_image(path, MemoryBankError, "keyframe image") as image:
            return torch.from_numpy(np.asarray(image.convert("RGB")).copy())
    except FileNotFoundError:
        raise MemoryBankError(f"keyframe image {path} is missing: restore it or save the bank again.") from None
    except OSError as error:
        raise MemoryBankError(f"keyframe image {path} cannot be read ({error}): "
                              "restore it or save the bank again.") from None


def fit_image(image: torch.Tensor, size_wh: tuple[int, int]) -> torch.Tensor:
    """uint8 [H, W, 3] center-cropped to the aspect ratio of `size_wh` and resized (bicubic) to it: references of
    any shape then give shots of the story's size, whichever keyframe the memory window keeps first."""
    fitted = ImageOps.fit(Image.fromarray(image.numpy()), tuple(size_wh), Image.BICUBIC)
    return torch.from_numpy(np.asarray(fitted).copy())


def thumbnail(frame: torch.Tensor, height: int) -> Image.Image:
    """A uint8 frame [H, W, 3] scaled to `height` pixels, its aspect kept (previews, contact sheets)."""
    image = Image.fromarray(frame.numpy())
    return image.resize((max(1, round(image.width * height / image.height)), height), Image.BILINEAR)


def save_picture(image: Image.Image, path: str | os.PathLike, image_format: str = "PNG", **options) -> Path:
    """Write a PIL image atomically in `image_format` (PIL's name), with PIL's save `options` (e.g. quality)."""
    with atomic_write_path(path) as temp:
        image.save(temp, format=image_format, **options)
    return Path(path)


def save_image(frame: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write one uint8 frame [H, W, 3] atomically, in the format its suffix names (.png, .jpg, ...). PNGs take zlib's
    fastest level: still lossless, a sixth of the time of PIL's default for a 832x480 frame, about a fifth larger."""
    check_frames(frame[None] if isinstance(frame, torch.Tensor) else frame, f"the image for {path}")
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise SettingsError(f"cannot tell the image format of {path} from its suffix: name it .png or .jpg.")
    options = {"compress_level": 1} if image_format == "PNG" else {}
    return save_picture(Image.fromarray(frame.cpu().numpy()), path, image_format, **options)
