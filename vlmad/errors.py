"""User-facing errors and the CLI wrapper that turns them into one clear line.

Raise `UserError` for anything a user can fix (missing file, wrong flag, corrupt input); the message
must name the file or token and say what to do. `cli_main` prints it as `error: ...` and exits 2, so a
user never sees a traceback from deep inside for a problem of their own input.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """An error caused by the user's input or environment, with a message that says how to fix it."""


def cli_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a CLI `main(argv)`, turning `UserError` into a one-line message and exit code 2."""
    try:
        code = main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
