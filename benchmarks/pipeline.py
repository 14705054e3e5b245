"""How much of a training step the input pipeline costs: batches from the decoded cache vs the step itself.

  python benchmarks/pipeline.py --data DIR [--preset default] [--limit 2048] [--steps 10]

Times, in one process on one device: (a) producing `--steps` batches with BatchFeeder from the
memory-mapped uint8 cache (index, gather, normalise, flip, channels_last), (b) `--steps` train
steps on one pre-made batch tensor, (c) `--steps` train steps fed by BatchFeeder. The pipeline
share is (c - b) / c, and (a) / ((a) + (b)) as a cross-check; the issue's bound is 5%.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

from animegen.config import build_config  # noqa: E402
from animegen.data.batches import BatchFeeder  # noqa: E402
from animegen.device import resolve_device  # noqa: E402
from animegen.networks import build_models  # noqa: E402
from animegen.training.run import load_images  # noqa: E402
from animegen.training.speed_plan import SpeedPlan  # noqa: E402
from animegen.training.step import make_loss, train_step  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--preset", default="default")
    p.add_argument("--limit", type=int, default=2048)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", type=Path)
    args = p.parse_args(argv)
    overrides = {"data.path": str(args.data), "data.limit": args.limit}
    if args.cache_dir:
        overrides["data.cache_dir"] = str(args.cache_dir)
    cfg = build_config(args.preset, overrides=overrides)
    device = resolve_device(args.device)
    t = cfg.train
    # The trainer's speed settings (threads, kept memory, layout, Adam's kernel, amp); the step runs
    # eagerly here, so the optimisers are not made for a CUDA graph.
    speed = SpeedPlan.resolve(t, cfg.optim, device).apply()
    images = load_images(cfg)
    netG, netD = build_models(cfg.model)
    speed.place(netG, netD)
    channels_last = speed.channels_last
    feeder = BatchFeeder(
        images.images, t.batch_size, device, seed=0, hflip=cfg.data.hflip, channels_last=channels_last
    )
    optG, optD = speed.optimizers(netG, netD, cfg.optim, graphed=False)
    loss = make_loss(cfg.optim.loss)
    amp = speed.amp
    noise = torch.randn(t.batch_size, cfg.model.z_dim, 1, 1, device=device)
    if channels_last:
        noise = noise.contiguous(memory_format=torch.channels_last)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def forever():
        epoch = 0
        while True:
            yield from feeder.epoch(epoch)
            epoch += 1

    batches = forever()
    fixed = next(batches)
    train_step(netG, netD, optG, optD, fixed, noise, loss, amp)  # warm-up
    sync()

    t0 = time.perf_counter()
    for _ in range(args.steps):
        next(batches)
    sync()
    feed = (time.perf_counter() - t0) / args.steps

    t0 = time.perf_counter()
    for _ in range(args.steps):
        train_step(netG, netD, optG, optD, fixed, noise, loss, amp)
    sync()
    step_fixed = (time.perf_counter() - t0) / args.steps

    t0 = time.perf_counter()
    for _ in range(args.steps):
        train_step(netG, netD, optG, optD, next(batches), noise, loss, amp)
    sync()
    step_fed = (time.perf_counter() - t0) / args.steps

    print(
        f"{args.preset} preset, batch {t.batch_size}, {cfg.model.image_size} px, {device}, amp {amp}, "
        f"{torch.get_num_threads()} threads, {args.steps} steps each"
    )
    print(f"  batch from the cache alone:      {feed * 1000:8.2f} ms")
    print(f"  train step on a pre-made batch:  {step_fixed * 1000:8.2f} ms")
    print(f"  train step fed by BatchFeeder:   {step_fed * 1000:8.2f} ms")
    print(f"  pipeline share (fed - fixed) / fed:   {(step_fed - step_fixed) / step_fed:6.2%}")
    print(f"  pipeline share batch / (batch + step): {feed / (feed + step_fixed):6.2%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
