"""What bank-carrying nodes send to the frontend: keyframe thumbnails in the host's temp folder.

The js extension (js/storymem.js) draws the `storymem_bank` entries as a strip under the node.
Thumbnails are named by their pixels' hash, so a keyframe shown by several nodes is written once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image

from storymem_core.memory import MemoryBank
from storymem_core.video import atomic_write_path

from . import host

THUMB_HEIGHT = 96
SUBFOLDER = "storymem"


def _thumbnail(pixels) -> str:
    array = pixels.numpy()
    name = f"keyframe_{hashlib.sha1(array.tobytes() + str(array.shape).encode()).hexdigest()[:20]}.jpg"
    path = host.temp_dir() / SUBFOLDER / name
    if not path.exists():
        image = Image.fromarray(array)
        image = image.resize((max(1, round(image.width * THUMB_HEIGHT / image.height)), THUMB_HEIGHT), Image.BILINEAR)
        with atomic_write_path(path) as temp:
            image.save(temp, format="JPEG", quality=88)
    return name


def bank_ui(bank: MemoryBank) -> dict[str, list]:
    """The `ui` part of a node result: one entry per keyframe plus the bank's size limits."""
    protected = bank.protected_indices()
    entries = []
    for index, keyframe in enumerate(bank.keyframes):
        entries.append({
            "filename": _thumbnail(keyframe.image), "subfolder": SUBFOLDER, "type": "temp",
            "index": index, "shot": keyframe.shot + 1, "frame": keyframe.frame_index, "source": keyframe.source,
            "pinned": keyframe.pinned, "fixed": index in protected and not keyframe.pinned,
        })
    return {"storymem_bank": entries, "storymem_bank_limits": [{"size": len(bank), "max_size": bank.max_size, "fixed": bank.fixed}]}


def video_ui(path: Path) -> dict[str, list]:
    """The `ui` part that makes ComfyUI show an mp4 in the output folder under the node."""
    subfolder = path.parent.relative_to(host.output_dir()).as_posix()
    return {"images": [{"filename": path.name, "subfolder": "" if subfolder == "." else subfolder, "type": "output"}], "animated": [True]}
