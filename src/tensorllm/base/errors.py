"""The one exception type that means "the user gave bad input".

The CLI turns it into a one-line message on stderr and exit code 2; the Python API lets it
propagate so callers can catch it.
"""


class UserError(Exception):
    """Bad input from the user (model path, ranks, layers, data, output directory, ...)."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A library exception's message folded onto one line (whitespace collapsed), cut at `limit`."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class OutputError(UserError):
    """An output that cannot be written (not creatable, read-only, full disk, I/O error): one line, like
    any bad input, raised before the work where a pre-flight can tell and with the partial output removed
    where the writing itself failed."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived while a command ran (see base/files.py: `signals_raise`).

    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it on its way
    out; the `finally` blocks on the way remove temporary outputs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
