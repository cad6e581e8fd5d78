"""The memory bank: the keyframes a new shot is conditioned on, as an immutable value.

ComfyUI caches node outputs and a story can re-roll any shot, so a bank is never changed in place:
`add`, `window`, `pin`, `unpin` and `remove` return a new bank and leave the old one as it was.

Window rule (the reference's sliding window, `bank[:fix] + bank[-(max - fix):]` once the bank holds
more than `max_size`), generalised for artist pins:
- the first `fixed` keyframes and every pinned keyframe are *protected* and always kept;
- the remaining `max_size - protected` slots go to the most recent unprotected keyframes;
- order is preserved.
Edge case `fixed == max_size`: the reference slices `bank[-0:]` (the whole list) there and feeds
duplicated frames to the model; here the bank keeps its first `max_size` keyframes and takes no new
ones (all slots are fixed). `fixed > max_size` is rejected.

On disk a bank is a folder: one PNG per keyframe (lossless, unlike the reference's JPEGs) and
`bank.json` with the metadata; `save` writes a temporary folder and renames it into place.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import InitVar, dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping, Sequence

import torch
from PIL import Image, ImageDraw

from .errors import MemoryBankError, WriteError
from .files import load_keyframe_image, staging_folder
from .safe_files import read_bytes

BANK_FILE = "bank.json"
BANK_FORMAT = "storymem-memory-bank"
BANK_VERSION = 1
SOURCES = ("generated", "reference")


def _checked_image(image: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() != 3 or image.shape[-1] != 3:
        shown = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise MemoryBankError(f"{what} must be a uint8 image [H, W, 3], got {shown}: convert it with "
                              "storymem_core.video.")
    return image.detach().cpu().clone().contiguous()


@dataclass(frozen=True, eq=False)
class Keyframe:
    """One memory image and where it came from; `image` returns a copy, so the stored pixels never change."""

    image: InitVar[torch.Tensor]
    shot: int = -1
    frame_index: int = -1
    scores: Mapping[str, float] = field(default_factory=dict)
    pinned: bool = False
    source: str = "generated"
    _pixels: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self, image: torch.Tensor) -> None:
        if self.source not in SOURCES:
            raise MemoryBankError(f"keyframe source '{self.source}' is unknown: use one of {', '.join(SOURCES)}.")
        object.__setattr__(self, "_pixels", _checked_image(image, "a keyframe image"))
        object.__setattr__(self, "scores", MappingProxyType({str(k): float(v) for k, v in self.scores.items()}))

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) without copying the pixels."""
        return tuple(self._pixels.shape[:2])

    def __reduce__(self):
        # pickle / deepcopy through the constructor: a mappingproxy cannot be pickled
        return (Keyframe, (self._pixels, self.shot, self.frame_index, dict(self.scores), self.pinned, self.source))

    def with_pinned(self, pinned: bool) -> Keyframe:
        return replace(self, image=self._pixels, pinned=pinned)


# `image` is an InitVar (the constructor argument); reading it back gives a copy of the private pixels.
Keyframe.image = property(lambda self: self._pixels.clone(), doc="uint8 [H, W, 3], a copy.")


@dataclass(frozen=True)
class MemoryBank:
    """Keyframes in story order, at most `max_size` after `window()`, the first `fixed` always kept."""

    keyframes: tuple[Keyframe, ...] = ()
    max_size: int = 10
    fixed: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "keyframes", tuple(self.keyframes))
        if not all(isinstance(k, Keyframe) for k in self.keyframes):
            raise MemoryBankError("a memory bank holds Keyframe values only: wrap images with MemoryBank.from_images.")
        if self.max_size < 1:
            raise MemoryBankError(f"max_size = {self.max_size} must be at least 1: use e.g. 10.")
        if not 0 <= self.fixed <= self.max_size:
            raise MemoryBankError(f"fixed = {self.fixed} must be between 0 and max_size = {self.max_size}: lower it.")

    @classmethod
    def from_images(
        cls,
        images: torch.Tensor | Sequence[torch.Tensor],
        source: str = "reference",
        shot: int = -1,
        max_size: int = 10,
        fixed: int = 3,
    ) -> MemoryBank:
        """A bank of the user's images (MR2V references), in the order given, windowed."""
        keyframes = [Keyframe(image, shot=shot, frame_index=i, source=source) for i, image in enumerate(images)]
        return cls((), max_size, fixed).add(keyframes)

    def __len__(self) -> int:
        return len(self.keyframes)

    def protected_indices(self) -> frozenset[int]:
        """Positions the window never drops: the first `fixed` and the pinned ones."""
        return frozenset(range(min(self.fixed, len(self)))) | {i for i, k in enumerate(self.keyframes) if k.pinned}

    def add(self, keyframes: Iterable[Keyframe]) -> MemoryBank:
        """A new bank with `keyframes` appended, then windowed."""
        return replace(self, keyframes=self.keyframes + tuple(keyframes)).window()

    def window(self) -> MemoryBank:
        """A new bank of at most `max_size`: protected keyframes plus the most recent others (module doc)."""
        protected = self.protected_indices()
        if len(protected) > self.max_size:
            raise MemoryBankError(
                f"{len(protected)} keyframes are fixed or pinned but the bank holds at most {self.max_size}: "
                "unpin some or raise max_size."
            )
        if len(self) <= self.max_size:
            return replace(self)
        others = [i for i in range(len(self)) if i not in protected]
        recent = others[len(others) - (self.max_size - len(protected)) :]
        kept = sorted(protected.union(recent))
        return replace(self, keyframes=tuple(self.keyframes[i] for i in kept))

    def _position(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise MemoryBankError(f"keyframe {index} does not exist: the bank holds {len(self)} (0 to "
                                  f"{len(self) - 1}).")
        return index % len(self)

    def _with(self, index: int, keyframe: Keyframe | None) -> MemoryBank:
        position = self._position(index)
        middle = () if keyframe is None else (keyframe,)
        return replace(self, keyframes=self.keyframes[:position] + middle + self.keyframes[position + 1 :])

    def pin(self, index: int) -> MemoryBank:
        """A new bank where keyframe `index` is always kept by the window."""
        return self._with(index, self.keyframes[self._position(index)].with_pinned(True))

    def unpin(self, index: int) -> MemoryBank:
        return self._with(index, self.keyframes[self._position(index)].with_pinned(False))

    def remove(self, index: int) -> MemoryBank:
        """A new bank without keyframe `index` (later keyframes move up, into fixed slots too)."""
        return self._with(index, None)

    def image_list(self) -> list[torch.Tensor]:
        """Copies of the images, uint8 [H, W, 3] each (sizes may differ, e.g. reference images)."""
        return [k.image for k in self.keyframes]

    def images(self) -> torch.Tensor:
        """The images stacked, uint8 [M, H, W, 3]; an empty bank gives [0, 0, 0, 3]."""
        if not self.keyframes:
            return torch.empty(0, 0, 0, 3, dtype=torch.uint8)
        sizes = {k.size for k in self.keyframes}
        if len(sizes) > 1:
            raise MemoryBankError(f"the bank's images have {len(sizes)} different sizes and cannot be stacked: use "
                                  "image_list().")
        return torch.stack([k._pixels for k in self.keyframes])

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the bank to `folder` (PNGs + bank.json), replacing a previous bank there only once complete."""
        folder = Path(folder)
        _check_replaceable(folder)
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging = staging_folder(folder)
        except OSError as error:
            raise _write_error(folder, error) from None
        try:
            entries = []
            for i, keyframe in enumerate(self.keyframes):
                name = f"keyframe_{i:03d}.png"
                Image.fromarray(keyframe._pixels.numpy()).save(staging / name, format="PNG")
                entries.append(
                    {"file": name, "shot": keyframe.shot, "frame_index": keyframe.frame_index,
                     "scores": dict(keyframe.scores), "pinned": keyframe.pinned, "source": keyframe.source}
                )
            manifest = {"format": BANK_FORMAT, "version": BANK_VERSION, "max_size": self.max_size, "fixed": self.fixed,
                        "keyframes": entries}
            (staging / BANK_FILE).write_text(json.dumps(manifest, indent=1))
            _swap_into_place(staging, folder)
        except OSError as error:
            raise _write_error(folder, error) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> MemoryBank:
        """The bank saved in `folder`; a missing or unreadable file raises MemoryBankError naming it."""
        manifest_path = Path(folder) / BANK_FILE
        try:
            manifest = json.loads(read_bytes(manifest_path, "memory bank file", MemoryBankError))
            entries = manifest["keyframes"]
            max_size, fixed = int(manifest["max_size"]), int(manifest["fixed"])
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise MemoryBankError(
                f"{manifest_path} does not exist: point to a folder written by MemoryBank.save.") from None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise MemoryBankError(
                f"{manifest_path} is not a valid memory bank file ({error}): save the bank again.") from None
        if not isinstance(entries, list):
            raise MemoryBankError(f"{manifest_path} is not a valid memory bank file (keyframes is not a list): save "
                                  "the bank again.")
        if len(entries) > max_size:
            raise MemoryBankError(f"{manifest_path} lists {len(entries)} keyframes but max_size is {max_size}: raise "
                                  "max_size or remove keyframes.")
        keyframes = []
        for entry in entries:
            try:
                keyframes.append(
                    Keyframe(
                        load_keyframe_image(Path(folder) / _own_file_name(entry["file"], manifest_path)),
                        shot=int(entry["shot"]), frame_index=int(entry["frame_index"]), scores=entry.get("scores", {}),
                        pinned=bool(entry.get("pinned", False)), source=entry.get("source", "generated"),
                    )
                )
            except (KeyError, TypeError, ValueError) as error:
                raise MemoryBankError(f"{manifest_path} has an invalid keyframe entry {entry!r} ({error}): save the "
                                      "bank again.") from None
        return cls(tuple(keyframes), max_size, fixed)

    def contact_sheet(self, thumb_height: int = 128, columns: int = 5) -> Image.Image:
        """A preview: thumbnails in bank order, labelled with shot/frame; fixed or pinned ones framed in gold."""
        label_height, pad = 14, 4
        if not self.keyframes:
            sheet = Image.new("RGB", (thumb_height * 2, thumb_height // 2), "black")
            ImageDraw.Draw(sheet).text((pad, pad), "empty memory bank", fill="white")
            return sheet
        thumbs = []
        for keyframe in self.keyframes:
            height, width = keyframe.size
            thumb_width = max(1, round(width * thumb_height / height))
            thumbs.append(Image.fromarray(keyframe._pixels.numpy()).resize((thumb_width, thumb_height), Image.BILINEAR))
        cell_width = max(t.width for t in thumbs) + 2 * pad
        cell_height = thumb_height + label_height + 2 * pad
        rows = -(-len(thumbs) // columns)
        sheet = Image.new("RGB", (cell_width * min(columns, len(thumbs)), cell_height * rows), (24, 24, 24))
        draw = ImageDraw.Draw(sheet)
        protected = self.protected_indices()
        for i, (keyframe, thumb) in enumerate(zip(self.keyframes, thumbs)):
            x, y = (i % columns) * cell_width + pad, (i // columns) * cell_height + pad
            if i in protected:
                draw.rectangle((x - pad // 2, y - pad // 2, x + thumb.width + pad // 2 - 1,
                                y + thumb_height + pad // 2 - 1), outline=(230, 180, 40), width=pad // 2)
            sheet.paste(thumb, (x, y))
            origin = "ref" if keyframe.source == "reference" else f"shot {keyframe.shot + 1} f{keyframe.frame_index}"
            tag = " pin" if keyframe.pinned else ""
            draw.text((x, y + thumb_height + 1), f"{i}: {origin}{tag}", fill="white")
        return sheet


def _own_file_name(name: str, manifest_path: Path) -> str:
    """A keyframe file named in bank.json must lie in the bank's own folder (a shared bank may not read elsewhere)."""
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise MemoryBankError(f"{manifest_path} names the keyframe file {name!r}, which is not a file in the bank's "
                              "folder: save the bank again.")
    return name


def _write_error(folder: Path, error: OSError) -> WriteError:
    return WriteError(f"the memory bank could not be written to {folder} ({error}); a bank saved there before is "
                      "unchanged: free disk space or choose another folder, then save again.")


def _check_replaceable(folder: Path) -> None:
    """Saving replaces `folder` whole, so it must be a bank folder or empty: never a folder of other banks or files."""
    if folder.exists() and not folder.is_dir():
        raise MemoryBankError(f"{folder} is a file, not a bank folder: choose another path.")
    if folder.is_dir() and not (folder / BANK_FILE).is_file() and any(folder.iterdir()):
        raise MemoryBankError(f"{folder} holds files but no {BANK_FILE}, so it is not a memory bank that may be "
                              "replaced: choose another folder name.")


def discard_bank(folder: Path) -> None:
    """Delete a saved bank: renamed aside first (atomic), so a crash never leaves half a bank that still looks saved."""
    if folder.is_dir():
        aside = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(folder, aside)
        shutil.rmtree(aside, ignore_errors=True)


def _swap_into_place(staging: Path, folder: Path) -> None:
    """Rename the finished `staging` folder to `folder`, moving a previous bank aside first (rename is atomic)."""
    if not folder.exists():
        os.replace(staging, folder)
        return
    previous = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(folder, previous)
    try:
        os.replace(staging, folder)
    except OSError:
        os.replace(previous, folder)  # put the previous bank back
        raise
    shutil.rmtree(previous, ignore_errors=True)
