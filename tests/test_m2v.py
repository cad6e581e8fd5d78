"""Memory-to-video and text-to-video shots equal the reference loop on every m2v_* / t2v_* golden case: the authors'
fixed loop (`*_negrope`) with our default memory placement, the first release's with its numbering."""


import pytest
import torch
from golden_data import case_placement, cases, dit_config_for, load_case, other_placement, with_prefix
from helpers import given_frames, is_released_mi2v_bug, loop_vae, loop_weights

from storymem_core.choices import DEFAULT_MEMORY_POSITIONS
from storymem_core.conditioning import (
    LATENT_FRAME_STRIDE,
    VAE_STRIDE,
    build_conditioning,
    conditioning_mask,
    latent_size,
    to_model_images,
)
from storymem_core.errors import ConditioningError
from storymem_core.positions import DEFAULT_SPACING
from storymem_core.sampling import ExpertPair, SamplerSettings, seeded_noise
from storymem_core.shot import ShotMemory, generate_memory_shot, generate_text_shot
from storymem_core.wan.dit import DiTConfig, WanDiT
from storymem_core.wan.vae import WanVAE

MASK_CHANNELS = 4
SHOT_TOLERANCE = 2e-3  # decoded frames of a whole sampled shot against the reference's


def build_experts(weights: dict) -> ExpertPair:
    models = []
    for prefix in ("high.", "low."):
        expert_weights = with_prefix(weights, prefix)
        model = WanDiT(DiTConfig.from_dict(dit_config_for(expert_weights)))
        model.load_state_dict(expert_weights)
        models.append(model.eval())
    return ExpertPair(*models)


def guides(config: dict) -> tuple[float, float]:
    """(low, high): a single number applies to both experts."""
    guide = config["guide_scale"]
    return tuple(guide) if isinstance(guide, list) else (guide, guide)


def settings_for(config: dict) -> SamplerSettings:
    low, high = guides(config)
    return SamplerSettings(
        steps=config["sampling_steps"], shift=config["shift"], solver=config["solver"],
        boundary=config["boundary"], guide_low=low, guide_high=high, seed=config["seed"],
    )


@pytest.mark.parametrize("path", cases("m2v_"))
def test_m2v_mask_matches_reference(path):
    config, tensors = load_case(path)
    memory_count = tensors["memory_images"].shape[0]
    lat_hw = tuple(tensors["y"].shape[2:])
    mode = "mi2v" if config["first_frame"] else "mm2v" if config["motion_frames"] else "m2v"
    mask = conditioning_mask(memory_count, config["frame_num"], lat_hw, mode, config["fix_mem"])
    assert torch.equal(mask, tensors["y"][:MASK_CHANNELS])


def released_mi2v_conditioning(y: torch.Tensor, vae: WanVAE, memory_count: int, frame_num: int) -> torch.Tensor:
    """`y` as the released code builds it: the shot latents are those of an empty (all-zero) video.

    The causal VAE carries the first frame into later latent frames too, so the bug changes every
    shot latent frame, while the mask and the memory latents stay as intended.
    """
    lat_h, lat_w = y.shape[2:]
    empty_video = torch.zeros(1, 3, frame_num, lat_h * VAE_STRIDE[1], lat_w * VAE_STRIDE[2])
    released = y.clone()
    released[MASK_CHANNELS:, memory_count:] = vae.encode(empty_video)[0]
    return released


@pytest.mark.parametrize("path", cases("m2v_"))
def test_m2v_conditioning_matches_reference(path):
    config, tensors = load_case(path)
    vae = loop_vae(loop_weights(config, tensors))
    y = build_conditioning(
        vae, tensors["memory_images"], config["frame_num"], config["max_area"],
        fix_mem=config["fix_mem"], **given_frames(config, tensors),
    ).y
    if is_released_mi2v_bug(config):
        # We keep the first frame's latent; the released code encodes an empty video in its place.
        assert not torch.allclose(y, tensors["y"], atol=1e-2)
        y = released_mi2v_conditioning(y, vae, tensors["memory_images"].shape[0], config["frame_num"])
    torch.testing.assert_close(y, tensors["y"], atol=1e-4, rtol=1e-4)


def placement_argument(config: dict) -> dict:
    """No argument for a case of the authors' fixed code (the default must be it), the first release's otherwise."""
    placement, spacing = case_placement(config)
    if placement == DEFAULT_MEMORY_POSITIONS:
        assert spacing == DEFAULT_SPACING
        return {}
    return {"positions": placement}


@pytest.mark.parametrize("path", cases("m2v_"))
def test_m2v_shot_matches_reference(path):
    config, tensors = load_case(path)
    weights = loop_weights(config, tensors)
    settings = settings_for(config)
    result = generate_memory_shot(
        build_experts(weights), loop_vae(weights), tensors["context"], tensors["context_null"],
        ShotMemory(tensors["memory_images"], fix_mem=config["fix_mem"], **placement_argument(config),
                   **given_frames(config, tensors)),
        config["frame_num"], config["max_area"], settings, decode_memory=True,
    )
    noise, _ = seeded_noise(tuple(tensors["noise"].shape), settings.seed)
    torch.testing.assert_close(noise, tensors["noise"], atol=0, rtol=0)
    if is_released_mi2v_bug(config):
        # The first frame's content reaches our shot and not the released one (attention carries the
        # difference into the denoised memory latents too, so they are not compared here).
        assert (result.video - tensors["video"]).abs().max() > 2e-2
    else:
        torch.testing.assert_close(result.video, tensors["video"], atol=SHOT_TOLERANCE, rtol=0)
        torch.testing.assert_close(result.memory_decoded, tensors["memory_decoded"], atol=SHOT_TOLERANCE, rtol=0)


@pytest.mark.parametrize("path", cases("m2v_"))
def test_m2v_other_memory_placement_gives_another_shot(path):
    """The placement is not a detail: same conditioning and noise at the other placement give another shot than the
    case's (its own placement gives the case's shot: test_m2v_shot_matches_reference)."""
    config, tensors = load_case(path)
    weights = loop_weights(config, tensors)
    other = other_placement(case_placement(config)[0])
    result = generate_memory_shot(
        build_experts(weights), loop_vae(weights), tensors["context"], tensors["context_null"],
        ShotMemory(tensors["memory_images"], fix_mem=config["fix_mem"], positions=other,
                   **given_frames(config, tensors)),
        config["frame_num"], config["max_area"], settings_for(config),
    )
    assert result.video.shape == tensors["video"].shape and result.video.isfinite().all()
    # tiny random experts move little (3e-3 to 5e-3 here), but clearly outside the parity tolerance
    assert not torch.allclose(result.video, tensors["video"], atol=SHOT_TOLERANCE, rtol=0)


def test_m2v_unknown_memory_positions_are_refused_before_sampling():
    with pytest.raises(ConditioningError, match="placement 'sideways' is unknown: use one of upstream, first-release"):
        generate_memory_shot(None, None, None, None, ShotMemory([], positions="sideways"))


@pytest.mark.parametrize("path", cases("t2v_"))
def test_t2v_first_shot_matches_reference(path):
    config, tensors = load_case(path)
    result = generate_text_shot(
        build_experts(tensors), loop_vae(tensors), tensors["context"], tensors["context_null"],
        tuple(config["size_wh"]), config["frame_num"], settings_for(config),
    )
    torch.testing.assert_close(result.video, tensors["video"], atol=SHOT_TOLERANCE, rtol=0)


def test_m2v_latent_size_follows_aspect_ratio():
    assert latent_size((480, 832), 832 * 480) == (60, 104)
    assert latent_size((64, 64), 4096) == (8, 8)


@pytest.mark.parametrize("frames", [0, 8, 10, 80])
def test_m2v_rejects_frame_counts_not_4n_plus_1(frames):
    with pytest.raises(ConditioningError, match=f"frames = {frames} is not of the form 4n\\+1"):
        build_conditioning(None, [torch.zeros(8, 8, 3, dtype=torch.uint8)], frames, 4096)


def test_m2v_rejects_empty_memory():
    with pytest.raises(ConditioningError, match="memory bank is empty"):
        build_conditioning(None, [], 9, 4096)


class StrideEncoder:
    """A stand-in VAE with the real one's shapes: each latent pixel is a strided sample of the video."""

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return video[:, :, ::LATENT_FRAME_STRIDE, :: VAE_STRIDE[1], :: VAE_STRIDE[2]].repeat(1, 6, 1, 1, 1)[:, :16]


def test_m2v_memory_images_of_other_sizes_are_resized_each_on_its_own():
    generator = torch.Generator().manual_seed(0)
    square, wide = (
        torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8) for h, w in ((64, 64), (32, 48))
    )
    y = build_conditioning(StrideEncoder(), [square, wide], 9, 4096).y
    assert y.shape[2:] == (8, 8)  # the first keyframe's aspect ratio sets the shot's
    wide_latent = StrideEncoder().encode(to_model_images(wide[None], (64, 64)).unsqueeze(2))[0, :, 0]
    torch.testing.assert_close(y[MASK_CHANNELS:, 1], wide_latent, atol=0, rtol=0)


def test_m2v_rejects_motion_frames_of_different_sizes():
    image = torch.zeros(64, 64, 3, dtype=torch.uint8)
    motion = [image] * 4 + [torch.zeros(32, 64, 3, dtype=torch.uint8)]
    with pytest.raises(ConditioningError, match="motion frames image 4 is 64x32 but image 0 is 64x64"):
        build_conditioning(None, [image], 9, 4096, motion_frames=motion)


def test_m2v_rejects_first_frame_and_motion_frames_together():
    image = torch.zeros(64, 64, 3, dtype=torch.uint8)
    with pytest.raises(ConditioningError, match="either a first frame"):
        build_conditioning(None, [image], 9, 4096, first_frame=image, motion_frames=image[None].expand(5, -1, -1, -1))
