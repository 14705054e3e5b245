"""Each speed option computes what the plain path computes, within its precision's tolerance."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from conftest import TINY

from animegen.cli import main
from animegen.config import Config, ModelConfig, OptimConfig, TrainConfig, build_config
from animegen.data.batches import BatchFeeder, upload
from animegen.errors import UserError
from animegen.networks import build_models
from animegen.training.ema import GeneratorEMA, calibrate_bn
from animegen.training.speed_plan import (
    SpeedPlan,
    compile_module,
    use_channels_last,
    use_cuda_graph,
)
from animegen.training.step import cpu_has_native_bf16, make_loss, resolve_amp, train_step

CFG = ModelConfig(arch="seed", image_size=32, width=0.25)


def _setup(seed: int = 0, channels_last: bool = False, fused: bool = False):
    torch.manual_seed(seed)
    netG, netD = build_models(CFG)
    if channels_last:
        netG.to(memory_format=torch.channels_last)
        netD.to(memory_format=torch.channels_last)
    kw = {"fused": True} if fused else {}
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999), **kw)
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999), **kw)
    return netG, netD, optG, optD


def _batch(seed: int = 1, n: int = 8):
    g = torch.Generator().manual_seed(seed)
    real = torch.rand(n, 3, CFG.image_size, CFG.image_size, generator=g) * 2 - 1
    noise = torch.randn(n, CFG.z_dim, 1, 1, generator=g)
    return real, noise


def _grads_after_d_loss(netG, netD, real, noise, amp: str) -> list[torch.Tensor]:
    """D's gradients of the D loss for one batch, without stepping (so they can be compared)."""
    loss = make_loss("bce")
    netD.zero_grad(set_to_none=True)
    ctx = (
        torch.autocast("cpu", dtype=torch.bfloat16) if amp == "bf16" else torch.autocast("cpu", enabled=False)
    )
    with ctx:
        out_real = netD(real).float()
        out_fake = netD(netG(noise).detach()).float()
    (loss.d_real(out_real) + loss.d_fake(out_fake)).backward()
    return [p.grad.detach().clone() for p in netD.parameters()]


def _rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = torch.sqrt(sum(((x.float() - y.float()) ** 2).sum() for x, y in zip(a, b, strict=True)))
    den = torch.sqrt(sum((y.float() ** 2).sum() for y in b))
    return float(num / den)


def test_channels_last_step_matches_contiguous():
    real, noise = _batch()
    a = _setup(channels_last=False)
    b = _setup(channels_last=True)
    sa = train_step(*a, real, noise, make_loss("bce"))
    sb = train_step(
        *b,
        real.contiguous(memory_format=torch.channels_last),
        noise.contiguous(memory_format=torch.channels_last),
        make_loss("bce"),
    )
    torch.testing.assert_close(sa, sb, rtol=1e-5, atol=1e-5)
    # Weights after Adam's first step are compared through gradients instead: Adam divides by
    # |grad|, so a near-zero gradient's last-bit difference can move a weight by up to 2 x lr.
    ga = _grads_after_d_loss(a[0], a[1], real, noise, "off")
    gb = _grads_after_d_loss(
        b[0],
        b[1],
        real.contiguous(memory_format=torch.channels_last),
        noise.contiguous(memory_format=torch.channels_last),
        "off",
    )
    assert _rel(gb, ga) < 1e-4  # fp32 sums in another order


def test_channels_last_is_left_to_inductor_on_cuda_only():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert use_channels_last(TrainConfig(channels_last=True), cuda)
    assert not use_channels_last(TrainConfig(channels_last=True, compile="default"), cuda)
    assert not use_channels_last(TrainConfig(channels_last=True, compile="reduce-overhead"), cuda)
    assert use_channels_last(TrainConfig(channels_last=True, compile="default"), cpu)
    assert not use_channels_last(TrainConfig(channels_last=False), cpu)


def test_cudnn_autotuner_is_turned_on_for_cuda_runs_that_ask(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    o = OptimConfig()

    def applied(t: TrainConfig, device: torch.device) -> bool:
        # Without keeping freed memory: apply() would change glibc's settings for the whole session.
        plan = dataclasses.replace(SpeedPlan.resolve(t, o, device), reuse_memory=False)
        return plan.apply().cudnn_benchmark

    for mode in ("on", "auto"):
        assert not applied(TrainConfig(cudnn_benchmark=mode), cpu)
    assert not applied(TrainConfig(), cuda)
    assert not applied(TrainConfig(cudnn_benchmark="off"), cuda)
    assert torch.backends.cudnn.benchmark is False
    assert applied(TrainConfig(cudnn_benchmark="auto"), cuda)
    assert torch.backends.cudnn.benchmark is True


def test_speed_plan_is_decided_once_and_frozen(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    cuda = torch.device("cuda")
    default = build_config("default")
    plan = SpeedPlan.resolve(default.train, default.optim, cuda)
    assert (plan.cuda_graph, plan.cudnn_benchmark, plan.fused_adam, plan.channels_last) == (True,) * 4
    assert (plan.amp, plan.matmul_deconv_grads, plan.reuse_memory, plan.notes) == ("off", False, False, ())
    assert torch.backends.cudnn.benchmark is False  # deciding changes nothing; apply() does
    with pytest.raises(AttributeError):
        plan.amp = "bf16"  # type: ignore[misc]
    # Two processes: no CUDA graph under auto, and "on" is refused outright.
    assert not SpeedPlan.resolve(default.train, default.optim, cuda, world_size=2).cuda_graph
    with pytest.raises(UserError, match="one process"):
        SpeedPlan.resolve(TrainConfig(cuda_graph="on"), OptimConfig(), cuda, world_size=2)
    seed = build_config("seed")
    cpu_plan = SpeedPlan.resolve(seed.train, seed.optim, torch.device("cpu"))
    assert not (cpu_plan.fused_adam or cpu_plan.matmul_deconv_grads or cpu_plan.cuda_graph)
    on = TrainConfig(cudnn_benchmark="on", cuda_graph="on")
    assert SpeedPlan.resolve(on, OptimConfig(), torch.device("cpu")).notes == (
        "train.cudnn_benchmark: no cuDNN on cpu; ignored",
        "train.cuda_graph: no CUDA graphs on cpu; runs eagerly",
    )


def test_cuda_graph_auto_only_where_a_graph_replays_the_same_step():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    auto, o = TrainConfig(cuda_graph="auto"), OptimConfig()
    assert use_cuda_graph(auto, o, cuda) and not use_cuda_graph(auto, o, cpu)
    assert not use_cuda_graph(auto, o, cuda, processes=2)
    assert not use_cuda_graph(TrainConfig(cuda_graph="auto", compile="default"), o, cuda)
    assert not use_cuda_graph(auto, OptimConfig(augment="translation"), cuda)
    assert not use_cuda_graph(auto, OptimConfig(r1_gamma=0.1), cuda)
    # "on" means it everywhere (eagerly off CUDA; validation refuses the clashes); "off" never.
    assert use_cuda_graph(TrainConfig(cuda_graph="on"), o, cpu)
    assert not use_cuda_graph(TrainConfig(), o, cuda)
    assert build_config("default").train.cuda_graph == "auto"
    assert build_config("seed").train.cuda_graph == "off" == build_config("seed").train.cudnn_benchmark


def test_compile_keeps_torch_compiles_cuda_graphs_off_cuda_steps(monkeypatch: pytest.MonkeyPatch):
    modes = []
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: modes.append(mode) or module)
    net, cuda, cpu = torch.nn.Linear(2, 2), torch.device("cuda"), torch.device("cpu")
    with pytest.raises(UserError, match="--cuda-graph"):
        compile_module(net, "reduce-overhead", cuda)
    for mode, device in (
        ("max-autotune", cuda),
        ("max-autotune", cpu),
        ("reduce-overhead", cpu),
        ("default", cuda),
    ):
        assert compile_module(net, mode, device) is net
    assert modes == ["max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead", None]


@pytest.mark.parametrize(("given", "read"), [(True, "on"), ("false", "off"), ("yes", "on"), ("auto", "auto")])
def test_switches_read_booleans_as_on_and_off(given, read):
    # Older checkpoints saved cuda_graph and cudnn_benchmark as booleans; files and --set may too.
    cfg = Config.from_dict({"train": {"cuda_graph": given, "cudnn_benchmark": given, "fused_adam": given}})
    assert cfg.train.cuda_graph == cfg.train.cudnn_benchmark == cfg.train.fused_adam == read
    cfg.validate()


def test_a_switch_outside_its_modes_is_refused():
    with pytest.raises(UserError, match="train.cuda_graph must be one of auto, on, off, not 'sometimes'"):
        build_config("default", sets=["train.cuda_graph=sometimes"])


def test_bf16_autocast_gradients_within_bf16_precision():
    real, noise = _batch()
    netG, netD, _, _ = _setup()
    fp32 = _grads_after_d_loss(netG, netD, real, noise, "off")
    bf16 = _grads_after_d_loss(netG, netD, real, noise, "bf16")
    # bf16 keeps 8 bits of mantissa: a relative error of a few 1e-3 per op, ~1e-2 over a network.
    assert _rel(bf16, fp32) < 5e-2
    # and it is really a different computation (autocast took effect)
    assert _rel(bf16, fp32) > 1e-5


def test_bf16_training_losses_track_fp32():
    real, noise = _batch()
    a, b = _setup(), _setup()
    la = torch.stack([train_step(*a, real, noise, make_loss("bce"), "off") for _ in range(3)])
    lb = torch.stack([train_step(*b, real, noise, make_loss("bce"), "bf16") for _ in range(3)])
    torch.testing.assert_close(lb, la, rtol=5e-2, atol=2e-2)


def test_fused_adam_matches_foreach_adam():
    real, noise = _batch()
    a = _setup(fused=False)
    b = _setup(fused=True)
    for _ in range(2):
        train_step(*a, real, noise, make_loss("bce"))
        train_step(*b, real, noise, make_loss("bce"))
    for pa, pb in zip(a[1].parameters(), b[1].parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def _adam(netG, netD, o: OptimConfig, t: TrainConfig, device: torch.device):
    """Adam for G and D as a run's speed plan builds them."""
    return SpeedPlan.resolve(t, o, device).optimizers(netG, netD, o)


@pytest.mark.parametrize(
    ("mode", "device", "fused"),
    [
        ("auto", "cpu", True),
        ("on", "cpu", True),
        ("off", "cpu", False),
        ("auto", "cuda", True),
        ("off", "cuda", False),
    ],
)
def test_fused_adam_setting_picks_the_kernel(mode: str, device: str, fused: bool):
    """train.fused_adam decides the kernel; "auto" fuses wherever PyTorch has the kernel."""
    netG, netD, *_ = _setup()
    t = TrainConfig(fused_adam=mode)
    for opt in _adam(netG, netD, build_config("seed").optim, t, torch.device(device)):
        assert bool(opt.param_groups[0]["fused"]) is fused


def test_fused_adam_mode_is_validated():
    with pytest.raises(UserError, match="train.fused_adam"):
        build_config("seed", sets=["train.fused_adam=always"])
    netG, netD, *_ = _setup()
    optim, meta = build_config("seed").optim, torch.device("meta")
    with pytest.raises(UserError, match="no fused Adam on meta"):
        _adam(netG, netD, optim, TrainConfig(fused_adam="on"), meta)
    # "auto" falls back to PyTorch's default loop there
    for opt in _adam(netG, netD, optim, TrainConfig(), meta):
        assert not opt.param_groups[0]["fused"]


def test_amp_auto_follows_native_bf16(monkeypatch: pytest.MonkeyPatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_bf16": False})
    assert not cpu_has_native_bf16()
    assert resolve_amp("auto", cpu) == "off"
    assert resolve_amp("bf16", cpu) == "bf16"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    assert resolve_amp("auto", cpu) == "bf16"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    assert resolve_amp("auto", cpu) == "bf16"
    assert resolve_amp("off", cpu) == "off"
    # The tutorial's arithmetic stays fp32; the default and demo presets leave the choice to "auto".
    assert build_config("seed").train.amp == "off"
    assert build_config("default").train.amp == "auto"
    assert build_config("demo").train.amp == "auto"
    # On a GPU bf16 measured no faster at batch 64 and scored worse: "auto" keeps fp32 there.
    assert resolve_amp("auto", torch.device("cuda")) == "off"
    assert resolve_amp("bf16", torch.device("cuda")) == "bf16"


def test_generator_ema_matches_torch_averaged_model():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    netG, *_ = _setup()
    ours = GeneratorEMA(netG, 0.9, warmup=False)
    theirs = AveragedModel(netG, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    real, noise = _batch()
    for _ in range(4):
        with torch.no_grad():
            for p in netG.parameters():
                p.add_(torch.randn_like(p) * 0.01)
            netG(noise)  # moves the BatchNorm running statistics
        ours.update_parameters(netG)
        theirs.update_parameters(netG)
    assert int(ours.n_averaged) == 4
    for a, b in zip(ours.module.parameters(), theirs.module.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    # the average is not simply the current weights
    mine = ours.module.state_dict()
    assert not torch.equal(mine["layer1.0.weight"], netG.state_dict()["layer1.0.weight"])
    # G's running statistics are not averaged in: they fit G's weights, not the average's
    assert torch.equal(mine["layer1.1.running_mean"], torch.zeros_like(mine["layer1.1.running_mean"]))


def test_calibrated_bn_statistics_are_those_of_the_averaged_generator():
    netG, *_ = _setup()
    ema = GeneratorEMA(netG, 0.5, warmup=False)
    noise = torch.randn(48, netG.z_dim, 1, 1)
    for _ in range(3):
        with torch.no_grad():
            for p in netG.parameters():
                p.add_(torch.randn_like(p) * 0.05)
            netG(noise * 3)  # G's running statistics drift far from anything the average produces
        ema.update_parameters(netG)
    calibrate_bn(ema.module, noise, batch=16)
    bn = ema.module.layer1[1]
    with torch.no_grad():
        h = ema.module.layer1[0](noise)  # the first BatchNorm's input
    per_batch_mean = torch.stack([c.mean(dim=(0, 2, 3)) for c in h.split(16)]).mean(0)
    torch.testing.assert_close(bn.running_mean, per_batch_mean, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(bn.running_mean, netG.layer1[1].running_mean, atol=1e-3)
    assert ema.module.training  # update_bn restores the mode it found
    # Eval mode now draws what batch statistics over the same noise draw, up to the variance's
    # per-batch average.
    with torch.no_grad():
        ema.module.eval()
        a = ema.module(noise)
        ema.module.train()
        b = torch.cat([ema.module(c) for c in noise.split(16)])
    assert (a - b).abs().mean() < 0.05


def test_ema_warmup_follows_the_generator_early():
    netG, *_ = _setup()
    ema = GeneratorEMA(netG, 0.999)
    assert ema.decay_at(1) == pytest.approx(2 / 11)
    assert ema.decay_at(100_000) == 0.999
    ema.update_parameters(netG)
    with torch.no_grad():
        for p in netG.parameters():
            p.add_(1.0)
    ema.update_parameters(netG)
    # second update: decay 2/11, so the average moved 9/11 of the way
    w = ema.module.state_dict()["layer1.0.weight"]
    g = netG.state_dict()["layer1.0.weight"]
    torch.testing.assert_close(w, g - 2 / 11, rtol=0, atol=1e-5)


def test_upload_keeps_values_and_device():
    t = torch.arange(10)
    assert torch.equal(upload(t, torch.device("cpu")), t)


def test_feeder_trains_only_on_given_rows():
    import numpy as np

    images = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1).repeat(3, 1).repeat(4, 2).repeat(4, 3)
    rows = np.array([1, 3, 5, 7, 9, 11, 13, 15])
    feeder = BatchFeeder(images, 4, torch.device("cpu"), seed=0, indices=rows)
    assert len(feeder) == 2
    seen = []
    for epoch in range(3):
        for batch in feeder.epoch(epoch):
            seen += ((batch[:, 0, 0, 0] + 1) * 127.5).round().long().tolist()
    assert set(seen) == set(rows.tolist())


@pytest.mark.slow
def test_compiled_step_matches_eager():
    """torch.compile (inductor, on the CPU here) computes the same gradients and step as eager mode."""
    real, noise = _batch()
    a = _setup()
    b = copy.deepcopy(a[:2])
    cG, cD = torch.compile(b[0]), torch.compile(b[1])
    ga = _grads_after_d_loss(a[0], a[1], real, noise, "off")
    gb = _grads_after_d_loss(cG, cD, real, noise, "off")
    # Inductor fuses BatchNorm's reductions and sums in its own order: measured 5e-4 here, far
    # below bf16's ~1e-2, and a wrong graph would be off by order 1.
    assert _rel(gb, ga) < 2e-3
    optG = torch.optim.Adam(b[0].parameters(), lr=2e-4, betas=(0.5, 0.999))
    optD = torch.optim.Adam(b[1].parameters(), lr=2e-4, betas=(0.5, 0.999))
    sa = train_step(*a, real, noise, make_loss("bce"))
    sb = train_step(cG, cD, optG, optD, real, noise, make_loss("bce"))
    torch.testing.assert_close(sb, sa, rtol=1e-4, atol=1e-4)


def test_train_names_the_speed_settings_in_force(image_folder, tmp_path, capsys):
    loud = [a for a in TINY if a != "--quiet"]
    argv = ["train", "--data", str(image_folder), "--max-steps", "2", *loud, "--set", "train.threads=1"]
    assert (
        main(
            [*argv, "--preset", "seed", "--run-dir", str(tmp_path / "a"), "--set", "train.reuse_memory=false"]
        )
        == 0
    )
    assert "\ndevice: cpu, 1 thread; batch 8, fp32, unfused Adam\n" in capsys.readouterr().err
    assert (
        main([*argv, "--run-dir", str(tmp_path / "b"), "--amp", "off", "--set", "train.cudnn_benchmark=true"])
        == 0
    )
    err = capsys.readouterr().err
    assert "train.cudnn_benchmark: no cuDNN on cpu; ignored" in err
    assert "\ndevice: cpu, 1 thread; batch 8, fp32, channels_last, fused Adam, freed memory kept\n" in err
