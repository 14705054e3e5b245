"""G's transposed convolutions with matmul gradients: the same layer, the same numbers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from test_train_resume import _assert_identical as assert_identical
from test_train_resume import _weights as weights
from torch import nn

from animegen import deconv_grad
from animegen.cli import main
from animegen.config import ModelConfig, preset
from animegen.deconv_grad import (
    MatmulGradConvTranspose2d,
    _ConvTransposeByMatmul,
    swap_in_matmul_layers,
)
from animegen.networks import build_models
from animegen.training.speed_plan import SpeedPlan
from animegen.training.step import make_loss, train_step

BF16 = dict(device_type="cpu", dtype=torch.bfloat16, cache_enabled=False)


@pytest.mark.parametrize("matmul_forward", [False, True])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize(
    "cin, cout, size, kernel, stride, padding",
    [(16, 8, 4, 4, 2, 1), (6, 5, 1, 4, 1, 0), (4, 3, 3, 5, 3, 1), (5, 7, 2, 4, 2, 1)],
)
def test_matmul_route_equals_conv_transpose2d(
    matmul_forward, channels_last, cin, cout, size, kernel, stride, padding
):
    g = torch.Generator().manual_seed(cin * 100 + size)
    x = torch.randn(3, cin, size, size, dtype=torch.float64, generator=g)
    w = torch.randn(cin, cout, kernel, kernel, dtype=torch.float64, generator=g)
    if channels_last:
        x, w = (t.contiguous(memory_format=torch.channels_last) for t in (x, w))
    x.requires_grad_()
    w.requires_grad_()
    y = _ConvTransposeByMatmul.apply(x, w, (stride, stride), (padding, padding), matmul_forward)
    y0 = F.conv_transpose2d(x, w, None, stride, padding)
    grad = torch.randn(y0.shape, dtype=torch.float64, generator=g)
    got = torch.autograd.grad(y, (x, w), grad)
    want = torch.autograd.grad(y0, (x, w), grad)
    if matmul_forward:
        torch.testing.assert_close(y, y0, rtol=1e-12, atol=1e-12)
        assert y.is_contiguous(memory_format=torch.channels_last)
    else:
        torch.testing.assert_close(y, y0, rtol=0, atol=0)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # The weight gradient comes out in a channels_last weight's own layout (no copy to accumulate it).
    assert got[1].is_contiguous(memory_format=torch.channels_last)


def test_matmul_gradients_pass_gradcheck():
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    for matmul_forward in (False, True):
        route = lambda x, w: _ConvTransposeByMatmul.apply(x, w, (2, 2), (1, 1), matmul_forward)  # noqa: E731, B023
        assert torch.autograd.gradcheck(route, (x, w))


def _layer(cin: int = 64, cout: int = 32) -> nn.ConvTranspose2d:
    torch.manual_seed(0)
    return nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False).to(memory_format=torch.channels_last)


def test_the_matmul_route_is_taken_only_for_bf16_training_on_a_cpu_over_small_inputs():
    fast = MatmulGradConvTranspose2d.replacing(_layer())
    small = torch.randn(2, 64, 4, 4).contiguous(memory_format=torch.channels_last)
    large = torch.randn(2, 64, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.autocast(**BF16):
        assert type(fast(small).grad_fn).__name__ == "_ConvTransposeByMatmulBackward"
        assert type(fast(large).grad_fn).__name__ == "ConvolutionBackward0"
        with torch.no_grad():
            assert fast(small).grad_fn is None
    # fp32 keeps PyTorch's own kernels unless the layer was swapped in for fp32 too (AVX2 kernels).
    assert type(fast(small).grad_fn).__name__ == "ConvolutionBackward0"


def test_fp32_products_run_only_where_swapped_for_them_and_wide_enough(monkeypatch):
    monkeypatch.setattr(deconv_grad, "MIN_IN_CHANNELS_FP32", 64)
    fast = MatmulGradConvTranspose2d.replacing(_layer())
    fast.fp32 = True
    narrow = MatmulGradConvTranspose2d.replacing(_layer(cin=32))
    narrow.fp32 = True
    x = torch.randn(2, 64, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = fast(x)
    assert type(y.grad_fn).__name__ == "_ConvTransposeByMatmulBackward" and y.dtype == torch.float32
    assert type(narrow(torch.randn(2, 32, 4, 4)).grad_fn).__name__ == "ConvolutionBackward0"
    assert type(fast(torch.randn(2, 64, 8, 8)).grad_fn).__name__ == "ConvolutionBackward0"
    # In fp32 the output (a product too) and both gradients are oneDNN's to fp32 rounding.
    plain = copy.deepcopy(_layer())
    y0 = plain(x)
    grad = torch.randn(y0.shape, generator=torch.Generator().manual_seed(2))
    got = torch.autograd.grad(y, (x, fast.weight), grad)
    want = torch.autograd.grad(y0, (x, plain.weight), grad)
    torch.testing.assert_close(y, y0, rtol=1e-4, atol=1e-6)
    assert not torch.equal(y, y0)  # the forward really was the product, not oneDNN's kernel
    with torch.no_grad():  # sampling draws through the product as well
        torch.testing.assert_close(fast(x), y.detach(), rtol=0, atol=0)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("capability, fp32", [("AVX2", True), ("AVX512", False)])
def test_fp32_products_follow_the_kernels_pytorch_runs(monkeypatch, capability, fp32):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    cfg = preset("default")
    netG, netD = build_models(cfg.model)
    SpeedPlan.resolve(cfg.train, cfg.optim, torch.device("cpu")).place(netG, netD)
    swapped = [m for m in netG.modules() if isinstance(m, MatmulGradConvTranspose2d)]
    # 1024 -> 512 over 4x4, and 512 -> 256 (over 8x8, so it keeps oneDNN's kernels when it runs)
    assert [m.in_channels for m in swapped] == [1024, 512]
    assert [m.uses_products(bf16=False) for m in swapped] == [fp32, False]
    assert all(m.uses_products(bf16=True) for m in swapped)
    # The seed preset keeps the tutorial's kernels, so its fp32 step stays the tutorial's bit for bit.
    seed = preset("seed")
    netG, netD = build_models(seed.model)
    SpeedPlan.resolve(seed.train, seed.optim, torch.device("cpu")).place(netG, netD)
    assert not any(isinstance(m, MatmulGradConvTranspose2d) for m in netG.modules())


def test_bf16_matmul_gradients_are_as_accurate_as_onednn():
    layer = _layer()
    fast = MatmulGradConvTranspose2d.replacing(copy.deepcopy(layer))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 64, 4, 4, generator=g).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(8, 32, 8, 8, generator=g)

    def grads(net: nn.Module, amp: bool) -> tuple[torch.Tensor, ...]:
        xx = x.clone().requires_grad_()
        with torch.autocast(**BF16, enabled=amp):
            y = net(xx)
        gx, gw = torch.autograd.grad(y, (xx, net.weight), grad.to(y.dtype))
        return tuple(t.detach().double() for t in (y, gx, gw))

    ref_layer = copy.deepcopy(layer).double()
    xx = x.double().requires_grad_()
    y = ref_layer(xx)
    exact = (y.detach(), *torch.autograd.grad(y, (xx, ref_layer.weight), grad.double()))
    onednn, matmul = grads(layer, amp=True), grads(fast, amp=True)
    for o, m, e in zip(onednn, matmul, exact, strict=True):
        err_o = float((o - e).norm() / e.norm())
        err_m = float((m - e).norm() / e.norm())
        assert 1e-4 < err_o < 1e-2  # bf16 really ran
        assert err_m < 1.1 * err_o


def test_swap_shares_parameters_and_keeps_checkpoint_keys_and_outputs(monkeypatch):
    monkeypatch.setattr(deconv_grad, "MIN_IN_CHANNELS", 128)
    torch.manual_seed(0)
    netG, _ = build_models(ModelConfig(arch="seed", image_size=32, width=0.5))
    plain = copy.deepcopy(netG)
    params = [id(p) for p in netG.parameters()]
    # G is 100 -> 256 -> 128 -> 64 -> 3: the two layers with >= 128 input channels after the first
    assert swap_in_matmul_layers(netG) == 2
    assert [type(b[0]) is MatmulGradConvTranspose2d for b in netG.children()] == [False, True, True, False]
    assert [id(p) for p in netG.parameters()] == params
    assert list(netG.state_dict()) == list(plain.state_dict())
    z = torch.randn(4, 100, 1, 1)
    with torch.autocast(**BF16):
        torch.testing.assert_close(netG(z), plain(z), rtol=0, atol=0)


def test_bf16_training_losses_track_the_plain_layers(monkeypatch):
    monkeypatch.setattr(deconv_grad, "MIN_IN_CHANNELS", 128)
    cfg = ModelConfig(arch="seed", image_size=32, width=0.5)

    def run(swap: bool) -> torch.Tensor:
        torch.manual_seed(0)
        netG, netD = build_models(cfg)
        if swap:
            swap_in_matmul_layers(netG)
        optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
        optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
        g = torch.Generator().manual_seed(1)
        real = torch.rand(8, 3, 32, 32, generator=g) * 2 - 1
        noise = torch.randn(8, 100, 1, 1, generator=g)
        return torch.stack(
            [train_step(netG, netD, optG, optD, real, noise, make_loss("bce"), "bf16") for _ in range(3)]
        )

    plain, fast = run(False), run(True)
    torch.testing.assert_close(fast[0], plain[0], rtol=0, atol=0)  # the first forward is the same
    torch.testing.assert_close(fast, plain, rtol=5e-2, atol=2e-2)


def test_train_names_matmul_gradients_when_they_run(image_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(deconv_grad, "MIN_IN_CHANNELS", 1)
    loud = [a for a in TINY if a != "--quiet"]
    argv = ["train", "--data", str(image_folder), "--max-steps", "2", *loud, "--set", "train.threads=1"]
    assert main([*argv, "--run-dir", str(tmp_path / "a"), "--amp", "bf16"]) == 0
    assert "bf16 autocast, channels_last, matmul deconv gradients, fused Adam" in capsys.readouterr().err
    off = ["--set", "train.matmul_deconv_grads=false"]
    assert main([*argv, "--run-dir", str(tmp_path / "b"), "--amp", "bf16", *off]) == 0
    assert "matmul deconv gradients" not in capsys.readouterr().err
    assert main([*argv, "--run-dir", str(tmp_path / "c"), "--amp", "off"]) == 0
    assert "matmul deconv gradients" not in capsys.readouterr().err
    # fp32 with AVX2 kernels takes them too, in layers >= MIN_IN_CHANNELS_FP32 wide.
    monkeypatch.setattr(deconv_grad, "MIN_IN_CHANNELS_FP32", 1)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert main([*argv, "--run-dir", str(tmp_path / "d"), "--amp", "off"]) == 0
    assert "fp32, channels_last, matmul deconv gradients, fused Adam" in capsys.readouterr().err


@pytest.mark.parametrize("amp", ["bf16", "off"])
def test_resume_with_matmul_gradients_is_bit_identical(image_folder, tmp_path, monkeypatch, amp):
    monkeypatch.setattr(deconv_grad, "MIN_IN_CHANNELS", 1)
    monkeypatch.setattr(deconv_grad, "MIN_IN_CHANNELS_FP32", 1)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    common = ["--data", str(image_folder), "--seed", "5", "--amp", amp, *TINY]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", *common, "--epochs", "2", "--run-dir", str(full)]) == 0
    assert main(["train", *common, "--epochs", "2", "--max-steps", "3", "--run-dir", str(part)]) == 0
    assert main(["train", "--resume", str(part), "--set", "train.max_steps=none", "--quiet"]) == 0
    assert_identical(weights(full)[0], weights(part)[0])
