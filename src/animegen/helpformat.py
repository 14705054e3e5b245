"""The one help layout every `animegen` subcommand uses: examples kept as written, defaults shown."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        # An unset flag (None, False, []) means "the preset or config file decides", which
        # "(default: None)" would misstate; a help text that names its default says it once.
        text = action.help or ""
        default = action.default
        if default is None or default is False or default == [] or "default" in text:
            return text
        return super()._get_help_string(action)
