from __future__ import annotations

import pickle

import pytest
import torch

from animegen import checkpoint_format as ckpt
from animegen.errors import CheckpointError


def _tensors(v: float = 1.0):
    return {
        "G.w": torch.full((4, 4), v),
        "step": torch.tensor(3.0),
        "rng": torch.arange(5, dtype=torch.uint8),
    }


def test_round_trip(tmp_path):
    p = tmp_path / "c.safetensors"
    ckpt.save_checkpoint(p, _tensors(), {"epoch": 2, "nested": {"a": [1, 2]}})
    tensors, meta = ckpt.read_checkpoint(p)
    assert meta["epoch"] == 2 and meta["nested"] == {"a": [1, 2]} and meta["format"] == ckpt.FORMAT
    assert torch.equal(tensors["G.w"], torch.ones(4, 4)) and tensors["step"].item() == 3.0


def test_crash_mid_write_keeps_previous(tmp_path, monkeypatch):
    p = tmp_path / "c.safetensors"
    ckpt.save_checkpoint(p, _tensors(1.0), {"epoch": 1})
    real_open = open

    class HalfFile:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            raise OSError(28, "No space left on device")

    def fake_open(path, mode="r", *a, **k):
        fh = real_open(path, mode, *a, **k)
        return HalfFile(fh) if "w" in mode and ".tmp" in str(path) else fh

    monkeypatch.setattr("builtins.open", fake_open)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(p, _tensors(2.0), {"epoch": 2})
    monkeypatch.undo()
    tensors, meta = ckpt.read_checkpoint(p)
    assert meta["epoch"] == 1 and tensors["G.w"][0, 0].item() == 1.0
    assert [x.name for x in tmp_path.iterdir()] == ["c.safetensors"]  # no temp file left behind


def test_truncated_and_bitflipped_are_detected(tmp_path):
    p = tmp_path / "c.safetensors"
    ckpt.save_checkpoint(p, _tensors(), {"epoch": 1})
    data = p.read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) - 10])
    with pytest.raises(CheckpointError, match="t.safetensors: checkpoint is damaged"):
        ckpt.read_checkpoint(tmp_path / "t.safetensors")
    flipped = bytearray(data)
    flipped[-3] ^= 0x10  # inside the last tensor's bytes
    (tmp_path / "f.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        ckpt.read_checkpoint(tmp_path / "f.safetensors")
    (tmp_path / "z.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated"):
        ckpt.read_checkpoint(tmp_path / "z.safetensors")


def test_latest_good_skips_damaged(tmp_path):
    for it in (10, 20, 30):
        ckpt.save_checkpoint(tmp_path / ckpt.checkpoint_name(it // 10, it), _tensors(it), {"iteration": it})
    newest = tmp_path / ckpt.checkpoint_name(3, 30)
    newest.write_bytes(newest.read_bytes()[:100])
    path, notes = ckpt.latest_good_checkpoint(tmp_path)
    assert path.name == ckpt.checkpoint_name(2, 20) and len(notes) == 1 and "damaged" in notes[0]
    ckpt.prune_checkpoints(tmp_path, keep=1)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [newest.name]


def test_optimizer_and_rng_round_trip(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.5, 0.999))
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    t, m = ckpt.pack_optimizer("opt", opt)
    tr, mr = ckpt.capture_rng()
    p = tmp_path / "o.safetensors"
    ckpt.save_checkpoint(p, {**t, **tr}, {"opt": m, "rng": mr})
    expected = torch.rand(3)
    tensors, meta = ckpt.read_checkpoint(p)
    opt2 = torch.optim.Adam(net.parameters(), lr=5.0)
    opt2.load_state_dict(ckpt.unpack_optimizer("opt", tensors, meta["opt"]))
    assert opt2.param_groups[0]["lr"] == 1e-3 and opt2.param_groups[0]["betas"] == (0.5, 0.999)
    for p in net.parameters():
        a, b = opt.state[p], opt2.state[p]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ckpt.restore_rng(tensors, meta["rng"])
    assert torch.equal(torch.rand(3), expected)


class _Evil:
    def __reduce__(self):
        return (exec, ("open('/tmp/animegen_pwned', 'w').write('x')",))


def test_pickle_with_code_is_refused(tmp_path):
    from animegen.model_loading import load_generator

    p = tmp_path / "netG_001.pth"
    with open(p, "wb") as fh:
        pickle.dump({"layer1.0.weight": _Evil()}, fh)
    torch.save({"layer1.0.weight": _Evil()}, tmp_path / "evil2.pth")
    for f in (p, tmp_path / "evil2.pth"):
        with pytest.raises(CheckpointError, match="refused|not a readable"):
            load_generator(f)
    import os

    assert not os.path.exists("/tmp/animegen_pwned")


def _conv_adam(fused: bool) -> tuple[torch.nn.Conv2d, torch.optim.Adam]:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 3).to(memory_format=torch.channels_last)
    return conv, torch.optim.Adam(conv.parameters(), lr=1e-2, fused=fused)


def _adam_step(conv: torch.nn.Conv2d, opt: torch.optim.Adam, seed: int) -> None:
    torch.manual_seed(seed)
    opt.zero_grad()
    conv(torch.randn(2, 8, 6, 6).to(memory_format=torch.channels_last)).square().mean().backward()
    opt.step()


@pytest.mark.parametrize("fused", [False, True])
def test_optimizer_round_trip_continues_exactly_on_channels_last_weights(tmp_path, fused):
    """safetensors hands the moments back contiguous; fused CPU Adam would misread them (torch 2.14)."""
    a, opt_a = _conv_adam(fused)
    _adam_step(a, opt_a, 1)
    tensors, meta = ckpt.pack_optimizer("opt", opt_a)
    ckpt.save_checkpoint(tmp_path / "c.safetensors", tensors, {"opt": meta})
    loaded, meta = ckpt.read_checkpoint(tmp_path / "c.safetensors")
    b, opt_b = _conv_adam(fused)
    b.load_state_dict(a.state_dict())
    ckpt.load_optimizer(opt_b, "opt", loaded, meta["opt"])
    assert opt_b.state[b.weight]["exp_avg"].stride() == b.weight.stride()
    _adam_step(a, opt_a, 2)
    _adam_step(b, opt_b, 2)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_optimizer_load_keeps_this_runs_kernel(tmp_path):
    a, opt_a = _conv_adam(fused=False)
    _adam_step(a, opt_a, 1)
    tensors, meta = ckpt.pack_optimizer("opt", opt_a)
    b, opt_b = _conv_adam(fused=True)
    ckpt.load_optimizer(opt_b, "opt", tensors, meta)
    assert opt_b.param_groups[0]["fused"] is True
    assert opt_b.param_groups[0]["lr"] == 1e-2 and opt_b.state[b.weight]["step"].item() == 1.0


@pytest.mark.parametrize(
    ("kernel", "where"), [({"capturable": True}, "meta"), ({"fused": True}, "meta"), ({}, "cpu")]
)
def test_optimizer_load_puts_step_counters_where_this_runs_kernel_keeps_them(kernel, where):
    # "meta" stands in for a GPU. PyTorch places a loaded step counter by the checkpoint's kernel:
    # a host counter from a plain run would meet a --cuda-graph (capturable) resume and fail there.
    a, opt_a = _conv_adam(fused=False)
    _adam_step(a, opt_a, 1)
    tensors, meta = ckpt.pack_optimizer("opt", opt_a)
    conv = torch.nn.Conv2d(8, 16, 3, device="meta")
    opt = torch.optim.Adam(conv.parameters(), lr=1e-2, **kernel)
    ckpt.load_optimizer(opt, "opt", tensors, meta)
    assert {opt.state[p]["step"].device.type for p in conv.parameters()} == {where}
    assert opt.state[conv.weight]["exp_avg"].device.type == "meta"
