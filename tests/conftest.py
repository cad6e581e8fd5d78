import sys
from pathlib import Path

# The pack root is importable as in ComfyUI's custom_nodes (storymem_core, nodes). The tests folder is not a
# package: the pack root holds ComfyUI's __init__.py, and a package here would make pytest import the root
# under the checkout's folder name (often `ComfyUI-StoryMem`, not a Python name).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
