"""train.cuda_graph: the graphed step's plumbing gives the plain step's results, and clashes are refused.

The capture itself needs a CUDA device; here the same GraphedStep path runs with its static input
and output buffers but executes eagerly, which is what a CPU run with --cuda-graph does.
"""

from __future__ import annotations

import contextlib

import torch
from conftest import TINY

from animegen import checkpoint_format as ckpt
from animegen.cli import main
from animegen.config import Config, ModelConfig
from animegen.errors import UserError
from animegen.networks import build_models
from animegen.training.graphed import CaptureError, GraphedStep
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
    assert mb["config"]["train"]["cuda_graph"] == "on"
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_failed_capture_under_auto_trains_on_eagerly_and_under_on_stops(
    image_folder, tmp_path, capsys, monkeypatch
):
    def cannot_capture(self, real, noise):
        raise CaptureError("CUDA graph capture of the training step failed (not on this driver)")

    # As on a CUDA card whose capture fails: "auto" picks the graph, the capture after warm-up fails.
    monkeypatch.setattr("animegen.training.speed_plan.use_cuda_graph", lambda *a, **k: True)
    monkeypatch.setattr(GraphedStep, "_capture", cannot_capture)
    common = ["train", "--data", str(image_folder), "--seed", "2", *TINY, "--epochs", "1"]
    assert main([*common, "--run-dir", str(tmp_path / "auto"), "--set", "train.cuda_graph=auto"]) == 0
    err = capsys.readouterr().err
    assert "capture of the training step failed (not on this driver); training on without it" in err
    assert main([*common, "--run-dir", str(tmp_path / "on"), "--cuda-graph"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("(not on this driver); train without --cuda-graph"), err
    monkeypatch.undo()
    assert main([*common, "--run-dir", str(tmp_path / "plain")]) == 0

    def weights(run):
        tensors, _ = ckpt.read_checkpoint(ckpt.latest_good_checkpoint(run / "checkpoints")[0])
        return {k: v for k, v in tensors.items() if k.startswith(("G.", "D."))}

    a, b = weights(tmp_path / "plain"), weights(tmp_path / "auto")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cuda_graph_clash_is_a_one_line_error(image_folder, tmp_path, capsys):
    args = ["train", "--data", str(image_folder), "--run-dir", str(tmp_path / "r"), *TINY]
    assert main([*args, "--cuda-graph", "--compile", "default"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.cuda_graph" in err and "train.compile=default" in err and len(err.splitlines()) == 1


class _FakeCuda:
    """Stands in for torch.cuda's stream and graph calls so GraphedStep's CUDA branch runs here.

    A real capture records kernels without running them and a replay runs them on the captured
    buffers; the fake step below does the same by hand: under capture it only remembers its inputs
    and output buffer, and each replay computes into that buffer from those inputs.
    """

    def __init__(self):
        self.capturing = False
        self.captured: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.eager = self.replays = self.syncs = 0
        self.fail_capture = False

    def step(self, real: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.capturing:
            if self.fail_capture:
                raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
            out = torch.empty(())
            self.captured = (real, noise, out)
            return out
        self.eager += 1
        return real.sum() + noise.sum()

    def install(self, monkeypatch) -> None:
        fake = self

        class Stream:
            def __init__(self, device=None):
                pass

            def wait_stream(self, other):
                pass

        class Graph:
            def replay(self):
                real, noise, out = fake.captured
                out.copy_(real.sum() + noise.sum())
                fake.replays += 1

        class capture:  # noqa: N801 - stands in for torch.cuda.graph
            def __init__(self, graph):
                pass

            def __enter__(self):
                fake.capturing = True

            def __exit__(self, *exc):
                fake.capturing = False
                return False

        def synchronize(device=None):
            fake.syncs += 1

        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
        monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph", capture)


def test_cuda_branch_warms_up_captures_once_replays_and_recaptures_after_reset(monkeypatch):
    fake = _FakeCuda()
    fake.install(monkeypatch)
    runner = GraphedStep(fake.step, torch.device("cuda"), warmup=3)
    assert runner.capture
    g = torch.Generator().manual_seed(0)
    for i in range(10):
        if i == 6:
            runner.reset()
        real, noise = torch.rand(4, 3, 8, 8, generator=g), torch.randn(4, 5, 1, 1, generator=g)
        got = runner(real, noise)
        torch.testing.assert_close(got, real.sum() + noise.sum())  # this call's batch, not the last
    # Calls 0-2 and 6-8 eager (warm-up), 3 and 9 capture then replay, 4-5 replay.
    assert (fake.eager, fake.replays, runner.captures, fake.syncs) == (6, 4, 2, 2)
    assert runner.static_real.shape == (4, 3, 8, 8)


def test_failed_capture_is_a_one_line_capture_error(monkeypatch):
    fake = _FakeCuda()
    fake.install(monkeypatch)
    fake.fail_capture = True
    runner = GraphedStep(fake.step, torch.device("cuda"), warmup=1)
    runner(torch.zeros(2, 3), torch.zeros(2, 1))
    try:
        runner(torch.zeros(2, 3), torch.zeros(2, 1))
    except CaptureError as e:
        assert str(e) == (
            "CUDA graph capture of the training step failed "
            "(operation not permitted when stream is capturing)"
        )
    else:
        raise AssertionError("a failed capture went unnoticed")
    assert not runner.ready
