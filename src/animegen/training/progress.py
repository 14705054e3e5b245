"""What a training run tells the person watching: progress bars, one line per epoch, warnings.

Bars are drawn only on a terminal (never into a log file or pipe), colour follows NO_COLOR, and
`quiet` leaves only warnings and errors.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _fmt_stats(stats: dict[str, float]) -> str:
    if not stats:
        return ""
    return (
        f"loss_D {stats['loss_D']:.3f}  loss_G {stats['loss_G']:.3f}  "
        f"D(x) {stats['D_x']:.3f}  D(G(z)) {stats['D_G_z']:.3f}  {stats['images_per_s']:.1f} img/s"
    )


class _EpochBar:
    def __init__(self, progress: Progress | None, task: Any):
        self.progress = progress
        self.task = task

    def __enter__(self) -> _EpochBar:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def advance(self, stats: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, stats=_fmt_stats(stats))


class Reporter:
    """Console output for one command; everything goes to stderr except the per-epoch summaries."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.out = Console(file=sys.stdout, highlight=False, soft_wrap=True)
        self.err = Console(file=sys.stderr, highlight=False, soft_wrap=True)
        self._decode: Progress | None = None
        self._decode_task: Any = None

    @property
    def live(self) -> bool:
        return self.err.is_terminal and not self.quiet

    def info(self, message: str) -> None:
        if not self.quiet:
            self.err.print(message, markup=False)

    def warn(self, message: str) -> None:
        self.err.print(f"warning: {message}", markup=False, style="yellow")

    def decode_progress(self, done: int, total: int) -> None:
        if not self.live:
            return
        if self._decode is None:
            self._decode = Progress(
                TextColumn("decoding images"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self.err,
                transient=True,
            )
            self._decode.start()
            self._decode_task = self._decode.add_task("decode", total=total)
        self._decode.update(self._decode_task, completed=done)
        if done >= total:
            self._decode.stop()
            self._decode = None

    def data_summary(self, images: Any) -> None:
        if self._decode is not None:
            self._decode.stop()
            self._decode = None
        how = "from cache" if images.cache_hit else "decoded and cached"
        self.info(f"data: {len(images):,} images of {images.image_size} px from {images.source} ({how})")
        warning = images.warning_line()
        if warning:
            self.warn(warning)

    def epoch_bar(self, epoch: int, total: int, steps: int, start: int = 0) -> _EpochBar:
        if not self.live:
            return _EpochBar(None, None)
        progress = Progress(
            TextColumn(f"epoch {epoch}/{total}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=self.err,
            transient=True,
        )
        task = progress.add_task("train", total=steps, completed=start, stats="")
        return _EpochBar(progress, task)

    def epoch_done(
        self, epoch: int, total: int, stats: dict[str, Any], samples: Path, checkpoint: Path
    ) -> None:
        if self.quiet:
            return
        self.out.print(
            f"epoch {epoch}/{total}  {_fmt_stats(stats)}  {stats.get('seconds', 0):.0f}s  samples {samples}",
            markup=False,
        )
