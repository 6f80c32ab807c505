"""The error a user can fix in a dataset: the message names the file or folder and what to do."""

from __future__ import annotations


class DataError(ValueError):
    """A bad dataset file or folder (missing, unreadable, wrong label values, ...)."""
