"""Exceptions with the exit status they stand for.

Every error a user can cause or meet is an OccystrapError: the CLI prints its message as one line and exits with
its `exit_code`. Anything else is a bug and only shows a traceback under --debug.
"""


class OccystrapError(Exception):
    """A failure the user should read about: one line, exit status 1."""

    exit_code = 1


class UsageError(OccystrapError):
    """Bad command line input (URI, filter, option): exit status 2."""

    exit_code = 2


class DigestMismatchError(OccystrapError):
    """Data did not hash to the digest that described it."""

    def __init__(self, what, expected, actual):
        super().__init__('digest mismatch for %s: expected %s, got %s' % (what, expected, actual))
        self.what = what
        self.expected = expected
        self.actual = actual


class CorruptImageError(OccystrapError):
    """An image source is malformed: truncated tarball, missing blob, bad JSON."""


class UnsafePathError(OccystrapError):
    """A layer asked to write outside its extraction root."""


class RegistryError(OccystrapError):
    """A registry answered something we cannot use."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status
