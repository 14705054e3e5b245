"""Checks shared by the reliability tests: checkpoint weights compared bit for bit, every
checkpoint in a folder readable, and an error that is one line."""

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
