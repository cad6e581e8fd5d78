"""Speed options users feel: a guide of exactly 1 runs one DiT forward per step, per expert; the lightx2v preset samples
4 distilled steps with its LoRAs stacked on the StoryMem LoRA."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import SHOT, call, cli_plan, runner_arguments, story_script
from torch import nn

from nodes import host
from storymem_core import tiny_models as tiny
from storymem_core.commands.cli import main
from storymem_core.errors import StoryMemError
from storymem_core.lora import apply_loras, load_lora
from storymem_core.memory import MemoryBank
from storymem_core.model_roles import find_model_files, required_roles
from storymem_core.pipeline import StoryFolder, StoryOptions
from storymem_core.presets import preset_roles
from storymem_core.sampling import ExpertPair, SamplerSettings, denoise, seeded_noise
from storymem_core.story import loads_story
from storymem_core.story_models import LoadOptions, load_story_models
from storymem_core.tiny_models import DIT, write_speed_loras, write_tiny_models
from storymem_core.wan.dit import DiTConfig, WanDiT
from storymem_core.weights.loading import load_dit


class CountingExpert(nn.Module):
    """A DiT that counts its forwards (one per prompt pass)."""

    def __init__(self, dit: WanDiT):
        super().__init__()
        self.dit = dit
        self.calls = 0

    def forward(self, *args, **kwargs) -> torch.Tensor:
        self.calls += 1
        return self.dit(*args, **kwargs)


def tiny_expert(seed: int) -> CountingExpert:
    torch.manual_seed(seed)
    return CountingExpert(WanDiT(DiTConfig.from_dict({**DIT, "in_dim": 16})).eval())


def sample(settings: SamplerSettings) -> tuple[torch.Tensor, CountingExpert, CountingExpert]:
    high, low = tiny_expert(1), tiny_expert(2)
    noise, generator = seeded_noise((16, 2, 4, 4), settings.seed)
    context, context_null = torch.randn(5, DIT["text_dim"]), torch.randn(3, DIT["text_dim"])
    latent = denoise(ExpertPair(high, low), noise, generator, context, context_null, settings)
    return latent, high, low


@pytest.mark.parametrize("batch_cfg", [False, True])
def test_guide_one_runs_one_forward_per_step_in_each_expert_independently(batch_cfg):
    # boundary 0.9 with shift 4: the first 2 of 4 steps are the high expert's
    settings = SamplerSettings(
        steps=4, shift=4.0, solver="euler", boundary=0.9, guide_high=3.5, guide_low=1.0, batch_cfg=batch_cfg
    )
    _, high, low = sample(settings)
    high_calls = 1 if batch_cfg else 2  # a batch of two is one call
    assert (high.calls, low.calls) == (2 * high_calls, 2)


def test_guide_one_gives_the_shot_that_both_passes_give():
    settings = SamplerSettings(steps=3, solver="unipc", guide_high=1.0, guide_low=1.0)
    one_pass, high, low = sample(settings)
    # a guide a hair above 1 takes the two-pass path: the same shot within float32 rounding, at twice the forwards
    two_passes, high_both, low_both = sample(
        SamplerSettings(steps=3, solver="unipc", guide_high=1.0000001, guide_low=1.0000001)
    )
    torch.testing.assert_close(one_pass, two_passes, rtol=1e-5, atol=1e-5)
    assert high.calls + low.calls == 3
    assert high_both.calls + low_both.calls == 6


# ------------------------------------------------------------------ the lightx2v preset

TINY_STORY = ["--size", "32x32", "--frames", "5", "--device", "cpu"]


@pytest.fixture(scope="module")
def speed_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_tiny_models(root)
    write_speed_loras(root)
    return root


def story_argv(tmp_path: Path, models: Path, *extra: str) -> list[str]:
    return [
        "story",
        str(story_script(tmp_path, 2)),
        "--models-dir",
        str(models),
        "--out",
        str(tmp_path / "out"),
        *TINY_STORY,
        *extra,
    ]


def test_lightx2v_preset_samples_4_euler_steps_of_one_forward_switching_experts_after_step_2(
    tmp_path, speed_models, monkeypatch
):
    calls = []
    forward = WanDiT.forward

    def counted(self, x, t, *args, **kwargs):
        calls.append((self, int(t[0])))
        return forward(self, x, t, *args, **kwargs)

    monkeypatch.setattr(WanDiT, "forward", counted)
    assert main(story_argv(tmp_path, speed_models, "--preset", "lightx2v")) == 0
    assert StoryFolder(tmp_path / "out").film.is_file()
    t2v_shot, m2v_shot = calls[:4], calls[4:]
    assert len(m2v_shot) == 4  # 2 shots x 4 steps x 1 forward
    for shot in (t2v_shot, m2v_shot):
        # shift 5: sigmas 1, 0.9375, 0.8333, 0.625; the boundary (0.875 T2V, 0.9 M2V) falls after step 2
        assert [t for _, t in shot] == [1000, 937, 833, 625]
        experts = [expert for expert, _ in shot]
        assert experts[0] is experts[1] and experts[2] is experts[3] and experts[1] is not experts[2]


def test_lightx2v_preset_sets_the_published_sampler_settings_and_flags_still_override(tmp_path):
    options = cli_plan(tmp_path, "--preset", "lightx2v").options
    for settings, boundary in ((options.m2v, 0.9), (options.t2v, 0.875)):
        assert (settings.steps, settings.shift, settings.solver, settings.guide_high, settings.guide_low) == (
            4,
            5.0,
            "euler",
            1.0,
            1.0,
        )
        assert settings.boundary == boundary
    overridden = cli_plan(tmp_path, "--preset", "lightx2v", "--steps", "6", "--solver", "unipc", "--guide", "2").options
    assert (overridden.m2v.steps, overridden.m2v.solver, overridden.m2v.guide_low, overridden.m2v.shift) == (
        6,
        "unipc",
        2.0,
        5.0,
    )
    plain = cli_plan(tmp_path).options
    assert plain.m2v == StoryOptions().m2v and plain.t2v == StoryOptions().t2v


def merged_expert(model_file: Path, loras: list[Path]) -> WanDiT:
    expert = load_dit(model_file, torch.float32, keep_fp8=False)
    apply_loras(expert, [load_lora(path) for path in loras], mode="merge")
    return expert


def test_lightx2v_preset_stacks_its_loras_on_the_storymem_lora(speed_models):
    options = StoryOptions(first_shot="t2v", size_wh=(32, 32), frames=5)
    roles = required_roles("t2v", None) + preset_roles("lightx2v", "t2v")
    files = find_model_files(speed_models, roles)
    models = load_story_models(
        files, options, LoadOptions(device=torch.device("cpu"), quality="off", preset="lightx2v")
    )
    expected = {
        (models.m2v, "high"): ("i2v_high", ["lora_high", "lightx2v_i2v_high"]),
        (models.m2v, "low"): ("i2v_low", ["lora_low", "lightx2v_i2v_low"]),
        (models.t2v, "high"): ("t2v_high", ["lightx2v_t2v_high"]),
        (models.t2v, "low"): ("t2v_low", ["lightx2v_t2v_low"]),
    }
    torch.manual_seed(0)
    for (pair, expert), (model_role, lora_roles) in expected.items():
        dit = getattr(pair, expert)
        x, y = (
            torch.randn(1, 16, 2, 4, 4),
            torch.randn(1, dit.config.in_dim - 16, 2, 4, 4) if dit.config.in_dim > 16 else None,
        )
        t, context = torch.tensor([500.0]), torch.randn(1, 4, dit.config.text_dim)
        with torch.no_grad():
            loaded = dit(x, t, context, y)
            reference = merged_expert(files[model_role], [files[role] for role in lora_roles])(x, t, context, y)
            without_speed = merged_expert(files[model_role], [files[role] for role in lora_roles[:-1]])(
                x, t, context, y
            )
        torch.testing.assert_close(loaded, reference, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(loaded, without_speed, atol=1e-3)  # the speed LoRA really acts


def test_lightx2v_preset_names_each_missing_lora_and_its_folder(tmp_path, capsys):
    models = tmp_path / "models"
    write_tiny_models(models)
    assert main(story_argv(tmp_path, models, "--preset", "lightx2v")) == 2
    error = capsys.readouterr().err
    for name in (
        "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise",
        "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise",
        "wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise",
        "wan2.2_t2v_lightx2v_4steps_lora_v1.1_low_noise",
    ):
        assert f"loras/{name}.safetensors" in error
    assert "Comfy-Org/Wan_2.2_ComfyUI_Repackaged" in error and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def speed_host(tmp_path_factory, speed_models):
    """The standalone host over a models folder holding the speed LoRAs, and the loaded experts."""
    root = tmp_path_factory.mktemp("host")
    previous = host.use(host.StandaloneHost(speed_models, root / "output"))
    try:
        i2v = call(
            "StoryMemLoadExperts",
            high_noise_model=tiny.I2V_HIGH,
            low_noise_model=tiny.I2V_LOW,
            weight_dtype="fp32",
            offload="none",
        )[0][0]
        yield SimpleNamespace(
            m2v=call(
                "StoryMemLoadLora",
                model=i2v,
                lora_high_noise=tiny.STORYMEM_LORA_HIGH,
                lora_low_noise=tiny.STORYMEM_LORA_LOW,
                strength=1.0,
            )[0][0],
            t2v=call(
                "StoryMemLoadExperts",
                high_noise_model=tiny.T2V_HIGH,
                low_noise_model=tiny.T2V_LOW,
                weight_dtype="fp32",
                offload="none",
            )[0][0],
            text=call("StoryMemLoadTextEncoder", text_encoder=tiny.TEXT_ENCODER, weight_dtype="auto")[0][0],
            vae=call("StoryMemLoadVAE", vae=tiny.VAE_FILE, weight_dtype="fp32")[0][0],
            keyframes=call(
                "StoryMemLoadKeyframeEncoder", clip_model=tiny.CLIP_FILE, open_clip_name="unused", aesthetic_head="none"
            )[0][0],
        )
    finally:
        host.use(previous)


@pytest.fixture
def counted_forwards(monkeypatch) -> list[int]:
    calls = []
    forward = WanDiT.forward

    def counted(self, x, t, *args, **kwargs):
        calls.append(int(t[0]))
        return forward(self, x, t, *args, **kwargs)

    monkeypatch.setattr(WanDiT, "forward", counted)
    return calls


def test_shot_nodes_with_the_lightx2v_preset_sample_4_steps_of_one_forward_and_leave_the_model_as_given(
    speed_host, counted_forwards
):
    shared = dict(
        text_encoder=speed_host.text,
        vae=speed_host.vae,
        keyframe_encoder=speed_host.keyframes,
        **(SHOT | {"steps": 40}),  # the widgets' defaults: the preset fills them
        preset="lightx2v",
    )
    empty = MemoryBank((), max_size=4, fixed=1)
    (_, bank, _), _ = call(
        "StoryMemFirstShot",
        model=speed_host.t2v,
        memory=empty,
        prompt="a fox runs",
        seed=0,
        cfg_high=4.0,
        cfg_low=3.0,
        **(shared | {"shift": 12.0}),
    )
    call(
        "StoryMemShot",
        model=speed_host.m2v,
        memory=bank,
        prompt="the fox rests",
        cut=True,
        mode="auto-mi2v",
        seed=1,
        cfg=3.5,
        **shared,
    )
    assert counted_forwards == [1000, 937, 833, 625] * 2  # steps, cfg, shift and solver left at defaults: the preset's
    assert [lora.name for lora in speed_host.m2v.loras] == [f"{tiny.STORYMEM_LORA_HIGH} + {tiny.STORYMEM_LORA_LOW}"]


def two_shot_story():
    script = {"story_name": "fox", "story_overview": "A fox.",
              "scenes": [{"scene_num": 1, "video_prompts": ["a fox runs", "the fox rests"], "cut": [True, True]}]}
    return loads_story(json.dumps(script))


def test_story_runner_with_the_lightx2v_preset_samples_4_steps_per_shot(speed_host, counted_forwards):
    story = two_shot_story()
    call("StoryMemStoryRunner", **runner_arguments(speed_host, story, continuation="m2v", preset="lightx2v", steps=40))
    assert counted_forwards == [1000, 937, 833, 625] * 2


def test_a_widget_the_user_changed_wins_over_the_preset(speed_host, counted_forwards):
    """One rule with the command line's: the steps set (2, not the default 40) stay, the preset fills cfg 1 (one
    forward a step), shift 5 and euler."""
    story = two_shot_story()
    call("StoryMemStoryRunner", **runner_arguments(speed_host, story, continuation="m2v", preset="lightx2v", steps=2))
    assert counted_forwards == [1000, 833] * 2


def test_shot_node_preset_names_the_missing_lora_files(speed_host, tmp_path):
    previous = host.use(host.StandaloneHost(tmp_path / "empty", tmp_path / "output"))
    try:
        with pytest.raises(
            StoryMemError, match=r"loras/wan2\.2_i2v_lightx2v_4steps_lora_v1_high_noise\.safetensors.*low_noise"
        ):
            call(
                "StoryMemShot",
                model=speed_host.m2v,
                text_encoder=speed_host.text,
                vae=speed_host.vae,
                keyframe_encoder=speed_host.keyframes,
                memory=MemoryBank((), max_size=4, fixed=1),
                prompt="p",
                cut=True,
                mode="m2v",
                seed=1,
                cfg=3.5,
                **SHOT,
                preset="lightx2v",
            )
    finally:
        host.use(previous)
