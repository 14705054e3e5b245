"""Colour palettes the procedural demo faces (data/demo_faces.py) draw from: skin, hair, iris, background."""

from __future__ import annotations

from animegen.data.drawing import Color

_SKIN: tuple[Color, ...] = (
    (255, 228, 212),
    (255, 219, 198),
    (250, 210, 185),
    (255, 236, 225),
    (241, 194, 164),
    (222, 170, 135),
    (252, 224, 205),
    (198, 145, 110),
)
_HAIR: tuple[Color, ...] = (
    (244, 150, 190),  # pink
    (226, 92, 150),  # magenta
    (92, 140, 226),  # blue
    (140, 198, 240),  # light blue
    (52, 62, 118),  # navy
    (202, 206, 218),  # silver
    (236, 236, 242),  # white
    (36, 33, 42),  # black
    (62, 44, 40),  # near-black brown
    (92, 58, 38),  # dark brown
    (146, 96, 58),  # brown
    (246, 214, 120),  # blonde
    (234, 178, 72),  # golden
    (238, 128, 62),  # orange
    (198, 52, 58),  # red
    (152, 102, 204),  # purple
    (112, 190, 142),  # green
    (64, 170, 172),  # teal
)
_IRIS: tuple[Color, ...] = (
    (60, 120, 230),
    (40, 170, 200),
    (60, 170, 90),
    (220, 60, 70),
    (150, 80, 210),
    (225, 150, 40),
    (140, 85, 50),
    (230, 100, 170),
    (90, 90, 110),
    (30, 190, 170),
)
_BACKGROUND: tuple[Color, ...] = (
    (250, 250, 250),
    (255, 240, 245),
    (235, 245, 255),
    (240, 255, 240),
    (255, 250, 225),
    (230, 225, 250),
    (200, 225, 245),
    (250, 210, 215),
    (215, 240, 225),
    (60, 60, 80),
    (120, 150, 190),
    (245, 200, 160),
)
