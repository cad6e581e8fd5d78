"""What a story's writes cost on this machine's CPU: keyframe and last-frame PNGs, a shot's mp4, the film's join.

Run from the repo root:  python -m benchmarks.writes [--shots 4] [--sampling-s 3]
Frames: 81 of 832x480, smoothed noise (seed 0), each shot shifted so no two are alike; best of 3 for the PNGs.
"before" rows are the settings the engine used before issue 25 (PIL's default zlib level 6, x264's medium preset,
the film re-encoded), timed here with the same libraries.
The story loop: `run_story` with a stand-in for the models whose every shot waits `--sampling-s` seconds (as the CPU
waits for a GPU shot) and returns these frames with one more keyframe in its bank; its files written after each shot
(`InlineWrites`: the loop before the write-behind, except that the next shot still takes its bank and last frames from
memory, not from disk, so "before" slightly understates it) against written behind the next shot's wait (the
engine's `WriteBehind`). `story_writes_before_s` / `story_writes_now_s`: what the story spent beyond its shots' waits.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path
from unittest import mock

import av
import torch
from PIL import Image

import storymem_core.pipeline as pipeline
from storymem_core.memory import Keyframe
from storymem_core.pipeline import StoryOptions, run_story
from storymem_core.run_shot import ShotOutcome, ShotRequest
from storymem_core.story import Scene, Shot, Story
from storymem_core.video import concat_videos, write_mp4


def frames(seed: int = 0) -> torch.Tensor:
    noise = torch.rand(81, 3, 480, 832, generator=torch.Generator().manual_seed(seed)) * 255
    return torch.nn.functional.avg_pool2d(noise, 9, 1, 4).permute(0, 2, 3, 1).to(torch.uint8)


def png_s(image: Image.Image, level: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        image.save(io.BytesIO(), "PNG", compress_level=level)
        best = min(best, time.perf_counter() - start)
    return best


def mp4_s(shot: torch.Tensor, preset: str) -> float:
    """A shot encoded in memory at crf 17 with x264's `preset` (the engine's settings before issue 25 with medium)."""
    start = time.perf_counter()
    with av.open(io.BytesIO(), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=16)
        stream.width, stream.height, stream.pix_fmt = 832, 480, "yuv420p"
        stream.options = {"crf": "17", "preset": preset}
        for index, frame in enumerate(shot.numpy()):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = index
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
    return time.perf_counter() - start


class WaitingShots:
    """Stands in for a story's models: each shot waits `seconds` (a GPU shot, as the CPU sees it), takes one step and
    returns `frames` shifted, with its middle frame added to the memory (also the write-behind tests' stand-in)."""

    def __init__(self, frames: torch.Tensor, seconds: float):
        self.frames, self.seconds = frames, seconds

    def with_prompts(self, batches: list[list[str]]) -> WaitingShots:
        return self

    def make_shot(self, request: ShotRequest, on_step) -> ShotOutcome:
        time.sleep(self.seconds)
        if on_step is not None:
            on_step(1, 1)
        shot = self.frames.roll(10 * request.index, 2)
        middle = len(shot) // 2
        keyframe = Keyframe(shot[middle], shot=request.index, frame_index=middle, scores={"clip": 0.3})
        return ShotOutcome(frames=shot, memory=request.memory.add([keyframe]), keyframes_added=1)


class InlineWrites:
    """The story loop before the write-behind: each shot's files written before the next shot starts."""

    def __enter__(self) -> InlineWrites:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def submit(self, job) -> None:
        job()


def story_loop_s(shot: torch.Tensor, shots: int, sampling_s: float, folder: Path) -> float:
    """Seconds of a `shots`-shot story (T2V first shot, then memory shots) whose shots wait `sampling_s` each."""
    story = Story("writes", "", (Scene(1, tuple(Shot(i, 1, i, f"shot {i}", cut=True) for i in range(shots))),))
    options = StoryOptions(first_shot="t2v", continuation="m2v", size_wh=(832, 480), frames=81, fps=16)
    start = time.perf_counter()
    run_story(story, WaitingShots(shot, sampling_s), options, folder)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=4, help="shots joined into the film, and of the story loop")
    parser.add_argument("--sampling-s", type=float, default=3.0, help="seconds each shot of the story loop waits")
    args = parser.parse_args()
    shot = frames()
    image = Image.fromarray(shot[0].numpy())
    rows = {"png_before_s": png_s(image, 6), "png_now_s": png_s(image, 1), "mp4_before_s": mp4_s(shot, "medium")}
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        write_mp4(shot, Path(folder) / "shot.mp4")  # the engine's own settings
        rows["mp4_now_s"] = time.perf_counter() - start
        paths = [write_mp4(shot.roll(10 * index, 2), Path(folder) / f"shot_{index}.mp4") for index in range(args.shots)]
        for name, fps in (("film_join_s", 16), ("film_reencode_s", 24)):  # another rate than the shots': re-encoded
            start = time.perf_counter()
            concat_videos(paths, Path(folder) / f"film_{fps}.mp4", fps=fps)
            rows[name] = time.perf_counter() - start
        with mock.patch.object(pipeline, "WriteBehind", InlineWrites):
            rows["story_loop_before_s"] = story_loop_s(shot, args.shots, args.sampling_s, Path(folder) / "before")
        rows["story_loop_now_s"] = story_loop_s(shot, args.shots, args.sampling_s, Path(folder) / "now")
        for when in ("before", "now"):
            rows[f"story_writes_{when}_s"] = rows[f"story_loop_{when}_s"] - args.shots * args.sampling_s
    print(json.dumps({"shots": args.shots, "torch_threads": torch.get_num_threads(), **rows}, indent=1))


if __name__ == "__main__":
    main()
