"""Count the matmul FLOPs of one GAN training iteration per image, from the layer shapes of G and D.

Nothing is typed in: G and D are built with `animegen.networks.build_models` from a config, run once
on one image with forward hooks on every Conv2d / ConvTranspose2d / Linear, and each layer's FLOPs
(one multiply-add = 2 FLOPs) come from the shapes the hooks saw:

  Conv2d           2 x Cout x Hout x Wout x (Cin / groups) x k_h x k_w
  ConvTranspose2d  2 x Cin x Hin x Win x (Cout / groups) x k_h x k_w  (each input pixel scatters k x k)
  Linear           2 x in_features x out_features x (rows)

One training iteration (animegen.training.step.train_step, the tutorial's loop body), per image,
with F_D and F_G the forward FLOPs of D and G and a backward pass costing 2x its forward (input
gradients + weight gradients):

  D step   D(real) forward + backward           3 F_D
           G(z) forward (reused by the G step)  1 F_G
           D(fake.detach()) forward + backward  3 F_D   (the graph stops at fake: G is not touched)
  G step   D(fake) forward                      1 F_D
           D backward, input gradients only     1 F_D   (D's weights are frozen for this pass)
           G backward                           2 F_G
  total                                         8 F_D + 3 F_G

A projected D (animegen/networks/projected.py) splits F_D into the frozen backbone's F_B and the trained
heads' F_D. The D step runs the backbone forward only (no gradient flows into it: 2 F_B), the G
step forward and back to the image (2 F_B), so the total is 8 F_D + 3 F_G + 4 F_B. Its fixed
random projections are functional 1x1 convolutions, left out like BatchNorm.

Left out, because they are small or not matmuls: BatchNorm, activations, losses, Adam, spectral
norm's power iteration, DiffAugment, R1, and the fact that the first layer of D on real images and
of G need no input gradient (each pass is at most ~1/3 of one small layer's cost). MFU computed
from this count is therefore "useful conv FLOPs per second over the matmul peak".

`python benchmarks/flops.py [--preset P] [--set section.key=value ...]` prints the per-layer table.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch import nn

from animegen.config import ModelConfig, build_config
from animegen.networks import build_models


@dataclass(frozen=True)
class LayerFlops:
    """One layer's forward FLOPs for one image, with the shapes they came from."""

    name: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    flops: int


@dataclass(frozen=True)
class TrainFlops:
    """Forward FLOPs of G, D (and a projected D's frozen backbone) per image and the training-iteration
    total (8 F_D + 3 F_G + 4 F_B)."""

    g_forward: int
    d_forward: int
    g_layers: tuple[LayerFlops, ...]
    d_layers: tuple[LayerFlops, ...]
    backbone_forward: int = 0
    backbone_layers: tuple[LayerFlops, ...] = ()

    @property
    def per_image(self) -> int:
        return 8 * self.d_forward + 3 * self.g_forward + 4 * self.backbone_forward


def _layer_flops(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs for a batch of one (callers feed a single image)."""
    if isinstance(module, nn.ConvTranspose2d):
        cin, hin, win = x.shape[1], x.shape[2], x.shape[3]
        kh, kw = module.kernel_size
        return 2 * cin * hin * win * (module.out_channels // module.groups) * kh * kw
    if isinstance(module, nn.Conv2d):
        cout, hout, wout = y.shape[1], y.shape[2], y.shape[3]
        kh, kw = module.kernel_size
        return 2 * cout * hout * wout * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        rows = y.numel() // module.out_features
        return 2 * module.in_features * module.out_features * rows
    raise TypeError(f"no FLOP rule for {type(module).__name__}")


def forward_flops(net: nn.Module, example: torch.Tensor) -> list[LayerFlops]:
    """Per-layer forward FLOPs of `net` on `example` (a batch of one), in call order."""
    if example.shape[0] != 1:
        raise ValueError("pass a batch of one image: FLOPs are reported per image")
    names = {m: n for n, m in net.named_modules()}
    seen: list[LayerFlops] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0]
        seen.append(
            LayerFlops(
                names.get(module, "?"),
                type(module).__name__,
                tuple(x.shape),
                tuple(output.shape),
                _layer_flops(module, x, output),
            )
        )

    handles = [
        m.register_forward_hook(hook)
        for m in net.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
    ]
    was_training = net.training
    try:
        # eval(): BatchNorm in training mode refuses a batch of one at 1x1 resolution.
        net.eval()
        with torch.no_grad():
            net(example)
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return seen


def train_flops(cfg: ModelConfig) -> TrainFlops:
    """FLOPs of G and D built from `cfg`, and of one training iteration per image."""
    g, d = build_models(cfg)
    g_layers = forward_flops(g, torch.zeros(1, cfg.z_dim, 1, 1))
    d_layers = forward_flops(d, torch.zeros(1, 3, cfg.image_size, cfg.image_size))
    b_layers: list[LayerFlops] = []
    if cfg.d_backbone:  # hidden from d.modules(), so counted on its own at the side it sees
        side = d.input_size
        b_layers = forward_flops(d.backbone, torch.zeros(1, 3, side, side))
    return TrainFlops(
        g_forward=sum(layer.flops for layer in g_layers),
        d_forward=sum(layer.flops for layer in d_layers),
        g_layers=tuple(g_layers),
        d_layers=tuple(d_layers),
        backbone_forward=sum(layer.flops for layer in b_layers),
        backbone_layers=tuple(b_layers),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="default")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = p.parse_args(argv)
    cfg = build_config(args.preset, sets=args.set)
    count = train_flops(cfg.model)
    for net, layers in (("G", count.g_layers), ("D", count.d_layers), ("B", count.backbone_layers)):
        for layer in layers:
            print(
                f"{net} {layer.name:<12} {layer.kind:<16} {str(layer.in_shape):<20} -> "
                f"{str(layer.out_shape):<20} {layer.flops / 1e6:10.2f} MFLOP"
            )
    print(
        f"G forward {count.g_forward / 1e9:.3f} GFLOP/image, "
        f"D forward {count.d_forward / 1e9:.3f} GFLOP/image, "
        f"frozen backbone forward {count.backbone_forward / 1e9:.3f} GFLOP/image"
    )
    print(f"training iteration (8 F_D + 3 F_G + 4 F_B): {count.per_image / 1e9:.3f} GFLOP/image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
