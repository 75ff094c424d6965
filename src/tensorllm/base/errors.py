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
