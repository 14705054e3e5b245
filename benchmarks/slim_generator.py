"""Keep only a checkpoint's sampling generator, in fp16: a file small enough to bring back from a
remote GPU machine and score here. `animegen generate/evaluate` read it like any checkpoint.

  python benchmarks/slim_generator.py RUN_OR_CHECKPOINT OUT.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from animegen import checkpoint_format as ckpt  # noqa: E402
from animegen.model_loading import resolve_checkpoint  # noqa: E402


def main() -> None:
    source, _ = resolve_checkpoint(sys.argv[1])
    tensors, meta = ckpt.read_checkpoint(source)
    prefix = "G_ema." if any(k.startswith("G_ema.") for k in tensors) else "G."
    kept = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items() if k.startswith(prefix)}
    meta = {**meta, "slim": f"{prefix[:-1]} only, fp16, from {source.name}"}
    ckpt.save_checkpoint(sys.argv[2], kept, meta)
    print(f"{sys.argv[2]}: {len(kept)} tensors of {source}")


if __name__ == "__main__":
    main()
