"""The models that score frames for keyframe selection and story evaluation: CLIP image and text encoders, the LAION
aesthetic head and HPSv3. They take and give tensors only; reading their files is `weights.scorer_files`'s, and the
rule that picks keyframes from their scores is `keyframes`'. See docs/architecture.md.
"""

from __future__ import annotations

from typing import Mapping, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError

HPSV3_THRESHOLD = 3.0  # the reference's quality cut (HPSv3 reward)
# LAION aesthetic scores run about 1..10 (most photos 4..6); a chosen cut, not calibrated against HPSv3
AESTHETIC_THRESHOLD = 4.0
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's pixel statistics (VBench's clip_transform)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageEncoder(Protocol):
    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames [T, H, W, 3] -> L2-normalised float32 embeddings [T, D] on the CPU."""
        ...


class AestheticScorer(Protocol):
    threshold: float  # frames scoring below it are not taken as keyframes

    def score(self, frames: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Quality per frame [T] from the frames (uint8 [T, H, W, 3]) or their embeddings [T, D]."""
        ...


class OpenClipEncoder:
    """An open_clip vision tower as an ImageEncoder: frames squashed to its input size, batched.

    The reference shrinks frames (antialiased) to at most 256 x 28^2 pixels, then squashes them to 224
    without antialiasing; here one antialiased resize goes straight to the input size.
    """

    def __init__(self, visual: nn.Module, mean: Sequence[float], std: Sequence[float], batch_size: int = 32):
        self.visual = visual.eval().requires_grad_(False)
        self.image_size = tuple(visual.image_size)
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.batch_size = batch_size

    def prepare(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames [B, H, W, 3] -> normalised pixels [B, 3, S, S], squashed like the reference (no crop): the
        whole frame counts."""
        batch = frames.permute(0, 3, 1, 2).float() / 255
        batch = F.interpolate(batch, size=self.image_size, mode="bilinear", antialias=True, align_corners=False)
        return (batch - self.mean.to(batch.device)) / self.std.to(batch.device)

    @torch.inference_mode()
    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        parameter = next(self.visual.parameters())
        chunks = []
        for start in range(0, len(frames), self.batch_size):
            batch = self.prepare(frames[start : start + self.batch_size].to(parameter.device))
            chunks.append(F.normalize(self.visual(batch.to(parameter.dtype)).float(), dim=-1).cpu())
        return torch.cat(chunks)


class VBenchClipEncoder(OpenClipEncoder):
    """An open_clip vision tower fed as VBench feeds OpenAI CLIP (`vbench_pixels`: shorter side to the input size,
    centre crop), for the paper's aesthetic score."""

    def prepare(self, frames: torch.Tensor) -> torch.Tensor:
        return vbench_pixels(frames, self.image_size[0], self.mean, self.std)


def vbench_pixels(frames: torch.Tensor, size: int, mean: torch.Tensor | Sequence[float] = OPENAI_MEAN,
                  std: torch.Tensor | Sequence[float] = OPENAI_STD) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] -> normalised pixels [T, 3, size, size] as VBench's `clip_transform` makes them:
    the shorter side resized to `size` (bicubic, no antialiasing, rounded back to 0..255 as torchvision does for
    uint8 images), the centre cropped, scaled to 0..1 and normalised with CLIP's mean and std."""
    x = frames.permute(0, 3, 1, 2).float()
    height, width = x.shape[-2:]
    longer = int(size * max(height, width) / min(height, width))
    resized = (size, longer) if height <= width else (longer, size)
    if resized != (height, width):
        x = F.interpolate(x, size=resized, mode="bicubic", align_corners=False, antialias=False)
        x = x.clamp(0, 255).round()
    top, left = int(round((resized[0] - size) / 2)), int(round((resized[1] - size) / 2))
    x = x[:, :, top : top + size, left : left + size] / 255
    mean, std = torch.as_tensor(mean).view(1, 3, 1, 1), torch.as_tensor(std).view(1, 3, 1, 1)
    return (x - mean.to(x.device)) / std.to(x.device)


def vbench_frame_indices(count: int, num_frames: int) -> list[int]:
    """VBench's 'middle' sampling (`get_frame_indices`): the video cut into `num_frames` equal runs, the middle frame
    of each; a video with fewer frames gives all of them, padded with its last to `num_frames`."""
    samples = min(num_frames, count)
    bounds = [int(i * (count / samples)) for i in range(samples + 1)]  # numpy's linspace, floored
    indices = [(bounds[i] + bounds[i + 1] - 1) // 2 for i in range(samples)]
    return indices + [indices[-1]] * (num_frames - samples)


def vision_tower(config: Mapping, device: torch.device | str) -> nn.Module:
    """The image tower of an open_clip model config (the text tower is never used here)."""
    import open_clip

    with torch.device(device):
        return open_clip.model._build_vision_tower(config["embed_dim"], config["vision_cfg"],
                                                   config.get("quick_gelu", False))


def text_tower(config: Mapping, device: torch.device | str) -> nn.Module:
    import open_clip

    with torch.device(device):
        return open_clip.model._build_text_tower(config["embed_dim"], config["text_cfg"],
                                                 config.get("quick_gelu", False))


class OpenClipTextEncoder:
    """The text tower of the same open_clip CLIP file, for prompt-image similarity (story evaluation).

    Prompts longer than the context (77 tokens for OpenAI CLIP) are cut there by open_clip's tokenizer.
    """

    def __init__(self, text: nn.Module, tokenizer):
        self.text = text.eval().requires_grad_(False)
        self.tokenizer = tokenizer

    @torch.inference_mode()
    def embed_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> L2-normalised float32 embeddings [N, D] on the CPU."""
        parameter = next(self.text.parameters())
        tokens = self.tokenizer(list(prompts)).to(parameter.device)
        return F.normalize(self.text(tokens).float(), dim=-1).cpu()


class AestheticHead(nn.Module):
    """LAION-style aesthetic predictor on CLIP embeddings: a chain of linear layers, nothing in between.

    Reads both published layouts: the ViT-B/32 linear head (`weight`, `bias`) and the MLP of the
    improved predictor (`layers.0`, `layers.2`, ... whose dropouts hold no weights and no activations).
    """

    def __init__(self, layers: Sequence[nn.Linear], threshold: float = AESTHETIC_THRESHOLD):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.threshold = threshold

    def check_fits(self, encoder: ImageEncoder) -> None:
        """Refuse an encoder of another embedding size at load time, not after a shot has been generated."""
        self._check_dim(encoder.embed(torch.zeros(1, 32, 32, 3, dtype=torch.uint8)).shape[-1])

    def _check_dim(self, dim: int) -> None:
        if dim != self.layers[0].in_features:
            raise CheckpointError(
                f"the aesthetic head expects {self.layers[0].in_features}-d CLIP embeddings but the encoder gives "
                f"{dim}-d: use the head made for your CLIP model."
            )

    @torch.inference_mode()
    def score(self, frames: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        self._check_dim(embeddings.shape[-1])
        x = embeddings.to(self.layers[0].weight)
        for layer in self.layers:
            x = layer(x)
        return x[:, 0].float().cpu()


class HPSv3Scorer:
    """The reference's quality model (HPSv3, a 7B VLM reward) over frames; `weights.scorer_files.load_hpsv3` builds
    its inferencer from the `hpsv3` package and a local checkpoint."""

    def __init__(self, inferencer, threshold: float = HPSV3_THRESHOLD, batch_size: int = 8):
        self._inferencer = inferencer
        self.threshold = threshold
        self.batch_size = batch_size

    @torch.inference_mode()
    def score(self, frames: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        scores = []
        for start in range(0, len(frames), self.batch_size):
            images = [Image.fromarray(frame.numpy()) for frame in frames[start : start + self.batch_size].cpu()]
            rewards = self._inferencer.reward(image_paths=images, prompts=[""] * len(images))
            scores.append(torch.as_tensor(rewards)[:, 0].float().cpu())  # column 0: the reward mean
        return torch.cat(scores)


def embed_images(encoder: ImageEncoder, images: list[torch.Tensor]) -> torch.Tensor:
    """Embeddings [M, D] of images of any sizes: one batch when they share a size, else one call per image."""
    if len({tuple(image.shape) for image in images}) == 1:
        return encoder.embed(torch.stack(images))
    return torch.cat([encoder.embed(image[None]) for image in images])
