"""Best-of-N sampling: draw N candidate faces, score each with the trained discriminator, keep the top n.

Candidate i is exactly face i of `animegen generate --seed S` (the same fixed-seed noise and chunks),
so a kept face can be regenerated from its seed and index. D runs in eval mode (BatchNorm with its
running averages, spectral norm without a power iteration), so a face's score does not depend on the
faces scored beside it and D's weights and buffers are left as they were. Faces are scored as the
uint8 pictures that are written out, so a score can be recomputed from the kept images.

D's raw output is used as the score: a logit for the networks trained here (any loss), a probability
for a D ending in Sigmoid; both are monotonic in D's belief that the face is real, so the ranking is
the same either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from animegen import checkpoint_format as ckpt
from animegen.config import ModelConfig
from animegen.errors import CheckpointError, UserError
from animegen.model_loading import (
    LoadedGenerator,
    _is_safetensors,
    instantiate,
    model_config_from_meta,
    resolve_checkpoint,
)
from animegen.networks import build_discriminator, normalize_state_dict_keys
from animegen.sampling import DEFAULT_BN_MODE, bn_mode_context

NO_DISCRIMINATOR = "--best-of needs a training checkpoint with the discriminator"


@dataclass
class LoadedDiscriminator:
    """A discriminator ready to score, with where it came from."""

    net: nn.Module
    config: ModelConfig
    source: Path
    device: torch.device


class BestOf(NamedTuple):
    images: torch.Tensor  # uint8 (n, 3, S, S), best first
    scores: torch.Tensor  # float32 (n,), D's raw output, descending
    indices: torch.Tensor  # int64 (n,), each face's candidate index (its face number under the seed)


def load_discriminator(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedDiscriminator:
    """D from an animegen training checkpoint or a run dir (its newest good checkpoint, as load_generator).

    Raises CheckpointError naming the file for anything that holds no discriminator: a tutorial
    netG_NNN.pth, a generator-only checkpoint. Only the safetensors checkpoint reader is used; nothing
    is unpickled.
    """
    source, _notes = resolve_checkpoint(path)
    if not _is_safetensors(source):
        raise CheckpointError(f"{source}: holds no discriminator; {NO_DISCRIMINATOR}")
    tensors, meta = ckpt.read_checkpoint(source)
    state = normalize_state_dict_keys(ckpt.unpack_state_dict("D", tensors))
    if not state:
        raise CheckpointError(f"{source}: holds no discriminator; {NO_DISCRIMINATOR}")
    cfg = model_config_from_meta(meta, source)
    device = torch.device(device)
    net = instantiate(build_discriminator, cfg, state, source, device)
    return LoadedDiscriminator(net, cfg, source, device)


@torch.no_grad()
def score_images(disc: LoadedDiscriminator | nn.Module, images: torch.Tensor) -> torch.Tensor:
    """D's raw output (float32, on the CPU) for uint8 images (B, 3, S, S), with D in eval mode."""
    net = disc.net if isinstance(disc, LoadedDiscriminator) else disc
    device = next(net.parameters()).device
    x = images.to(device).float().div(127.5).sub(1.0)
    with bn_mode_context(net, "eval"):
        # A projected D gives several logits per image: their mean is the image's score.
        return net(x).reshape(len(x), -1).mean(dim=1).float().cpu()


def best_of(
    gen: LoadedGenerator,
    disc: LoadedDiscriminator | nn.Module,
    n: int,
    candidates: int,
    seed: int = 0,
    bn_mode: str = DEFAULT_BN_MODE,
    truncation: float | None = None,
) -> BestOf:
    """Sample `candidates` faces with seed `seed`, keep the `n` that D scores highest, best first.

    Works a chunk at a time: memory holds the n best so far plus one chunk, whatever `candidates` is.
    Equal scores keep the lower candidate index first.
    """
    if n < 1:
        raise UserError(f"best-of: must keep at least 1 face, not {n}")
    if candidates < n:
        raise UserError(f"best-of: {candidates} candidates cannot yield {n} faces (need at least {n})")
    size = gen.config.image_size
    if isinstance(disc, LoadedDiscriminator) and disc.config.image_size != size:
        raise UserError(
            f"best-of: the discriminator takes {disc.config.image_size} px faces, "
            f"the generator makes {size} px"
        )
    kept_images = torch.empty(0, 3, size, size, dtype=torch.uint8)
    kept_scores = torch.empty(0)
    kept_indices = torch.empty(0, dtype=torch.int64)
    start = 0
    for batch in gen.iter_samples(candidates, seed, bn_mode, truncation):
        scores = score_images(disc, batch)
        indices = torch.arange(start, start + len(batch), dtype=torch.int64)
        start += len(batch)
        # The kept faces come first and have lower indices, so a stable sort breaks ties by index.
        all_scores = torch.cat([kept_scores, scores])
        key = all_scores.nan_to_num(nan=float("-inf"))  # a NaN score ranks last, not first
        order = torch.sort(key, descending=True, stable=True).indices[:n]
        kept_images = torch.cat([kept_images, batch])[order]
        kept_indices = torch.cat([kept_indices, indices])[order]
        kept_scores = all_scores[order]
    return BestOf(kept_images, kept_scores, kept_indices)
