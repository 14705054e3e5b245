"""Names and values that several layers agree on, defined once and free of torch, so the CLI's
parsers, the config and the networks import them without paying for torch."""

from __future__ import annotations

import math

from animegen.errors import UserError

# BatchNorm at sampling time: "eval" uses the running averages, "batch" each batch's statistics.
BN_MODES = ("batch", "eval")
# The running averages gave samples closer to the data (SWD) than batch statistics on the seed
# architecture (docs/guide.md, "BatchNorm at sampling time"), and make a face independent of its batch.
DEFAULT_BN_MODE = "eval"

# Faces are drawn in fixed chunks: the noise of face i depends only on (seed, i // CHUNK), and with
# batch-statistics BatchNorm a face's look also depends on its batch, so batches are always whole
# chunks. Together this makes "same seed, same faces" hold whatever -n or batch size is asked for.
CHUNK = 64

AUGMENT_POLICIES = ("color", "translation", "cutout")  # DiffAugment's (training/augment.py)

SUPPORTED_SIZES = (16, 24, 32, 48, 64, 96, 128, 192)


def parse_policy(text: str) -> tuple[str, ...]:
    """A DiffAugment policy ("color,translation") as its parts; ValueError on an unknown one."""
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    for p in parts:
        if p not in AUGMENT_POLICIES:
            raise ValueError(f"unknown DiffAugment policy {p!r} (choose from {', '.join(AUGMENT_POLICIES)})")
    return parts


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
