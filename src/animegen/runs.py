"""`animegen runs`: a table of the runs under a folder: progress, last losses, best metric, paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from animegen.checkpoint_format import CKPT_RE, list_checkpoints
from animegen.runlog import read_log


def find_runs(root: str | Path) -> list[Path]:
    """Run dirs under root (root itself if it is one): folders holding config.json or checkpoints/."""
    root = Path(root)
    if (root / "config.json").is_file() or (root / "checkpoints").is_dir():
        return [root]
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and ((p / "config.json").is_file() or (p / "checkpoints").is_dir())
    )


def summarize(run: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        cfg = {}
    rows = read_log(run / "log.jsonl")
    train_rows = [r for r in rows if "loss_D" in r]  # evaluation rows carry metrics only
    last = train_rows[-1] if train_rows else {}
    ckpts = list_checkpoints(run / "checkpoints")
    epochs_done = int(CKPT_RE.match(ckpts[-1].name).group(1)) if ckpts else 0
    fids = [r["fid"] for r in rows if isinstance(r.get("fid"), (int, float))]
    return {
        "run": str(run),
        "preset": cfg.get("preset", "?"),
        "epochs": f"{epochs_done}/{cfg.get('train', {}).get('epochs', '?')}",
        "iteration": last.get("iteration", 0),
        "loss_D": last.get("loss_D"),
        "loss_G": last.get("loss_G"),
        "best_fid": min(fids) if fids else None,
        "checkpoint": ckpts[-1].name if ckpts else "-",
    }


def print_runs(root: str | Path) -> int:
    from rich.console import Console
    from rich.table import Table

    runs = [summarize(r) for r in find_runs(root)]
    # Wide enough for paths even when piped (rich assumes 80 columns off a terminal).
    console = Console(width=None if Console().is_terminal else 160)
    if not runs:
        console.print(f"no runs under {root}", markup=False)
        return 0
    table = Table(title=f"runs under {root}")
    for col in ("run", "preset", "epochs", "iteration", "loss_D", "loss_G", "best FID", "newest checkpoint"):
        table.add_column(col, overflow="fold")
    for r in runs:
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        table.add_row(
            r["run"],
            r["preset"],
            r["epochs"],
            str(r["iteration"]),
            fmt(r["loss_D"]),
            fmt(r["loss_G"]),
            fmt(r["best_fid"]),
            r["checkpoint"],
        )
    console.print(table)
    return 0
