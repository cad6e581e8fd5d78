import av
import numpy as np
import pytest
import torch
from PIL import Image

from storymem_core import video
from storymem_core.errors import ConditioningError, StoryMemError
from storymem_core.files import atomic_write_path, load_image, save_image
from storymem_core.video import (
    concat_videos,
    frames_to_image_batch,
    frames_to_video,
    image_batch_to_frames,
    read_mp4,
    trim_conditioning_frames,
    video_to_frames,
    write_mp4,
)


def smooth_frames(count: int, height: int = 32, width: int = 48, seed: int = 0) -> torch.Tensor:
    """Gradients that move from frame to frame: content a video codec keeps close to exact."""
    y = torch.linspace(0, 1, height)[:, None]
    x = torch.linspace(0, 1, width)[None, :]
    phase = torch.arange(count).float()[:, None, None] / max(count, 1) + seed
    shape = (count, height, width)
    red = (0.5 + 0.4 * torch.sin(2 * x[None] + phase)).expand(shape)
    green = (0.5 + 0.4 * torch.cos(3 * y[None] + phase)).expand(shape)
    blue = (0.3 + 0.4 * x * y)[None].expand(shape)
    return (torch.stack([red, green, blue], -1) * 255).round().to(torch.uint8)


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_mp4_round_trip_keeps_count_size_and_pixels(tmp_path, monkeypatch, codec):
    monkeypatch.setattr(video, "_video_codec", lambda: codec)
    frames = smooth_frames(9)
    path = write_mp4(frames, tmp_path / "shots" / "shot_001.mp4", fps=16)
    back = read_mp4(path)
    assert back.shape == frames.shape and back.dtype == torch.uint8
    assert (back.float() - frames.float()).abs().mean() < 4


def test_odd_sizes_are_padded_to_even(tmp_path):
    frames = smooth_frames(3, height=31, width=45)
    back = read_mp4(write_mp4(frames, tmp_path / "odd.mp4"))
    assert back.shape == (3, 32, 46, 3)
    assert (back[:, :31, :45].float() - frames.float()).abs().mean() < 4


def test_concat_frame_count_is_the_sum(tmp_path):
    counts = [5, 3, 9]
    paths = [write_mp4(smooth_frames(n, seed=i), tmp_path / f"shot_{i}.mp4") for i, n in enumerate(counts)]
    film = read_mp4(concat_videos(paths, tmp_path / "film.mp4", fps=16))
    assert film.shape == (sum(counts), 32, 48, 3)
    assert (film[5:8].float() - read_mp4(paths[1]).float()).abs().mean() < 4


def test_shots_encoded_alike_join_without_a_second_encode(tmp_path):
    counts = [5, 3, 9]
    paths = [write_mp4(smooth_frames(n, seed=i), tmp_path / f"shot_{i}.mp4") for i, n in enumerate(counts)]
    film = read_mp4(concat_videos(paths, tmp_path / "film.mp4", fps=16))
    assert torch.equal(film, torch.cat([read_mp4(path) for path in paths]))  # every frame as its shot holds it
    with av.open(str(tmp_path / "film.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.frames == sum(counts) and float(stream.duration * stream.time_base) == sum(counts) / 16
    # another frame rate than the shots': re-encoded at that rate
    with av.open(str(concat_videos(paths, tmp_path / "film_24.mp4", fps=24))) as container:
        assert container.streams.video[0].average_rate == 24 and container.streams.video[0].frames == sum(counts)


def test_concat_rejects_shots_of_different_sizes(tmp_path):
    paths = [write_mp4(smooth_frames(2), tmp_path / "a.mp4"), write_mp4(smooth_frames(2, 16, 16), tmp_path / "b.mp4")]
    with pytest.raises(ConditioningError, match="16x16 but the video is 48x32"):
        concat_videos(paths, tmp_path / "film.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4"]


def test_atomic_write_leaves_no_temp_files(tmp_path):
    write_mp4(smooth_frames(2), tmp_path / "a.mp4")
    save_image(smooth_frames(1)[0], tmp_path / "a.png")
    with pytest.raises(ConditioningError, match="at least one frame"):
        write_mp4(smooth_frames(0), tmp_path / "empty.mp4")
    with pytest.raises(RuntimeError):
        with atomic_write_path(tmp_path / "a.png") as temp:
            temp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "a.png"]
    assert load_image(tmp_path / "a.png").shape == (32, 48, 3)  # the interrupted write did not replace it


def test_overwrite_replaces_the_file(tmp_path):
    path = tmp_path / "shot.mp4"
    write_mp4(smooth_frames(5), path)
    write_mp4(smooth_frames(3), path)
    assert len(read_mp4(path)) == 3


@pytest.mark.parametrize("mode,dropped", [("m2v", 0), ("mi2v", 1), ("mm2v", 5)])
def test_trim_drops_the_given_frames(mode, dropped):
    frames = torch.arange(9)[:, None, None, None].expand(9, 2, 2, 3).to(torch.uint8)
    trimmed = trim_conditioning_frames(frames, mode)
    assert trimmed[:, 0, 0, 0].tolist() == list(range(dropped, 9))


def test_trim_rejects_unknown_mode_and_too_short_shots():
    with pytest.raises(ConditioningError, match="use one of m2v, mi2v, mm2v"):
        trim_conditioning_frames(smooth_frames(9), "i2v")
    with pytest.raises(ConditioningError, match="MM2V shot of 5 frames"):
        trim_conditioning_frames(smooth_frames(5), "mm2v")


def test_video_and_frames_round_trip():
    frames = torch.randint(0, 256, (4, 6, 8, 3), dtype=torch.uint8)
    video = frames_to_video(frames)
    assert video.shape == (3, 4, 6, 8) and video.min() >= -1 and video.max() <= 1
    assert torch.equal(video_to_frames(video), frames)
    assert torch.equal(
        video_to_frames(video.to(torch.bfloat16)[:, :, :1, :1] * 0 - 5), torch.zeros(4, 1, 1, 3, dtype=torch.uint8)
    )


def test_image_batch_and_frames_round_trip():
    frames = torch.randint(0, 256, (4, 6, 8, 3), dtype=torch.uint8)
    images = frames_to_image_batch(frames)
    assert images.shape == (4, 6, 8, 3) and images.dtype == torch.float32 and 0 <= images.min() <= images.max() <= 1
    assert torch.equal(image_batch_to_frames(images), frames)


def test_video_and_image_batch_agree():
    video = torch.rand(3, 2, 4, 4) * 2 - 1
    images = (video.permute(1, 2, 3, 0) + 1) / 2
    assert torch.equal(video_to_frames(video), image_batch_to_frames(images))


@pytest.mark.parametrize(
    "convert,bad",
    [
        (video_to_frames, torch.zeros(4, 3, 8, 8)),
        (video_to_frames, torch.zeros(3, 4, 8, 8, dtype=torch.uint8)),
        (frames_to_video, torch.zeros(4, 8, 8, 3)),
        (frames_to_video, torch.zeros(8, 8, 3, dtype=torch.uint8)),
        (image_batch_to_frames, torch.zeros(4, 8, 8, 4)),
        (frames_to_image_batch, np.zeros((4, 8, 8, 3), dtype=np.uint8)),
    ],
)
def test_conversions_reject_wrong_layouts(convert, bad):
    with pytest.raises(ConditioningError, match="must be"):
        convert(bad)


def test_load_image_gives_rgb_uint8(tmp_path):
    Image.new("RGBA", (5, 3), (10, 20, 30, 128)).save(tmp_path / "rgba.png")
    Image.new("L", (5, 3), 77).save(tmp_path / "grey.png")
    assert load_image(tmp_path / "rgba.png")[0, 0].tolist() == [10, 20, 30]
    grey = load_image(tmp_path / "grey.png")
    assert grey.shape == (3, 5, 3) and grey.dtype == torch.uint8 and grey.unique().tolist() == [77]


def test_load_image_follows_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    Image.new("RGB", (4, 2)).save(tmp_path / "photo.jpg", exif=exif)
    assert load_image(tmp_path / "photo.jpg").shape == (4, 2, 3)


def test_missing_and_broken_files_raise_conditioning_errors(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ConditioningError, match="does not exist"):
        read_mp4(tmp_path / "absent.mp4")
    with pytest.raises(ConditioningError, match="cannot be decoded"):
        read_mp4(tmp_path / "broken.mp4")
    with pytest.raises(ConditioningError, match="does not exist"):
        load_image(tmp_path / "absent.png")
    with pytest.raises(ConditioningError, match="cannot be read"):
        load_image(tmp_path / "broken.png")


def test_bad_fps_and_image_suffix_are_rejected(tmp_path):
    with pytest.raises(StoryMemError, match="fps = 0"):
        write_mp4(smooth_frames(2), tmp_path / "a.mp4", fps=0)
    with pytest.raises(StoryMemError, match="name it .png or .jpg"):
        save_image(smooth_frames(1)[0], tmp_path / "frame.unknown")
    assert list(tmp_path.iterdir()) == []
