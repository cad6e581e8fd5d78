"""umT5 encoder equals the reference on every t5_* golden case; tokenizer and TextEncoder behave as the reference's
call."""

import io

import pytest
import sentencepiece
import torch
from golden_data import cases, load_case, manifests, with_prefix

from storymem_core.errors import CheckpointError
from storymem_core.wan.t5 import T5Config, UMT5Encoder
from storymem_core.wan.text_encoder import TextEncoder
from storymem_core.wan.tokenizer import UMT5Tokenizer, clean_prompt


def golden_encoder(config: dict, tensors: dict) -> UMT5Encoder:
    model = UMT5Encoder(T5Config.from_dict(config["config"]))
    model.load_state_dict(with_prefix(tensors, "weight."))
    return model.eval()


@pytest.mark.parametrize("path", cases("t5_"))
def test_t5_encoder_matches_reference(path):
    config, tensors = load_case(path)
    with torch.no_grad():
        out = golden_encoder(config, tensors)(tensors["ids"], tensors["mask"])
    torch.testing.assert_close(out, tensors["out"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("path", cases("t5_"))
def test_t5_bf16_weights_stay_close_to_reference(path):
    config, tensors = load_case(path)
    model = golden_encoder(config, tensors).to(torch.bfloat16)
    with torch.no_grad():
        out = model(tensors["ids"], tensors["mask"]).float()
    real = tensors["mask"].bool()  # padded positions are not used downstream
    relative = (out[real] - tensors["out"][real]).norm() / tensors["out"][real].norm()
    assert relative < 0.05


def test_t5_fp16_overflow_is_clamped_not_infinite():
    torch.manual_seed(0)
    model = UMT5Encoder(T5Config(vocab=16, dim=8, dim_attn=8, dim_ffn=16, num_heads=2, num_layers=2, num_buckets=8))
    ffn = model.blocks[0].ffn
    with torch.no_grad():
        for weight in (ffn.fc1.weight, ffn.gate[0].weight, ffn.fc2.weight):
            weight.fill_(30.0)  # the FFN output overflows float16; unclamped, the final norm turns it into NaN
        out = model.half()(torch.arange(6)[None], torch.ones(1, 6))
    assert torch.isfinite(out).all()


def test_t5_real_size_has_checkpoint_names_and_shapes():
    manifest = manifests()
    with torch.device("meta"):
        model = UMT5Encoder(T5Config.umt5_xxl())
    shapes = {name: list(p.shape) for name, p in model.state_dict().items()}
    assert shapes == manifest["shapes"]["umt5_xxl_encoder"]
    assert sum(p.numel() for p in model.parameters()) == manifest["parameter_counts"]["umt5_xxl_encoder"]


WORDS = (
    "a quiet harbor town at dawn fishing boats drift past the old lighthouse keeper who climbs its stairs while rain "
    "falls on cobblestone streets and a girl in a red coat runs through the busy market as the camera pans slowly "
    "across snowy mountains toward distant villages where children play beside frozen rivers under golden evening light"
).split()


@pytest.fixture(scope="module")
def spiece_bytes() -> bytes:
    """A small unigram model (at most 100 pieces) with T5's special ids (pad 0, eos 1, unk 2, no bos)."""
    sentences = (" ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 8)) for i in range(400))
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=sentences,
        model_writer=model,
        vocab_size=100,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    return model.getvalue()


@pytest.fixture(scope="module")
def tokenizer(spiece_bytes) -> UMT5Tokenizer:
    return UMT5Tokenizer.from_bytes(spiece_bytes)


def test_t5_tokenizer_appends_eos_then_pads(tokenizer, spiece_bytes):
    pieces = sentencepiece.SentencePieceProcessor(model_proto=spiece_bytes).encode("rain falls")
    ids, mask = tokenizer(["rain falls", ""], text_len=12)
    assert ids[0].tolist() == pieces + [1] + [0] * (11 - len(pieces))
    assert mask[0].tolist() == [1] * (len(pieces) + 1) + [0] * (11 - len(pieces))
    assert ids[1].tolist() == [1] + [0] * 11 and mask[1].tolist() == [1] + [0] * 11


def test_t5_tokenizer_truncation_keeps_eos_last(tokenizer):
    ids, mask = tokenizer([" ".join(WORDS)], text_len=6)
    assert ids.shape == (1, 6) and ids[0, -1] == 1 and mask.all()
    assert ids[0, :5].tolist() == tokenizer([" ".join(WORDS)], text_len=64)[0][0, :5].tolist()


def test_t5_tokenizer_cleans_like_reference(tokenizer):
    assert clean_prompt("  rain &amp;amp; \n\t falls  ") == "rain & falls"
    assert torch.equal(tokenizer(["  rain \n falls "], 8)[0], tokenizer(["rain falls"], 8)[0])


def test_t5_tokenizer_from_file_folder_and_bytes_agree(tmp_path, spiece_bytes, tokenizer):
    wan_folder = tmp_path / "google" / "umt5-xxl"
    wan_folder.mkdir(parents=True)
    (wan_folder / "spiece.model").write_bytes(spiece_bytes)
    prompts = ["a girl in a red coat", "snowy mountains at dawn"]
    expected = tokenizer(prompts, 16)
    as_tensor = UMT5Tokenizer.from_bytes(torch.frombuffer(bytearray(spiece_bytes), dtype=torch.uint8))
    for loaded in (UMT5Tokenizer.from_path(wan_folder / "spiece.model"), UMT5Tokenizer.from_path(tmp_path), as_tensor):
        assert all(torch.equal(a, b) for a, b in zip(loaded(prompts, 16), expected))


def test_t5_tokenizer_missing_file_names_it(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError, match=f"{tmp_path}.*spiece.model"):
        UMT5Tokenizer.from_path(tmp_path)


def test_t5_tokenizer_rejects_non_t5_models(tmp_path, spiece_bytes):
    with pytest.raises(CheckpointError, match="not a readable sentencepiece model"):
        UMT5Tokenizer.from_bytes(b"not a model")
    plain = io.BytesIO()  # sentencepiece defaults: no pad piece
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(WORDS * 20), model_writer=plain, vocab_size=40, hard_vocab_limit=False, minloglevel=2
    )
    with pytest.raises(CheckpointError, match="not a T5 tokenizer"):
        UMT5Tokenizer.from_bytes(plain.getvalue())


@pytest.fixture(scope="module")
def text_encoder(tokenizer) -> TextEncoder:
    torch.manual_seed(0)
    config = T5Config(
        vocab=tokenizer.vocab_size, dim=16, dim_attn=16, dim_ffn=32, num_heads=2, num_layers=2, num_buckets=8
    )
    return TextEncoder(tokenizer, UMT5Encoder(config).eval(), text_len=24)


def test_t5_text_encoder_trims_each_context_to_its_tokens(text_encoder):
    prompts = ["rain", "old lighthouse keeper climbs the cobblestone stairs", " ".join(WORDS * 3)]
    lengths = text_encoder.tokenizer(prompts, 24)[1].sum(dim=1).tolist()
    contexts = text_encoder.encode(prompts, "cpu")
    assert [c.shape for c in contexts] == [(n, 16) for n in lengths]
    assert lengths[0] < lengths[1] < lengths[2] == 24


def test_t5_text_encoder_context_ignores_batch_padding(text_encoder):
    alone = text_encoder.encode(["red coat"], "cpu")[0]
    batched = text_encoder.encode(["red coat", " ".join(WORDS)], "cpu")[0]
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-5)


def test_t5_text_encoder_rejects_tokenizer_larger_than_vocab(tokenizer):
    small = UMT5Encoder(T5Config(vocab=8, dim=8, dim_attn=8, dim_ffn=8, num_heads=2, num_layers=1, num_buckets=8))
    with pytest.raises(CheckpointError, match="embeds only 8"):
        TextEncoder(tokenizer, small)
