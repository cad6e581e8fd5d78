"""Frames between their three forms, and mp4 files (PyAV).

- engine video: float [3, T, H, W] in [-1, 1], what the VAE decodes;
- ComfyUI IMAGE: float [T, H, W, 3] in [0, 1];
- frames: uint8 [T, H, W, 3], what files hold and keyframe selection reads.

Every mp4 is written through files.atomic_write_path, so an interrupted write never leaves a
half-written shot that a resumed story would take as finished. Images: storymem_core.files.
"""

from __future__ import annotations

import contextlib
import os
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Iterator, NamedTuple

import av
import numpy as np
import torch

from .choices import GIVEN_FRAMES
from .errors import ConditioningError, MissingPackage, SettingsError
from .files import atomic_write_path, check_frames
from .safe_files import check_file


def _check_float(tensor: torch.Tensor, channel_dim: int, what: str, layout: str) -> None:
    if (not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.dim() != 4
            or tensor.shape[channel_dim] != 3):
        shown = f"{tensor.dtype} {tuple(tensor.shape)}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ConditioningError(f"{what} must be a float tensor {layout}, got {shown}.")


def video_to_frames(video: torch.Tensor) -> torch.Tensor:
    """Engine video [3, T, H, W] in [-1, 1] -> uint8 frames [T, H, W, 3] (rounded, values outside clipped)."""
    _check_float(video, 0, "the video", "[3, T, H, W] in [-1, 1]")
    pixels = (video.detach().float().cpu().clamp(-1, 1) + 1) * 127.5
    return pixels.round().to(torch.uint8).permute(1, 2, 3, 0).contiguous()


def frames_to_video(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] -> engine video float32 [3, T, H, W] in [-1, 1]."""
    check_frames(frames, "the frames")
    return frames.permute(3, 0, 1, 2).float().div(127.5).sub(1)


def image_batch_to_frames(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [T, H, W, 3] in [0, 1] -> uint8 frames [T, H, W, 3]."""
    _check_float(images, 3, "the IMAGE batch", "[T, H, W, 3] in [0, 1] (RGB, no alpha)")
    return images.detach().float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8)


def frames_to_image_batch(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] -> ComfyUI IMAGE float32 [T, H, W, 3] in [0, 1]."""
    check_frames(frames, "the frames")
    return frames.float().div(255)


def trim_conditioning_frames(frames: torch.Tensor, mode: str) -> torch.Tensor:
    """Drop the frames a shot was given rather than generated, so the film does not show them twice.

    "m2v" (memory only) keeps every frame; "mi2v" starts from the previous shot's last frame and drops
    1; "mm2v" starts from the previous shot's last 5 frames and drops 5. Works on any [T, ...] tensor.
    """
    if mode not in GIVEN_FRAMES:
        raise ConditioningError(f"conditioning mode '{mode}' is unknown: use one of {', '.join(GIVEN_FRAMES)}.")
    given = GIVEN_FRAMES[mode]
    if len(frames) <= given:
        raise ConditioningError(f"a {mode.upper()} shot of {len(frames)} frames has none left after its {given} given "
                                "frame(s): generate more frames (4n+1, e.g. 81).")
    return frames[given:]


@lru_cache(maxsize=None)
def _video_codec() -> str:
    """libx264 where this PyAV build has it (small, plays everywhere), else mpeg4 (always built in)."""
    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # PyAV raises different types per version for a missing codec
            continue
    raise MissingPackage("this PyAV build has neither the libx264 nor the mpeg4 encoder: install PyAV from PyPI "
                         "(pip install av).")


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad an odd height or width by repeating the last row / column: yuv420p needs even sizes."""
    height, width = frame.shape[:2]
    return np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


class _Mp4Encoder:
    """Frames appended one at a time into an open mp4 container (size taken from the first frame)."""

    def __init__(self, container: av.container.OutputContainer, fps: float):
        if fps <= 0:
            raise SettingsError(f"fps = {fps} must be positive: use e.g. 16 (Wan2.2's frame rate).")
        self.container = container
        self.rate = Fraction(fps).limit_denominator(1001)
        self.stream = None
        self.count = 0

    def _open(self, height: int, width: int) -> None:
        codec = _video_codec()
        self.stream = self.container.add_stream(codec, rate=self.rate)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            # crf 17 sets the quality; x264's veryfast preset reaches it in a third of the default preset's time
            self.stream.options = {"crf": "17", "preset": "veryfast"}
        else:
            self.stream.bit_rate = 16_000_000

    def add(self, frame: np.ndarray) -> None:
        frame = _even(frame)
        if self.stream is None:
            self._open(*frame.shape[:2])
        elif (frame.shape[0], frame.shape[1]) != (self.stream.height, self.stream.width):
            raise ConditioningError(
                f"frame {self.count} is {frame.shape[1]}x{frame.shape[0]} but the video is "
                f"{self.stream.width}x{self.stream.height}: "
                "every frame of a video, and every shot of a film, must have the same size."
            )
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = self.count
        video_frame.time_base = 1 / self.rate
        self.container.mux(self.stream.encode(video_frame))
        self.count += 1

    def finish(self) -> None:
        self.container.mux(self.stream.encode())


@contextlib.contextmanager
def _mp4_encoder(path: str | os.PathLike, fps: float) -> Iterator[_Mp4Encoder]:
    with atomic_write_path(path) as temp, av.open(str(temp), mode="w", format="mp4") as container:
        encoder = _Mp4Encoder(container, fps)
        yield encoder
        if encoder.count == 0:
            raise ConditioningError(f"no frames to write to {path}: a video needs at least one frame.")
        encoder.finish()


def write_mp4(frames: torch.Tensor, path: str | os.PathLike, fps: float = 16) -> Path:
    """Write uint8 frames [T, H, W, 3] as an H.264 (or MPEG-4) yuv420p mp4, atomically; returns `path`."""
    check_frames(frames, f"the frames for {path}")
    with _mp4_encoder(path, fps) as encoder:
        for frame in frames.cpu().numpy():
            encoder.add(frame)
    return Path(path)


def _decoded_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """RGB frames of the first video stream of `path`, one at a time."""
    if not check_file(path, "video", ConditioningError).is_file():
        raise ConditioningError(f"video {path} does not exist: check the path (or regenerate the shot).")
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
    except av.FFmpegError as error:
        raise ConditioningError(
            f"video {path} cannot be decoded ({error}): regenerate it or convert it to mp4.") from None


def read_mp4(path: str | os.PathLike) -> torch.Tensor:
    """All frames of a video file as uint8 [T, H, W, 3] (RGB)."""
    frames = list(_decoded_frames(path))
    if not frames:
        raise ConditioningError(f"video {path} has no frames: regenerate it.")
    return torch.from_numpy(np.stack(frames))


def concat_videos(paths: list[str | os.PathLike], out_path: str | os.PathLike, fps: float = 16) -> Path:
    """Join shot videos into one film (frame count = sum), streaming: no shot is held whole in memory.

    Shots encoded alike (as `write_mp4` writes every shot of a story) are joined packet by packet: no second lossy
    encode, and a 12-shot film in well under a second instead of a re-encode of every frame; others are re-encoded."""
    if not paths:
        raise ConditioningError(f"no shot videos to join into {out_path}: generate at least one shot first.")
    if _encoded_alike(paths, Fraction(fps).limit_denominator(1001)):
        return _join_packets(paths, out_path)
    with _mp4_encoder(out_path, fps) as encoder:
        for path in paths:
            for frame in _decoded_frames(path):
                encoder.add(frame)
    return Path(out_path)


class _StreamForm(NamedTuple):
    """What two videos must share to be joined without decoding: codec, size, pixel format, frame rate, time base and
    codec parameters (SPS/PPS)."""

    codec: str
    width: int
    height: int
    pix_fmt: str
    rate: Fraction
    time_base: Fraction
    extradata: bytes


def _stream_form(path: str | os.PathLike) -> _StreamForm | None:
    """The form of a video of one video stream; None for anything else or a file that cannot be read."""
    try:
        with av.open(str(check_file(path, "video", ConditioningError))) as container:
            if len(container.streams) != 1 or not container.streams.video:
                return None
            stream = container.streams.video[0]
            context = stream.codec_context
            return _StreamForm(context.name, context.width, context.height, context.pix_fmt, stream.average_rate,
                               stream.time_base, bytes(context.extradata or b""))
    except (av.FFmpegError, OSError):
        return None


def _encoded_alike(paths: list[str | os.PathLike], rate: Fraction) -> bool:
    forms = {_stream_form(path) for path in paths}
    form = next(iter(forms))
    return len(forms) == 1 and form is not None and form.codec == "h264" and form.rate == rate


def _join_packets(paths: list[str | os.PathLike], out_path: str | os.PathLike) -> Path:
    """Every shot's packets in order, each shot's timestamps moved past the end of the ones before."""
    with atomic_write_path(out_path) as temp, av.open(str(temp), mode="w", format="mp4") as film:
        stream, offset = None, 0
        for path in paths:
            with av.open(str(path)) as shot:
                source = shot.streams.video[0]
                stream = stream or film.add_stream_from_template(source)
                end = offset
                for packet in shot.demux(source):
                    if packet.dts is None:  # the demuxer's empty packet at the end
                        continue
                    end = max(end, offset + packet.pts + packet.duration)
                    packet.pts, packet.dts = packet.pts + offset, packet.dts + offset
                    packet.stream = stream
                    film.mux(packet)
                offset = end
    return Path(out_path)
