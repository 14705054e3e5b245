"""Errors meant for the user: one line that names the file or setting and what is wrong."""


class UserError(Exception):
    """Bad input (a path, a file, a setting): the CLI prints the message alone and exits 2."""


class CheckpointError(UserError):
    """A checkpoint that is missing, damaged, unsafe or for another architecture."""
