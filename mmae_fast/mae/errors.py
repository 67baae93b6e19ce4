"""Errors of the application that name their cause for the user (a one-line message)."""


class RankLocalError(ValueError):
    """An error that this rank may have hit alone (its own image files, its own GPU): under
    torchrun the rank that raised it prints it (other errors: rank 0 only)."""
