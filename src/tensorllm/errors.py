"""The one exception type that means "the user gave bad input".

The CLI turns it into a one-line message on stderr and exit code 2; the Python API lets it
propagate so callers can catch it.
"""


class UserError(Exception):
    """Bad input from the user (model path, ranks, layers, data, output directory, ...)."""
