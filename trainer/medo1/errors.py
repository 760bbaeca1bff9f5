"""The root of every error a user can act on.

`medo1.cli` catches `Medo1Error` once and prints it as one line, `medo1: error: ...`, with exit code 2
(`--debug` shows the traceback). A bug is anything else and keeps its traceback.
"""

from __future__ import annotations


class Medo1Error(Exception):
    """A user error: bad input, bad config, an unreachable or refusing service, a missing file."""

    exit_code = 2
