"""CLIP files through open_clip: the vision tower (keyframe selection) and the text tower (story evaluation).
open_clip builds models by registered config name, so a file storing its own config (tiny test models) has that
config registered once. See docs/architecture.md.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import torch

from ..keyframes import OpenClipEncoder, OpenClipTextEncoder
from .kinds import CLIP_VISION
from .loading import stored_config

_registered_clip_configs: dict[str, str] = {}
_clip_config_dir: Path | None = None  # open_clip re-reads every registered file on each registration: kept until exit


def load_keyframe_encoder(path: str | Path, model_name: str, device: torch.device) -> OpenClipEncoder:
    """An open_clip vision tower; a file storing an open_clip config (tiny test models) is built from that config."""
    return OpenClipEncoder.from_file(path, model_name=_clip_model_name(path, model_name), device=device)


def load_clip_text_encoder(path: str | Path, model_name: str, device: torch.device) -> OpenClipTextEncoder:
    """The text tower of the same CLIP file (prompt following in story evaluation), built as the vision tower is."""
    return OpenClipTextEncoder.from_file(path, model_name=_clip_model_name(path, model_name), device=device)


def _clip_model_name(path: str | Path, model_name: str) -> str:
    """`model_name`, or the registered name of the open_clip config the file stores (tiny test models)."""
    stored = stored_config(path, CLIP_VISION)
    return model_name if stored is None else _register_clip_config(stored)


def _register_clip_config(config: dict) -> str:
    """open_clip builds models by registered config name: register a stored config once, under a name of its content."""
    import open_clip

    global _clip_config_dir
    text = json.dumps(config, sort_keys=True)
    if text not in _registered_clip_configs:
        if _clip_config_dir is None:
            _clip_config_dir = Path(tempfile.mkdtemp(prefix="storymem-clip-"))
            atexit.register(shutil.rmtree, _clip_config_dir, ignore_errors=True)
        name = f"storymem-stored-{len(_registered_clip_configs)}"
        config_file = _clip_config_dir / f"{name}.json"
        config_file.write_text(text)
        open_clip.add_model_config(config_file)
        _registered_clip_configs[text] = name
    return _registered_clip_configs[text]
