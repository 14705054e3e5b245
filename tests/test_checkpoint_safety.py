"""Damaged and hostile checkpoints: a damaged or foreign file is named in one line (exit 2), a
damaged newest one is skipped with a warning, and nothing is ever unpickled."""

from __future__ import annotations

import ast
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import pytest
import torch
from checkpoint_checks import SRC, assert_identical, checkpoint_weights, one_line
from conftest import TINY, write_images
from safetensors.torch import save_file

from animegen import checkpoint_format as ckpt
from animegen.cli import main
from animegen.config import ModelConfig
from animegen.errors import CheckpointError
from animegen.networks import Generator

# ------------------------------------------------------------------------------------ damaged checkpoints


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A finished 2-epoch tiny run holding ckpt_e001_i00000005 and ckpt_e002_i00000010."""
    root = tmp_path_factory.mktemp("trained")
    data = root / "faces"
    write_images(data, 40)
    run = root / "run"
    argv = ["train", "--data", str(data), "--epochs", "2", "--seed", "2", "--run-dir", str(run)]
    assert main([*argv, "--cache-dir", str(root / "cache"), *TINY]) == 0
    names = [p.name for p in ckpt.list_checkpoints(run / "checkpoints")]
    assert names == ["ckpt_e001_i00000005.safetensors", "ckpt_e002_i00000010.safetensors"]
    return run


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained_run, dst)
    return dst


def _flip(path: Path, offset: int, bit: int = 0x10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= bit
    path.write_bytes(bytes(data))


def _header_len(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[:8], "little")


DAMAGE = {
    "truncated-in-data": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "truncated-in-header": lambda p: p.write_bytes(p.read_bytes()[:200]),
    "empty": lambda p: p.write_bytes(b""),
    "bit-flip-in-tensor": lambda p: _flip(p, p.stat().st_size - 40),
    "bit-flip-in-metadata": lambda p: _flip(p, 8 + _header_len(p) // 2, 0x01),
}
REASON = re.compile(r"checksum mismatch|damaged|truncated")


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_generate_run_dir_skips_damaged_newest_with_one_warning(run_copy, tmp_path, capsys, damage):
    """`generate RUN_DIR` with a damaged newest checkpoint warns in one line naming it and samples
    from the previous good checkpoint."""
    newest = ckpt.list_checkpoints(run_copy / "checkpoints")[-1]
    DAMAGE[damage](newest)
    grid = tmp_path / "grid.png"
    assert main(["generate", str(run_copy), "-n", "4", "--grid", str(grid)]) == 0
    line = one_line(capsys.readouterr().err)
    assert line.startswith("warning:") and newest.name in line and REASON.search(line)
    assert grid.exists()
    from animegen.model_loading import load_generator

    assert load_generator(run_copy).source.name == "ckpt_e001_i00000005.safetensors"


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_generate_damaged_file_exits_2_naming_it(run_copy, tmp_path, capsys, damage):
    """`generate FILE` on a damaged checkpoint exits 2 with one line naming the file and saying it is
    damaged (a bit flip in a tensor: checksum mismatch)."""
    newest = ckpt.list_checkpoints(run_copy / "checkpoints")[-1]
    DAMAGE[damage](newest)
    assert main(["generate", str(newest), "-n", "4", "--grid", str(tmp_path / "g.png")]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(newest) in line and REASON.search(line), line
    if damage == "bit-flip-in-tensor":
        assert "checksum mismatch" in line
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("damage", ["truncated-in-data", "bit-flip-in-tensor"])
def test_resume_skips_damaged_newest_with_one_warning(trained_run, run_copy, capsys, monkeypatch, damage):
    """`train --resume RUN_DIR` with a damaged newest checkpoint warns in one line naming it, resumes
    from the previous good one, and retraining reproduces the damaged checkpoint's weights exactly."""
    monkeypatch.delenv("COLUMNS", raising=False)  # stderr is a pipe or a log file, not a terminal
    newest = ckpt.list_checkpoints(run_copy / "checkpoints")[-1]
    DAMAGE[damage](newest)
    assert main(["train", "--resume", str(run_copy), "--quiet"]) == 0
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert line.startswith("warning:") and newest.name in line and REASON.search(line), line
    assert captured.out == ""
    original = checkpoint_weights(ckpt.list_checkpoints(trained_run / "checkpoints")[-1])[0]
    assert_identical(original, checkpoint_weights(newest)[0])


def test_single_bit_flips_are_always_detected(trained_run):
    """A single bit flipped anywhere in a checkpoint (header, metadata or tensors) is always a
    CheckpointError naming the file, never another exception and never a silent success."""
    source = ckpt.list_checkpoints(trained_run / "checkpoints")[-1]
    good = source.read_bytes()
    end_of_header = 8 + _header_len(source)
    rng = random.Random(7)
    offsets = list(range(8)) + rng.sample(range(8, end_of_header), 300)
    offsets += rng.sample(range(end_of_header, len(good)), 100)
    damaged = source.parent.parent.parent / "flipped.safetensors"
    for offset in offsets:
        data = bytearray(good)
        data[offset] ^= 1 << rng.randrange(8)
        damaged.write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match=re.escape(str(damaged))):
            ckpt.read_checkpoint(damaged)
    damaged.unlink()


# ------------------------------------------------------------------------------------ hostile checkpoints


class _RunsCode:
    """Unpickling this runs a shell command (what a malicious .pth does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_files(tmp_path: Path, marker: Path) -> list[Path]:
    zipped = tmp_path / "netG_001.pth"
    torch.save({"layer1.0.weight": _RunsCode(marker)}, zipped)
    legacy = tmp_path / "netG_002.pth"
    torch.save({"layer1.0.weight": _RunsCode(marker)}, legacy, _use_new_zipfile_serialization=False)
    raw = tmp_path / "netG_003.pth"
    raw.write_bytes(pickle.dumps(_RunsCode(marker), protocol=2))
    return [zipped, legacy, raw]


def test_the_code_running_pickle_is_live(tmp_path):
    """Guards the payload used below: unpickled naively, it really does run its command."""
    marker = tmp_path / "ran"
    raw = _evil_files(tmp_path, marker)[-1]
    pickle.loads(raw.read_bytes())  # the point of this test
    assert marker.exists()


@pytest.mark.parametrize("index", [0, 1, 2], ids=["torch-zip", "torch-legacy", "raw-pickle"])
@pytest.mark.parametrize("command", ["generate", "interpolate", "train-resume"])
def test_code_running_pickle_is_refused(tmp_path, capsys, index, command):
    """A .pth that would run code when unpickled is refused with exit 2 and one line naming it, and
    the code never runs."""
    marker = tmp_path / "pwned"
    evil = _evil_files(tmp_path, marker)[index]
    out = tmp_path / "out.gif"
    argv = {
        "generate": ["generate", str(evil), "--grid", str(out)],
        "interpolate": ["interpolate", str(evil), "--steps", "4", "--out", str(out)],
        "train-resume": ["train", "--resume", str(evil), "--quiet"],
    }[command]
    assert main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert str(evil) in line
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("index", [0, 1, 2], ids=["torch-zip", "torch-legacy", "raw-pickle"])
def test_pickle_refusal_names_what_it_refused_and_gives_no_unsafe_advice(tmp_path, capsys, index):
    """The refusal line says what the file tried to import (os.system here), and never passes on
    torch's advice to retry with weights_only=False (which would run the code)."""
    evil = _evil_files(tmp_path, tmp_path / "pwned")[index]
    assert main(["generate", str(evil), "--grid", str(tmp_path / "g.png")]) == 2
    line = one_line(capsys.readouterr().err)
    assert "refused" in line and re.search(r"\b(posix|os)\.system\b", line), line
    assert "weights_only" not in line, line


@pytest.mark.parametrize("command", ["generate", "train-resume"])
def test_foreign_safetensors_is_refused(tmp_path, capsys, command):
    """A valid safetensors file that is not an animegen checkpoint: exit 2, one line naming it."""
    foreign = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(4, 4)}, str(foreign), metadata={"format": "pt"})
    argv = ["generate", str(foreign)] if command == "generate" else ["train", "--resume", str(foreign)]
    assert main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert str(foreign) in line and "not an animegen checkpoint" in line


@pytest.mark.parametrize(
    "flags, key, ours, theirs",
    [
        (["--image-size", "32"], r"image.size", "16", "32"),
        (["--set", "model.arch=dcgan64", "--image-size", "32"], "arch", "seed", "dcgan64"),
        (["--set", "model.width=0.25"], "width", "0.125", "0.25"),
        (["--set", "model.z_dim=64"], "z_dim", "100", "64"),
    ],
)
def test_resume_with_other_architecture_names_the_mismatch(run_copy, capsys, flags, key, ours, theirs):
    """`train --resume` with flags that change the architecture: exit 2 and one line naming the
    setting, the checkpoint's value and the requested one."""
    assert main(["train", "--resume", str(run_copy), "--epochs", "3", *flags, "--quiet"]) == 2
    line = one_line(capsys.readouterr().err)
    assert re.search(key, line) and ours in line and theirs in line, line


def test_pth_with_wrong_shaped_tensor_names_key_and_shapes(tmp_path, capsys):
    """A tutorial-style .pth with one tensor of the wrong shape: exit 2, one line naming the key,
    the shape found and the shape expected."""
    state = Generator(ModelConfig(image_size=48, width=0.25)).state_dict()
    state["layer2.1.weight"] = torch.ones(7)
    bad = tmp_path / "netG_009.pth"
    torch.save(state, bad)
    assert main(["generate", str(bad), "--grid", str(tmp_path / "g.png")]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(bad) in line and "layer2.1.weight" in line and "(7,)" in line and "(64,)" in line


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


UNPICKLERS = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "_pickle.load",
    "_pickle.loads",
    "dill.load",
    "dill.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "joblib.load",
    "pandas.read_pickle",
    "pd.read_pickle",
    "torch.serialization.load",
    "shelve.open",
}


def test_source_never_unpickles():
    """Static guard over src/: every torch.load passes weights_only=True, numpy never allows pickles,
    and nothing calls pickle.load/loads (or dill, joblib, ...) or imports those names directly."""
    offenders: list[str] = []
    torch_loads = 0
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(SRC.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and node.module in {"pickle", "_pickle", "dill", "torch"}:
                bad = [a.name for a in node.names if a.name in {"load", "loads", "Unpickler"}]
                offenders += [f"{where}: from {node.module} import {name}" for name in bad]
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            kw = {k.arg: k.value for k in node.keywords}
            if name == "torch.load":
                torch_loads += 1
                flag = kw.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    offenders.append(f"{where}: torch.load without weights_only=True")
            elif name in UNPICKLERS:
                offenders.append(f"{where}: {name}")
            elif name in {"np.load", "numpy.load"}:
                flag = kw.get("allow_pickle")
                if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                    offenders.append(f"{where}: {name} with allow_pickle")
    assert torch_loads >= 1, "the scan found no torch.load at all: is SRC right?"
    assert offenders == []
    # A plain-text cross-check, in case a call is spelled in a way the AST walk above misses.
    for path in sorted(SRC.rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            assert not re.search(r"\bpickle\.loads?\(|\bUnpickler\(", code), f"{path}:{n}: {line}"
            if "torch.load(" in code:
                assert "weights_only=True" in code, f"{path}:{n}: {line}"
