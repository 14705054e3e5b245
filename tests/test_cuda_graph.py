"""train.cuda_graph: the graphed step's plumbing gives the plain step's results, and clashes are refused.

The capture itself needs a CUDA device; here the same GraphedStep path runs with its static input
and output buffers but executes eagerly, which is what a CPU run with --cuda-graph does.
"""

from __future__ import annotations

import torch
from conftest import TINY

from animegen.cli import main
from animegen.config import Config, ModelConfig
from animegen.errors import UserError
from animegen.models import build_models
from animegen.training import checkpoint as ckpt
from animegen.training.graphed import GraphedStep
from animegen.training.step import make_loss, train_step

CFG = ModelConfig(arch="seed", image_size=16, width=0.125)


def _nets(seed: int = 0, channels_last: bool = False):
    torch.manual_seed(seed)
    netG, netD = build_models(CFG)
    if channels_last:
        netG.to(memory_format=torch.channels_last)
        netD.to(memory_format=torch.channels_last)
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    return netG, netD, optG, optD


def _batches(n: int, channels_last: bool = False):
    g = torch.Generator().manual_seed(11)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for _ in range(n):
        real = (torch.rand(4, 3, 16, 16, generator=g) * 2 - 1).contiguous(memory_format=fmt)
        yield real, torch.randn(4, CFG.z_dim, 1, 1, generator=g).contiguous(memory_format=fmt)


def test_graphed_step_matches_plain_steps_through_warmup_replays_and_reset():
    loss = make_loss("bce")
    plain = _nets()
    graphed = _nets()
    runner = GraphedStep(lambda r, z: train_step(*graphed, r, z, loss), torch.device("cpu"), warmup=2)
    for i, (real, noise) in enumerate(_batches(8, channels_last=True)):
        if i == 5:
            runner.reset()  # as after a roll-back: warm up and set up again
            assert not runner.ready and runner.eager_left == 2
        expected = train_step(*plain, real, noise, loss)
        got = runner(real, noise).clone()  # the next call reuses the output buffer
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        assert runner.ready == (i not in (0, 1, 5, 6))
    # The static buffers keep the batch's memory format (channels_last batches stay so).
    assert runner.static_real.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(plain[0].state_dict().values(), graphed[0].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(plain[1].parameters(), graphed[1].parameters(), strict=True):
        assert torch.equal(a, b)


def test_graphed_output_buffer_is_reused():
    loss = make_loss("bce")
    nets = _nets()
    runner = GraphedStep(lambda r, z: train_step(*nets, r, z, loss), torch.device("cpu"), warmup=0)
    batches = list(_batches(2))
    runner(*batches[0])
    assert runner.static_real is not None
    first_real = runner.static_real
    runner(*batches[1])
    assert runner.static_real is first_real  # copied into, never reallocated
    assert torch.equal(runner.static_real, batches[1][0])


def test_cuda_graph_refuses_what_a_replay_cannot_see():
    for key, value in (("train.compile", "default"), ("optim.augment", "color"), ("optim.r1_gamma", 0.1)):
        cfg = Config.from_dict({"train": {"cuda_graph": True}})
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
        try:
            cfg.validate()
        except UserError as e:
            assert key in str(e) and "train.cuda_graph" in str(e)
        else:
            raise AssertionError(f"cuda_graph with {key} was accepted")
    Config.from_dict({"train": {"cuda_graph": True}}).validate()


def test_cuda_graph_cli_run_equals_plain_run_and_resumes(image_folder, tmp_path, capsys):
    common = ["--data", str(image_folder), "--seed", "4", "--hflip", *TINY]
    plain, graphed = tmp_path / "plain", tmp_path / "graphed"
    assert main(["train", *common, "--epochs", "2", "--run-dir", str(plain)]) == 0
    # Interrupted after 3 of 10 iterations and resumed: warm-up, set-up and the restore's reset.
    part = ["train", *common, "--cuda-graph", "--epochs", "2", "--max-steps", "3", "--run-dir", str(graphed)]
    assert main(part) == 0
    assert main(["train", "--resume", str(graphed), "--set", "train.max_steps=none", "--quiet"]) == 0

    def weights(run):
        tensors, meta = ckpt.read_checkpoint(ckpt.latest_good_checkpoint(run / "checkpoints")[0])
        return {k: v for k, v in tensors.items() if k.startswith(("G.", "D.", "optG.", "optD."))}, meta

    (a, ma), (b, mb) = weights(plain), weights(graphed)
    assert ma["iteration"] == mb["iteration"] == 10
    assert mb["config"]["train"]["cuda_graph"] is True
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_cuda_graph_clash_is_a_one_line_error(image_folder, tmp_path, capsys):
    args = ["train", "--data", str(image_folder), "--run-dir", str(tmp_path / "r"), *TINY]
    assert main([*args, "--cuda-graph", "--compile", "default"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.cuda_graph" in err and "train.compile=default" in err and len(err.splitlines()) == 1
