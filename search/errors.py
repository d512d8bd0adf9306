"""The exceptions that end a command with one ``search: error: ...`` line.

Which exit status each gets is the command line's business (``search.cli``), decided
from these types alone.
"""


class SearchError(Exception):
    """Ends the command with one line: something failed that may pass later."""


class UserError(SearchError):
    """Bad input or environment: the message names the problem and the fix. A person (or
    an orchestrator) must change something before running it again."""


class StorageError(UserError):
    """A database error that retrying cannot fix (a full disk, a foreign schema, no permission)."""


class DatabaseLost(SearchError):
    """The database stayed unreachable for longer than the reconnect patience."""
