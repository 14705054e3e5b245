"""The one help layout every `animegen` subcommand uses: examples kept as written, defaults shown."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass
