"""Errors the storage layer raises instead of leaking driver exceptions.

Callers (the UI, the CLI) show ``str(error)`` to people, so each message says what
was wrong in words a tester understands.
"""


class StorageError(Exception):
    """Base class: anything the storage layer refuses."""


class NotFound(StorageError):
    """The thing does not exist *for this caller*.

    Someone else's conversation raises exactly the same error as an unknown id, so
    probing ids reveals nothing.
    """


class InvalidInput(StorageError, ValueError):
    """The value can never be stored as given (too long, bad Unicode, bad role...)."""


class Conflict(StorageError):
    """The value clashes with what is stored (a taken username, an existing id)."""


class SearchTooSlow(StorageError):
    """A search ran past its time limit and was stopped inside the database."""


class StorageUnavailable(StorageError):
    """The database cannot be reached or cannot write right now (down, disk full, read-only).

    The driver's own message (SQL, parameters, addresses) stays in the server log;
    ``reason`` is a short phrase fit for a health report, never for a tester's text.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"the database is unavailable ({reason})")
        self.reason = reason
