"""Duplicate faces in a folder: exact copies and near copies, found once per decoded-image cache.

A generator copies what it sees most, so a face that appears twice is a face it learns twice, and a
held-out face with a copy in the training rows is no longer held out. Exact copies are rows whose
decoded pixels hash the same (byte-identical files, or files that decode to the same image); near
copies are rows whose perceptual hashes (imagehash's pHash, 64 bits) differ in at most NEAR_BITS
bits: re-encodes, small crops, recolours. The report is stored beside the cache entry, so it is
computed once per folder and image size; the cache's key and content do not change.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPORT_NAME = "duplicates.json"
REPORT_VERSION = 1
NEAR_BITS = 4  # docs/design-notes.md: how the threshold was chosen

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


@dataclass
class Duplicates:
    """Groups of rows (indices into the decoded images) that show the same face."""

    exact: list[list[int]] = field(default_factory=list)  # identical pixels
    near: list[list[int]] = field(default_factory=list)  # pHash within NEAR_BITS, not identical

    def groups(self) -> list[list[int]]:
        """Every group of rows that are copies of each other, exact and near joined."""
        return _join([*self.exact, *self.near], ())

    def extra_rows(self) -> int:
        """How many rows would go if one face of each group stayed."""
        return sum(len(g) - 1 for g in self.groups())

    def training_rows(self, train_rows: np.ndarray, held_rows: np.ndarray) -> np.ndarray:
        """`train_rows` less the copies: one row of each group stays, none where a copy is held out
        (training on it would put the held-out face in training)."""
        held = set(held_rows.tolist())
        drop: set[int] = set()
        for group in self.groups():
            if held.intersection(group):
                drop.update(r for r in group if r not in held)
            else:
                drop.update(sorted(group)[1:])
        keep = np.array([r for r in train_rows.tolist() if r not in drop], dtype=train_rows.dtype)
        return keep

    def warning_line(self, names: list[str], source: str, max_named: int = 2) -> str | None:
        """One line for the user, or None when the folder holds no copies."""
        if not self.exact and not self.near:
            return None
        parts = []
        for kind, groups, sep in (("exact", self.exact, " = "), ("near", self.near, " ~ ")):
            if groups:
                n = sum(len(g) - 1 for g in groups)
                shown = ", ".join(sep.join(names[r] for r in g[:2]) for g in groups[:max_named])
                more = ", ..." if len(groups) > max_named else ""
                what = (
                    "exact duplicates"
                    if kind == "exact"
                    else f"near duplicates within {NEAR_BITS} pHash bits"
                )
                parts.append(f"{n} {what} ({shown}{more})")
        return (
            f"{source}: {' and '.join(parts)}; --drop-duplicates trains on one face of each "
            f"({self.extra_rows()} fewer rows)"
        )

    def to_json(self) -> dict:
        return {"version": REPORT_VERSION, "near_bits": NEAR_BITS, "exact": self.exact, "near": self.near}


def perceptual_hashes(images: np.ndarray) -> np.ndarray:
    """imagehash's pHash of each (3, S, S) uint8 row, as uint64."""
    import imagehash
    from PIL import Image

    out = np.empty(len(images), dtype=np.uint64)
    weights = np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64)
    for i, row in enumerate(images):
        bits = imagehash.phash(Image.fromarray(np.ascontiguousarray(row.transpose(1, 2, 0)))).hash.reshape(-1)
        out[i] = np.bitwise_or.reduce(weights[bits])
    return out


def find_duplicates(images: np.ndarray, near_bits: int = NEAR_BITS) -> Duplicates:
    """Exact copies by a SHA-256 of each row's pixels; near copies by pHash distance."""
    by_digest: dict[bytes, list[int]] = {}
    for i, row in enumerate(images):
        by_digest.setdefault(hashlib.sha256(np.ascontiguousarray(row).tobytes()).digest(), []).append(i)
    exact = sorted(g for g in by_digest.values() if len(g) > 1)
    same = {r: g[0] for g in exact for r in g}
    pairs = _near_pairs(perceptual_hashes(images), near_bits)
    # Near pairs between rows that are not already exact copies of each other.
    near_pairs = [(a, b) for a, b in pairs if same.get(a, a) != same.get(b, b)]
    near = _join([list(p) for p in near_pairs], exact)
    return Duplicates(exact=exact, near=near)


def load_or_find(images: np.ndarray, entry: Path | None) -> Duplicates:
    """The report stored in the cache entry `entry`, or a new one (stored there when it can be)."""
    path = entry / REPORT_NAME if entry is not None else None
    if path is not None:
        try:
            data = json.loads(path.read_text())
            if data.get("version") == REPORT_VERSION and data.get("near_bits") == NEAR_BITS:
                return Duplicates(exact=data["exact"], near=data["near"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    found = find_duplicates(images)
    if path is not None:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps(found.to_json()))
            os.replace(tmp, path)
        except OSError:  # a read-only cache: the report is simply found again next time
            tmp.unlink(missing_ok=True)
    return found


def _near_pairs(hashes: np.ndarray, max_bits: int) -> list[tuple[int, int]]:
    """Pairs of rows whose hashes differ in at most `max_bits` bits.

    Split the 64 bits into max_bits + 1 bands: two hashes that close agree exactly on at least one
    band (pigeonhole), so only rows sharing a band's value are compared.
    """
    bands = np.array_split(np.arange(64), max_bits + 1)
    found: set[tuple[int, int]] = set()
    for band in bands:
        shift, width = int(63 - band[-1]), len(band)
        keys = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for s, e in zip(starts, ends, strict=True):
            if e - s < 2:
                continue
            rows = order[s:e]
            x = hashes[rows][:, None] ^ hashes[rows][None, :]
            dist = _POPCOUNT[x.view(np.uint8)].reshape(len(rows), len(rows), 8).sum(-1)
            a, b = np.nonzero(np.triu(dist <= max_bits, k=1))
            found.update(
                (int(min(rows[i], rows[j])), int(max(rows[i], rows[j]))) for i, j in zip(a, b, strict=True)
            )
    return sorted(found)


def _join(groups: Iterable[list[int]], exact: Iterable[list[int]]) -> list[list[int]]:
    """Union of overlapping groups; with `exact`, groups that only restate an exact group go."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for g in groups:
        for r in g[1:]:
            parent[find(r)] = find(g[0])
    members: dict[int, list[int]] = {}
    for r in parent:
        members.setdefault(find(r), []).append(r)
    exact_sets = {frozenset(g) for g in exact}
    return sorted(sorted(g) for g in members.values() if len(g) > 1 and frozenset(g) not in exact_sets)
