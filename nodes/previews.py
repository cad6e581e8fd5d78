"""What the pack's nodes send to the frontend: keyframe thumbnails and shot previews in the host's temp folder.

The js extension (js/storymem.js) draws the `storymem_bank` entries as a strip under the node, and a
shot node's `storymem_shot` / `storymem_video` as its title and a looping preview video (a film's video, of
Combine Shots and the Story Runner, with controls).
Files are named by their pixels' hash, so a keyframe shown by several nodes is written once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F

from storymem_core.files import save_picture, thumbnail
from storymem_core.memory import MemoryBank
from storymem_core.video import write_mp4

from . import host

THUMB_HEIGHT = 96
PREVIEW_HEIGHT = 240  # shot preview videos: small enough to play on every node at once
PREVIEW_FPS = 16
SUBFOLDER = "storymem"
EXCERPT = 60


def _content_name(prefix: str, array, suffix: str) -> str:
    return f"{prefix}_{hashlib.sha1(array.tobytes() + str(array.shape).encode()).hexdigest()[:20]}{suffix}"


def excerpt(prompt: str, length: int = EXCERPT) -> str:
    """The start of a prompt, cut at a word, for titles and messages."""
    text = " ".join(prompt.split())
    return text if len(text) <= length else text[:length].rsplit(" ", 1)[0] + "..."


def _thumbnail(pixels) -> str:
    array = pixels.numpy()
    name = _content_name("keyframe", array, ".jpg")
    path = host.temp_dir() / SUBFOLDER / name
    if not path.exists():
        save_picture(thumbnail(pixels, THUMB_HEIGHT), path, "JPEG", quality=88)
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
    return {"storymem_bank": entries,
            "storymem_bank_limits": [{"size": len(bank), "max_size": bank.max_size, "fixed": bank.fixed}]}


def video_ui(path: Path) -> dict[str, list]:
    """The `ui` part that plays an mp4 of the output folder under the node. It is drawn by the pack's frontend, not
    sent as ComfyUI `images`: the frontend's own video player adds a `video-preview` widget whose value it then
    queues as an input, so the next queue would miss the cache and write the film again."""
    subfolder = path.parent.relative_to(host.output_dir()).as_posix()
    return {"storymem_video": [{"filename": path.name, "subfolder": "" if subfolder == "." else subfolder,
                                "type": "output", "format": "video/mp4"}]}


def _preview_video(frames: torch.Tensor) -> str:
    """A small mp4 of a shot's frames [F, H, W, 3] uint8 in the temp folder; its name."""
    name = _content_name("shot", frames.numpy(), ".mp4")
    path = host.temp_dir() / SUBFOLDER / name
    if not path.exists():
        height, width = frames.shape[1:3]
        if height > PREVIEW_HEIGHT:
            size = (PREVIEW_HEIGHT, max(2, round(width * PREVIEW_HEIGHT / height / 2) * 2))
            small = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=size, mode="bilinear", antialias=True)
            frames = small.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        write_mp4(frames, path, fps=PREVIEW_FPS)
    return name


def shot_ui(number: int, mode: str, cut: bool, prompt: str, frames: torch.Tensor) -> dict[str, list]:
    """The `ui` part of a shot node's result: what the shot is (for its title) and a looping preview video."""
    shot = {"number": number, "mode": mode, "cut": cut, "prompt": prompt, "frames": int(frames.shape[0])}
    video = {"filename": _preview_video(frames), "subfolder": SUBFOLDER, "type": "temp", "format": "video/mp4"}
    return {"storymem_shot": [shot], "storymem_video": [video]}
