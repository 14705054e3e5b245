"""Procedurally draw anime-style faces so the GAN pipeline can run without any downloaded data.

Every face is a pure function of an integer seed: shapes are laid out in a unit square, drawn with
Pillow at 4x the requested size and downsampled with Lanczos for smooth, anti-aliased edges.  The
layout mimics cropped anime-face datasets (face centred, filling the frame, hair cut off at the edges)
so a model trained here behaves like one trained on real crops.
"""

from __future__ import annotations

import math
import os
import pathlib
import random

import numpy as np
from PIL import Image

from animegen.data.drawing import Color, Point, _bezier, _Canvas, _ellipse, _jitter, _shade
from animegen.data.palette import _BACKGROUND, _HAIR, _IRIS, _SKIN

__all__ = ["draw_face", "demo_face_array", "write_demo_folder"]

# Drawing at 4x and downsampling is what makes thin lines (lashes, mouth) survive at 64 px.
_SUPERSAMPLE = 4


def _background(rng: random.Random, size: int) -> Image.Image:
    top = _jitter(rng, rng.choice(_BACKGROUND), 12)
    if rng.random() < 0.5:
        return Image.new("RGB", (size, size), top)
    if rng.random() < 0.5:
        bottom = _shade(top, rng.uniform(0.7, 0.9))
    else:
        bottom = _jitter(rng, rng.choice(_BACKGROUND), 12)
    # A 1-px column stretched sideways is several times faster than building the full gradient in numpy.
    last = max(size - 1, 1)
    column = bytes(
        round(top[ch] + (bottom[ch] - top[ch]) * row / last) for row in range(size) for ch in range(3)
    )
    return Image.frombytes("RGB", (1, size), column).resize((size, size), Image.NEAREST)


def _face_outline(cx: float, cy: float, w: float, top: float, chin: float, jaw: float) -> list[Point]:
    """Wide cheeks tapering to a small chin; ``jaw`` in [0, 1] moves from pointy to round."""
    pts: list[Point] = []
    for k in range(13):
        t = math.pi * k / 12
        pts.append((cx + w * math.cos(t), cy - (cy - top) * math.sin(t)))
    # Left cheek -> chin -> right cheek; the control point sets how soft the jawline is.
    ctrl_x = w * (0.6 + 0.35 * jaw)
    ctrl_y = cy + (chin - cy) * (0.6 + 0.3 * jaw)
    left = _bezier((cx - w, cy), (cx - ctrl_x, ctrl_y), (cx, chin), 10)
    right = _bezier((cx, chin), (cx + ctrl_x, ctrl_y), (cx + w, cy), 10)
    pts.extend(left[1:])
    pts.extend(right[1:-1])
    return pts


def _draw_eye(
    cv: _Canvas,
    rng: random.Random,
    ex: float,
    ey: float,
    a: float,
    b: float,
    side: int,
    iris: Color,
    lash: Color,
    look: float,
    closed: bool,
) -> None:
    """One anime eye; ``side`` is -1 for the viewer's left eye so lid wings flick outwards."""
    outer = ex + side * a * 1.1
    inner = ex - side * a * 1.0
    if closed:
        # A happy closed eye (^) reads instantly as anime and adds variety.
        cv.line(_bezier((inner, ey + 0.2 * b), (ex, ey - 0.9 * b), (outer, ey + 0.25 * b), 8), lash, 0.022)
        return

    # Eye white: flat-ish top hidden under the lid, rounder bottom.
    upper = _bezier((inner, ey - 0.1 * b), (ex, ey - 1.0 * b), (outer, ey - 0.35 * b), 8)
    lower = _bezier((outer, ey - 0.35 * b), (ex + side * a * 0.2, ey + 1.35 * b), (inner, ey - 0.1 * b), 8)
    white = upper + lower[1:-1]
    cv.poly(white, (252, 252, 255))

    ix = ex + look * a * 0.25
    iy = ey + 0.08 * b
    cv.poly(_ellipse(ix, iy, 0.74 * a, 0.92 * b), _shade(iris, 0.55))
    cv.poly(_ellipse(ix, iy + 0.05 * b, 0.64 * a, 0.82 * b), iris)
    # Lighter lower half is the classic anime iris gradient.
    cv.poly(_ellipse(ix, iy + 0.42 * b, 0.5 * a, 0.42 * b), _shade(iris, 1.35))
    cv.poly(_ellipse(ix, iy - 0.05 * b, 0.3 * a, 0.48 * b), _shade(iris, 0.22))

    # Upper lid: thick dark band whose lower edge cuts the top of the iris, ending in an outer wing.
    thick = b * rng.uniform(0.22, 0.32)
    lid_top = _bezier(
        (inner - side * 0.05 * a, ey + 0.05 * b), (ex, ey - 1.25 * b), (outer, ey - 0.4 * b), 10
    )
    wing = (outer + side * a * 0.22, ey - 0.55 * b - thick)
    lid_bottom = _bezier(
        (outer, ey - 0.4 * b + thick), (ex, ey - 1.25 * b + 2 * thick), (inner, ey + 0.1 * b), 10
    )
    cv.poly([*lid_top, wing, *lid_bottom], lash)
    # Short lower lash line anchors the bottom of the eye.
    cv.line(
        _bezier(
            (ex - side * a * 0.2, ey + 1.0 * b),
            (ex + side * a * 0.45, ey + 1.05 * b),
            (outer, ey + 0.45 * b),
            6,
        ),
        _shade(lash, 1.3),
        0.008,
    )

    # Specular highlights: same light direction for both eyes, otherwise the face looks cross-eyed.
    hx = ix - 0.3 * a
    hy = iy - 0.38 * b
    cv.poly(_ellipse(hx, hy, 0.24 * a, 0.2 * b, 16), (255, 255, 255))
    if rng.random() < 0.8:
        cv.poly(_ellipse(ix + 0.28 * a, iy + 0.45 * b, 0.11 * a, 0.09 * b, 12), (255, 255, 255))


def _draw_mouth(cv: _Canvas, rng: random.Random, mx: float, my: float, skin: Color) -> None:
    line_col = _shade(skin, 0.45)
    style = rng.randrange(5)
    half = rng.uniform(0.035, 0.055)
    if style == 0:  # gentle smile
        cv.line(_bezier((mx - half, my - 0.006), (mx, my + 0.02), (mx + half, my - 0.006), 8), line_col, 0.01)
    elif style == 1:  # open "D" smile with tongue
        shape = _bezier((mx - half, my - 0.01), (mx, my + 0.075), (mx + half, my - 0.01), 10)
        cv.poly(shape, (150, 45, 60), outline=line_col, width=0.008)
        cv.poly(_ellipse(mx, my + 0.022, half * 0.45, 0.01, 12), (236, 120, 130))
    elif style == 2:  # small "o"
        cv.poly(
            _ellipse(mx, my + 0.008, half * 0.38, 0.022, 16), (160, 55, 70), outline=line_col, width=0.006
        )
    elif style == 3:  # cat mouth
        q = half * 0.55
        cv.line(_bezier((mx - 2 * q, my - 0.004), (mx - q, my + 0.03), (mx, my), 6), line_col, 0.009)
        cv.line(_bezier((mx, my), (mx + q, my + 0.03), (mx + 2 * q, my - 0.004), 6), line_col, 0.009)
    else:  # small neutral line
        cv.line([(mx - half * 0.55, my + 0.005), (mx + half * 0.55, my + 0.002)], line_col, 0.009)


def _hair_front(
    rng: random.Random,
    cx: float,
    w: float,
    crown: float,
    fringe_y: float,
    tip_lo: float,
    tip_hi: float,
    side_end: float,
) -> tuple[list[Point], list[Point], list[tuple[Point, Point]]]:
    """Cap + bangs + two side locks as one polygon, the forehead shadow the bangs cast, and strand lines
    (from the crown to each bang tip)."""
    out = w + rng.uniform(0.06, 0.1)
    side_in = w - rng.uniform(0.0, 0.05)
    sweep = rng.uniform(-0.05, 0.05)
    n_locks = rng.randint(4, 7)
    span_l, span_r = cx - w + 0.01, cx + w - 0.01
    edges = [span_l + (span_r - span_l) * k / n_locks for k in range(n_locks + 1)]
    # Occasionally part the hair: the middle notch rises so a wedge of forehead shows.
    part = n_locks // 2 if rng.random() < 0.35 else -1

    pts: list[Point] = []
    # Left side lock tip, up the outside, over the crown, down to the right lock tip.
    # Each side lock ends in a point that curls slightly inwards over the cheek.
    tip_l = (cx - side_in + 0.01, side_end)
    tip_r = (cx + side_in - 0.01, side_end)
    pts.append(tip_l)
    pts.extend(
        _bezier((cx - out - 0.01, side_end - 0.08), (cx - out - 0.03, crown + 0.05), (cx - w * 0.3, crown), 8)
    )
    pts.extend(
        _bezier((cx + w * 0.3, crown), (cx + out + 0.03, crown + 0.05), (cx + out + 0.01, side_end - 0.08), 8)
    )
    pts.append(tip_r)
    # Up the inside of the right lock to the fringe.
    pts.extend(_bezier(tip_r, (cx + w + 0.01, fringe_y + 0.12), (edges[-1], fringe_y), 6)[1:])

    strands: list[tuple[Point, Point]] = []
    prev = (edges[-1], fringe_y)
    fringe: list[Point] = [prev]
    for k in range(n_locks, 0, -1):
        left_x = edges[k - 1]
        notch_y = fringe_y + rng.uniform(-0.01, 0.04)
        if k - 1 == part:
            notch_y = fringe_y - 0.08
        if k - 1 == 0:
            notch_y = fringe_y
        tip_x = (edges[k] + left_x) / 2 + sweep + rng.uniform(-0.015, 0.015)
        tip_y = rng.uniform(tip_lo, tip_hi)
        tip = (tip_x, tip_y)
        mid_r = ((prev[0] + tip_x) / 2 + 0.02, (prev[1] + tip_y) / 2)
        mid_l = ((left_x + tip_x) / 2 - 0.02, (notch_y + tip_y) / 2)
        fringe.extend(_bezier(prev, mid_r, tip, 5)[1:])
        fringe.extend(_bezier(tip, mid_l, (left_x, notch_y), 5)[1:])
        strands.append(((cx + (tip_x - cx) * 0.35, crown + 0.08), (tip_x, tip_y - 0.04)))
        prev = (left_x, notch_y)
    pts.extend(fringe[1:])
    # Down the inside of the left lock.
    pts.extend(_bezier(prev, (cx - w - 0.01, fringe_y + 0.12), tip_l, 6)[1:-1])
    # Only the fringe casts the shadow: a shadow of the side locks would spill off the face.
    shadow = [(span_r, crown + 0.1), *((x, y + 0.03) for x, y in fringe), (span_l, crown + 0.1)]
    return pts, shadow, strands


def draw_face(seed: int, size: int = 64) -> Image.Image:
    """Draw one anime-style face; the same ``seed`` and ``size`` always give identical pixels."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    rng = random.Random(seed)
    big = size * _SUPERSAMPLE
    image = _background(rng, big)

    skin = _jitter(rng, rng.choice(_SKIN), 6)
    skin_shadow = _shade(skin, 0.86)
    hair = _jitter(rng, rng.choice(_HAIR), 14)
    hair_dark = _shade(hair, 0.72)
    hair_line = _shade(hair, 0.45)
    iris = _jitter(rng, rng.choice(_IRIS), 18)
    lash = (44, 30, 36) if rng.random() < 0.7 else _shade(hair, 0.35)

    cx = 0.5 + rng.uniform(-0.025, 0.025)
    cy = rng.uniform(0.54, 0.58)
    w = rng.uniform(0.29, 0.34)
    chin = cy + rng.uniform(0.3, 0.37)
    crown = rng.uniform(0.0, 0.07)
    cv = _Canvas(image, (cx, cy), rng.uniform(-7.0, 7.0))

    # Back hair, drawn first so the face sits on top; long hair runs off the bottom edge.
    long_hair = rng.random() < 0.6
    back_w = w + rng.uniform(0.11, 0.16)
    back_bottom = 1.1 if long_hair else cy + rng.uniform(0.12, 0.25)
    flare = rng.uniform(0.0, 0.06) if long_hair else 0.0
    back = _bezier(
        (cx - back_w - flare, back_bottom), (cx - back_w - 0.06, crown - 0.05), (cx, crown - 0.02), 10
    )
    back += _bezier(
        (cx, crown - 0.02), (cx + back_w + 0.06, crown - 0.05), (cx + back_w + flare, back_bottom), 10
    )
    if not long_hair:
        # Ragged ends on short hair.
        back.append((cx + back_w * 0.6, back_bottom - 0.07))
        back.append((cx - back_w * 0.6, back_bottom - 0.07))
    cv.poly(back, hair_dark, outline=hair_line, width=0.01)

    # Neck and a hint of collar so the chin has something beneath it.
    neck_w = w * 0.38
    cv.poly([(cx - neck_w, cy), (cx + neck_w, cy), (cx + neck_w, 1.1), (cx - neck_w, 1.1)], skin_shadow)
    shirt = _jitter(rng, rng.choice(_BACKGROUND + _HAIR), 20)
    collar = [
        (cx - 0.5, 1.12),
        (cx - 0.3, chin + 0.06),
        (cx, chin + 0.12),
        (cx + 0.3, chin + 0.06),
        (cx + 0.5, 1.12),
    ]
    cv.poly(collar, shirt, outline=_shade(shirt, 0.6), width=0.008)

    top = crown + 0.06
    cv.poly(_face_outline(cx, cy, w, top, chin, rng.random()), skin, outline=_shade(skin, 0.6), width=0.008)

    # Eye layout: large, low on the face, slightly apart; this is what makes it read as anime.
    a = rng.uniform(0.075, 0.095)
    b = a * rng.uniform(1.15, 1.45)
    ey = cy + rng.uniform(-0.01, 0.03)
    gap = rng.uniform(0.13, 0.16)
    look = rng.uniform(-1.0, 1.0)
    closed = rng.random() < 0.06
    fringe_y = top + rng.uniform(0.06, 0.1)
    tip_lo = ey - b * 2.3
    tip_hi = max(tip_lo + 0.01, ey - b * rng.uniform(1.2, 1.6))

    side_end = cy + rng.uniform(0.12, 0.28)
    hair_pts, shadow, strands = _hair_front(rng, cx, w, crown, fringe_y, tip_lo, tip_hi, side_end)
    cv.poly(shadow, skin_shadow)

    brow_y = ey - b * 1.55
    brow_col = _shade(hair, 0.5)
    brow_lift = rng.uniform(-0.015, 0.015)
    for side in (-1, 1):
        ex = cx + side * gap
        _draw_eye(cv, rng, ex, ey, a, b, side, iris, lash, look, closed)
        cv.line(
            _bezier(
                (ex - side * a * 0.7, brow_y + 0.01),
                (ex, brow_y - 0.025 + brow_lift),
                (ex + side * a * 1.1, brow_y + 0.012 - brow_lift),
                6,
            ),
            brow_col,
            0.01,
        )

    if rng.random() < 0.5:
        blush = (255, 120, 140, rng.randint(60, 110))
        for side in (-1, 1):
            bx = cx + side * (gap + 0.01)
            by = ey + b * 1.55
            cv.translucent(_ellipse(bx, by, a * 0.9, 0.028, 20), blush)
            if rng.random() < 0.5:
                for k in (-1, 0, 1):
                    x0 = bx + k * a * 0.45
                    cv.line([(x0 + 0.008, by - 0.015), (x0 - 0.008, by + 0.015)], (235, 100, 120), 0.005)

    nose_y = ey + b + (chin - ey - b) * 0.35
    cv.line([(cx + 0.004, nose_y), (cx - 0.004, nose_y + 0.012)], _shade(skin, 0.7), 0.008)
    mouth_y = nose_y + (chin - nose_y) * rng.uniform(0.4, 0.5)
    _draw_mouth(cv, rng, cx + rng.uniform(-0.01, 0.01), mouth_y, skin)

    cv.poly(hair_pts, hair, outline=hair_line, width=0.01)
    # Glossy crescent across the crown ("angel ring"), a staple of anime hair shading; the strand lines
    # drawn after it break it up the way a painted highlight would be.
    ring_y = crown + rng.uniform(0.09, 0.14)
    ring_l, ring_r = (cx - w * 0.8, ring_y + 0.07), (cx + w * 0.8, ring_y + 0.07)
    ring = (
        _bezier(ring_l, (cx, ring_y - 0.06), ring_r, 10)
        + _bezier(ring_r, (cx, ring_y + 0.01), ring_l, 10)[1:-1]
    )
    cv.translucent(ring, (255, 255, 255, rng.randint(60, 110)))
    for start, end in strands:
        cv.line([start, end], hair_dark, 0.006)

    if rng.random() < 0.3:
        # Hair clips are a common anime accessory and give the GAN a small, sharp feature to learn.
        clip = _jitter(rng, rng.choice(_IRIS), 20)
        side = rng.choice((-1, 1))
        kx, ky = cx + side * w * rng.uniform(0.45, 0.7), fringe_y - rng.uniform(0.0, 0.03)
        for dx in (-0.025, 0.025):
            x0 = kx + dx
            cv.poly(
                [
                    (x0 - 0.012, ky - 0.055),
                    (x0 + 0.01, ky - 0.06),
                    (x0 + 0.016, ky + 0.055),
                    (x0 - 0.006, ky + 0.06),
                ],
                clip,
                outline=_shade(clip, 0.5),
                width=0.005,
            )

    # reducing_gap box-filters most of the way first; the final Lanczos step keeps edges crisp.
    return image.resize((size, size), Image.LANCZOS, reducing_gap=2.0)


def _face_seed(seed: int, index: int) -> int:
    # Linear in ``index`` so face i never depends on how many faces were requested.
    return seed * 1_000_003 + index


def demo_face_array(count: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """Return ``count`` demo faces as a uint8 array of shape (count, 3, size, size)."""
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    out = np.empty((count, 3, size, size), dtype=np.uint8)
    for i in range(count):
        out[i] = np.asarray(draw_face(_face_seed(seed, i), size)).transpose(2, 0, 1)
    return out


def write_demo_folder(
    folder: str | os.PathLike[str], count: int, size: int = 64, seed: int = 0
) -> list[pathlib.Path]:
    """Write ``count`` demo faces as ``face_00000.png``... into ``folder`` (created if needed)."""
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    root = pathlib.Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = root / f"face_{i:05d}.png"
        draw_face(_face_seed(seed, i), size).save(path)
        paths.append(path)
    return paths
