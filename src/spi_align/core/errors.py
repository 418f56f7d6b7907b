"""The one exception type a user sees: the CLI prints its message on one line and exits non-zero."""


class SpiError(Exception):
    """A problem with the user's input or environment, explained in one line."""
