"""Where a run trains and with which speed settings: the device, the process-wide settings (CPU
threads, kept freed memory, cuDNN's autotuner), the memory layout, G's matmul-gradient layers and
Adam's kernel.

`SpeedPlan.resolve` decides all of them once, from the config, the device and the number of
processes; the trainer and the benchmarks both build their runs from the plan, so a benchmark times
the step that training runs and the `device:` line says what was decided.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from animegen.config import OptimConfig, TrainConfig
from animegen.deconv_grad import MatmulGradConvTranspose2d, fp32_products_pay, swap_in_matmul_layers
from animegen.errors import UserError
from animegen.training import allocator
from animegen.training.step import resolve_amp

# Devices with PyTorch's fused Adam kernel (torch.optim.Adam docs). It is the same update as the
# per-tensor loop, one kernel over all parameters instead of a dozen small ones per tensor, and
# faster (docs/design-notes.md).
FUSED_ADAM_DEVICES = ("cpu", "cuda", "mps", "xpu")


def use_fused_adam(t: TrainConfig, device: torch.device) -> bool:
    """Whether Adam runs PyTorch's fused kernel, as train.fused_adam says; "on" where there is none
    is refused."""
    if t.fused_adam == "on" and device.type not in FUSED_ADAM_DEVICES:
        raise UserError(f"train.fused_adam=on: PyTorch has no fused Adam on {device.type}; use auto or off")
    return t.fused_adam == "on" or (t.fused_adam == "auto" and device.type in FUSED_ADAM_DEVICES)


def _adam_pair(
    netG: torch.nn.Module,
    netD: torch.nn.Module,
    o: OptimConfig,
    device: torch.device,
    fused: bool,
    graphed: bool,
) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    kw: dict[str, bool] = {}
    if fused:  # only ever passed as True: the param groups (and checkpoints) keep PyTorch's default
        kw["fused"] = True
    if device.type == "cuda":
        # The step counters stay on the GPU, so the graph's replays advance them.
        kw["capturable"] = graphed
    optG = torch.optim.Adam(netG.parameters(), lr=o.lr_g, betas=(o.beta1, o.beta2), **kw)
    optD = torch.optim.Adam(netD.parameters(), lr=o.lr_d, betas=(o.beta1, o.beta2), **kw)
    return optG, optD


def wants_cudnn_benchmark(t: TrainConfig, device: torch.device) -> bool:
    """Whether train.cudnn_benchmark turns cuDNN's autotuner on here (CUDA only)."""
    return t.cudnn_benchmark in ("on", "auto") and device.type == "cuda"


def use_cuda_graph(t: TrainConfig, o: OptimConfig, device: torch.device, processes: int = 1) -> bool:
    """Whether the step runs through GraphedStep: "on" always (eagerly off CUDA, the clashes are
    refused by validation), "auto" only where a graph is captured and replays the same step."""
    if t.cuda_graph == "on":
        return True
    per_step_inputs = o.augment or o.r1_gamma or o.lecam or o.lr_half_life
    fixed_step = t.compile == "off" and not per_step_inputs
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


@dataclass(frozen=True)
class SpeedPlan:
    """Every speed setting of a run, decided once by `resolve` from the config, the device and the
    number of processes; `apply` sets the process-wide ones, `place` and `optimizers` build with the
    rest, and `describe` is the `device:` line the trainer prints."""

    device: torch.device
    world_size: int
    amp: str  # train.amp resolved: "bf16" or "off"
    channels_last: bool  # models and batches in channels_last
    cuda_graph: bool  # the step runs through GraphedStep (eagerly off CUDA)
    cudnn_benchmark: bool  # cuDNN's autotuner on
    fused_adam: bool  # Adam's fused kernel
    matmul_deconv_grads: bool  # G's wide transposed convs take matmul gradients (CPU)
    matmul_fp32: bool  # ...and run as products in fp32 too (AVX2 kernels; deconv_grad.py)
    compile: str  # train.compile's mode, "off" for none
    threads: int  # torch intra-op threads; 0 leaves PyTorch's default
    reuse_memory: bool  # a step's freed memory stays mapped for the next (CPU, glibc)
    notes: tuple[str, ...] = ()  # switches asked for that do not apply here, one line each

    @classmethod
    def resolve(cls, t: TrainConfig, o: OptimConfig, device: torch.device, world_size: int = 1) -> SpeedPlan:
        """The plan for a run of `world_size` processes on `device`; refuses switches that cannot work."""
        notes = []
        if t.cudnn_benchmark == "on" and not wants_cudnn_benchmark(t, device):
            notes.append(f"train.cudnn_benchmark: no cuDNN on {device.type}; ignored")
        if t.cuda_graph == "on":
            if world_size > 1:
                raise UserError("train.cuda_graph works in one process; drop it or --nproc")
            if device.type != "cuda":
                notes.append(f"train.cuda_graph: no CUDA graphs on {device.type}; runs eagerly")
        matmul = bool(t.matmul_deconv_grads and device.type == "cpu")
        return cls(
            device=device,
            world_size=world_size,
            amp=resolve_amp(t.amp, device),
            channels_last=use_channels_last(t, device),
            cuda_graph=use_cuda_graph(t, o, device, world_size),
            cudnn_benchmark=wants_cudnn_benchmark(t, device),
            fused_adam=use_fused_adam(t, device),
            matmul_deconv_grads=matmul,
            matmul_fp32=matmul and fp32_products_pay(),
            compile=t.compile,
            threads=t.threads,
            reuse_memory=bool(t.reuse_memory and device.type == "cpu" and allocator.available()),
            notes=tuple(notes),
        )

    def apply(self) -> SpeedPlan:
        """Set the process-wide settings (CPU threads, kept freed memory, cuDNN's autotuner), once per
        run; the plan as applied (freed memory kept only where the C library took the setting)."""
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        kept = self.reuse_memory and allocator.keep_freed_memory()
        if self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        return self if kept == self.reuse_memory else dataclasses.replace(self, reuse_memory=kept)

    def place(self, netG: torch.nn.Module, netD: torch.nn.Module) -> None:
        """Put both networks on the device in the plan's layout, with G's matmul-gradient layers
        where they apply (CPU)."""
        if self.matmul_deconv_grads:
            swap_in_matmul_layers(netG, fp32=self.matmul_fp32)
        netG.to(self.device)
        netD.to(self.device)
        if self.channels_last:
            netG.to(memory_format=torch.channels_last)
            netD.to(memory_format=torch.channels_last)

    def optimizers(
        self, netG: torch.nn.Module, netD: torch.nn.Module, o: OptimConfig, graphed: bool | None = None
    ) -> tuple[torch.optim.Adam, torch.optim.Adam]:
        """Adam for G and D, fused as planned and capturable on CUDA when the step is graphed (by
        default as planned; a benchmark that runs the step eagerly says graphed=False)."""
        graphed = self.cuda_graph if graphed is None else graphed
        return _adam_pair(netG, netD, o, self.device, self.fused_adam, graphed)

    def describe(self, batch_size: int, netG: torch.nn.Module, images_on_gpu: bool = False) -> str:
        """One line naming the device and every speed setting in force, so a user sees what runs."""
        device = str(self.device)
        if self.device.type == "cuda":
            device += f" ({torch.cuda.get_device_name(self.device)})"
        elif self.device.type == "cpu":
            n = torch.get_num_threads()
            device += f", {n} thread{'s' if n > 1 else ''}"
        processes = self.world_size > 1
        if processes:
            device += f", {self.world_size} processes"
        local = batch_size // self.world_size
        parts = [f"batch {batch_size}" + (f" ({local} a process)" if processes else "")]
        bf16 = self.amp == "bf16"
        if bf16:
            parts.append("bf16 autocast")
        elif self.device.type == "cuda" and torch.backends.cudnn.allow_tf32:
            parts.append("fp32 (TF32 convolutions)")  # PyTorch's default for cuDNN
        else:
            parts.append("fp32")
        if self.channels_last:
            parts.append("channels_last")
        if any(isinstance(m, MatmulGradConvTranspose2d) and m.uses_products(bf16) for m in netG.modules()):
            parts.append("matmul deconv gradients")
        parts.append("fused Adam" if self.fused_adam else "unfused Adam")
        if self.compile != "off":
            parts.append(f"torch.compile {self.compile}")
        if self.cuda_graph and self.device.type == "cuda":
            parts.append("CUDA graph")
        if self.cudnn_benchmark:
            parts.append("cuDNN autotuner")
        if images_on_gpu:
            parts.append("images on the GPU")
        if self.reuse_memory:
            parts.append("freed memory kept")
        return f"device: {device}; " + ", ".join(parts)
