"""StoryMem engine: plain PyTorch, no ComfyUI imports (see DESIGN.md)."""

from .errors import StoryMemError

__all__ = ["StoryMemError"]
