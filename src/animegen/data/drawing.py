"""Drawing helpers for the procedural demo faces (data/demo_faces.py): colours, Bezier curves,
ellipses, and a supersampled canvas."""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence

from PIL import Image, ImageDraw

Color = tuple[int, int, int]
Point = tuple[float, float]


def _shade(color: Color, factor: float) -> Color:
    """Darken (factor < 1) or lighten towards white (factor > 1) while keeping the hue."""
    if factor <= 1.0:
        return (int(color[0] * factor), int(color[1] * factor), int(color[2] * factor))
    t = min(factor - 1.0, 1.0)
    return (
        int(color[0] + (255 - color[0]) * t),
        int(color[1] + (255 - color[1]) * t),
        int(color[2] + (255 - color[2]) * t),
    )


def _jitter(rng: random.Random, color: Color, amount: int) -> Color:
    """Small per-face colour noise so palettes don't collapse to a handful of exact colours."""
    return (
        max(0, min(255, color[0] + rng.randint(-amount, amount))),
        max(0, min(255, color[1] + rng.randint(-amount, amount))),
        max(0, min(255, color[2] + rng.randint(-amount, amount))),
    )


@functools.cache
def _bezier_weights(n: int) -> tuple[tuple[float, float, float], ...]:
    # Cached because the same few segment counts are used thousands of times per batch.
    return tuple(((1 - k / n) ** 2, 2 * (1 - k / n) * (k / n), (k / n) ** 2) for k in range(n + 1))


def _bezier(p0: Point, p1: Point, p2: Point, n: int) -> list[Point]:
    """Quadratic Bezier from p0 to p2 (inclusive) pulled towards p1."""
    x0, y0 = p0
    x1, y1 = p1
    x2, y2 = p2
    return [(a * x0 + b * x1 + c * x2, a * y0 + b * y1 + c * y2) for a, b, c in _bezier_weights(n)]


@functools.cache
def _unit_circle(n: int) -> tuple[tuple[float, float], ...]:
    return tuple((math.cos(2.0 * math.pi * k / n), math.sin(2.0 * math.pi * k / n)) for k in range(n))


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 24) -> list[Point]:
    return [(cx + rx * c, cy + ry * s) for c, s in _unit_circle(n)]


class _Canvas:
    """Unit-square drawing surface; a small head tilt is applied to every point, which is why ellipses
    are drawn as polygons rather than with ``ImageDraw.ellipse`` (that one can't rotate)."""

    def __init__(self, image: Image.Image, pivot: Point, tilt_deg: float) -> None:
        self.scale = float(image.width)
        self.draw = ImageDraw.Draw(image)
        # A second handle in RGBA mode blends translucent fills (blush, hair sheen) onto the RGB image.
        self.blend = ImageDraw.Draw(image, "RGBA")
        # Tilt about ``pivot`` then scale to pixels, folded into one affine map for speed.
        angle = math.radians(tilt_deg)
        c, s, k = math.cos(angle) * self.scale, math.sin(angle) * self.scale, self.scale
        px, py = pivot
        self._affine = (c, -s, px * k - px * c + py * s, s, c, py * k - px * s - py * c)

    def _map(self, pts: Sequence[Point]) -> list[Point]:
        a, b, c, d, e, f = self._affine
        return [(a * x + b * y + c, d * x + e * y + f) for x, y in pts]

    def width(self, w: float) -> int:
        return max(1, round(w * self.scale))

    def poly(
        self, pts: Sequence[Point], fill: Color, outline: Color | None = None, width: float = 0.0
    ) -> None:
        mapped = self._map(pts)
        self.draw.polygon(mapped, fill=fill)
        if outline is not None:
            # Closing the line by hand (instead of polygon(width=)) gives rounded joints on every vertex.
            self.draw.line([*mapped, mapped[0]], fill=outline, width=self.width(width), joint="curve")

    def line(self, pts: Sequence[Point], fill: Color, width: float) -> None:
        self.draw.line(self._map(pts), fill=fill, width=self.width(width), joint="curve")

    def translucent(self, pts: Sequence[Point], fill: tuple[int, int, int, int]) -> None:
        self.blend.polygon(self._map(pts), fill=fill)
