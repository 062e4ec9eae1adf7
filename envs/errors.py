"""The one error type of poa-gym: a problem the user can fix.

`UserError` is what the `poa-gym` command line prints in one line and exits 2 on, never with a
traceback. Every error a user can cause derives from it: a bad scenario, policy spec, sweep file,
deployment, flag value, a missing file or a missing install. The subclasses that are also
`ValueError`, `RuntimeError` or `FileNotFoundError` keep the builtin their callers catch.

This module imports nothing, so every layer (the simulator core included) may raise it.
"""


class UserError(Exception):
    """A problem the user can fix (a bad flag value, a missing file, Dynamo not installed)."""


class ScenarioError(UserError, ValueError):
    """A scenario (or a file it names) is invalid; the message says where and why."""
