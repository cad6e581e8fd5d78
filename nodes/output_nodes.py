"""Combine Shots: the story's shots as one IMAGE sequence and, optionally, an mp4 in the output folder."""

from __future__ import annotations

from pathlib import Path

import torch

from storymem_core.errors import ConditioningError
from storymem_core.video import image_batch_to_frames, write_mp4

from . import host
from .previews import video_ui

CATEGORY = "StoryMem/output"
OPTIONAL_SHOTS = 7  # shot_2 .. shot_8; longer stories chain a second Combine Shots through shot_1


def next_video_path(prefix: str) -> Path:
    """`<output>/<prefix>_00001.mp4`, numbered past the files already there (as ComfyUI's save nodes do)."""
    relative = host.output_name(prefix.strip() or "storymem/film", "filename_prefix", "storymem/film",
                                ConditioningError)
    folder = host.output_dir() / relative.parent
    taken = {p.name for p in folder.glob(f"{relative.name}_*.mp4")} if folder.is_dir() else set()
    number = 1
    while f"{relative.name}_{number:05d}.mp4" in taken:
        number += 1
    return folder / f"{relative.name}_{number:05d}.mp4"


class CombineShots:
    DESCRIPTION = "Joins shots in order into one IMAGE sequence and, if asked, writes it as an mp4 at the given fps."

    @classmethod
    def INPUT_TYPES(cls):
        optional = {f"shot_{i}": ("IMAGE", {"tooltip": f"Shot {i} (leave unconnected to stop earlier)."})
                    for i in range(2, OPTIONAL_SHOTS + 2)}
        return {
            "required": {
                "shot_1": ("IMAGE", {"tooltip": "The first shot's frames (or the film of an earlier Combine Shots)."}),
                "fps": ("INT",
                        {"default": 16, "min": 1, "max": 120,
                         "tooltip": "Frames per second of the video (Wan2.2 generates 16)."}),
                "save_video": ("BOOLEAN", {"default": True, "tooltip": "Write an mp4 to the output folder."}),
                "filename_prefix": ("STRING",
                                    {"default": "storymem/film",
                                     "tooltip": "Video path under the output folder, numbered _00001, _00002, ..."}),
            },
            "optional": optional,
        }

    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("film", "video_path")
    OUTPUT_TOOLTIPS = ("All shots' frames in order.", "The mp4 written (empty when not saved).")
    FUNCTION = "combine"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True

    def combine(self, shot_1: torch.Tensor, fps: int, save_video: bool, filename_prefix: str,
                **shots: torch.Tensor) -> dict:
        ordered = [("shot_1", shot_1)] + sorted(shots.items(), key=lambda item: int(item[0].split("_")[1]))
        size = tuple(shot_1.shape[1:3])
        for name, frames in ordered:
            if tuple(frames.shape[1:3]) != size:
                raise ConditioningError(
                    f"{name} is {frames.shape[2]}x{frames.shape[1]} but shot_1 is {size[1]}x{size[0]}: every shot of a "
                    "film must have one size."
                )
        film = torch.cat([frames for _, frames in ordered])
        if not save_video:
            return {"ui": {}, "result": (film, "")}
        path = write_mp4(image_batch_to_frames(film), next_video_path(filename_prefix), fps=fps)
        return {"ui": video_ui(path), "result": (film, str(path))}


NODE_CLASS_MAPPINGS = {"StoryMemCombineShots": CombineShots}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryMemCombineShots": "Combine Shots"}
