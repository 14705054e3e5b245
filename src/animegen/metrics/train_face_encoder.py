"""Train the face encoder behind FD-SSL: SimCLR (Chen et al. 2020) on a folder of faces, no labels.

    python -m animegen.metrics.train_face_encoder --data TRAIN_FOLDER --out face_encoder.safetensors

Two random views of each face (a resized crop, a horizontal flip, mild brightness, contrast and
saturation changes) are pulled together and pushed away from the other faces of the batch (NT-Xent
on a small projection head, which is dropped afterwards). The views never blur, add noise or
rotate hue, so the encoder has no reason to become blind to the damage a ruler must see; and the
ruler reads the encoder's pooled stages, not the projection head, which is where augmentation
invariance concentrates. After training, each feature is standardised by its mean and spread over
the same training faces. Train it only on faces that the generators under test may also see, never
on the held-out faces they are scored against.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from animegen.data.cache import load_folder
from animegen.errors import UserError
from animegen.metrics.face_features import INPUT_SIZE, FaceEncoder, save_encoder, to_input


def random_views(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random view of each image of a float batch in [-1, 1] (N x 3 x 64 x 64)."""
    n = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    area = uniform(0.35, 1.0)
    ratio = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
    sx = torch.sqrt(area * ratio).clamp(max=1.0)
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (1 - sx) * uniform(-1, 1)
    ty = (1 - sy) * uniform(-1, 1)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sx * flip
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # Mild photometric changes on 80% of views; on [0, 1] pixels.
    v = (v + 1) / 2
    on = (torch.rand(n, generator=gen) < 0.8).float().view(n, 1, 1, 1)
    bright = 1 + on * uniform(-0.2, 0.2).view(n, 1, 1, 1)
    contrast = 1 + on * uniform(-0.2, 0.2).view(n, 1, 1, 1)
    satur = 1 + on * uniform(-0.2, 0.2).view(n, 1, 1, 1)
    v = v * bright
    mean = v.mean(dim=(1, 2, 3), keepdim=True)
    v = (v - mean) * contrast + mean
    grey = (0.299 * v[:, 0:1] + 0.587 * v[:, 1:2] + 0.114 * v[:, 2:3]).expand_as(v)
    v = (v - grey) * satur + grey
    return v.clamp(0, 1) * 2 - 1


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner out of the 2N - 1 other views of the batch."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


class Projection(nn.Module):
    def __init__(self, c_in: int, hidden: int = 512, out: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(c_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def last_stage(encoder: FaceEncoder, x: torch.Tensor) -> torch.Tensor:
    h = encoder.stem(x)
    for stage in encoder.stages:
        h = stage(h)
    return h.mean(dim=(2, 3))


@torch.no_grad()
def standardise(encoder: FaceEncoder, images: np.ndarray, batch: int = 500) -> None:
    """Set the encoder's feature mean and spread from its pooled features on `images`."""
    encoder.eval()
    feats = []
    for i in range(0, len(images), batch):
        x = to_input(torch.from_numpy(np.ascontiguousarray(images[i : i + batch])))
        feats.append(encoder.pooled(x).double())
    f = torch.cat(feats)
    encoder.feature_mean.copy_(f.mean(0).float())
    encoder.feature_std.copy_(f.std(0).clamp(min=1e-6).float())


def train(
    images: np.ndarray,
    *,
    steps: int,
    batch: int = 256,
    width: int = 32,
    lr: float = 1e-3,
    temperature: float = 0.2,
    seed: int = 0,
    bf16: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[FaceEncoder, dict]:
    """SimCLR on uint8 faces N x 3 x 64 x 64; returns the standardised encoder and a training record."""
    if images.shape[-1] != INPUT_SIZE:
        raise UserError(f"the face encoder trains on {INPUT_SIZE} px faces, not {images.shape[-1]} px")
    if len(images) < batch:
        raise UserError(f"{len(images)} faces is fewer than one batch of {batch}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    order_rng = np.random.default_rng(seed)
    encoder = FaceEncoder(width)
    head = Projection(8 * width)
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    order = order_rng.permutation(len(images))
    pos = 0
    started = time.perf_counter()
    losses: list[float] = []
    encoder.train()
    head.train()
    for step in range(steps):
        if pos + batch > len(order):
            order, pos = order_rng.permutation(len(images)), 0
        idx = np.sort(order[pos : pos + batch])
        pos += batch
        x = to_input(torch.from_numpy(np.ascontiguousarray(images[idx])))
        v1, v2 = random_views(x, gen), random_views(x, gen)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            z = head(last_stage(encoder, torch.cat([v1, v2])))
        loss = nt_xent(z[:batch], z[batch:], temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            recent = float(np.mean(losses[-50:]))
            log(f"step {step + 1}/{steps}  loss {recent:.3f}  {time.perf_counter() - started:.0f} s")
    standardise(encoder, images)
    record = {
        "method": "SimCLR (NT-Xent), views: resized crop 0.35-1, flip, brightness/contrast/saturation 0.2",
        "faces": int(len(images)),
        "steps": steps,
        "batch": batch,
        "width": width,
        "lr": lr,
        "temperature": temperature,
        "seed": seed,
        "bf16": bf16,
        "final_loss": round(float(np.mean(losses[-50:])), 4),
        "seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    return encoder.eval(), record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="folder of training faces (never held-out ones)")
    p.add_argument("--out", required=True, type=Path, help="where to write the .safetensors weights")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CPUs with native bf16)")
    p.add_argument("--cache-dir", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        faces = load_folder(args.data, INPUT_SIZE, cache_root=args.cache_dir)
        encoder, record = train(
            faces.images,
            steps=args.steps,
            batch=args.batch,
            width=args.width,
            lr=args.lr,
            temperature=args.temperature,
            seed=args.seed,
            bf16=args.bf16,
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    record["data"] = args.data.name
    save_encoder(encoder, args.out, record)
    print(f"wrote {args.out} ({record['faces']:,} faces, {record['steps']} steps, {record['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
