"""Multi-process training with PyTorch's own engine: torchrun, DistributedDataParallel, SyncBatchNorm.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; this module turns them into a process group (NCCL on
GPUs, Gloo on CPUs), wraps the networks in DDP and, on request, swaps BatchNorm for a synchronised
one. `--batch-size` stays the global batch: each of N processes trains on batch/N images.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from animegen.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init(info: DistInfo, device: torch.device) -> torch.device:
    """Join the process group; returns this rank's device (cuda:LOCAL_RANK on GPUs)."""
    if not info.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # torchrun keeps one store across --max-restarts, and gloo's peers publish their addresses
        # in it under the same keys every attempt: a restarted rank could read a dead peer's address
        # and fail or hang. A prefix per attempt keeps each attempt's addresses apart.
        store, _, _ = next(dist.rendezvous("env://", info.rank, info.world_size))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"animegen/attempt_{attempt}/", store)
        dist.init_process_group(backend=backend, store=store, rank=info.rank, world_size=info.world_size)
    return device


def shutdown() -> None:
    """Leave the process group, after letting gloo's worker threads finish with their last work.

    A worker frees a finished collective's tensors after the caller has seen it finish, and needs
    the GIL to do so. A process that went straight on to exit held the GIL into interpreter
    finalisation, where the worker can no longer take it and the process aborts ("terminate called
    without an active exception", a finished rank exiting -6 in about 1 run in 8). Sleeping hands
    the GIL over. The threads themselves outlive destroy_process_group once DDP has used the group.
    """
    if dist.is_available() and dist.is_initialized():
        time.sleep(0.25)
        dist.destroy_process_group()
        time.sleep(0.25)


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def all_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        t = t.clone()
        dist.all_reduce(t)
        t /= info.world_size
    return t


def wrap(module: nn.Module, info: DistInfo, device: torch.device, partly_used: bool = False) -> nn.Module:
    """`partly_used`: some forwards leave parameters out (D's decoder runs on real images only),
    which DDP must look for or it waits for their gradients forever."""
    if not info.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(module, device_ids=ids, find_unused_parameters=partly_used)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") and isinstance(module.module, nn.Module) else module


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm over the global batch for CPU processes.

    torch.nn.SyncBatchNorm runs only on GPUs; this computes the same statistics with
    torch.distributed.nn's differentiable all_reduce, so gradients flow across processes exactly as
    through one BatchNorm over the concatenated batch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = (0, 2, 3)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype)
        total = all_reduce(count.clone())
        mean = all_reduce(x.sum(dims)) / total
        centred = x - mean[None, :, None, None]
        var = all_reduce((centred * centred).sum(dims)) / total
        if self.track_running_stats:
            with torch.no_grad():
                n = total.item()
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / max(n - 1, 1), alpha=m)
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Swap every BatchNorm2d for a synchronised one (torch's on GPUs, GlooSyncBatchNorm on CPUs)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, GlooSyncBatchNorm):
            new = GlooSyncBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return module


def launch(nproc: int, argv: list[str], max_restarts: int = 0) -> int:
    """Re-run this command under torchrun with `nproc` processes on this machine.

    With `max_restarts`, torchrun restarts every process when one fails, up to that many times; the
    command must then continue the run (--resume), which the caller sees to.

    SIGINT, SIGTERM and SIGUSR1 sent to this process go to the training processes, which checkpoint
    and stop, and torchrun is told to end (not to restart them); the return value is then 128 + the
    signal's number, as for one process. torchrun ignores a SIGUSR1 sent to it directly (Slurm's
    warning before preemption goes to every process), which would otherwise end it at once.
    """
    if nproc < 1:
        raise UserError("--nproc must be at least 1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        f"--max-restarts={max_restarts}",
        "-m",
        "animegen",
        *argv,
    ]
    env = dict(os.environ)
    # Each process gets its share of the cores unless the user chose otherwise.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    forwarded: list[int] = []
    usr1 = getattr(signal, "SIGUSR1", None)

    def ignore_usr1() -> None:  # in torchrun, before it starts: its children install their own handler
        if usr1 is not None:
            signal.signal(usr1, signal.SIG_IGN)

    posix = os.name == "posix"
    # Its own session: a Ctrl-C at the terminal reaches the training processes once, through
    # `forward`, not also directly (a second SIGINT stops them at once, without a checkpoint).
    agent = subprocess.Popen(cmd, env=env, preexec_fn=ignore_usr1 if posix else None, start_new_session=posix)

    def forward(signum, frame):
        forwarded.append(signum)
        for pid in _children(agent.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signum)
        if len(forwarded) == 1:
            # torchrun then waits for them (up to 30 s, their checkpoint) rather than restarting them
            # under --max-restarts; it sends them a SIGTERM too, which is the same request.
            with contextlib.suppress(OSError):
                os.kill(agent.pid, signal.SIGTERM)

    stop = [s for s in (signal.SIGINT, signal.SIGTERM, usr1) if s is not None]
    previous = {s: signal.signal(s, forward) for s in stop}
    try:
        while True:
            try:
                code = agent.wait()
                break
            except InterruptedError:
                continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 + forwarded[0] if forwarded else code


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc; empty elsewhere)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:  # the field after the state: the parent's pid
            found.append(int(stat.parent.name))
    return found
