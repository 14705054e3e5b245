"""Exporting a generator to ONNX and TorchScript, so faces can be drawn without animegen (or torch).

Both files take latents `z` float32 (batch, z_dim) and return `images` float32 (batch, 3, S, S) in
[-1, 1]; the batch axis is dynamic. Map to pixels with `(images + 1) * 127.5`, rounded.

BatchNorm is frozen into the file in one of the two sampling modes (docs/guide.md, "BatchNorm at sampling
time"): `eval` uses the running averages (a plain BatchNormalization node, each face independent of
its batch); `batch` normalises with the statistics of the batch being run, written out as
ReduceMean/Sub/Mul/Sqrt nodes so any runtime computes them, and a face then depends on its batch,
exactly as `animegen generate --bn batch` does.

ONNX opset: 17 by default (ONNX 1.12+, onnxruntime 1.13+). Every node used (ConvTranspose,
BatchNormalization, ReduceMean, Relu, Tanh, Unsqueeze, arithmetic) exists in all opsets from 11 up
to 23, the newest that torch's TorchScript-based exporter writes; pick an older one for an old runtime.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from animegen.errors import UserError
from animegen.sampling_options import BN_MODES, DEFAULT_BN_MODE

if TYPE_CHECKING:
    from torch import nn

    from animegen.model_loading import LoadedGenerator

# Module level stays free of torch so that registering the subcommand keeps `animegen --help` fast.
DEFAULT_OPSET = 17
MIN_OPSET = 11
MAX_OPSET = 23
INPUT_NAME = "z"
OUTPUT_NAME = "images"


@functools.cache
def _modules() -> tuple[type, type]:
    """The wrapper classes, defined on first use so that importing this module does not import torch."""
    import torch
    from torch import nn

    class BatchStatNorm(nn.Module):
        """BatchNorm2d that always normalises with its input batch's mean and (biased) variance.

        Written with elementary ops instead of a training-mode BatchNormalization node: runtimes
        built for inference (onnxruntime among them) implement those ops everywhere, and tracing
        sees no module in train mode.
        """

        def __init__(self, bn: nn.BatchNorm2d):
            super().__init__()
            c = bn.num_features
            weight = bn.weight.detach().clone() if bn.weight is not None else torch.ones(c)
            bias = bn.bias.detach().clone() if bn.bias is not None else torch.zeros(c)
            self.register_buffer("weight", weight.reshape(1, c, 1, 1))
            self.register_buffer("bias", bias.reshape(1, c, 1, 1))
            self.eps = float(bn.eps)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mean = x.mean(dim=(0, 2, 3), keepdim=True)
            centred = x - mean
            var = (centred * centred).mean(dim=(0, 2, 3), keepdim=True)
            return centred * torch.rsqrt(var + self.eps) * self.weight + self.bias

    class LatentInput(nn.Module):
        """z (batch, z_dim) -> images (batch, 3, S, S): the calling convention of the exported files."""

        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            # unsqueeze rather than reshape(B, ...): no batch size is read, so none is baked in.
            return self.net(z.unsqueeze(-1).unsqueeze(-1))

    return BatchStatNorm, LatentInput


def export_module(gen: LoadedGenerator, bn_mode: str = DEFAULT_BN_MODE) -> nn.Module:
    """A CPU copy of the generator taking z (batch, z_dim), in eval mode, with BatchNorm fixed to `bn_mode`.

    Its forward changes no state, so it can be traced, exported or called from several threads.
    """
    import copy

    from torch import nn

    if bn_mode not in BN_MODES:
        raise UserError(f"--bn must be one of {', '.join(BN_MODES)}, not {bn_mode!r}")
    batch_stat_norm, latent_input = _modules()
    net = copy.deepcopy(gen.net).cpu().float().eval()
    if bn_mode == "batch":
        for parent in list(net.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.modules.batchnorm._BatchNorm):
                    setattr(parent, name, batch_stat_norm(child))
    wrapper = latent_input(net).eval()
    for p in wrapper.parameters():
        p.requires_grad_(False)
    return wrapper


def _temp_for(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def export_onnx(
    gen: LoadedGenerator,
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    bn_mode: str = DEFAULT_BN_MODE,
) -> Path:
    """Write the generator as an ONNX model: input `z` (batch, z_dim) -> output `images` (batch, 3, S, S)."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(f"--opset must be between {MIN_OPSET} and {MAX_OPSET}, not {opset}")
    try:
        import onnx
    except ImportError:
        raise UserError("ONNX export needs the onnx package: pip install 'animegen[export]'") from None
    import torch

    from animegen import __version__

    module = export_module(gen, bn_mode)
    example = torch.zeros(2, gen.z_dim)
    path = Path(path)
    tmp = _temp_for(path)
    try:
        with warnings.catch_warnings():
            # The TorchScript-based exporter is chosen on purpose (see below); its deprecation
            # notices would only confuse a user of the command.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            # dynamo=False: torch >= 2.9 defaults to the torch.export-based exporter, which is slow,
            # needs onnxscript and only writes recent opsets; the TorchScript-based one writes the
            # asked opset quickly (docs/design-notes.md).
            # torch < 2.5 has no `dynamo` argument and always uses the TorchScript-based one.
            choose = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
            try:
                torch.onnx.export(
                    module,
                    (example,),
                    str(tmp),
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    opset_version=opset,
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    do_constant_folding=True,
                    **choose,
                )
            except ValueError as e:
                if "opset" not in str(e).lower():
                    raise
                first = str(e).strip().splitlines()[0]
                raise UserError(
                    f"--opset {opset}: torch {torch.__version__} cannot write it ({first})"
                ) from None
        model = onnx.load(str(tmp))
        model.doc_string = (
            f"animegen {__version__} generator: {INPUT_NAME} float32 (batch, {gen.z_dim}) -> "
            f"{OUTPUT_NAME} float32 (batch, 3, {gen.config.image_size}, {gen.config.image_size}) "
            f"in [-1, 1]; BatchNorm: {bn_mode}"
        )
        meta = {
            "animegen.version": __version__,
            "animegen.z_dim": str(gen.z_dim),
            "animegen.image_size": str(gen.config.image_size),
            "animegen.arch": gen.config.arch,
            "animegen.bn_mode": bn_mode,
            "animegen.source": gen.source.name,
        }
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_torchscript(gen: LoadedGenerator, path: str | os.PathLike, bn_mode: str = DEFAULT_BN_MODE) -> Path:
    """Write the generator as a traced TorchScript file: `torch.jit.load(path)(z)` with z (batch, z_dim)."""
    import torch

    module = export_module(gen, bn_mode)
    path = Path(path)
    tmp = _temp_for(path)
    example = torch.zeros(2, gen.z_dim)
    # Checking the trace on other batch sizes proves that no batch size got baked into the graph.
    checks = [(torch.randn(1, gen.z_dim),), (torch.randn(5, gen.z_dim),)]
    try:
        with warnings.catch_warnings():
            # torch.jit is deprecated in favour of torch.export, but a .pt that loads with plain
            # torch.jit.load (C++ libtorch included) is still what TorchScript users want.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*")
            traced = torch.jit.trace(module, example, check_inputs=checks)
            torch.jit.save(traced, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_onnx(gen: LoadedGenerator, path: str | os.PathLike, bn_mode: str = DEFAULT_BN_MODE) -> float | None:
    """Max |ONNX - PyTorch| over batches of 1 and 4 with onnxruntime, or None when it is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    module = export_module(gen, bn_mode)
    worst = 0.0
    g = torch.Generator().manual_seed(0)
    for batch in (1, 4):
        z = torch.randn(batch, gen.z_dim, generator=g)
        with torch.no_grad():
            expected = module(z).numpy()
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: z.numpy()})
        worst = max(worst, float(abs(got - expected).max()))
    return worst


def run_command(args: argparse.Namespace) -> int:
    """`animegen export` (its arguments: cli/tools.py)."""
    from animegen.model_loading import load_generator

    if not args.onnx and not args.torchscript:
        raise UserError("nothing to write: give --onnx FILE and/or --torchscript FILE")
    gen = load_generator(args.checkpoint, device="cpu", channels_last=False)
    for note in gen.info.get("notes", []):
        print(f"warning: skipped damaged checkpoint: {note}", file=sys.stderr)
    s = gen.config.image_size
    shapes = f"{INPUT_NAME} (batch, {gen.z_dim}) -> {OUTPUT_NAME} (batch, 3, {s}, {s}) in [-1, 1]"
    if args.onnx:
        path = export_onnx(gen, args.onnx, opset=args.opset, bn_mode=args.bn)
        print(f"wrote {path} (ONNX opset {args.opset}, BatchNorm {args.bn}): {shapes}")
        diff = check_onnx(gen, path, args.bn)
        if diff is None:
            print("  not checked: install onnxruntime to compare it with PyTorch")
        elif diff > 1e-3:
            print(f"warning: onnxruntime differs from PyTorch by up to {diff:.2g}", file=sys.stderr)
        else:
            print(f"  checked with onnxruntime: max difference to PyTorch {diff:.1e}")
    if args.torchscript:
        path = export_torchscript(gen, args.torchscript, bn_mode=args.bn)
        print(f"wrote {path} (TorchScript, BatchNorm {args.bn}): {shapes}")
    return 0
