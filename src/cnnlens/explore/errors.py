"""The explorer's errors: what a request asked for that cannot be answered now (the app maps each to a status)."""

from __future__ import annotations


class NotFound(LookupError):
    """A ref, class, method or page that does not exist (HTTP 404)."""


class Computing(LookupError):
    """Model work that runs in the worker now: pages show a progress bar polling ``url`` (HTTP 503)."""

    def __init__(self, message: str, url: str):
        super().__init__(message)
        self.url = url


class BadRequest(ValueError):
    """A request the explorer cannot serve as given (HTTP 400, or ``status``)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class NotReady(RuntimeError):
    """The scan is still running (HTTP 503)."""
