"""User-facing errors and the wrapper that turns them into one-line messages."""

import sys


class UserError(ValueError):
    """Bad input from the user: a file, a flag or a config key.

    The message names the thing, what was expected and what was found; command
    line entry points print it on one line and exit with status 2, with no
    traceback.
    """


def run_cli(main_fn, argv=None, prog="fcn_graph"):
    """Call `main_fn(argv)`; report a UserError or Ctrl-C on one line.

    Output and errors are printed with backslash escapes for what the stream's
    encoding cannot hold (file names that are not UTF-8), never a traceback."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        return main_fn(argv)
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
