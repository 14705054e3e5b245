"""The parsers of `animegen export` and `animegen serve` (their work: export.py, serve.py)."""

from __future__ import annotations

import argparse

from animegen import export, serve
from animegen.cli.common import _add_bn_flag
from animegen.helpformat import HelpFormatter


def add_export_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `animegen export` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "export",
        help="write a generator as ONNX and/or TorchScript",
        formatter_class=HelpFormatter,
        description="Export the generator of CKPT (a checkpoint file, a run dir or a tutorial\n"
        "netG_NNN.pth). The files take z float32 (batch, z_dim) and return images float32\n"
        "(batch, 3, S, S) in [-1, 1]; the batch size is free.",
        epilog="examples:\n  animegen export runs/default --onnx g.onnx\n"
        "  animegen export runs/default --onnx g.onnx --torchscript g.pt --bn eval --opset 13",
    )
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--onnx", metavar="FILE", help="write an ONNX model here")
    p.add_argument("--torchscript", metavar="FILE", help="write a traced TorchScript module here")
    p.add_argument(
        "--opset",
        type=int,
        default=export.DEFAULT_OPSET,
        help=f"ONNX opset, {export.MIN_OPSET}-{export.MAX_OPSET} (17 runs on onnxruntime >= 1.13)",
    )
    _add_bn_flag(p, help="BatchNorm in the file: batch statistics or running averages (see docs/guide.md)")
    p.set_defaults(func=export.run_command)
    return p


def add_serve_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `animegen serve` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "serve",
        help="open a browser demo of a checkpoint (grid, large faces, interpolation)",
        formatter_class=HelpFormatter,
        description="Serve a local web page for CKPT (a checkpoint file, a run dir or a tutorial\n"
        "netG_NNN.pth): faces from a seed, a face enlarged, a slider between two seeds, PNG\n"
        "downloads. The page loads nothing from the internet.",
        epilog="examples:\n  animegen serve runs/default            # then open http://127.0.0.1:7860/\n"
        "  animegen serve runs/default --port 8000 --max-n 128",
    )
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument(
        "--host", default=serve.DEFAULT_HOST, help="address to listen on (0.0.0.0 exposes it to the network)"
    )
    p.add_argument("--port", type=int, default=serve.DEFAULT_PORT, help="port (0 picks a free one)")
    p.add_argument("--max-n", type=int, default=serve.DEFAULT_MAX_N, help="most faces one grid may ask for")
    p.add_argument("--device", default="cpu", help="cpu, auto, cuda, cuda:N or mps")
    p.set_defaults(func=serve.run_command)
    return p
