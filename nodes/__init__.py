"""StoryMem ComfyUI nodes, grouped by what they handle."""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
