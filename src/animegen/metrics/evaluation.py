"""FID, KID, SWD, FD-SSL (and optionally precision/recall) of a generator's faces against real ones:
what `animegen evaluate` reports and what training evaluates on its held-out images."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from animegen import metrics as measures
from animegen.errors import UserError
from animegen.metrics import copying
from animegen.metrics.face_features import FaceFeatures, face_features
from animegen.sampling import Sampler
from animegen.sampling_options import DEFAULT_BN_MODE
from animegen.visual import make_grid, save_png

METRICS = ("fid", "kid", "swd", "fd_ssl")
# Inception is slow on a CPU: 10k + 10k images would take hours there (docs/design-notes.md).
DEFAULT_N_GPU = 10_000
DEFAULT_N_CPU = 1_000


def default_n(device: torch.device) -> int:
    return DEFAULT_N_GPU if device.type == "cuda" else DEFAULT_N_CPU


def real_subset(images: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of at most n real images, a fixed random subset (sorted, for memmap-friendly reads)."""
    total = len(images)
    if n >= total:
        return np.arange(total)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=n, replace=False))


def _extractor_id(path: str | None) -> str:
    p = Path(path) if path else measures.default_inception_path()
    if p is None:
        return "none"
    st = p.stat()
    return f"{p.name}:{st.st_size}:{st.st_mtime_ns}"


def real_features(
    images: np.ndarray,
    idx: np.ndarray,
    cache_dir: Path | None,
    data_key: str,
    extractor: Any,
    inception_path: str | None,
    batch_size: int = 50,
) -> np.ndarray:
    """Inception features of the real subset, cached next to the decoded images."""
    key = hashlib.sha256(
        f"{data_key}|{_extractor_id(inception_path)}|{idx.tobytes().hex()}".encode()
    ).hexdigest()[:24]
    path = cache_dir / f"inception-{key}.npy" if cache_dir else None
    if path is not None and path.exists():
        try:
            feats = np.load(path, allow_pickle=False)
            if feats.shape == (len(idx), 2048):
                return feats
        except (OSError, ValueError):
            pass
    batches = (
        torch.from_numpy(np.ascontiguousarray(images[idx[i : i + 256]])) for i in range(0, len(idx), 256)
    )
    feats = measures.inception_features(batches, extractor=extractor, batch_size=batch_size)
    if path is not None:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npy")
        try:
            np.save(tmp, feats)
            os.replace(tmp, path)
        except OSError:
            pass
    return feats


def evaluate(
    gen: Sampler,
    real_images: np.ndarray,
    *,
    data_key: str = "",
    cache_dir: Path | None = None,
    n: int | None = None,
    metrics: tuple[str, ...] = METRICS,
    precision_recall: bool = False,
    inception_path: str | None = None,
    seed: int = 0,
    bn_mode: str = DEFAULT_BN_MODE,
    nearest: int = 0,
    nearest_out: Path | None = None,
    progress: Callable[[str], None] | None = None,
    extractor: Any = None,
    face_encoder_path: str | None = None,
    ruler: FaceFeatures | None = None,
    truncation: float | None = None,
    train_images: np.ndarray | None = None,
    neighbours_out: Path | None = None,
) -> dict[str, Any]:
    """Compare `n` generated faces with up to `n` real ones; returns a JSON-ready dict.

    `extractor` / `ruler`: an InceptionFeatures / FaceFeatures already loaded (periodic evaluation
    during training reuses them). `face_encoder_path`: other weights for FD-SSL than the shipped ones.
    `train_images` (the faces the generator trained on; `real_images` then being held-out ones): also
    the copy score (metrics/copying.py), and with `neighbours_out` a sheet of the closest matches.
    """
    started = time.perf_counter()
    device = gen.device
    n = n or default_n(device)
    size = gen.config.image_size
    if real_images.shape[-1] != size:
        raise UserError(f"real images are {real_images.shape[-1]} px but the generator makes {size} px")
    idx = real_subset(real_images, n, seed)
    say = progress or (lambda _m: None)
    say(f"sampling {n:,} faces")
    fake = torch.cat(list(gen.iter_samples(n, seed=seed + 1, bn_mode=bn_mode, truncation=truncation)))
    result: dict[str, Any] = {
        "checkpoint": str(gen.source),
        "n_fake": int(len(fake)),
        "n_real": int(len(idx)),
        "image_size": size,
        "bn_mode": bn_mode,
        "seed": seed,
        "truncation": truncation,
    }
    need_inception = bool({"fid", "kid"} & set(metrics)) or precision_recall or nearest > 0
    if need_inception:
        extractor = extractor or measures.InceptionFeatures(inception_path, device)
        say(f"Inception features of {len(idx):,} real faces")
        real_f = real_features(real_images, idx, cache_dir, data_key, extractor, inception_path)
        say(f"Inception features of {len(fake):,} generated faces")
        fake_f = measures.inception_features(fake.split(256), extractor=extractor)
        if "fid" in metrics:
            result["fid"] = measures.fid_from_features(real_f, fake_f)
        if "kid" in metrics:
            subset = min(1000, len(real_f), len(fake_f))
            mean, std = measures.kid_from_features(real_f, fake_f, max_subset_size=subset, seed=seed)
            result["kid"] = mean
            # Subsets that are the whole of both sets have a spread of 0 by construction, which says
            # nothing about the estimate: it is left out rather than shown as a precision.
            result["kid_std"] = None if subset == len(real_f) == len(fake_f) else std
        if precision_recall:
            result.update(measures.precision_recall(real_f, fake_f, k=3))
        if nearest > 0 and nearest_out is not None:
            write_nearest(fake, fake_f, real_images, idx, real_f, nearest, nearest_out)
            result["nearest"] = str(nearest_out)
    if "swd" in metrics:
        if size < 16:
            raise UserError("SWD needs images of at least 16 px")
        say("sliced Wasserstein distance")
        real_t = torch.from_numpy(np.ascontiguousarray(real_images[idx]))
        out = measures.swd(real_t, fake, seed=seed)
        result["swd"] = out["mean"]
        result["swd_levels"] = {str(k): v for k, v in out["levels"].items()}
    if "fd_ssl" in metrics or train_images is not None:
        say("face-encoder features")
        ruler = ruler or FaceFeatures(face_encoder_path, device)
        # The same real faces every periodic evaluation: their features are computed once per ruler.
        key = hashlib.sha256(f"{data_key}|{idx.tobytes().hex()}".encode()).hexdigest()
        if key not in ruler.real_cache:
            real_t = torch.from_numpy(np.ascontiguousarray(real_images[idx]))
            ruler.real_cache[key] = face_features(real_t, extractor=ruler)
        fake_ssl = face_features(fake, extractor=ruler)
        if "fd_ssl" in metrics:
            result["fd_ssl"] = measures.fid_from_features(ruler.real_cache[key], fake_ssl)
        result["fd_ssl_encoder"] = ruler.id
        if train_images is not None:
            say(f"nearest training faces among {len(train_images):,}")
            train_f = _train_features(train_images, cache_dir, data_key, ruler)
            result.update(copying.copy_score(fake_ssl, train_f, ruler.real_cache[key], seed=seed))
            if neighbours_out is not None:
                copying.write_neighbour_sheet(fake, fake_ssl, train_images, train_f, neighbours_out)
                result["neighbours"] = str(neighbours_out)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _train_features(
    images: np.ndarray, cache_dir: Path | None, data_key: str, ruler: FaceFeatures
) -> np.ndarray:
    """Face-encoder features of every training face, kept in the cache dir (the set is large)."""
    key = hashlib.sha256(f"{data_key}|train|{len(images)}|{ruler.id}".encode()).hexdigest()[:24]
    path = cache_dir / f"faceenc-train-{key}.npy" if cache_dir else None
    if path is not None and path.exists():
        try:
            return np.load(path)
        except (OSError, ValueError):
            pass
    batches = (
        torch.from_numpy(np.ascontiguousarray(images[i : i + 500])) for i in range(0, len(images), 500)
    )
    feats = face_features(batches, extractor=ruler)
    if path is not None:
        try:
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            with open(tmp, "wb") as fh:
                np.save(fh, feats)
            os.replace(tmp, path)
        except OSError:
            pass
    return feats


def write_nearest(
    fake: torch.Tensor,
    fake_f: np.ndarray,
    real_images: np.ndarray,
    idx: np.ndarray,
    real_f: np.ndarray,
    k: int,
    out: Path,
    rows: int = 8,
) -> Path:
    """Rows of: a generated face, then its k nearest real faces in Inception space."""
    rows = min(rows, len(fake))
    q = torch.from_numpy(fake_f[:rows]).float()
    r = torch.from_numpy(real_f).float()
    d = torch.cdist(q, r)
    nn_idx = d.topk(min(k, len(r)), largest=False).indices.numpy()
    tiles = []
    for i in range(rows):
        tiles.append(fake[i])
        for j in nn_idx[i]:
            tiles.append(torch.from_numpy(np.ascontiguousarray(real_images[idx[j]])))
    save_png(make_grid(torch.stack(tiles), nrow=1 + nn_idx.shape[1]), out)
    return out


def format_result(result: dict[str, Any]) -> str:
    """The one line `animegen evaluate` prints for a result."""
    parts = [f"n_fake={result['n_fake']:,}", f"n_real={result['n_real']:,}", f"{result['image_size']} px"]
    if "fid" in result:
        parts.append(f"FID {result['fid']:.2f}")
    if "kid" in result:
        spread = result.get("kid_std")
        kid = f"KID {result['kid'] * 1e3:.2f}e-3"
        parts.append(kid if spread is None else f"{kid} ± {spread * 1e3:.2f}e-3")
    if "swd" in result:
        parts.append(f"SWD {result['swd']:.2f} (x1e3)")
    if "fd_ssl" in result:
        parts.append(f"FD-SSL {result['fd_ssl']:.3f}")
    if "precision" in result:
        parts.append(f"precision {result['precision']:.3f} recall {result['recall']:.3f}")
    if "copy_share" in result:
        parts.append(
            f"copies {result['copy_share']:.1%} (held-out faces {result['copy_share_heldout']:.1%}: "
            f"share closer to a training face than {1 - result['copy_quantile']:.0%} of held-out faces are)"
        )
    if "weights" in result:
        parts.append(f"weights {result['weights']}")
    return "  ".join(parts)
