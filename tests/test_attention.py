"""Which attention kernel runs where, and the flash-attn op's behaviour under torch.compile (CPU stand-ins)."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from storymem_core.wan import attention as attention_module


def sdpa_flash(q, k, v):
    """A flash_attn_func stand-in: [B, L, N, D] in and out, like the real ones, plus a log-sum-exp."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    return out, None


@pytest.fixture
def gpu(monkeypatch):
    """Pretend to be a CUDA GPU of a given compute capability major, with the given flash-attn packages."""

    def make(major: int, installed: list[str]):
        kernels = {kernel.name: kernel for kernel in attention_module.FLASH_KERNELS}
        monkeypatch.setattr(attention_module, "INSTALLED", tuple((kernels[name], sdpa_flash) for name in installed))
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(major=major))
        return torch.device("cuda")

    return make


@pytest.mark.parametrize(
    "major, installed, expected",
    [
        (9, ["flash-attn 4", "flash-attn 3", "flash-attn 2"], "flash-attn 4"),
        (9, ["flash-attn 3", "flash-attn 2"], "flash-attn 3"),
        (9, ["flash-attn 2"], "torch SDPA, cuDNN first"),  # cuDNN beats flash-attn 2 on Hopper
        (9, [], "torch SDPA, cuDNN first"),
        (10, ["flash-attn 4", "flash-attn 2"], "flash-attn 4"),
        (8, ["flash-attn 4", "flash-attn 3", "flash-attn 2"], "flash-attn 2"),
        (8, ["flash-attn 3"], "torch SDPA"),
        (12, [], "torch SDPA"),
    ],
)
def test_attention_backend_is_the_fastest_installed_kernel_for_the_gpu(gpu, major, installed, expected):
    assert attention_module.backend_name(gpu(major, installed)) == expected


def test_attention_backend_on_cpu_is_torch_sdpa():
    assert attention_module.backend_name(torch.device("cpu")) == "torch SDPA"


def test_flash_attention_op_matches_sdpa_and_compiles_into_one_graph(gpu, monkeypatch):
    gpu(9, ["flash-attn 4"])
    q, k, v = (torch.randn(1, 24, 2, 8, dtype=torch.bfloat16) for _ in range(3))
    expected = sdpa_flash(q, k, v)[0]
    assert torch.equal(attention_module.flash_attention(q, k, v), expected)

    def block(q, k, v):
        return attention_module.flash_attention(q * 2, k, v) + 1

    graphs = []

    def count_graphs(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    compiled = torch.compile(block, backend=count_graphs, fullgraph=True)
    assert torch.equal(compiled(q, k, v), block(q, k, v))
    assert len(graphs) == 1


def test_a_broken_flash_attn_install_is_skipped_with_a_warning(monkeypatch, caplog):
    def broken_import(name):
        raise OSError("libcuda.so.1: cannot open shared object file")

    monkeypatch.setattr(attention_module.importlib, "import_module", broken_import)
    with caplog.at_level("WARNING"):
        assert attention_module._import("flash_attn.cute") is None
    assert "flash_attn.cute is installed but does not import" in caplog.text


def test_torch_without_sdpa_priorities_keeps_its_own_kernel_order(gpu, monkeypatch):
    device = gpu(9, [])
    monkeypatch.setattr(attention_module, "SDPA_TAKES_PRIORITY", False)
    assert attention_module.sdpa_priority(device) is None
    assert attention_module.backend_name(device) == "torch SDPA"
