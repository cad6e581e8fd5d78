"""A memory bank's folder and picture: the bank itself (`memory.py`) is a value that knows neither.

On disk a bank is a folder: one PNG per keyframe (lossless, unlike the reference's JPEGs) and `bank.json` with the
metadata. Saving fills a staging folder and swaps it into place (`files.atomic_folder`), so a crash leaves the previous
bank or the new one, never half; a story folder takes a shot as finished once its bank is there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image, ImageDraw

from .errors import MemoryBankError, WriteError
from .files import atomic_folder, discard_folder, load_keyframe_image, save_image, write_json
from .memory import Keyframe, MemoryBank
from .safe_files import read_bytes

BANK_FILE = "bank.json"
BANK_FORMAT = "storymem-memory-bank"
BANK_VERSION = 1
GOLD, LABEL_HEIGHT, PAD = (230, 180, 40), 14, 4


def save_bank(bank: MemoryBank, folder: str | os.PathLike) -> Path:
    """Write `bank` to `folder` (PNGs + bank.json), replacing a previous bank there only once complete."""
    folder = Path(folder)
    _check_replaceable(folder)
    try:
        with atomic_folder(folder) as staging:
            entries = []
            for i, keyframe in enumerate(bank.keyframes):
                name = f"keyframe_{i:03d}.png"
                save_image(keyframe.image, staging / name)
                entries.append({"file": name, "shot": keyframe.shot, "frame_index": keyframe.frame_index,
                                "scores": dict(keyframe.scores), "pinned": keyframe.pinned, "source": keyframe.source})
            write_json({"format": BANK_FORMAT, "version": BANK_VERSION, "max_size": bank.max_size, "fixed": bank.fixed,
                        "keyframes": entries}, staging / BANK_FILE)
    except OSError as error:  # a WriteError of one file in it too: its cause says why
        raise _write_error(folder, error.__cause__ or error) from None
    return folder


def load_bank(folder: str | os.PathLike) -> MemoryBank:
    """The bank saved in `folder`; a missing or unreadable file raises MemoryBankError naming it."""
    manifest_path = Path(folder) / BANK_FILE
    try:
        manifest = json.loads(read_bytes(manifest_path, "memory bank file", MemoryBankError))
        entries = manifest["keyframes"]
        max_size, fixed = int(manifest["max_size"]), int(manifest["fixed"])
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise MemoryBankError(f"{manifest_path} does not exist: point to a folder written by save_bank.") from None
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
            keyframes.append(Keyframe(
                load_keyframe_image(Path(folder) / _own_file_name(entry["file"], manifest_path)),
                shot=int(entry["shot"]), frame_index=int(entry["frame_index"]), scores=entry.get("scores", {}),
                pinned=bool(entry.get("pinned", False)), source=entry.get("source", "generated"),
            ))
        except (KeyError, TypeError, ValueError) as error:
            raise MemoryBankError(f"{manifest_path} has an invalid keyframe entry {entry!r} ({error}): save the "
                                  "bank again.") from None
    return MemoryBank(tuple(keyframes), max_size, fixed)


def discard_bank(folder: Path) -> None:
    """Delete a saved bank at once: no half bank that still looks saved is ever left."""
    discard_folder(folder)


def bank_contact_sheet(bank: MemoryBank, thumb_height: int = 128, columns: int = 5) -> Image.Image:
    """A preview: thumbnails in bank order, labelled with shot/frame; fixed or pinned ones framed in gold."""
    if not bank.keyframes:
        sheet = Image.new("RGB", (thumb_height * 2, thumb_height // 2), "black")
        ImageDraw.Draw(sheet).text((PAD, PAD), "empty memory bank", fill="white")
        return sheet
    thumbs = []
    for keyframe in bank.keyframes:
        height, width = keyframe.size
        thumb_width = max(1, round(width * thumb_height / height))
        thumbs.append(Image.fromarray(keyframe.image.numpy()).resize((thumb_width, thumb_height), Image.BILINEAR))
    cell_width = max(t.width for t in thumbs) + 2 * PAD
    cell_height = thumb_height + LABEL_HEIGHT + 2 * PAD
    rows = -(-len(thumbs) // columns)
    sheet = Image.new("RGB", (cell_width * min(columns, len(thumbs)), cell_height * rows), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    protected = bank.protected_indices()
    for i, (keyframe, thumb) in enumerate(zip(bank.keyframes, thumbs)):
        x, y = (i % columns) * cell_width + PAD, (i // columns) * cell_height + PAD
        if i in protected:
            draw.rectangle((x - PAD // 2, y - PAD // 2, x + thumb.width + PAD // 2 - 1,
                            y + thumb_height + PAD // 2 - 1), outline=GOLD, width=PAD // 2)
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


def _write_error(folder: Path, error: BaseException) -> WriteError:
    return WriteError(f"the memory bank could not be written to {folder} ({error}); a bank saved there before is "
                      "unchanged: free disk space or choose another folder, then save again.")


def _check_replaceable(folder: Path) -> None:
    """Saving replaces `folder` whole, so it must be a bank folder or empty: never a folder of other banks or files."""
    if folder.exists() and not folder.is_dir():
        raise MemoryBankError(f"{folder} is a file, not a bank folder: choose another path.")
    if folder.is_dir() and not (folder / BANK_FILE).is_file() and any(folder.iterdir()):
        raise MemoryBankError(f"{folder} holds files but no {BANK_FILE}, so it is not a memory bank that may be "
                              "replaced: choose another folder name.")
