"""The trainer's allocator setting: freed step buffers are reused instead of faulted in again."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from conftest import TINY

from animegen.cli import main
from animegen.training import allocator

glibc_only = pytest.mark.skipif(allocator._glibc() is None, reason="needs Linux with glibc")

# A training step in miniature: allocate, touch and free the same 64 MB buffer, and count the
# page faults that costs; run in a child so the setting does not leak into this process.
FAULTS = textwrap.dedent(
    """
    import resource, sys, torch
    from animegen.training import allocator
    if sys.argv[1] == "keep" and not allocator.keep_freed_memory():
        print("refused")
        sys.exit()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):  # glibc settles after a few rounds of PyTorch's aligned allocations
        torch.empty(1 << 24).fill_(1.0)
    before = faults()
    for _ in range(5):
        torch.empty(1 << 24).fill_(1.0)
    print((faults() - before) // 5)
    """
)


def _faults_per_step(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
    if out.stdout.split()[-1] == "refused":
        pytest.skip("this glibc refused the thresholds")
    return int(out.stdout.split()[-1])


@glibc_only
def test_kept_memory_is_reused_without_page_faults():
    plain, kept = _faults_per_step("plain"), _faults_per_step("keep")
    # 64 MB is 16,384 pages of 4 KB: glibc maps it afresh each time unless told to keep it.
    assert plain > 10_000
    assert kept < 100


def test_trainer_keeps_memory_on_cpu_and_releases_it_at_epoch_ends(image_folder, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append("keep") or True)
    monkeypatch.setattr(allocator, "release_freed_memory", lambda: calls.append("release"))
    args = ["train", "--data", str(image_folder), "--epochs", "2", *TINY, "--quiet"]
    assert main([*args, "--run-dir", str(tmp_path / "a")]) == 0
    assert calls == ["keep", "release", "release"]
    calls.clear()
    assert main([*args, "--run-dir", str(tmp_path / "b"), "--set", "train.reuse_memory=false"]) == 0
    assert calls == []
