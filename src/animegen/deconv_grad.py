"""G's wide transposed convolutions as matrix products on a CPU: their gradients under bf16, the
whole layer (sampling too) in fp32 where PyTorch runs AVX2 kernels.

oneDNN's bf16 weight-gradient kernel for a transposed convolution over a 4x4 input is slow, several
times slower than the same product as unfold + one bf16 matrix multiply (docs/design-notes.md).
Here both gradients are products over the same
unfolded output gradient, from the same bf16 operands with fp32 accumulation; the forward pass
stays oneDNN's in bf16 (as products it would round each product to bf16 before their sum). For
narrow layers or inputs from 8x8 up oneDNN was faster, so only wide layers over small
inputs take this route, and only on a CPU. In fp32 it pays only with AVX2 kernels and from 1024
input channels (see fp32_products_pay), and there the forward is a product too; the seed preset
turns the route off, so its fp32 step stays the tutorial's bit for bit. GPUs never take it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MAX_INPUT_PIXELS = 16  # 4x4
MIN_IN_CHANNELS = 512
MIN_IN_CHANNELS_FP32 = 1024


def fp32_products_pay() -> bool:
    """Whether fp32 products beat oneDNN's fp32 kernels on this CPU.

    Products won over AVX2 kernels and lost to AVX-512 ones, and lost for narrower layers either
    way, hence MIN_IN_CHANNELS_FP32 (docs/design-notes.md).
    """
    return torch.backends.cpu.get_cpu_capability() == "AVX2"


def _conv_transpose_by_matmul(
    x: torch.Tensor, w: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int]
) -> torch.Tensor:
    """conv_transpose2d as one product (every input pixel times the whole kernel) and an overlap-add
    of each pixel's kh x kw patch at its place in the output; channels_last in and out."""
    batch, cin, h, wd = x.shape
    cout, kh, kw = w.shape[1:]
    (sh, sw), (ph, pw) = stride, padding
    patches = x.permute(0, 2, 3, 1).reshape(-1, cin) @ w.permute(0, 2, 3, 1).reshape(cin, -1)
    patches = patches.view(batch, h, wd, kh, kw, cout)
    full = patches.new_zeros(batch, (h - 1) * sh + kh, (wd - 1) * sw + kw, cout)
    for ky in range(kh):
        rows = slice(ky, ky + sh * (h - 1) + 1, sh)
        for kx in range(kw):
            full[:, rows, kx : kx + sw * (wd - 1) + 1 : sw] += patches[:, :, :, ky, kx]
    out = full[:, ph : full.shape[1] - ph, pw : full.shape[2] - pw].permute(0, 3, 1, 2)
    return out.contiguous(memory_format=torch.channels_last)


class _ConvTransposeByMatmul(torch.autograd.Function):
    """conv_transpose2d (no bias, groups, dilation or output padding) with both gradients as matmuls,
    and with `matmul_forward` the output too."""

    @staticmethod
    def forward(ctx, x, w, stride, padding, matmul_forward):  # noqa: ANN001, ANN205 - autograd.Function signature
        ctx.save_for_backward(x, w)
        ctx.stride, ctx.padding = stride, padding
        if matmul_forward:
            return _conv_transpose_by_matmul(x, w, stride, padding)
        return F.conv_transpose2d(x, w, None, stride, padding)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, w = ctx.saved_tensors
        batch, cin, h, wd = x.shape
        cout, kh, kw = w.shape[1:]
        # Each input pixel's patch of the output gradient, rows in the input's (b, h, w) order and
        # columns in (kh, kw, cout) order: the memory order of a channels_last weight, so the
        # products below read the weight and write both gradients without a layout copy.
        cols = F.unfold(grad.to(x.dtype), (kh, kw), padding=ctx.padding, stride=ctx.stride)
        cols = cols.view(batch, cout, kh * kw, h * wd).permute(0, 3, 2, 1).reshape(-1, kh * kw * cout)
        w_mat = w.permute(0, 2, 3, 1).reshape(cin, kh * kw * cout)
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = (cols @ w_mat.t()).view(batch, h, wd, cin).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            rows = x.permute(0, 2, 3, 1).reshape(-1, cin)  # a view for channels_last input
            gw = (rows.t() @ cols).view(cin, kh, kw, cout).permute(0, 3, 1, 2)
        return gx, gw, None, None, None


class MatmulGradConvTranspose2d(nn.ConvTranspose2d):
    """The same layer and parameters; its gradients (and in fp32 its output) by matmul where that is
    faster."""

    fp32 = False  # whether fp32 passes take the products too (swap_in_matmul_layers sets it)

    @classmethod
    def eligible(cls, layer: nn.Module) -> bool:
        return (
            type(layer) is nn.ConvTranspose2d
            and layer.bias is None
            and layer.groups == 1
            and layer.dilation == (1, 1)
            and layer.output_padding == (0, 0)
            and layer.padding_mode == "zeros"
            and layer.in_channels >= MIN_IN_CHANNELS
        )

    @classmethod
    def replacing(cls, layer: nn.ConvTranspose2d) -> MatmulGradConvTranspose2d:
        """A layer sharing `layer`'s weight, so optimisers and checkpoints see the same parameter."""
        with torch.device("meta"):
            new = cls(
                layer.in_channels,
                layer.out_channels,
                layer.kernel_size,
                layer.stride,
                layer.padding,
                bias=False,
            )
        new.weight = layer.weight
        new.train(layer.training)
        return new

    def uses_products(self, bf16: bool) -> bool:
        """Whether a bf16 training step (or any fp32 pass) over a small input takes the products here."""
        return bf16 or (self.fp32 and self.in_channels >= MIN_IN_CHANNELS_FP32)

    def _route(self, x: torch.Tensor) -> str | None:
        """ "bf16" (products for the gradients), "fp32" (products throughout) or None (PyTorch's)."""
        if not (x.device.type == "cpu" and x.dim() == 4 and x.shape[-2] * x.shape[-1] <= MAX_INPUT_PIXELS):
            return None
        if torch.is_autocast_enabled("cpu"):
            # In bf16 only the gradients gain, so sampling keeps oneDNN's forward.
            training = self.weight.requires_grad and torch.is_grad_enabled()
            return "bf16" if training and torch.get_autocast_dtype("cpu") == torch.bfloat16 else None
        if x.dtype == self.weight.dtype == torch.float32 and self.uses_products(bf16=False):
            return "fp32"
        return None

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        route = None if output_size is not None else self._route(x)
        if route == "fp32":
            return _ConvTransposeByMatmul.apply(x, self.weight, self.stride, self.padding, True)
        if route == "bf16":
            # Cast as autocast would, outside the Function, so the gradients flow back through the
            # casts to the fp32 weight and input.
            return _ConvTransposeByMatmul.apply(
                x.to(torch.bfloat16), self.weight.to(torch.bfloat16), self.stride, self.padding, False
            )
        return super().forward(x, output_size)


def swap_in_matmul_layers(net: nn.Module, fp32: bool = False) -> int:
    """Swap every eligible ConvTranspose2d in `net` for the matmul layer; how many.

    Eligible is a layer wide enough to gain (>= MIN_IN_CHANNELS inputs); each forward then checks
    the rest (a CPU, an input of at most MAX_INPUT_PIXELS, and a bf16 training step, or with `fp32`
    any fp32 pass, sampling included, through >= MIN_IN_CHANNELS_FP32 inputs).
    """
    swapped = 0
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if MatmulGradConvTranspose2d.eligible(child):
                layer = MatmulGradConvTranspose2d.replacing(child)
                layer.fp32 = fp32
                parent.register_module(name, layer)
                swapped += 1
    return swapped
