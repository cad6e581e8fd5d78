"""The images the shipped workflows load (LoadImage `storymem_reference_1.png`, `_2.png`: a keeper in a yellow
raincoat, his lighthouse; drawn for this pack), put into ComfyUI's input folder when the pack loads so that every
workflow opens and runs as shipped. A file of the same name already there is the user's and is never replaced."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from storymem_core.errors import WriteError
from storymem_core.files import atomic_write_path

EXAMPLE_INPUTS = Path(__file__).resolve().parent.parent / "examples" / "input"
log = logging.getLogger(__name__)


def copy_example_inputs(input_dir: Path) -> list[Path]:
    """Copy the pack's example images missing from `input_dir` there; the paths written."""
    written = []
    for image in sorted(EXAMPLE_INPUTS.glob("*.png")):
        target = input_dir / image.name
        if target.exists():
            continue
        try:
            with atomic_write_path(target) as temp:
                shutil.copyfile(image, temp)
        except WriteError as error:  # a read-only input folder: the workflows then name what to put there
            log.warning("StoryMem: %s", error)
            continue
        written.append(target)
    return written
