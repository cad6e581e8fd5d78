"""The node pack without ComfyUI: declarations, every node on tiny models through the standalone host,
values never mutated, errors a user can act on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from golden_data import manifests
from helpers import (
    SHOT,
    call,
    files_under,
    first_shot,
    image_batch,
    memory_shot,
    models,
    node,
    reference_bank,
    runner_arguments,
    same,
    snapshot,
)

import nodes
from nodes import host
from nodes.types import (
    BANK,
    KEYFRAME_ENCODER,
    MODEL,
    STORY,
    TEXT_ENCODER,
    VAE,
    LoraSpec,
    WanExperts,
)
from storymem_core import tiny_models as tiny
from storymem_core.bank_files import save_bank
from storymem_core.choices import Ablation
from storymem_core.errors import (
    CheckpointError,
    ConditioningError,
    GenerationInterrupted,
    MemoryBankError,
    StoryMemError,
    StoryScriptError,
)
from storymem_core.memory import MemoryBank
from storymem_core.story import Story
from storymem_core.video import read_mp4
from storymem_core.wan.dit import DiTConfig
from storymem_core.wan.t5 import T5Config
from storymem_core.weights.configs import dit_config_from_shapes, t5_config_from_shapes

PACK_ROOT = Path(__file__).resolve().parent.parent
CUSTOM_TYPES = (BANK, MODEL, STORY, TEXT_ENCODER, VAE, KEYFRAME_ENCODER)
PRIMITIVE_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "IMAGE", "MASK")
# ------------------------------------------------------------------ declarations


@pytest.mark.parametrize("name", sorted(nodes.NODE_CLASS_MAPPINGS))
def test_node_declares_v1_contract_with_tooltips(name):
    node_class = nodes.NODE_CLASS_MAPPINGS[name]
    declared = node_class.INPUT_TYPES()
    assert set(declared) <= {"required", "optional", "hidden"} and "required" in declared
    for section in ("required", "optional"):
        for input_name, spec in declared.get(section, {}).items():
            kind, options = spec[0], spec[1]
            assert isinstance(kind, list) or kind in CUSTOM_TYPES + PRIMITIVE_TYPES, (input_name, kind)
            assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
            if isinstance(kind, list) and "default" in options:
                assert options["default"] in kind
            if "default" in options and "min" in options:
                assert options["min"] <= options["default"] <= options.get("max", options["default"])
    assert all(t in CUSTOM_TYPES + PRIMITIVE_TYPES for t in node_class.RETURN_TYPES)
    assert len(node_class.RETURN_NAMES) == len(node_class.RETURN_TYPES) == len(node_class.OUTPUT_TOOLTIPS)
    assert callable(getattr(node_class, node_class.FUNCTION))
    assert node_class.CATEGORY.startswith("StoryMem/") and node_class.DESCRIPTION
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS[name]


def test_node_function_parameters_match_declared_inputs():
    import inspect

    for name, node_class in nodes.NODE_CLASS_MAPPINGS.items():
        declared = node_class.INPUT_TYPES()
        parameters = inspect.signature(getattr(node_class, node_class.FUNCTION)).parameters
        accepts_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
        for input_name in [*declared["required"], *declared.get("optional", {})]:
            assert input_name in parameters or accepts_any, f"{name} does not take {input_name}"
        for input_name in declared.get("optional", {}):
            assert input_name not in parameters or parameters[input_name].default is not inspect.Parameter.empty


def test_pack_root_imports_as_comfyui_loads_it_without_comfyui():
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('ComfyUI-StoryMem', r'{PACK_ROOT / '__init__.py'}', "
        f"submodule_search_locations=[r'{PACK_ROOT}'])\n"
        "module = importlib.util.module_from_spec(spec); sys.modules[spec.name] = module\n"
        "spec.loader.exec_module(module)\n"
        "print(len(module.NODE_CLASS_MAPPINGS), module.WEB_DIRECTORY)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/", timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(len(nodes.NODE_CLASS_MAPPINGS)), "./js"]


def test_model_lists_come_from_the_models_folder(pack):
    names = node("StoryMemLoadExperts").INPUT_TYPES()["required"]["high_noise_model"][0]
    assert tiny.I2V_HIGH in names and tiny.T2V_LOW in names
    loras = node("StoryMemLoadLora").INPUT_TYPES()["required"]["lora_high_noise"][0]
    assert tiny.STORYMEM_LORA_HIGH in loras and tiny.EXTRA_LORA in loras


# ------------------------------------------------------------------ loaders


def test_loaders_read_the_kind_and_size_from_the_files(pack):
    assert (pack.i2v.kind, pack.t2v.kind) == ("i2v", "t2v")
    assert pack.i2v.config.dim == tiny.DIT["dim"] and pack.i2v.config.in_dim == 36
    assert pack.text.encoder.encoder.config.dim == tiny.TEXT_DIM  # inferred from shapes: the file stores no config
    assert len(pack.m2v.loras) == 1 and pack.i2v.loras == ()


def test_real_a14b_and_umt5_sizes_are_read_from_their_tensor_shapes():
    shapes = manifests()["shapes"]
    for kind in ("t2v", "i2v"):
        dit = {name: tuple(shape) for name, shape in shapes[f"wan22_a14b_{kind}_dit"].items()}
        assert dit_config_from_shapes(dit, "expert") == DiTConfig.a14b(kind)
    umt5 = {name: tuple(shape) for name, shape in shapes["umt5_xxl_encoder"].items()}
    assert t5_config_from_shapes(umt5) == T5Config.umt5_xxl()


def test_loader_refuses_a_pair_of_two_kinds(pack):
    with pytest.raises(CheckpointError, match="load two experts of one pair"):
        call(
            "StoryMemLoadExperts",
            high_noise_model=tiny.I2V_HIGH,
            low_noise_model=tiny.T2V_LOW,
            weight_dtype="fp32",
            offload="none",
        )


def test_loader_names_the_folder_of_a_missing_file(pack):
    with pytest.raises(CheckpointError, match="diffusion_models folder"):
        call(
            "StoryMemLoadExperts",
            high_noise_model="missing.safetensors",
            low_noise_model=tiny.I2V_LOW,
            weight_dtype="fp32",
            offload="none",
        )


def test_loader_refuses_a_file_of_another_kind_or_outside_its_folder(pack):
    with pytest.raises(CheckpointError, match="not a path"):
        call("StoryMemLoadTextEncoder", text_encoder=f"../vae/{tiny.VAE_FILE}", weight_dtype="fp32")
    (pack.root / "models" / "text_encoders" / "vae_copy.safetensors").write_bytes(
        (pack.root / "models" / "vae" / tiny.VAE_FILE).read_bytes()
    )
    with pytest.raises(CheckpointError, match="not a umT5"):
        call("StoryMemLoadTextEncoder", text_encoder="vae_copy.safetensors", weight_dtype="fp32")


def test_storymem_lora_needs_i2v_experts(pack):
    with pytest.raises(StoryMemError, match="I2V-A14B"):
        call(
            "StoryMemLoadLora",
            model=pack.t2v,
            lora_high_noise=tiny.STORYMEM_LORA_HIGH,
            lora_low_noise=tiny.STORYMEM_LORA_LOW,
            strength=1.0,
        )


def test_lora_acts_only_while_sampling_and_leaves_weights_untouched(pack):
    before = {k: v.clone() for k, v in pack.m2v.high.state_dict().items()}
    styled = call("StoryMemAddLora", model=pack.m2v, lora=tiny.EXTRA_LORA, strength=0.5, experts="high")[0][0]
    assert len(styled.loras) == 2 and set(styled.loras[1].weights) == {"high"} and len(pack.m2v.loras) == 1
    x, t, context = torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 8, tiny.TEXT_DIM)
    y = torch.randn(1, 20, 2, 4, 4)
    with torch.no_grad():
        plain = pack.m2v.high(x, t, context, y)
        with styled.sampling(torch.device("cpu"), torch.device("cpu")) as experts:
            hooked = experts.high(x, t, context, y)
        after = pack.m2v.high(x, t, context, y)
    assert not torch.allclose(plain, hooked) and torch.equal(plain, after)
    assert all(torch.equal(before[k], v) for k, v in pack.m2v.high.state_dict().items())


def test_extra_lora_for_wan21_layers_is_applied_where_it_fits(pack, caplog):
    """A Wan2.1 speed LoRA carries image cross-attention entries Wan2.2 lacks, and bias deltas: the rest applies."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(pack.root / "models" / "loras" / tiny.EXTRA_LORA))
    state["diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight"] = torch.zeros(2, tiny.DIT["dim"])
    state["diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight"] = torch.zeros(tiny.DIT["dim"], 2)
    state["diffusion_model.blocks.0.self_attn.o.diff_b"] = torch.full((tiny.DIT["dim"],), 0.1)
    save_file(state, str(pack.root / "models" / "loras" / "wan21_speed_lora.safetensors"))
    sped = call("StoryMemAddLora", model=pack.m2v, lora="wan21_speed_lora.safetensors", strength=1.0, experts="both")[
        0
    ][0]
    assert "cross_attn.k_img" in caplog.text  # reported, not silently dropped
    x, t, context, y = (
        torch.randn(1, 16, 2, 4, 4),
        torch.tensor([500.0]),
        torch.randn(1, 8, tiny.TEXT_DIM),
        torch.randn(1, 20, 2, 4, 4),
    )
    with torch.no_grad():
        plain = pack.m2v.high(x, t, context, y)
        with sped.sampling(torch.device("cpu"), torch.device("cpu")) as experts:
            assert not torch.allclose(experts.high(x, t, context, y), plain)


def test_a_pair_that_samples_parks_the_pair_that_sampled_before(monkeypatch):
    monkeypatch.setattr(
        nodes.types, "_SAMPLED_EXPERTS", __import__("weakref").WeakSet()
    )  # leave the pack's experts alone

    def pair(name: str) -> WanExperts:
        return WanExperts(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), "i2v", name)

    t2v, m2v = pair("t2v"), pair("m2v")
    m2v_styled = m2v.with_lora(LoraSpec("style", 1.0, {}))
    cpu, park = torch.device("cpu"), torch.device("meta")  # meta stands in for "moved off the GPU"
    with t2v.sampling(cpu, park):
        pass
    with m2v_styled.sampling(cpu, park):
        pass
    assert t2v.high.weight.is_meta and t2v.low.weight.is_meta and not m2v.high.weight.is_meta
    with m2v.sampling(cpu, park):  # the same modules (another LoRA list) are not parked
        pass
    assert not m2v.low.weight.is_meta


# ------------------------------------------------------------------ story


def test_story_script_from_text_lists_its_shots(pack):
    (story, count, overview), ui = call(
        "StoryMemStoryScript",
        script_file="(script text below)",
        script=node("StoryMemStoryScript").INPUT_TYPES()["required"]["script"][1]["default"],
    )
    assert isinstance(story, Story) and count == 3 and overview
    assert [shot["cut"] for shot in ui["storymem_shots"]] == [True, True, False]
    assert call("StoryMemStoryShot", story=story, shot_number=3)[0] == (story.shots[2].prompt, False, 3)


def test_story_script_from_a_storymem_file(pack):
    folder = pack.root / "models" / "storymem" / "stories"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("boat.json", "riverbank.json"):
        (folder / name).write_text((PACK_ROOT / "examples" / "stories" / "paper_boat.json").read_text())
    save_bank(reference_bank(), folder / "saved_bank")
    choices = node("StoryMemStoryScript").INPUT_TYPES()["required"]["script_file"][0]
    assert {"stories/boat.json", "stories/riverbank.json"} <= set(choices)
    assert not any(name.endswith("/bank.json") for name in choices)  # a saved bank's manifest is no script
    (story, count, _), _ = call("StoryMemStoryScript", script_file="stories/boat.json", script="")
    assert story.name == "The Paper Boat" and count == 5
    assert node("StoryMemStoryScript").IS_CHANGED(script_file="stories/boat.json", script="")


def test_story_script_errors_name_the_problem(pack):
    with pytest.raises(StoryScriptError, match="not valid JSON at line 1"):
        call("StoryMemStoryScript", script_file="(script text below)", script="{oops")
    story = call(
        "StoryMemStoryScript",
        script_file="(script text below)",
        script=json.dumps({"story_overview": "o", "scenes": [{"scene_num": 1, "video_prompts": ["p"], "cut": [True]}]}),
    )[0][0]
    with pytest.raises(StoryScriptError, match="has shots 1 to 1"):
        call("StoryMemStoryShot", story=story, shot_number=2)


# ------------------------------------------------------------------ memory


def test_bank_from_images_fits_references_to_the_shot_size_and_appends(pack):
    (first,), ui = call(
        "StoryMemBankFromImages", images=image_batch(2, (40, 24)), width=32, height=48, max_size=5, fixed=2
    )
    assert [tuple(image.shape) for image in first.image_list()] == [(48, 32, 3)] * 2
    assert {k.source for k in first.keyframes} == {"reference"} and len(ui["storymem_bank"]) == 2
    (more,), _ = call(
        "StoryMemBankFromImages",
        images=image_batch(1, (16, 16)),
        width=32,
        height=48,
        max_size=5,
        fixed=2,
        memory=first,
    )
    assert len(more) == 3 and len(first) == 2


def test_bank_thumbnails_are_written_to_the_temp_folder(pack):
    _, ui = call("StoryMemBankFromImages", images=image_batch(2), width=32, height=32, max_size=5, fixed=1)
    entry = ui["storymem_bank"][0]
    assert (host.temp_dir() / entry["subfolder"] / entry["filename"]).is_file()
    assert entry["fixed"] and not ui["storymem_bank"][1]["fixed"]
    assert ui["storymem_bank_limits"] == [{"size": 2, "max_size": 5, "fixed": 1}]


def test_bank_save_then_load_by_name(pack):
    bank = reference_bank().pin(1)
    call("StoryMemSaveBank", memory=bank, name="banks/roundtrip")
    assert "banks/roundtrip" in node("StoryMemLoadBank").INPUT_TYPES()["required"]["bank"][0]
    (loaded,), _ = call("StoryMemLoadBank", bank="banks/roundtrip")
    assert [k.pinned for k in loaded.keyframes] == [False, True]
    assert all(torch.equal(a, b) for a, b in zip(loaded.image_list(), bank.image_list()))
    with pytest.raises(MemoryBankError, match="relative folder name"):
        call("StoryMemSaveBank", memory=bank, name="../outside")


def test_bank_edit_pins_and_removes(pack):
    bank = reference_bank(3)
    (pinned,), ui = call("StoryMemEditBank", memory=bank, action="pin", index=-1)
    assert pinned.keyframes[2].pinned and ui["storymem_bank"][2]["pinned"]
    (removed,), _ = call("StoryMemEditBank", memory=bank, action="remove", index=0)
    assert len(removed) == 2 and len(bank) == 3
    with pytest.raises(MemoryBankError, match="does not exist"):
        call("StoryMemEditBank", memory=bank, action="remove", index=7)


def test_bank_preview_gives_images_and_a_contact_sheet(pack):
    (keyframes, sheet), _ = call("StoryMemPreviewBank", memory=reference_bank(3))
    assert keyframes.shape == (3, 32, 32, 3) and sheet.dim() == 4 and sheet.shape[0] == 1
    (empty_keyframes, _), _ = call("StoryMemPreviewBank", memory=MemoryBank())
    assert empty_keyframes.shape[0] == 1


def test_select_keyframes_adds_labelled_keyframes(pack):
    bank = MemoryBank(max_size=6, fixed=1)
    (after,), _ = call(
        "StoryMemSelectKeyframes",
        frames=image_batch(5, seed=3),
        memory=bank,
        keyframe_encoder=pack.keyframes,
        shot_number=4,
    )
    assert 1 <= len(after) <= 3 and {k.shot for k in after.keyframes} == {3} and len(bank) == 0


# ------------------------------------------------------------------ shots


def test_first_shot_starts_the_memory(pack):
    (frames, bank, last), ui = first_shot(pack)
    assert frames.shape == (5, 32, 32, 3) and frames.dtype == torch.float32 and 0 <= frames.min() and frames.max() <= 1
    assert 1 <= len(bank) <= 3 and {k.shot for k in bank.keyframes} == {0}
    assert torch.equal(last, frames[-5:]) and len(ui["storymem_bank"]) == len(bank)


def test_memory_shot_modes_trim_the_given_frames(pack):
    (frames, bank, last), _ = first_shot(pack)
    (m2v_frames, m2v_bank, _), _ = memory_shot(pack, bank)
    assert m2v_frames.shape == (5, 32, 32, 3) and len(m2v_bank) >= len(bank)
    assert all(k.shot == 1 for k in m2v_bank.keyframes[len(bank) :])
    (mi2v_frames, _, _), _ = memory_shot(pack, bank, cut=False, previous_frames=last)
    assert mi2v_frames.shape[0] == 4  # the given first frame is not shown twice
    (mm2v_frames, _, _), _ = memory_shot(pack, bank, mode="auto-mm2v", cut=False, previous_frames=last, frames=9)
    assert mm2v_frames.shape[0] == 4
    (forced, _, _), _ = memory_shot(pack, bank, mode="m2v", cut=False, previous_frames=last)
    assert forced.shape[0] == 5


def test_memory_shot_from_references_is_mr2v(pack):
    (frames, bank, _), _ = memory_shot(pack, reference_bank(), shot_number=1)
    assert frames.shape == (5, 32, 32, 3) and bank.keyframes[0].source == "reference"
    assert all(k.shot == 0 for k in bank.keyframes if k.source == "generated")


def test_memory_shot_takes_references_of_different_sizes(pack):
    # room for the shot's keyframes beside both references: none is evicted
    (square,), _ = call("StoryMemBankFromImages", images=image_batch(1), width=32, height=32, max_size=6, fixed=1)
    (mixed,), _ = call(
        "StoryMemBankFromImages", images=image_batch(1), width=48, height=32, max_size=6, fixed=1, memory=square
    )
    (frames, bank, _), _ = memory_shot(pack, mixed, shot_number=1)
    assert frames.shape == (5, 32, 32, 3)  # the first keyframe's aspect ratio
    assert [k.size for k in bank.keyframes[:2]] == [k.size for k in mixed.keyframes]


def test_memory_shot_errors_tell_what_to_connect(pack):
    with pytest.raises(ConditioningError, match="previous_frames is not connected"):
        memory_shot(pack, reference_bank(), cut=False)
    with pytest.raises(ConditioningError, match="connect its last_frames"):
        memory_shot(pack, reference_bank(), mode="mm2v")
    with pytest.raises(ConditioningError, match="memory bank is empty"):
        memory_shot(pack, MemoryBank())
    with pytest.raises(StoryMemError, match="T2V-A14B"):
        first_shot(SimpleNamespace(**{**vars(pack), "t2v": pack.m2v}))
    with pytest.raises(StoryMemError, match="prompt is empty"):
        memory_shot(pack, reference_bank(), prompt="  ")
    with pytest.raises(ConditioningError, match="4n\\+1"):
        memory_shot(pack, reference_bank(), frames=6)


def test_reroll_gets_the_same_bank_and_gives_another_shot(pack):
    bank = reference_bank()
    snapshot = [k.image for k in bank.keyframes]
    (first, _, _), _ = memory_shot(pack, bank, seed=1)
    (again, _, _), _ = memory_shot(pack, bank, seed=1)
    (rerolled, _, _), _ = memory_shot(pack, bank, seed=2)
    assert torch.equal(first, again) and not torch.equal(first, rerolled)
    assert all(torch.equal(a, b) for a, b in zip(snapshot, bank.image_list()))


def test_memory_positions_upstream_is_the_default_first_release_gives_another_shot(pack):
    bank = reference_bank()
    (default, _, _), _ = memory_shot(pack, bank)
    (upstream, _, _), _ = memory_shot(pack, bank, memory_positions="upstream")
    (first_release, _, _), _ = memory_shot(pack, bank, memory_positions="first-release")
    assert torch.equal(default, upstream) and not torch.equal(upstream, first_release)


@pytest.mark.parametrize("name, newer", [("StoryMemShot", []),
                                         ("StoryMemStoryRunner", [a.value.replace("-", "_") for a in Ablation])])
def test_memory_positions_is_the_last_input_so_saved_workflows_keep_loading(name, newer):
    """ComfyUI restores widget values by position: a widget added anywhere but last would shift the saved ones (the
    ablation switches came after memory_positions, so they follow it)."""
    declared = node(name).INPUT_TYPES()
    assert list(declared["optional"])[-1 - len(newer):] == ["memory_positions", *newer]
    assert declared["optional"]["memory_positions"][1]["default"] == "upstream"


def test_evaluate_story_mode_is_its_last_input_so_saved_workflows_keep_loading():
    assert list(node("StoryMemEvaluateStory").INPUT_TYPES()["optional"])[-1] == "mode"


def test_interrupted_shot_raises_and_keeps_the_bank(pack):
    bank = reference_bank()
    host.current().interrupt()
    with pytest.raises(GenerationInterrupted):
        memory_shot(pack, bank)
    assert len(bank) == 2
    assert not any(module._forward_hooks for module in pack.m2v.high.modules())  # the LoRA came off
    memory_shot(pack, bank)  # the interrupt was consumed


# ------------------------------------------------------------------ output and runner


def test_combine_shots_concatenates_and_writes_an_mp4(pack):
    shots = [image_batch(3, seed=i) for i in range(3)]
    (film, path), ui = call(
        "StoryMemCombineShots",
        shot_1=shots[0],
        shot_3=shots[2],
        shot_2=shots[1],
        fps=8,
        save_video=True,
        filename_prefix="tests/film",
    )
    assert torch.equal(film, torch.cat(shots)) and Path(path).name == "film_00001.mp4"
    assert read_mp4(path).shape == (9, 32, 32, 3) and ui["storymem_video"][0]["subfolder"] == "tests"
    (_, second), _ = call("StoryMemCombineShots", shot_1=shots[0], fps=8, save_video=True, filename_prefix="tests/film")
    assert Path(second).name == "film_00002.mp4"
    with pytest.raises(ConditioningError, match="one size"):
        call(
            "StoryMemCombineShots",
            shot_1=shots[0],
            shot_2=image_batch(1, (16, 16)),
            fps=8,
            save_video=False,
            filename_prefix="x",
        )


def test_story_runner_generates_and_resumes(pack):
    story = call(
        "StoryMemStoryScript",
        script_file="(script text below)",
        script=node("StoryMemStoryScript").INPUT_TYPES()["required"]["script"][1]["default"],
    )[0][0]
    arguments = runner_arguments(pack, story, output_folder="runner")
    (film, bank, path), ui = call("StoryMemStoryRunner", **arguments)
    assert film.shape[1:] == (32, 32, 3) and film.shape[0] == 5 + 5 + 4 and Path(path).is_file()
    assert len(bank) >= 1 and ui["storymem_bank"]
    shown = ui["storymem_video"][0]  # the film plays under the node, as under Combine Shots
    assert host.output_dir() / shown["subfolder"] / shown["filename"] == Path(path) and shown["type"] == "output"
    story_folder = Path(path).parent

    def shots_and_banks() -> dict:
        return {
            name: value for name, value in files_under(story_folder).items() if name.startswith(("shots/", "banks/"))
        }

    finished = shots_and_banks()
    assert any(name.startswith("shots/") for name in finished) and any(name.startswith("banks/") for name in finished)
    (_, _, again), _ = call("StoryMemStoryRunner", **arguments)
    assert again == path and shots_and_banks() == finished  # resumed: no shot or bank regenerated or rewritten
    (_, _, reseeded), _ = call("StoryMemStoryRunner", **(arguments | {"seed": 7}))
    assert Path(reseeded).parent != story_folder and shots_and_banks() == finished
    (_, _, upstream), _ = call("StoryMemStoryRunner", **(arguments | {"memory_positions": "upstream"}))
    assert upstream == path  # the default, spelled out: the same story folder, resumed
    (first_release_film, _, first_release), _ = call(
        "StoryMemStoryRunner", **(arguments | {"memory_positions": "first-release"})
    )
    assert Path(first_release).parent != story_folder and shots_and_banks() == finished  # one film, one placement
    assert first_release_film.shape == film.shape and not torch.equal(first_release_film, film)
    assert json.loads((Path(first_release).parent / "story_record.json").read_text())["memory_positions"] == (
        "first-release"
    )


def test_story_runner_bar_counts_only_the_shots_it_makes(pack, monkeypatch):
    story = call(
        "StoryMemStoryScript",
        script_file="(script text below)",
        script=node("StoryMemStoryScript").INPUT_TYPES()["required"]["script"][1]["default"],
    )[0][0]
    arguments = runner_arguments(pack, story, seed=3, output_folder="runner-bar")
    bars = []

    class Bar:
        def __init__(self, total: int, description: str):
            self.total, self.shown = total, []
            bars.append(self)

        def update(self, value: int, total: int) -> None:
            self.shown.append(value)

    monkeypatch.setattr(host.current(), "progress", Bar)
    call("StoryMemStoryRunner", **arguments)
    call("StoryMemStoryRunner", **(arguments | {"from_shot": len(story.shots)}))
    steps = SHOT["steps"]
    assert [bar.total for bar in bars] == [len(story.shots) * steps, steps]
    assert all(bar.shown[-1] == bar.total for bar in bars)


def test_story_runner_needs_the_t2v_experts_for_a_t2v_first_shot(pack):
    story = call(
        "StoryMemStoryScript",
        script_file="(script text below)",
        script=node("StoryMemStoryScript").INPUT_TYPES()["required"]["script"][1]["default"],
    )[0][0]
    with pytest.raises(StoryMemError, match="t2v_model is not connected"):
        call(
            "StoryMemStoryRunner",
            story=story,
            model=pack.m2v,
            **models(pack),
            first_shot="t2v",
            continuation="mi2v",
            seed=0,
            cfg=3.5,
            fps=8,
            max_size=4,
            fixed=1,
            output_folder="runner",
            from_shot=0,
            **SHOT,
        )


# ------------------------------------------------------------------ values are never mutated


def test_no_node_mutates_its_inputs(pack):
    (frames, bank, last), _ = first_shot(pack)
    story = call(
        "StoryMemStoryScript",
        script_file="(script text below)",
        script=node("StoryMemStoryScript").INPUT_TYPES()["required"]["script"][1]["default"],
    )[0][0]
    calls = [
        (
            "StoryMemLoadLora",
            dict(
                model=pack.i2v,
                lora_high_noise=tiny.STORYMEM_LORA_HIGH,
                lora_low_noise=tiny.STORYMEM_LORA_LOW,
                strength=0.5,
            ),
        ),
        ("StoryMemAddLora", dict(model=pack.m2v, lora=tiny.EXTRA_LORA, strength=1.0, experts="both")),
        ("StoryMemStoryShot", dict(story=story, shot_number=2)),
        ("StoryMemBankFromImages", dict(images=frames, width=32, height=32, max_size=3, fixed=1, memory=bank)),
        ("StoryMemSaveBank", dict(memory=bank, name="banks/mutation")),
        ("StoryMemEditBank", dict(memory=bank, action="pin", index=0)),
        ("StoryMemEditBank", dict(memory=bank, action="remove", index=0)),
        ("StoryMemPreviewBank", dict(memory=bank)),
        ("StoryMemSelectKeyframes", dict(frames=frames, memory=bank, keyframe_encoder=pack.keyframes)),
        (
            "StoryMemShot",
            dict(
                model=pack.m2v,
                **models(pack),
                memory=bank,
                prompt="p",
                cut=False,
                mode="auto-mm2v",
                seed=3,
                cfg=3.5,
                previous_frames=last,
                **(SHOT | {"frames": 9}),
            ),
        ),
        (
            "StoryMemFirstShot",
            dict(model=pack.t2v, **models(pack), memory=bank, prompt="p", seed=3, cfg_high=4.0, cfg_low=3.0, **SHOT),
        ),
        (
            "StoryMemCombineShots",
            dict(shot_1=frames, shot_2=last, fps=8, save_video=True, filename_prefix="tests/mutation"),
        ),
        (
            "StoryMemStoryRunner",
            dict(
                story=story,
                model=pack.m2v,
                **models(pack),
                first_shot="t2v",
                continuation="mi2v",
                seed=0,
                cfg=3.5,
                fps=8,
                max_size=4,
                fixed=1,
                output_folder="runner-mutation",
                from_shot=0,
                t2v_model=pack.t2v,
                **SHOT,
            ),
        ),
    ]
    for name, arguments in calls:
        before = {key: snapshot(value) for key, value in arguments.items()}
        call(name, **arguments)
        after = {key: snapshot(value) for key, value in arguments.items()}
        assert same(before, after), f"{name} changed one of its inputs"


# ------------------------------------------------------------------ frontend


def test_frontend_extension_reads_the_ui_keys_the_nodes_send(pack):
    script = (PACK_ROOT / "js" / "storymem.js").read_text()
    (_, ui_bank), (_, ui_story) = (
        call("StoryMemEmptyBank", max_size=3, fixed=1),
        call(
            "StoryMemStoryScript",
            script_file="(script text below)",
            script=node("StoryMemStoryScript").INPUT_TYPES()["required"]["script"][1]["default"],
        ),
    )
    for key in [*ui_bank, *ui_story]:
        assert f"output?.{key}" in script or f"output.{key}" in script, f"js/storymem.js ignores ui key {key}"
    assert "STORYMEM_BANK" in script and "StoryMemStoryScript" in script


def test_shot_nodes_tell_the_frontend_what_they_made_and_play_it(pack):
    (frames, _, _), ui = memory_shot(pack, reference_bank(), shot_number=2)
    made = {"number": 2, "mode": "m2v", "cut": True, "prompt": "the fox reaches the lighthouse", "frames": 5}
    assert ui["storymem_shot"] == [made]
    video = ui["storymem_video"][0]
    path = host.temp_dir() / video["subfolder"] / video["filename"]
    assert video["type"] == "temp" and read_mp4(path).shape == frames.shape  # the shot itself, small enough to loop
    assert ui["storymem_bank"]  # and the memory strip, as before


def test_errors_inside_a_shot_name_the_shot(pack):
    with pytest.raises(ConditioningError, match=r"^shot 3 \('the fox reaches the lighthouse'\): cut is false"):
        memory_shot(pack, reference_bank(), cut=False, shot_number=3)
    with pytest.raises(StoryMemError, match="^shot 2: prompt is empty"):
        memory_shot(pack, reference_bank(), prompt=" ", shot_number=2)
    with pytest.raises(ConditioningError, match="^shot 1 .*4n\\+1"):  # unconnected: the shot after the memory's newest
        memory_shot(pack, reference_bank(), frames=6)


def test_a_shot_moves_one_bar_from_encoding_to_keyframes_with_live_previews(pack, monkeypatch):
    bars = []

    class Bar:
        def __init__(self, total: int, description: str):
            self.total, self.shown, self.previews = total, [], []
            bars.append(self)

        def update(self, value: int, total: int, preview=None) -> None:
            self.shown.append(value)
            if preview is not None:
                self.previews.append(preview)

    monkeypatch.setattr(host.current(), "progress", Bar)
    memory_shot(pack, reference_bank())
    steps = SHOT["steps"]
    (bar,) = bars
    assert bar.total == steps + 3 and bar.shown == [0, *range(2, steps + 2), steps + 2, steps + 3]
    assert len(bar.previews) == steps
    assert all(p.shape == (16, 1, 4, 4) for p in bar.previews)  # the shot's last latent frame


def test_frontend_extension_is_valid_javascript(tmp_path):
    node_js = __import__("shutil").which("node")
    if node_js is None:
        pytest.skip("node.js is not installed")
    module = tmp_path / "storymem.mjs"
    module.write_text((PACK_ROOT / "js" / "storymem.js").read_text())
    done = subprocess.run([node_js, "--check", str(module)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_keyframe_encoder_takes_hpsv3_when_chosen(pack, monkeypatch):
    (pack.root / "models" / "clip_vision" / "HPSv3.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "hpsv3", None)  # not installed: the node says how to get it
    with pytest.raises(CheckpointError, match="pip install hpsv3"):
        call(
            "StoryMemLoadKeyframeEncoder",
            clip_model=tiny.CLIP_FILE,
            open_clip_name="ViT-B-32-quickgelu",
            aesthetic_head="HPSv3.safetensors",
        )
    (pack.root / "models" / "clip_vision" / "HPSv3.safetensors").unlink()
