"""The side-by-side's training split, packed small enough to travel to a lent GPU machine.

  python benchmarks/pack_for_device.py --data ../shared/data/anime-faces-96 --out bench_data \
      [--holdout 0.1] [--budget-mib 56]

The device tool carries at most 64 MiB with the working tree; the 21,062 training faces of the
96 px set are ~116 MiB as JPEG, so only ~9,000 of them travelled before. Here the same training split
as benchmarks/vs_lightweight_gan.py (same order, same held-out faces left out, same file indices) is
written as WebP at the highest quality, from 95 down, whose size fits `--budget-mib`. The size at
each quality is estimated from a sample; if the full encode still overshoots, the next quality down
is used. OUT/manifest.json records the quality, count, size and the sample's PSNR against the
originals, so a GPU result trained on the packed faces states how far they are from the JPEGs the
held-out faces are scored against.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_lightweight_gan import split_files  # noqa: E402

QUALITIES = (95, 90, 85, 80, 75, 70)
MIB = 1 << 20


def encode(path: Path, quality: int) -> bytes:
    with Image.open(path) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "WEBP", quality=quality, method=6)
    return buf.getvalue()


def psnr(path: Path, data: bytes) -> float:
    with Image.open(path) as a, Image.open(io.BytesIO(data)) as b:
        x = np.asarray(a.convert("RGB"), dtype=np.float64)
        y = np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def _write(job: tuple[Path, Path, int]) -> int:
    src, dst, quality = job
    data = encode(src, quality)
    dst.write_bytes(data)
    return len(data)


def pick_quality(files: list[Path], budget: int, sample: int = 256, seed: int = 0) -> list[int]:
    """Qualities, best first, whose estimated total for `files` fits `budget` bytes."""
    rng = np.random.default_rng(seed)
    probe = [files[i] for i in rng.choice(len(files), min(sample, len(files)), replace=False)]
    fits = []
    for q in QUALITIES:
        mean = sum(len(encode(p, q)) for p in probe) / len(probe)
        if mean * len(files) <= budget:
            fits.append(q)
    return fits


def pack(data: Path, out: Path, holdout: float, budget_mib: float, workers: int, seed: int = 0) -> dict:
    train = split_files(data, holdout, seed)["train"]
    files = [p for _, p in train]
    budget = int(budget_mib * MIB)
    qualities = pick_quality(files, budget)
    if not qualities:
        sys.exit(f"{data}: {len(files):,} images exceed {budget_mib:g} MiB even as WebP q{QUALITIES[-1]}")
    folder = out / "train"
    for q in qualities:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        jobs = [(p, folder / f"{i:06d}.webp", q) for i, p in train]
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                total = sum(pool.map(_write, jobs, chunksize=64))
        else:
            total = sum(map(_write, jobs))
        if total <= budget:
            break
    else:
        sys.exit(f"{data}: every full encode overshot {budget_mib:g} MiB (the estimate was low)")
    probe = files[:: max(1, len(files) // 200)]
    manifest = {
        "source": str(data),
        "holdout": holdout,
        "seed": seed,
        "count": len(files),
        "format": "webp",
        "quality": q,
        "mib": round(total / MIB, 2),
        "psnr_db": round(float(np.mean([psnr(p, encode(p, q)) for p in probe])), 2),
        "psnr_n": len(probe),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-mib", type=float, default=56.0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    m = pack(args.data, args.out, args.holdout, args.budget_mib, args.workers, args.seed)
    psnr_db, n = m["psnr_db"], m["psnr_n"]
    print(f"{m['count']:,} faces, WebP q{m['quality']}, {m['mib']} MiB, PSNR {psnr_db} dB (n = {n})")


if __name__ == "__main__":
    main()
