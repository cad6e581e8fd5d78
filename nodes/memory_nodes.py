"""Memory bank nodes: create (empty, from reference images = MR2V, from a saved folder), save, edit, preview,
and add a shot's keyframes. Every node returns a new bank; the bank it was given stays as it was.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from storymem_core.bank_files import BANK_FILE, bank_contact_sheet, load_bank, save_bank
from storymem_core.errors import MemoryBankError
from storymem_core.files import fit_image
from storymem_core.keyframes import select_keyframes
from storymem_core.memory import Keyframe, MemoryBank
from storymem_core.video import frames_to_image_batch, image_batch_to_frames

from . import host
from .inputs import memory_size, shot_number, size
from .previews import bank_ui
from .types import BANK, KEYFRAME_ENCODER, KeyframeModel

CATEGORY = "StoryMem/memory"
BANK_TOOLTIP = "The memory bank: keyframes the next shot is conditioned on."
EDIT_ACTIONS = ("pin", "unpin", "remove")


def with_bank_ui(bank: MemoryBank, *result) -> dict:
    """A node result whose bank the frontend shows as thumbnails."""
    return {"ui": bank_ui(bank), "result": result}


def next_shot(bank: MemoryBank) -> int:
    """0-based index of the shot after the newest generated keyframe (0 for a bank of references only)."""
    return 1 + max((k.shot for k in bank.keyframes if k.source == "generated"), default=-1)


def add_shot_keyframes(frames: torch.Tensor, bank: MemoryBank, keyframe_model: KeyframeModel,
                       shot_index: int | None, ablations: tuple[str, ...] = ()) -> MemoryBank:
    """The bank after a shot: its semantic keyframes (deduplicated against `bank`) appended, then windowed."""
    shot = next_shot(bank) if shot_index is None else shot_index
    keyframes = select_keyframes(frames, keyframe_model.encoder, bank=bank, scorer=keyframe_model.scorer, shot=shot,
                                 ablations=ablations)
    return bank.add(keyframes)


def bank_names() -> list[str]:
    """Saved banks in the storymem folders: each folder holding a bank.json."""
    return sorted({str(Path(name).parent.as_posix()) for name in host.storymem_names() if Path(name).name == BANK_FILE})


class EmptyBank:
    DESCRIPTION = "An empty memory bank for a story whose first shot comes from text (First Shot, T2V)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": memory_size()}

    RETURN_TYPES = (BANK,)
    RETURN_NAMES = ("memory",)
    OUTPUT_TOOLTIPS = (BANK_TOOLTIP,)
    FUNCTION = "create"
    CATEGORY = CATEGORY

    def create(self, max_size: int, fixed: int) -> dict:
        bank = MemoryBank((), max_size, fixed)
        return with_bank_ui(bank, bank)


class BankFromImages:
    DESCRIPTION = ("A memory bank of reference images (MR2V: characters, places), center-cropped to the shot size; "
                   "append to a bank to mix sizes.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Reference images, in the order they should enter the memory."}),
                "width": size("width", 832),
                "height": size("height", 480),
                **memory_size(),
            },
            "optional": {"memory": (BANK,
                                    {"tooltip": "A bank to append the references to (its keyframes come first)."})},
        }

    RETURN_TYPES = (BANK,)
    RETURN_NAMES = ("memory",)
    OUTPUT_TOOLTIPS = (BANK_TOOLTIP,)
    FUNCTION = "create"
    CATEGORY = CATEGORY

    def create(self, images: torch.Tensor, width: int, height: int, max_size: int, fixed: int,
               memory: MemoryBank | None = None) -> dict:
        references = []
        for i, frame in enumerate(image_batch_to_frames(images)):
            references.append(Keyframe(fit_image(frame, (width, height)), frame_index=i, source="reference"))
        start = () if memory is None else memory.keyframes
        bank = MemoryBank(start, max_size, fixed).add(references)
        return with_bank_ui(bank, bank)


class LoadBank:
    DESCRIPTION = "A memory bank saved earlier (Save Memory Bank or the story runner), from the storymem folders."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"bank": (bank_names(),
                                      {"tooltip": "Saved bank folder (output/storymem/... or models/storymem/...)."})}}

    RETURN_TYPES = (BANK,)
    RETURN_NAMES = ("memory",)
    OUTPUT_TOOLTIPS = (BANK_TOOLTIP,)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @classmethod
    def IS_CHANGED(cls, bank: str):
        manifest = host.storymem_path(f"{bank}/{BANK_FILE}", MemoryBankError)
        return f"{manifest}:{manifest.stat().st_mtime_ns}"

    def load(self, bank: str) -> dict:
        loaded = load_bank(host.storymem_path(bank, MemoryBankError))
        return with_bank_ui(loaded, loaded)


class SaveBank:
    DESCRIPTION = ("Saves the memory bank (PNG keyframes + bank.json) to output/storymem/<name>, to reuse it in "
                   "another story or session.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "memory": (BANK, {"tooltip": BANK_TOOLTIP}),
            "name": ("STRING",
                     {"default": "banks/my_story",
                      "tooltip": "Folder under output/storymem; an existing bank there is replaced."}),
        }}

    RETURN_TYPES = (BANK,)
    RETURN_NAMES = ("memory",)
    OUTPUT_TOOLTIPS = ("The same bank, to go on with.",)
    FUNCTION = "save"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True

    def save(self, memory: MemoryBank, name: str) -> dict:
        if not name.strip():
            raise MemoryBankError("bank name is empty: give a relative folder name such as banks/my_story.")
        save_bank(memory, host.save_dir() / host.output_name(name, "bank name", "banks/my_story", MemoryBankError))
        return with_bank_ui(memory, memory)


class EditBank:
    DESCRIPTION = "Pin a keyframe (the window never drops it), unpin it, or remove it; indices as shown under the bank."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "memory": (BANK, {"tooltip": BANK_TOOLTIP}),
            "action": (list(EDIT_ACTIONS),
                       {"default": "pin",
                        "tooltip": "pin: always keep; unpin: back to the window rule; remove: drop it."}),
            "index": ("INT",
                      {"default": 0, "min": -64, "max": 63,
                       "tooltip": "Keyframe index from 0 (negative counts from the newest)."}),
        }}

    RETURN_TYPES = (BANK,)
    RETURN_NAMES = ("memory",)
    OUTPUT_TOOLTIPS = ("The edited bank (a new one; the input is unchanged).",)
    FUNCTION = "edit"
    CATEGORY = CATEGORY

    def edit(self, memory: MemoryBank, action: str, index: int) -> dict:
        edited = getattr(memory, action)(index)
        return with_bank_ui(edited, edited)


class PreviewBank:
    DESCRIPTION = ("The bank's keyframes as IMAGEs (resized to the first keyframe's size) and as one labelled contact "
                   "sheet.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"memory": (BANK, {"tooltip": BANK_TOOLTIP})}}

    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("keyframes", "contact_sheet")
    OUTPUT_TOOLTIPS = ("One image per keyframe (an empty bank gives one black image).",
                       "All keyframes on one labelled sheet.")
    FUNCTION = "preview"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True

    def preview(self, memory: MemoryBank) -> dict:
        sheet = torch.from_numpy(np.asarray(bank_contact_sheet(memory)).copy())[None]
        images = memory.image_list()
        if not images:
            keyframes = torch.zeros(1, 64, 64, 3)
        else:
            height, width = images[0].shape[:2]
            resized = [np.asarray(Image.fromarray(image.numpy()).resize((width, height), Image.BICUBIC))
                       for image in images]
            keyframes = frames_to_image_batch(torch.from_numpy(np.stack(resized)))
        return with_bank_ui(memory, keyframes, frames_to_image_batch(sheet))


class SelectKeyframes:
    DESCRIPTION = ("Adds a shot's keyframes to the memory: CLIP-similarity selection (up to 3), quality filter, dedup "
                   "against the bank.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frames": ("IMAGE", {"tooltip": "The frames of one finished shot."}),
                "memory": (BANK, {"tooltip": "The bank before this shot."}),
                "keyframe_encoder": (KEYFRAME_ENCODER, {"tooltip": "From Load Keyframe Encoder."}),
            },
            "optional": {"shot_number": shot_number()},
        }

    RETURN_TYPES = (BANK,)
    RETURN_NAMES = ("memory",)
    OUTPUT_TOOLTIPS = ("The bank after this shot.",)
    FUNCTION = "select"
    CATEGORY = CATEGORY

    def select(self, frames: torch.Tensor, memory: MemoryBank, keyframe_encoder: KeyframeModel,
               shot_number: int | None = None) -> dict:
        shot_index = None if shot_number is None else shot_number - 1
        bank = add_shot_keyframes(image_batch_to_frames(frames), memory, keyframe_encoder, shot_index)
        return with_bank_ui(bank, bank)


NODE_CLASS_MAPPINGS = {
    "StoryMemEmptyBank": EmptyBank,
    "StoryMemBankFromImages": BankFromImages,
    "StoryMemLoadBank": LoadBank,
    "StoryMemSaveBank": SaveBank,
    "StoryMemEditBank": EditBank,
    "StoryMemPreviewBank": PreviewBank,
    "StoryMemSelectKeyframes": SelectKeyframes,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "StoryMemEmptyBank": "Empty Memory Bank",
    "StoryMemBankFromImages": "Memory Bank from Images (MR2V)",
    "StoryMemLoadBank": "Load Memory Bank",
    "StoryMemSaveBank": "Save Memory Bank",
    "StoryMemEditBank": "Edit Memory Bank",
    "StoryMemPreviewBank": "Preview Memory Bank",
    "StoryMemSelectKeyframes": "Select Keyframes",
}
