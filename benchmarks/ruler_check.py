"""Is FD-SSL a ruler? Known damage and known-bad generators, scored against held-out faces.

  python benchmarks/ruler_check.py --data ../shared/data/anime-faces-96 --out OUT \
      [--generated ../shared/data/generated-64] [--weights W.safetensors] [--n 1000] [--inception]

The folder is split as benchmarks/vs_lightweight_gan.py splits it (10% held out, seed 0), so the
held-out faces are the ones every quality row is scored on and the face encoder never saw them
(it trains on OUT/split/train). Reference: the first n held-out faces. Every other set has n faces
and is compared with it:
- floor: the next n held-out faces, and n training faces (both should sit at the bottom);
- damage to the floor set at three strengths: Gaussian blur, Gaussian noise, hue rotation, a
  palette collapse (each face blended towards a blue-to-cream map of its own brightness, as the
  probe's faces collapsed), dropped modes (faces drawn only from some of 8 hair-hue bins) and
  copies (n faces drawn from a few training faces);
- generated sets (`--generated`): each subfolder of faces, e.g. shared/data/generated-64.
Prints a table of FD-SSL (and SWD; Inception FID with `--inception`, slow on a CPU) and whether
each damage ranks in order of strength above the floor; writes OUT/ruler.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from vs_lightweight_gan import split, split_files  # noqa: E402

from animegen.data.cache import load_folder  # noqa: E402
from animegen.data.scan import scan_folder  # noqa: E402
from animegen.data.split import holdout_split  # noqa: E402
from animegen.metrics import fid_from_features, swd  # noqa: E402
from animegen.metrics.face_features import FaceFeatures, face_features  # noqa: E402

DAMAGE_LEVELS = {
    "blur (sigma px)": (0.5, 1.0, 2.0),
    "noise (std /255)": (4.0, 10.0, 25.0),
    "hue rotation (turns)": (0.03, 0.08, 0.15),
    "palette collapse (blend)": (0.25, 0.5, 1.0),
    "dropped modes (of 8 hue bins)": (2, 4, 6),
    "copies (distinct faces)": (100, 20, 5),
}


def encoder_faces(data: Path, out: Path) -> int:
    """Link into `out` the faces that neither held-out split of this project ever scores against:
    not benchmarks/vs_lightweight_gan.py's (10%, seed 0), not `animegen train --holdout 0.1`'s.
    The face encoder trains on these only, so no quality row is scored on a face it has seen."""
    files = [f.path for f in scan_folder(data)]
    _, held_rows = holdout_split(len(files), 0.1)
    excluded = {files[i].resolve() for i in held_rows}
    excluded |= {path.resolve() for _, path in split_files(data, 0.1, 0)["heldout"]}
    out.mkdir(parents=True, exist_ok=True)
    kept = 0
    for i, path in enumerate(files):
        if path.resolve() not in excluded:
            (out / f"{i:06d}{path.suffix.lower()}").symlink_to(path.resolve())
            kept += 1
    return kept


def _float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0


def _uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = 2 * int(3 * sigma + 0.5) + 1
    return TF.gaussian_blur(x, [k, k], [sigma, sigma])


def noise(x: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return _uint8(_float(x) + torch.randn(x.shape, generator=g) * std / 255.0)


def hue(x: torch.Tensor, turns: float) -> torch.Tensor:
    return TF.adjust_hue(x, turns)


def palette_collapse(x: torch.Tensor, blend: float) -> torch.Tensor:
    f = _float(x)
    lum = (0.299 * f[:, 0:1] + 0.587 * f[:, 1:2] + 0.114 * f[:, 2:3]).clamp(0, 1)
    blue = torch.tensor([30, 60, 140]).view(1, 3, 1, 1) / 255.0
    cream = torch.tensor([240, 230, 200]).view(1, 3, 1, 1) / 255.0
    mapped = blue + (cream - blue) * lum
    return _uint8((1 - blend) * f + blend * mapped)


def hair_hue_bins(images: np.ndarray, bins: int = 8) -> np.ndarray:
    """Each face's bin (0..bins-1, equal counts) by the hue of the mean colour of its top third."""
    top = torch.from_numpy(np.ascontiguousarray(images[:, :, : images.shape[2] // 3])).float() / 255
    mean = top.mean(dim=(2, 3))
    r, g, b = mean.unbind(1)
    angle = torch.atan2(np.sqrt(3) * (g - b), 2 * r - g - b).numpy()
    edges = np.quantile(angle, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, angle)


def dropped_modes(pool: np.ndarray, bins: np.ndarray, drop: int, n: int, seed: int = 0) -> torch.Tensor:
    keep = np.flatnonzero(bins >= drop)  # drop the first `drop` bins
    rows = np.random.default_rng(seed).choice(keep, size=n, replace=len(keep) < n)
    return torch.from_numpy(np.ascontiguousarray(pool[np.sort(rows)]))


def copies(pool: np.ndarray, distinct: int, n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(pool), size=distinct, replace=False)
    rows = picked[np.arange(n) % distinct]
    return torch.from_numpy(np.ascontiguousarray(pool[rows]))


def build_sets(
    held: np.ndarray, train: np.ndarray, n: int, generated: Path | None, size: int, cache: Path | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    reference = torch.from_numpy(np.ascontiguousarray(held[:n]))
    floor = torch.from_numpy(np.ascontiguousarray(held[n : 2 * n]))
    sample = np.sort(np.random.default_rng(1).choice(len(train), size=n, replace=False))
    sets = {"floor: held-out": floor, "floor: training faces": torch.from_numpy(train[sample])}
    bins = hair_hue_bins(train)
    makers = {
        "blur (sigma px)": lambda s: blur(floor, s),
        "noise (std /255)": lambda s: noise(floor, s),
        "hue rotation (turns)": lambda s: hue(floor, s),
        "palette collapse (blend)": lambda s: palette_collapse(floor, s),
        "dropped modes (of 8 hue bins)": lambda s: dropped_modes(train, bins, s, n),
        "copies (distinct faces)": lambda s: copies(train, s, n),
    }
    for kind, levels in DAMAGE_LEVELS.items():
        for level in levels:
            sets[f"{kind} {level:g}"] = makers[kind](level)
    if generated is not None:
        for folder in sorted(p for p in generated.iterdir() if p.is_dir()):
            faces = load_folder(folder, size, cache_root=cache).images
            sets[f"generated: {folder.name}"] = torch.from_numpy(np.ascontiguousarray(faces[:n]))
    return reference, sets


def score(
    reference: torch.Tensor, sets: dict[str, torch.Tensor], weights: Path | None, inception: bool
) -> dict[str, dict[str, float]]:
    ruler = FaceFeatures(weights)
    ref_f = face_features(reference, extractor=ruler)
    incep = None
    if inception:
        from animegen.metrics import InceptionFeatures, inception_features

        incep = InceptionFeatures()
        ref_i = inception_features(reference, extractor=incep)
    out = {}
    for name, faces in sets.items():
        t0 = time.perf_counter()
        row = {"fd_ssl": fid_from_features(ref_f, face_features(faces, extractor=ruler))}
        row["swd"] = swd(reference, faces)["mean"]
        if incep is not None:
            row["fid"] = fid_from_features(ref_i, inception_features(faces, extractor=incep))
        row["seconds"] = round(time.perf_counter() - t0, 1)
        out[name] = row
        print(f"  {name:40s} " + "  ".join(f"{k} {v:9.3f}" for k, v in row.items()), flush=True)
    return out


def verdicts(rows: dict[str, dict[str, float]], metric: str) -> list[str]:
    """One line per damage kind: in order of strength and above the floor, or not."""
    floor = max(rows["floor: held-out"][metric], rows["floor: training faces"][metric])
    lines = []
    for kind, levels in DAMAGE_LEVELS.items():
        if any(f"{kind} {lv:g}" not in rows for lv in levels):
            continue  # left out with --rows
        values = [rows[f"{kind} {lv:g}"][metric] for lv in levels]
        ordered = all(a < b for a, b in zip(values, values[1:], strict=False))
        above = values[0] > floor
        ok = "ok" if ordered and above else "WRONG"
        lines.append(
            f"{metric:7s} {kind:32s} {ok:5s} floor {floor:.3f} -> " + " < ".join(f"{v:.3f}" for v in values)
        )
    gen = {k: v[metric] for k, v in rows.items() if k.startswith("generated: ")}
    if gen:
        order = " < ".join(f"{k[11:]} {v:.3f}" for k, v in sorted(gen.items(), key=lambda kv: kv[1]))
        lines.append(f"{metric:7s} generated, best first: {order}")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--generated", type=Path, help="a folder of folders of generated faces")
    p.add_argument("--weights", type=Path, help="face-encoder weights (default: the shipped ones)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--inception", action="store_true", help="also Inception FID (slow on a CPU)")
    p.add_argument("--cache-dir", type=Path)
    p.add_argument(
        "--rows",
        nargs="+",
        metavar="TEXT",
        help="score only the sets whose names contain one of these (the two floors always)",
    )
    p.add_argument(
        "--encoder-faces",
        type=Path,
        metavar="DIR",
        help="write links to the faces the face encoder may train on (held out by neither split); exit",
    )
    args = p.parse_args()
    if args.encoder_faces:
        kept = encoder_faces(args.data, args.encoder_faces)
        print(f"{args.encoder_faces}: {kept:,} faces held out by neither split")
        return 0
    torch.set_num_threads(args.threads)
    n_train, n_held = split(args.data, args.out / "split", 0.1, 0)
    held = load_folder(args.out / "split" / "heldout", args.size, cache_root=args.cache_dir).images
    train = load_folder(args.out / "split" / "train", args.size, cache_root=args.cache_dir).images
    if 2 * args.n > len(held):
        sys.exit(f"--n {args.n}: needs {2 * args.n} held-out faces, the split has {len(held)}")
    print(f"split: {n_train:,} training, {n_held:,} held-out faces; n = {args.n:,} a side, {args.size} px")
    reference, sets = build_sets(held, train, args.n, args.generated, args.size, args.cache_dir)
    if args.rows:
        sets = {k: v for k, v in sets.items() if k.startswith("floor: ") or any(t in k for t in args.rows)}
    rows = score(reference, sets, args.weights, args.inception)
    lines = [
        line for m in ("fd_ssl", "swd", "fid") if m in rows["floor: held-out"] for line in verdicts(rows, m)
    ]
    print("\n" + "\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ruler.json").write_text(json.dumps({"n": args.n, "rows": rows, "verdicts": lines}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
