"""Errors in what the user gave (a path, a file, an option value).

`emogen.cli.main.main` prints their message as one line, `emogen: error: ...`, and exits with
code 2 (argparse's code for bad usage), without a traceback: the message already says
what to fix. Library code raises them where it detects the problem; everything else
keeps its traceback, because it is a bug to investigate.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user gave is wrong; the message says what and how to fix it."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (still a FileNotFoundError)."""


class InvalidInputError(UserError, ValueError):
    """A file or option the user gave holds a bad value (still a ValueError)."""
