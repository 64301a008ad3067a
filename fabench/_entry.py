"""The ``fabench`` console script and ``python -m fabench``: :func:`fabench.cli.main`, with Ctrl-C
handled before the command line is imported.

A Ctrl-C while :mod:`fabench.cli` and its imports load (the first tens of milliseconds) is one line
on stderr and exit status 130, as one later is (:func:`fabench.cli.main`), never a traceback. This
module and the package's ``__init__`` import nothing themselves, so that nothing runs before this
handling but the interpreter's own start-up.
"""

import sys

EXIT_INTERRUPTED = 130
"""The exit status of a Ctrl-C (128 + SIGINT, as a shell reports a process killed by it)."""


def main() -> int:
    """Run the command line on ``sys.argv``; its exit status."""
    try:
        from fabench.cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt:  # in the import (fabench.cli handles its own commands' Ctrl-C)
        sys.stderr.write("fabench: interrupted\n")
        return EXIT_INTERRUPTED
