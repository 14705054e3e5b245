"""The whole training step captured once as a CUDA graph and replayed every iteration.

On a fast GPU the eager step's time goes to Python launching ~210 small kernels a step (three D
passes, two backward passes, BatchNorm, Adam), not to arithmetic. A CUDA graph launches the recorded
kernels in one call, so the step costs what the GPU needs (docs/design-notes.md).

Unlike torch.compile's "reduce-overhead" this captures everything, optimisers included, and needs
no inductor (whose convolution stride checks failed on this generator, see training/speed_plan.py).

What a replay cannot see changes between iterations, so the step must be a fixed sequence of
kernels: no DiffAugment or lazy R1 (their randomness and schedule live on the host), one process
(DDP's reductions are not captured), Adam with capturable=True, and nothing that replaces the
optimiser state or learning rates without calling `reset()`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GraphedStep:
    """Runs `step(real, noise)`: eagerly for `warmup` calls, then as a captured graph.

    The warm-up calls are real training steps, run on a side stream as CUDA graph capture expects,
    so cuDNN's algorithm choice and the optimisers' lazily created state exist before capture.
    The returned tensor is reused by the next call: consume it (queue a kernel that reads it) first.

    Off CUDA there is nothing to capture; the same static-buffer path runs the step eagerly, which
    keeps the plumbing (inputs copied in, output read out, reset) exercised on any device.
    """

    def __init__(self, step: StepFn, device: torch.device, warmup: int = 3):
        self.step = step
        self.device = device
        self.capture = device.type == "cuda"
        self.warmup = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_real: torch.Tensor | None = None
        self.static_noise: torch.Tensor | None = None
        self.static_out: torch.Tensor | None = None
        self.captures = 0
        self._side: torch.cuda.Stream | None = None  # warm-up stream, made on first use
        self.reset()

    def reset(self) -> None:
        """Forget the capture: call after the optimisers' state or learning rates were replaced."""
        self.graph = None
        self.static_real = self.static_noise = self.static_out = None
        self.eager_left = self.warmup
        self.ready = False  # static buffers made (and, on CUDA, the graph captured)

    def __call__(self, real: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.eager_left > 0:
            self.eager_left -= 1
            return self._eager(real, noise)
        if not self.ready:
            self._capture(real, noise)
        self.static_real.copy_(real)
        self.static_noise.copy_(noise)
        if self.graph is not None:
            self.graph.replay()
        else:
            self.static_out = self.step(self.static_real, self.static_noise)
        return self.static_out

    def _eager(self, real: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if not self.capture:
            return self.step(real, noise)
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        side = self._side
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = self.step(real, noise)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def _capture(self, real: torch.Tensor, noise: torch.Tensor) -> None:
        # empty_like keeps the memory format, so a channels_last batch stays channels_last.
        self.static_real = torch.empty_like(real)
        self.static_noise = torch.empty_like(noise)
        if self.capture:
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            # Capture records kernels without running them (the weights do not move): the replay
            # in __call__ then makes this iteration's step, with this iteration's batch copied in.
            try:
                with torch.cuda.graph(graph):
                    self.static_out = self.step(self.static_real, self.static_noise)
            except RuntimeError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise CaptureError(f"CUDA graph capture of the training step failed ({first})") from e
            self.graph = graph
            self.captures += 1
        self.ready = True


class CaptureError(RuntimeError):
    """The step could not be captured; training without train.cuda_graph is the way on."""
