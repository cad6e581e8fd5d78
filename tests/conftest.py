import sys
from pathlib import Path

# The pack root is importable as in ComfyUI's custom_nodes (storymem_core, nodes).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
