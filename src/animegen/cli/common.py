"""What every subcommand's parser shares: exit codes, one-line usage errors, common flags."""

from __future__ import annotations

import argparse

from animegen.sampling_options import BN_MODES, DEFAULT_BN_MODE

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        self.exit(EXIT_USAGE, f"animegen: error: {message} (see {self.prog} --help)\n")


def _add_bn_flag(
    p: argparse.ArgumentParser, help: str = "BatchNorm statistics at sampling time (see docs/guide.md)"
) -> None:
    p.add_argument("--bn", choices=BN_MODES, default=DEFAULT_BN_MODE, help=help)


def _add_truncation_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--truncation",
        type=float,
        metavar="T",
        help="draw latents from N(0, 1) cut at +-T: 2 trades a little variety for slightly cleaner "
        "faces, lower values wash them out (default: no truncation)",
    )


def _add_device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
