"""Watching a run: TensorBoard scalars and sample grids, and a loss plot redrawn in the run dir."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from animegen import checkpoint_format as ckpt
from animegen.errors import UserError
from animegen.runlog import read_log

SCALARS = ("loss_D", "loss_G", "D_x", "D_G_z", "images_per_s", "fid", "kid", "swd", "fd_ssl")


class RunLog:
    """log.jsonl, one JSON row per line (rank 0 writes), each row also handed to the Monitor."""

    def __init__(self, path: Path, write: bool = True):
        self.path = Path(path)
        self.enabled = write
        self.monitor: Monitor | None = None

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.monitor is not None:
            self.monitor.log(row)

    def truncate(self, iteration: int) -> None:
        """Drop rows written after `iteration`, so a resumed log reads like one run."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("iteration", 0) <= iteration:
                    kept.append(line)
            except ValueError:
                continue
        ckpt.write_atomic(self.path, ("\n".join(kept) + "\n").encode() if kept else b"")


class Monitor:
    """Receives log rows and epoch grids; writes TensorBoard events (optional) and loss.png."""

    # Drawing loss.png can take as long as a GPU epoch of a small folder (docs/design-notes.md), so
    # the plot is redrawn at most this often, first this long after the start (a run shorter than
    # that draws it once, at the end), and once more at the end.
    PLOT_INTERVAL_S = 30.0

    def __init__(self, run_dir: Path, tensorboard: bool = False, plot: bool = True):
        self.run_dir = Path(run_dir)
        self.plot = plot
        self._plotted_at = time.monotonic()
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError(
                    "--tensorboard needs the tensorboard package: pip install 'animegen[tensorboard]'"
                ) from None
            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def log(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = int(row["iteration"])
        for key in SCALARS:
            if key in row and row[key] is not None:
                self.writer.add_scalar(f"train/{key}", float(row[key]), step)

    def epoch(self, epoch: int, iteration: int, grid: np.ndarray) -> None:
        if self.writer is not None:
            self.writer.add_image("samples", grid, iteration, dataformats="HWC")
            self.writer.flush()
        now = time.monotonic()
        if self.plot and now - self._plotted_at >= self.PLOT_INTERVAL_S:
            plot_losses(self.run_dir / "log.jsonl", self.run_dir / "loss.png")
            self._plotted_at = now

    def close(self) -> None:
        if self.plot:
            plot_losses(self.run_dir / "log.jsonl", self.run_dir / "loss.png")  # the whole run
        if self.writer is not None:
            self.writer.close()


def plot_losses(log_path: Path, out: Path) -> Path | None:
    """Loss and D-output curves against iterations; None when matplotlib or data is missing."""
    rows = [r for r in read_log(log_path) if "loss_D" in r]  # evaluation rows have no losses
    if len(rows) < 2:
        return None
    try:
        # The object API, not pyplot: no process-wide figure list or backend switch for a library to
        # leave behind in a user's session.
        from matplotlib.figure import Figure
    except ImportError:
        return None
    it = [r["iteration"] for r in rows]
    fig = Figure(figsize=(11, 3.8), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(it, [r["loss_D"] for r in rows], label="loss D", lw=1)
    ax1.plot(it, [r["loss_G"] for r in rows], label="loss G", lw=1)
    ax1.set_xlabel("iteration")
    ax1.set_title("losses")
    ax1.legend()
    ax2.plot(it, [r["D_x"] for r in rows], label="D(x)", lw=1)
    ax2.plot(it, [r["D_G_z"] for r in rows], label="D(G(z))", lw=1)
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("iteration")
    ax2.set_title("discriminator outputs")
    ax2.legend()
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp)
    os.replace(tmp, out)
    return out
