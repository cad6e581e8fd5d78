"""Property and fuzz tests beside the ones in test_story / test_memory: the story parser on arbitrary and mutated JSON,
memory-bank edit sequences (add / pin / unpin / remove), and the checkpoint key mapper (ComfyUI prefixes,
Hugging Face umT5 names, LoRA layouts). Example counts stay small: CI has two cores."""

from __future__ import annotations

import copy

import torch
from helpers import VALID, hf_t5_names, indices, keyframes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storymem_core.errors import MemoryBankError, StoryScriptError
from storymem_core.lora import load_lora
from storymem_core.memory import MemoryBank
from storymem_core.story import Story, loads_story, parse_story
from storymem_core.wan.dit import DiTConfig, WanDiT
from storymem_core.wan.t5 import T5Config, UMT5Encoder
from storymem_core.weights.checkpoint import Checkpoint

FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


# ------------------------------------------------------------------ story parser


def one_sentence(error: StoryScriptError) -> bool:
    message = str(error)
    return message.endswith(".") and "\n" not in message.split(": ", 1)[-1].split(";")[0]


@FEW
@given(text=st.text(max_size=80))
def test_story_any_text_is_a_story_or_one_story_error(text):
    try:
        assert isinstance(loads_story(text, "fuzz.json"), Story)
    except StoryScriptError as error:
        assert str(error).startswith("fuzz.json") and one_sentence(error)


def paths(value, prefix=()):
    """Every location inside a JSON value, as key/index paths."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, prefix + (index,))


VALID_PATHS = list(paths(VALID))[1:]


@FEW
@given(where=st.sampled_from(VALID_PATHS), replacement=JSON, drop=st.booleans())
def test_story_valid_script_with_one_part_replaced_or_dropped_parses_or_names_the_fault(where, replacement, drop):
    script = copy.deepcopy(VALID)
    parent = script
    for key in where[:-1]:
        parent = parent[key]
    if drop:
        del parent[where[-1]]
    else:
        parent[where[-1]] = replacement
    try:
        story, _ = parse_story(script, "mutated.json")
    except StoryScriptError as error:
        assert str(error).startswith("mutated.json") and one_sentence(error)
    else:
        assert story.shots and story.shots[0].cut and [s.index for s in story.shots] == list(range(len(story.shots)))
        assert all(isinstance(s.prompt, str) and s.prompt.strip() for s in story.shots)


# ------------------------------------------------------------------ memory bank edit sequences

OPERATIONS = st.lists(st.tuples(st.sampled_from(["add", "pin", "unpin", "remove"]), st.integers(0, 9)), max_size=14)


def described(bank: MemoryBank) -> list:
    return [(k.frame_index, k.pinned, k.image.sum().item()) for k in bank.keyframes]


@FEW
@given(max_size=st.integers(1, 6), fixed=st.integers(0, 6), operations=OPERATIONS)
def test_bank_edit_sequences_keep_size_fixed_pins_order_and_old_banks(max_size, fixed, operations):
    fixed = min(fixed, max_size)
    bank, added, history = MemoryBank(max_size=max_size, fixed=fixed), 0, []
    for operation, argument in operations:
        history.append((bank, described(bank)))
        if operation == "add":
            protected = [k.frame_index for i, k in enumerate(bank.keyframes) if i in bank.protected_indices()]
            try:
                bank = bank.add(keyframes(argument % 4, start=added))
            except MemoryBankError:
                assert len(protected) > max_size  # only when pins leave no room
                continue
            added += argument % 4
            assert len(bank) <= max_size
            assert set(protected) <= set(indices(bank))  # fixed and pinned keyframes survive
        elif len(bank) == 0:
            try:
                getattr(bank, operation)(argument)
                raise AssertionError(f"{operation} on an empty bank did not raise")
            except MemoryBankError:
                continue
        else:
            position = argument % len(bank)
            before = indices(bank)
            bank = getattr(bank, operation)(position)
            if operation == "remove":
                assert indices(bank) == before[:position] + before[position + 1:]
            else:
                assert indices(bank) == before and bank.keyframes[position].pinned == (operation == "pin")
        assert indices(bank) == sorted(indices(bank))  # story order kept
        assert described(bank.window()) == described(bank) or len(bank) > max_size
    assert all(described(old) == seen for old, seen in history)  # every earlier bank is as it was


# ------------------------------------------------------------------ checkpoint key mapper


def tiny_dit(layers: int, in_dim: int) -> dict[str, torch.Tensor]:
    config = {
        "patch_size": [1, 2, 2],
        "text_len": 8,
        "dim": 16,
        "ffn_dim": 24,
        "freq_dim": 8,
        "text_dim": 8,
        "out_dim": 4,
        "num_heads": 2,
        "num_layers": layers,
        "in_dim": in_dim,
        "model_type": "i2v" if in_dim == 36 else "t2v",
    }
    return WanDiT(DiTConfig.from_dict(config)).state_dict()


DIT_STATES = {(layers, in_dim): tiny_dit(layers, in_dim) for layers in (1, 3) for in_dim in (16, 36)}
PREFIXES = st.sampled_from(["", "model.diffusion_model.", "diffusion_model.", "model.", "transformer."])


@FEW
@given(shape=st.sampled_from(sorted(DIT_STATES)), prefix=PREFIXES, extra=st.booleans())
def test_mapper_dit_names_do_not_depend_on_the_file_prefix(shape, prefix, extra):
    state = DIT_STATES[shape]
    stored = {prefix + name: tensor for name, tensor in state.items()}
    if extra and prefix:
        stored["vae.encoder.conv1.weight"] = torch.zeros(1)  # a bundled other model outside the prefix is ignored
    checkpoint = Checkpoint(stored)
    assert checkpoint.info.kind == ("wan22-i2v-dit" if shape[1] == 36 else "wan22-t2v-dit") and checkpoint.info.usable
    assert checkpoint.shapes() == {name: tuple(t.shape) for name, t in state.items()}
    assert checkpoint.info.architecture["layers"] == shape[0]


T5_STATES = {
    layers: UMT5Encoder(
        T5Config(vocab=32, dim=8, dim_attn=8, dim_ffn=12, num_heads=2, num_layers=layers, num_buckets=4)
    ).state_dict()
    for layers in (1, 2, 4)
}


@FEW
@given(
    layers=st.sampled_from(sorted(T5_STATES)),
    tied=st.booleans(),
    prefix=st.sampled_from(["", "text_encoders.umt5xxl.transformer."]),
)
def test_mapper_hf_umt5_names_map_back_one_to_one(layers, tied, prefix):
    ours = T5_STATES[layers]
    hf = hf_t5_names(ours)
    if tied:  # Hugging Face files may store the embedding twice (encoder.embed_tokens tied to shared)
        hf["encoder.embed_tokens.weight"] = hf["shared.weight"]
    checkpoint = Checkpoint({prefix + name: tensor for name, tensor in hf.items()})
    assert checkpoint.info.kind == "umt5" and checkpoint.info.usable
    assert checkpoint.shapes() == {name: tuple(t.shape) for name, t in ours.items()}
    for name, tensor in ours.items():
        assert torch.equal(checkpoint.read(name), tensor)


LINEARS = sorted(
    {name.removesuffix(".weight") for name, t in tiny_dit(3, 36).items() if t.dim() == 2 and name.endswith(".weight")}
)


def lora_key(module: str, part: str, layout: str) -> str:
    """`module` (ours) in one of the layouts users have; `part` is 'down', 'up' or 'alpha'."""
    if layout == "peft":
        return f"base_model.model.{module}.{ {'down': 'lora_A', 'up': 'lora_B'}[part] }.weight"
    if layout == "peft-adapter-name":
        return f"diffusion_model.{module}.{ {'down': 'lora_A', 'up': 'lora_B'}[part] }.default.weight"
    prefix = {"comfy": "diffusion_model.", "comfy-full": "model.diffusion_model."}.get(layout)
    name = f"{prefix}{module}" if prefix else "lora_unet_" + module.replace(".", "_")
    return f"{name}.alpha" if part == "alpha" else f"{name}.lora_{part}.weight"


@FEW
@given(
    modules=st.lists(st.sampled_from(LINEARS), min_size=1, max_size=6, unique=True),
    layout=st.sampled_from(["peft", "peft-adapter-name", "comfy", "comfy-full", "kohya"]),
    rank=st.integers(1, 4),
    alpha=st.one_of(st.none(), st.floats(0.5, 16)),
)
def test_mapper_lora_layouts_give_the_same_modules_and_scales(modules, layout, rank, alpha):
    generator = torch.Generator().manual_seed(rank)
    stored, expected = {}, {}
    for module in modules:
        down, up = torch.randn(rank, 5, generator=generator), torch.randn(7, rank, generator=generator)
        stored[lora_key(module, "down", layout)], stored[lora_key(module, "up", layout)] = down, up
        if alpha is not None and not layout.startswith("peft"):
            stored[lora_key(module, "alpha", layout)] = torch.tensor(alpha)
        expected[module] = (down, up)
    lora = load_lora(stored, strength=0.5)
    assert set(lora.modules) == set(modules) and not lora.unrecognized
    peft = layout == "peft"  # StoryMem's own files: alpha = rank with rsLoRA
    for module, (down, up) in expected.items():
        part = lora.modules[module]
        assert torch.equal(part.down, down) and torch.equal(part.up, up)
        if peft:
            expected_scale = rank / rank**0.5 * 0.5
        else:
            stored_alpha = (
                float(torch.tensor(alpha)) if alpha is not None and not layout.startswith("peft") else rank
            )  # float32 in the file
            expected_scale = stored_alpha / rank * 0.5
        assert abs(part.scale - expected_scale) < 1e-9 * max(1.0, expected_scale)
