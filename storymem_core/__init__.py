"""StoryMem engine: plain PyTorch, no ComfyUI imports (see docs/architecture.md)."""

from .errors import StoryMemError

__all__ = ["StoryMemError"]
