"""An error in what the user asked for (shown by the CLI as one line, exit code 2)."""


class UsageError(ValueError):
    pass


class MissingDependencyError(ImportError):
    """An optional package a command needs is not installed; the message says what to install."""
