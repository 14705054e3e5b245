"""The image sizes the networks support and the layout each one gets, free of torch so the config
and the command line check a size without importing it."""

from __future__ import annotations

import math

from animegen.errors import UserError

SUPPORTED_SIZES = (16, 24, 32, 48, 64, 96, 128, 192)


def layout(image_size: int) -> tuple[int, int]:
    """(outer scale factor, number of stride-2 stages) for an image size.

    The seed network ends with a 5x5 stride-3 transposed conv (32 -> 96); sizes divisible by 3 keep
    that layer, the others end like the DCGAN paper with a 4x4 stride-2 one. Between the 4x4 seed
    and the outer layer, every stage doubles the resolution.
    """
    if image_size not in SUPPORTED_SIZES:
        sizes = ", ".join(map(str, SUPPORTED_SIZES))
        raise UserError(f"image size {image_size} is not supported (choose one of {sizes})")
    factor = 3 if image_size % 3 == 0 else 2
    stages = int(math.log2(image_size // factor // 4))
    return factor, stages
