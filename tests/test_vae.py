"""The Wan2.1 VAE equals the reference on every vae_* golden case and has the real checkpoint's layout."""


import pytest
import torch
from golden_data import cases, load_case, manifests, vae_case, with_prefix
from helpers import build_vae

from storymem_core.errors import ConditioningError
from storymem_core.wan.vae import VAEConfig, WanVAE

TOLERANCE = dict(atol=1e-4, rtol=1e-4)


def random_vae(seed: int = 0) -> WanVAE:
    """The golden case's architecture with seeded random weights."""
    torch.manual_seed(seed)
    return build_vae(vae_case()[0])


@pytest.mark.parametrize("path", cases("vae_"))
def test_vae_encode_matches_reference(path):
    config, tensors = load_case(path)
    vae = build_vae(config, with_prefix(tensors, "weight."))
    torch.testing.assert_close(vae.encode(tensors["video"]), tensors["latent"], **TOLERANCE)
    torch.testing.assert_close(vae.encode(tensors["image"]), tensors["image_latent"], **TOLERANCE)


@pytest.mark.parametrize("path", cases("vae_"))
def test_vae_decode_matches_reference(path):
    config, tensors = load_case(path)
    vae = build_vae(config, with_prefix(tensors, "weight."))
    torch.testing.assert_close(vae.decode(tensors["latent"]), tensors["decoded"], **TOLERANCE)
    torch.testing.assert_close(vae.decode(tensors["image_latent"]), tensors["image_decoded"], **TOLERANCE)


@pytest.mark.parametrize("path", cases("vae_"))
def test_vae_encodes_a_batch_of_keyframes_like_each_alone(path):
    config, tensors = load_case(path)
    vae = build_vae(config, with_prefix(tensors, "weight."))
    keyframes = torch.cat([tensors["image"], tensors["video"][:, :, -1:]])  # two 1-frame videos
    batched = vae.encode(keyframes)
    torch.testing.assert_close(batched[:1], tensors["image_latent"], **TOLERANCE)
    torch.testing.assert_close(batched[1:], vae.encode(tensors["video"][:, :, -1:]), **TOLERANCE)


def test_vae_real_size_has_the_checkpoint_names_shapes_and_parameter_count():
    manifest = manifests()
    with torch.device("meta"):
        vae = WanVAE(VAEConfig.wan21())
    shapes = {name: list(tensor.shape) for name, tensor in vae.state_dict().items()}
    assert shapes == manifest["shapes"]["wan21_vae"]
    assert sum(p.numel() for p in vae.parameters()) == manifest["parameter_counts"]["wan21_vae"]


def test_vae_decode_keeps_no_state_between_calls():
    vae = random_vae()
    latent = torch.randn(1, vae.config.z_dim, 2, 4, 6)
    first = vae.decode(latent)
    vae.decode(torch.randn(2, vae.config.z_dim, 3, 4, 6))
    torch.testing.assert_close(vae.decode(latent), first, atol=0, rtol=0)


def _spatially_local(vae: WanVAE) -> WanVAE:
    """Keep only the centre tap of every spatial kernel and silence attention: each pixel then
    depends on its own latent pixel alone, so tiling must reproduce the untiled decode exactly."""
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if param.dim() >= 4 and param.shape[-1] == 3:
                centre = param[..., 1:2, 1:2].clone()
                param.zero_()[..., 1:2, 1:2] = centre
            if ".proj." in name:
                param.zero_()
    return vae


def test_vae_tiled_decode_blends_tiles_back_into_the_untiled_video():
    vae = _spatially_local(random_vae())
    latent = torch.randn(1, vae.config.z_dim, 2, 12, 20)  # tile 8: 2 rows x 3 columns, uneven overlaps
    whole = vae.decode(latent)
    assert whole.std() > 0.05  # a flat video would hide misplaced tiles
    torch.testing.assert_close(vae.decode(latent, tile=(8, 8)), whole, atol=1e-5, rtol=1e-5)


def test_vae_tile_larger_than_latent_decodes_whole():
    vae = random_vae()
    latent = torch.randn(1, vae.config.z_dim, 2, 4, 6)
    torch.testing.assert_close(vae.decode(latent, tile=(32, 32)), vae.decode(latent), atol=0, rtol=0)


def test_vae_rejects_a_tile_too_small_to_blend():
    vae = random_vae()
    with pytest.raises(ConditioningError, match=r"tile \(4, 16\).*at least \(8, 8\)"):
        vae.decode(torch.zeros(1, vae.config.z_dim, 1, 16, 16), tile=(4, 16))


@pytest.mark.parametrize("frames", [2, 4, 8])
def test_vae_encode_rejects_frame_counts_not_4n_plus_1(frames):
    vae = random_vae()
    pixels = vae.config.spatial_stride
    lower = (frames - 1) // 4 * 4 + 1
    with pytest.raises(ConditioningError, match=rf"has {frames} frames.*4n\+1.*use {lower} or {lower + 4} frames"):
        vae.encode(torch.zeros(1, 3, frames, pixels, pixels))


def test_vae_encode_rejects_sizes_not_multiple_of_the_latent_pixel():
    vae = random_vae()
    pixels = vae.config.spatial_stride
    with pytest.raises(ConditioningError, match=rf"{2 * pixels}x{pixels + pixels // 2} pixels.*multiples of {pixels}"):
        vae.encode(torch.zeros(1, 3, 1, pixels + pixels // 2, 2 * pixels))
