"""The rows of benchmarks/throughput.py: each a preset plus command-line changes, and the animegen
config a row resolves to (the way the CLI resolves it)."""

from __future__ import annotations

import argparse
import fnmatch
from dataclasses import dataclass
from typing import Any

from animegen.config import Config, build_config

REFERENCE_BATCH = 8  # the tutorial's batch size; the reference runs with it


@dataclass(frozen=True)
class BenchConfig:
    """One row of the table: a preset plus command-line changes (preset None = the reference)."""

    name: str
    preset: str | None
    args: tuple[str, ...] = ()
    note: str = ""
    env: tuple[tuple[str, str], ...] = ()  # extra environment for the child process


CONFIGS: tuple[BenchConfig, ...] = (
    BenchConfig("reference", None, note="tutorial trainer, batch 8"),
    BenchConfig("seed", "seed", note="same math as the reference"),
    BenchConfig("seed/channels_last", "seed", ("--set", "train.channels_last=true")),
    BenchConfig("seed/amp=bf16", "seed", ("--amp", "bf16")),
    BenchConfig("default", "default", note="batch 64, channels_last, amp auto (bf16 on native-bf16 CPUs)"),
    BenchConfig("default/amp=bf16", "default", ("--amp", "bf16")),
    BenchConfig("default/amp=off", "default", ("--amp", "off")),
    BenchConfig("default/compile", "default", ("--compile", "default")),
    # torch.compile failed on an H200 under channels_last (an inductor stride assertion in G's first
    # transposed convolution); these rows try it with the models left in the default memory format.
    BenchConfig(
        "default/compile+contiguous",
        "default",
        ("--compile", "default", "--set", "train.channels_last=false"),
    ),
    # Inductor's own channels_last choice on CUDA trips stride checks in convolution backward
    # (pytorch/pytorch#171622): this row keeps every layout as eager mode has it.
    BenchConfig(
        "default/compile+no-layout-opt",
        "default",
        ("--compile", "default"),
        env=(("TORCHINDUCTOR_LAYOUT_OPTIMIZATION", "0"),),
    ),
    # On CUDA the default preset replays the whole step (both optimisers too) as one CUDA graph
    # and lets cuDNN time its algorithms; these rows take one or both away. Elsewhere both are off,
    # and default/cuda_graph (forced on) runs the graphed path's plumbing eagerly.
    BenchConfig(
        "default/eager", "default", ("--set", "train.cuda_graph=off", "--set", "train.cudnn_benchmark=off")
    ),
    BenchConfig("default/cuda_graph=off", "default", ("--set", "train.cuda_graph=off")),
    BenchConfig("default/cudnn_benchmark=off", "default", ("--set", "train.cudnn_benchmark=off")),
    BenchConfig("default/cuda_graph", "default", ("--set", "train.cuda_graph=on")),
    BenchConfig("seed/cuda_graph", "seed", ("--set", "train.cuda_graph=on")),
    BenchConfig("seed/cudnn_benchmark", "seed", ("--set", "train.cudnn_benchmark=on")),
    BenchConfig("seed/fused_adam=on", "seed", ("--set", "train.fused_adam=on")),
    BenchConfig("default/fused_adam=off", "default", ("--set", "train.fused_adam=off")),
    # G's wide transposed convs over 4x4 inputs with oneDNN's own gradient kernels (bf16; and fp32
    # where PyTorch runs AVX2 kernels), and the seed networks with the products (off in that preset).
    BenchConfig("default/matmul_deconv_grads=off", "default", ("--set", "train.matmul_deconv_grads=false")),
    BenchConfig(
        "default/amp=off+matmul_deconv_grads=off",
        "default",
        ("--amp", "off", "--set", "train.matmul_deconv_grads=false"),
    ),
    BenchConfig(
        "seed/amp=bf16+matmul_deconv_grads=on",
        "seed",
        ("--amp", "bf16", "--set", "train.matmul_deconv_grads=true"),
    ),
    # pytorch/examples' 64 px networks at batch 128: their 512 -> 256 layer over 4x4 qualifies too.
    BenchConfig("dcgan64", "dcgan64", note="64 px, batch 128, fp32"),
    BenchConfig("dcgan64/amp=bf16", "dcgan64", ("--amp", "bf16")),
    BenchConfig(
        "dcgan64/amp=bf16+matmul_deconv_grads=off",
        "dcgan64",
        ("--amp", "bf16", "--set", "train.matmul_deconv_grads=false"),
    ),
    # The presets to pick: modern (FastGAN pair) and projected (its G against a D on frozen
    # EfficientNet-lite0 features, which needs the [projected] extra), both at 64 px here.
    BenchConfig("modern", "modern", ("--set", "model.image_size=64"), note="FastGAN pair, 64 px, batch 32"),
    BenchConfig("projected", "projected", note="modern G, frozen-feature D, 64 px, batch 32"),
    BenchConfig("projected/d_input=96", "projected", ("--set", "model.d_input=96")),
    BenchConfig("seed/reuse_memory=off", "seed", ("--set", "train.reuse_memory=false")),
    BenchConfig("default/reuse_memory=off", "default", ("--set", "train.reuse_memory=false")),
    BenchConfig("default/channels_last=false", "default", ("--set", "train.channels_last=false")),
    BenchConfig("default/threads=1", "default", ("--set", "train.threads=1")),
    BenchConfig("default/threads=2", "default", ("--set", "train.threads=2")),
    BenchConfig("default/batch=8", "default", ("--batch-size", "8")),
    BenchConfig("default/batch=32", "default", ("--batch-size", "32")),
    BenchConfig("default/batch=128", "default", ("--batch-size", "128")),
    BenchConfig("default/batch=256", "default", ("--batch-size", "256")),
)
QUICK_CONFIGS = ("reference", "seed")


def pick_configs(patterns: list[str]) -> list[BenchConfig]:
    chosen: list[BenchConfig] = []
    for pattern in patterns:
        for item in pattern.split(","):
            hits = [c for c in CONFIGS if fnmatch.fnmatchcase(c.name, item.strip())]
            if not hits:
                names = ", ".join(c.name for c in CONFIGS)
                raise SystemExit(f"throughput.py: no config matches {item!r} (configs: {names})")
            chosen += [c for c in hits if c not in chosen]
    return chosen


# the flags CONFIGS use
FLAG_KEYS = {"--amp": "train.amp", "--batch-size": "train.batch_size", "--compile": "train.compile"}


def resolve(bc: BenchConfig, args: argparse.Namespace) -> Config:
    """The animegen config a row trains with, resolved the way the CLI resolves it."""
    pairs = list(zip(bc.args[::2], bc.args[1::2], strict=True))
    overrides: dict[str, Any] = {FLAG_KEYS[f]: v for f, v in pairs if f in FLAG_KEYS}
    overrides["data.path"] = str(args.data)
    overrides["data.limit"] = args.limit
    overrides["data.cache_dir"] = str(args.cache_dir) if args.cache_dir else None
    return build_config(bc.preset or "seed", sets=[v for f, v in pairs if f == "--set"], overrides=overrides)
