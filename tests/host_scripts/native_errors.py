"""In ComfyUI: the native nodes given the mistakes an artist makes, each error as the host would show it.
Writes JOB_DIR/errors.json: case -> the error's type and message.

usage: native_errors.py JOB_DIR
"""

import json
import sys
from pathlib import Path

job_dir = Path(sys.argv[1])
sys.path.append(str(Path(__file__).resolve().parent.parent))

import in_host  # noqa: E402

classes = in_host.start(models_dir=job_dir / "models", output_dir=job_dir / "output")

import torch  # noqa: E402

from storymem_core.errors import StoryMemError  # noqa: E402
from storymem_core.memory import MemoryBank  # noqa: E402

TITLED = {"unique_id": "7", "prompt": {"7": {"_meta": {"title": "Shot 2: StoryMem Conditioning"}}}}
bank = MemoryBank.from_images([torch.zeros(32, 32, 3, dtype=torch.uint8)])
shot = {"model_high": None, "model_low": None, "vae": None, "keyframe_encoder": None, "memory": bank, "cut": True,
        "mode": "auto-mi2v", "seed": 0, "steps": 2, "cfg": 3.5, "sampler_name": "uni_pc", "scheduler": "simple",
        "width": 32, "height": 32, "frames": 5, "shot_number": 3}
cases = {
    "conditioning_without_previous_frames": lambda: classes["StoryMemConditioning"]().condition(
        [], [], None, bank, cut=False, mode="auto-mi2v", width=32, height=32, length=5, batch_size=1, **TITLED),
    "conditioning_on_an_empty_bank": lambda: classes["StoryMemConditioning"]().condition(
        [], [], None, MemoryBank(), cut=True, mode="auto-mi2v", width=32, height=32, length=5, batch_size=1,
        **TITLED),
    "trim_without_frames_left": lambda: classes["StoryMemTrimFrames"]().trim(
        torch.zeros(1, 8, 8, 3), 1, unique_id="9", prompt={"9": {"_meta": {"title": "Shot 2: drop given frames"}}}),
    "native_shot_without_previous_frames": lambda: classes["StoryMemNativeShot"]().generate(
        **{**shot, "cut": False}, prompt="The keeper climbs on."),
    "native_shot_with_prompt_and_positive": lambda: classes["StoryMemNativeShot"]().generate(
        **shot, prompt="The keeper climbs on.", positive=[]),
    "native_shot_without_clip": lambda: classes["StoryMemNativeShot"]().generate(**shot, prompt="The keeper."),
}
errors = {}
for name, case in cases.items():
    try:
        case()
        errors[name] = None
    except StoryMemError as error:
        errors[name] = [type(error).__name__, str(error)]
(job_dir / "errors.json").write_text(json.dumps(errors))
