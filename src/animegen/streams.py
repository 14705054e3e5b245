"""Every random stream in animegen, numbered once.

A draw is seeded by `derived_seed(run_seed, STREAM, *position)`, a pure function, so what a run
sees depends on (seed, stream, position) and never on RNG state: a resumed run draws exactly what
the uninterrupted run would have, and each distributed rank can slice the same draw. The numbers
are part of every seed's results; never renumber one (a new stream takes the next free number).
"""

from __future__ import annotations

SHUFFLE = 1  # data/batches.py: an epoch's order, (seed, SHUFFLE, epoch)
HFLIP = 2  # data/batches.py: a batch's flips, (seed, HFLIP, epoch, step)
SAMPLE_GRID = 3  # training: the noise behind every epoch's sample grid
TRAIN_NOISE = 4  # training: a step's latents, (seed, TRAIN_NOISE, iteration)
CHUNK_NOISE = 5  # sampling.py: the latents of faces chunk*64 .. chunk*64+63, (seed, CHUNK_NOISE, chunk)
BN_CALIBRATION = 6  # training: latents that measure the EMA generator's BatchNorm statistics
AUGMENT = 7  # training: DiffAugment's draws, (seed, AUGMENT, iteration)
# The latent walk's keyframes. They shared stream 6 with BN_CALIBRATION (the walk's keyframes were
# the first calibration latents); the walk moved, calibration kept its number so trained runs and
# their figures are unchanged.
INTERPOLATION = 8
# training: which images each augmentation op reaches when its probability is below 1,
# (seed of the call, AUGMENT_CHOICE)
AUGMENT_CHOICE = 9


def _mix(*parts: int) -> int:
    """A 63-bit seed from several integers (SplitMix-style), stable across platforms."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x ^= (int(p) + 0x9E3779B97F4A7C15 + (x << 6) + (x >> 2)) & 0xFFFFFFFFFFFFFFFF
        x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def derived_seed(seed: int, stream: int, *parts: int) -> int:
    """The seed of `stream` at a position (epoch, step, iteration, chunk...) of a run seeded `seed`."""
    return _mix(seed, stream, *parts)
