"""The lightweight-gan side-by-side: its CPU shim and the shared train/held-out split."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import write_images

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import lwg_cpu  # noqa: E402
import vs_lightweight_gan  # noqa: E402

ASSERT = "assert torch.cuda.is_available(), 'You need to have an Nvidia GPU with CUDA installed.'"


def _fake_package(root: Path) -> None:
    """A stand-in for the installed package with the lines the shim rewrites."""
    pkg = root / "lightweight_gan"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('the shim must not run __init__')\n")
    (pkg / "lightweight_gan.py").write_text(
        "import torch\n"
        f"{ASSERT}\n"
        "class Trainer:\n"
        "    fmap_max = 128\n"
        "    def config(self):\n"
        "        return {'image_size': 64}\n"
        "    def train(self):\n"
        "        self.device = torch.device(f'cuda:{self.rank}')\n"
        "        return torch.zeros(2).cuda(self.rank)\n"
        "    def setup(self, rank):\n"
        "        self.cuda(rank)\n"
        "        return dict(pin_memory = True)\n"
        "LightweightGAN = Generator = Discriminator = Trainer\n"
        "class NanException(Exception):\n    pass\n"
    )
    (pkg / "diff_augment_test.py").write_text(f"import torch\n{ASSERT}\n")
    (pkg / "cli.py").write_text("from lightweight_gan import Trainer, NanException\n")


def _forget(monkeypatch) -> None:
    for name in list(sys.modules):
        if name == "lightweight_gan" or name.startswith("lightweight_gan."):
            monkeypatch.delitem(sys.modules, name)


def test_the_shim_runs_the_package_on_a_cpu(tmp_path, monkeypatch):
    _fake_package(tmp_path)
    _forget(monkeypatch)
    monkeypatch.syspath_prepend(str(tmp_path))
    cli = lwg_cpu.load_package()
    trainer = cli.Trainer()
    trainer.rank = 0
    assert trainer.train().device.type == "cpu" and trainer.device.type == "cpu"
    assert trainer.setup(0) == {"pin_memory": False}
    # what it saves next to a model must bring the same fmap_max back when sampling
    assert trainer.config() == {"image_size": 64, "fmap_max": 128}
    _forget(monkeypatch)


def test_settings_are_literals_for_the_cli_keywords_the_shim_does_not_own():
    def train_from_folder(data=".", image_size=256, fmap_max=512, attn_res_layers=(32,), optimizer="adam"):
        pass

    pairs = ["fmap_max=128", "attn_res_layers=[]", "optimizer=adabelief"]
    got = lwg_cpu.parse_settings(pairs, train_from_folder)
    assert got == {"fmap_max": 128, "attn_res_layers": [], "optimizer": "adabelief"}
    for bad in ("fmap_max", "image_size=32", "no_such_key=1"):
        with pytest.raises(SystemExit, match=f"--set {bad}: expected KEY=VALUE"):
            lwg_cpu.parse_settings([bad], train_from_folder)


def test_the_shim_refuses_another_release(tmp_path, monkeypatch, capsys):
    _fake_package(tmp_path)
    core = tmp_path / "lightweight_gan" / "lightweight_gan.py"
    core.write_text(core.read_text().replace("pin_memory = True", "pin_memory = pin"))
    _forget(monkeypatch)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit, match="has no 'pin_memory = True'"):
        lwg_cpu.load_package()
    _forget(monkeypatch)


def test_split_is_disjoint_complete_and_fixed(tmp_path):
    data = tmp_path / "faces"
    write_images(data, 20)
    a, b = tmp_path / "a", tmp_path / "b"
    assert vs_lightweight_gan.split(data, a, 0.25) == (15, 5)
    vs_lightweight_gan.split(data, b, 0.25)
    held = {p.resolve() for p in (a / "heldout").iterdir()}
    train = {p.resolve() for p in (a / "train").iterdir()}
    assert len(held) == 5 and len(train) == 15 and not held & train
    assert held | train == {p.resolve() for p in data.iterdir()}
    names = [sorted(p.name for p in (run / "heldout").iterdir()) for run in (a, b)]
    assert names[0] == names[1]


def test_pack_for_device_writes_the_training_split_as_webp_within_budget(tmp_path):
    import pack_for_device as pack

    data = tmp_path / "faces"
    write_images(data, 20, size=32)
    train = vs_lightweight_gan.split_files(data, 0.25)["train"]
    best, worst = (
        sum(len(pack.encode(p, q)) for _, p in train) for q in (pack.QUALITIES[0], pack.QUALITIES[-1])
    )
    assert worst < best
    budget_mib = (best + worst) / 2 / pack.MIB  # the best quality cannot fit, the worst can
    m = pack.pack(data, tmp_path / "out", 0.25, budget_mib, workers=1)
    written = sorted((tmp_path / "out" / "train").iterdir())
    assert [p.name for p in written] == sorted(f"{i:06d}.webp" for i, _ in train)
    assert m["count"] == 15 and m["quality"] < pack.QUALITIES[0]
    assert sum(p.stat().st_size for p in written) <= budget_mib * pack.MIB
    assert m["psnr_db"] > 25
    with pytest.raises(SystemExit, match="exceed"):
        pack.pack(data, tmp_path / "none", 0.25, worst / 4 / pack.MIB, workers=1)
