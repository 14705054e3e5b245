"""Where a run trains and with which speed settings: the device, the process-wide settings (CPU
threads, kept freed memory, cuDNN's autotuner), the memory layout, G's matmul-gradient layers and
Adam's kernel.

The trainer and the benchmarks both build their runs from these, so a benchmark times the step
that training runs.
"""

from __future__ import annotations

import torch

from animegen.config import OptimConfig, TrainConfig
from animegen.deconv_grad import fp32_products_pay, swap_in_matmul_layers
from animegen.errors import UserError
from animegen.training import allocator

# Devices with PyTorch's fused Adam kernel (torch.optim.Adam docs). It is the same update as the
# per-tensor loop, one kernel over all parameters instead of a dozen small ones per tensor, and
# faster (docs/design-notes.md).
FUSED_ADAM_DEVICES = ("cpu", "cuda", "mps", "xpu")


def make_optimizers(
    netG: torch.nn.Module,
    netD: torch.nn.Module,
    o: OptimConfig,
    t: TrainConfig,
    device: torch.device,
    graphed: bool = False,
) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam for G and D, fused as train.fused_adam says, and capturable on CUDA when the step is
    `graphed` (see use_cuda_graph)."""
    kw: dict[str, bool] = {}
    if t.fused_adam == "on" and device.type not in FUSED_ADAM_DEVICES:
        raise UserError(f"train.fused_adam=on: PyTorch has no fused Adam on {device.type}; use auto or off")
    if t.fused_adam == "on" or (t.fused_adam == "auto" and device.type in FUSED_ADAM_DEVICES):
        kw["fused"] = True
    if device.type == "cuda":
        # The step counters stay on the GPU, so the graph's replays advance them.
        kw["capturable"] = graphed
    optG = torch.optim.Adam(netG.parameters(), lr=o.lr_g, betas=(o.beta1, o.beta2), **kw)
    optD = torch.optim.Adam(netD.parameters(), lr=o.lr_d, betas=(o.beta1, o.beta2), **kw)
    return optG, optD


def apply_process_settings(t: TrainConfig, device: torch.device) -> tuple[bool, bool]:
    """The run's process-wide speed settings (CPU threads, kept freed memory, cuDNN's autotuner),
    applied once; returns (freed memory kept, autotuner on). Benchmarks call it to time the same step."""
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    keeping = t.reuse_memory and device.type == "cpu" and allocator.keep_freed_memory()
    return keeping, use_cudnn_benchmark(t, device)


def use_cudnn_benchmark(t: TrainConfig, device: torch.device) -> bool:
    """Turn cuDNN's autotuner on for a CUDA run that asks for it; whether it is on.

    Every convolution here keeps its shape for the whole run, so each is timed once (in the first
    steps, before a CUDA graph is captured) and its fastest algorithm reused. The flag is
    process-wide in PyTorch; a run only ever turns it on.
    """
    if not (t.cudnn_benchmark in ("on", "auto") and device.type == "cuda"):
        return False
    torch.backends.cudnn.benchmark = True
    return True


def use_cuda_graph(t: TrainConfig, o: OptimConfig, device: torch.device, processes: int = 1) -> bool:
    """Whether the step runs through GraphedStep: "on" always (eagerly off CUDA, the clashes are
    refused by validation), "auto" only where a graph is captured and replays the same step."""
    if t.cuda_graph == "on":
        return True
    fixed_step = t.compile == "off" and not o.augment and not o.r1_gamma
    return t.cuda_graph == "auto" and device.type == "cuda" and processes == 1 and fixed_step


def compile_module(module: torch.nn.Module, mode: str, device: torch.device) -> torch.nn.Module:
    """torch.compile in train.compile's mode, without torch.compile's own CUDA graphs on CUDA.

    Those replay each compiled module on its own and reuse an output's memory at its next replay,
    but a GAN step runs D three times and feeds G's output into D, so the first step fails
    (docs/design-notes.md).
    train.cuda_graph graphs the whole step instead (on by default on CUDA in the default preset).
    """
    if device.type == "cuda" and mode == "reduce-overhead":
        raise UserError(
            "train.compile=reduce-overhead: torch.compile's CUDA graphs cannot replay a GAN step on CUDA; "
            "use --compile default, or --cuda-graph (the whole step as one CUDA graph)"
        )
    if device.type == "cuda" and mode == "max-autotune":
        mode = "max-autotune-no-cudagraphs"
    return torch.compile(module, mode=None if mode == "default" else mode)


def use_channels_last(t: TrainConfig, device: torch.device) -> bool:
    """Whether the models and batches are converted to channels_last."""
    # On CUDA, inductor chooses convolution layouts itself; converting by hand as well made its
    # stride check fail (docs/design-notes.md). CPU inductor handles channels_last models, so they
    # stay converted there.
    return t.channels_last and not (t.compile != "off" and device.type == "cuda")


def place_models(netG: torch.nn.Module, netD: torch.nn.Module, t: TrainConfig, device: torch.device) -> bool:
    """Put both networks on the run's device in its layout, with G's matmul-gradient layers where
    they apply (CPU); whether the run is channels_last. The trainer and the benchmarks both call it."""
    if t.matmul_deconv_grads and device.type == "cpu":
        swap_in_matmul_layers(netG, fp32=fp32_products_pay())
    netG.to(device)
    netD.to(device)
    channels_last = use_channels_last(t, device)
    if channels_last:
        netG.to(memory_format=torch.channels_last)
        netD.to(memory_format=torch.channels_last)
    return channels_last
