"""Errors the user can fix: the CLI prints them in one line, without a traceback."""


class UserError(Exception):
    """A problem the user can fix (a bad flag value, a missing file, Dynamo not installed)."""
