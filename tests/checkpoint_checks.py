"""Checks shared by the reliability tests: checkpoint weights compared bit for bit, a run against
the same run stopped and resumed, every checkpoint in a folder readable, and an error that is one
line."""

from __future__ import annotations

from pathlib import Path

import torch

from animegen import checkpoint_format as ckpt

SRC = Path(__file__).resolve().parents[1] / "src" / "animegen"
WEIGHT_PREFIXES = ("G.", "D.", "optG.", "optD.")


def checkpoint_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = ckpt.read_checkpoint(path)
    return {k: v for k, v in tensors.items() if k.startswith(WEIGHT_PREFIXES)}, meta


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def final_checkpoint(run: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """All tensors and the metadata of a run's newest good checkpoint."""
    path, _ = ckpt.latest_good_checkpoint(run / "checkpoints")
    return ckpt.read_checkpoint(path)


def uninterrupted_and_resumed(common: list[str], tmp_path: Path, epochs: int = 2, stop: int = 3):
    """`animegen train *common` run whole, and stopped after `stop` steps then resumed: both final
    checkpoints, (tensors, meta) each."""
    from animegen.cli import main

    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", *common, "--epochs", str(epochs), "--run-dir", str(full)]) == 0
    assert (
        main(["train", *common, "--epochs", str(epochs), "--max-steps", str(stop), "--run-dir", str(part)])
        == 0
    )
    assert main(["train", "--resume", str(part), "--set", "train.max_steps=none", "--quiet"]) == 0
    return final_checkpoint(full), final_checkpoint(part)


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert "Traceback" not in err
    return lines[0]


def assert_all_checkpoints_read(ckpt_dir: Path) -> list[Path]:
    """Every ckpt_*.safetensors verifies; temp files exist at most beside them and are not listed."""
    found = sorted(ckpt_dir.glob("ckpt_*.safetensors")) if ckpt_dir.is_dir() else []
    for path in found:
        ckpt.read_checkpoint(path)  # raises CheckpointError naming the file if it is damaged
    assert {p.name for p in ckpt.list_checkpoints(ckpt_dir)} == {p.name for p in found}
    if found:
        newest, notes = ckpt.latest_good_checkpoint(ckpt_dir)
        assert notes == [] and newest == ckpt.list_checkpoints(ckpt_dir)[-1]
    return found
