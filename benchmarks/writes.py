"""What a story's writes cost on this machine's CPU: keyframe and last-frame PNGs, a shot's mp4, the film's join.

Run from the repo root:  python -m benchmarks.writes [--shots 4]
Frames: 81 of 832x480, smoothed noise (seed 0), each shot shifted so no two are alike; best of 3 for the PNGs.
"before" rows are the settings the engine used before issue 25 (PIL's default zlib level 6, x264's medium preset,
the film re-encoded), timed here with the same libraries.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import av
import torch
from PIL import Image

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=4, help="shots joined into the film")
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
    print(json.dumps({"shots": args.shots, "torch_threads": torch.get_num_threads(), **rows}, indent=1))


if __name__ == "__main__":
    main()
