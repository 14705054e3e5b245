"""`animegen generate -n N` speed and memory: faces per second and peak RSS, writing one PNG per face.

  python benchmarks/generate_speed.py [--checkpoint CKPT] [-n 10000] [--preset default]

Without --checkpoint a randomly initialised generator of the preset is saved and used: speed does
not depend on the weights. Runs the real CLI in a child process and reads its peak RSS.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))


def random_generator(preset: str, path: Path) -> None:
    import torch

    from animegen import checkpoint_format as ckpt
    from animegen.config import build_config
    from animegen.networks import Generator

    cfg = build_config(preset)
    torch.manual_seed(0)
    g = Generator(cfg.model)
    tensors = ckpt.pack_state_dict("G", g.state_dict())
    ckpt.save_checkpoint(path, tensors, {"kind": "generator", "config": cfg.to_dict()})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("-n", type=int, default=10000)
    p.add_argument("--preset", default="default")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="animegen-gen-") as tmp:
        ckpt_path = args.checkpoint or Path(tmp) / "G.safetensors"
        if args.checkpoint is None:
            random_generator(args.preset, ckpt_path)
        out = Path(tmp) / "faces"
        cmd = [sys.executable, "-m", "animegen", "generate", str(ckpt_path), "-n", str(args.n),
               "--outdir", str(out), "--device", args.device]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            print(f"generate failed: {' '.join(cmd)}")
            return 1
        written = len(list(out.glob("*.png")))
        print(
            f"generate -n {args.n} --outdir on {args.device}: {written} PNGs in {seconds:.1f} s "
            f"(process start and model load included) = {written / seconds:.1f} faces/s; "
            f"peak RSS {usage.ru_maxrss / 1024:.0f} MB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
