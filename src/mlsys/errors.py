"""Errors a user can act on. The CLI prints them as one line instead of a traceback."""


class MlsysError(Exception):
    """Base class for errors whose message alone tells the user what to fix."""


class DatasetError(MlsysError):
    """A dataset file is missing, unreadable or does not match its schema.

    The message always names the file, and the column where one is at fault.
    """

    def __init__(self, path: object, problem: str, column: str | None = None) -> None:
        where = f"{path}" if column is None else f"{path}, column {column!r}"
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.column = column
