"""The exceptions the CLI turns into a single ``search: error: ...`` line and an exit status."""


class SearchError(Exception):
    """Ends the command with one line; ``exit_code`` 1: something failed that may pass later."""

    exit_code = 1


class UserError(SearchError):
    """Bad input or environment: the message names the problem and the fix. Exit 2 means
    "do not restart me as I am" to a person and to an orchestrator."""

    exit_code = 2


class StorageError(UserError):
    """A database error that retrying cannot fix (a full disk, a foreign schema, no permission)."""


class DatabaseLost(SearchError):
    """The database stayed unreachable for longer than the reconnect patience."""
