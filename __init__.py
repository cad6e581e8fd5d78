"""ComfyUI entry point of the StoryMem node pack; importable without ComfyUI."""

import os
import sys

# the nodes import the engine by its absolute name; ComfyUI does not put a pack's folder on sys.path
_PACK_ROOT = os.path.dirname(os.path.abspath(__file__))
if _PACK_ROOT not in sys.path:
    sys.path.append(_PACK_ROOT)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

WEB_DIRECTORY = "./js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
